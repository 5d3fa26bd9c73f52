"""The web demo's entry point (a Hugging Face Space runs this file); the page is `memstream_demo`.

    python app.py [--model ID|tiny] [--expert NAME|tiny|none|auto] [--device auto|cpu|cuda]
                  [--server-name 0.0.0.0] [--server-port 7860 (or $PORT)] [--share]
                  [--max-sessions 8] [--session-memory-mb 4096] [--idle-timeout 1800] [--max-answers 50]
                  [--worker-process]

--worker-process runs the model work (ingest, questions) in a separate process that holds the models and
no session state, with pickled arguments, exactly as a ZeroGPU Space runs it (there, `SPACES_ZERO_GPU` turns
this on by itself: see the README's "Deploying on ZeroGPU").
$MEMSTREAM_MODEL and $MEMSTREAM_EXPERT give the defaults of --model and --expert (for a Space).
--expert auto (the default) means clip-b32 with a real model and the offline tiny expert with the
tiny model, so the heatmap always has its external and fused rows.

If the model cannot be loaded, the demo falls back to the tiny random-weight model and says so in
a banner on the page.
"""

from __future__ import annotations

import argparse
import os

import memstream
from memstream.backbones import PRESETS
from memstream_demo import Limits, Settings, build, launch

TINY_BANNER = ("**Answers come from a tiny random-weight model**, so they are noise; ingestion, memory, retrieval "
               "and the heatmaps work exactly as with the real model.")


def _add_expert(engine: memstream.Engine, expert: str | None) -> str:
    """Give the engine its external expert; if that fails, go on without one and say so."""
    if expert is None:
        return ""
    from memstream.experts import load_expert

    try:
        engine.expert = load_expert(expert, engine.device)
        return ""
    except memstream.MemStreamError as exc:
        print(f"warning: {exc} Continuing without an external expert.", flush=True)
        return "The external expert could not be loaded, so the policies that need one are not offered."


def _expert_for(model: str | None, expert: str | None) -> str | None:
    if expert in (None, "none"):
        return None
    if expert == "auto":
        return "tiny" if model in PRESETS else "clip-b32"  # random weights get the random expert
    return expert


def load_engine(model: str | None, expert: str | None, device: str,
                worker_process: bool = False) -> tuple[memstream.Engine, str]:
    """The engine and the banner to show (empty when everything requested loaded)."""
    notes = []
    try:
        engine = memstream.load(model=model, device=device, worker_process=worker_process)
    except memstream.MemStreamError as exc:
        if model in PRESETS:  # an offline preset that fails has nothing to fall back to
            raise
        print(f"warning: {exc} Falling back to the tiny random-weight model.", flush=True)
        # the reason (and what an operator can do) is in the server log; a web visitor gets what it means
        notes.append("The real model could not be loaded on this server, so this demo runs a tiny stand-in instead.")
        model, engine = "tiny", memstream.load(model="tiny", device=device, worker_process=worker_process)
    notes.append(_add_expert(engine, _expert_for(model, expert)))
    if model in PRESETS:  # every preset has random weights (tiny, tiny-qwen3-vl, ...)
        notes.append(TINY_BANNER)
    return engine, " ".join(n for n in notes if n)


def demo_defaults(engine: memstream.Engine, tiny: bool) -> Settings:
    """The page's settings on start. Real-time pacing: the built-in sample visibly streams, the player in
    step with ingestion. The tiny model is CPU-sized: fewer tokens per frame, and a topk / hermes budget
    small enough that the three-minute sample is retrieved from and compressed (docs/demo.md)."""
    # the family's usual frame size (SmolVLM2: its processor's 64 or 81 tokens), not 256 everywhere
    defaults = Settings(expert=engine.expert_name or "none", pace="real time").with_options(
        tokens_per_frame=engine.backbone.spec.default_tokens_per_frame)
    return defaults.with_options(tokens_per_frame=64, topk=4, budget=1024) if tiny else defaults


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="memstream web demo")
    ap.add_argument("--model", default=os.environ.get("MEMSTREAM_MODEL") or None,
                    help="hub id, local directory or 'tiny' (default: $MEMSTREAM_MODEL, else the real model)")
    ap.add_argument("--expert", default=os.environ.get("MEMSTREAM_EXPERT") or "auto",
                    help="external retrieval expert: clip-b32, pe-core-b16, tiny, none, or auto (clip-b32; tiny "
                         "with the tiny model) (default: $MEMSTREAM_EXPERT or auto)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--server-name", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
    ap.add_argument("--server-port", type=int, default=int(os.environ.get("PORT", 7860)))
    ap.add_argument("--share", action="store_true")
    ap.add_argument("--max-sessions", type=int, default=8, help="concurrent browser sessions")
    ap.add_argument("--session-memory-mb", type=float, default=4096.0, help="memory cap per session")
    ap.add_argument("--idle-timeout", type=float, default=1800.0, help="seconds before an idle session is freed")
    ap.add_argument("--max-answers", type=int, default=50,
                    help="answers per session that keep their traces and thumbnails (older ones keep the question)")
    ap.add_argument("--worker-process", action="store_true",
                    help="run the model work in a separate process with pickled arguments, as on ZeroGPU")
    args = ap.parse_args(argv)
    engine, banner = load_engine(args.model, args.expert, args.device, args.worker_process)
    defaults = demo_defaults(engine, tiny=TINY_BANNER in banner)
    limits = Limits(max_sessions=args.max_sessions, session_memory_mb=args.session_memory_mb,
                    idle_timeout_s=args.idle_timeout, max_answers=args.max_answers)
    demo = build(engine, banner=banner, defaults=defaults, limits=limits)
    launch(demo, server_name=args.server_name, server_port=args.server_port, share=args.share)


if __name__ == "__main__":
    main()
