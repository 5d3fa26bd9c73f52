"""Where models run and come from: the compute device, and whether the model hub can be reached.

Shared by the backbones and the external experts, so that both fail the same way offline: a cached
or local checkpoint loads without any network request, and otherwise one quick TCP connect decides
whether a download is worth trying (seconds, instead of a minute of download retries).
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import torch

from .errors import ModelLoadError


def resolve_device(device: str | None) -> torch.device:
    """'auto'/None -> cuda when available, else cpu; 'cpu', 'cuda', 'cuda:1' as given (ModelLoadError if absent)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"Unknown device {device!r}; use 'cpu', 'cuda' or 'auto'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("CUDA was requested but no GPU is available; use --device cpu.")
    return dev


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """One quick TCP connect to the model hub (False at once when HF_HUB_OFFLINE is set)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False
