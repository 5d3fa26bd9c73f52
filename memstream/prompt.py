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

    The whole text after the video is tokenised once, so the ids are exactly those of one joint
    tokenisation (a byte-level BPE merges across the query's edges: " What", "?\\n"). The query's
    tokens are those whose characters overlap the query's characters (`return_offsets_mapping`):
    a token merged across an edge belongs to the query, a lone space before it does not.
    """
    query = question if query is None else query
    at = question.find(query) if query else -1
    if at < 0:
        raise ValueError("the retrieval query must be a non-empty part of the question")
    head = bb.chat.after_video
    text = head + question + bb.chat.assistant_turn + answer_prefix
    start = len(head) + at
    end = start + len(query)
    enc = bb.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
    if not inside:  # cannot happen for a non-empty query of a tokenizer whose offsets cover the text
        raise ValueError("no token of the prompt covers the retrieval query")
    return ids, slice(inside[0], inside[-1] + 1)
