"""The evaluation harness: benchmarks in ReKV's annotation format, scored and resumable.

    from memstream.evaluate import EvalSettings, load_annotations, run_eval
    videos, _ = load_annotations("mlvu.json", video_root="videos/")
    run = run_eval(engine, videos, EvalSettings.from_options(policy="rekv"), out="mlvu.jsonl")
    run.summary["accuracy"], run.summary["by_question_type"]

The CLI form is `python -m memstream eval ANNOTATIONS --video-root DIR` (`register` adds it).
With `--ray`, a pool of Ray workers answers instead (`distributed.RayPool`, also accepted by
`run_eval`; that module, and Ray, are imported only then). See docs/eval.md and docs/scaling.md.
"""

from .annotations import Question, VideoItem, load_annotations
from .command import register
from .errors import AnnotationError, EvalError, JudgeError, ResultsError
from .judge import Judge, MatchJudge, OpenAIJudge, make_judge
from .results import ResultsFile, summarise
from .runner import EvalRun, EvalSettings, run_eval

__all__ = [
    "register", "run_eval", "EvalSettings", "EvalRun", "load_annotations", "Question", "VideoItem",
    "Judge", "MatchJudge", "OpenAIJudge", "make_judge", "ResultsFile", "summarise",
    "EvalError", "AnnotationError", "ResultsError", "JudgeError",
]
