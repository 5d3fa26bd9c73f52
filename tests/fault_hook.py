"""Injected faults for tests/test_faults.py, armed through files so they reach a worker process too.

Importing this module wraps the backbone's forward (`Backbone.decode`, which runs `run_decoder`) and the
expert's two encoders (`Expert.embed_images`, `Expert.embed_text`) in this process. They stay inert unless
$MEMSTREAM_TEST_FAULTS names a directory; then

    arm_decoder(n)   the decoder forward after the next n ones raises, once (n = 0: the very next one)
    break_expert()   every call of the expert's encoders raises, until heal_expert()

A worker process imports this module when it unpickles a policy registered with `hooked(name)` (its
builder lives here), so the same files arm the faults there; the memory it builds is the named policy's own.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from memstream.backbones.base import Backbone
from memstream.experts import Expert
from memstream.policies import build_memory_from, policy_spec, register_policy

ENV = "MEMSTREAM_TEST_FAULTS"


class InjectedFault(RuntimeError):
    """What an armed fault raises."""


def _dir() -> Path | None:
    d = os.environ.get(ENV)
    return Path(d) if d else None


def arm_decoder(n: int) -> None:
    (_dir() / "decoder").write_text(str(n))


def disarm() -> None:
    for name in ("decoder", "expert"):
        (_dir() / name).unlink(missing_ok=True)


def break_expert() -> None:
    (_dir() / "expert").write_text("broken")


def heal_expert() -> None:
    (_dir() / "expert").unlink(missing_ok=True)


def decoder_armed() -> bool:
    return (_dir() / "decoder").exists()


def _decoder_fault() -> None:
    d = _dir()
    if d is None or not (d / "decoder").exists():
        return
    left = int((d / "decoder").read_text())
    if left > 0:
        (d / "decoder").write_text(str(left - 1))
        return
    (d / "decoder").unlink()
    raise InjectedFault("injected decoder failure")


def _expert_fault() -> None:
    d = _dir()
    if d is not None and (d / "expert").exists():
        raise InjectedFault("injected expert failure")


def _wrap(fn, check):
    if getattr(fn, "fault_hooked", False):
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        check()
        return fn(*args, **kwargs)

    wrapper.fault_hooked = True
    return wrapper


Backbone.decode = _wrap(Backbone.decode, _decoder_fault)
Expert.embed_images = _wrap(Expert.embed_images, _expert_fault)
Expert.embed_text = _wrap(Expert.embed_text, _expert_fault)


def build_hooked(backbone, config, *, fps, expert, base: str):
    """The memory of policy `base` (the registry row `hooked` made points here, so a worker imports us)."""
    return build_memory_from(policy_spec(base), backbone, config, fps=fps, expert=expert)


def hooked(name: str) -> str:
    """Register `<name>~hooked`: policy `name` whose registry row makes a worker process import this module."""
    spec = policy_spec(name)
    register_policy(f"{name}~hooked", functools.partial(build_hooked, base=name), config=spec.config,
                    summary=spec.summary, uses_expert=spec.uses_expert,
                    needs_expert=spec.needs_expert)
    return f"{name}~hooked"
