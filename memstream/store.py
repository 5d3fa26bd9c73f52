"""Growable tensors for the memory: a row buffer for per-block vectors and the host block store."""

from __future__ import annotations

import torch


class RowBuffer:
    """A tensor that grows along dim 0 with capacity doubling: appending is amortised O(1) instead
    of the O(N) copy of `torch.cat`, which would make per-block ingest cost grow with the stream."""

    def __init__(self):
        self._data: torch.Tensor | None = None
        self.rows = 0

    def append(self, rows: torch.Tensor) -> None:
        n = rows.shape[0]
        if self._data is None or self.rows + n > self._data.shape[0]:
            capacity = max(16, 2 * (self.rows + n))
            grown = rows.new_empty((capacity, *rows.shape[1:]))
            if self._data is not None:
                grown[: self.rows] = self._data[: self.rows]
            self._data = grown
        self._data[self.rows: self.rows + n] = rows
        self.rows += n

    @property
    def view(self) -> torch.Tensor:
        """The rows so far, [rows, ...] (a view: writes go to the buffer)."""
        assert self._data is not None, "empty buffer"
        return self._data[: self.rows]

    @property
    def nbytes(self) -> int:
        return 0 if self._data is None else self._data.numel() * self._data.element_size()


class BlockStore:
    """Blocks' keys/values in host memory, one tensor [L, 2, Hkv, n, d] per block."""

    def __init__(self, pin: bool):
        self.pin = pin
        self.blocks: list[torch.Tensor] = []
        self.nbytes = 0

    def add(self, kv: torch.Tensor) -> None:
        host = kv.to("cpu", copy=True)
        if self.pin:
            host = host.pin_memory()
        self.blocks.append(host)
        self.nbytes += host.numel() * host.element_size()

    def gather(self, ids: list[int], layer: int, device: torch.device) -> torch.Tensor:
        """Layer `layer` of blocks `ids`, concatenated in that order: [2, Hkv, sum n, d] on device."""
        # copy block by block: each source is pinned, so the copies are asynchronous on CUDA
        return torch.cat([self.blocks[i][layer].to(device, non_blocking=self.pin) for i in ids], dim=-2)
