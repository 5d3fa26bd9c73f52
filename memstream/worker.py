"""A local worker process for the model work, exactly as ZeroGPU runs it: `load(..., worker_process=True)`,
`python app.py --worker-process`.

The worker is spawned (a fresh interpreter, not a fork), loads the same models as this process and then
serves calls: each arrives as pickled bytes (`memstream.runner.execute`), runs, and goes back as pickled
bytes. It keeps nothing between calls but the models, so it may die and be replaced at any time: a call
that fails because the worker died raises `WorkerError` with one sentence, the memory is as it was before
the call, and the next call starts a new worker.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from dataclasses import dataclass
from typing import Any

from .errors import MemStreamError, WorkerError
from .plugins import loaded_plugins
from .runner import RemoteRunner, execute
from .work import Models

POLL_S = 0.1  # how often a waiting call checks that the worker is still alive


@dataclass(frozen=True)
class LoadRecipe:
    """What the worker loads: the arguments of `memstream.load` that made this process's engine."""

    model: str  # backbone name: "tiny", a hub id or a directory
    expert: str | None  # expert name or None
    device: str | None  # "auto", "cpu", "cuda"
    cache_dir: str | None  # the preset / hub cache
    threads: int | None = None  # torch CPU threads, as this process uses them (None: torch's choice)


def serve(conn: Any, recipe: LoadRecipe, plugins: list[str] = ()) -> None:
    """The worker's main loop: load the plug-ins the app's process had loaded (their policies arrive
    pickled by reference), then the models, say "ready" (or why not), then answer calls until the pipe closes."""
    import torch

    from .backbones import load_backbone
    from .plugins import load_plugins

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    try:  # the same loaders as `memstream.load`, without an engine: this process holds models only
        load_plugins(plugins)  # entry points and $MEMSTREAM_PLUGINS too, as the app's process loads them
        backbone = load_backbone(recipe.model, recipe.device, recipe.cache_dir)
        expert = None
        if recipe.expert not in (None, "none"):
            from .experts import load_expert

            expert = load_expert(recipe.expert, backbone.device)
    except MemStreamError as exc:
        conn.send_bytes(b"failed:" + str(exc).encode())
        return
    models = Models(backbone, expert)
    conn.send_bytes(b"ready")
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):  # the app's process is gone
            return
        conn.send_bytes(execute(models, payload))


class WorkerRunner(RemoteRunner):
    """Model work in a spawned worker process (started on the first call, restarted after a death)."""

    def __init__(self, models: Models, recipe: LoadRecipe, start_timeout_s: float = 600.0):
        super().__init__(models)
        self.recipe = recipe
        self.start_timeout_s = start_timeout_s
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Any = None
        self.starts = 0  # workers started so far
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Start the worker if none is running, and wait until it has loaded the models."""
        with self._start_lock:
            if self.process is not None and self.process.is_alive():
                return
            ctx = multiprocessing.get_context("spawn")
            ours, theirs = ctx.Pipe()
            process = ctx.Process(target=serve, args=(theirs, self.recipe, loaded_plugins()), daemon=True,
                                  name="memstream-worker")
            process.start()
            theirs.close()
            self.starts += 1
            waited = 0.0
            while not ours.poll(POLL_S):
                waited += POLL_S
                if not process.is_alive() or waited > self.start_timeout_s:
                    process.kill()
                    raise WorkerError(f"The model worker process could not start (exit code {process.exitcode}); "
                                      f"see the server log.")
            try:
                hello = ours.recv_bytes()
            except (EOFError, OSError):
                hello = b"failed:it exited at start (a script that loads with worker_process=True needs an " \
                        b"`if __name__ == '__main__':` guard, as with any spawned process)"
            if hello != b"ready":
                process.join(5)
                raise WorkerError(f"The model worker process could not load the model: "
                                  f"{hello.removeprefix(b'failed:').decode().rstrip('.')}.")
            self.process, self.conn = process, ours

    def exchange(self, payload: bytes, op: str, work: float) -> bytes:
        self.start()
        process, conn = self.process, self.conn
        try:
            conn.send_bytes(payload)
            while not conn.poll(POLL_S):
                if not process.is_alive():
                    raise EOFError
            return conn.recv_bytes()
        except (EOFError, OSError) as exc:
            process.join(1)
            self.process = None
            what = {"open": "opening a memory", "ingest": "ingesting", "answer": "answering"}.get(op, op)
            raise WorkerError(f"The model worker process stopped while {what} (exit code {process.exitcode}); "
                              f"the memory keeps everything ingested before, and the next call starts a new "
                              f"worker.") from exc

    def close(self) -> None:
        if self.process is not None:
            self.conn.close()
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
            self.process = None
        super().close()


def worker_runner(engine: Any, device: str | None = "auto", cache_dir: str | None = None) -> WorkerRunner:
    """The worker runner of an engine (`load(..., worker_process=True)`): the worker loads the engine's
    backbone and expert by name."""
    import torch

    recipe = LoadRecipe(engine.backbone.name, engine.expert_name, device, cache_dir, torch.get_num_threads())
    return WorkerRunner(Models(engine.backbone, engine.expert), recipe)


if __name__ == "__main__":  # pragma: no cover - the worker is started by WorkerRunner, not by hand
    sys.exit("memstream.worker is started by memstream.load(..., worker_process=True).")
