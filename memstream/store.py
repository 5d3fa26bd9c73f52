"""Growable tensors for the memory: a row buffer for per-block vectors and the host block store.

The block store keeps every block's keys/values in host memory, or, inside `spill_to(directory)`, in one
file per block of that directory: a memory built there pickles its store as file names, and a process
that unpickles it memory-maps the files, so a question reads only the blocks its layers retrieve
(`memstream.runner`: the memory's state lives in the app's process, the model work in another).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import numpy as np
import torch

# where block stores created in this context keep their blocks (None: in memory)
_SPILL_DIR: contextvars.ContextVar[str | None] = contextvars.ContextVar("memstream_spill_dir", default=None)


@contextlib.contextmanager
def spill_to(directory: str | None) -> Iterator[None]:
    """Block stores created inside the block keep their blocks as files in `directory` (None: in memory)."""
    token = _SPILL_DIR.set(directory)
    try:
        yield
    finally:
        _SPILL_DIR.reset(token)


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
    """Blocks' keys/values in host memory, one tensor [L, 2, Hkv, n, d] per block; or, when created inside
    `spill_to(directory)`, one file per block there (`block_000042.kv`, the tensor's raw bytes)."""

    def __init__(self, pin: bool):
        self.directory = _SPILL_DIR.get()  # None: the blocks are the tensors in `blocks`
        self.pin = pin and self.directory is None
        self.blocks: list[torch.Tensor] = []  # in memory, or memory-mapped files (mapped on first use)
        self.shapes: list[tuple[int, ...]] = []  # [L, 2, Hkv, n, d] of each block
        self.dtype: torch.dtype | None = None
        self.nbytes = 0

    def add(self, kv: torch.Tensor) -> None:
        host = kv.to("cpu", copy=True)
        if self.directory is not None:
            host = host.contiguous()
            raw = host.reshape(-1).view(torch.uint8) if host.numel() else host.new_empty(0, dtype=torch.uint8)
            raw.numpy().tofile(self.path(len(self.shapes)))  # a failed write leaves the block list as it was
        elif self.pin:
            host = host.pin_memory()
        self.blocks.append(host)
        self.shapes.append(tuple(host.shape))
        self.dtype = host.dtype
        self.nbytes += host.numel() * host.element_size()

    def path(self, index: int) -> str:
        return os.path.join(self.directory, f"block_{index:06d}.kv")

    def block(self, index: int) -> torch.Tensor:
        """Block `index` [L, 2, Hkv, n, d] in host memory (a file is mapped, not read: pages load on use)."""
        if index >= len(self.blocks):  # an unpickled file-backed store maps its files when first asked
            self.blocks.extend([None] * (len(self.shapes) - len(self.blocks)))
        if self.blocks[index] is None:
            mapped = np.memmap(self.path(index), dtype=np.uint8, mode="c")  # copy-on-write: the file stays as is
            self.blocks[index] = torch.from_numpy(mapped).view(self.dtype).view(self.shapes[index])
        return self.blocks[index]

    def gather(self, ids: list[int], layer: int, device: torch.device) -> torch.Tensor:
        """Layer `layer` of blocks `ids`, concatenated in that order: [2, Hkv, sum n, d] on device."""
        # copy block by block: each source is pinned, so the copies are asynchronous on CUDA
        return torch.cat([self.block(i)[layer].to(device, non_blocking=self.pin) for i in ids], dim=-2)

    def __getstate__(self) -> dict:
        """A file-backed store pickles as its directory and block shapes: the files are the data."""
        state = dict(self.__dict__)
        if self.directory is not None:
            state["blocks"] = []
        return state
