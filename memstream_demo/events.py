"""What the page's events do: each handler finds the tab's `Session` and turns it into component values.

Handlers never let an exception reach the page: `guarded` turns a `MemStreamError` into the notice line
and anything else into a logged internal error, the session keeping its memory. The components are
made in `layout.py`; outputs are listed there, in the order these functions return them.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import traceback
from pathlib import Path

import gradio as gr

from memstream import tracefile
from memstream.errors import EmptyMemoryError, MemStreamError

from . import bias, heatmap, preview, probe
from .form import SettingsForm
from .manager import SessionManager
from .render import answer_message, notice_html, render_status, thumb_strip
from .session import Session
from .state import Record, Result, SessionLimitError


def sid_of(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def guarded(fn, n_out: int = 1):
    """`fn` with a session cap or bad input as a message in the notice (its first output), a bug logged."""
    def outputs(message: str):
        return (message,) + tuple(gr.update() for _ in range(n_out - 1)) if n_out > 1 else message

    @functools.wraps(fn)
    def wrapper(*args):
        try:
            return fn(*args)
        except SessionLimitError as exc:
            return outputs(notice_html(str(exc), "warning"))
        except MemStreamError as exc:
            return outputs(notice_html(str(exc), "error"))
        except Exception as exc:  # noqa: BLE001 - never show a traceback in the page
            traceback.print_exc(file=sys.stderr)
            return outputs(notice_html(f"Internal error ({type(exc).__name__}); the session keeps its memory. "
                                       "Details are in the server log.", "error"))
    return wrapper


class Events:
    """The handlers of one page (one per `build`)."""

    def __init__(self, manager: SessionManager, form: SettingsForm, sample: str | None):
        self.manager = manager
        self.form = form
        self.sample = sample
        self.downloads = Path(tempfile.mkdtemp(prefix="memstream-traces-"))

    def session(self, request: gr.Request | None, create: bool = True) -> Session | None:
        return self.manager.get(sid_of(request), create=create)

    # ---- answers as components ---------------------------------------------------------------
    @staticmethod
    def choices(s: Session) -> list[tuple[str, int]]:
        return [(r.label(i), i) for i, r in enumerate(s.records) if r.results]

    @staticmethod
    def show_record(s: Session | None, index) -> tuple:
        """plot_a, plot_b, thumbs_a, thumbs_b, col_b of answer `index`."""
        if s is None or index is None or not 0 <= int(index) < len(s.records) or not s.records[int(index)].results:
            return None, None, thumb_strip([]), thumb_strip([]), gr.update(visible=False)
        rec = s.records[int(index)]
        q = rec.question if len(rec.question) <= 36 else rec.question[:35] + "…"
        traces = [res.answer.trace for res in rec.results]
        height = max(heatmap.natural_height(tr) for tr in traces)  # compare mode: equal heights
        figs = [heatmap.figure(tr, title=f"#{int(index) + 1} “{q}”", height=height) for tr in traces]
        gals = [thumb_strip(res.thumbnails, res.answer.trace.selection) for res in rec.results]
        two = len(rec.results) > 1
        return (figs[0], figs[1] if two else None, gals[0], gals[1] if two else thumb_strip([]),
                gr.update(visible=two))

    @staticmethod
    def bias_plot(s: Session | None):
        points = [(i + 1, res.policy, res.answer.trace) for i, r in enumerate(s.records if s else [])
                  for res in r.results]
        return bias.session_figure(points) if points else None

    def answers_view(self, s: Session, index) -> tuple:
        """pick, the record's plots and strips, col_b, the session's bias plot."""
        return (gr.update(choices=self.choices(s), value=index), *self.show_record(s, index), self.bias_plot(s))

    # ---- page and sources --------------------------------------------------------------------
    def on_load(self, key, request: gr.Request):
        """A tab opens: attach it to the session the browser kept (a reload), else start one with the sample."""
        sid = sid_of(request)
        try:
            s = self.manager.attach(sid, key) or self.session(request)
        except SessionLimitError as exc:
            return (notice_html(str(exc), "warning"), render_status(None, str(exc)), [], gr.update(),
                    *(gr.update(),) * 7, key)
        if s.source is None and self.sample and not s.records:
            s.start_file(self.sample, Path(self.sample).name)
        last = len(s.records) - 1 if s.records else None
        player = s.preview or (s.source.path if s.source and s.source.kind == "file" else None)
        return (render_notice(s), render_status(s.status()), s.history, player, *self.answers_view(s, last),
                self.manager.key(sid))

    def on_upload(self, path, request: gr.Request):
        s = self.session(request)
        if not path:
            return render_notice(s), render_status(s.status()), gr.update()
        name = Path(path).name
        if not s.start_file(path, name):
            return render_notice(s), render_status(s.status()), gr.update()
        s.preview = preview.playable(path, self.downloads)  # the file itself when a browser plays it
        if s.preview is None:
            s.say(f"{name} is being ingested; your browser cannot play it and a playable copy could not be made, so "
                  "the player stays empty.", "warning")
        return render_notice(s), render_status(s.status()), s.preview

    def on_sample(self, request: gr.Request):
        s = self.session(request)
        s.start_file(self.sample, Path(self.sample).name)
        s.preview = self.sample
        return render_notice(s), render_status(s.status()), self.sample

    def on_remove(self, request: gr.Request):
        s = self.session(request)
        s.clear_source()
        s.preview = None
        return render_notice(s), render_status(s.status()), None

    def on_frame(self, frame, request: gr.Request):
        try:
            s = self.session(request)
        except SessionLimitError:
            return
        try:
            s.push_webcam(frame)
        except Exception:  # noqa: BLE001 - a bad frame must not stop the stream
            traceback.print_exc(file=sys.stderr)

    def on_tick(self, request: gr.Request):
        s = self.session(request, create=False)
        if s is None:
            if self.manager.expired(sid_of(request)):
                limits = self.manager.limits
                msg = (f"This session was freed after {limits.idle_timeout_s / 60:.0f} min without activity; "
                       "upload a video or pick the sample to start again.")
                return notice_html(msg, "warning"), render_status(None, "Session freed (idle).")
            return gr.update(), gr.update()
        return render_notice(s), render_status(s.status())

    def on_status(self, request: gr.Request) -> dict:
        s = self.session(request, create=False)
        return {} if s is None else s.status()

    def on_unload(self, request: gr.Request):
        self.manager.detach(sid_of(request))

    # ---- questions ---------------------------------------------------------------------------
    def on_ask(self, q, request: gr.Request):
        """Outputs: chat, question, notice, pick, plot_a, plot_b, thumbs_a, thumbs_b, col_b, bias plot."""
        same = (gr.update(),) * 7
        try:
            s = self.session(request)
        except SessionLimitError as exc:
            yield ([], q, notice_html(str(exc), "warning")) + same
            return
        if not isinstance(q, str) or not q.strip():
            s.say("The question is empty; type a question about the video.", "warning")
            yield (s.history, q, render_notice(s)) + same
            return
        q = q.strip()
        s.history = s.history + [{"role": "user", "content": q}]
        finals: list = []
        compare = len(s.settings.policies()) > 1
        first_msg = len(s.history)
        try:
            for i, policy, partial in s.ask(q):
                notice = partial.trace.notice if partial.done and partial.trace is not None else ""
                content = answer_message(policy, partial.text, f"{partial.summary()} · model {s.model}", compare,
                                         partial.done, s.noise, notice)
                if i >= len(finals):  # a new policy's answer starts
                    finals.append(None)
                    s.history = s.history + [{"role": "assistant", "content": content}]
                else:
                    s.history[-1] = {"role": "assistant", "content": content}
                if partial.done:
                    finals[i] = (policy, partial)
                yield (s.history, gr.update(), gr.update()) + same
        except MemStreamError as exc:
            text = str(exc)
            if isinstance(exc, EmptyMemoryError) and s.state in ("ingesting", "live"):
                text = "The first block of the video is still being encoded; ask again in a moment."
            s.say(text, "warning")
            if not finals:
                s.history = s.history[:-1]  # nothing was answered: take the question back
            yield (s.history, q, render_notice(s)) + same
            return
        except Exception as exc:  # noqa: BLE001 - never a traceback in the page
            traceback.print_exc(file=sys.stderr)
            s.say(f"Internal error while answering ({type(exc).__name__}); the memory is intact, try again.", "error")
            if not finals:
                s.history = s.history[:-1]
            yield (s.history, q, render_notice(s)) + same
            return
        finals = [f for f in finals if f is not None]
        if not finals:
            yield (s.history, gr.update(), render_notice(s)) + same
            return
        idx = s.record(q, finals)
        for m in range(first_msg - 1, len(s.history)):
            s.msg_record[m] = idx
        s.say(f"Answered from {finals[0][1].blocks_seen} blocks ({finals[0][1].asked_at_s:.1f} s of video) by "
              f"{s.model}.")
        notices = [a.trace.notice for _, a in finals if a.trace is not None and a.trace.notice]
        if notices:  # answered, but something went wrong on the way (the expert failed): say it once
            s.say(f"Answered by {s.model}. {notices[0]}", "warning")
        yield (s.history, gr.update(), render_notice(s), *self.answers_view(s, idx))

    def on_pick(self, index, request: gr.Request):
        return self.show_record(self.session(request, create=False), index)

    def on_chat_select(self, evt: gr.SelectData, request: gr.Request):
        s = self.session(request, create=False)
        if s is None:
            return gr.update()
        idx = s.msg_record.get(evt.index if isinstance(evt.index, int) else evt.index[0])
        return gr.update() if idx is None else gr.update(value=idx)

    # ---- traces: export, import, probe -------------------------------------------------------
    def on_export(self, index, whole: bool, request: gr.Request):
        """notice, file: one answer's trace (`index`) or the whole session's, as a trace file."""
        s = self.session(request)
        records = s.records if whole else ([s.records[int(index)]] if index is not None
                                           and 0 <= int(index) < len(s.records) else [])
        entries = [res.answer.to_dict() if isinstance(res.answer, tracefile.TraceEntry) else  # opened from a file
                   tracefile.answer_entry(res.answer, model=res.model, settings=res.settings, source=r.source)
                   for r in records for res in r.results]
        if not entries:
            s.say("There is no answer to export yet: ask a question first.", "warning")
            return render_notice(s), None
        name = f"memstream-{'session' if whole else f'answer-{int(index) + 1}'}-{s.sid[:6]}.json"
        path = self.downloads / name
        path.write_text(tracefile.dumps(entries), encoding="utf-8")
        s.say(f"{len(entries)} answer{'s' if len(entries) > 1 else ''} written to {name}: open it here with "
              "'open a trace file', or load it with memstream.tracefile.load().")
        return render_notice(s), str(path)

    def on_open_trace(self, path, request: gr.Request):
        """notice, pick, plot_a, plot_b, thumbs_a, thumbs_b, col_b, bias plot: a trace file's answers join
        the session's list (no model runs)."""
        s = self.session(request)
        if not path:
            return (render_notice(s), *(gr.update(),) * 7)
        name = Path(path).name
        entries = tracefile.load(path)
        with s.lock:
            for e in entries:
                s.records.append(Record(e.question, [Result(e.policy, e, [], e.model, e.settings)], e.source, name))
            idx = len(s.records) - 1
        s.say(f"Opened {name}: {len(entries)} answer{'s' if len(entries) > 1 else ''} (model {entries[0].model or '?'}"
              f"), drawn from the file alone; pick them in the answer list.")
        return (render_notice(s), *self.answers_view(s, idx))

    def on_probe(self, question, points, start, end, request: gr.Request):
        """notice, drift plot: `question` asked at `points` times of the current file on a fresh memory."""
        s = self.session(request)
        with s.lock:
            src, settings = s.source, s.settings
        if src is None or src.kind != "file" or not src.path:
            s.say("The probe replays a video file: upload one or pick the sample first.", "warning")
            return render_notice(s), gr.update()
        times = probe.probe_times(src.duration_s or 0.0, int(points or 0), start or None, end or None)
        policy = settings.policy
        out = probe.run_probe(s.engine, policy, settings.stream_options(policy), src.path, question, times)
        if not out:
            s.say("The probe's times all fall before the first block; widen its range.", "warning")
            return render_notice(s), gr.update()
        s.say(f"Probe: “{question.strip()}” asked at {len(out)} times of {src.name} under {policy} ({s.model}).")
        return render_notice(s), bias.drift_figure(out, question)


def render_notice(s: Session | None) -> str:
    return notice_html("") if s is None else notice_html(s.notice.text, s.notice.level)
