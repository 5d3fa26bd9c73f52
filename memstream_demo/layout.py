"""The Gradio page: its components and how events are wired to them.

The page reads top to bottom as a presenter uses it: on a desktop the video, its status and the chat on
the left, the answer's heatmap and the blocks it used on the right (visible together at 1400 x 1000);
on a phone the columns stack. Below: how to read the heatmap, the temporal-bias view (every answer's
ρ, and a probe over stream time), trace files, and the settings.

Everything stateful lives in `session.py` (one `Session` per browser tab); the handlers are in
`events.py`, the HTML pieces in `render.py`, the settings form in `form.py`, the figures in
`heatmap.py` and `bias.py`, the page's CSS and script in `page.py`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gradio as gr

from memstream.config import StreamConfig
from memstream.engine import Engine
from memstream.errors import ConfigError, MemStreamError
from memstream.policies import policy_names, policy_spec

from .events import Events, guarded, render_notice
from .form import SettingsForm
from .manager import SessionManager
from .page import CSS, PAGE_JS
from .probe import MAX_POINTS
from .render import HOW_TO_READ, notice_html, policy_list, render_status, thumb_strip
from .state import Limits, Settings

__all__ = ["build", "CSS"]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SAMPLE = str(ASSETS / "demo_sample.mp4")  # scripts/make_sample_video.py --demo; events listed in docs/demo.md


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
    manager.defaults = defaults
    sample = sample if sample and Path(sample).exists() else None
    model = str(engine.backbone.name)

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"## memstream · streaming video QA over a KV-cache memory\nA video streams into a Video-LLM's "
                    f"memory (model **{model}**) block by block; ask at any moment and see which moments it used.",
                    elem_id="intro")
        gr.Markdown(banner, elem_id="banner", visible=bool(banner))
        notice = gr.HTML(notice_html(""), elem_id="notice")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=340):
                with gr.Tabs():
                    with gr.Tab("Video file", id="file"):
                        player = gr.Video(value=sample, label="video", elem_id="player", height=190,
                                          interactive=False, autoplay=False)
                        with gr.Row():
                            upload_btn = gr.UploadButton("Upload a video", file_types=["video"], size="sm",
                                                         elem_id="upload-btn")
                            sample_btn = gr.Button("Use the sample video", size="sm", visible=bool(sample),
                                                   elem_id="sample-btn")
                            remove_btn = gr.Button("Remove the video", size="sm", elem_id="remove-btn")
                    with gr.Tab("Webcam", id="webcam"):
                        cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="webcam",
                                       elem_id="webcam", height=190)
                        gr.Markdown("Start the webcam: frames are ingested live, at the stream's fps.")
                status = gr.HTML(render_status(None), elem_id="status")
                chat = gr.Chatbot(label="chat", elem_id="chat", height=210, feedback_options=None,
                                  placeholder="Ask about the video: answers stream in, stamped with what the "
                                              "memory held when you asked and the model that answered.")
                with gr.Row():
                    question = gr.Textbox(placeholder="e.g. When did the yellow star appear?", show_label=False,
                                          scale=5, elem_id="question", submit_btn=False, lines=1, max_lines=3)
                    ask_btn = gr.Button("Ask", variant="primary", scale=1, min_width=70, elem_id="ask-btn")
            with gr.Column(scale=6, min_width=340):
                pick = gr.Dropdown([], value=None, label="answer (click one in the chat, or pick it here)",
                                   elem_id="answer-pick", interactive=True)
                with gr.Row(equal_height=True):
                    with gr.Column(scale=1, min_width=300):
                        plot_a = gr.Plot(show_label=False, elem_id="heatmap")
                        gal_a = gr.HTML(thumb_strip([]), elem_id="thumbs")
                    with gr.Column(scale=1, visible=False, min_width=300) as col_b:
                        plot_b = gr.Plot(show_label=False, elem_id="heatmap-b")
                        gal_b = gr.HTML(thumb_strip([]), elem_id="thumbs-b")
        with gr.Accordion("How to read this · the policies", open=False, elem_id="help"):
            gr.Markdown(HOW_TO_READ + "\n\n**Policies** (Settings → policy; compare runs two on the same "
                        "video):\n" + policy_list(policies))
        with gr.Accordion("Temporal bias over the session, and a probe over stream time", open=False,
                          elem_id="bias"):
            bias_plot = gr.Plot(show_label=False, elem_id="bias-plot")
            gr.Markdown("**Probe:** ask one question at several moments of the current video file (on a fresh "
                        "memory of it, under the first policy) and see how the internal and fused rankings drift "
                        "as the stream grows. from 0 = a fifth into the video; to 0 = its end.")
            with gr.Row():
                probe_q = gr.Textbox(label="question", value="When did the yellow star appear?", scale=3,
                                     elem_id="probe-question")
                probe_n = gr.Number(label=f"times (2 to {MAX_POINTS})", value=6, precision=None,
                                    elem_id="probe-points", min_width=80)
                probe_start = gr.Number(label="from (s)", value=None, elem_id="probe-start", min_width=80)
                probe_end = gr.Number(label="to (s)", value=None, elem_id="probe-end", min_width=80)
                probe_btn = gr.Button("Run the probe", elem_id="probe-btn", min_width=100)
            drift_plot = gr.Plot(show_label=False, elem_id="drift-plot")
        with gr.Accordion("Trace files: take answers away, open recorded ones", open=False, elem_id="traces"):
            gr.Markdown("A trace file (JSON) holds the question, the answer, the model, the policy and its "
                        "settings, the times, every layer's raw scores and selections and the external and "
                        "fused scores. Opening one draws its heatmaps without running a model.")
            with gr.Row():
                export_one = gr.Button("Download this answer's trace", size="sm", elem_id="export-answer")
                export_all = gr.Button("Download the session's traces", size="sm", elem_id="export-session")
                open_trace = gr.UploadButton("Open a trace file", file_types=[".json"], size="sm",
                                             elem_id="open-trace")
            download = gr.File(label="trace file", elem_id="download", interactive=False)
        with gr.Accordion("Settings", open=False, elem_id="settings"):
            experts = ["none"] + ([str(getattr(engine, "expert_name", "loaded"))] if has_expert else [])
            form = SettingsForm(defaults, policies, left_out, experts)
            apply_btn = gr.Button("Apply settings", elem_id="apply-btn")
        status_json = gr.JSON(visible=False)
        api_options = gr.JSON(visible=False)  # the /settings API's options: {"topk": 4, ...}
        pending = gr.State("")
        kept_key = gr.BrowserState("", storage_key="memstream-session")  # survives a reload of the tab
        timer = gr.Timer(1.0)
        ev = Events(manager, form, sample)

        def on_apply(request: gr.Request, *values):
            s = ev.session(request)
            try:
                new = form.read(s.settings, values)
            except MemStreamError as exc:
                s.say(f"Settings not applied (the memory is unchanged): {exc}", "error")
            else:
                s.apply_settings(new)
            return (render_notice(s), render_status(s.status()), *form.values(s.settings))

        def on_settings_api(request: gr.Request, policy, *values):
            """The API's settings call: policy, the stream fields, pace, compare, max_new_tokens, expert, and
            a dict of the options to change (each policy in use gets those it takes)."""
            s = ev.session(request)
            n = len(form.streamed)
            stream_values, (pace, compare, max_new, expert, options) = values[:n], values[n:]
            try:
                if options is not None and not isinstance(options, dict):
                    raise ConfigError("The options must be a JSON object of option names and values.")
                new = form.read_head(s.settings, policy, compare, expert, pace, max_new, stream_values)
                new = new.with_used_options(**(options or {}))
            except MemStreamError as exc:
                s.say(f"Settings not applied (the memory is unchanged): {exc}", "error")
            else:
                s.apply_settings(new)
            return render_notice(s), render_status(s.status())

        # ---- wiring --------------------------------------------------------------------------
        hidden = {"show_progress": "hidden"}
        view = [pick, plot_a, plot_b, gal_a, gal_b, col_b, bias_plot]
        demo.load(guarded(ev.on_load, 12), inputs=[kept_key], outputs=[notice, status, chat, player, *view, kept_key],
                  api_name=False, **hidden)
        demo.load(None, js=PAGE_JS)
        upload_btn.upload(guarded(ev.on_upload, 3), inputs=[upload_btn], outputs=[notice, status, player],
                          api_name="upload", **hidden)
        sample_btn.click(guarded(ev.on_sample, 3), outputs=[notice, status, player], api_name="sample", **hidden)
        remove_btn.click(guarded(ev.on_remove, 3), outputs=[notice, status, player], api_name="remove", **hidden)
        cam.stream(ev.on_frame, inputs=[cam], outputs=None, stream_every=0.5, time_limit=limits.webcam_time_limit_s,
                   concurrency_limit=None, api_name=False, **hidden)
        timer.tick(ev.on_tick, outputs=[notice, status], concurrency_limit=None, api_name=False, **hidden)
        ask_out = [chat, question, notice, *view]
        # The box is emptied at once (so typing the next question while an answer streams is safe) and
        # the question travels in a State; on a refused question (empty, no video) the text comes back.
        for trigger in (question.submit, ask_btn.click):
            trigger(lambda q: ("", q), inputs=[question], outputs=[question, pending], queue=False,
                    api_name=False, trigger_mode="multiple", **hidden).then(
                ev.on_ask, inputs=[pending], outputs=ask_out, concurrency_limit=limits.max_sessions, api_name=False,
                **hidden)
        ask_api = gr.Button(visible=False)  # the API's one-call version: question in, outputs as above
        ask_api.click(ev.on_ask, inputs=[question], outputs=ask_out, concurrency_limit=limits.max_sessions,
                      api_name="ask", **hidden)
        pick.change(ev.on_pick, inputs=[pick], outputs=view[1:-1], api_name=False, **hidden)
        chat.select(ev.on_chat_select, outputs=[pick], api_name=False, **hidden)
        whole = gr.State(True)
        one = gr.State(False)
        export_one.click(guarded(ev.on_export, 2), inputs=[pick, one], outputs=[notice, download],
                         api_name="export_answer", **hidden)
        export_all.click(guarded(ev.on_export, 2), inputs=[pick, whole], outputs=[notice, download],
                         api_name="export_session", **hidden)
        open_trace.upload(guarded(ev.on_open_trace, 8), inputs=[open_trace], outputs=[notice, *view],
                          api_name="open_trace", **hidden)
        probe_btn.click(guarded(ev.on_probe, 2), inputs=[probe_q, probe_n, probe_start, probe_end],
                        outputs=[notice, drift_plot], concurrency_limit=limits.max_sessions, api_name="probe",
                        **hidden)
        apply_btn.click(guarded(on_apply, 2 + len(form.components)), inputs=form.components,
                        outputs=[notice, status, *form.components], api_name=False, **hidden)
        for choice in (form.policy, form.compare):
            choice.change(form.visibility, inputs=[form.policy, form.compare], outputs=form.groups, api_name=False,
                          queue=False, **hidden)
        settings_api = gr.Button(visible=False)  # the API's version: the options as a dict, by name
        settings_api.click(guarded(on_settings_api, 2),
                           inputs=[form.policy, *form.stream, form.pace, form.compare, form.max_new, form.expert,
                                   api_options], outputs=[notice, status], api_name="settings", **hidden)
        status_btn = gr.Button(visible=False)
        status_btn.click(ev.on_status, outputs=[status_json], api_name="status")
        demo.unload(ev.on_unload)
    demo.sessions = manager  # for tests and for shutdown
    return demo
