"""Per-browser-session state of the demo: the memory stream(s), the background ingestion thread,
the answers with their traces, and the limits (sessions, memory, idle time).

No gradio here: `layout.py` turns these objects into components and events. One `Session` per
browser tab (keyed by gradio's session hash), created on page load or on first use, closed when the
tab closes, after `Limits.idle_timeout_s` without a user action, or when the page is reloaded.

Ingestion runs in one daemon thread per session. A file is sampled with `memstream.video` and fed
to every stream of the session (two in compare mode) one block (2 frames) at a time, so that a
question waits at most one block and so that the session's memory cap is checked between blocks.
Webcam frames arrive from the browser through a small queue; the thread samples them at the
stream's fps using their arrival times. A new source, or a setting that changes what the memory
holds, closes the current streams and starts again; answers already given stay inspectable.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from memstream import video
from memstream.config import StreamConfig
from memstream.errors import EmptyMemoryError, MemStreamError

PACES = {"as fast as possible": None, "real time": 1.0}


class SessionLimitError(MemStreamError):
    """The demo cannot open another session right now."""


@dataclass
class Limits:
    max_sessions: int = 8  # concurrent browser sessions
    session_memory_mb: float = 4096.0  # KV memory (CPU + GPU, all streams) per session
    idle_timeout_s: float = 1800.0  # a session without user action for this long is freed
    webcam_gap_s: float = 3.0  # no webcam frame for this long: shown as stopped
    max_thumbnails: int = 12  # retrieved-frame thumbnails kept per answer and policy
    max_answers: int = 50  # answers (with traces and thumbnails) kept per session
    webcam_time_limit_s: float = 1800.0  # one webcam streaming run (gradio's time_limit)


@dataclass
class Settings:
    """What the settings accordion controls; names follow `StreamConfig` where they exist."""

    policy: str = "rekv"
    fps: float = 2.0
    tokens_per_frame: int = 256
    topk: int = 16
    n_local: int | None = 15000
    expert: str = "none"
    fusion_c: float = 60.0
    fusion_weights: tuple[float, float] = (1.0, 1.0)  # (internal, external)
    pace: str = "as fast as possible"  # for files; a webcam is always real time
    compare: str | None = None  # a second policy answering the same questions, or None
    max_new_tokens: int = 64

    # fields whose change means the memory must be rebuilt
    MEMORY = ("policy", "fps", "tokens_per_frame", "topk", "n_local", "expert", "fusion_c", "fusion_weights",
              "compare")

    def policies(self) -> list[str]:
        return [self.policy] + ([self.compare] if self.compare and self.compare != self.policy else [])

    def stream_options(self) -> dict:
        """Keyword arguments for `Engine.stream` (minus policy): only fields `StreamConfig` knows,
        so expert/fusion settings take effect as soon as the library grows them."""
        known = {f.name for f in dataclasses.fields(StreamConfig)}
        opts = {"fps": self.fps, "tokens_per_frame": self.tokens_per_frame, "topk": self.topk,
                "n_local": self.n_local}
        extra = {"expert": None if self.expert == "none" else self.expert, "fusion_c": self.fusion_c,
                 "fusion_weights": tuple(self.fusion_weights)}
        opts.update({k: v for k, v in extra.items() if k in known})
        return opts

    def changes(self, other: Settings) -> list[str]:
        """Human-readable list of memory-relevant differences from `other` (the old settings)."""
        out = []
        for name in self.MEMORY:
            old, new = getattr(other, name), getattr(self, name)
            if old != new:
                out.append(f"{name} {_show(old)} → {_show(new)}")
        return out


def _show(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@dataclass
class Source:
    kind: str  # "file" | "webcam"
    name: str
    path: str | None = None
    duration_s: float | None = None  # None for a webcam


@dataclass
class Result:
    """One policy's answer to one question, with what the heatmap strip needs."""

    policy: str
    answer: object  # memstream.Answer (final)
    thumbnails: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (image, caption), time order


@dataclass
class Record:
    """One question and its answer(s) (two in compare mode)."""

    question: str
    results: list[Result]
    source: str

    def label(self, index: int) -> str:
        q = self.question if len(self.question) <= 40 else self.question[:39] + "…"
        at = self.results[0].answer.asked_at_s if self.results else 0.0
        return f"#{index + 1} · {q} · at {at:.1f} s"


@dataclass
class Notice:
    text: str = ""
    level: str = "info"  # "info" | "warning" | "error"
    at: float = 0.0


class Session:
    """One browser tab's demo state. Thread-safe: events, the timer and ingestion may overlap."""

    def __init__(self, sid: str, engine, settings: Settings, limits: Limits):
        self.sid = sid
        self.engine = engine
        self.settings = settings
        self.limits = limits
        self.lock = threading.RLock()
        self.streams: list = []  # memstream.Stream, one per policy in settings.policies()
        self.source: Source | None = None
        self.notice = Notice()
        self.state = "idle"  # idle | ingesting | done | stopped | capped | failed | live | paused
        self.records: list[Record] = []
        self.history: list[dict] = []  # chat messages (role/content)
        self.msg_record: dict[int, int] = {}  # chat message index -> record index
        self.last_active = time.monotonic()
        self.ingest_pos_s = 0.0  # stream time of the last frame handed to the memory
        self._generation = 0  # bumps on every restart; a thread of an older generation stops
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cam_queue: queue.Queue | None = None
        self._cam_t0: float | None = None
        self._cam_last_wall: float | None = None
        self.closed = False

    # ---- messages ------------------------------------------------------------------------------
    def say(self, text: str, level: str = "info") -> None:
        self.notice = Notice(text, level, time.monotonic())

    def touch(self) -> None:
        self.last_active = time.monotonic()

    # ---- sources -------------------------------------------------------------------------------
    def start_file(self, path: str | None, name: str | None = None) -> bool:
        """Probe `path` and, if it is a usable video, ingest it into fresh memory. A bad file
        leaves the current memory and ingestion untouched. Returns whether it started."""
        self.touch()
        if not path:
            self.say("No file was received; choose a video file to upload.", "warning")
            return False
        label = name or path.rsplit("/", 1)[-1]
        try:
            info = video.probe_video(path)
        except MemStreamError as exc:
            what = (f"the memory keeps {self.source.name}" if self.source is not None
                    else "nothing was ingested")
            reason = str(exc).replace(str(path), label).rstrip(".")
            self.say(f"That file cannot be used: {reason}; {what}.", "error")
            return False
        return self._restart(Source("file", label, path, info.duration_s),
                             f"Ingesting {label} ({info.duration_s:.1f} s).")

    def push_webcam(self, frame: np.ndarray | None) -> None:
        """A frame from the browser's webcam (uint8 [H, W, 3]); starts a live source if needed."""
        if frame is None or self.closed:
            return
        now = time.monotonic()
        self.touch()
        with self.lock:
            if self.source is None or self.source.kind != "webcam" or self._cam_queue is None:
                self._cam_t0 = now
                self._cam_queue = queue.Queue(maxsize=16)
                started = self._restart(Source("webcam", "webcam"),
                                        "Webcam connected: the memory fills from the live feed.")
                if not started:
                    return
            self._cam_last_wall = now
            q = self._cam_queue
            t = now - self._cam_t0
        try:
            q.put_nowait((np.asarray(frame), t))
        except queue.Full:  # ingestion is behind: drop the oldest frame, keep the newest
            try:
                q.get_nowait()
                q.put_nowait((np.asarray(frame), t))
            except (queue.Empty, queue.Full):
                pass

    def apply_settings(self, new: Settings) -> str:
        """Adopt new settings. Memory-relevant changes rebuild the memory and re-ingest the source."""
        self.touch()
        with self.lock:
            old = self.settings
            try:  # check every policy's config before touching anything
                for policy in new.policies():
                    StreamConfig(policy=policy, **new.stream_options()).validate()
            except (MemStreamError, TypeError) as exc:
                self.say(f"Settings not applied: {exc}", "error")
                return self.notice.text
            changes = new.changes(old)
            self.settings = new
            if not changes:
                msg = "Settings applied; the memory is unchanged" + (
                    f" (pacing: {new.pace})." if new.pace != old.pace else ".")
                self.say(msg)
                return msg
            what = ", ".join(changes)
            if self.source is None:
                self.say(f"Settings changed ({what}); they apply to the next video.")
            elif self.source.kind == "file":
                ok = self._restart(self.source, f"Settings changed ({what}): these change what the memory holds, "
                                                f"so it was cleared and {self.source.name} is being ingested again.")
            else:
                ok = self._restart(self.source, f"Settings changed ({what}): the memory was cleared and refills "
                                                "from the live webcam.")
            if self.source is not None and not ok:  # the memory could not be opened: keep the old one
                self.settings = old
            return self.notice.text

    def _restart(self, source: Source, message: str) -> bool:
        """Close the current streams and ingestion, open fresh streams for `source`, start the thread."""
        with self.lock:
            try:
                streams = [self.engine.stream(policy=p, **self.settings.stream_options())
                           for p in self.settings.policies()]
            except MemStreamError as exc:
                self.say(f"Could not open the memory: {exc}", "error")
                return False
            self._stop_ingestion()
            self._generation += 1
            self._stop = threading.Event()
            self.streams = streams
            self.source = source
            self.ingest_pos_s = 0.0
            self.state = "live" if source.kind == "webcam" else "ingesting"
            if source.kind == "webcam":
                if self._cam_queue is None:
                    self._cam_queue = queue.Queue(maxsize=16)
                target = self._run_webcam
            else:
                self._cam_queue = None
                target = self._run_file
            job = (target, self._generation, self._stop, streams, source, self._cam_queue)
            self._thread = threading.Thread(target=self._guard, args=job,
                                            name=f"ingest-{self.sid[:8]}", daemon=True)
            self.say(message)
            self._thread.start()
            return True

    def _stop_ingestion(self) -> None:
        self._stop.set()
        for s in self.streams:
            s.close()

    # ---- ingestion thread ----------------------------------------------------------------------
    def _guard(self, target, generation: int, stop: threading.Event, streams: list, source: Source,
               cam_queue: queue.Queue | None) -> None:
        try:
            target(stop, streams, source, cam_queue)
        except MemStreamError as exc:
            if not stop.is_set():
                with self.lock:
                    if generation == self._generation:
                        self.state = "failed"
                        self.say(f"Ingestion stopped: {exc} What was ingested before stays usable.", "error")
        except Exception as exc:  # a bug: keep the session alive, say so, log the traceback
            traceback.print_exc(file=sys.stderr)
            if not stop.is_set():
                with self.lock:
                    if generation == self._generation:
                        self.state = "failed"
                        self.say(f"Ingestion stopped by an internal error ({type(exc).__name__}); what was "
                                 "ingested before stays usable.", "error")

    def _feed(self, stop: threading.Event, streams: list, frames: list, times: list[float]) -> bool:
        """Hand frames to every stream; False once ingestion must end (stopped or over the cap)."""
        if stop.is_set() or not frames:
            return not stop.is_set()
        arr = np.stack(frames)
        for s in streams:
            if stop.is_set():
                return False
            try:
                s.add_frames(arr, times)
            except MemStreamError:
                if stop.is_set():  # the stream was closed under us by a restart
                    return False
                raise
        if stop.is_set():
            return False
        self.ingest_pos_s = float(times[-1]) + 1.0 / self.settings.fps
        used = sum(_mb(s.stats()) for s in streams)
        if used > self.limits.session_memory_mb:
            with self.lock:
                if not stop.is_set():
                    self.state = "capped"
                    self.say(f"Memory cap reached ({used:.0f} MB of {self.limits.session_memory_mb:.0f} MB per "
                             f"session): ingestion stopped at {self.ingest_pos_s:.1f} s. Questions still work on "
                             "what is stored; lower fps or tokens_per_frame to fit more.", "warning")
            stop.set()
            return False
        return True

    def _run_file(self, stop: threading.Event, streams: list, src: Source, _queue) -> None:
        frames, times = [], []
        wall0, pace_used = time.perf_counter(), None
        for frame, t in video.sample_frames(src.path, self.settings.fps):
            if stop.is_set():
                return
            pace = PACES.get(self.settings.pace)
            if pace != pace_used:  # pacing may change while ingesting: re-anchor the clock
                wall0, pace_used = time.perf_counter() - (t / pace if pace else 0.0), pace
            if pace:
                delay = wall0 + t / pace - time.perf_counter()
                if stop.wait(max(0.0, delay)):
                    return
            frames.append(frame)
            times.append(t)
            if len(frames) == 2:
                if not self._feed(stop, streams, frames, times):
                    return
                frames, times = [], []
        if frames and not self._feed(stop, streams, frames, times):
            return
        for s in streams:
            if stop.is_set():
                return
            s.flush()
        with self.lock:
            if stop.is_set():
                return
            self.state = "done"
            covered = self.ingest_pos_s
            if src.duration_s:
                self.ingest_pos_s = max(self.ingest_pos_s, src.duration_s)
            if src.duration_s and src.duration_s - covered > max(1.5 / self.settings.fps, 0.1 * src.duration_s):
                self.say(f"{src.name} seems cut or damaged: frames stop at {covered:.1f} s of the "
                         f"{src.duration_s:.1f} s it announces. The part before was ingested.", "warning")
            else:
                st = streams[0].stats()
                self.say(f"{src.name} is in memory: {st['blocks']} blocks, {st['tokens_stored']} tokens. Ask away.")

    def _run_webcam(self, stop: threading.Event, streams: list, _src: Source, q: queue.Queue) -> None:
        fps = self.settings.fps
        next_t = 0.0
        frames, times = [], []
        while not stop.is_set():
            try:
                frame, t = q.get(timeout=0.25)
            except queue.Empty:
                continue
            if t + 1e-6 < next_t:
                continue  # faster than the stream's fps: skip
            next_t = t + 1.0 / fps * 0.95  # a little slack so a 2 fps camera is not halved by jitter
            frames.append(frame)
            times.append(t)
            if len(frames) == 2:
                if frames[0].shape != frames[1].shape:  # the camera changed size: keep the newer
                    frames, times = frames[1:], times[1:]
                    continue
                if not self._feed(stop, streams, frames, times):
                    return
                frames, times = [], []

    # ---- questions -----------------------------------------------------------------------------
    def ask(self, question: str) -> Iterator[tuple[int, str, object]]:
        """Answer under every policy of the session, one after the other. Yields (index, policy,
        partial Answer); the engine runs in its own thread so a closed tab cannot leave the
        memory locked. Raises MemStreamError (empty question, empty memory) before yielding."""
        self.touch()
        with self.lock:
            streams = list(self.streams)
            max_new = self.settings.max_new_tokens
        if not streams:
            raise EmptyMemoryError("No video yet: upload a video, pick the sample or start the webcam first.")
        for i, s in enumerate(streams):
            out: queue.Queue = queue.Queue()
            gen = s.ask(question, max_new_tokens=max_new, stream=True)  # raises before any work on bad input

            def work(gen=gen, out=out):
                try:
                    for partial in gen:
                        out.put(("ok", partial))
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                    out.put(("err", exc))
                out.put(("end", None))

            threading.Thread(target=work, name=f"ask-{self.sid[:8]}", daemon=True).start()
            while True:
                kind, item = out.get()
                if kind == "end":
                    break
                if kind == "err":
                    raise item
                yield i, s.config.policy, item

    def record(self, question: str, finals: list[tuple[str, object]]) -> int:
        """Keep the final answers of one question (with their thumbnails); returns the record index."""
        with self.lock:
            streams = {s.config.policy: s for s in self.streams}
            results = [Result(p, a, self._thumbnails(streams.get(p), a)) for p, a in finals]
            self.records.append(Record(question, results, self.source.name if self.source else ""))
            if len(self.records) > self.limits.max_answers:  # keep the newest; drop old traces
                self.records[0] = Record(self.records[0].question, [], self.records[0].source)
            return len(self.records) - 1

    def _thumbnails(self, stream, answer) -> list[tuple[np.ndarray, str]]:
        tr = answer.trace
        if stream is None or tr is None or len(tr.block_times) == 0:
            return []
        counts = tr.selection_counts().numpy()
        n_layers = max(1, len(tr.selected))
        picked = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0][: self.limits.max_thumbnails]
        out = []
        for b in sorted(picked):
            img = stream.thumbnail(b)
            if img is not None:
                out.append((img, f"{float(tr.block_times[b]):.1f} s · {counts[b]}/{n_layers} layers"))
        return out

    # ---- status --------------------------------------------------------------------------------
    def status(self) -> dict:
        with self.lock:
            streams, src, settings = list(self.streams), self.source, self.settings
            state = self.state
            if src is not None and src.kind == "webcam" and state == "live" and self._cam_last_wall is not None:
                if time.monotonic() - self._cam_last_wall > self.limits.webcam_gap_s:
                    state = "paused"
        out = {"state": state, "source": src.name if src else None, "kind": src.kind if src else None,
               "duration_s": src.duration_s if src else None, "position_s": self.ingest_pos_s,
               "policies": [s.config.policy for s in streams], "answers": len(self.records)}
        if not streams:
            return out
        stats = [s.stats() for s in streams]
        st = stats[0]
        fps = settings.fps
        realtime_bps = fps / 2.0
        out.update({
            "frames": st["frames"], "blocks": st["blocks"], "tokens_stored": st["tokens_stored"],
            "seconds": st["seconds"],
            "mb_cpu": sum(s["bytes_cpu"] for s in stats) / 2**20, "mb_gpu": sum(s["bytes_gpu"] for s in stats) / 2**20,
            "blocks_per_s": st.get("blocks_per_s"), "realtime_blocks_per_s": realtime_bps,
            "compression_ratio": st.get("compression_ratio"), "device": st.get("device"),
            "mb_cap": self.limits.session_memory_mb, "tokens_per_frame": settings.tokens_per_frame, "fps": fps,
        })
        if src.duration_s:
            out["progress"] = min(1.0, self.ingest_pos_s / src.duration_s) if state != "done" else 1.0
        return out

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self._stop_ingestion()
            self.streams = []
            self.records = []
            self.history = []


def _mb(stats: dict) -> float:
    return (stats.get("bytes_cpu", 0) + stats.get("bytes_gpu", 0) + stats.get("bytes_thumbnails", 0)) / 2**20


class SessionManager:
    """All sessions of one demo process, with the caps and the idle reaper."""

    def __init__(self, engine, defaults: Settings | None = None, limits: Limits | None = None):
        self.engine = engine
        self.defaults = defaults or Settings()
        self.limits = limits or Limits()
        self._sessions: dict[str, Session] = {}
        self._expired: set[str] = set()
        self._lock = threading.Lock()
        self._reaper = threading.Thread(target=self._reap_loop, name="session-reaper", daemon=True)
        self._stop = threading.Event()
        self._reaper.start()

    def get(self, sid: str | None, create: bool = True) -> Session | None:
        """The session of `sid`; a new one if `create` (raises SessionLimitError when full)."""
        sid = sid or "anonymous"
        with self._lock:
            s = self._sessions.get(sid)
            if s is not None or not create:
                return s
            if len(self._sessions) >= self.limits.max_sessions:
                raise SessionLimitError(
                    f"The demo is at its limit of {self.limits.max_sessions} concurrent sessions; please try "
                    "again in a few minutes (idle sessions are freed automatically).")
            self._expired.discard(sid)
            s = Session(sid, self.engine, dataclasses.replace(self.defaults), self.limits)
            self._sessions[sid] = s
            return s

    def expired(self, sid: str | None) -> bool:
        return (sid or "anonymous") in self._expired

    def close(self, sid: str | None, expired: bool = False) -> None:
        with self._lock:
            s = self._sessions.pop(sid or "anonymous", None)
            if expired and s is not None:
                self._expired.add(sid or "anonymous")
        if s is not None:
            s.close()

    def __len__(self) -> int:
        return len(self._sessions)

    def reap(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            old = [sid for sid, s in self._sessions.items() if now - s.last_active > self.limits.idle_timeout_s]
        for sid in old:
            self.close(sid, expired=True)
        return old

    def _reap_loop(self) -> None:
        period = max(1.0, min(60.0, self.limits.idle_timeout_s / 4))
        while not self._stop.wait(period):
            self.reap()

    def shutdown(self) -> None:
        self._stop.set()
        for sid in list(self._sessions):
            self.close(sid)


def fmt_mb(mb: float | None) -> str:
    if mb is None or (isinstance(mb, float) and math.isnan(mb)):
        return "—"
    return f"{mb:.1f} MB" if mb < 1024 else f"{mb / 1024:.2f} GB"
