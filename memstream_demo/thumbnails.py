"""The demo's pictures of the blocks in memory, for the thumbnail strip (the library keeps none)."""

from __future__ import annotations

import base64
import io

import numpy as np

from memstream import video


class Thumbnails:
    """The demo's pictures of every block: each of its frames, `height` px high, as JPEG data URIs (a few
    KB each, encoded once here rather than on every redraw).

    A feed target beside the streams: it is handed the same frames and groups them into blocks as a
    stream does (`frames_per_block` at a time; `flush` closes a last, partial block), so thumbnail b
    is block b of every stream of the session. The library keeps no pictures."""

    def __init__(self, height: int, frames_per_block: int = 2):
        self.height = height
        self.per = frames_per_block
        self.images: list[list[str]] = []  # per block: its frames' data URIs
        self._pending: list[np.ndarray] = []  # frames of a block not yet complete

    def add_frames(self, frames: np.ndarray, times: list[float]) -> int:
        self._pending.extend(frames)
        whole = len(self._pending) // self.per * self.per
        for first in range(0, whole, self.per):
            self._keep(self._pending[first:first + self.per])
        self._pending = self._pending[whole:]
        return whole // self.per

    def flush(self) -> int:
        if not self._pending:
            return 0
        self._keep(self._pending)
        self._pending = []
        return 1

    def get(self, block: int) -> list[str] | None:
        return self.images[block] if 0 <= block < len(self.images) else None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        return sum(len(uri) for uris in self.images for uri in uris)

    def _keep(self, frames: list[np.ndarray]) -> None:
        from PIL import Image

        uris = []
        for frame in frames:
            w = max(1, round(frame.shape[1] * self.height / frame.shape[0]))
            buf = io.BytesIO()
            Image.fromarray(video.resize_frames(frame, (self.height, w))[0]).save(buf, format="JPEG", quality=80)
            uris.append("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"))
        self.images.append(uris)
