"""The web demo (Gradio): live ingestion, chat, and the retrieval heatmap.

    from memstream_demo import build, launch
    demo = build(engine, banner="...")     # a gr.Blocks; `launch` adds the page's css
    launch(demo, server_name="0.0.0.0", server_port=7860)

`heatmap.py` is pure (trace -> Plotly figure), `state.py` the plain settings/answer records,
`session.py` one browser session (its streams and ingestion thread), `manager.py` all sessions with
their caps, `layout.py` the components and events.
"""

from __future__ import annotations

from .state import Limits, Settings


def build(engine, **kwargs):
    """The demo page for `engine` (see `layout.build`)."""
    from .layout import build as _build

    return _build(engine, **kwargs)


def launch(demo, **kwargs):
    """`demo.launch(**kwargs)` with the page's css and theme (Gradio 6 takes them at launch)."""
    import gradio as gr

    from .layout import CSS

    kwargs.setdefault("css", CSS)
    kwargs.setdefault("theme", gr.themes.Soft())
    return demo.launch(**kwargs)


__all__ = ["build", "launch", "Settings", "Limits"]
