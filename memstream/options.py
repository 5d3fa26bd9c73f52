"""Command-line flags derived from the settings dataclasses, so that flags and library cannot drift.

Every field of `StreamConfig` and of every registered policy's config becomes one flag: the name with
dashes (`tokens_per_frame` -> `--tokens-per-frame`), the help text from the field's trailing comment,
and the default shown from the dataclass. Policy flags are absent from the parsed namespace unless
given, so that only the options a user typed reach `Engine.stream` (a given 'none' means None) and the
policy's own defaults apply otherwise; a flag that several policies share (`--n-local`,
`--positions`) is one flag whose help lists each owner's default.

    add_stream_arguments(parser)                 # --policy, --fps, ..., then one group per policy
    engine.stream(**stream_options(args))        # the flat options that were given
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from .backbones import PRESETS
from .config import STREAM_FIELDS, StreamConfig
from .errors import ConfigError
from .policies import policy_names, policy_spec

# `name: annotation = default  # comment`, one field per line of a dataclass body
_FIELD_LINE = re.compile(r"^\s+(\w+)\s*:\s*([^=#]+?)\s*=\s*.+?\s+#\s*(.+)$")
# StreamConfig fields that are not flags: the expert is chosen when the engine loads (--expert)
NOT_FLAGS = ("expert", "policy_config")


@cache
def field_docs(cls: type) -> dict[str, tuple[str, str]]:
    """{field: (annotation text, comment)} of a dataclass and its dataclass bases, from their source."""
    out: dict[str, tuple[str, str]] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):  # no source (e.g. defined in a REPL): names and defaults still work
            continue
        for line in lines:
            m = _FIELD_LINE.match(line)
            if m:
                out[m.group(1)] = (m.group(2).strip(), m.group(3).strip())
    return out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_value(text: str, annotation: str) -> Any:
    """A flag's text as the field's type: 'none'/'off' for optional fields, 'a,b' for tuples of numbers,
    'a|b' for tuples of texts, true/false for booleans; ints and floats as written."""
    kinds = {part.strip() for part in annotation.split("|")}
    low = text.strip().lower()
    if "None" in kinds and low in ("none", "off"):
        return None
    if "bool" in kinds:
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    if annotation.startswith("tuple[str"):
        return tuple(part.strip() for part in text.split("|") if part.strip())
    if annotation.startswith("tuple["):
        try:
            return tuple(float(x) for x in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers like '1,1', got {text!r}") from None
    if "int" in kinds:
        try:
            return int(text)
        except ValueError:
            if "float" not in kinds:
                raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if "float" in kinds:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return text


def _converter(annotation: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        return parse_value(text, annotation)
    convert.__name__ = annotation  # argparse names the type in its error message
    return convert


def _show(value: Any) -> str:
    if isinstance(value, tuple):  # as parse_value reads it back: texts joined by |, numbers by commas
        if all(isinstance(v, str) for v in value):
            return " | ".join(value)
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return "none" if value is None else str(value)


def policy_fields() -> dict[str, list[tuple[str, dataclasses.Field, str, str]]]:
    """{option: [(policy, field, annotation, comment), ...]} over every registered policy's config."""
    out: dict[str, list] = {}
    for policy in policy_names():
        config = policy_spec(policy).config
        docs = field_docs(config)
        for f in dataclasses.fields(config):
            annotation, comment = docs.get(f.name, (str(f.type), ""))
            out.setdefault(f.name, []).append((policy, f, annotation, comment))
    return out


def add_engine_arguments(parser: argparse.ArgumentParser, model: str = "tiny") -> None:
    """--model, --expert and --device: what `memstream.load` takes."""
    parser.add_argument("--model", default=model,
                        help=f"an offline random-weight preset ({', '.join(PRESETS)}), a hub id or a local "
                             f"directory of any registered family (default: {model})")
    needing = ", ".join(p for p in policy_names() if policy_spec(p).needs_expert)
    parser.add_argument("--expert", default="none",
                        help="external retrieval expert: clip-b32, pe-core-b16, tiny (offline random) or none; "
                             f"policies {needing} need one (default: none)")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu' or 'cuda' (default: auto)")


def check_expert_flag(policies: list[str], expert: str | None) -> None:
    """ConfigError (one sentence) when a policy that needs an external expert is run with `--expert none`,
    before any model loads."""
    for policy in policies:
        if policy_spec(policy).needs_expert and expert in (None, "none"):
            raise ConfigError(f"Policy {policy!r} ranks blocks with an external expert; add --expert clip-b32 "
                              f"(or --expert tiny offline), or use a policy without one such as memstream-internal.")


def add_stream_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None = None,
                         policy: bool = True) -> None:
    """Add the stream flags (--policy unless `policy=False`, --fps, --tokens-per-frame, --encode-batch)
    and one group of flags per policy. `defaults` overrides shown defaults of stream fields (a benchmark
    uses fewer tokens per frame)."""
    base = dataclasses.replace(StreamConfig(), **(defaults or {}))
    docs = field_docs(StreamConfig)
    for f in dataclasses.fields(StreamConfig):
        if f.name in NOT_FLAGS or (f.name == "policy" and not policy):
            continue
        annotation, comment = docs.get(f.name, (str(f.type), ""))
        value = getattr(base, f.name)
        if f.name == "policy":
            comment = f"memory policy: {', '.join(policy_names())}"
        parser.add_argument(flag(f.name), type=_converter(annotation), default=value,
                            help=f"{comment} (default: {_show(value)})")
    groups: dict[str, argparse._ArgumentGroup] = {}
    taken = set(parser._option_string_actions)  # a subcommand's own flags win over a policy option's
    added: list[str] = []
    for name, owners in policy_fields().items():
        if name in STREAM_FIELDS or flag(name) in taken:  # e.g. a plug-in's `mode` beside eval's --mode:
            continue  # still an option of engine.stream, just not a flag of this subcommand
        first = owners[0][0]
        if first not in groups:
            groups[first] = parser.add_argument_group(f"{first} options",
                                                      policy_spec(first).summary or None)
        defaults_text = "; ".join(f"{p}: {_show(f.default)}" for p, f, _, _ in owners)
        annotation = " | ".join(sorted({a for _, _, a, _ in owners}))
        comments = list(dict.fromkeys(c for _, _, _, c in owners if c))
        groups[first].add_argument(flag(name), type=_converter(annotation), default=argparse.SUPPRESS,
                                   help=f"{' / '.join(comments)} (default {defaults_text})")
        added.append(name)
    parser.set_defaults(policy_option_flags=tuple(added))  # what stream_options may read back


def stream_options(args: argparse.Namespace) -> dict[str, Any]:
    """The flat `Engine.stream` options parsed by `add_stream_arguments`: the stream fields, and the
    policy options that were given."""
    opts = {name: getattr(args, name) for name in STREAM_FIELDS if name not in NOT_FLAGS and hasattr(args, name)}
    for name in getattr(args, "policy_option_flags", ()):
        if hasattr(args, name):  # given: absent flags are not set at all
            opts[name] = getattr(args, name)
    return opts
