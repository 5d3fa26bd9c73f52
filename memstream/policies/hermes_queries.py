"""Reading a HERMES memory: the read cache of questions and pseudo questions, and the pseudo queries.

A question and a pseudo question are the same kind of forward over a layer's held tokens
(`HermesReadCache`): a prefill over sinks + held, whose recorded rows' attention to each held token is
what scores tokens at compression time and what a question's trace shows. The pseudo queries are the
release's wording (`role_prompts`), prefixed after a turn by the last exchange; `layers_fed_embeddings`
reproduces the release's manual pseudo attention, which feeds every layer the token embeddings.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator

import torch

from ..trace import RetrievalTrace
from . import hermes_layers as hl
from .base import Memory, ReadCache
from .hermes_layers import LayerMemory

# The released pseudo-query wording (`predict_next_question` in the release's inference/qwenvl_hermes.py).
LOCAL_PROMPT = ("Describe the current scene in detail, focusing on specific objects, fine-grained actions, "
                "and spatial relationships.")
GLOBAL_PROMPT = ("Summarize the video narrative, identifying main characters, key events, timeline changes, "
                 "and the overall theme.")
# Which prompt's attention scores each layer role (pseudo_queries "roles").
ROLE_PROMPT = {"shallow": "local", "middle": "mixed", "deep": "global"}

# An answer that is a bare option letter ("B", "(B)", "B."), and "X) " labels left inside an answer.
_BARE_LETTER = re.compile(r"\s*\(?([A-Z])\)?\.?\s*")
_LETTER_LABEL = re.compile(r"[A-Z]\) ")
# One option line of a multiple-choice prompt: "(A) text".
_OPTION_LINE = re.compile(r"^\(([A-Z])\)[ \t]*(.+?)[ \t]*$", re.M)


# ---- the released pseudo queries ------------------------------------------------------------------


def split_options(question: str) -> tuple[str, tuple[str, ...] | None]:
    """(question, options) of a question's text.

    A multiple-choice prompt with one "(A) text" line per option, lettered A, B, ... in order (the layout
    of `memstream.evaluate` and of the release), gives the question without its options (and without a
    leading "Question:" and a trailing "Options:") and the option texts. Any other text is the question
    itself, without options: the release records the bare question and the options separately, but a
    stream only sees the text it was asked, so this is how we recover them.
    """
    found = _OPTION_LINE.findall(question)
    if not found or [letter for letter, _ in found] != [chr(ord("A") + i) for i in range(len(found))]:
        return question.strip(), None
    head = question[: _OPTION_LINE.search(question).start()].strip()
    head = head.removesuffix("Options:").strip().removeprefix("Question:").strip()
    return head, tuple(text for _, text in found)


def released_answer(answer: str, options: tuple[str, ...] | None) -> str:
    """The answer as the release writes it into the next pseudo queries: a bare option letter becomes
    its option's text when the options are known; then every "X) " label is removed."""
    bare = _BARE_LETTER.fullmatch(answer)
    if bare and options is not None and ord(bare.group(1)) - ord("A") < len(options):
        answer = options[ord(bare.group(1)) - ord("A")]
    return _LETTER_LABEL.sub("", answer)


def role_prompts(exchange: tuple[str, str] | None) -> dict[str, str]:
    """The released local, global and mixed pseudo-query texts, given the last (question, answer) or None.

    After a turn the history "Question: Q Answer: A" (Q without its options, A as `released_answer`)
    prefixes both prompts: "Find recent details related to: <history>. " before the local one and
    "Context summary: <history>. " before the global one. mixed = local + "; " + global.
    """
    local, global_ = LOCAL_PROMPT, GLOBAL_PROMPT
    if exchange is not None:
        question, options = split_options(exchange[0])
        history = f"Question: {question} Answer: {released_answer(exchange[1], options)}"
        local = f"Find recent details related to: {history}. {local}"
        global_ = f"Context summary: {history}. {global_}"
    return {"local": local, "global": global_, "mixed": f"{local}; {global_}"}


# ---- the release's manual pseudo attention ---------------------------------------------------------


@contextlib.contextmanager
def layers_fed_embeddings(layers: torch.nn.ModuleList) -> Iterator[None]:
    """Inside the block, this thread's forwards feed every decoder layer the input of the first one (the
    token embeddings) instead of the previous layer's output.

    That is what the release's manual pseudo attention computes (its loop over layers never updates the
    hidden state): each layer's queries and keys are its own projections of the normalised embeddings.
    The hooks only act in the thread that installed them, since streams share the model across threads.
    """
    owner = threading.get_ident()
    first: list[torch.Tensor] = []  # the current forward's input to layer 0

    def feed(module: torch.nn.Module, args: tuple, kwargs: dict):
        if threading.get_ident() != owner:
            return None
        x = args[0] if args else kwargs["hidden_states"]
        if module is layers[0]:
            first[:] = [x]
        if args:
            return (first[0], *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": first[0]}

    handles = [layer.register_forward_pre_hook(feed, with_kwargs=True) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ---- the read cache ------------------------------------------------------------------------------


class HermesReadCache(ReadCache):
    """A forward that reads the memory without changing it (pseudo questions and real questions).

    The prefill attends to sinks + running summary + held; later decoding steps grow a private tail that
    is dropped with the cache. The prefill also keeps what it takes to know how much the tokens
    `rows` (a slice of the prompt) attend to each cached key: their position-free queries (capture
    hook "q", later rotated to their positions `start + i`) and the prefill's keys. The softmax is
    computed only when asked (`held_mass`, `trace`), so a question's first token does not wait for it.
    """

    def __init__(self, mem: Memory, layers: list[LayerMemory], start: int, rows: slice, causal: bool = True):
        super().__init__(mem.spec.n_layers)
        L = mem.spec.n_layers
        self.mem = mem
        self.layers = layers
        self.start = start
        self.rows = rows
        self.causal = causal  # False: the recorded tokens see every prompt token (the release's manual path)
        self.query: list[torch.Tensor | None] = [None] * L  # per layer [Sq, Hq, d] position-free
        self.prefill_keys: list[torch.Tensor | None] = [None] * L  # per layer [1, Hkv, S_prompt, d] post-RoPE

    def capture(self, kind: str, layer: int, x: torch.Tensor) -> None:
        if kind == "q" and not self.prefilled(layer):  # prefill only
            self.query[layer] = x[self.rows]  # [Sq, Hq, d]

    def build_context(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.prefill_keys[layer] = k
        return self.mem.context(layer, self.layers[layer])  # sinks (+ running summary) + held

    def context_mass(self, layer: int) -> torch.Tensor | None:
        """Mean attention of the recorded tokens to each context key of `layer`: [K_ctx] (CPU), or None."""
        q, new = self.query[layer], self.prefill_keys[layer]
        if q is None or new is None or q.shape[0] == 0:
            return None
        n_new = new.shape[-2]
        ctx = self.context[layer][0]
        rows = torch.arange(n_new)[self.rows]  # [Sq] index among the prompt's tokens
        where = self.mem.positions.text_at(self.start, n_new)[:, rows]  # [P, Sq]
        q_rot = self.mem.bb.rotate_keys(q.transpose(0, 1), where)  # [Hq, Sq, d]
        mass = hl.attention_mass(q_rot, ctx[0], new[0], rows, self.mem.spec.head_dim ** -0.5,
                                 causal=self.causal)  # [K_ctx + S]
        return mass[: ctx.shape[-2]].cpu()

    def held_mass(self) -> list[torch.Tensor]:
        """Per layer [n]: the recorded attention on each held visual token (zeros if none recorded)."""
        out = []
        for layer, state in enumerate(self.layers):
            mass = self.context_mass(layer)
            out.append(torch.zeros(state.n) if mass is None else mass[mass.numel() - state.n:])
        return out

    def trace(self) -> RetrievalTrace:
        """internal[l, b]: the question's attention mass on block b's tokens held in layer l (0 when
        it holds none); selected[l]: blocks layer l holds a token of; kept[l, b]: how many. A per-round
        summary token counts for the block it follows (the one that completed its chunk), so each
        layer's counts add up to the tokens it holds."""
        n = len(self.mem.blocks)
        times = torch.tensor([b.start_s for b in self.mem.blocks])
        internal, kept, selected = [], [], []
        for state, mass in zip(self.layers, self.held_mass()):
            internal.append(torch.zeros(n).index_add_(0, state.block, mass.float()))
            count = torch.bincount(state.block, minlength=n)
            kept.append(count)
            selected.append(count.nonzero().flatten())
        return RetrievalTrace.build(times, torch.stack(internal), selected, policy=self.mem.policy,
                                    kept=torch.stack(kept), selection="held")
