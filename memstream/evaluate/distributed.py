"""Evaluation on a Ray cluster: videos are tasks for a pool of actors, each holding one engine.

    python -m memstream eval ANNOTATIONS --video-root DIR --ray [auto|ADDRESS] [--workers N]

The driver (the `eval` process) keeps the queue of videos and is the only writer of the results
file (`run_eval` writes whatever `RayPool.answer` yields). Each actor loads the engine once and
answers one video at a time with `runner.answer_video`, the same function the single-process run
uses, streaming each record back as soon as it exists (a Ray generator method). An actor that dies
mid-video (out of memory, a lost node, a segfault) is replaced, and its video goes back to the
queue with only the questions whose answers did not reach the driver, preferably for another
worker; after `retries` such losses of one video the run stops with one sentence (the results
file keeps everything answered, so a rerun resumes).

Ray is imported only here, and this module only when `--ray` is given: without it nothing changes.
Videos and model must be reachable under the same paths on every node (a shared filesystem).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .annotations import Question, VideoItem
from .errors import EvalError
from .judge import Judge
from .runner import Answered, EvalSettings, Note, Work, answer_video

# Fault injection for tests: the actor answering this video id exits the process (as a crash
# would) right after streaming its first answer, on the video's first attempt only.
CRASH_ENV = "MEMSTREAM_EVAL_CRASH_VIDEO"
RAY_ERROR_THREAD = "ray_listen_error_messages"  # Ray's driver thread that prints worker deaths to stdout


def import_ray():
    """The `ray` module, or one sentence on how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise EvalError("--ray needs Ray, which is not installed; install it with "
                        "pip install 'memstream[ray]' (or pip install ray).") from exc
    return ray


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail in one sentence, within `timeout_s`, when nothing listens at a Ray address
    ("host:port" of the head's GCS, or "ray://host:port" of a Ray Client server)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise EvalError(f"--ray {address!r} is not an address; give auto, HOST:PORT (the head node's, "
                        "as `ray start --head` prints it) or ray://HOST:PORT.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise EvalError(f"No Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                        "`ray start --head` or check the address.") from exc


class EvalWorker:
    """The body of one Ray actor: loads the engine on its first video, then answers videos."""

    def __init__(self, model: str | None, expert: str | None, device: str, plugins: list[str]):
        self.model, self.expert, self.device = model, expert, device
        self.engine = None
        self.failed: Exception | None = None
        try:  # before any call's arguments arrive: their settings may name a plug-in's policy classes
            from ..plugins import load_plugins

            load_plugins(plugins)
        except Exception as exc:  # raised by the first call, as one clear error rather than a dead actor
            self.failed = exc

    def ready(self) -> int:
        """Load the engine now (its errors surface here); returns this worker's process id."""
        if self.failed is not None:
            raise self.failed
        if self.engine is None:
            from ..engine import load

            self.engine = load(model=self.model, expert=self.expert, device=self.device)
        return os.getpid()

    def run(self, item: VideoItem, pending: list[Question], settings: EvalSettings, judge: Judge,
            crash: bool = False) -> Iterator[Answered | Note]:
        """Answer one video, yielding each record as it is made, then the video's warnings."""
        self.ready()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for record in answer_video(self.engine, item, pending, settings, judge):
                yield Answered(item.video_id, record)
                if crash:  # let this answer reach the driver first, then die as a crash would
                    time.sleep(0.5)
                    os._exit(3)
        for w in caught:
            yield Note(item.video_id, str(w.message))


@dataclass
class _Task:
    item: VideoItem
    pending: list[Question]
    attempt: int = 0  # how many workers have died on this video so far
    avoid: set[int] = field(default_factory=set)  # worker slots it died on


class RayPool:
    """An `Answerer` (see runner.py) over `workers` Ray actors; Ray starts (or connects) on first use.

    `address`: "auto" (a running local cluster if there is one, else a new local one) or a
    cluster's address. `workers`: None = one per GPU of the cluster, or one per CPU without GPUs.
    An actor takes one GPU when the cluster has GPUs and `device` is not "cpu", else one CPU.
    """

    def __init__(self, address: str = "auto", workers: int | None = None, model: str | None = "tiny",
                 expert: str | None = None, device: str = "auto", plugins: list[str] | None = None,
                 retries: int = 2, init_options: dict | None = None):
        if workers is not None and workers < 1:
            raise EvalError(f"--workers must be at least 1, got {workers}.")
        self.ray = import_ray()
        if address != "auto":
            check_address(address)
        self.address, self.workers, self.retries = address, workers, retries
        # plug-in files by absolute path: a worker's working directory may differ from ours
        plugins = [str(Path(p).resolve()) if p.endswith(".py") or os.sep in p else p for p in plugins or []]
        self.worker_args = (model, expert, device, plugins)
        self.init_options = init_options or {}
        self.started = False  # whether this pool called ray.init (then it disconnects; a cluster it started stops)

    def answer(self, work: Work, settings: EvalSettings, judge: Judge) -> Iterator[Answered | Note]:
        with _quiet_ray_errors():
            self._connect()
            try:
                yield from self._run(work, settings, judge)
            finally:
                if self.started:
                    self.ray.shutdown()
                    self.started = False

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():  # a caller's own ray.init (tests, notebooks): use that cluster
            return
        options = {"log_to_driver": False, "logging_level": logging.ERROR, **self.init_options}
        # "auto": Ray joins a cluster started on this machine by `ray start` if there is one, else
        # starts its own; only our own gets these settings: no dashboard, and a small object store
        # (Ray's default is 30% of RAM in /dev/shm; only paths, settings and records travel through it)
        own = {"include_dashboard": False, "object_store_memory": 256 * 2**20} if self.address == "auto" else {}
        try:
            try:
                ray.init(address=None if self.address == "auto" else self.address, **own, **options)
            except ValueError:
                if not own:
                    raise
                ray.init(address=None, **options)  # an existing cluster refuses settings of a new one
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = str(exc).splitlines()[0].rstrip(".") if str(exc) else type(exc).__name__
            if self.address == "auto":
                raise EvalError(f"Could not start or join a local Ray cluster ({reason}).") from exc
            raise EvalError(f"Could not join the Ray cluster at {self.address} ({reason}); if it uses token "
                            "authentication (the default of `ray start`), set RAY_AUTH_MODE=token and give this "
                            "machine the head's ~/.ray/auth_token.") from exc
        self.started = True

    def _spawn(self, gpu: bool):
        resources = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": 1}
        return self.ray.remote(EvalWorker).options(max_restarts=0, max_task_retries=0, **resources).remote(
            *self.worker_args)

    def _run(self, work: Work, settings: EvalSettings, judge: Judge) -> Iterator[Answered | Note]:
        ray = self.ray
        from ray.exceptions import ObjectLostError, RayActorError, RayTaskError, WorkerCrashedError

        lost = (RayActorError, WorkerCrashedError, ObjectLostError)
        resources = ray.cluster_resources()
        gpu = resources.get("GPU", 0) >= 1 and self.worker_args[2] != "cpu"
        kind = "GPU" if gpu else "CPU"
        capacity = int(resources.get(kind, 0))
        if self.workers is not None and self.workers > capacity:  # the extra actors would wait forever
            raise EvalError(f"--workers {self.workers} needs {self.workers} {kind}s but the Ray cluster has "
                            f"{capacity}; use --workers {max(capacity, 1)} or fewer.")
        size = min(self.workers or max(1, capacity), len(work))
        actors = [self._spawn(gpu) for _ in range(size)]
        # longest first (by annotated duration), so that the run does not end waiting on one long video
        ordered = sorted(work, key=lambda w: -(w[0].duration or 0.0))
        queue = deque(_Task(item, list(pending)) for item, pending in ordered)
        answered: dict[str, set[int]] = {}  # question indices per video that reached the driver
        crash_id = os.environ.get(CRASH_ENV)
        running: dict = {}  # generator -> (slot, task)
        idle = list(range(size))
        try:
            while queue or running:
                for slot in list(idle):  # a retried video waits for a worker other than the one it died on
                    task = next((t for t in queue if slot not in t.avoid), None)
                    if task is None and queue and not running:
                        task = queue[0]  # no other worker will come free: take it here anyway
                    if task is None:
                        continue
                    queue.remove(task)
                    idle.remove(slot)
                    crash = crash_id == task.item.video_id and task.attempt == 0
                    gen = actors[slot].run.remote(task.item, task.pending, settings, judge, crash)
                    running[gen] = (slot, task)
                if not running:
                    continue
                ready, _ = ray.wait(list(running), num_returns=1)
                gen = ready[0]
                slot, task = running[gen]
                try:
                    event = ray.get(next(gen))
                except StopIteration:
                    del running[gen]
                    idle.append(slot)
                    continue
                except RayTaskError as exc:  # an error raised by our code on the worker: as if raised here
                    cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                    raise cause from None
                except lost:
                    del running[gen]
                    with contextlib.suppress(Exception):
                        ray.kill(actors[slot])
                    actors[slot] = self._spawn(gpu)  # a fresh worker keeps the pool at full size
                    idle.append(slot)
                    done = answered.get(task.item.video_id, set())
                    rest = [q for q in task.pending if q.index not in done]
                    if rest and task.attempt >= self.retries:
                        raise EvalError(f"Video {task.item.video_id!r} was lost with {task.attempt + 1} workers "
                                        "(each died while answering it); rerun to resume, or leave it out.") from None
                    if rest:
                        yield Note(task.item.video_id, f"a worker died; the video's {len(rest)} unanswered "
                                                       f"question(s) go to another worker (retry {task.attempt + 1} "
                                                       f"of {self.retries}).")
                        queue.appendleft(_Task(task.item, rest, task.attempt + 1, task.avoid | {slot}))
                    continue
                if isinstance(event, Answered):
                    answered.setdefault(event.video_id, set()).add(event.record["index"])
                yield event
        finally:
            for gen in running:
                with contextlib.suppress(Exception):
                    ray.cancel(gen, force=True)
            for actor in actors:
                with contextlib.suppress(Exception):
                    ray.kill(actor)


class _DropThreadOutput:
    """A stdout wrapper that drops what one named thread writes (Ray's own reports of worker
    deaths, which the pool handles and reports as one warning line instead)."""

    def __init__(self, stream, thread_name: str):
        self.stream, self.thread_name = stream, thread_name

    def write(self, text: str) -> int:
        if threading.current_thread().name == self.thread_name:
            return len(text)
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextlib.contextmanager
def _quiet_ray_errors():
    original = sys.stdout
    sys.stdout = _DropThreadOutput(original, RAY_ERROR_THREAD)
    try:
        yield
    finally:
        sys.stdout = original
