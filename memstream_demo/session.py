"""Per-browser-session state of the demo: the memory stream(s), the background ingestion thread,
the answers with their traces, and the limits (sessions, memory, idle time).

No gradio here: `layout.py` turns these objects into components and events. One `Session` per
browser tab (keyed by gradio's session hash), created on page load or on first use, closed when the
tab has been gone for `Limits.reattach_s` (a reload within that time finds it again, answers and
memory included) or after `Limits.idle_timeout_s` without a user action.

Ingestion runs in one daemon thread per session. A file is opened once (when it is checked on
upload) and fed by `memstream.feed.VideoFeed` to every stream of the session (two in compare mode)
one block (2 frames) at a time, so that a question waits at most one block and so that the
session's memory cap is checked between blocks.
Webcam frames arrive from the browser through a small queue; the thread samples them at the
stream's fps using their arrival times. A new source, or a setting that changes what the memory
holds, closes the current streams and starts again; answers already given stay inspectable.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from memstream import video
from memstream.backbones import PRESETS
from memstream.errors import EmptyMemoryError, MemStreamError
from memstream.feed import VideoFeed, hand_over

from .state import PACES, Limits, Notice, Record, Result, Settings, Source
from .thumbnails import Thumbnails

__all__ = ["Session"]


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
        # per block in memory: its first frame, small (the demo's own pictures; the library keeps none)
        self.thumbs = Thumbnails(limits.thumbnail_height, engine.backbone.spec.frames_per_block)
        self._generation = 0  # bumps on every restart; a thread of an older generation stops
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cam_queue: queue.Queue | None = None
        self._cam_t0: float | None = None
        self._cam_last_wall: float | None = None
        self.closed = False
        self.preview: str | None = None  # what the player shows: the file, or a playable copy of it
        self.cut = False  # the file's frames ended before the duration it announces
        self.detached_at: float | None = None  # monotonic time the tab went away (None: a tab shows it)
        self._applied = ""  # what the last Apply changed, repeated once the re-ingestion is done

    # ---- messages ------------------------------------------------------------------------------
    def say(self, text: str, level: str = "info") -> None:
        self.notice = Notice(text, level, time.monotonic())

    def touch(self) -> None:
        self.last_active = time.monotonic()

    # ---- sources -------------------------------------------------------------------------------
    def start_file(self, path: str | None, name: str | None = None) -> bool:
        """Open `path` and, if it is a usable video, ingest it into fresh memory. A bad file
        leaves the current memory and ingestion untouched. Returns whether it started."""
        self.touch()
        if not path:
            self.say("No file was received; choose a video file to upload.", "warning")
            return False
        label = name or path.rsplit("/", 1)[-1]
        try:
            opened = video.open_video(path)  # checked here, sampled by the ingestion thread: one opening
        except MemStreamError as exc:
            what = (f"the memory keeps {self.source.name}" if self.source is not None
                    else "nothing was ingested")
            reason = str(exc).replace(str(path), label).rstrip(".")
            self.say(f"That file cannot be used: {reason}; {what}.", "error")
            return False
        info = opened.info
        return self._restart(Source("file", label, path, info.duration_s),
                             f"Ingesting {label} ({info.duration_s:.1f} s).", opened)

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
        """Adopt new settings. Changes of what the memory holds rebuild it and re-ingest the source;
        changes of question-time options only retune the streams (`Stream.set_retrieval`). A bad value
        changes nothing and says why in one sentence. Returns the notice."""
        self.touch()
        with self.lock:
            old = self.settings
            try:  # check every policy's config before touching anything
                configs = {p: self.engine.stream_config(policy=p, **new.stream_options(p)) for p in new.policies()}
            except (MemStreamError, TypeError) as exc:
                self.say(f"Settings not applied (the memory is unchanged): {exc}", "error")
                return self.notice.text
            new = new.adopt(configs)
            memory, asked = new.changes(old, configs)
            self.settings = new
            if not memory:
                if asked:
                    for stream in self.streams:  # read at question time: no need to re-ingest
                        wanted = new.policy_options(stream.config.policy)
                        mine = {k: wanted[k] for k in stream.config.question_time()
                                if getattr(stream.config, k) != wanted[k]}
                        if mine:
                            stream.set_retrieval(**mine)
                    msg = f"Settings applied to the memory as it is ({', '.join(asked)}); nothing re-ingested."
                else:
                    msg = "Settings applied; the memory is unchanged" + (
                        f" (pacing: {new.pace})." if new.pace != old.pace else ".")
                self.say(msg)
                return msg
            what = ", ".join(memory + asked)
            self._applied = what
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

    def _restart(self, source: Source, message: str, opened: video.OpenedVideo | None = None) -> bool:
        """Close the current streams and ingestion, open fresh streams for `source`, start the thread.
        `opened`: the source file already opened by `start_file` (None: the thread opens it)."""
        with self.lock:
            try:
                streams = [self.engine.stream(policy=p, **self.settings.stream_options(p))
                           for p in self.settings.policies()]
            except MemStreamError as exc:
                self.say(f"Could not open the memory: {exc}", "error")
                return False
            self._stop_ingestion()
            self._generation += 1
            self._stop = threading.Event()
            self.streams = streams
            self.source = source
            self.thumbs = Thumbnails(self.limits.thumbnail_height, self.engine.backbone.spec.frames_per_block)
            self.ingest_pos_s = 0.0
            self.cut = False
            self.state = "live" if source.kind == "webcam" else "ingesting"
            if source.kind == "webcam":
                if self._cam_queue is None:
                    self._cam_queue = queue.Queue(maxsize=16)
                target, feed_input = self._run_webcam, self._cam_queue
            else:
                self._cam_queue = None
                target, feed_input = self._run_file, opened
            job = (target, self._generation, self._stop, streams, source, feed_input)
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
               feed_input: queue.Queue | video.OpenedVideo | None) -> None:
        """Run `target` (`_run_file` or `_run_webcam`); `feed_input`: the webcam's frame queue, or the
        file opened by `start_file` (None: open it again, as a settings change does)."""
        try:
            target(stop, streams, source, feed_input)
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
        """Hand webcam frames to every stream; False once ingestion must end (stopped or over the cap)."""
        if stop.is_set() or not frames:
            return not stop.is_set()
        if hand_over([*streams, self.thumbs], np.stack(frames), times, stop) is None or stop.is_set():
            return False
        return self._after_batch(stop, streams, times)

    def _after_batch(self, stop: threading.Event, streams: list, times: list[float]) -> bool:
        """After every stream took a batch: move the position, check the memory cap (over it: say
        so, set `stop` and return False)."""
        self.ingest_pos_s = float(times[-1]) + 1.0 / self.settings.fps
        used = sum(_mb(s.stats()) for s in streams) + self.thumbs.nbytes / 2**20
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

    def _run_file(self, stop: threading.Event, streams: list, src: Source, opened: video.OpenedVideo | None) -> None:
        # one block per hand-over (a question waits at most one block; the cap is checked between
        # blocks), or as many as the model's runner takes per call (a worker process, ZeroGPU); the pace
        # is read before every frame, as the settings may change it meanwhile
        per_call = 2 * self.engine.runner.blocks_per_call
        feed = VideoFeed(opened or src.path, self.settings.fps, [*streams, self.thumbs], batch_frames=per_call,
                         pace=lambda: PACES.get(self.settings.pace), stop=stop,
                         on_batch=lambda times: self._after_batch(stop, streams, times))
        try:
            feed.run()
        finally:
            feed.close()
        with self.lock:
            if stop.is_set():
                return
            self.state = "done"
            covered = self.ingest_pos_s
            applied, self._applied = self._applied, ""
            after = f" (settings changed: {applied})" if applied else ""
            if src.duration_s and src.duration_s - covered > max(1.5 / self.settings.fps, 0.1 * src.duration_s):
                self.cut = True  # the bar and the status show what was ingested, not the announced length
                self.say(f"{src.name} seems cut or damaged: frames stop at {covered:.1f} s of the "
                         f"{src.duration_s:.1f} s it announces. The part before was ingested{after}.", "warning")
            else:
                if src.duration_s:
                    self.ingest_pos_s = src.duration_s  # the last block's padding may end past the video
                st = streams[0].stats()
                self.say(f"{src.name} is in memory{after}: {st['blocks']} blocks, {st['tokens_stored']} tokens. "
                         "Ask away.")

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
            # a kept answer drops its first-token logits ([vocab] float32, which the page never shows): 0.6 MB
            # each with Qwen's 152k vocabulary, 30 MB per session at the 50-answer cap (the tiny model's: 1 KB)
            finals = [(p, replace(a, first_logits=None)) for p, a in finals]
            results = [Result(p, a, self._thumbnails(streams.get(p), a), self.model,
                              {"policy": p, **self.settings.stream_options(p), "pace": self.settings.pace,
                               "max_new_tokens": self.settings.max_new_tokens}) for p, a in finals]
            self.records.append(Record(question, results, self.source.name if self.source else ""))
            old = len(self.records) - 1 - self.limits.max_answers
            if old >= 0:  # keep the newest answers' traces and thumbnails; the one that fell out keeps its question
                r = self.records[old]
                self.records[old] = Record(r.question, [], r.source, r.from_file)
            return len(self.records) - 1

    @property
    def model(self) -> str:
        return str(self.engine.backbone.name)

    @property
    def noise(self) -> bool:
        """Whether the model has random weights (an offline preset): its answers are noise."""
        return self.engine.backbone.name in PRESETS

    def _thumbnails(self, stream, answer) -> list[dict]:
        """The blocks the answer used, most used first, at most `max_thumbnails`, in time order:
        {"t": start s, "uris": every frame as a JPEG data URI, "caption"}."""
        tr = answer.trace
        if stream is None or tr is None or len(tr.block_times) == 0:
            return []
        counts = tr.selection_counts().numpy()
        n_layers = max(1, len(tr.selected))
        picked = [int(i) for i in np.argsort(-counts, kind="stable") if counts[i] > 0][: self.limits.max_thumbnails]
        out = []
        for b in sorted(picked):
            uris = self.thumbs.get(b)
            if uris:
                t = float(tr.block_times[b])
                out.append({"t": t, "uris": uris, "caption": f"{t:.1f} s · {counts[b]}/{n_layers} layers"})
        return out

    def clear_source(self) -> None:
        """The player's ✕: stop ingesting and empty the memory (answers given stay inspectable)."""
        self.touch()
        with self.lock:
            if self.source is None:
                return
            name = self.source.name
            self._stop_ingestion()
            self._generation += 1
            self.streams, self.source, self.state, self.ingest_pos_s = [], None, "idle", 0.0
            self.thumbs = Thumbnails(self.limits.thumbnail_height, self.engine.backbone.spec.frames_per_block)
            self.say(f"{name} was removed and the memory emptied; answers given stay inspectable. Upload a "
                     "video, pick the sample or start the webcam.")

    # ---- status --------------------------------------------------------------------------------
    def status(self) -> dict:
        with self.lock:
            streams, src, settings = list(self.streams), self.source, self.settings
            state = self.state
            if src is not None and src.kind == "webcam" and state == "live" and self._cam_last_wall is not None:
                if time.monotonic() - self._cam_last_wall > self.limits.webcam_gap_s:
                    state = "paused"
        duration = src.duration_s if src else None
        pos = min(self.ingest_pos_s, duration) if duration else self.ingest_pos_s  # never past the video
        out = {"state": state, "source": src.name if src else None, "kind": src.kind if src else None,
               "duration_s": duration, "position_s": pos, "cut": self.cut, "pace": settings.pace,
               "policies": [s.config.policy for s in streams], "answers": len(self.records),
               "model": self.model, "noise": self.noise}
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
            "per_policy": [{"policy": s.config.policy, "tokens_stored": x["tokens_stored"],
                            "compression_ratio": x.get("compression_ratio")} for s, x in zip(streams, stats)],
            # the external expert failed mid-stream and was dropped: the sentence saying so (None: it did not)
            "expert_failure": next((x["expert_failure"] for x in stats if x.get("expert_failure")), None),
        })
        if duration:
            out["progress"] = pos / duration
        return out

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self._stop_ingestion()
            self.streams = []
            self.records = []
            self.history = []


def _mb(stats: dict) -> float:
    return (stats.get("bytes_cpu", 0) + stats.get("bytes_gpu", 0)) / 2**20
