"""`python -m memstream eval ANNOTATIONS --video-root DIR [options]`: the evaluation subcommand."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from ..checks import MAX_NEW_TOKENS
from ..engine import Engine, load
from ..options import add_engine_arguments, add_stream_arguments, check_expert_flag, stream_options
from .annotations import load_annotations
from .errors import EvalError
from .judge import make_judge
from .results import format_summary
from .runner import MODES, Answerer, EvalSettings, run_eval


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `eval` parser to the CLI's subcommands (memory flags named as in `ask`)."""
    p = sub.add_parser("eval", help="answer a benchmark's questions (ReKV annotation format) and score them",
                       description="Evaluate on an annotation file: one JSON line per question in --out "
                                   "(rerunning resumes), then accuracy overall and per question_type.")
    p.add_argument("annotations", help="annotation file: a JSON list of videos with their conversations")
    p.add_argument("--video-root", default=None,
                   help="folder that video_path is relative to (default: the annotation file's folder)")
    p.add_argument("--out", default=None, help="results file, JSON lines; an existing one is resumed")
    p.add_argument("--mode", default="auto", choices=MODES,
                   help="auto: streaming for videos whose questions have end_time, offline otherwise")
    add_engine_arguments(p)
    add_stream_arguments(p)
    p.add_argument("--max-new-tokens", type=int, default=64, help="open-ended answer length limit, tokens")
    p.add_argument("--judge", default="match",
                   help="open-ended grading: match (reference contained in the answer), exact, openai, "
                        "or package.module:factory")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--judge-model", default=None, help="model name for the openai judge")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the judge's API key (unset: no key sent)")
    p.add_argument("--skip-missing", action="store_true", help="leave out videos whose file is missing")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N videos")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="auto|ADDRESS",
                   help="answer on a pool of Ray workers, one engine each: auto (a running local cluster, else a "
                        "new one) or a cluster's HOST:PORT / ray://HOST:PORT; needs pip install 'memstream[ray]'")
    p.add_argument("--workers", type=int, default=None,
                   help="with --ray: number of workers (default: one per GPU, or per CPU without GPUs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object (last line)")
    p.set_defaults(handler=run_eval_command)


def run_eval_command(args: argparse.Namespace) -> int:
    """Check everything cheap first (annotations, videos, judge, settings), then run; the model loads
    only if some question is still unanswered."""
    videos, missing = load_annotations(args.annotations, args.video_root, skip_missing=args.skip_missing)
    if args.limit is not None:
        if args.limit < 1:
            raise EvalError(f"--limit must be a positive number of videos, got {args.limit}.")
        videos = videos[: args.limit]
    if not videos:
        raise EvalError(f"None of the videos of {args.annotations} exist under the video root.")
    judge = make_judge(args.judge, args.judge_url, args.judge_model, args.judge_key_env)
    # bad flags fail here, before the model loads
    settings = EvalSettings.from_options(model=args.model, max_new_tokens=args.max_new_tokens, mode=args.mode,
                                         expert=None if args.expert == "none" else args.expert,
                                         **stream_options(args))
    check_expert_flag([settings.stream.policy], args.expert)
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS:
        raise EvalError(f"--max-new-tokens must be from 1 to {MAX_NEW_TOKENS}, got {args.max_new_tokens}.")
    answerer = _answerer(args)
    for vid in missing:
        print(f"warning: skipped video {vid!r}: its file is missing", file=sys.stderr)
    run = run_eval(answerer, videos, settings, judge, out=args.out, progress=not args.no_progress)
    summary = {**run.summary, "answered": run.answered, "resumed": run.resumed, "out": args.out,
               "skipped_videos": missing, "warnings": run.warnings, "settings": {**settings.record(),
                                                                                  "judge": judge.name}}
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(format_summary(run.summary))
        where = f" in {args.out}" if args.out else ""
        print(f"-- {run.answered} answered now, {run.resumed} from earlier runs{where}")
    return 0


def _answerer(args: argparse.Namespace) -> Answerer | Callable[[], Engine]:
    """A pool of Ray workers with --ray (Ray is imported only then), else a loader of one engine here."""
    if args.workers is not None and args.ray is None:
        raise EvalError("--workers needs --ray (without it the videos run one after another in this process).")
    if args.ray is None:
        return lambda: load(model=args.model, expert=args.expert, device=args.device)
    if args.workers is not None and args.workers < 1:
        raise EvalError(f"--workers must be at least 1, got {args.workers}.")
    from .distributed import RayPool

    return RayPool(args.ray, args.workers, model=args.model, expert=args.expert, device=args.device,
                   plugins=args.plugin)
