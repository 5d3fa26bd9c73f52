"""How a memory and the work on it cross a process boundary: pickled bytes, with references where both
sides already hold the object.

What goes by reference (a short tag instead of the object):

    the backbone, the expert, their torch modules   each side has its own loaded copy
    the compute device (torch.device)               the receiver's own device
    a tensor a call returns unchanged               the sender's own tensor (same object, same `_version`)
    a file-backed block store (memstream.store)     its file names; the receiver maps the files
    a large tensor (>= Side.spill_min_bytes)        a file of the shared scratch directory, written once by
                                                    the side that made it; the receiver maps it (the app's
                                                    process never reads its pages; the model side reads it
                                                    when it moves it to the compute device)

Everything else goes by value; a tensor as its raw bytes, placed on the receiver's compute device if it
lived on the sender's (else on the CPU). The app's process holds every such tensor on the CPU and
remembers which of them belong on the compute device.

A call is `dumps(obj)` on one side and `loads(data)` on the other, each with a `Side`: the app's side
keeps the tensors it sent (`Side.sent`), so that the other side's reply may name them instead of
sending them back; the model side records what it received (`Side.received`) to know what is unchanged.
"""

from __future__ import annotations

import io
import os
import pickle
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# tensors of the app's process that live on the compute device when the work runs (held here on the CPU):
# id -> tensor, weak so a tensor dropped by the memory leaves the table
_ON_DEVICE: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()


@dataclass
class Side:
    """One end of a call: what it holds locally (backbone, expert, device) and what crossed so far."""

    backbone: Any  # the local Backbone (referenced as "backbone")
    expert: Any = None  # the local expert or None (referenced as "expert")
    device: torch.device = torch.device("cpu")  # the local compute device; the app's process keeps tensors on CPU
    keep_on_cpu: bool = False  # True in the app's process: tensors stay on the CPU whatever their place
    sent: dict[int, torch.Tensor] = field(default_factory=dict)  # key -> tensor this side sent (app side)
    # id(tensor) -> (key, _version, tensor) received: the tensor is held so that no new tensor of the call can
    # take its id (and pass for it) once the memory dropped it
    received: dict[int, tuple[int, int, torch.Tensor]] = field(default_factory=dict)
    spill_dir: str | None = None  # where large tensors go as files (None: every tensor by value)
    spill_min_bytes: int = 1 << 20  # tensors at least this large go as files
    bytes_tensors: int = 0  # raw tensor bytes written into the last dumps (the rest is structure)
    bytes_tensors_read: int = 0  # raw tensor bytes read from the last loads
    bytes_files: int = 0  # tensor bytes the last dumps wrote to new files
    bytes_files_read: int = 0  # bytes of new files the last loads mapped

    def modules(self) -> dict[int, tuple[str, str]]:
        """id(module) -> (owner, qualified name) of every module of the backbone's and the expert's models."""
        out = {}
        for owner, holder in (("backbone", self.backbone), ("expert", self.expert)):
            model = getattr(holder, "model", None)
            if isinstance(model, torch.nn.Module):
                out.update({id(m): (owner, name) for name, m in model.named_modules()})
        return out


def _raw(t: torch.Tensor) -> bytes:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def _tensor(raw: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.from_numpy(np.frombuffer(bytearray(raw), dtype=np.uint8)).view(dtype).view(shape)


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, side: Side, reply: bool):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.side = side
        self.reply = reply  # the model side answering: unchanged tensors go back as references
        self.modules = side.modules()
        self.keys: dict[int, int] = {}  # id(tensor) -> key within this message
        self.alive: list[Any] = []  # keeps encoded tensors alive so their ids stay unique while pickling

    def persistent_id(self, obj: Any) -> Any:
        side = self.side
        if obj is side.backbone and obj is not None:
            return ("backbone",)
        if obj is side.expert and obj is not None:
            return ("expert",)
        if isinstance(obj, torch.device):
            return ("device",) if obj == side.device else None
        if isinstance(obj, torch.nn.Module):
            where = self.modules.get(id(obj))
            if where is None:
                raise pickle.PicklingError(f"a {type(obj).__name__} module that is neither the backbone's nor "
                                           f"the expert's cannot cross to the model's process")
            return ("module", *where)
        if not isinstance(obj, torch.Tensor):
            return None
        if self.reply:
            seen = side.received.get(id(obj))
            if seen is not None and seen[1] == obj._version:
                return ("same", seen[0])
        key = self.keys.get(id(obj))
        if key is None:
            key = self.keys[id(obj)] = len(self.keys)
            self.alive.append(obj)
            if not self.reply:
                side.sent[key] = obj
            on_device = obj.device.type != "cpu" or id(obj) in _ON_DEVICE
            meta = (str(obj.dtype).removeprefix("torch."), tuple(obj.shape))
            if side.spill_dir is not None and obj.numel() * obj.element_size() >= side.spill_min_bytes:
                return ("file", key, on_device, *meta, self.file_of(obj))
            raw = _raw(obj)
            side.bytes_tensors += len(raw)
            return ("tensor", key, on_device, *meta, raw)
        return ("again", key)

    def file_of(self, t: torch.Tensor) -> str:
        """The file holding `t`'s data: the one it was mapped from if it is unchanged, else a new one."""
        origin = getattr(t, "_memstream_file", None)
        if origin is not None and origin[1] == t._version:
            return origin[0]
        path = os.path.join(self.side.spill_dir, f"{uuid.uuid4().hex}.tensor")
        raw = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        raw.numpy().tofile(path)
        self.side.bytes_files += raw.numel()
        return path


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, side: Side, reply: bool):
        super().__init__(file)
        self.side = side
        self.reply = reply  # reading the model side's answer: "same" names a tensor this side sent
        self.modules: dict[tuple[str, str], torch.nn.Module] | None = None
        self.tensors: dict[int, torch.Tensor] = {}

    def persistent_load(self, pid: Any) -> Any:
        side, tag = self.side, pid[0]
        if tag == "backbone":
            return side.backbone
        if tag == "expert":
            return side.expert
        if tag == "device":
            return side.device
        if tag == "module":
            holder = side.backbone if pid[1] == "backbone" else side.expert
            return holder.model.get_submodule(pid[2])
        if tag == "same":
            return side.sent[pid[1]]
        if tag == "again":
            return self.tensors[pid[1]]
        _, key, on_device, dtype, shape, data = pid
        if tag == "file":
            t = self.mapped(data, getattr(torch, dtype), shape)
        else:
            side.bytes_tensors_read += len(data)
            t = _tensor(data, getattr(torch, dtype), shape)
        if on_device:
            if side.keep_on_cpu:
                _ON_DEVICE[id(t)] = t
            else:
                t = t.to(side.device)
        self.tensors[key] = t
        if not self.reply:
            side.received[id(t)] = (key, t._version, t)
        return t

    def mapped(self, path: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor in file `path`, mapped (pages load when read; writes stay private to this process)."""
        t = torch.from_numpy(np.memmap(path, dtype=np.uint8, mode="c")).view(dtype).view(shape)
        t._memstream_file = (path, t._version)  # sending it unchanged names the file again
        if self.side.keep_on_cpu:  # the app's process owns the files: one goes when its tensor goes
            self.side.bytes_files_read += t.numel() * t.element_size()
            weakref.finalize(t, _remove, path)
        return t


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def dumps(obj: Any, side: Side, *, reply: bool = False) -> bytes:
    """Pickle `obj` for the other side (`reply`: the model side's answer to a call it received)."""
    buf = io.BytesIO()
    side.bytes_tensors = side.bytes_files = 0
    _Pickler(buf, side, reply).dump(obj)
    return buf.getvalue()


def loads(data: bytes, side: Side, *, reply: bool = False) -> Any:
    """Unpickle what the other side sent (`reply`: its answer to a call this side made)."""
    side.bytes_tensors_read = side.bytes_files_read = 0
    return _Unpickler(io.BytesIO(data), side, reply).load()
