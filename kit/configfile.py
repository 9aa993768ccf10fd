"""Loading YAML configuration files into pydantic models with one-line, actionable errors.

Every recipe, preset and sweep file goes through :func:`load_model`: malformed YAML, a
document that is not a mapping, an unknown key or a wrong type becomes a ``KitError`` that
names the file, the key (dotted path) and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from kit.errors import KitError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse ``path`` as a YAML mapping, or raise a one-line ``KitError``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KitError("file not found", where=str(path)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise KitError(f"cannot read: {e}", where=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise KitError("YAML nested too deeply", where=str(path), fix="a recipe or preset is a flat mapping") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise KitError(f"malformed YAML: {problem}", where=loc, fix="fix the YAML syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KitError(f"expected a mapping of keys to values, got {type(data).__name__}",
                       where=str(path), fix="write the file as `key: value` lines")
    return data


def describe_validation_error(err: ValidationError, where: str) -> KitError:
    """Turn pydantic's first error into a one-line KitError naming the dotted key."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
    kind = first.get("type", "")
    msg = first.get("msg", "invalid value")
    if kind == "extra_forbidden":
        return KitError(f"{key}: unknown key", where=where,
                        fix="remove it or check its spelling against `kit recipes show`/`kit presets show`")
    if kind == "missing":
        return KitError(f"{key}: required key is missing", where=where, fix="add it")
    msg = msg.removeprefix("Value error, ")
    if not key:  # a check across keys: its message names the keys and the fix itself
        return KitError(msg, where=where)
    got = first.get("input")
    got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return KitError(f"{key}: {msg}{got_s}", where=where, fix=None if "; " in msg else "correct the value")


def validate(model: type[M], data: dict[str, Any], where: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise describe_validation_error(e, where) from None


def load_model(model: type[M], path: Path) -> M:
    return validate(model, read_yaml(path), str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """Set ``a.b.c = value`` in nested dicts, creating no new top-level sections."""
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise KitError(f"{dotted}: {p} is not a section", where=where,
                           fix="use the dotted path of a single value, e.g. model.layers=4")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as YAML (``4``, ``true``, ``[1,2]``)."""
    if "=" not in text:
        raise KitError(f"{text!r} is not key=value", where="--set", fix="write e.g. --set train.iters=50")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise KitError(f"{text!r} has no key", where="--set", fix="write e.g. --set train.iters=50")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value
