"""Machine settings: one spec per knob, and everything the kit does with it.

A knob (``freq_mhz``, ``retention_state``, ``eco_state``, ``allocator``,
``ranks_per_node``, ``threads_per_rank``, ``env``) is declared once here, as a ``Spec``:

- ``default``: the sweep table's baseline; a value equal to it gets no label in the table;
- ``label``: how the table writes a value (``2.2Hz``, ``LD_PRELOAD=libtcmalloc.so``,
  ``"retention_state=0"``), ``label_order``/``row_order`` where it goes;
- ``apply``: per scheduler or launcher, the *exact* directive that applies a value
  (``#SBATCH --cpu-freq=2200000``, ``--cpu-freq=2200000`` for srun, a PJM ``-L`` item).
  ``resolve`` writes it into the plan's ``Setting.applied_by`` with ``by`` naming the
  scheduler or launcher, which then emits it verbatim (``Scheduler.directives``,
  ``Launcher.setting_args``). PJM's power knobs share one ``#PJM -L "…"`` line, as Fugaku
  users write it: each of them records that whole line. A knob nobody here can apply is
  recorded as requested and not applied, never as applied;
- ``environment``: how it is applied through the ranks' environment where no scheduler or
  launcher does (``LD_PRELOAD``);
- ``env_var``: the variable every rank gets set to the value, whoever applies the knob
  (``OMP_NUM_THREADS``: ``rank_environment`` writes it into the plan's env; where no scheduler
  or launcher applies the knob, that variable is also how it is applied);
- ``verify``: how the run checks it (the frequency read on a core the ranks may use, the
  allocator in each rank's memory map, the ranks seen on each node).

On PJM every power knob (``freq``, ``eco_state``, ``retention_state``,
``throttling_state``, ``issue_state``, ``ex_pipe_state``) is written, those the presets
leave unset at the normal-mode default, and recorded as requested: Fugaku's own defaults
(2200 MHz, ``eco_state=2``, ``retention_state=1``; Users Guide §7.1) are not the table's
baseline and may change.

Adding a knob: one ``Spec`` in ``SPECS`` (and the preset field it reads), plus its tests.
The allocator's library is found in one place, ``allocator_library``: at plan time, or on
the node where the ranks run when the plan leaves it there (batch jobs on the host).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from kit import allocator, hostinfo, rankenv
from kit.errors import KitError
from kit.launchers.common import cpu_freq_khz


class Setting(BaseModel):
    """One machine setting in a plan: what was asked, who applies it and how, and what was seen."""
    name: str
    requested: Any = None
    status: Literal["applied", "not-applied", "not-requested"] = "not-requested"
    #: the exact directive (a script line, argv words, VAR=value) that applies it
    applied_by: str | None = None
    #: the scheduler or launcher that emits ``applied_by``, or "environment"
    by: str | None = None
    #: part of the layout (ranks/threads): launchers write it from the plan's layout
    layout: bool = False
    note: str = ""
    seen: Any = None
    verified: bool | None = None


@dataclass
class Observed:
    """What a finished run saw: each node's monitor snapshot; the frequency is read on demand."""
    monitors: list[dict[str, Any]]
    _freq: dict[str, Any] | None = None

    def frequency(self) -> dict[str, Any]:
        if self._freq is None:
            self._freq = hostinfo.frequency_seen()  # on a core of the ranks' CPU set
        return self._freq

    def ranks(self) -> list[dict[str, Any]]:
        return [r for m in self.monitors for r in m["ranks"].values()]


def _verify_freq(s: Setting, seen: Observed) -> dict[str, Any]:
    freq = seen.frequency()
    out: dict[str, Any] = {"seen": freq}
    if freq.get("mhz") and s.status == "applied":
        out["verified"] = abs(freq["mhz"] - s.requested) / s.requested < 0.03
    return out


def _verify_allocator(s: Setting, seen: Observed) -> dict[str, Any]:
    ranks = seen.ranks()
    mapped = {str(r["rank"]): r.get("allocator", {}).get("allocator", "unknown") for r in ranks}
    out: dict[str, Any] = {"seen": mapped}
    want = "glibc" if s.requested in (None, "glibc") else ("tcmalloc" if s.requested == "tcmalloc" else None)
    if mapped and want:
        out["verified"] = all(v == want for v in mapped.values())
    elif mapped:
        lib = Path(str(s.requested)).name
        out["verified"] = all(any(lib in x for x in r.get("allocator", {}).get("libraries", [])) for r in ranks)
    return out


def _verify_ranks_per_node(s: Setting, seen: Observed) -> dict[str, Any]:
    per_node = {m["node"]: len(m["ranks"]) for m in seen.monitors}
    return {"seen": per_node, "verified": bool(per_node) and all(v == s.requested for v in per_node.values())}


def _allocator_label(v: str) -> str:
    return "LD_PRELOAD=libtcmalloc.so" if v == "tcmalloc" else f"LD_PRELOAD={v.rsplit('/', 1)[-1]}"


#: PJM's power knobs share one ``-L`` line (``#PJM -L "freq=2200,eco_state=0,…"``)
PJM_POWER_LINE = '#PJM -L "{}"'


@dataclass(frozen=True)
class Spec:
    name: str
    doc: str
    default: Any = None
    label: Callable[[Any], str] | None = None
    label_order: int | None = None
    row_order: int | None = None  # the table's order of single-setting rows
    apply: Mapping[str, Callable[[Any], str]] = field(default_factory=dict)
    pjm_power: str | None = None  # the PJM -L key of a power knob
    environment: Callable[[Any], str] | None = None
    env_var: str | None = None  # the ranks' variable that carries the value (whoever applies it)
    layout: bool = False
    verify: Callable[[Setting, Observed], dict[str, Any]] | None = None


SPECS: tuple[Spec, ...] = (
    Spec("freq_mhz", "CPU frequency in MHz (A64FX: 2000 normal, 2200 boost)", default=2000,
         label=lambda v: f"{v / 1000:.1f}Hz", label_order=2, row_order=2,
         apply={"slurm": lambda v: f"#SBATCH --cpu-freq={cpu_freq_khz(v)}", "srun": lambda v: f"--cpu-freq={cpu_freq_khz(v)}"},
         pjm_power="freq", verify=_verify_freq),
    Spec("retention_state", "1: idle cores may sleep (waking takes ~3 ms); 0: they do not", default=1,
         label=lambda v: f'"retention_state={v}"', label_order=4, row_order=1, pjm_power="retention_state"),
    Spec("eco_state", "A64FX eco mode (0 off; 1, 2: one of the two FP pipelines; Fugaku's default 2)", default=0,
         label=lambda v: f'"eco_state={v}"', label_order=5, row_order=4, pjm_power="eco_state"),
    Spec("throttling_state", "PJM power knob, 0 in normal mode", default=0,
         label=lambda v: f'"throttling_state={v}"', label_order=6, row_order=5, pjm_power="throttling_state"),
    Spec("issue_state", "PJM power knob (instruction issue), 0 in normal mode", default=0,
         label=lambda v: f'"issue_state={v}"', label_order=7, row_order=6, pjm_power="issue_state"),
    Spec("ex_pipe_state", "PJM power knob (execution pipelines), 0 in normal mode", default=0,
         label=lambda v: f'"ex_pipe_state={v}"', label_order=8, row_order=7, pjm_power="ex_pipe_state"),
    Spec("allocator", "glibc | tcmalloc | a library path, preloaded into every rank", default="glibc",
         label=_allocator_label, label_order=3, row_order=3, verify=_verify_allocator,
         environment=lambda v: "default allocator" if v == "glibc" else f"LD_PRELOAD={v}"),
    Spec("ranks_per_node", "ranks started on each node", default=1,
         label=lambda v: f"max-proc-per-node={v}", label_order=1, layout=True,
         apply={"pjm": lambda v: f'#PJM --mpi "max-proc-per-node={v}"', "slurm": lambda v: f"#SBATCH --ntasks-per-node={v}",
                "srun": lambda v: f"--ntasks-per-node {v}", "local": lambda v: f"--nproc-per-node {v}",
                "mpirun": lambda v: f"--map-by ppr:{v}:node"},
         verify=_verify_ranks_per_node),
    Spec("threads_per_rank", "OpenMP threads of each rank", layout=True,
         apply={"slurm": lambda v: f"#SBATCH --cpus-per-task={v}"}, env_var="OMP_NUM_THREADS"),
    Spec("env", "extra environment variables of the ranks", environment=lambda v: "environment"),
)

BY_NAME = {s.name: s for s in SPECS}


def _applied(spec: Spec, value: Any, backend: str, *, mpi: str) -> tuple[str, str] | None:
    """(directive, by) when ``backend`` applies ``spec``'s value."""
    if spec.pjm_power and backend == "pjm":
        return f"{spec.pjm_power}={value}", "pjm"  # joined into the power line by resolve
    fn = spec.apply.get(backend)
    if fn and backend == "mpirun" and mpi == "fujitsu":  # ranks per node come from the PJM job
        return f"the job's --mpi max-proc-per-node={value} (Fujitsu MPI)", "job"
    if fn:
        return fn(value), backend
    if spec.environment:
        return spec.environment(value), "environment"
    if spec.env_var:
        return f"{spec.env_var}={value}", "environment"
    return None


#: the variable that preloads the allocator's library into every rank (``preload``)
ALLOCATOR_ENV = "LD_PRELOAD"


def reserved_env(name: str) -> bool:
    """Whether a recipe's ``env`` may not set ``name``: the knobs' variables
    (``OMP_NUM_THREADS``, the allocator's ``LD_PRELOAD``), the ranks' torchrun contract and
    the kit's own ``KIT_*``."""
    return (name in {s.env_var for s in SPECS if s.env_var} | {ALLOCATOR_ENV} | set(rankenv.CONTRACT)
            or name.startswith("KIT_"))


def rank_environment(values: Mapping[str, Any]) -> dict[str, str]:
    """The variables the knobs' specs set in every rank's environment from their values
    (``threads_per_rank`` → ``OMP_NUM_THREADS``), whoever applies the knob."""
    return {spec.env_var: str(values[spec.name]) for spec in SPECS
            if spec.env_var and values.get(spec.name) is not None}


def resolve(values: Mapping[str, Any], backend: str, *, notes: Mapping[str, str] | None = None,
            applied_by: Mapping[str, str] | None = None, mpi: str = "openmpi") -> list[Setting]:
    """The plan's settings: each knob's requested value in ``values`` (None: not requested),
    applied by ``backend`` (a scheduler or launcher name) or the environment where either can.

    ``applied_by`` overrides the directive of a knob applied through the environment (the
    allocator: ``LD_PRELOAD=…``, or that it is resolved on the compute node); ``notes`` adds
    a note; ``mpi``: the MPI flavour the ``mpirun`` launcher uses here (Fujitsu MPI takes
    the ranks per node from the job, not from mpiexec).
    """
    out: list[Setting] = []
    for spec in SPECS:
        value = values.get(spec.name)
        note = (notes or {}).get(spec.name, "")
        if value is None and spec.pjm_power and backend == "pjm":
            # every power knob is written: the job manager's defaults (eco_state=2 on Fugaku) may change
            value = spec.default
            note = f"not set by the presets: the kit's normal-mode value {value}, written explicitly"
        if value is None or value == {}:
            if spec.name != "env":
                out.append(Setting(name=spec.name, layout=spec.layout))
            continue
        how = _applied(spec, value, backend, mpi=mpi)
        if how is None:
            out.append(Setting(name=spec.name, requested=value, status="not-applied", layout=spec.layout,
                               note=note or f"set by the job manager (PJM -L, Slurm --cpu-freq); the {backend} "
                                            f"launcher cannot apply it, so it is recorded as requested, not applied"))
            continue
        directive, by = how
        if by == "environment" and applied_by and spec.name in applied_by:
            directive = applied_by[spec.name]
        out.append(Setting(name=spec.name, requested=value, status="applied", applied_by=directive, by=by,
                           layout=spec.layout, note=note))
    power = [s for s in out if s.by == "pjm" and BY_NAME[s.name].pjm_power]
    if power:
        line = PJM_POWER_LINE.format(",".join(s.applied_by for s in power))
        for s in power:
            s.applied_by = line
    return out


def allocator_library(requested: str | None, *, find: Callable[[], str | None] | None = None) -> str | None:
    """The library to preload for the ``allocator`` knob (None: glibc), found by ``find``
    (a runtime's: the image's copy) or on this machine. KitError naming the package when
    tcmalloc is asked for and not found. The one place the knob is resolved."""
    return allocator.resolve(requested, find=find or allocator.find_tcmalloc)


def preload(lib: str, environ: Mapping[str, str] | None = None) -> str:
    """``LD_PRELOAD`` with ``lib`` first, keeping what the environment already preloads."""
    env = os.environ if environ is None else environ
    return lib if not env.get(ALLOCATOR_ENV) else f"{lib}:{env[ALLOCATOR_ENV]}"


def allocator_on_node(plan: Any) -> tuple[Any, str]:
    """On the node where the ranks run: resolve an allocator the plan left to it.

    Returns the plan (with ``LD_PRELOAD`` in its env where it was resolved here) and an
    error text when the library is missing on this node (empty otherwise).
    """
    if plan.runtime != "host" or plan.preset.allocator in (None, "glibc") or "LD_PRELOAD" in plan.env:
        return plan, ""
    try:
        lib = allocator_library(plan.preset.allocator) or ""
    except KitError as e:
        return plan, f"on {socket.gethostname()}: {e}"
    return plan.model_copy(update={"env": {**plan.env, "LD_PRELOAD": lib}}), ""


def observed(settings: list[Setting], monitors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each setting as recorded in provenance: with what was seen and whether it matched."""
    seen = Observed(monitors)
    out = []
    for s in settings:
        d = s.model_dump()
        spec = BY_NAME.get(s.name)
        if spec and spec.verify and s.requested is not None:
            d.update(spec.verify(s, seen))
        out.append(d)
    return out


def label(requested: Mapping[str, Any]) -> str:
    """The table's way of writing a run's settings: ``max-proc-per-node=4, 2.2Hz, LD_PRELOAD=...``."""
    parts = [(spec.label_order, spec.label(requested[spec.name])) for spec in SPECS
             if spec.label and spec.label_order and _changed(spec, requested.get(spec.name))]
    return ", ".join(text for _, text in sorted(parts, key=lambda p: p[0]))


def row_order(requested: Mapping[str, Any]) -> list[int]:
    """Where the table puts a run's row among single-setting rows (retention, frequency, allocator, eco)."""
    return sorted(spec.row_order for spec in SPECS
                  if spec.row_order is not None and _changed(spec, requested.get(spec.name)))


def _changed(spec: Spec, value: Any) -> bool:
    return value is not None and value != spec.default
