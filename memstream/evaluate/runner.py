"""Running an evaluation: one stream per video, its questions answered, one result line each.

Offline mode (multiple-choice benchmarks: MLVU, EgoSchema, VideoMME, ...): the whole video is
ingested once and every question is asked of that memory. Asking never changes the memory (a
question's keys and values are dropped after its answer), so the order of questions is irrelevant
and each one costs only its own forward pass.

Streaming mode (RVS-Ego, RVS-Movie: questions carry `end_time`): questions are asked in time
order, each after the video has been ingested up to its `end_time` and no further.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from ..config import StreamConfig
from ..engine import Engine, Stream
from ..errors import EmptyMemoryError, InputError
from .annotations import Question, VideoItem
from .errors import EvalError
from .feeder import FrameFeeder
from .judge import Judge, MatchJudge, contains_match, exact_match
from .prompts import ANSWER_PREFIX, letter_token_ids, letters, mc_prompt, pick_letter
from .results import Key, ResultsFile, summarise

MODES = ("auto", "offline", "streaming")


@dataclass(frozen=True)
class EvalSettings:
    """Everything that shapes the answers; recorded in every result line and checked on resume."""

    model: str = ""  # the model's name as passed to `memstream.load` ("" = the loaded engine's name)
    stream: StreamConfig = field(default_factory=StreamConfig)  # the memory: policy, fps, its options
    max_new_tokens: int = 64  # answer length limit of open-ended questions (MC needs one token)
    mode: str = "auto"  # "auto" (streaming when questions have end_time), "offline" or "streaming"
    expert: str | None = None  # the engine's external expert (as passed to `memstream.load`), or None

    @classmethod
    def from_options(cls, model: str = "", max_new_tokens: int = 64, mode: str = "auto", expert: str | None = None,
                     **stream_options) -> EvalSettings:
        """Settings with the stream given as flat options (`policy="rekv", topk=64, ...`)."""
        return cls(model, StreamConfig.from_options(**stream_options), max_new_tokens, mode, expert)

    def record(self) -> dict:
        """The settings as one flat dict (stream options inline), as every result line records them."""
        return {"model": self.model, **self.stream.options(), "max_new_tokens": self.max_new_tokens,
                "mode": self.mode, "expert": self.expert}


@dataclass
class EvalRun:
    """What `run_eval` returns: every record of the annotation's questions (this run's and earlier
    ones', in annotation order), the summary over them, and this run's own counts."""

    records: list[dict]
    summary: dict
    answered: int  # questions answered by this run
    resumed: int  # questions whose results were already in the results file
    warnings: list[str]


Work = list[tuple[VideoItem, list[Question]]]  # the videos still to do, each with its unanswered questions


@dataclass(frozen=True)
class Answered:
    """One answered question, as an answerer hands it to `run_eval` (which alone writes it)."""

    video_id: str
    record: dict  # the result line, without its "settings"


@dataclass(frozen=True)
class Note:
    """A warning raised while answering a video (a bad frame, a padded block, a retried worker)."""

    video_id: str
    message: str


class Answerer(Protocol):
    """What answers the pending questions: one engine in this process (`LocalAnswerer`) or a pool
    of workers (`memstream.evaluate.distributed.RayPool`). It yields every answer exactly once per
    question it finishes, in any order; `run_eval` writes them as they come."""

    def answer(self, work: Work, settings: EvalSettings, judge: Judge) -> Iterator[Answered | Note]: ...


class LocalAnswerer:
    """The videos one after another on one engine, loaded on first use when given as a loader."""

    def __init__(self, engine: Engine | Callable[[], Engine]):
        self.engine = engine

    def answer(self, work: Work, settings: EvalSettings, judge: Judge) -> Iterator[Answered | Note]:
        if not isinstance(self.engine, Engine):
            self.engine = self.engine()
        for item, pending in work:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for record in answer_video(self.engine, item, pending, settings, judge):
                    yield Answered(item.video_id, record)
            for w in caught:
                yield Note(item.video_id, str(w.message))


def run_eval(engine: Engine | Callable[[], Engine] | Answerer, videos: list[VideoItem], settings: EvalSettings,
             judge: Judge | None = None, out: str | None = None, progress: bool = True) -> EvalRun:
    """Evaluate on `videos`; append one line per new answer to `out` (JSONL, resumable).

    `engine` may be a loaded `Engine`, a function that loads one, or an `Answerer` (a pool of
    workers). A loader is called only if some question is still unanswered, after the results file
    has been checked, so a finished run resumes instantly and a wrong `out` fails before minutes of
    model loading. Whatever answers, this function alone writes the results file, and a question
    already written is never written again.
    """
    judge = judge or MatchJudge()
    if not settings.model and isinstance(engine, Engine):
        settings = replace(settings, model=engine.backbone.name)
    if settings.mode not in MODES:
        raise EvalError(f"Unknown mode {settings.mode!r}; choose one of {', '.join(MODES)}.")
    answerer = engine if hasattr(engine, "answer") else LocalAnswerer(engine)
    # as JSON will read it back (tuples become lists), so that a resumed run compares like with like
    settings_dict = json.loads(json.dumps({**settings.record(), "judge": judge.name}, default=str))
    results = ResultsFile(out, settings_dict) if out else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done: dict[Key, dict] = results.load() if results else {}
    notes = [str(w.message) for w in caught]
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    wanted = [(v, q) for v in videos for q in v.questions]
    resumed = sum((v.video_id, q.index) in done for v, q in wanted)
    work = [(v, pending) for v in videos if (pending := [q for q in v.questions if (v.video_id, q.index) not in done])]
    bar = _progress_bar(len(wanted) - resumed, progress)
    answered = 0
    try:
        for event in answerer.answer(work, settings, judge) if work else ():
            if isinstance(event, Note):
                notes.append(f"{event.video_id}: {event.message}")
                bar.write(f"warning: {event.video_id}: {event.message}", file=sys.stderr)
                continue
            key = (event.video_id, event.record["index"])
            if key in done:  # a retried video may answer again what its lost worker had sent
                continue
            record = {**event.record, "settings": settings_dict}
            if results:
                results.append(record)
            done[key] = record
            answered += 1
            bar.update(1)
    finally:
        bar.close()
    records = [done[(v.video_id, q.index)] for v, q in wanted]
    return EvalRun(records, summarise(records), answered, resumed, notes)


def _progress_bar(total: int, enabled: bool):
    # tqdm comes with transformers; it shows rate and ETA and redraws in place on a terminal
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="eval", unit="q", file=sys.stderr, disable=not enabled or total == 0,
                dynamic_ncols=True, smoothing=0.1)


def answer_video(engine: Engine, item: VideoItem, pending: list[Question], settings: EvalSettings,
                 judge: Judge) -> Iterator[dict]:
    """Yield one record (without "settings") per pending question of one video, ingesting its
    frames as needed: the work of one video, the same in this process and on a Ray worker."""
    streaming = settings.mode == "streaming" or (settings.mode == "auto" and item.streaming)
    stream = engine.stream(settings.stream)
    try:
        if not streaming:
            stream.add_video(str(item.path))
            for q in pending:
                yield _answer(stream, item, q, settings, judge, "offline")
            return
        feeder = FrameFeeder(stream, item.path)
        inf = float("inf")
        for q in sorted(pending, key=lambda q: (inf if q.end_time is None else q.end_time, q.index)):
            feeder.advance_to(q.end_time)
            yield _answer(stream, item, q, settings, judge, "streaming")
    finally:
        stream.close()


def _answer(stream: Stream, item: VideoItem, q: Question, settings: EvalSettings, judge: Judge,
            mode: str) -> dict:
    """Ask one question and grade it. A question the stream refuses (asked before the first block
    exists, or a prompt over the length limit) is recorded as an error with score 0: it is a
    property of the annotation, so a rerun would only repeat it."""
    record = {"video_id": item.video_id, "index": q.index, "question_type": q.question_type,
              "kind": "mc" if q.multiple_choice else "open", "mode": mode, "question": q.question,
              "start_time": q.start_time, "end_time": q.end_time}
    prompt = mc_prompt(q.question, q.choices) if q.multiple_choice else q.question
    try:
        # a multiple-choice answer is read off the first token's logits: one token is enough
        if q.multiple_choice:  # score blocks with the question alone; the turn opens "Best option: ("
            answer = stream.ask(prompt, max_new_tokens=1, query=q.question, answer_prefix=ANSWER_PREFIX)
        else:
            answer = stream.ask(prompt, max_new_tokens=settings.max_new_tokens)
    except (EmptyMemoryError, InputError) as exc:
        reference = letters(len(q.choices))[q.answer_index] if q.multiple_choice else q.answer
        return {**record, "prediction": None, "reference": reference, "correct": False, "score": 0.0,
                "ttft_s": None, "blocks_seen": 0, "error": str(exc)}
    record.update(ttft_s=answer.ttft_s, total_s=answer.total_s, asked_at_s=answer.asked_at_s,
                  frames_seen=answer.frames_seen, blocks_seen=answer.blocks_seen, tokens_seen=answer.tokens_seen)
    if q.multiple_choice:
        names = letters(len(q.choices))
        chosen, logits = pick_letter(answer.first_logits, letter_token_ids(stream.engine.backbone, len(names)))
        correct = chosen == q.answer_index
        record.update(prediction=names[chosen], reference=names[q.answer_index], correct=correct,
                      score=float(correct), letter_logits=dict(zip(names, logits)), choices=list(q.choices))
    else:
        prediction = answer.text.strip()
        score = float(judge.score(q.question, str(q.answer), prediction))
        record.update(prediction=prediction, reference=q.answer, score=min(1.0, max(0.0, score)),
                      exact=exact_match(str(q.answer), prediction),
                      contains=contains_match(str(q.answer), prediction), judge=judge.name)
    return record
