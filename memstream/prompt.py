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


def question_ids(bb: Backbone, question: str, query: str | None = None,
                 answer_prefix: str = "") -> tuple[list[int], slice]:
    """Token ids of the text after the video, and the slice of the tokens that form the retrieval
    query.

    `query` is a substring of `question` (default: all of it) whose tokens' mean query vector
    scores the blocks, e.g. the question without its multiple-choice options. `answer_prefix` is
    text that opens the assistant's turn (e.g. "Best option: (") and is never part of the query.
    The question is tokenised in up to three pieces split at the query's edges, which can differ
    from one joint tokenisation by a merge at each edge; with the default query it is exact.
    """
    query = question if query is None else query
    at = question.find(query) if query else -1
    if at < 0:
        raise ValueError("the retrieval query must be a non-empty part of the question")
    head = bb.tokenize("<|vision_end|>") + (bb.tokenize(question[:at]) if at else [])
    body = bb.tokenize(query)
    rest = question[at + len(query):]
    tail = (bb.tokenize(rest) if rest else []) + bb.tokenize("<|im_end|>\n<|im_start|>assistant\n")
    if answer_prefix:
        tail += bb.tokenize(answer_prefix)
    return head + body + tail, slice(len(head), len(head) + len(body))
