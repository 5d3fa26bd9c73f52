"""Multiple-choice prompts and letters: building the prompt, normalising answers, scoring the letter.

The prompt follows ReKV's released multiple-choice format (`video_qa/base.py`, `format_mcqa_prompt`):
the user turn is

    Question: What is the man holding?
    Options:
    (A) a cup
    (B) a phone
    Only give the best option.

the assistant's turn opens with "Best option: (" (`Stream.ask(..., answer_prefix=...)`), and the
blocks are scored with the question text alone (`query=`), not the options. The answer is the
option letter whose token has the highest first-token logit among the option letters only, so
every model (even a random one) gives a valid letter.
"""

from __future__ import annotations

import re
from string import ascii_uppercase

import torch

from ..backbones import Backbone
from ..errors import ConfigError

MAX_CHOICES = len(ascii_uppercase)  # options are lettered A..Z
ANSWER_PREFIX = "Best option: ("  # opens the assistant's turn, as ReKV's release does
MC_INSTRUCTION = "Only give the best option."  # the last line of ReKV's multiple-choice user turn
_LABEL = re.compile(r"^\s*\(?([A-Za-z])\s*[).:]\s*(.*)$", re.S)  # "(A) x", "A. x", "A) x", "A: x"


def letters(n: int) -> list[str]:
    """The first n option letters: A, B, C, ..."""
    return list(ascii_uppercase[:n])


def strip_choice_labels(choices: list[str]) -> list[str]:
    """Choices without their own "A." / "(A)" labels, when *every* choice carries its letter in order
    (VideoMME writes "A. Apples."); otherwise unchanged, so an option like "A dog" is kept whole."""
    matches = [_LABEL.match(c) for c in choices]
    if all(m and m.group(1).upper() == letter and m.group(2).strip()
           for m, letter in zip(matches, ascii_uppercase)):
        return [m.group(2).strip() for m in matches]
    return [c.strip() for c in choices]


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def answer_index(answer: str | int, choices: tuple[str, ...] | list[str]) -> int | None:
    """0-based index of the correct option, or None if `answer` names none of them.

    Accepted, in this order: the option's text (case and spacing ignored, also after a "(B)" label),
    its letter ("B", "(B)", "B."), or its 0-based index (an integer or a string of digits).
    """
    n = len(choices)
    if isinstance(answer, int):
        return answer if 0 <= answer < n else None
    texts = [_norm(c) for c in choices]
    text = answer.strip()
    if _norm(text) in texts:
        return texts.index(_norm(text))
    label = _LABEL.match(text)
    if label and label.group(2).strip():  # "(B) a phone": the label and the text must agree
        i = ascii_uppercase.find(label.group(1).upper())
        return i if i < n and _norm(label.group(2)) == texts[i] else None
    bare = re.fullmatch(r"\(?([A-Za-z])\)?[.:]?", text)
    if bare:
        i = ascii_uppercase.find(bare.group(1).upper())
        return i if i < n else None
    if text.isdigit():
        return int(text) if int(text) < n else None
    return None


def mc_prompt(question: str, choices: tuple[str, ...] | list[str]) -> str:
    """The user turn of a multiple-choice question, worded as ReKV's release words it; ask it with
    `answer_prefix=ANSWER_PREFIX` so the next token is the letter."""
    options = "\n".join(f"({letter}) {choice}" for letter, choice in zip(ascii_uppercase, choices))
    return f"Question: {question}\nOptions:\n{options}\n{MC_INSTRUCTION}"


def letter_token_ids(bb: Backbone, n: int) -> list[int]:
    """The token id of each of the first n option letters in the model's vocabulary.

    Qwen's tokenizer (and the tiny byte-level one) has one token per capital letter; a tokenizer
    without one cannot be scored this way, which is a configuration problem, not a crash.
    """
    ids = []
    for letter in letters(n):
        tok = bb.tokenize(letter)
        if len(tok) != 1:
            raise ConfigError(f"The model's tokenizer has no single token for option letter {letter!r}, "
                              "so multiple-choice answers cannot be scored.")
        ids.append(tok[0])
    return ids


def pick_letter(first_logits: torch.Tensor, ids: list[int]) -> tuple[int, list[float]]:
    """(index of the chosen option, the logits of every option letter) from first-token logits [vocab].

    Ties go to the earlier letter (argmax's first maximum), so the choice is deterministic.
    """
    scores = first_logits.float()[torch.as_tensor(ids)]
    return int(scores.argmax()), [float(s) for s in scores]
