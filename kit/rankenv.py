"""Who am I in the job: map each launcher's rank variables to torchrun's contract.

The one home of that mapping. torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT itself (:data:`CONTRACT`). The others, in the order they are tried:

- ``slurm`` (srun): SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID / SLURM_STEP_TASKS_PER_NODE
  (``2(x3)`` and ``2,1`` forms keep their first number). SLURM_PROCID is also set in a batch
  script's own environment, so a process counts as an srun rank only with SLURM_STEP_ID
  or SLURM_STEPID present and not ``batch``.
- ``mpi`` (OpenMPI, and Fujitsu MPI, an Open MPI derivative): OMPI_COMM_WORLD_RANK / SIZE /
  LOCAL_RANK / LOCAL_SIZE.
- ``fjmpi`` (Fujitsu MPI under PJM, when the OMPI_COMM_WORLD_* names are absent): the rank
  from PMIX_RANK (or OMPI_MCA_orte_ess_vpid), the world size from PJM_MPI_PROC (the job's
  ``--mpi proc=``) or KIT_WORLD_SIZE (the kit's mpiexec line), the node-local rank from
  PLE_RANK_ON_NODE (or FLIB_RANK_ON_NODE / OMPI_PLE_RANK_ON_NODE), else RANK modulo the
  ranks per node (PJM_PROC_BY_NODE or KIT_RANKS_PER_NODE): in a public user's log only
  PMIX_RANK was set.
- ``pmix`` (other PMIx launchers): PMIX_RANK with OMPI_UNIVERSE_SIZE, MPI_LOCALRANKID.

DeepSpeed reads none of the latter itself (without RANK it falls back to mpi4py discovery),
and Megatron reads only RANK/WORLD_SIZE/LOCAL_RANK. So the workload calls :func:`resolve`
before initialising torch.distributed, and any other program started by mpirun, srun or
PJM's mpiexec is started through the rank wrapper (:mod:`kit.rankexec`), which calls
``resolve(env, launcher_first=True)`` and then becomes the program. MASTER_ADDR /
MASTER_PORT are set by the launcher that starts the ranks (kit.launchers.mpirun/srun);
the 127.0.0.1:29500 defaults here only serve a single process or a one-node run.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# target -> candidate variables, first present wins
_SOURCES: list[tuple[str, dict[str, tuple[str, ...]]]] = [
    ("torchrun", {"RANK": ("RANK",), "WORLD_SIZE": ("WORLD_SIZE",), "LOCAL_RANK": ("LOCAL_RANK",),
                  "LOCAL_WORLD_SIZE": ("LOCAL_WORLD_SIZE",)}),
    ("slurm", {"RANK": ("SLURM_PROCID",), "WORLD_SIZE": ("SLURM_NTASKS", "SLURM_NPROCS"),
               "LOCAL_RANK": ("SLURM_LOCALID",), "LOCAL_WORLD_SIZE": ("SLURM_STEP_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")}),
    ("mpi", {"RANK": ("OMPI_COMM_WORLD_RANK",), "WORLD_SIZE": ("OMPI_COMM_WORLD_SIZE",),
             "LOCAL_RANK": ("OMPI_COMM_WORLD_LOCAL_RANK",), "LOCAL_WORLD_SIZE": ("OMPI_COMM_WORLD_LOCAL_SIZE",)}),
    ("fjmpi", {"RANK": ("PMIX_RANK", "OMPI_MCA_orte_ess_vpid"), "WORLD_SIZE": ("PJM_MPI_PROC", "KIT_WORLD_SIZE"),
               "LOCAL_RANK": ("PLE_RANK_ON_NODE", "FLIB_RANK_ON_NODE", "OMPI_PLE_RANK_ON_NODE"),
               "LOCAL_WORLD_SIZE": ("PJM_PROC_BY_NODE", "KIT_RANKS_PER_NODE")}),
    ("pmix", {"RANK": ("PMIX_RANK",), "WORLD_SIZE": ("OMPI_UNIVERSE_SIZE",), "LOCAL_RANK": ("MPI_LOCALRANKID",),
              "LOCAL_WORLD_SIZE": ("MPI_LOCALNRANKS",)}),
]
MAPPINGS = dict(_SOURCES)
#: what a torch.distributed program (env:// rendezvous) reads: torchrun's variables
CONTRACT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _first(env: MutableMapping[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in env and env[n] != "":
            return env[n]
    return None


def _is_srun_task(env: MutableMapping[str, str]) -> bool:
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
    return step is not None and step not in ("batch", "extern", "4294967294", "4294967295")


def detect(environ: MutableMapping[str, str] | None = None, *, launcher_first: bool = False) -> str | None:
    """Name of the launcher whose rank variables are present, or None for a single process.

    ``launcher_first``: the launcher's own variables win over RANK/WORLD_SIZE already in the
    environment (a job script's ``export WORLD_SIZE=…`` reaches every rank alike)."""
    env = os.environ if environ is None else environ
    for name, mapping in (_SOURCES[1:] + _SOURCES[:1] if launcher_first else _SOURCES):
        if name == "slurm" and not _is_srun_task(env):
            continue
        if _first(env, mapping["RANK"]) is not None and _first(env, mapping["WORLD_SIZE"]) is not None:
            return name
    return None


def resolve(environ: MutableMapping[str, str] | None = None, *, launcher_first: bool = False) -> str:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE (and MASTER_* defaults) in place.

    Returns the name of the source used ("single" when no launcher variables exist). With
    ``launcher_first`` the launcher's variables are tried first and replace the four rank
    variables where already set; otherwise values already set are kept.
    """
    env = os.environ if environ is None else environ
    source = detect(env, launcher_first=launcher_first)
    if source is None:
        env.setdefault("RANK", "0")
        env.setdefault("WORLD_SIZE", "1")
        env.setdefault("LOCAL_RANK", "0")
        env.setdefault("LOCAL_WORLD_SIZE", "1")
        source = "single"
    else:
        for target, names in MAPPINGS[source].items():
            value = _first(env, names)
            if value is not None and (launcher_first or target not in env):
                env[target] = value.split("(")[0].split(",")[0]
            elif launcher_first and target in ("LOCAL_RANK", "LOCAL_WORLD_SIZE"):
                env.pop(target, None)  # a stale inherited value; derived below
        if "LOCAL_RANK" not in env and "LOCAL_WORLD_SIZE" in env:
            # ranks fill each node in turn (Fujitsu MPI with max-proc-per-node)
            env["LOCAL_RANK"] = str(int(env["RANK"]) % int(env["LOCAL_WORLD_SIZE"]))
        env.setdefault("LOCAL_RANK", "0")
        env.setdefault("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    return source
