"""Typed experiment configs: loading, validation messages, presets, TOML round trip."""

from __future__ import annotations

import pytest

from bea.experiments.config import (
    ConfigError,
    config_from_dict,
    config_to_toml,
    list_presets,
    load_config_file,
    load_preset,
    parse_override,
    tomllib,
)
from bea.experiments.multitask import MultitaskConfig


def test_quick_preset_loads_and_round_trips_through_toml():
    config = load_preset(MultitaskConfig, "quick")
    assert config.kind == "multitask" and config.name == "quick"
    again = config_from_dict(MultitaskConfig, tomllib.loads(config_to_toml(config)))
    assert again == config


def test_presets_are_listed_and_all_valid():
    names = list_presets("multitask")
    assert "quick" in names
    for name in names:
        load_preset(MultitaskConfig, name)


def test_overrides_apply_dotted_keys():
    config = load_preset(MultitaskConfig, "quick", {"train.lr": 0.05, "seed": 3})
    assert config.train.lr == 0.05 and config.seed == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.lr=0.05", ("train.lr", 0.05)),
        ("method.name=pcgrad", ("method.name", "pcgrad")),
        ("model.hidden=[8, 8]", ("model.hidden", [8, 8])),
        ("run.csv=true", ("run.csv", True)),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_needs_equals():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.lr")


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown multitask preset 'nope' \(known: .*quick"):
        load_preset(MultitaskConfig, "nope")


BAD = [
    ({"train": {"lrr": 0.1}}, r"unknown field 'train\.lrr'"),
    ({"bogus": 1}, r"unknown field 'bogus'"),
    ({"train": {"lr": -0.1}}, r"train\.lr must be > 0, got -0\.1"),
    ({"train": {"lr": "fast"}}, r"train\.lr must be a number, got 'fast'"),
    ({"train": {"steps": 2.5}}, r"train\.steps must be an integer, got 2\.5"),
    ({"run": {"progress": 1}}, r"run\.progress must be true or false, got 1"),
    (
        {"run": {"dtype": "float16"}},
        r"run\.dtype must be one of 'float32', 'float64', got 'float16'",
    ),
    ({"model": {"hidden": "64"}}, r"model\.hidden must be a list"),
    ({"model": {"hidden": []}}, r"model\.hidden must have at least one width"),
    ({"train": "x"}, r"train must be a table"),
    ({"kind": "continual"}, r"kind must be 'multitask'"),
    ({"seed": -1}, r"seed must be >= 0, got -1"),
    ({"method": {"name": "adamw"}}, r"method\.name must be one of .*got 'adamw'"),
    (
        {"method": {"name": "sgd", "strength": 0.5}},
        r"method\.strength does not apply to method 'sgd'",
    ),
    (
        {"method": {"name": "cancel", "strength": 2.0}},
        r"method\.strength contradicts method 'cancel'",
    ),
    ({"method": {"name": "conflict"}}, r"method\.strength is required for method 'conflict'"),
    (
        {"train": {"weights": [1.0, 1.0, 1.0]}},
        r"train\.weights must have one weight per task \(2\)",
    ),
    (
        {"train": {"steps": 5}, "monitor": {"every": 10}},
        r"monitor\.every is larger than train\.steps",
    ),
    ({"data": {"num_train": 10}, "train": {"batch_size": 64}}, r"train\.batch_size exceeds"),
    ({"data": {"conflict": 1.5}}, r"data\.conflict must be in \[0, 1\], got 1\.5"),
    ({"run": {"log_every": 0}}, r"run\.log_every must be >= 1, got 0"),
]


@pytest.mark.parametrize(("data", "message"), BAD, ids=[m[:30] for _, m in BAD])
def test_bad_values_name_the_field_and_value(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(MultitaskConfig, data)


def test_config_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_config_file(MultitaskConfig, tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("train = [")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config_file(MultitaskConfig, broken)
    good = tmp_path / "good.toml"
    good.write_text('name = "mine"\n[train]\nlr = 0.2\n')
    config = load_config_file(MultitaskConfig, good, {"train.steps": 70})
    assert (config.name, config.train.lr, config.train.steps) == ("mine", 0.2, 70)
