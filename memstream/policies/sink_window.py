"""`sink-window`: attention sinks + the most recent `n_local` tokens (StreamingLLM-style).

Nothing is stored beyond the window and nothing is retrieved: a question attends to the sinks and
the window, which is exactly what every block attended to while it was ingested. With a window larger
than the stream it equals `full`. The trace scores every block (for the heatmap) and marks as
selected the blocks the window still covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backbones import Backbone
from ..checks import is_int
from .base import PolicyConfig, need
from .window import WindowMemory


@dataclass(frozen=True)
class SinkWindowConfig(PolicyConfig):
    n_local: int = 4096  # visual tokens the window keeps, for ingestion and questions alike

    def validate(self) -> None:
        need(is_int(self.n_local) and self.n_local >= 1,
             f"n_local must be a positive number of tokens, got {self.n_local!r}.")


class SinkWindowMemory(WindowMemory):
    """Sinks + a bounded window, no store: `WindowMemory` as it is."""

    def __init__(self, backbone: Backbone, config: SinkWindowConfig, *, fps: float, expert: Any = None):
        super().__init__(backbone, config, fps=fps, expert=expert, store=False)

    def tokens_stored(self) -> int:
        """Visual tokens held: the window's (older blocks are gone), not every token ever ingested."""
        return self.window_tokens()
