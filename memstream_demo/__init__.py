"""The web demo (Gradio): live ingestion, chat, and the retrieval heatmap. Not part of the library:
`memstream` never imports this package (nor gradio or plotly); `pip install .[demo]` installs both.

    from memstream_demo import build, launch
    demo = build(engine, banner="...")     # a gr.Blocks; `launch` adds the page's css
    launch(demo, server_name="0.0.0.0", server_port=7860)

Pure parts (no gradio): `heatmap.py` (trace -> Plotly figure), `bias.py` (the temporal-bias figures),
`render.py` (the page's HTML pieces), `fields.py` (the settings form derived from the library's
dataclasses), `state.py` (plain settings/answer records), `probe.py` (one question at several stream
times), `preview.py` (a browser-playable copy of an upload). Stateful: `session.py` (one browser
session: its streams and ingestion thread), `manager.py` (all sessions, caps, reattaching a reloaded
tab). Gradio: `form.py` (the settings accordion), `events.py` (the handlers), `layout.py` (the page's
components and wiring), `page.py` (its CSS and script).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .state import Limits, Settings

if TYPE_CHECKING:
    import gradio as gr

    from memstream import Engine


def build(engine: Engine, **kwargs: Any) -> gr.Blocks:
    """The demo page for `engine` (see `layout.build`)."""
    from .layout import build as _build

    return _build(engine, **kwargs)


def launch(demo: gr.Blocks, **kwargs: Any) -> Any:
    """`demo.launch(**kwargs)` with the page's css and theme (Gradio 6 takes them at launch)."""
    import gradio as gr

    from .page import CSS

    kwargs.setdefault("css", CSS)
    kwargs.setdefault("theme", gr.themes.Soft())
    return demo.launch(**kwargs)


__all__ = ["build", "launch", "Settings", "Limits"]
