"""Sites: what belongs to a machine rather than to the kit, one YAML file per site (``sites/``).

A site file (``sites/fugaku.yaml``) holds what a job script and the ranks need to know
about one machine: the scheduler it uses, PJM's ``rscunit``, the group, the volumes a job
reads (``PJM_LLIO_GFSCACHE``), the compute nodes' architecture and a Python that runs
there (the job starts the kit with it; login nodes may be another architecture), cores
per node, the network interface for the rendezvous (``MASTER_ADDR`` from its address on
the master node, ``GLOO_SOCKET_IFNAME``), Fujitsu MPI's ``-std-proc`` layout, and the
host paths bound into a container (those present on the node). Unknown keys are errors (pydantic, ``extra=forbid``).

Selected with ``kit run --site NAME|FILE`` or ``$KIT_SITE``; the ``pjm`` scheduler uses
``fugaku`` when none is given. Another PJM site is one more file.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kit import catalog
from kit.configfile import read_yaml, validate
from kit.errors import KitError

#: the site a scheduler uses when none is selected
DEFAULT_FOR = {"pjm": "fugaku"}


class Site(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = ""
    description: str = ""
    scheduler: str | None = Field(default=None, description="slurm | pjm")
    rscunit: str | None = Field(default=None, description='PJM -L "rscunit=..."')
    group: str | None = Field(default=None, description="PJM -g GROUP (--account overrides)")
    volumes: list[str] = Field(default_factory=list, description="PJM_LLIO_GFSCACHE volumes")
    job_arch: str | None = Field(default=None, description="compute nodes' machine (uname -m); None: as here")
    job_python: str | None = Field(default=None, description="a Python with the kit, runnable on compute nodes")
    cores_per_node: int | None = Field(default=None, gt=0)
    interface: str | None = Field(default=None, description="network interface of the rendezvous (tofu1)")
    stdproc: str = Field(default="out", description="mpiexec -std-proc path under logs/stdproc")
    binds: list[str] = Field(default_factory=list, description="host paths bound into containers")
    build_flags: list[str] = Field(default_factory=list,
                                   description="singularity build flags besides --fakeroot for a user (e.g. --no-setgroups)")
    build_tmpdir: str | None = Field(default=None, description="TMPDIR of a --fakeroot build (node-local, e.g. /worktmp)")

    @field_validator("build_flags")
    @classmethod
    def _flags(cls, v: list[str]) -> list[str]:
        for f in v:
            if not f.startswith("--") or any(c.isspace() for c in f):
                raise ValueError(f"{f!r} is not a long option (--name or --name=value)")
        return v

    @field_validator("volumes", "binds")
    @classmethod
    def _absolute(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p.startswith("/"):
                raise ValueError(f"{p!r} is not an absolute path")
        return v

    @field_validator("stdproc")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v.split("/"):
            raise ValueError("stdproc is a path under the bundle's logs/stdproc (relative, no ..)")
        return v

    def host_binds(self) -> list[Path]:
        """The site's container binds that exist on this node (each rank's ``singularity exec``)."""
        return [Path(p) for p in self.binds if os.path.exists(p)]

    def job_python_problem(self, python: str) -> str | None:
        """Why ``python`` (this host's) cannot start the kit on the compute nodes, or None."""
        here = platform.machine()
        if self.job_python or not self.job_arch or self.job_arch == here:
            return None
        return (f"the job would start the kit with {python}, an {here} Python of this host, on {self.name}'s "
                f"{self.job_arch} compute nodes")


def load(name: str) -> Site:
    path = catalog.find("site", name)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    return validate(Site, data, str(path))


def select(name: str | None, scheduler: str) -> Site | None:
    """The site ``--site`` (or ``$KIT_SITE``) names, else the scheduler's default one, else None."""
    name = name or os.environ.get("KIT_SITE") or DEFAULT_FOR.get(scheduler)
    if not name:
        return None
    site = load(name)
    if site.scheduler and site.scheduler != scheduler:
        raise KitError(f"site {site.name} uses the {site.scheduler} scheduler, not {scheduler}", where=f"--site {name}",
                       fix=f"use --launcher {site.scheduler}, or another --site")
    return site
