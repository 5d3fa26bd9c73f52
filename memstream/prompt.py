"""The token ids around the video, from the backbone's chat template (`Backbone.chat`).

    {chat.sink} [visual tokens of every block] {chat.after_video} QUESTION {chat.assistant_turn} [prefix]

Everything before the video is the memory's sink; everything after it is the question.
"""

from __future__ import annotations

from .backbones import Backbone


def sink_ids(bb: Backbone) -> list[int]:
    """Token ids of everything before the first visual token (the memory's sinks)."""
    return bb.tokenize(bb.chat.sink)


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
    head = bb.tokenize(bb.chat.after_video) + (bb.tokenize(question[:at]) if at else [])
    body = bb.tokenize(query)
    rest = question[at + len(query):]
    tail = (bb.tokenize(rest) if rest else []) + bb.tokenize(bb.chat.assistant_turn)
    if answer_prefix:
        tail += bb.tokenize(answer_prefix)
    return head + body + tail, slice(len(head), len(head) + len(body))
