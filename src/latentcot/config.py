"""Typed dataclass configs: YAML in, `key=value` overrides, resolved config saved with each run.

A run's config has sections (run, generation, method, train, ...), each a dataclass. A user writes keys
either flat (`temperature=0.7`, found in whichever section has that field) or dotted (`generation.temperature=0.7`).
A flat key that several sections hold must be written dotted; the error says so.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from latentcot.errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, field_name: str) -> Any:
    """Converts `value` (a YAML value or a command-line string) to the annotated type `tp`."""
    tp, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in {"none", "null", ""}):
        if optional:
            return None
        raise ConfigError(f"{field_name}: a value is required")
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in _TRUE:
                return True
            if s in _FALSE:
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool):
                raise ValueError
            number = value
            if isinstance(value, str):  # "8", and a whole number written as "8.0" or "1e3", never "1.5e0" cut to 1
                try:
                    return int(value)
                except ValueError:
                    number = float(value)
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            return str(value)
        if origin in (list, tuple):
            (inner, *_rest) = typing.get_args(tp) or (str,)
            if isinstance(value, str):  # "0,1", or numbers as YAML writes a list, "[0, 1]" (text keeps its brackets)
                text = value.strip()
                if inner is not str and text.startswith("[") and text.endswith("]"):
                    text = text[1:-1]
                items = [v for v in (s.strip() for s in text.split(",")) if v != ""]
            else:
                items = list(value)
            out = [coerce(v, inner, field_name) for v in items]
            return out if origin is list else tuple(out)
        if origin is dict or tp is dict:
            if isinstance(value, dict):
                return value
            raise ValueError
        if typing.get_origin(tp) is typing.Literal:
            allowed = typing.get_args(tp)
            if value in allowed:
                return value
            raise ConfigError(f"{field_name}: {value!r} is not one of {', '.join(map(str, allowed))}")
    except ConfigError:
        raise
    except (TypeError, ValueError):
        raise ConfigError(f"{field_name}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type, data: dict[str, Any], section: str = "") -> Any:
    """Builds dataclass `cls` from a dict, coercing types; unknown keys are an error with close names."""
    types_ = field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            import difflib

            close = difflib.get_close_matches(key, list(types_), n=3)
            where = f"{section}." if section else ""
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {where}{key}{hint}")
        name = f"{section + '.' if section else ''}{key}"
        kwargs[key] = check_bounds(coerce(value, types_[key], name), name, key, cls)
    return cls(**kwargs)


# Largest values of count fields where a bigger one would exhaust memory before any work is done (every
# field of this name in any section). Lists of ints are bounded element-wise.
MAXIMA = {"num_samples": 1024, "max_new_tokens": 1_000_000, "batch_size": 65_536, "train_batch_size": 65_536,
          "num_thoughts": 1_000_000, "num_thoughts_train": 1_000_000, "num_chains": 1024, "group_size": 4096}


def check_bounds(value: Any, name: str, key: str, cls: type) -> Any:
    """The bounds every config value obeys: counts are >= 0 (unless the class lists the field in SIGNED),
    floats are finite, and a field named in MAXIMA is at most that."""
    import math

    signed = getattr(cls, "SIGNED", ())
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{name}: must be a finite number, got {v}")
        if isinstance(v, int) and v < 0 and key not in signed:
            raise ConfigError(f"{name}: must be >= 0, got {v}")
        if isinstance(v, (int, float)) and key in MAXIMA and v > MAXIMA[key]:
            raise ConfigError(f"{name}: at most {MAXIMA[key]} (documented limit), got {v}")
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def parse_kv(items: list[str]) -> dict[str, str]:
    """`["a=1", "b.c=x"]` -> `{"a": "1", "b.c": "x"}`; a word without `=` is an error."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    return data


def split_sections(values: dict[str, Any], sections: dict[str, type]) -> dict[str, dict[str, Any]]:
    """Routes flat or dotted keys to the config section that owns them.

    Args:
        values: keys like `temperature`, `generation.temperature`, or nested dicts `{generation: {...}}`.
        sections: section name -> dataclass type.
    Returns:
        section name -> {field: raw value}.
    """
    fields = {name: set(field_types(cls)) for name, cls in sections.items()}
    routed: dict[str, dict[str, Any]] = {name: {} for name in sections}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in sections and isinstance(value, dict):
            for k, v in value.items():
                flat[f"{key}.{k}"] = v
        else:
            flat[key] = value
    for key, value in flat.items():
        if "." in key:
            sec, name = key.split(".", 1)
            if sec not in sections:
                raise ConfigError(f"unknown config section {sec!r} in {key!r}; sections: {', '.join(sections)}")
            if name not in fields[sec]:
                _raise_unknown(key, fields)
            routed[sec][name] = value
            continue
        owners = [sec for sec, names in fields.items() if key in names]
        if not owners:
            _raise_unknown(key, fields)
        if len(owners) > 1:
            raise ConfigError(
                f"config key {key!r} is ambiguous: write one of {', '.join(f'{o}.{key}' for o in owners)}"
            )
        routed[owners[0]][key] = value
    return routed


def _raise_unknown(key: str, fields: dict[str, set[str]]) -> None:
    import difflib

    known = sorted({n for names in fields.values() for n in names} | {f"{s}.{n}" for s, ns in fields.items() for n in ns})
    close = difflib.get_close_matches(key.split(".")[-1], known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown config key {key!r}{hint}")


def check(cond: bool, field_name: str, message: str) -> None:
    """Validation helper for `__post_init__`: raises ConfigError naming the field."""
    if not cond:
        raise ConfigError(f"{field_name}: {message}")
