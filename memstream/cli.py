"""Command line: `python -m memstream ask VIDEO "QUESTION" [options]` and other subcommands.

Bad input prints one sentence to stderr and exits 2; nothing prints a traceback unless
MEMSTREAM_DEBUG=1 is set. `--plugin MODULE|FILE.py` (any subcommand, repeatable) loads code that
registers policies first, so their names and options are flags like the built-ins' (`plugins.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from . import bench, evaluate
from .backbones import PRESETS
from .engine import load
from .errors import MemStreamError
from .options import add_engine_arguments, add_stream_arguments, check_expert_flag, stream_options
from .plugins import load_plugins, plugin_args


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m memstream",
                                description="Streaming video question answering over a KV-cache memory.")
    plugin = argparse.ArgumentParser(add_help=False)  # every subcommand takes it
    plugin.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import a module or .py file that registers policies (repeatable)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser = _with_parents(sub.add_parser, [plugin])
    ask = sub.add_parser("ask", help="ingest a video, then answer one question about it")
    ask.add_argument("video", help="path of the video file")
    ask.add_argument("question", help="the question, in quotes")
    add_engine_arguments(ask)
    add_stream_arguments(ask)
    ask.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit, tokens (default: 64)")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ask.set_defaults(handler=run_ask)
    # other subcommands register here: module.register(sub) adds a parser with set_defaults(handler=...)
    bench.register(sub)
    evaluate.register(sub)
    return p


def _with_parents(add_parser, parents):
    """`add_parser` that gives every subcommand (and theirs) the shared `parents` options."""
    def add(name, **kwargs):
        parser = add_parser(name, parents=[*kwargs.pop("parents", []), *parents], **kwargs)
        original = parser.add_subparsers

        def add_subparsers(**kw):
            group = original(**kw)
            group.add_parser = _with_parents(group.add_parser, parents)
            return group

        parser.add_subparsers = add_subparsers
        return parser
    return add


def _retrieval_summary(answer) -> str:
    trace = answer.trace
    counts = trace.selection_counts()
    layers = len(trace.selected)
    picked = [i for i in range(len(counts)) if counts[i] > 0]
    parts = [f"{trace.block_times[i]:.1f}s ({int(counts[i])}/{layers} layers)" for i in picked]
    verb = {"held": "held (tokens of)", "attended": "attended (window)"}.get(trace.selection, "retrieved")
    bias = f"internal {trace.bias['internal']:+.2f}"
    if trace.external is not None:
        bias += f", fused {trace.bias['fused']:+.2f}"
    return (f"{verb} {len(picked)} of {len(counts)} blocks: " + ", ".join(parts)
            + f"\ntemporal bias (Spearman rho, score vs time): {bias}")


def run_ask(args: argparse.Namespace) -> int:
    check_expert_flag([args.policy], args.expert)  # before minutes of model loading
    engine = load(model=args.model, expert=args.expert, device=args.device)
    stream = engine.stream(**stream_options(args))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream.add_video(args.video)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    answer = stream.ask(args.question, max_new_tokens=args.max_new_tokens)
    if answer.trace.notice:  # answered, but e.g. the external expert failed: ranked internal-only
        notes.append(answer.trace.notice)
    noise = engine.backbone.name in PRESETS  # offline presets have random weights
    if args.json:
        out = {
            "answer": answer.text, "question": answer.question, "model": engine.backbone.name,
            "policy": answer.policy, "ttft_s": answer.ttft_s, "total_s": answer.total_s,
            "asked_at_s": answer.asked_at_s, "frames": answer.frames_seen, "blocks": answer.blocks_seen,
            "tokens": answer.tokens_seen, "stats": stream.stats(), "trace": answer.trace.to_dict(),
            "warnings": notes, "random_weights": noise,
        }
        print(json.dumps(out, default=str))
    else:
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        if noise:
            print(f"note: model {engine.backbone.name!r} has random weights, so its answer is noise; the memory, "
                  "retrieval and timings are real.", file=sys.stderr)
        print(answer.text)
        print(f"-- {answer.summary()}")
        print(_retrieval_summary(answer))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("MEMSTREAM_DEBUG") == "1"
    try:
        load_plugins(plugin_args(argv))  # before the parser: their policies become choices and flags
    except MemStreamError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    try:
        return args.handler(args)
    except MemStreamError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line, with a way to see more
        if debug:
            raise
        print(f"internal error ({type(exc).__name__}): {exc}; rerun with MEMSTREAM_DEBUG=1 for details",
              file=sys.stderr)
        return 1
