"""The settings accordion: its components (one per option, from `fields.py`) and how they are read
into `Settings` and written back from them. A value the library refuses comes back as one sentence
and the form shows what the memory keeps using."""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr

from memstream.errors import ConfigError
from memstream.policies import policy_spec

from .fields import FormField, form_fields, stream_form
from .state import PACES, Settings


def field_component(ff: FormField, value: Any, elem_id: str) -> gr.components.Component:
    """The component of one option: a number box, a checkbox, a dropdown of the valid values or a text
    box, labelled with the field's name and explained by its comment. No minimum/maximum on number boxes:
    gradio would refuse an out-of-range value with a toast, the config's validate() says it in the notice."""
    shown = ff.shown(value)
    common = {"label": ff.name, "info": ff.info or None, "elem_id": elem_id, "min_width": 200}
    if ff.kind == "bool":
        return gr.Checkbox(value=bool(shown), **common)
    if ff.kind == "choice":
        return gr.Dropdown(list(ff.choices), value=shown, **common)
    if ff.kind in ("int", "float"):
        # precision None: gradio's own int check would answer a typed 2.5 with a toast; parse() says it
        return gr.Number(value=shown, precision=None, **common)
    return gr.Textbox(value=shown, lines=1, max_lines=1, **common)


class SettingsForm:
    """The accordion's components, built inside the current gradio context."""

    def __init__(self, defaults: Settings, policies: list[str], left_out: list[str], experts: list[str]):
        self.policies = policies
        self.has_expert = len(experts) > 1
        self.streamed = stream_form()
        with gr.Row():
            self.policy = gr.Dropdown(policies, value=defaults.policy, label="policy", elem_id="policy",
                                      info=None if not left_out else f"without an external expert (start with "
                                                                     f"--expert): not {', '.join(left_out)}")
            self.compare = gr.Dropdown(["off"] + policies, value=defaults.compare or "off", elem_id="compare",
                                       label="compare with a second policy")
            self.expert = gr.Dropdown(experts, value=defaults.expert if self.has_expert else "none",
                                      label="expert" + ("" if self.has_expert else " (no external expert loaded)"),
                                      interactive=self.has_expert, elem_id="expert")
        with gr.Row():
            self.stream = [field_component(ff, getattr(defaults, ff.name), f"opt-{ff.name}") for ff in self.streamed]
            self.pace = gr.Radio(list(PACES), value=defaults.pace, label="pacing of files", elem_id="pace")
            self.max_new = gr.Slider(1, 256, value=defaults.max_new_tokens, step=1, label="max_new_tokens",
                                     elem_id="max-new-tokens")
        self.groups = []
        self.options: list[tuple[str, FormField, gr.components.Component]] = []  # (policy, field, component)
        for p in policies:
            fields = form_fields(p)
            with gr.Column(visible=p in defaults.policies(), elem_id=f"options-{p}") as group:
                summary = policy_spec(p).summary
                gr.Markdown(f"**{p}** options" + (f" · {summary}" if summary else "")
                            + ("" if fields else " · it has no options of its own"))
                with gr.Row():
                    for ff in fields:
                        comp = field_component(ff, defaults.option(p, ff.name), f"opt-{p}-{ff.name}")
                        self.options.append((p, ff, comp))
            self.groups.append(group)

    @property
    def components(self) -> list:
        """Every input, in the order `values` writes and `read` reads them."""
        return [self.policy, self.compare, self.expert, self.pace, self.max_new, *self.stream,
                *(c for _, _, c in self.options)]

    def values(self, st: Settings) -> list:
        """The form showing `st` (after Apply: what the memory uses, also when a value was refused)."""
        head = [st.policy, st.compare or "off", st.expert if self.has_expert else "none", st.pace, st.max_new_tokens]
        stream = [ff.shown(getattr(st, ff.name)) for ff in self.streamed]
        return head + stream + [ff.shown(st.option(p, ff.name)) for p, ff, _ in self.options]

    def read_head(self, st: Settings, policy, compare, expert, pace, max_new, stream_values) -> Settings:
        """`st` with the demo's own choices and the stream fields of the form (ConfigError, one sentence,
        for text that cannot be read or a policy the chosen expert cannot serve)."""
        stream = {ff.name: ff.parse(v) for ff, v in zip(self.streamed, stream_values, strict=True)}
        if max_new is None or not float(max_new).is_integer() or not 1 <= max_new <= 256:
            raise ConfigError(f"max_new_tokens must be a whole number from 1 to 256, got {max_new!r}.")
        new = dataclasses.replace(st, policy=policy, compare=None if compare in (None, "off") else compare,
                                  expert=expert or "none", pace=pace, max_new_tokens=int(max_new), **stream)
        for p in new.policies():  # said in the page's words, before the library says it in its own
            if policy_spec(p).needs_expert and new.expert == "none":
                raise ConfigError(f"Policy {p!r} ranks blocks with the external expert, but the expert box says "
                                  "none: choose the loaded expert there, or a policy without one such as "
                                  "memstream-internal.")
        return new

    def read(self, st: Settings, values: tuple) -> Settings:
        """`st` with everything the form holds (ConfigError, one sentence, for a value it cannot read)."""
        head, rest = values[:5], values[5:]
        stream_values, option_values = rest[:len(self.streamed)], rest[len(self.streamed):]
        new = self.read_head(st, *head, stream_values)
        per_policy: dict[str, dict] = {}
        for (p, ff, _), v in zip(self.options, option_values, strict=True):
            per_policy.setdefault(p, {})[ff.name] = v
        for p, opts in per_policy.items():
            new = new.with_policy_options(p, opts)
        return new

    def visibility(self, policy, compare) -> list:
        """Only the options of the policies in use are shown."""
        used = {policy} | ({compare} if compare not in (None, "off") else set())
        return [gr.update(visible=p in used) for p in self.policies]
