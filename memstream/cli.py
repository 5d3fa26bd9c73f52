"""Command line: `python -m memstream ask VIDEO "QUESTION" [options]` and other subcommands.

Bad input prints one sentence to stderr and exits 2; nothing prints a traceback unless
MEMSTREAM_DEBUG=1 is set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from . import bench, evaluate
from .config import StreamConfig
from .engine import load
from .errors import MemStreamError


def _parser() -> argparse.ArgumentParser:
    d = StreamConfig()  # one source of defaults for the library and the CLI
    p = argparse.ArgumentParser(prog="python -m memstream",
                                description="Streaming video question answering over a KV-cache memory.")
    sub = p.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="ingest a video, then answer one question about it")
    ask.add_argument("video", help="path of the video file")
    ask.add_argument("question", help="the question, in quotes")
    ask.add_argument("--model", default="tiny",
                     help="'tiny' (offline random weights, the default), a hub id or a local directory")
    ask.add_argument("--expert", default=None, help="external retrieval expert (none in this version)")
    ask.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda'")
    ask.add_argument("--policy", default=d.policy, help="memory policy: full or rekv")
    ask.add_argument("--fps", type=float, default=d.fps, help="frames sampled per second of video")
    ask.add_argument("--tokens-per-frame", type=int, default=d.tokens_per_frame, help="LLM tokens per frame (>= 4)")
    ask.add_argument("--topk", type=int, default=d.topk, help="blocks retrieved per layer")
    ask.add_argument("--n-local", type=int, default=d.n_local, help="ingest sliding window, tokens")
    ask.add_argument("--positions", default=d.positions, help="'original' or 'compact'")
    ask.add_argument("--score", default=d.score, help="'dot' or 'cosine'")
    ask.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit, tokens")
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ask.set_defaults(handler=run_ask)
    # other subcommands register here: module.register(sub) adds a parser with set_defaults(handler=...)
    bench.register(sub)
    evaluate.register(sub)
    return p


def _retrieval_summary(answer) -> str:
    trace = answer.trace
    counts = trace.selection_counts()
    layers = len(trace.selected)
    picked = [i for i in range(len(counts)) if counts[i] > 0]
    parts = [f"{trace.block_times[i]:.1f}s ({int(counts[i])}/{layers} layers)" for i in picked]
    return (f"retrieved {len(picked)} of {len(counts)} blocks: " + ", ".join(parts)
            + f"\ntemporal bias (Spearman rho, score vs time): internal {trace.bias['internal']:+.2f}")


def run_ask(args: argparse.Namespace) -> int:
    engine = load(model=args.model, expert=args.expert, device=args.device)
    stream = engine.stream(policy=args.policy, fps=args.fps, tokens_per_frame=args.tokens_per_frame,
                           topk=args.topk, n_local=args.n_local, positions=args.positions, score=args.score)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream.add_video(args.video)
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    answer = stream.ask(args.question, max_new_tokens=args.max_new_tokens)
    if args.json:
        out = {
            "answer": answer.text, "question": answer.question, "model": engine.backbone.name,
            "policy": answer.policy, "ttft_s": answer.ttft_s, "total_s": answer.total_s,
            "asked_at_s": answer.asked_at_s, "frames": answer.frames_seen, "blocks": answer.blocks_seen,
            "tokens": answer.tokens_seen, "stats": stream.stats(), "trace": answer.trace.to_dict(),
            "warnings": notes,
        }
        print(json.dumps(out, default=str))
    else:
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        print(answer.text)
        print(f"-- {answer.summary()}")
        print(_retrieval_summary(answer))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    debug = os.environ.get("MEMSTREAM_DEBUG") == "1"
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
