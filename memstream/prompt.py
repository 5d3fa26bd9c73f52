"""The chat prompt around the video, as Qwen2.5-VL's chat template lays it out.

    <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>
    [visual tokens of every block]
    <|vision_end|>QUESTION<|im_end|>\n<|im_start|>assistant\n

Everything before the video is the memory's sink; everything after it is the question.
"""

from __future__ import annotations

from .backbone import Backbone

SYSTEM_PROMPT = "You are a helpful assistant."


def sink_text() -> str:
    return f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n<|vision_start|>"


def question_ids(bb: Backbone, question: str) -> tuple[list[int], slice]:
    """Token ids of the text after the video, and the slice holding the raw question."""
    head = bb.tokenize("<|vision_end|>")
    body = bb.tokenize(question)
    tail = bb.tokenize("<|im_end|>\n<|im_start|>assistant\n")
    return head + body + tail, slice(len(head), len(head) + len(body))
