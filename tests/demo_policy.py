"""A user's script: register a policy of its own, then build the demo page and apply that policy in a
session. Run as a subprocess by tests/test_ui_settings.py (a registration lasts for the process, and
the other tests must not see this policy: its flags would join every command line). Prints one JSON
object: what the page shows for the policy, and what the session's stream was built with.

    python tests/demo_policy.py CACHE_DIR
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import memstream
from memstream.policies import PolicyConfig, WindowMemory
from memstream.policies.base import need

ROOT = Path(__file__).resolve().parents[1]
NAME = "demo-test-window"


@dataclass(frozen=True)
class DemoTestConfig(PolicyConfig):
    """A policy the demo knows nothing about."""

    n_local: int = 48  # tokens of the newest blocks a question sees (a test policy's own help text)
    mode: str = "keep"  # what happens to old blocks: "keep" or "drop"
    strength: float = 0.5  # a number the memory ignores

    def validate(self) -> None:
        need(self.mode in ("keep", "drop"), f"mode must be 'keep' or 'drop', got {self.mode!r}.")


def main(cache_dir: str) -> None:
    memstream.register_policy(NAME, partial(WindowMemory, store=False), config=DemoTestConfig,
                              summary="a window policy registered by the demo's tests")
    from memstream_demo import Settings, build
    from memstream_demo.manager import SessionManager
    from memstream_demo.state import Limits

    engine = memstream.load(model="tiny", device="cpu", cache_dir=cache_dir)
    demo = build(engine, sample=None)
    page = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    shown = {name: {"label": page[f"opt-{NAME}-{name}"].label, "info": page[f"opt-{NAME}-{name}"].info,
                    "value": page[f"opt-{NAME}-{name}"].value,
                    "choices": [v for _, v in getattr(page[f"opt-{NAME}-{name}"], "choices", [])]}
             for name in ("n_local", "mode", "strength")}
    listed = [v for _, v in page["policy"].choices]
    demo.sessions.shutdown()

    fast = Settings(policy="rekv", tokens_per_frame=16, fps=2.0, max_new_tokens=4)
    manager = SessionManager(engine, fast, Limits())
    try:
        s = manager.get("tab")
        s.start_file(str(ROOT / "assets" / "sample.mp4"), "sample.mp4")
        wait_done(s)
        s.apply_settings(dataclasses.replace(fast, policy=NAME).with_options(mode="drop", n_local=32))
        notice = s.notice.text
        wait_done(s)
        stream = s.streams[0]
        ran = {"notice": notice, "policies": s.status()["policies"], "blocks": s.status()["blocks"],
               "mode": stream.config.mode, "n_local": stream.memory.n_local}
    finally:
        manager.shutdown()
    print(json.dumps({"listed": listed, "fields": shown, "ran": ran}))


def wait_done(session, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while session.status()["state"] != "done":
        if time.monotonic() > end:
            raise TimeoutError(f"ingestion did not finish: {session.status()}")
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1])
