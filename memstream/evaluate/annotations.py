"""Loading and checking annotation files in ReKV's format.

The file is a JSON list of videos:

    [{"video_id": "v1", "video_path": "clips/v1.mp4", "duration": 183.0,
      "conversations": [{"question": "...", "answer": "...", "choices": ["...", "..."],
                         "question_type": "...", "start_time": 12.0, "end_time": 30.5}]}]

`video_id`, `video_path`, `conversations`, `question` and `answer` are required; the rest are
optional. Every problem is reported as one sentence naming the video and question it is in, and
everything (fields, types, the video files) is checked before any model work starts, so a typo
fails in seconds rather than hours into a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import AnnotationError
from .prompts import MAX_CHOICES, answer_index, strip_choice_labels

VIDEO_FIELDS = {"video_id", "video_path", "duration", "conversations"}
QUESTION_FIELDS = {"question", "answer", "choices", "question_type", "start_time", "end_time"}


@dataclass(frozen=True)
class Question:
    """One question of a video, as the annotation gives it (choices with their labels stripped)."""

    index: int  # position in the video's `conversations` list: with video_id, the result key
    question: str
    answer: str | int  # the reference: a letter, an option's text or a 0-based index (MC), or free text
    choices: tuple[str, ...] | None  # option texts, None for an open-ended question
    answer_index: int | None  # 0-based index of the correct option (MC), None when open-ended
    question_type: str | None
    start_time: float | None  # seconds from the start of the video
    end_time: float | None  # seconds; in streaming mode the question is asked at this time

    @property
    def multiple_choice(self) -> bool:
        return self.choices is not None


@dataclass(frozen=True)
class VideoItem:
    """One video of the annotation file and its questions."""

    video_id: str
    path: Path  # resolved against --video-root
    duration: float | None  # seconds, as annotated (informational)
    questions: tuple[Question, ...]

    @property
    def streaming(self) -> bool:
        """Whether the annotation times its questions (RVS-style): then it is evaluated as a stream."""
        return any(q.end_time is not None for q in self.questions)


def load_annotations(path: str | Path, video_root: str | Path | None = None,
                     skip_missing: bool = False) -> tuple[list[VideoItem], list[str]]:
    """Read and check an annotation file; returns (videos, ids of videos skipped as missing).

    `video_root` (default: the annotation file's folder) is prepended to relative `video_path`s.
    A missing video file is an error unless `skip_missing`, which leaves that video out.
    """
    path = Path(path)
    if not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "not found"
        raise AnnotationError(f"Annotation file {path} is {what}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"Annotation file {path} is not UTF-8 text.") from exc
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"Annotation file {path} is not valid JSON (line {exc.lineno}, "
                              f"column {exc.colno}: {exc.msg.lower()}).") from exc
    if not isinstance(data, list) or not data:
        raise AnnotationError(f"Annotation file {path} must hold a non-empty JSON list of videos.")
    root = Path(video_root) if video_root is not None else path.parent
    if not root.is_dir():
        raise AnnotationError(f"Video root {root} is not a directory.")
    videos = [_video(entry, i, root) for i, entry in enumerate(data)]
    seen: set[str] = set()
    for v in videos:
        if v.video_id in seen:
            raise AnnotationError(f"Video id {v.video_id!r} appears twice in {path}; ids must be unique.")
        seen.add(v.video_id)
    missing = [v for v in videos if not v.path.is_file()]
    if missing and not skip_missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise AnnotationError(f"Video file {missing[0].path} of video {missing[0].video_id!r} does not exist{more}; "
                              "check --video-root or pass --skip-missing.")
    return [v for v in videos if v.path.is_file()], [v.video_id for v in missing]


def _video(entry: object, i: int, root: Path) -> VideoItem:
    where = f"Video #{i}"
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where} must be a JSON object, got {_kind(entry)}.")
    if isinstance(entry.get("video_id"), str | int) and not isinstance(entry.get("video_id"), bool):
        where = f"Video {entry['video_id']!r}"
    _no_unknown(entry, VIDEO_FIELDS, where)
    for key in ("video_id", "video_path", "conversations"):
        if key not in entry:
            raise AnnotationError(f"{where} has no {key!r} field.")
    vid = entry["video_id"]
    if isinstance(vid, bool) or not isinstance(vid, str | int) or str(vid).strip() == "":
        raise AnnotationError(f"{where} needs a non-empty text or integer 'video_id'.")
    if not isinstance(entry["video_path"], str) or not entry["video_path"].strip():
        raise AnnotationError(f"{where} needs a non-empty text 'video_path'.")
    duration = _seconds(entry.get("duration"), "duration", where)
    convs = entry["conversations"]
    if not isinstance(convs, list) or not convs:
        raise AnnotationError(f"{where} needs a non-empty list of 'conversations'.")
    questions = tuple(_question(q, k, f"{where}, question #{k}") for k, q in enumerate(convs))
    return VideoItem(str(vid), root / entry["video_path"], duration, questions)


def _question(entry: object, index: int, where: str) -> Question:
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where} must be a JSON object, got {_kind(entry)}.")
    _no_unknown(entry, QUESTION_FIELDS, where)
    text = entry.get("question")
    if not isinstance(text, str) or not text.strip():
        raise AnnotationError(f"{where} needs a non-empty text 'question'.")
    if "answer" not in entry:
        raise AnnotationError(f"{where} has no 'answer' field.")
    answer = entry["answer"]
    if isinstance(answer, bool) or not isinstance(answer, str | int):
        raise AnnotationError(f"{where} has an 'answer' that is {_kind(answer)}, not text or an index.")
    qtype = entry.get("question_type")
    if qtype is not None and (not isinstance(qtype, str) or not qtype.strip()):
        raise AnnotationError(f"{where} has a 'question_type' that is not a non-empty text.")
    start, end = _seconds(entry.get("start_time"), "start_time", where), _seconds(entry.get("end_time"),
                                                                                  "end_time", where)
    if start is not None and end is not None and end < start:
        raise AnnotationError(f"{where} ends ({end:g} s) before it starts ({start:g} s).")
    choices, correct = entry.get("choices"), None
    if choices is not None:
        if (not isinstance(choices, list) or not 2 <= len(choices) <= MAX_CHOICES
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise AnnotationError(f"{where} needs 'choices' as a list of 2 to {MAX_CHOICES} non-empty texts.")
        choices = tuple(strip_choice_labels(choices))
        correct = answer_index(answer, choices)
        if correct is None:
            raise AnnotationError(f"{where} has answer {answer!r}, which is neither a letter, an index nor the "
                                  "text of one of its choices.")
    elif not isinstance(answer, str) or not answer.strip():
        raise AnnotationError(f"{where} is open-ended (no 'choices') but its 'answer' is not a non-empty text.")
    return Question(index, text.strip(), answer, choices, correct, qtype, start, end)


def _no_unknown(entry: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise AnnotationError(f"{where} has unknown field {unknown[0]!r}; allowed fields are "
                              f"{', '.join(sorted(allowed))}.")


def _seconds(value: object, name: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise AnnotationError(f"{where} has {name} {value!r}; it must be a non-negative number of seconds.")
    return float(value)


def _kind(value: object) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")
