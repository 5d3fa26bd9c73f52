"""Greedy decoding: the token loop and the incremental detokenizer that turns its ids into text.

    detok = IncrementalDetokenizer(tokenizer)
    for token_id in greedy_tokens(first_logits, step, start_position=p, max_new_tokens=64, eos_ids={eos}):
        detok.add(token_id)
        show(detok.text)             # grows; never ends in half a character
    answer = detok.finish()          # == tokenizer.decode(detok.token_ids, skip_special_tokens=True)

`Stream.ask` (over the memory's cache) and the oracle `reference_answer` (over the stock model's
own cache) both decode this way; only their `step` differs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any

import torch

REPLACEMENT = "\ufffd"  # what decoding shows for bytes that are not (yet) a whole UTF-8 character


def greedy_tokens(first_logits: torch.Tensor, step: Callable[[int, int], torch.Tensor], *, start_position: int,
                  max_new_tokens: int, eos_ids: Collection[int]) -> Iterator[int]:
    """Yield greedy token ids, at most `max_new_tokens`, stopping before an end-of-sequence id.

    first_logits: [vocab] scores of the first answer token (the prompt's last position).
    step(token_id, position): runs the model on one generated token at `position` (its text
        position, the same on every M-RoPE axis) and returns the next token's logits [vocab].
    start_position: the position of the first generated token (right after the prompt).

    `step` runs lazily: a token is yielded before the forward that produces the next one, so a
    consumer can show it first, and no forward runs after the last token.
    """
    logits, position, n = first_logits, start_position, 0
    while n < max_new_tokens:
        token = int(logits.argmax())
        if token in eos_ids:
            return
        n += 1
        yield token
        if n == max_new_tokens:
            return  # the last token's forward would only feed a token that is never taken
        logits = step(token, position)
        position += 1


class IncrementalDetokenizer:
    """The text of a growing list of token ids, decoding only the ids since the last whole character.

    A byte-level tokenizer (Qwen's, the tiny model's) spells a multi-byte UTF-8 character over
    several tokens; decoding a prefix that stops inside one shows U+FFFD. So ids are committed to
    `text` only once the ids since the last commit decode to text that does not end in U+FFFD; until
    then they are held back. Each commit decodes the held ids together with the previously committed
    piece and keeps what that piece's own text is followed by, so a tokenizer whose rendering of a
    token depends on the token before it (a leading space dropped at the start) is read in context.
    Cost per token: the decode of those few ids, not of the whole answer.

    Exact for tokenizers whose decode of a concatenation is the concatenation of the decodes when
    the split falls between whole characters (byte-level BPE without space clean-up); `finish()`
    falls back to one full decode when a tokenizer turns out not to be.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.text = ""  # committed text: a prefix of the final text
        self._piece_start = 0  # ids[_piece_start:_held_start] are the last committed piece (the context)
        self._held_start = 0  # ids from here on are not in `text` yet
        self._piece_text = ""  # decode(ids[_piece_start:_held_start]) on its own
        self._consistent = True  # False once a decode in context did not extend the piece's own text

    def add(self, token_id: int) -> str:
        """Append one id; returns the text this commits (often "", while a character is incomplete)."""
        self.token_ids.append(int(token_id))
        window = self._decode(self.token_ids[self._piece_start:])
        if not window.startswith(self._piece_text):
            self._consistent = False  # not prefix-stable: hold everything, finish() decodes in full
            return ""
        new = window[len(self._piece_text):]
        if not new or new.endswith(REPLACEMENT):
            return ""  # nothing visible yet, or possibly the first bytes of a character: wait
        self.text += new
        self._piece_start, self._held_start = self._held_start, len(self.token_ids)
        self._piece_text = self._decode(self.token_ids[self._piece_start:self._held_start])
        return new

    def finish(self) -> str:
        """The final text: `text` plus whatever is held (a trailing U+FFFD stays if the ids end inside
        a character). Equal to `tokenizer.decode(token_ids, skip_special_tokens=...)`."""
        if not self._consistent:
            return self._decode(self.token_ids)
        window = self._decode(self.token_ids[self._piece_start:])
        if not window.startswith(self._piece_text):
            return self._decode(self.token_ids)
        return self.text + window[len(self._piece_text):]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens) if ids else ""
