"""Checks on what users pass in, each failing with one sentence (`ConfigError` / `InputError`).

Low in the package on purpose: policies, configs, the engine and the oracle all use these, so this
module imports nothing of memstream but its errors.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

MAX_QUESTION_CHARS = 4000
MAX_NEW_TOKENS = 4096


def is_int(x: object) -> bool:
    """An int that is not a bool (True is an int in Python, never a token count here)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: object) -> bool:
    """An int or a float that is not a bool."""
    return isinstance(x, int | float) and not isinstance(x, bool)


def is_count_or_fraction(x: object) -> bool:
    """A token count (int >= 1) or a fraction (float in (0, 1]) of the tokens available."""
    return (is_int(x) and x >= 1) or (isinstance(x, float) and 0.0 < x <= 1.0)


def check_question(question: object, max_new_tokens: object) -> str:
    """The question, stripped; InputError for non-text, empty or over-long questions and bad lengths."""
    if not isinstance(question, str):
        raise InputError(f"The question must be text, got {type(question).__name__}.")
    q = question.strip()
    if not q:
        raise InputError("The question is empty; type a question about the video.")
    if len(q) > MAX_QUESTION_CHARS:
        raise InputError(f"The question is too long ({len(q)} characters; the limit is {MAX_QUESTION_CHARS}).")
    if not is_int(max_new_tokens) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise InputError(f"max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}, got {max_new_tokens!r}.")
    return q


def check_times(times: object, n: int, last: float | None, fps: float) -> np.ndarray:
    """Validate or synthesise the timestamps of `n` frames: float64 [n] seconds, strictly increasing
    and after `last` (the previous frame's time, None for the first). Without `times`, frames are
    spaced 1/fps after `last`."""
    if times is None:
        first = 0.0 if last is None else last + 1.0 / fps
        return first + np.arange(n) / fps
    try:
        arr = np.asarray(times, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise InputError("Frame times must be numbers (seconds).") from exc
    if len(arr) != n:
        raise InputError(f"Got {n} frames but {len(arr)} timestamps.")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise InputError("Frame times must be finite, non-negative seconds.")
    prev = np.concatenate([[-np.inf if last is None else last], arr[:-1]])
    if (arr <= prev).any():
        bad = int(np.argmax(arr <= prev))
        raise InputError(f"Frame times must increase: got {arr[bad]:.3f} s after {prev[bad]:.3f} s.")
    return arr
