"""Typed experiment configs: dataclasses loaded from TOML, validated, with presets.

A config is a tree of dataclasses. The top level subclasses :class:`ExperimentConfig`
(fields ``kind``, ``name``, ``seed``, ``description`` and the ``[run]`` section,
:class:`RunSettings`); each experiment kind adds its own sections. TOML maps onto it
one to one: top-level keys are top-level fields, ``[section]`` tables are nested
dataclasses.

Loading (:func:`config_from_dict`) checks every value against the field's type
annotation (``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``list[T]``,
``dict[str, T]``, ``T | None``, nested dataclasses), rejects unknown keys, and then
calls ``validate()`` on every dataclass in the tree that defines it (bottom-up, the
top level last, so the top level can check contradictions between sections). Every
error is a :class:`ConfigError` (a ``ValueError``) whose message names the field by
its dotted path and shows the bad value::

    config: train.lr must be > 0, got -0.1
    config: unknown field 'train.lrr' (known: batch_size, lr, steps)

Presets ship as ``bea/experiments/presets/<kind>-<name>.toml``. Kinds use
underscores, never hyphens, so ``<kind>-`` is an unambiguous prefix.

Extending for a new kind::

    @dataclass(kw_only=True)
    class ContinualConfig(ExperimentConfig):
        KIND: ClassVar[str] = "continual"
        data: ContinualData = field(default_factory=ContinualData)

        def validate(self) -> None:
            super().validate()
            ...

    config = load_preset(ContinualConfig, "quick")
    config = load_config_file(ContinualConfig, "my.toml", overrides={"seed": 3})
    text = config_to_toml(config)  # what the run directory stores as config.toml

TOML has no null: fields whose value is ``None`` are left out when written, so a
field that may be ``None`` must default to ``None``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).with_name("presets")


class ConfigError(ValueError):
    """A config value is missing, unknown, of the wrong type, or out of range."""


def fail(path: str, message: str, value: Any = dataclasses.MISSING) -> ConfigError:
    """Build the standard error ``config: <path> <message>, got <value>``."""
    text = f"config: {path} {message}"
    if value is not dataclasses.MISSING:
        text += f", got {value!r}"
    return ConfigError(text)


# --------------------------------------------------------------------------- base


@dataclass(kw_only=True)
class RunSettings:
    """The ``[run]`` section shared by every kind.

    Attributes:
        checkpoint_every: steps between checkpoints (a checkpoint is also written at
            the end); 0 writes only the final one.
        keep_checkpoints: how many numbered checkpoints to keep (0 keeps all).
        log_every: steps between metric records.
        progress: print progress lines on stderr.
        threads: ``torch.set_num_threads`` for the run; 0 leaves torch's default.
        dtype: floating point type of model and data.
        csv: also export ``metrics.csv`` (long format) when the run finishes.
        tensorboard: also log to ``tensorboard/`` (needs the tensorboard package).
    """

    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    log_every: int = 10
    progress: bool = True
    threads: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    csv: bool = False
    tensorboard: bool = False

    def validate(self, path: str = "run") -> None:
        for name in ("checkpoint_every", "keep_checkpoints", "threads"):
            if getattr(self, name) < 0:
                raise fail(f"{path}.{name}", "must be >= 0", getattr(self, name))
        if self.log_every < 1:
            raise fail(f"{path}.log_every", "must be >= 1", self.log_every)


@dataclass(kw_only=True)
class ExperimentConfig:
    """Base of every experiment config.

    Attributes:
        kind: the experiment kind (``multitask``, ``continual``, ...); must equal the
            class's ``KIND``. Filled in when absent.
        name: a label, used in the default run directory name and in reports.
        seed: seeds torch, numpy and python's ``random`` at the start of the run.
        description: free text shown in the report.
        run: checkpointing, logging and progress settings.
    """

    KIND: ClassVar[str] = ""

    kind: str = ""
    name: str = "custom"
    seed: int = 0
    description: str = ""
    run: RunSettings = field(default_factory=RunSettings)

    def validate(self) -> None:
        """Check cross-field constraints; subclasses extend and call ``super()``."""
        if self.kind != self.KIND:
            raise fail("kind", f"must be {self.KIND!r} for {type(self).__name__}", self.kind)
        if self.seed < 0:
            raise fail("seed", "must be >= 0", self.seed)
        if not self.name or "/" in self.name:
            raise fail("name", "must be a non-empty string without '/'", self.name)


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it converted."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError:
                continue
        raise fail(path, f"must be {' or '.join(_type_name(a) for a in args)}", value)
    if origin is Literal:
        if value not in args:
            raise fail(path, f"must be one of {', '.join(repr(a) for a in args)}", value)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail(path, f"must be a list, not {type(value).__name__}", value)
        item = args[0] if args else Any
        return [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise fail(path, f"must be a table, not {type(value).__name__}", value)
        item = args[1] if len(args) == 2 else Any
        return {str(k): _convert(item, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _from_mapping(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(path, "must be true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(path, "must be an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(path, "must be a number", value)
        if not math.isfinite(value):
            raise fail(path, "must be finite", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail(path, "must be a string", value)
        return value
    raise TypeError(f"config: field {path} has an unsupported annotation {tp!r}")


def _from_mapping(cls: type, data: Any, path: str) -> Any:
    where = path or "the top level"
    if not isinstance(data, Mapping):
        raise fail(where, f"must be a table, not {type(data).__name__}", data)
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key not in known:
            full = f"{path}.{key}" if path else key
            raise ConfigError(f"config: unknown field {full!r} (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name in known:
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{path}.{name}" if path else name)
    return cls(**kwargs)


def _validate_tree(obj: Any, path: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, f"{path}.{f.name}" if path else f.name)
    validate = getattr(obj, "validate", None)
    if validate is None:
        return
    if path:
        validate(path)
    else:
        validate()


def validate_config(config: ExperimentConfig) -> ExperimentConfig:
    """Run every ``validate`` in the tree (sections get their dotted path); return config."""
    _validate_tree(config, "")
    return config


def config_from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Build and validate a ``cls`` config from a nested mapping (parsed TOML).

    A missing ``kind`` is filled with ``cls.KIND``. Raises :class:`ConfigError`.
    """
    data = dict(data)
    data.setdefault("kind", cls.KIND)
    if data["kind"] != cls.KIND:
        raise fail("kind", f"must be {cls.KIND!r} for this experiment", data["kind"])
    return validate_config(_from_mapping(cls, data, ""))


def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as a nested dict of plain values (``None`` values dropped)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [strip(v) for v in value]
        return value

    return strip(dataclasses.asdict(config))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``data["a"]["b"] = value`` for ``key = "a.b"``, creating tables as needed."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config: cannot set {key!r}: {part!r} is not a table")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``KEY=VALUE`` from the command line; VALUE is read as TOML, else a string.

    >>> parse_override("train.lr=0.05")
    ('train.lr', 0.05)
    >>> parse_override("method.name=pcgrad")
    ('method.name', 'pcgrad')
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"config: override must look like KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config: {path} is not valid TOML: {error}") from None


def load_config_file(
    cls: type, path: str | Path, overrides: Mapping[str, Any] | None = None
) -> Any:
    """Load a TOML file into ``cls``, applying dotted ``overrides`` first."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no such config file {str(path)!r}")
    data = _read_toml(path)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(cls, data)


def preset_path(kind: str, name: str) -> Path:
    return PRESET_DIR / f"{kind}-{name}.toml"


def list_presets(kind: str) -> list[str]:
    """Names of the presets shipped for ``kind``, sorted."""
    return sorted(p.name[len(kind) + 1 : -5] for p in PRESET_DIR.glob(f"{kind}-*.toml"))


def load_preset(cls: type, name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """Load the shipped preset ``<cls.KIND>-<name>.toml``; ``name`` is also stored."""
    path = preset_path(cls.KIND, name)
    if not path.is_file():
        known = ", ".join(list_presets(cls.KIND)) or "none"
        raise ConfigError(f"config: unknown {cls.KIND} preset {name!r} (known: {known})")
    data = _read_toml(path)
    data.setdefault("name", name)
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return config_from_dict(cls, data)


# --------------------------------------------------------------------------- writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"config_to_toml: cannot write {type(value).__name__} value {value!r}")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum()
    return key if bare else _toml_value(key)


def dict_to_toml(data: Mapping[str, Any], prefix: str = "") -> str:
    """Write a nested mapping as TOML (scalars first, then ``[tables]``)."""
    lines = []
    tables = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            tables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}.{_toml_key(key)}" if prefix else _toml_key(key)
        text += f"\n[{name}]\n" + dict_to_toml(value, name)
    return text


def config_to_toml(config: Any) -> str:
    """The config as TOML text that :func:`config_from_dict` reads back to an equal config."""
    return dict_to_toml(config_to_dict(config))
