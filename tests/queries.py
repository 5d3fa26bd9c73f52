"""What a question's forward records, for tests that plant scores against it."""

from __future__ import annotations

import torch

from memstream.prompt import question_ids


def mean_question_query(stream, layer: int, question: str) -> torch.Tensor:
    """The question's mean position-free query in `layer` [Hq, d], as a fresh question cache records it
    (the forward runs over the memory; nothing is kept)."""
    mem, bb = stream.memory, stream.engine.backbone
    ids, qslice = question_ids(bb, question)
    cache = mem.question_cache(qslice, question)
    start = mem.question_start()
    bb.decode(bb.embed(ids), torch.arange(start, start + len(ids)).expand(3, -1), cache)
    return cache.record.query[layer]
