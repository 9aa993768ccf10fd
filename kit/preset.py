"""Presets: named machine settings in YAML (``env/*.yaml``) that compose.

A preset sets any of: CPU frequency (MHz), retention_state, eco_state, throttling_state,
issue_state, ex_pipe_state (Fugaku's power knobs; see ``kit.settings``), allocator
(``glibc`` | ``tcmalloc`` | a library path), ranks per node, threads per rank and extra
environment variables. ``extends: [a, b]`` composes presets (later wins; ``env`` merges),
and so does giving ``--preset`` several times. Settings left unset stay unset: the plan
records them as "not requested", never as a guessed value.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kit import catalog
from kit.configfile import read_yaml, validate
from kit.errors import KitError

DEFAULT_PRESET = "tuned"
SETTING_KEYS = ("freq_mhz", "retention_state", "eco_state", "throttling_state", "issue_state", "ex_pipe_state",
                "allocator", "ranks_per_node", "threads_per_rank")


class Preset(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    description: str = ""
    extends: list[str] = Field(default_factory=list)
    freq_mhz: int | None = Field(default=None, ge=100, le=10000, description="CPU frequency in MHz (2000, 2200 on A64FX)")
    retention_state: int | None = Field(default=None, ge=0, le=1)
    eco_state: int | None = Field(default=None, ge=0, le=2)
    throttling_state: int | None = Field(default=None, ge=0, le=1, description="PJM power knob (0: normal)")
    issue_state: int | None = Field(default=None, ge=0, le=1, description="PJM power knob (0: normal)")
    ex_pipe_state: int | None = Field(default=None, ge=0, le=1, description="PJM power knob (0: normal)")
    allocator: str | None = Field(default=None, description="glibc | tcmalloc | /path/to/lib.so")
    ranks_per_node: int | None = Field(default=None, gt=0)
    threads_per_rank: int | None = Field(default=None, gt=0)
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("env must be a mapping of VARIABLE: value")
        return {str(k): "" if val is None else str(val) for k, val in v.items()}

    @field_validator("allocator")
    @classmethod
    def _allocator_kind(cls, v):
        if v is None or v in ("glibc", "tcmalloc") or "/" in v or v.endswith(".so") or ".so." in v:
            return v
        raise ValueError(f"allocator {v!r} is not glibc, tcmalloc or a path to a shared library")

    def settings(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in SETTING_KEYS} | {"env": dict(self.env)}

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()


def _linearize(name: str, stack: tuple[str, ...], out: list[tuple[str, Preset, Path]]) -> None:
    """Depth-first: parents before children, each preset file once (its first place wins).

    ``tuned: extends [boost, tcmalloc, noretention]`` (each extending ``baseline``) becomes
    baseline, boost, tcmalloc, noretention, tuned: the shared base is applied once, first,
    so it never undoes what a sibling set.
    """
    if name in stack:
        raise KitError(f"extends cycle: {' -> '.join(stack + (name,))}", where=f"preset {name}",
                       fix="remove one of the extends entries")
    path = catalog.find("preset", name)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    own = validate(Preset, data, str(path))
    for parent in own.extends:
        _linearize(parent, stack + (name,), out)
    if all(p != path.resolve() for _, _, p in out):
        out.append((own.name, own, path.resolve()))


def load(names: list[str] | None = None) -> tuple[Preset, list[Path]]:
    """Compose presets left to right (``--preset a --preset b``): later settings win.

    Returns the composed preset and the files it was made from, in the order applied.
    """
    names = names or [DEFAULT_PRESET]
    chain: list[tuple[str, Preset, Path]] = []
    for n in names:
        _linearize(n, (), chain)
    data: dict = {"name": "+".join(names), "env": {}}
    for _, own, _ in chain:
        for key in SETTING_KEYS:
            if key in own.model_fields_set and getattr(own, key) is not None:
                data[key] = getattr(own, key)
        data["env"].update(own.env)
        if own.description:
            data["description"] = own.description
    return Preset.model_validate(data), [p for _, _, p in chain]
