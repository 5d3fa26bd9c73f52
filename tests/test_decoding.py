"""Tests for memstream/decoding.py: the greedy loop and the incremental detokenizer."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from memstream.backbones.qwen2_5_vl import SPECIAL_TOKENS as QWEN_SPECIAL_TOKENS
from memstream.backbones.qwen2_5_vl import preset_tokenizer as build_tiny_tokenizer
from memstream.decoding import REPLACEMENT, IncrementalDetokenizer, greedy_tokens


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


# ---------------------------------------------------------------- detokenizer


def stream_texts(tokenizer, ids, skip=True) -> tuple[list[str], str]:
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=skip)
    shown = []
    for i in ids:
        new = detok.add(i)
        assert detok.text.endswith(new)
        shown.append(detok.text)
    return shown, detok.finish()


def id_sequences(tok, n: int, seed: int = 0):
    """Random ids of three kinds: any id of the vocabulary (invalid UTF-8 galore, special tokens),
    the bytes of multi-byte characters mixed with special tokens, and real text's ids."""
    rng = random.Random(seed)
    special = list(range(256, len(tok)))
    utf8 = list("é€你🎥 aZ\n∑".encode())
    for k in range(n):
        length = rng.randint(0, 40)
        if k % 3 == 0:
            yield [rng.randrange(len(tok)) for _ in range(length)]
        elif k % 3 == 1:
            yield [rng.choice(special) if rng.random() < 0.15 else rng.choice(utf8) for _ in range(length)]
        else:
            text = "".join(rng.choice(["a", " ", "é", "你", "🎥", "∑", "<|im_end|>"]) for _ in range(length))
            yield tok(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("skip", [True, False])
def test_final_text_equals_a_full_decode_on_random_ids(tok, skip):
    assert len(tok) == 256 + len(QWEN_SPECIAL_TOKENS)
    for ids in id_sequences(tok, 1500, seed=int(skip)):
        shown, final = stream_texts(tok, ids, skip)
        assert final == tok.decode(ids, skip_special_tokens=skip), ids
        for k, text in enumerate(shown, 1):
            # what is shown is the decode of the ids so far minus at most an unfinished character
            so_far = tok.decode(ids[:k], skip_special_tokens=skip)
            assert so_far.startswith(text) and final.startswith(text), (ids[:k], text)
            held = so_far[len(text):]
            assert held == "" or held.endswith(REPLACEMENT), (ids[:k], held)
            assert not text.endswith(REPLACEMENT), (ids[:k], text)


def test_a_multibyte_character_appears_whole(tok):
    ids = tok("é🎥", add_special_tokens=False).input_ids
    assert len(ids) == 6  # byte-level: 2 + 4 tokens
    shown, final = stream_texts(tok, ids)
    assert shown == ["", "é", "é", "é", "é", "é🎥"] and final == "é🎥"
    # special tokens between the bytes of one character are skipped, and the character still forms
    shown, final = stream_texts(tok, [ids[0], tok.convert_tokens_to_ids("<|im_start|>"), ids[1]])
    assert shown == ["", "", "é"] and final == "é"


def test_ids_that_end_inside_a_character_finish_as_a_full_decode_does(tok):
    ids = tok("a你", add_special_tokens=False).input_ids[:-1]  # the last byte of 你 never comes
    shown, final = stream_texts(tok, ids)
    assert shown == ["a", "a", "a"] and final == tok.decode(ids) == "a" + REPLACEMENT


class WordTokenizer:
    """A sentencepiece-like tokenizer: '▁' marks a space, and decoding drops the space of the first
    token; so a token decoded alone reads differently than after another one."""

    words = ["▁Hello", "▁world", "!", "▁again"]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.words[i] for i in ids).replace("▁", " ").removeprefix(" ")


class CleanupTokenizer:
    """Decoding removes a space before '.', so a decode is not always a prefix of a longer one."""

    pieces = ["a", " ", "."]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.pieces[i] for i in ids).replace(" .", ".")


def test_a_token_is_read_in_the_context_of_the_one_before():
    shown, final = stream_texts(WordTokenizer(), [0, 1, 2, 3])
    assert shown == ["Hello", "Hello world", "Hello world!", "Hello world! again"]
    assert final == "Hello world! again"


def test_a_tokenizer_that_rewrites_earlier_text_still_finishes_exactly():
    tokenizer = CleanupTokenizer()
    _, final = stream_texts(tokenizer, [0, 1, 2, 0])
    assert final == tokenizer.decode([0, 1, 2, 0]) == "a.a"


# ---------------------------------------------------------------- greedy loop


def one_hot(token: int, vocab: int = 10) -> torch.Tensor:
    logits = torch.zeros(vocab)
    logits[token] = 1.0
    return logits


def scripted(tokens: list[int]):
    """A `step` whose next token follows `tokens`; records (token, position) of every call."""
    calls: list[tuple[int, int]] = []

    def step(token: int, position: int) -> torch.Tensor:
        calls.append((token, position))
        return one_hot(tokens[len(calls)])

    return step, calls


def test_greedy_stops_before_eos_and_steps_at_consecutive_positions():
    step, calls = scripted([3, 4, 5, 9, 6])
    out = list(greedy_tokens(one_hot(3), step, start_position=100, max_new_tokens=10, eos_ids={9}))
    assert out == [3, 4, 5] and calls == [(3, 100), (4, 101), (5, 102)]


def test_greedy_takes_at_most_max_new_tokens_without_a_wasted_step():
    step, calls = scripted([1, 2, 3, 4, 5])
    assert list(greedy_tokens(one_hot(1), step, start_position=7, max_new_tokens=3, eos_ids=())) == [1, 2, 3]
    assert calls == [(1, 7), (2, 8)]  # no forward after the last token
    step, calls = scripted([9])
    assert list(greedy_tokens(one_hot(9), step, start_position=0, max_new_tokens=5, eos_ids={9})) == []
    assert calls == []


def test_greedy_yields_each_token_before_computing_the_next():
    step, calls = scripted([1, 2, 3])
    gen = greedy_tokens(one_hot(1), step, start_position=0, max_new_tokens=3, eos_ids=())
    assert next(gen) == 1 and calls == []
    assert next(gen) == 2 and calls == [(1, 0)]


# ---------------------------------------------------------------- its users


def test_streamed_partials_grow_into_the_final_text(engine):
    stream = engine.stream(policy="full", fps=1.0, tokens_per_frame=8)
    stream.add_frames(np.random.default_rng(0).integers(0, 256, (4, 56, 56, 3), dtype=np.uint8))
    parts = list(stream.ask("What is there?", max_new_tokens=12, stream=True))
    final = parts[-1]
    assert final.done and final.text == engine.backbone.tokenizer.decode(final.token_ids, skip_special_tokens=True)
    for a, b in zip(parts, parts[1:]):
        assert b.text.startswith(a.text)
    assert all(not p.text.endswith(REPLACEMENT) for p in parts[:-1])
