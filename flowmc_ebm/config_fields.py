"""The field machinery of `flowmc_ebm.config`: a dataclass field that carries its allowed values
(`spec`), its check when a record is built (`validate`), the reading of a record from a
TOML/JSON table (`read_table`), and a table's sub-tables merged into flat keys and back
(`ungroup_table`, `group_table`). Every message names the field, what it expects and what came.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import field
from typing import Any

__all__ = ["group_table", "read_table", "spec", "ungroup_table", "validate"]


def spec(default: Any, *, low: float | None = None, low_open: bool = False,
          choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field carrying its allowed values, checked by `validate`."""
    return field(default=default, metadata={"low": low, "low_open": low_open, "choices": choices})


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is tuple:
        return "a list of ints"
    return {int: "an int", float: "a number", str: "a string"}[hint]


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """``value`` as the field's type, or a TypeError naming the field, expected and received."""
    bad = TypeError(f"{name} must be {_type_name(hint)}; received {value!r} "
                    f"({type(value).__name__})")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite; received {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)) or any(
                isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise bad
        return tuple(value)
    raise TypeError(f"{name}: unsupported field type {hint!r}")  # pragma: no cover


def _check_range(value: Any, meta: dict, name: str) -> None:
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {', '.join(meta['choices'])}; received {value!r}")
    low = meta.get("low")
    if low is None:
        return
    strict = meta.get("low_open")
    for v in value if isinstance(value, tuple) else (value,):
        if v <= low if strict else v < low:
            raise ValueError(f"{name} must be {'>' if strict else '>='} {low}; received {value!r}")


def validate(record: Any, section: str) -> None:
    """Coerce and range-check every field of a config dataclass in place."""
    hints = typing.get_type_hints(type(record))
    for f in dataclasses.fields(record):
        if "low" not in f.metadata:  # a table (nested record or free), not a `spec` field
            continue
        name = f"{section}.{f.name}" if section else f.name
        value = _coerce(getattr(record, f.name), hints[f.name], name)
        _check_range(value, f.metadata, name)
        object.__setattr__(record, f.name, value)


def read_table(cls: type, data: Any, section: str, tables: tuple[str, ...] = ()) -> Any:
    where = section or "the config"
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a table (dict); received {type(data).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            name = f"{section}.{key}" if section else key
            raise ValueError(f"unknown key {name}; known keys: {', '.join([*known, *tables])}")
    kwargs = dict(data)
    hints = typing.get_type_hints(cls)
    for key in kwargs:
        if dataclasses.is_dataclass(hints[key]):  # a nested table: its own from_dict
            kwargs[key] = hints[key].from_dict(kwargs[key])
    return cls(**kwargs)


def ungroup_table(data: Any, groups: dict[str, tuple[str, ...]], section: str,
                  known: frozenset[str]) -> Any:
    """``data`` (the ``[section]`` table) with its sub-tables ``groups`` merged into flat keys.

    A key in the wrong sub-table, or given both flat and in its sub-table with two values, is
    refused in one line that says where it belongs; ``known`` are the record's flat fields.
    """
    if not isinstance(data, dict):
        return data
    group_of = {key: group for group, keys in groups.items() for key in keys}
    flat = {k: v for k, v in data.items() if k not in groups}
    for group in groups:
        if group not in data:
            continue
        table = data[group]
        if not isinstance(table, dict):
            raise TypeError(f"{section}.{group} must be a table (dict); received "
                            f"{type(table).__name__}")
        for key, value in table.items():
            if group_of.get(key) != group:
                home = f"[{section}.{group_of[key]}]" if key in group_of else f"[{section}]"
                if key not in group_of and key not in known:
                    raise ValueError(f"unknown key {section}.{group}.{key}; known keys: "
                                     f"{', '.join(groups[group])}")
                raise ValueError(f"{section}.{group}.{key}: {key} belongs in {home}, not in "
                                 f"[{section}.{group}]")
            if key in flat and flat[key] != value:
                raise ValueError(f"{section}.{key} = {flat[key]!r} and {section}.{group}.{key} = "
                                 f"{value!r}: one key given twice (its place is "
                                 f"[{section}.{group}])")
            flat[key] = value
    return flat


def group_table(data: dict, groups: dict[str, tuple[str, ...]]) -> dict:
    """The inverse of `ungroup_table`: flat keys into their sub-tables."""
    grouped = {key for keys in groups.values() for key in keys}
    out = {k: v for k, v in data.items() if k not in grouped}
    for group, keys in groups.items():
        out[group] = {k: data[k] for k in keys if k in data}
    return out
