"""The demo's plain state objects: settings, limits, sources, answers and notices (no threads, no gradio)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from memstream.config import StreamConfig, options_for, route_check
from memstream.errors import ConfigError, MemStreamError
from memstream.policies import policy_names, policy_spec

from .fields import STREAM_FORM, form_fields

PACES = {"as fast as possible": None, "real time": 1.0}


class SessionLimitError(MemStreamError):
    """The demo cannot open another session right now."""


@dataclass
class Limits:
    max_sessions: int = 8  # concurrent browser sessions
    session_memory_mb: float = 4096.0  # KV memory (CPU + GPU, all streams) per session
    idle_timeout_s: float = 1800.0  # a session without user action for this long is freed
    webcam_gap_s: float = 3.0  # no webcam frame for this long: shown as stopped
    max_thumbnails: int = 12  # blocks shown as thumbnails per answer and policy
    thumbnail_height: int = 240  # px: every frame of every block is kept this high (JPEG, ~8 KB), for the strip
    reattach_s: float = 120.0  # a closed or reloaded tab's session waits this long for the tab to come back
    max_answers: int = 50  # answers (with traces and thumbnails) kept per session
    webcam_time_limit_s: float = 1800.0  # one webcam streaming run (gradio's time_limit)


@dataclass
class Settings:
    """What the settings accordion controls: the demo's own choices, the stream fields it shows, and
    every policy's options, flat as `Engine.stream` takes them. Names follow the library's dataclasses.

    `options` holds, per policy, the options the demo set (its defaults, or what was applied); an option
    missing there is the policy's dataclass default. `with_options(topk=4)` sets an option for every
    policy that takes it."""

    policy: str = StreamConfig().policy  # the library's default, as in the CLI (README: "Which policy")
    fps: float = 2.0
    tokens_per_frame: int = 256
    expert: str = "none"  # the engine's expert name, or "none"
    pace: str = "as fast as possible"  # for files; a webcam is always real time
    compare: str | None = None  # a second policy answering the same questions, or None
    max_new_tokens: int = 64
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # policy -> {option: value}

    # the demo's fields whose change means the memory must be rebuilt (a policy's options: all but
    # its question-time fields, `StreamConfig.question_time`)
    MEMORY: ClassVar[tuple[str, ...]] = ("policy", *STREAM_FORM, "expert", "compare")

    def policies(self) -> list[str]:
        return [self.policy] + ([self.compare] if self.compare and self.compare != self.policy else [])

    def option(self, policy: str, name: str) -> Any:
        """The value of `policy`'s option `name`: the one set here, else the dataclass default."""
        mine = self.options.get(policy, {})
        if name in mine:
            return mine[name]
        return {f.name: f.default for f in form_fields(policy)}[name]

    def policy_options(self, policy: str) -> dict[str, Any]:
        """Every option of `policy`, flat."""
        return {f.name: self.option(policy, f.name) for f in form_fields(policy)}

    def stream_options(self, policy: str) -> dict[str, Any]:
        """Keyword arguments for `Engine.stream` (minus policy): the stream fields and `policy`'s own options."""
        stream = {name: getattr(self, name) for name in STREAM_FORM}
        expert = None if self.expert == "none" else self.expert
        return options_for(policy, {**stream, "expert": expert, **self.options.get(policy, {})})

    def with_options(self, **flat: Any) -> Settings:
        """A copy with `flat` set: the demo's fields by name, any other option for every registered policy
        that takes it (ConfigError, one sentence, for an option none takes). For the demo's defaults."""
        own = {k: flat.pop(k) for k in list(flat) if k in _OWN}
        out = dataclasses.replace(self, **own)
        for name, value in flat.items():
            takers = [p for p in policy_names() if name in policy_spec(p).config.option_names()]
            if not takers:
                raise ConfigError(f"No policy takes an option {name!r}.")
            for policy in takers:
                out = out.with_policy_options(policy, {name: value})
        return out

    def with_used_options(self, **flat: Any) -> Settings:
        """A copy with `flat` options set for the policies in use (policy, and compare) that take them:
        each gets the options it takes (ConfigError, one sentence, for an option neither takes). The
        demo's own fields are set by name. For the API, which names only what it changes."""
        own = {k: flat.pop(k) for k in list(flat) if k in _OWN}
        out = dataclasses.replace(self, **own)
        for name, value in flat.items():
            takers = [p for p in out.policies() if name in policy_spec(p).config.option_names()]
            if not takers:
                route_check(out.policy, {name: value})  # says which policies own it, or that none does
            for policy in takers:
                out = out.with_policy_options(policy, {name: value})
        return out

    def with_policy_options(self, policy: str, values: dict[str, Any]) -> Settings:
        """A copy with `policy`'s options updated from `values`, read as its form reads them (text like
        "1,1" becomes a tuple); the rest of its options and the other policies' stay."""
        form = {f.name: f for f in form_fields(policy)}
        parsed = {name: form[name].parse(v) if name in form else v for name, v in values.items()}
        options = {p: dict(v) for p, v in self.options.items()}
        options[policy] = {**options.get(policy, {}), **parsed}
        return dataclasses.replace(self, options=options)

    def adopt(self, configs: dict[str, StreamConfig]) -> Settings:
        """A copy holding, for each policy in `configs`, the options its validated config holds (what the
        memory uses: normalised by validate(), e.g. fusion weights as a tuple of floats)."""
        options = {p: dict(v) for p, v in self.options.items()}
        for policy, cfg in configs.items():
            options[policy] = {name: getattr(cfg, name) for name in cfg.policy_config.option_names()}
        return dataclasses.replace(self, options=options)

    def changes(self, old: Settings, configs: dict[str, StreamConfig]) -> tuple[list[str], list[str]]:
        """What differs from `old` (the settings in use), as "name old → new": (changes of what the memory
        holds, changes that only a question reads: the `question_time()` fields of the policy's validated
        config in `configs`). A policy's options count for the policies in use by both; a policy newly in
        use gets a new memory anyway."""
        memory = [f"{name} {_show(getattr(old, name))} → {_show(getattr(self, name))}"
                  for name in self.MEMORY if getattr(old, name) != getattr(self, name)]
        asked: list[str] = []
        for policy in self.policies():
            if policy not in old.policies():
                continue
            question_time = configs[policy].question_time()
            before, after = old.policy_options(policy), self.policy_options(policy)
            for name, value in after.items():
                if before[name] != value:
                    text = f"{name} {_show(before[name])} → {_show(value)}"
                    (asked if name in question_time else memory).append(text)
        return list(dict.fromkeys(memory)), list(dict.fromkeys(asked))


_OWN = tuple(f.name for f in dataclasses.fields(Settings) if f.name != "options")


def _show(v: Any) -> str:
    """A setting's value in a message: None as none, floats short, tuples as a,b."""
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple | list):
        return ",".join(_show(x) for x in v)
    return str(v)


@dataclass
class Source:
    kind: str  # "file" | "webcam"
    name: str
    path: str | None = None
    duration_s: float | None = None  # None for a webcam


@dataclass
class Result:
    """One policy's answer to one question, with what the heatmap strip needs."""

    policy: str
    answer: object  # memstream.Answer (final), or memstream.tracefile.TraceEntry (opened from a file)
    thumbnails: list[dict] = field(default_factory=list)  # {"t", "uris", "caption"}, time order (Session)
    model: str = ""  # the model that answered
    settings: dict = field(default_factory=dict)  # the options it answered with (Engine.stream keywords)


@dataclass
class Record:
    """One question and its answer(s) (two in compare mode)."""

    question: str
    results: list[Result]
    source: str
    from_file: str = ""  # the trace file it was opened from ("" if answered here)

    def label(self, index: int) -> str:
        q = self.question if len(self.question) <= 40 else self.question[:39] + "…"
        at = self.results[0].answer.asked_at_s if self.results else 0.0
        where = f" · from {self.from_file}" if self.from_file else ""
        return f"#{index + 1} · {q} · at {at:.1f} s{where}"


@dataclass
class Notice:
    text: str = ""
    level: str = "info"  # "info" | "warning" | "error"
    at: float = 0.0


def fmt_mb(mb: float | None) -> str:
    if mb is None or (isinstance(mb, float) and math.isnan(mb)):
        return "—"
    return f"{mb:.1f} MB" if mb < 1024 else f"{mb / 1024:.2f} GB"
