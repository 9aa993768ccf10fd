"""Who am I in the job: map each launcher's rank variables to RANK/WORLD_SIZE/LOCAL_RANK.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT itself.
srun sets SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID; OpenMPI and Fujitsu MPI (an OpenMPI
derivative) set OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE. DeepSpeed reads neither
of the latter itself (without RANK it falls back to mpi4py discovery), so the workload
calls :func:`resolve` before initialising torch.distributed.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

_SOURCES: list[tuple[str, dict[str, str]]] = [
    ("torchrun", {"RANK": "RANK", "WORLD_SIZE": "WORLD_SIZE", "LOCAL_RANK": "LOCAL_RANK",
                  "LOCAL_WORLD_SIZE": "LOCAL_WORLD_SIZE"}),
    ("slurm", {"RANK": "SLURM_PROCID", "WORLD_SIZE": "SLURM_NTASKS", "LOCAL_RANK": "SLURM_LOCALID",
               "LOCAL_WORLD_SIZE": "SLURM_NTASKS_PER_NODE"}),
    ("mpi", {"RANK": "OMPI_COMM_WORLD_RANK", "WORLD_SIZE": "OMPI_COMM_WORLD_SIZE",
             "LOCAL_RANK": "OMPI_COMM_WORLD_LOCAL_RANK",
             "LOCAL_WORLD_SIZE": "OMPI_COMM_WORLD_LOCAL_SIZE"}),
    ("pmix", {"RANK": "PMIX_RANK", "WORLD_SIZE": "OMPI_UNIVERSE_SIZE", "LOCAL_RANK": "MPI_LOCALRANKID",
              "LOCAL_WORLD_SIZE": "MPI_LOCALNRANKS"}),
]


def detect(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Name of the launcher whose rank variables are present, or None for a single process."""
    env = os.environ if environ is None else environ
    for name, mapping in _SOURCES:
        if mapping["RANK"] in env and mapping["WORLD_SIZE"] in env:
            return name
    return None


def resolve(environ: MutableMapping[str, str] | None = None) -> str:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE (and MASTER_* defaults) in place.

    Returns the name of the source used ("single" when no launcher variables exist).
    """
    env = os.environ if environ is None else environ
    source = detect(env)
    if source is None:
        env.setdefault("RANK", "0")
        env.setdefault("WORLD_SIZE", "1")
        env.setdefault("LOCAL_RANK", "0")
        env.setdefault("LOCAL_WORLD_SIZE", "1")
        source = "single"
    else:
        mapping = dict(_SOURCES)[source]
        for target, var in mapping.items():
            if var in env:
                env.setdefault(target, env[var].split("(")[0])
        env.setdefault("LOCAL_RANK", "0")
        env.setdefault("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", "29500")
    return source
