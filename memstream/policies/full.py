"""`full`: every block stays in the cache and every question attends to all of it.

The correctness oracle (short clips only): streaming ingestion under `full` gives the same logits as
one offline forward of the stock model over the same sequence (`Engine.reference_answer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backbones import Backbone
from .base import PolicyConfig
from .window import WindowMemory


@dataclass(frozen=True)
class FullConfig(PolicyConfig):
    """`full` has no options: the window is unbounded and nothing is retrieved."""


class FullMemory(WindowMemory):
    """An unbounded window and no block store: the question sees sinks + every block."""

    def __init__(self, backbone: Backbone, config: FullConfig, *, fps: float, expert: Any = None):
        super().__init__(backbone, config, fps=fps, expert=expert, store=False)
