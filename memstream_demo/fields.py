"""The settings form, derived from the library's settings dataclasses (no gradio here: `layout.py` draws it).

Every field of a policy's config class (and the stream fields the demo shows) becomes one `FormField`:
its label is the field's name, its help text the field's trailing comment (`memstream.options.field_docs`),
its default the dataclass default, and its kind comes from the annotation:

    int / float          a number box (`int | None`: an empty box means None)
    bool                 a checkbox
    str                  a dropdown when validate() names its valid values ('a' or 'b'), else a text box
    anything else        a text box, read as the CLI reads the field's flag: "1,1" for a tuple of
                         numbers, "a|b" for texts; `int | float` too, so that what was typed stays
                         what it was ("64" a count, "0.25" or "1.0" a fraction)

A policy registered before the page is built gets its form with no change here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from memstream.config import StreamConfig
from memstream.errors import ConfigError
from memstream.options import field_docs, parse_value
from memstream.policies import PolicyConfig, policy_spec

# The stream fields the form shows. Not encode_batch: the demo hands one block at a time to its streams
# (so that a question waits at most one block), which leaves nothing to batch; not expert: the demo's
# expert choice is among what the engine loaded.
STREAM_FORM = ("fps", "tokens_per_frame")
# validate() of a text field that names its valid values quotes them: "must be 'dot' or 'cosine'"
_QUOTED = re.compile(r"'([^'\s]+)'")
_PROBE = "?"  # a value no text field accepts, so that validate() lists the ones it does
MAX_CHOICES = 12


@dataclass(frozen=True)
class FormField:
    """One option as the settings form shows and reads it."""

    name: str  # the field's name, also its label
    kind: str  # "int" | "float" | "bool" | "choice" | "text"
    annotation: str  # the annotation as written in the dataclass, e.g. "int | None"
    info: str  # the field's comment (+ how to type it, for text boxes)
    default: Any  # the dataclass default
    optional: bool = False  # None is a value: an empty box
    choices: tuple[str, ...] = ()  # kind "choice": the valid values

    def shown(self, value: Any) -> Any:
        """`value` as the form's component holds it."""
        if self.kind != "text":
            return value
        if value is None:
            return ""
        if isinstance(value, tuple | list):
            if self.annotation.startswith("tuple[str"):
                return "|".join(str(v) for v in value)
            return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        return _text(value)

    def parse(self, value: Any) -> Any:
        """A value from the form or the API as the option's value; ConfigError (one sentence) when text
        cannot be read. Ranges and types are left to the config's validate(), which names the field."""
        if isinstance(value, list):  # JSON (the API) has no tuples
            return tuple(value)
        if isinstance(value, str):
            if not value.strip() and self.optional:
                return None
            try:
                return parse_value(value, self.annotation)  # as the CLI reads the same field's flag
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{self.name}: {exc}.") from None
        if self.kind == "int" and isinstance(value, float) and value.is_integer():
            return int(value)  # a number box may send 3.0 for 3
        if self.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value


def _text(v: Any) -> str:
    # repr keeps a float a float ("1.0" is a fraction, "1" a count); :g would write both as "1"
    return repr(v) if isinstance(v, float) else str(v)


def _kind(annotation: str) -> tuple[str, bool]:
    """(kind, optional) of an annotation's text."""
    parts = {p.strip() for p in annotation.split("|")}
    optional = "None" in parts
    parts.discard("None")
    if annotation.startswith("tuple["):
        return "text", optional
    if parts == {"bool"}:
        return "bool", optional
    if parts == {"int"}:
        return "int", optional
    if parts == {"float"}:
        return "float", optional
    if parts == {"str"}:
        return "choice", optional
    return "text", optional


def _annotation(f: dataclasses.Field, docs: dict[str, tuple[str, str]]) -> str:
    if f.name in docs:
        return docs[f.name][0]
    # no source to read (a class made in a REPL): the annotation itself, as text
    if isinstance(f.type, str):
        return f.type
    return f.type.__name__ if isinstance(f.type, type) else str(f.type)  # int -> "int"; int | None as is


def _choices(config: type[PolicyConfig], name: str, default: Any) -> tuple[str, ...]:
    """The valid values of text field `name`, read from the sentence validate() gives for a wrong one;
    () when it names none (then the field is free text)."""
    try:
        config(**{name: _PROBE})
    except ConfigError as exc:
        found = tuple(dict.fromkeys(w for w in _QUOTED.findall(str(exc)) if w != _PROBE))
    except Exception:  # noqa: BLE001 - a validate() that does not expect text: free text, then
        return ()
    else:
        return ()  # any text is accepted
    return found if default in found and 2 <= len(found) <= MAX_CHOICES else ()


def _field(config: type, f: dataclasses.Field, docs: dict[str, tuple[str, str]]) -> FormField:
    annotation = _annotation(f, docs)
    comment = docs.get(f.name, ("", ""))[1]
    kind, optional = _kind(annotation)
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
    choices: tuple[str, ...] = ()
    if kind == "choice":
        choices = _choices(config, f.name, default) if issubclass(config, PolicyConfig) else ()
        kind = "choice" if choices else "text"
    hint = ""
    if kind in ("int", "float") and optional:
        hint = "empty box = None"
    elif kind == "text" and annotation.startswith("tuple[str"):
        hint = "texts separated by |"
    elif kind == "text" and annotation.startswith("tuple["):
        hint = "numbers separated by commas"
    info = f"{comment} ({hint})" if comment and hint else comment or hint
    return FormField(f.name, kind, annotation, info, default, optional, choices)


@cache
def _fields_of(config: type) -> tuple[FormField, ...]:
    docs = field_docs(config)
    return tuple(_field(config, f, docs) for f in dataclasses.fields(config))


def form_fields(policy: str) -> tuple[FormField, ...]:
    """The form of `policy`'s options: one field per field of its config class, in declaration order."""
    return _fields_of(policy_spec(policy).config)


def stream_form() -> tuple[FormField, ...]:
    """The form of the stream fields the demo shows (`STREAM_FORM`)."""
    return tuple(f for f in _fields_of(StreamConfig) if f.name in STREAM_FORM)
