"""Stream settings: one frozen `StreamConfig`, the policy's own settings nested inside it.

    cfg = StreamConfig.from_options(policy="hermes", fps=0.5, budget=2048)   # every option flat
    cfg.policy_config        # HermesConfig(budget=2048, ...): the policy's own dataclass
    cfg.budget               # 2048: a policy option reads through, flat as it was given
    cfg.replace(topk=8)      # a new config; validated like the first

Options are routed by name: the stream's own fields (below) stay here, the rest go to the policy's
config class (its registry entry). An option that another policy owns is a ConfigError naming that
policy; one nobody owns is a ConfigError naming the policy's options. CLI flags, benchmark flags,
eval settings and the demo's settings are all derived from these dataclasses (`options.py`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .checks import is_int, is_number
from .errors import ConfigError
from .policies import PolicyConfig, policy_names, policy_spec
from .policies.base import need


@dataclass(frozen=True)
class StreamConfig:
    """Everything that shapes a stream's memory. Changing any of it (but a policy's question-time
    fields, see `Stream.set_retrieval`) means re-ingesting."""

    policy: str = "rekv"  # memory policy: a registered name (memstream.policy_names())
    fps: float = 1.0  # frames sampled per second of video
    tokens_per_frame: int = 256  # LLM tokens per frame (a block of 2 frames holds twice this)
    encode_batch: int = 4  # blocks per vision-tower call while a file is ingested
    expert: str | None = "auto"  # external expert of policies that rank with one: auto (the engine's), none or a name
    policy_config: PolicyConfig | None = None  # the policy's own settings; None = its defaults

    def __post_init__(self) -> None:
        spec = policy_spec(self.policy)  # ConfigError for an unknown policy
        need(is_number(self.fps) and math.isfinite(self.fps) and 0 < self.fps <= 60,
             f"fps must be a number in (0, 60], got {self.fps!r}.")
        need(is_int(self.tokens_per_frame) and 4 <= self.tokens_per_frame <= 16384,
             f"tokens_per_frame must be an integer from 4 to 16384, got {self.tokens_per_frame!r}.")
        need(is_int(self.encode_batch) and self.encode_batch >= 1,
             f"encode_batch must be a positive integer, got {self.encode_batch!r}.")
        need(self.expert is None or isinstance(self.expert, str),
             f"expert must be a name, 'auto', 'none' or None, got {self.expert!r}.")
        if self.policy_config is None:
            object.__setattr__(self, "policy_config", spec.config())
        need(type(self.policy_config) is spec.config,
             f"policy_config of policy {self.policy!r} must be a {spec.config.__name__}, "
             f"got {type(self.policy_config).__name__}.")

    def __getattr__(self, name: str) -> Any:
        """A policy option reads through: `cfg.topk` is `cfg.policy_config.topk`."""
        if name.startswith("__") or name == "policy_config":
            raise AttributeError(name)
        inner = self.__dict__.get("policy_config")
        if inner is not None and name in inner.option_names():
            return getattr(inner, name)
        raise AttributeError(f"{type(self).__name__} of policy {self.__dict__.get('policy')!r} has no option {name!r}")

    # ---- flat options -------------------------------------------------------------------------
    @classmethod
    def from_options(cls, **options: Any) -> StreamConfig:
        """A validated config from flat options (stream fields and the policy's own fields)."""
        return cls().replace(**options)

    def replace(self, **options: Any) -> StreamConfig:
        """A new config with flat `options` changed; switching `policy` starts from its defaults."""
        policy = options.get("policy", self.policy)
        spec = policy_spec(policy)
        own = {k: options.pop(k) for k in list(options) if k in STREAM_FIELDS}
        inner_cfg = options.pop("policy_config", None)
        base = self.policy_config if policy == self.policy and inner_cfg is None else inner_cfg
        route_check(policy, options)
        try:
            inner = dataclasses.replace(base, **options) if base is not None else spec.config(**options)
        except TypeError as exc:  # a field the config cannot take (route_check names the owner first)
            raise ConfigError(f"Unknown {policy} option: {exc}.") from exc
        return dataclasses.replace(self, **own, policy_config=inner)

    def options(self) -> dict[str, Any]:
        """Every setting as flat options (stream fields, then the policy's): `from_options(**x)` rebuilds it."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "policy_config"}
        inner = {f.name: getattr(self.policy_config, f.name) for f in dataclasses.fields(self.policy_config)}
        return {**own, **inner}

    def question_time(self) -> tuple[str, ...]:
        """The policy's fields a question reads (changeable without re-ingesting)."""
        return type(self.policy_config).QUESTION_TIME


STREAM_FIELDS = tuple(f.name for f in dataclasses.fields(StreamConfig) if f.name != "policy_config")


def owners(option: str) -> list[str]:
    """The registered policies that take `option` (stream fields: every policy)."""
    if option in STREAM_FIELDS:
        return list(policy_names())
    return [p for p in policy_names() if option in policy_spec(p).config.option_names()]


def route_check(policy: str, options: dict[str, Any]) -> None:
    """ConfigError unless every option in `options` is one of `policy`'s own (one sentence)."""
    mine = policy_spec(policy).config.option_names()
    for name in options:
        if name in mine:
            continue
        others = owners(name)
        if others:
            listed = ", ".join(repr(p) for p in others)
            raise ConfigError(f"Option {name!r} belongs to policy {listed}, not {policy!r}.")
        takes = ", ".join(mine) if mine else "no options of its own"
        raise ConfigError(f"Unknown {policy} option {name!r}; policy {policy!r} takes {takes}.")


def options_for(policy: str, options: dict[str, Any]) -> dict[str, Any]:
    """The subset of flat `options` that `policy` takes (for running several policies on one set of
    options: benchmarks, the demo's compare mode)."""
    mine = set(STREAM_FIELDS) | set(policy_spec(policy).config.option_names())
    return {k: v for k, v in options.items() if k in mine}
