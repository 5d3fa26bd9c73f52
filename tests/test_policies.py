"""The policy registry and the one settings source (memstream/policies/__init__.py, config.py, options.py):
every option of every policy is accepted flat and routed to its owner, another policy's option is one
sentence naming the owner, flags are derived from the dataclasses, and a registered policy is a
first-class citizen."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

import memstream
from memstream.config import StreamConfig, options_for
from memstream.errors import ConfigError
from memstream.options import add_stream_arguments, field_docs, stream_options
from memstream.policies import RekvConfig, RekvMemory, policy_names, policy_spec, register_policy


def test_every_policy_option_is_accepted_flat():
    for policy in policy_names():
        config = policy_spec(policy).config
        for f in dataclasses.fields(config):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            cfg = StreamConfig.from_options(policy=policy, **{f.name: default})
            assert type(cfg.policy_config) is config and getattr(cfg, f.name) == default


def test_hermes_budget_flat_and_its_owner_named(engine):
    stream = engine.stream(policy="hermes", budget=128, fps=1.0, tokens_per_frame=8)
    assert stream.config.budget == 128 and stream.stats()["budget"] == 128
    with pytest.raises(ConfigError) as err:
        engine.stream(policy="rekv", budget=128)
    assert str(err.value) == "Option 'budget' belongs to policy 'hermes', not 'rekv'."
    with pytest.raises(ConfigError, match="'rekv', 'memstream'.*not 'full'"):
        engine.stream(policy="full", topk=4)


def test_config_is_frozen_and_replace_validates():
    cfg = StreamConfig.from_options(policy="memstream", aks_keep=8, fps=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.fps = 3.0  # type: ignore[misc]
    assert cfg.replace(topk=3).topk == 3 and cfg.topk == 16
    assert StreamConfig.from_options(**cfg.options()) == cfg
    with pytest.raises(ConfigError, match="topk"):
        cfg.replace(topk=0)
    assert cfg.replace(policy="hermes").policy_config == policy_spec("hermes").config()  # its own defaults
    assert options_for("hermes", {"topk": 3, "budget": 9, "fps": 1.0}) == {"budget": 9, "fps": 1.0}


def test_flags_come_from_the_dataclasses():
    parser = argparse.ArgumentParser()
    add_stream_arguments(parser)
    helps = {a.dest: a.help for a in parser._actions}
    comment = field_docs(RekvConfig)["topk"][1]
    assert comment in helps["topk"] and "rekv: 16" in helps["topk"]
    assert "sink-window: 4096" in helps["n_local"]  # one flag, each owner's default
    args = parser.parse_args(["--policy", "hermes", "--budget", "64", "--n-local", "none"])
    assert stream_options(args) == {"policy": "hermes", "fps": 1.0, "tokens_per_frame": 256, "encode_batch": 4,
                                    "budget": 64, "n_local": None}
    assert parser.parse_args(["--fusion-weights", "1,2"]).fusion_weights == (1.0, 2.0)


def test_a_registered_policy_is_built_and_listed(engine):
    class Doubled(RekvMemory):
        """ReKV retrieving twice its topk."""

    try:
        spec = register_policy("test-doubled", Doubled, config=RekvConfig, summary="test")
        assert "test-doubled" in policy_names() and spec.config is RekvConfig
        stream = engine.stream(policy="test-doubled", fps=1.0, tokens_per_frame=8, topk=2)
        assert isinstance(stream.memory, Doubled) and stream.memory.policy == "test-doubled"
        assert stream.stats()["policy"] == "test-doubled"
    finally:
        from memstream.policies import unregister_policy
        unregister_policy("test-doubled")
    assert "test-doubled" not in policy_names()


def test_registry_rejects_bad_entries(engine):
    with pytest.raises(ValueError):
        register_policy(" spaced ", RekvMemory, config=RekvConfig)
    with pytest.raises(TypeError):
        register_policy("bad-config", RekvMemory, config=dict)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Unknown policy 'nope'"):
        engine.stream(policy="nope")
    try:
        register_policy("not-a-memory", lambda *a, **k: object(), config=RekvConfig)
        with pytest.raises(TypeError, match="not a Memory"):
            engine.stream(policy="not-a-memory")
    finally:
        from memstream.policies import unregister_policy
        unregister_policy("not-a-memory")


def test_import_memstream_loads_no_demo_packages():
    import subprocess
    import sys

    code = "import memstream, sys; assert 'gradio' not in sys.modules and 'plotly' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    assert memstream.register_policy is register_policy
