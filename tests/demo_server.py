"""The demo served in-process on a free loopback port, for the API and browser tests."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SAMPLE = str(Path(__file__).resolve().parents[1] / "assets" / "sample.mp4")  # 8 s: the tests' short sample


def start_demo(engine, banner: str, max_new_tokens: int, worker_cache: str | None = None, **limits):
    """Build and launch the page on the tiny test settings, with the tiny external expert (as
    `python app.py --model tiny` runs it), policy memstream and the 8 s sample; returns the Blocks with
    `.url` set. `limits`: `Limits` fields. Stop it with `stop_demo`. `worker_cache`: the model work runs
    in a worker process (`app.py --worker-process`) that builds the tiny model there."""
    from functools import partial

    from memstream.engine import Engine
    from memstream.experts import build_tiny_expert
    from memstream.worker import worker_runner
    from memstream_demo import Limits, Settings, build, launch

    runner = None if worker_cache is None else partial(worker_runner, device="cpu", cache_dir=worker_cache)
    engine = Engine(engine.backbone, build_tiny_expert(), runner)
    defaults = Settings(policy="memstream", tokens_per_frame=16, max_new_tokens=max_new_tokens,
                        expert="tiny").with_options(topk=3, budget=256)
    demo = build(engine, banner=banner, defaults=defaults, limits=Limits(**{"max_sessions": 4, **limits}),
                 sample=SAMPLE)
    port = free_port()
    launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    demo.url = f"http://127.0.0.1:{port}/"
    demo.engine = engine
    return demo


def stop_demo(demo) -> None:
    demo.sessions.shutdown()
    demo.close()
    demo.engine.close()
