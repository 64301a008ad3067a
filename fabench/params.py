"""Parameters: defaults from metadata, overrides from task files and ``--set key=value``.

A value given as text is parsed to the type of the parameter's default (int, float, bool, str,
or a tuple of numbers written ``1,2,3``); anything else is a :class:`~fabench.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import math
import sys
from typing import Any, Mapping

from fabench.errors import ConfigError, UnknownNameError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(text: str, default: Any, *, key: str = "value") -> Any:
    """Parse ``text`` to the type of ``default``."""
    text = text.strip()
    try:
        if isinstance(default, bool):
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if isinstance(default, (tuple, list)):
            items = [t for t in text.replace(" ", "").split(",") if t]
            proto = default[0] if default else 0
            return check_distinct(tuple(parse_value(t, proto, key=key) for t in items), key=key)
        if default is None:
            return text
        return type(default)(text)
    except ConfigError:  # already says what is wrong (a repeated item)
        raise
    except ValueError:
        kind = type(default).__name__ if default is not None else "text"
        raise ConfigError(f"cannot read {key}={text!r}: expected {kind}") from None


def check_distinct(items: tuple[Any, ...], *, key: str) -> tuple[Any, ...]:
    """``items`` sorted if no value repeats, else a ConfigError: a list parameter
    (``positive_classes``) is a set, and ``0,0`` or ``1,0`` would be a second configuration key for
    the computation of ``0`` or ``0,1``."""
    seen = [v for i, v in enumerate(items) if v in items[:i]]
    if seen:
        raise ConfigError(f"{key}: {seen[0]!r} is given more than once in {','.join(map(str, items))}")
    return tuple(sorted(items))


def coerce(value: Any, default: Any, *, key: str) -> Any:
    """Check a value from a task file against the type of the default (ints widen to float)."""
    if isinstance(value, str) and not isinstance(default, str) and default is not None:
        return parse_value(value, default, key=key)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) > sys.float_info.max:  # float() would overflow
            raise ConfigError(f"{key}: expected a finite number, got an integer too large for a float")
        return float(value)
    if isinstance(default, float) and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, tuple, dict)) for v in value):
            raise ConfigError(f"{key}: expected a flat list of numbers, got {value!r}")
        proto = default[0] if default else 0  # items of the default's type (1.0 or true is not 1)
        return check_distinct(tuple(coerce(v, proto, key=key) for v in value), key=key)
    if default is not None and not isinstance(value, type(default)):
        raise ConfigError(f"{key}: expected {type(default).__name__}, got {value!r}")
    return value


def resolve(
    defaults: Mapping[str, Any],
    *overrides: Mapping[str, Any],
    owner: str,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    choices: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults overridden in order; an unknown key is an error that lists the known keys.

    The result is checked against the owner's declared ``bounds`` and ``choices``
    (:attr:`fabench.types.Meta.bounds`, :attr:`~fabench.types.Meta.choices`).
    """
    from fabench.validation import check_bounds

    out = dict(defaults)
    for layer in overrides:
        for key, value in layer.items():
            if key not in defaults:
                close = difflib.get_close_matches(key, list(defaults), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UnknownNameError(
                    f"{owner} has no parameter {key!r}{hint} Known: {', '.join(sorted(defaults)) or 'none'}"
                )
            out[key] = coerce(value, defaults[key], key=f"{owner}.{key}")
    check_bounds(out, owner=owner, bounds=bounds, choices=choices)
    return out


def parse_assignments(items: list[str]) -> list[tuple[str, str]]:
    """Split ``key=value`` strings; a malformed one is a ConfigError."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value.strip():
            raise ConfigError(f"malformed --set {item!r}: expected key=value, e.g. --set d=512")
        pairs.append((key, value))
    return pairs
