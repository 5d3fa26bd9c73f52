"""The Gradio page: components, events and how session state is shown.

Everything stateful lives in `session.py` (one `Session` per browser tab, found by gradio's
session hash); the figures come from `heatmap.py`. Handlers here only translate between the two
and never let an exception reach the page: a `MemStreamError` becomes a message in the notice line,
anything else is logged and reported as an internal error while the session keeps working.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import sys
import traceback
from pathlib import Path
from typing import Any

import gradio as gr

from memstream.config import StreamConfig
from memstream.engine import Engine
from memstream.errors import ConfigError, EmptyMemoryError, MemStreamError
from memstream.policies import policy_names, policy_spec

from . import heatmap
from .fields import FormField, form_fields, stream_form
from .manager import SessionManager
from .session import Session
from .state import PACES, Limits, SessionLimitError, Settings, fmt_mb

SAMPLE = str(Path(__file__).resolve().parents[1] / "assets" / "sample.mp4")
LEVELS = {"info": ("Note", "#4f6bed", "#eef1fd"), "warning": ("Warning", "#d08c1e", "#fdf5e6"),
          "error": ("Error", "#c0392b", "#fbeceb")}

# Draws the player's position on the ingestion bar (the bar is re-rendered every second, so keep at it).
PLAYER_JS = """() => {
  if (window.__memstreamPlayer) return;
  window.__memstreamPlayer = setInterval(() => {
    const box = document.querySelector('#status-box');
    const v = document.querySelector('#player video');
    const mark = document.querySelector('#player-mark');
    const pos = document.querySelector('#player-pos');
    const d = box ? +box.dataset.duration : 0;
    if (!box || !v || !mark || !pos || !d) return;
    mark.style.display = 'block';
    mark.style.left = `calc(${Math.min(100, 100 * v.currentTime / d)}% - 1px)`;
    pos.textContent = ` · player at ${v.currentTime.toFixed(1)} s`;
  }, 250);
}"""

CSS = """
#notice p { margin: 0; }
#banner { background: #fff3cd; border: 1px solid #e0b252; border-radius: 6px; padding: 6px 12px; }
#banner p { margin: 0; color: #5c4400; }
"""


def _sid(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def notice_html(text: str, level: str = "info") -> str:
    """The message line: one sentence, coloured by level (info, warning, error)."""
    if not text:
        return "<div id='notice-box' data-level='none'></div>"
    word, color, bg = LEVELS.get(level, LEVELS["info"])
    return (f"<div id='notice-box' data-level='{level}' style='border-left:4px solid {color};background:{bg};"
            f"padding:5px 10px;border-radius:4px'><b style='color:{color}'>{word}:</b> {html.escape(text)}</div>")


def render_notice(session: Session | None) -> str:
    if session is None:
        return notice_html("")
    return notice_html(session.notice.text, session.notice.level)


def render_status(st: dict | None, message: str = "") -> str:
    """The status panel: a progress bar over the video's length and the memory's numbers."""
    if not st:
        return f"<div id='status-box' style='padding:6px;color:#666'>{html.escape(message or 'No video yet.')}</div>"
    state = st.get("state", "idle")
    kind = st.get("kind")
    pos = st.get("position_s") or 0.0
    if kind == "file" and st.get("duration_s"):
        frac = st.get("progress", 0.0)
        where = f"ingested {pos:.1f} s of {st['duration_s']:.1f} s"
    elif kind == "webcam":
        frac = 1.0 if state == "live" else 0.0
        where = f"live webcam · {pos:.1f} s ingested"
    else:
        frac, where = 0.0, ""
    state_text = {"ingesting": "ingesting…", "done": "done", "live": "receiving frames", "paused":
                  "webcam stopped: no frames arrive (memory kept)", "capped": "stopped: memory cap",
                  "failed": "stopped: error", "idle": "idle"}.get(state, state)
    color = {"done": "#3a9d5d", "capped": "#d08c1e", "failed": "#c0392b", "paused": "#999"}.get(state, "#4f6bed")
    mark = ("<div id='player-mark' title='player position' style='position:absolute;top:-3px;left:0;width:3px;"
            "height:18px;background:#111;border-radius:1px;display:none'></div>") if kind == "file" else ""
    bar = (f"<div style='position:relative'><div style='background:#e5e7eb;border-radius:4px;height:12px;"
           f"overflow:hidden'><div id='status-fill' style='width:{100 * frac:.1f}%;height:12px;background:{color}'>"
           f"</div></div>{mark}</div>")
    rows = []
    if "blocks" in st:
        bps = st.get("blocks_per_s")
        rt = st.get("realtime_blocks_per_s") or 0.0
        if not bps:
            speed = "—"
        else:
            speed = f"{bps:.2f} blocks/s · real time needs {rt:.2f}" + (f" ({bps / rt:.1f}×)" if rt else "")
        comp = st.get("compression_ratio")
        comp_text = "—" if comp is None else f"{comp:.2f}×"
        mem = f"CPU {fmt_mb(st['mb_cpu'])} · GPU {fmt_mb(st['mb_gpu'])}"
        rows = [("frames", f"{st['frames']}"), ("blocks in memory", f"{st['blocks']}"),
                ("tokens stored", f"{st['tokens_stored']:,}"), ("memory", mem), ("ingestion speed", speed),
                ("compression", comp_text), ("policy", " vs ".join(st.get("policies", [])))]
    table = "".join(f"<div style='color:#666'>{k}</div><div id='stat-{k.split()[0]}'>{html.escape(v)}</div>"
                    for k, v in rows)
    src = html.escape(st.get("source") or "")
    duration = st.get("duration_s") or 0
    return (f"<div id='status-box' data-state='{state}' data-blocks='{st.get('blocks', 0)}' "
            f"data-duration='{duration if kind == 'file' else 0}'>"
            f"<div style='font-size:0.9em;margin-bottom:3px'><b>{src}</b> · {where}<span id='player-pos'></span>"
            f" · {state_text}</div>{bar}"
            f"<div style='display:grid;grid-template-columns:max-content 1fr;gap:1px 14px;font-size:0.85em;"
            f"margin-top:5px'>{table}</div></div>")


def _jpeg_uri(img) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumb_strip(thumbs: list) -> str:
    """The retrieved frames of one answer as a horizontal strip of thumbnails with their times."""
    if not thumbs:
        return "<div class='thumb-strip' data-count='0' style='color:#888;font-size:0.85em'>retrieved frames " \
               "appear here after an answer</div>"
    items = "".join(
        f"<figure style='margin:0;flex:0 0 auto;text-align:center'><img src='{_jpeg_uri(img)}' "
        f"alt='{html.escape(cap)}' style='height:84px;border-radius:3px;display:block'>"
        f"<figcaption style='font-size:0.75em;color:#555'>"
        f"{html.escape(cap)}</figcaption></figure>" for img, cap in thumbs)
    return (f"<div class='thumb-strip' data-count='{len(thumbs)}'><div style='font-size:0.85em;color:#666;"
            f"margin-bottom:3px'>retrieved frames (first frame of each block, time order)</div>"
            f"<div style='display:flex;gap:6px;overflow-x:auto'>{items}</div></div>")


def _answer_message(policy: str, ans, compare: bool, final: bool) -> str:
    head = f"**{policy}** · " if compare else ""
    text = ans.text if ans.text else ("…" if not final else "(no answer: the model ended its turn at once)")
    stamp = f"\n\n*{ans.summary()}*" if final else ""
    return f"{head}{text}{stamp}"


def field_component(ff: FormField, value: Any, elem_id: str) -> gr.components.Component:
    """The component of one option: a number box, a checkbox, a dropdown of the valid values or a text
    box, labelled with the field's name and explained by its comment. No minimum/maximum on number boxes:
    gradio would refuse an out-of-range value with a toast, the config's validate() says it in the notice."""
    shown = ff.shown(value)
    common = {"label": ff.name, "info": ff.info or None, "elem_id": elem_id, "min_width": 200}
    if ff.kind == "bool":
        return gr.Checkbox(value=bool(shown), **common)
    if ff.kind == "choice":
        return gr.Dropdown(list(ff.choices), value=shown, **common)
    if ff.kind in ("int", "float"):
        return gr.Number(value=shown, precision=0 if ff.kind == "int" else None, **common)
    return gr.Textbox(value=shown, lines=1, max_lines=1, **common)


def build(engine: Engine, *, banner: str = "", defaults: Settings | None = None, limits: Limits | None = None,
          sample: str | None = SAMPLE, title: str = "memstream") -> gr.Blocks:
    """The demo page for `engine`. `banner` (markdown) is shown on top, e.g. a fallback warning."""
    defaults = defaults or Settings()
    limits = limits or Limits()
    manager = SessionManager(engine, defaults, limits)
    has_expert = getattr(engine, "expert", None) is not None
    # a policy that ranks with the expert cannot run without one: leave it out rather than fail on Apply
    policies = [p for p in policy_names() if has_expert or not policy_spec(p).needs_expert]
    left_out = [p for p in policy_names() if p not in policies]
    if defaults.policy not in policies:
        fallback = StreamConfig().policy  # the library's default policy
        defaults = dataclasses.replace(defaults, policy=fallback if fallback in policies else policies[0])
    if defaults.compare is not None and defaults.compare not in policies:
        defaults = dataclasses.replace(defaults, compare=None)
    streamed = stream_form()
    sample = sample if sample and Path(sample).exists() else None

    def session(request: gr.Request | None, create: bool = True) -> Session | None:
        return manager.get(_sid(request), create=create)

    def guarded(fn):
        """Run a handler; a session cap or bad input becomes a message, a bug is logged."""
        @functools.wraps(fn)
        def wrapper(*args):
            try:
                return fn(*args)
            except SessionLimitError as exc:
                return _error_outputs(fn, notice_html(str(exc), "warning"))
            except MemStreamError as exc:
                return _error_outputs(fn, notice_html(str(exc), "error"))
            except Exception as exc:  # noqa: BLE001 - never show a traceback in the page
                traceback.print_exc(file=sys.stderr)
                return _error_outputs(fn, notice_html(f"Internal error ({type(exc).__name__}); the session keeps its "
                                                      "memory. Details are in the server log.", "error"))
        return wrapper

    def _error_outputs(fn, message: str):
        n = getattr(fn, "n_out", 1)
        return (message,) + tuple(gr.update() for _ in range(n - 1)) if n > 1 else message

    with gr.Blocks(title=title) as demo:
        gr.Markdown("# memstream · streaming video QA over a KV-cache memory\n"
                    "A video streams into the memory of a Video-LLM (Qwen2.5-VL) block by block; ask at any "
                    "moment. Each answer shows which moments of the video each layer retrieved, and whether "
                    "retrieval prefers late frames (temporal bias).")
        gr.Markdown(banner, elem_id="banner", visible=bool(banner))
        notice = gr.HTML(notice_html(""), elem_id="notice")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                with gr.Tabs():
                    with gr.Tab("Video file", id="file"):
                        player = gr.Video(value=sample, sources=["upload"], label="video (upload a file)",
                                          elem_id="player", height=300)
                        sample_btn = gr.Button("Use the sample video", size="sm", visible=bool(sample),
                                               elem_id="sample-btn")
                    with gr.Tab("Webcam", id="webcam"):
                        cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="webcam",
                                       elem_id="webcam", height=300)
                        gr.Markdown("Start the webcam: frames are ingested live, at the stream's fps.")
                status = gr.HTML(render_status(None), elem_id="status")
            with gr.Column(scale=6):
                chat = gr.Chatbot(label="chat", elem_id="chat", height=420, feedback_options=None,
                                  placeholder="Ask about the video: answers stream in, stamped with what the "
                                              "memory held when you asked.")
                with gr.Row():
                    question = gr.Textbox(placeholder="e.g. What is moving?", show_label=False, scale=5,
                                          elem_id="question", submit_btn=False, lines=1, max_lines=3)
                    ask_btn = gr.Button("Ask", variant="primary", scale=1, elem_id="ask-btn")
        # Settings: the demo's own choices, then the stream fields and each policy's options as the
        # library's dataclasses declare them (fields.py); only the policies in use show their options.
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            with gr.Row():
                s_policy = gr.Dropdown(policies, value=defaults.policy, label="policy", elem_id="policy",
                                       info=None if not left_out else f"without an external expert (start with "
                                                                      f"--expert): not {', '.join(left_out)}")
                s_compare = gr.Dropdown(["off"] + policies, value=defaults.compare or "off", elem_id="compare",
                                        label="compare with a second policy")
                expert_choices = ["none"] + ([str(getattr(engine, "expert_name", "loaded"))] if has_expert else [])
                s_expert = gr.Dropdown(expert_choices, value=defaults.expert if has_expert else "none",
                                       label="expert" + ("" if has_expert else " (no external expert loaded)"),
                                       interactive=has_expert, elem_id="expert")
            with gr.Row():
                s_stream = [field_component(ff, getattr(defaults, ff.name), f"opt-{ff.name}") for ff in streamed]
                s_pace = gr.Radio(list(PACES), value=defaults.pace, label="pacing of files", elem_id="pace")
                s_maxnew = gr.Slider(1, 256, value=defaults.max_new_tokens, step=1, label="max_new_tokens",
                                     elem_id="max-new-tokens")
            s_groups = []
            s_options: list[tuple[str, FormField, gr.components.Component]] = []  # (policy, field, component)
            for p in policies:
                fields = form_fields(p)
                with gr.Column(visible=p in defaults.policies(), elem_id=f"options-{p}") as group:
                    summary = policy_spec(p).summary
                    gr.Markdown(f"**{p}** options" + (f" · {summary}" if summary else "")
                                + ("" if fields else " · it has no options of its own"))
                    with gr.Row():
                        for ff in fields:
                            comp = field_component(ff, defaults.option(p, ff.name), f"opt-{p}-{ff.name}")
                            s_options.append((p, ff, comp))
                s_groups.append(group)
            apply_btn = gr.Button("Apply settings", elem_id="apply-btn")
        gr.Markdown("### Retrieval heatmap\nRows: internal (layer average), external and fused scores, each "
                    "normalised; ▼ marks retrieved blocks (larger = more layers). Lower panel: every layer's "
                    "internal scores, ○ = retrieved by that layer. Click an answer in the chat, or pick it here.")
        pick = gr.Dropdown([], value=None, label="answer", elem_id="answer-pick", interactive=True)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                plot_a = gr.Plot(label="heatmap", elem_id="heatmap")
                gal_a = gr.HTML(thumb_strip([]), elem_id="thumbs")
            with gr.Column(scale=1, visible=False) as col_b:
                plot_b = gr.Plot(label="heatmap (second policy)", elem_id="heatmap-b")
                gal_b = gr.HTML(thumb_strip([]), elem_id="thumbs-b")
        status_json = gr.JSON(visible=False)
        api_options = gr.JSON(visible=False)  # the /settings API's options: {"topk": 4, ...}
        pending = gr.State("")
        timer = gr.Timer(1.0)

        # ---- helpers on records --------------------------------------------------------------
        def choices(s: Session) -> list[tuple[str, int]]:
            return [(r.label(i), i) for i, r in enumerate(s.records) if r.results]

        def show_record(s: Session | None, index):
            if s is None or index is None or not 0 <= int(index) < len(s.records) or not s.records[int(index)].results:
                return None, None, thumb_strip([]), thumb_strip([]), gr.update(visible=False)
            rec = s.records[int(index)]
            figs, gals = [], []
            for res in rec.results:
                q = rec.question if len(rec.question) <= 36 else rec.question[:35] + "…"
                figs.append(heatmap.figure(res.answer.trace, title=f"#{int(index) + 1} “{q}”"))
                gals.append(thumb_strip(res.thumbnails))
            two = len(rec.results) > 1
            return (figs[0], figs[1] if two else None, gals[0], gals[1] if two else thumb_strip([]),
                    gr.update(visible=two))

        # ---- handlers ------------------------------------------------------------------------
        def on_load(request: gr.Request):
            try:
                s = session(request)
            except SessionLimitError as exc:
                return notice_html(str(exc), "warning"), render_status(None, str(exc)), []
            if s.source is None and sample:
                s.start_file(sample, "sample.mp4")
            return render_notice(s), render_status(s.status()), s.history

        def on_upload(path, request: gr.Request):
            s = session(request)
            ok = s.start_file(path, Path(path).name if path else None)
            keep = gr.update() if ok else gr.update(value=s.source.path if s.source and s.source.path else None)
            return render_notice(s), render_status(s.status()), keep
        on_upload.n_out = 3

        def on_sample(request: gr.Request):
            s = session(request)
            s.start_file(sample, "sample.mp4")
            return render_notice(s), render_status(s.status()), sample
        on_sample.n_out = 3

        def on_frame(frame, request: gr.Request):
            try:
                s = session(request)
            except SessionLimitError:
                return
            try:
                s.push_webcam(frame)
            except Exception:  # noqa: BLE001 - a bad frame must not stop the stream
                traceback.print_exc(file=sys.stderr)

        def on_tick(request: gr.Request):
            s = session(request, create=False)
            if s is None:
                if manager.expired(_sid(request)):
                    msg = (f"This session was freed after {limits.idle_timeout_s / 60:.0f} min without activity; "
                           "upload a video or pick the sample to start again.")
                    return notice_html(msg, "warning"), render_status(None, "Session freed (idle).")
                return gr.update(), gr.update()
            return render_notice(s), render_status(s.status())

        def on_status(request: gr.Request) -> dict:
            s = session(request, create=False)
            return {} if s is None else s.status()

        def on_ask(q, request: gr.Request):
            same = (gr.update(),) * 6
            try:
                s = session(request)
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
                    content = _answer_message(policy, partial, compare, partial.done)
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
                s.say(f"Internal error while answering ({type(exc).__name__}); the memory is intact, try again.",
                      "error")
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
            s.say(f"Answered from {finals[0][1].blocks_seen} blocks ({finals[0][1].asked_at_s:.1f} s of video).")
            fa, fb, ga, gb, vis = show_record(s, idx)
            yield (s.history, gr.update(), render_notice(s), gr.update(choices=choices(s), value=idx), fa, fb, ga,
                   gb, vis)

        def on_pick(index, request: gr.Request):
            return show_record(session(request, create=False), index)

        def on_chat_select(evt: gr.SelectData, request: gr.Request):
            s = session(request, create=False)
            if s is None:
                return gr.update()
            idx = s.msg_record.get(evt.index if isinstance(evt.index, int) else evt.index[0])
            return gr.update() if idx is None else gr.update(value=idx)

        # ---- settings ----------------------------------------------------------------------------
        form = [s_policy, s_compare, s_expert, s_pace, s_maxnew, *s_stream, *(c for _, _, c in s_options)]

        def form_values(st: Settings) -> list:
            """The form showing `st` (after Apply: what the memory uses, also when a value was refused)."""
            head = [st.policy, st.compare or "off", st.expert if has_expert else "none", st.pace, st.max_new_tokens]
            stream = [ff.shown(getattr(st, ff.name)) for ff in streamed]
            return head + stream + [ff.shown(st.option(p, ff.name)) for p, ff, _ in s_options]

        def read_head(st: Settings, policy, compare, expert, pace, max_new, stream_values) -> Settings:
            """`st` with the demo's own choices and the stream fields of the form (ConfigError for text
            that cannot be read)."""
            stream = {ff.name: ff.parse(v) for ff, v in zip(streamed, stream_values, strict=True)}
            return dataclasses.replace(st, policy=policy, compare=None if compare in (None, "off") else compare,
                                       expert=expert or "none", pace=pace, max_new_tokens=int(max_new), **stream)

        def refuse(s: Session, exc: MemStreamError) -> None:
            s.say(f"Settings not applied (the memory is unchanged): {exc}", "error")

        def on_apply(request: gr.Request, *values):
            s = session(request)
            head, rest = values[:5], values[5:]
            stream_values, option_values = rest[:len(streamed)], rest[len(streamed):]
            try:
                new = read_head(s.settings, *head, stream_values)
                per_policy: dict[str, dict] = {}
                for (p, ff, _), v in zip(s_options, option_values, strict=True):
                    per_policy.setdefault(p, {})[ff.name] = v
                for p, opts in per_policy.items():
                    new = new.with_policy_options(p, opts)
            except MemStreamError as exc:
                refuse(s, exc)
            else:
                s.apply_settings(new)
            return (render_notice(s), render_status(s.status()), *form_values(s.settings))
        on_apply.n_out = 2 + len(form)

        def on_settings_api(request: gr.Request, policy, *values):
            """The API's settings call: policy, the stream fields, pace, compare, max_new_tokens, expert, and
            a dict of the options to change (each policy in use gets those it takes)."""
            s = session(request)
            stream_values, (pace, compare, max_new, expert, options) = values[:len(streamed)], values[len(streamed):]
            try:
                if options is not None and not isinstance(options, dict):
                    raise ConfigError("The options must be a JSON object of option names and values.")
                new = read_head(s.settings, policy, compare, expert, pace, max_new, stream_values)
                new = new.with_used_options(**(options or {}))
            except MemStreamError as exc:
                refuse(s, exc)
            else:
                s.apply_settings(new)
            return render_notice(s), render_status(s.status())
        on_settings_api.n_out = 2

        def show_options(policy, compare):
            """Only the options of the policies in use are shown."""
            used = {policy} | ({compare} if compare not in (None, "off") else set())
            return [gr.update(visible=p in used) for p in policies]

        def on_unload(request: gr.Request):
            manager.close(_sid(request))

        # ---- wiring --------------------------------------------------------------------------
        demo.load(on_load, outputs=[notice, status, chat], api_name=False, show_progress="hidden")
        demo.load(None, js=PLAYER_JS)
        player.upload(guarded(on_upload), inputs=[player], outputs=[notice, status, player], api_name="upload",
                      show_progress="hidden")
        sample_btn.click(guarded(on_sample), outputs=[notice, status, player], api_name="sample",
                         show_progress="hidden")
        cam.stream(on_frame, inputs=[cam], outputs=None, stream_every=0.5, time_limit=limits.webcam_time_limit_s,
                   concurrency_limit=None, show_progress="hidden", api_name=False)
        timer.tick(on_tick, outputs=[notice, status], concurrency_limit=None, show_progress="hidden",
                   api_name=False)
        ask_out = [chat, question, notice, pick, plot_a, plot_b, gal_a, gal_b, col_b]
        # The box is emptied at once (so typing the next question while an answer streams is safe) and
        # the question travels in a State; on a refused question (empty, no video) the text comes back.
        for trigger in (question.submit, ask_btn.click):
            trigger(lambda q: ("", q), inputs=[question], outputs=[question, pending], queue=False,
                    api_name=False, show_progress="hidden", trigger_mode="multiple").then(
                on_ask, inputs=[pending], outputs=ask_out, concurrency_limit=limits.max_sessions, api_name=False,
                show_progress="hidden")
        ask_api = gr.Button(visible=False)  # the API's one-call version: question in, outputs as above
        ask_api.click(on_ask, inputs=[question], outputs=ask_out, concurrency_limit=limits.max_sessions,
                      api_name="ask", show_progress="hidden")
        pick.change(on_pick, inputs=[pick], outputs=[plot_a, plot_b, gal_a, gal_b, col_b], api_name=False,
                    show_progress="hidden")
        chat.select(on_chat_select, outputs=[pick], api_name=False, show_progress="hidden")
        apply_btn.click(guarded(on_apply), inputs=form, outputs=[notice, status, *form], api_name=False,
                        show_progress="hidden")
        for choice in (s_policy, s_compare):
            choice.change(show_options, inputs=[s_policy, s_compare], outputs=s_groups, api_name=False,
                          show_progress="hidden", queue=False)
        settings_api = gr.Button(visible=False)  # the API's version: the options as a dict, by name
        settings_api.click(guarded(on_settings_api), inputs=[s_policy, *s_stream, s_pace, s_compare, s_maxnew,
                                                             s_expert, api_options],
                           outputs=[notice, status], api_name="settings", show_progress="hidden")
        status_btn = gr.Button(visible=False)
        status_btn.click(on_status, outputs=[status_json], api_name="status")
        demo.unload(on_unload)
    demo.sessions = manager  # for tests and for shutdown
    return demo
