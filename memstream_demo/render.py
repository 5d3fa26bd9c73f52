"""The page's HTML pieces, drawn from plain session data (no gradio, no threads): the notice line, the
status panel, the thumbnail strip, an answer's chat message and the policy list.

Every element a browser test or the page's script reads carries an id or a data- attribute (see
`page.py`): the status box its state, blocks, duration and pace; a thumbnail its block's time.
"""

from __future__ import annotations

import html
import unicodedata
from typing import Any

from memstream.policies import policy_spec

from .state import fmt_mb

LEVELS = {"info": ("Note", "#4f6bed", "#eef1fd"), "warning": ("Warning", "#d08c1e", "#fdf5e6"),
          "error": ("Error", "#c0392b", "#fbeceb")}
# what the thumbnails and the heatmap's marks are, by RetrievalTrace.selection
SELECTION_WORDS = {"retrieved": "retrieved", "held": "held", "attended": "attended"}


def notice_html(text: str, level: str = "info") -> str:
    """The message line: one sentence, coloured by level (info, warning, error)."""
    if not text:
        return "<div id='notice-box' data-level='none'></div>"
    word, color, bg = LEVELS.get(level, LEVELS["info"])
    return (f"<div id='notice-box' data-level='{level}' style='border-left:4px solid {color};background:{bg};"
            f"padding:5px 10px;border-radius:4px'><b style='color:{color}'>{word}:</b> {html.escape(text)}</div>")


def visible_text(text: str) -> str:
    """`text` with every character a font cannot draw shown as its code: control and format characters,
    unassigned or private code points and U+FFFD (what a random-weight model's bytes decode to) become
    ⟨U+0003⟩ (a run of one as ⟨U+0002 ×17⟩), so an answer never looks like a broken font. Newlines and
    tabs stay."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "\n\t" or (ch != "\ufffd" and unicodedata.category(ch) not in ("Cc", "Cf", "Cn", "Co", "Cs")):
            out.append(ch)
            i += 1
            continue
        run = 1
        while i + run < len(text) and text[i + run] == ch:
            run += 1
        out.append(f"⟨U+{ord(ch):04X}{f' ×{run}' if run > 1 else ''}⟩")  # a run once, with its length
        i += run
    return "".join(out)


def answer_message(policy: str, text: str, stamp: str, compare: bool, final: bool, noise: bool,
                   notice: str = "") -> str:
    """One answer as a chat message (markdown): the policy in compare mode, the answer with unprintable
    characters shown as codes, and once final the stamp (what the memory held, the model) and the trace's
    notice, if something went wrong on the way (e.g. the external expert failed: ranked internal-only)."""
    head = f"**{policy}** · " if compare else ""
    body = visible_text(text) if text else ("…" if not final else "(no answer: the model ended its turn at once)")
    body = body.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("`", "\\`").replace("<", "&lt;")
    if not final:
        return f"{head}{body}"
    note = "\n\n*random weights: this answer is noise*" if noise else ""
    warn = f"\n\n⚠ *{notice}*" if notice else ""
    return f"{head}{body}{note}{warn}\n\n*{stamp}*"


def render_status(st: dict | None, message: str = "") -> str:
    """The status panel: a progress bar over the video's length, the player's position on it, and the
    memory's numbers (per policy in compare mode)."""
    if not st or not st.get("source"):
        model = "".join(f" · model {html.escape(v)}" for k, v in _rows(st or {}) if k == "model")
        return (f"<div id='status-box' data-state='{(st or {}).get('state', 'idle')}' data-blocks='0' "
                f"style='padding:6px;color:#666'>{html.escape(message or 'No video yet.')}{model}</div>")
    state, kind = st.get("state", "idle"), st.get("kind")
    duration = st.get("duration_s") or 0.0
    pos = st.get("position_s") or 0.0
    if kind == "file" and duration:
        frac = st.get("progress", 0.0)
        where = f"ingested {min(pos, duration):.1f} s of {duration:.1f} s"
        if st.get("cut"):
            where += " (the file ends early)"
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
    table = "".join(f"<div style='color:#666'>{k}</div><div id='stat-{k.split()[0]}'>{html.escape(v)}</div>"
                    for k, v in _rows(st))
    src = html.escape(st.get("source") or "")
    return (f"<div id='status-box' data-state='{state}' data-blocks='{st.get('blocks', 0)}' "
            f"data-duration='{duration if kind == 'file' else 0}' data-position='{min(pos, duration or pos):.2f}' "
            f"data-pace='{st.get('pace', '')}'>"
            f"<div style='font-size:0.9em;margin-bottom:3px'><b>{src}</b> · {where}<span id='player-pos'></span>"
            f" · {state_text}</div>{bar}"
            f"<div class='status-grid'>{table}</div></div>")


def _rows(st: dict) -> list[tuple[str, str]]:
    model = st.get("model") or ""
    rows = [("model", model + (" (random weights: answers are noise)" if st.get("noise") else ""))] if model else []
    if "blocks" not in st:
        return rows
    bps, rt = st.get("blocks_per_s"), st.get("realtime_blocks_per_s") or 0.0
    speed = "—" if not bps else f"{bps:.2f} blocks/s · real time needs {rt:.2f}" + (f" ({bps / rt:.1f}×)" if rt else "")
    per = st.get("per_policy") or []
    compare = len(per) > 1

    def each(key: str, fmt) -> str:
        if not compare:
            return fmt(per[0].get(key)) if per else "—"
        return " · ".join(f"{p['policy']} {fmt(p.get(key))}" for p in per)

    return rows + [
        ("frames", f"{st['frames']}"), ("blocks in memory", f"{st['blocks']}"),
        ("tokens stored", each("tokens_stored", lambda v: "—" if v is None else f"{v:,}")),
        ("compression", each("compression_ratio", lambda v: "—" if v is None else f"{v:.2f}×")),
        ("memory", f"CPU {fmt_mb(st['mb_cpu'])} · GPU {fmt_mb(st['mb_gpu'])}"), ("ingestion speed", speed),
        ("policy", " vs ".join(st.get("policies", []))),
    ] + ([("expert", st["expert_failure"])] if st.get("expert_failure") else [])


def thumb_strip(thumbs: list[dict[str, Any]], selection: str = "retrieved") -> str:
    """One answer's blocks as a strip: each block's frames side by side with its time; a click seeks the
    player to the block, and enlarges it (`page.py`). `thumbs`: {"t", "uris", "caption"} in time order."""
    if not thumbs:
        return ("<div class='thumb-strip' data-count='0' style='color:#888;font-size:0.85em'>the blocks an answer "
                "used appear here (click one to play it)</div>")
    items = "".join(
        f"<figure class='thumb' data-t='{th['t']:.2f}' title='play from {th['t']:.1f} s · click to enlarge' "
        f"style='margin:0;flex:0 0 auto;text-align:center;cursor:pointer'>"
        f"<div style='display:flex;gap:1px'>"
        + "".join(f"<img src='{uri}' alt='{html.escape(th['caption'])}' style='height:72px;border-radius:2px'>"
                  for uri in th["uris"])
        + f"</div><figcaption style='font-size:0.75em;color:#555'>{html.escape(th['caption'])}</figcaption></figure>"
        for th in thumbs)
    word = SELECTION_WORDS.get(selection, selection)
    return (f"<div class='thumb-strip' data-count='{len(thumbs)}'><div style='font-size:0.85em;color:#666;"
            f"margin-bottom:3px'>{word} blocks (every frame of each block, time order; click to play and enlarge)"
            f"</div><div style='display:flex;gap:6px;overflow-x:auto;max-width:100%'>{items}</div></div>")


def policy_list(policies: list[str]) -> str:
    """Markdown: one line per policy the page offers, from its registry summary."""
    return "\n".join(f"- **{p}**: {policy_spec(p).summary or 'no description'}" for p in policies)


HOW_TO_READ = """\
**Heatmap, top rows:** every block's score for the question (each row min-max normalised, so colours
compare blocks, not rows): `internal` is the model's own attention-based score (layer average), `external` the
expert's (a CLIP-like image-text model), `fused` their rank fusion, drawn only when it is what chose the blocks.
The marks above say what the memory gave the question: ▼ *retrieved* (ranked top-k at question time), *held*
(hermes keeps a fixed token budget and retrieves nothing) or *attended* (a fixed window). **Lower panel:** the
same per layer. **Click a cell or a thumbnail** to play the video from that block.

**Temporal bias ρ:** Spearman's rank correlation between a block's time and its score. ρ > 0 means later
blocks score higher (the recency bias MemStream describes), ρ < 0 earlier ones, ρ ≈ 0 no preference.
Comparing `memstream` with `memstream-internal` (compare mode) shows the correction: the same memory ranked
by fused scores vs by internal scores alone; its ρ(fused) should sit closer to 0 than ρ(internal)."""
