"""Recipes: what is trained and how, pinned in YAML (``recipes/*.yaml``).

A recipe pins the model shape, the parallel layout, batch sizes, iterations, seed, data,
the image it expects and the training command (an argv template). ``--set key=value``
overrides a value; the overrides are recorded in the plan and the bundle.

A command that is not the built-in workload (e.g. DeepSpeedFugaku's ``pretrain_gpt.py``)
also needs where it lives and what it needs in its environment:

- ``vars``: named values for ``{vars.NAME}`` placeholders (the program's checkout, its data
  and vocabulary files), so a site changes one line, or ``--set vars.NAME=…``;
- ``env``: variables the command needs (``PYTHONPATH``, ``DS_ACCELERATOR``), templated like
  the command and exported to every rank by every launcher. Machine settings stay in
  presets: their variables (OMP_NUM_THREADS, LD_PRELOAD), the rank contract and the kit's own
  KIT_* names are refused (kit.plan, from kit.settings.reserved_env);
- ``workdir``: the directory the ranks start in (templated; default: where ``kit run`` runs).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kit import catalog
from kit.configfile import parse_override, read_yaml, set_dotted, validate
from kit.errors import KitError

DEFAULT_RECIPE = "tiny"

#: The built-in workload's argv. ``{python}`` is the runtime's interpreter; other fields
#: come from the resolved recipe and plan (see :meth:`Recipe.render_command`).
DEFAULT_COMMAND = [
    "{python}", "-m", "kit.workload",
    "--layers", "{model.layers}", "--hidden", "{model.hidden}", "--heads", "{model.heads}",
    "--seq", "{model.seq}", "--vocab", "{model.vocab}",
    "--micro-batch", "{batch.micro}", "--global-batch", "{batch.global_batch}",
    "--tp", "{parallel.tp}", "--pp", "{parallel.pp}", "--zero", "{parallel.zero}",
    "--iters", "{train.iters}", "--warmup-iters", "{train.warmup_iters}",
    "--seed", "{train.seed}", "--lr", "{train.lr}", "--dtype", "{train.dtype}",
    "--data", "{data}", "{checkpoint_flag}",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Model(_Strict):
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    seq: int = Field(gt=0)
    vocab: int = Field(gt=0)
    checkpoint_activations: bool = False

    @model_validator(mode="after")
    def _heads_divide_hidden(self):
        if self.hidden % self.heads:
            raise ValueError(f"heads {self.heads} do not divide hidden {self.hidden}; pick heads that divide it")
        return self


class Parallel(_Strict):
    dp: int | None = Field(default=None, gt=0, description="data parallel; derived from the world size when omitted")
    tp: int = Field(default=1, gt=0)
    pp: int = Field(default=1, gt=0)
    zero: Literal[0, 1, 2, 3] = 1


class Batch(_Strict):
    micro: int = Field(gt=0)
    global_batch: int = Field(gt=0, alias="global")


class Train(_Strict):
    iters: int = Field(gt=0)
    warmup_iters: int = Field(default=1, ge=0)
    seed: int = 1234
    lr: float = Field(default=3e-4, gt=0)
    dtype: Literal["fp32", "bf16"] = "fp32"
    stall_timeout_s: float = Field(default=120.0, gt=0, description="no new iteration for this long = stalled")
    startup_timeout_s: float = Field(default=900.0, gt=0, description="allowed time to the first iteration")

    @model_validator(mode="after")
    def _warmup_below_iters(self):
        if self.warmup_iters >= self.iters:
            raise ValueError(f"warmup_iters {self.warmup_iters} must be below iters {self.iters}")
        return self


class Recipe(_Strict):
    name: str
    description: str = ""
    model: Model
    parallel: Parallel = Parallel()
    batch: Batch
    train: Train
    data: str = Field(default="synthetic", description="'synthetic' or a path to a flat uint16 token file")
    image: str | None = Field(default=None, description="image reference the recipe expects, if any")
    command: list[str] = Field(default_factory=lambda: list(DEFAULT_COMMAND))
    vars: dict[str, str] = Field(default_factory=dict, description="values for {vars.NAME} placeholders")
    env: dict[str, str] = Field(default_factory=dict, description="environment the command needs (templated)")
    workdir: str | None = Field(default=None, description="directory the ranks start in (templated)")

    @field_validator("vars", "env", mode="before")
    @classmethod
    def _scalars_as_text(cls, v):  # `--set env.X=1` and `eval_iters: 10` give numbers
        if isinstance(v, dict):
            return {k: str(x).lower() if isinstance(x, bool) else str(x) if isinstance(x, (int, float)) else x
                    for k, x in v.items()}
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v):  # the names the kit sets itself are refused by kit.plan (kit.settings knows them)
        for name in v:
            if not _ENV_NAME.match(name):
                raise ValueError(f"env: {name!r} is not a variable name")
        return v

    @field_validator("command")
    @classmethod
    def _command_nonempty(cls, v):
        if not v:
            raise ValueError("command must not be empty")
        return v

    @model_validator(mode="after")
    def _layout(self):
        m, p = self.model, self.parallel
        if m.heads % p.tp:
            raise ValueError(f"parallel.tp {p.tp} does not divide model.heads {m.heads}; pick a TP that divides it")
        if m.layers % p.pp:
            raise ValueError(f"parallel.pp {p.pp} does not divide model.layers {m.layers}; pick a PP that divides it")
        if self.batch.global_batch % self.batch.micro:
            raise ValueError(f"batch.global {self.batch.global_batch} is not divisible by batch.micro {self.batch.micro}")
        if p.dp is not None:
            check_batch(self, p.dp)
        return self

    # -- derived --------------------------------------------------------------------------
    def content_hash(self) -> str:
        doc = self.model_dump(by_alias=True)
        for key in ("vars", "env", "workdir"):  # unset: the hash of a recipe written before they existed
            if not doc[key]:
                del doc[key]
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def render_command(self, *, python: str) -> list[str]:
        """The pinned argv with every placeholder filled from this recipe."""
        fill = self._filler(python, "command")
        rendered = (fill(arg) for arg in self.command)
        return [arg for arg in rendered if arg != ""]

    def render_env(self, *, python: str) -> dict[str, str]:
        """``env`` with its placeholders filled."""
        fill = self._filler(python, "env")
        return {k: fill(v) for k, v in self.env.items()}

    def render_workdir(self, *, python: str) -> str | None:
        """``workdir`` with its placeholders filled, or None (the kit's own directory)."""
        return None if self.workdir is None else self._filler(python, "workdir")(self.workdir)

    def _filler(self, python: str, key: str):
        fields = _flatten(self.model_dump())
        fields["batch.global_batch"] = self.batch.global_batch
        fields["python"] = python
        fields["data"] = self.data
        fields["checkpoint_flag"] = "--checkpoint-activations" if self.model.checkpoint_activations else ""

        def fill(match: re.Match) -> str:
            name = match.group(1)
            if name not in fields:
                raise KitError(f"{key}: unknown placeholder {{{name}}}", where=f"recipe {self.name}",
                               fix="use one of {python}, {data}, {checkpoint_flag}, {vars.NAME} (declared under "
                                   "vars:) or a value such as {model.layers}")
            return str(fields[name])

        return lambda text: _PLACEHOLDER.sub(fill, text)


_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_batch(recipe: Recipe, dp: int) -> None:
    mbs, gbs = recipe.batch.micro, recipe.batch.global_batch
    if gbs % (mbs * dp):
        raise ValueError(f"batch.global {gbs} is not divisible by batch.micro {mbs} x DP {dp}; "
                         f"choose a global batch that is a multiple of {mbs * dp}")


def load(name: str = DEFAULT_RECIPE, overrides: list[str] | None = None) -> tuple[Recipe, Path]:
    """Load a recipe by name or path and apply ``key=value`` overrides."""
    path = catalog.find("recipe", name)
    data = read_yaml(path)
    data = apply_overrides(data, overrides or [], where=str(path))
    data.setdefault("name", path.stem)
    return validate(Recipe, data, str(path) + (" (with --set)" if overrides else "")), path


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value, where=f"{where} --set {key}")
    return data
