"""Memory policies: a name -> builder registry, and the built-in policies.

    import memstream
    memstream.register_policy("my-policy", MyMemory, config=MyConfig, summary="one line")
    engine.stream(policy="my-policy", my_option=3)   # the CLI, bench, eval and the demo list it too

A policy is a `base.Memory` subclass (or any callable building one) and a frozen `base.PolicyConfig`
subclass whose fields are its options. A built-in policy is one module of this package plus one
`register_policy` line below; nothing outside a policy's own module branches on its name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..backbones import Backbone
from ..errors import ConfigError
from .base import BlockInfo, IngestCache, Memory, PolicyConfig, QuestionCache
from .full import FullConfig, FullMemory
from .hermes import HermesConfig, HermesMemory
from .memstream import MemStreamConfig, MemStreamMemory
from .rekv import RekvConfig, RekvMemory, RetrievalQuestionCache
from .sink_window import SinkWindowConfig, SinkWindowMemory
from .window import QuestionRecord, WindowMemory, WindowQuestionCache

__all__ = [
    "PolicySpec", "register_policy", "unregister_policy", "policy_spec", "policy_names", "build_memory",
    "build_memory_from",
    "Memory", "PolicyConfig", "BlockInfo", "IngestCache", "QuestionCache", "QuestionRecord",
    "WindowMemory", "WindowQuestionCache", "RetrievalQuestionCache",
    "FullConfig", "FullMemory", "RekvConfig", "RekvMemory", "MemStreamConfig", "MemStreamMemory",
    "HermesConfig", "HermesMemory", "SinkWindowConfig", "SinkWindowMemory",
]

# builder(backbone, config, *, fps, expert) -> Memory
Builder = Callable[..., Memory]


@dataclass(frozen=True)
class PolicySpec:
    """One row of the registry."""

    name: str  # what users pass as policy=...
    builder: Builder  # (backbone, config, *, fps, expert) -> Memory
    config: type[PolicyConfig]  # the policy's settings; its fields are the policy's options
    summary: str  # one line for help texts and the demo
    uses_expert: bool  # ranks blocks with the engine's external expert when there is one
    needs_expert: bool  # refuses to run without one


_REGISTRY: dict[str, PolicySpec] = {}


def register_policy(name: str, builder: Builder, *, config: type[PolicyConfig] = PolicyConfig, summary: str = "",
                    uses_expert: bool = False, needs_expert: bool = False) -> PolicySpec:
    """Register a policy under `name` (replacing one of that name) and return its registry row.

    `builder(backbone, config, *, fps, expert)` returns the stream's `Memory`: a `Memory` subclass
    itself, or a `functools.partial` of one with constructor flags. `config` is the frozen dataclass of
    its options (a `PolicyConfig` subclass). `expert` is the engine's external expert for policies that
    declare `uses_expert`, else None; `needs_expert` makes a stream without one a ConfigError.
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ValueError(f"a policy name must be a non-empty string without surrounding spaces, got {name!r}")
    if not (isinstance(config, type) and issubclass(config, PolicyConfig)):
        raise TypeError(f"config must be a PolicyConfig subclass, got {config!r}")
    if not callable(builder):
        raise TypeError(f"builder must be callable, got {builder!r}")
    spec = PolicySpec(name, builder, config, summary, uses_expert or needs_expert, needs_expert)
    _REGISTRY[name] = spec
    return spec


def unregister_policy(name: str) -> None:
    """Remove `name` from the registry (a test's or a session's temporary policy)."""
    _REGISTRY.pop(name, None)


def policy_names() -> tuple[str, ...]:
    """Every registered policy, built-ins first, in registration order."""
    return tuple(_REGISTRY)


def policy_spec(name: str) -> PolicySpec:
    """The registry row of `name`; ConfigError (one sentence) for an unknown name."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"Unknown policy {name!r}; choose one of {', '.join(_REGISTRY)}.")
    return spec


def build_memory(name: str, backbone: Backbone, config: PolicyConfig, *, fps: float, expert: Any = None) -> Memory:
    """The memory of policy `name` for one stream (`expert`: None unless the policy uses one)."""
    return build_memory_from(policy_spec(name), backbone, config, fps=fps, expert=expert)


def build_memory_from(spec: PolicySpec, backbone: Backbone, config: PolicyConfig, *, fps: float,
                      expert: Any = None) -> Memory:
    """The memory of the policy registered as `spec` (a process that did not register it can build it too)."""
    memory = spec.builder(backbone, config, fps=fps, expert=expert)
    if not isinstance(memory, Memory):
        raise TypeError(f"the builder of policy {spec.name!r} returned {type(memory).__name__}, not a Memory")
    memory.policy = spec.name
    return memory


# ---- the built-in policies: one line each -------------------------------------------------------
register_policy("full", FullMemory, config=FullConfig,
                summary="every block attended: the correctness oracle, short clips only")
register_policy("rekv", RekvMemory, config=RekvConfig,
                summary="ReKV: sliding window + per-layer top-k block retrieval")
register_policy("memstream", MemStreamMemory, config=MemStreamConfig, needs_expert=True,
                summary="MemStream: AKS + patch compression + internal/external rank fusion (needs an expert)")
register_policy("memstream-internal", partial(MemStreamMemory, ranking="internal"), config=MemStreamConfig,
                summary="MemStream ablation: AKS + compression, internal ranking only")
register_policy("external", partial(MemStreamMemory, compress=False, aks=False, ranking="external"),
                config=MemStreamConfig, needs_expert=True,
                summary="ablation: ReKV's dense window, blocks ranked by the external expert only")
register_policy("hermes", HermesMemory, config=HermesConfig,
                summary="HERMES: fixed per-layer token budget, no retrieval at question time")
register_policy("sink-window", SinkWindowMemory, config=SinkWindowConfig,
                summary="StreamingLLM-style: attention sinks + the most recent n_local tokens, nothing retrieved")
