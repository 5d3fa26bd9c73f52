"""What a question saw: the retrieval trace and the answer, the data behind the demo's heatmap."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .retrieval import minmax


def rank(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of x [N], ties sharing their average rank (as Spearman's rho needs)."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.double)
    values, inverse = torch.unique(x, return_inverse=True)
    sums = torch.zeros(len(values), dtype=torch.double).index_add_(0, inverse, ranks)
    counts = torch.bincount(inverse, minlength=len(values)).double()
    return (sums / counts)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two [N] vectors; nan when N < 2 or one side is constant."""
    if a.numel() < 2:
        return float("nan")
    ra, rb = rank(a) - (a.numel() + 1) / 2, rank(b) - (b.numel() + 1) / 2
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    if denom == 0:
        return float("nan")
    return float((ra * rb).sum() / denom)


SELECTIONS = ("retrieved", "held", "attended")  # RetrievalTrace.selection
RANKINGS = ("internal", "external", "fused", "none")  # RetrievalTrace.ranking


@dataclass
class RetrievalTrace:
    """Retrieval scores of one question over the N blocks in memory when it was asked.

    Rows are in block (time) order. `internal` holds each layer's raw question-vs-block scores;
    `internal_agg` the mean over layers of min-max normalised rows (so no layer dominates);
    `fused` the score that decided retrieval for display (equal to `internal_agg` without an
    external expert). `bias` holds Spearman's rho between block start time and score: a positive
    `internal` value is the temporal bias (later blocks score higher) MemStream describes.

    Two fields say what the numbers mean, so that a reader (the CLI, the demo's heatmap) never has to
    know the policy: `selection` what `selected` lists, `ranking` which score chose it.
    """

    block_times: torch.Tensor  # [N] start of each block, seconds of stream time
    internal: torch.Tensor  # [L, N] float32, raw internal scores per layer
    internal_agg: torch.Tensor  # [N] float32 in [0, 1]
    external: torch.Tensor | None  # [N] external expert scores, or None without an expert
    fused: torch.Tensor  # [N] float32
    selected: list[torch.Tensor]  # L x LongTensor [k_l], block indices each layer attended, time order
    bias: dict[str, float] = field(default_factory=dict)  # {"internal": rho, "fused": rho}
    policy: str = ""
    kept: torch.Tensor | None = None  # [L, N] long: tokens of each block each layer holds (hermes), else None
    # what `selected` lists: "retrieved" (ranked, top-k at question time), "held" (blocks the memory
    # still holds tokens of; nothing retrieved) or "attended" (a fixed window; nothing ranked)
    selection: str = "retrieved"
    # the score that chose the retrieved blocks: "internal", "external" or "fused" ("none" if nothing was ranked)
    ranking: str = "internal"
    # one sentence when something went wrong but the answer was still given (e.g. the external expert failed,
    # so the blocks were ranked internal-only: `memstream.errors.expert_failure`); "" when nothing did
    notice: str = ""

    @classmethod
    def build(cls, block_times: torch.Tensor, internal: torch.Tensor, selected: list[torch.Tensor],
              external: torch.Tensor | None = None, fused: torch.Tensor | None = None,
              policy: str = "", kept: torch.Tensor | None = None, selection: str = "retrieved",
              ranking: str | None = None) -> RetrievalTrace:
        """`ranking` defaults to "fused" when an external score and a fused one are given, else "internal"
        ("none" for a selection that ranks nothing)."""
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if ranking is None:
            ranking = "none" if selection != "retrieved" else (
                "fused" if external is not None and fused is not None else "internal")
        if ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
        internal = internal.float().cpu()
        agg = minmax(internal, dim=-1).mean(dim=0)
        fused = agg if fused is None else fused.float().cpu()
        external = None if external is None else external.float().cpu()
        bias = {"internal": spearman(block_times, agg), "fused": spearman(block_times, fused)}
        return cls(block_times.float().cpu(), internal, agg, external, fused,
                   [s.cpu() for s in selected], bias, policy, None if kept is None else kept.long().cpu(),
                   selection, ranking)

    def selection_counts(self) -> torch.Tensor:
        """How many layers retrieved each block: LongTensor [N]."""
        counts = torch.zeros(len(self.block_times), dtype=torch.long)
        for sel in self.selected:
            counts[sel] += 1
        return counts

    def to_dict(self) -> dict:
        """Plain-JSON form (lists of floats/ints)."""
        return {
            "policy": self.policy,
            "block_times": self.block_times.tolist(),
            "internal": self.internal.tolist(),
            "internal_agg": self.internal_agg.tolist(),
            "external": None if self.external is None else self.external.tolist(),
            "fused": self.fused.tolist(),
            "selected": [s.tolist() for s in self.selected],
            "bias": self.bias,
            "kept": None if self.kept is None else self.kept.tolist(),
            "selection": self.selection,
            "ranking": self.ranking,
            "notice": self.notice,
        }


@dataclass
class Answer:
    """One answer and what it was based on."""

    question: str
    text: str  # the decoded answer (may grow while streaming)
    token_ids: list[int]  # generated token ids, end-of-turn excluded
    ttft_s: float  # seconds from the call to the first token's logits
    first_logits: torch.Tensor  # [vocab] float32 logits of the first answer token
    trace: RetrievalTrace | None  # on the final answer; None on partial ones and for the offline reference
    asked_at_s: float  # stream time (seconds) covered by memory when asked
    frames_seen: int  # frames in memory when asked
    blocks_seen: int  # blocks in memory when asked
    tokens_seen: int  # visual tokens in memory when asked
    policy: str
    done: bool = True  # False on partial answers yielded while decoding
    total_s: float = 0.0  # seconds for the whole answer so far

    def summary(self) -> str:
        """The stamp the demo and CLI print under an answer."""
        return (f"asked at {self.asked_at_s:.1f} s · {self.frames_seen} frames · {self.blocks_seen} blocks · "
                f"{self.tokens_seen} tokens · TTFT {self.ttft_s:.2f} s · policy {self.policy}")
