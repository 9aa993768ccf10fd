"""The plan: a run fully resolved and validated. Every later step reads only the plan.

``resolve()`` takes a recipe (with ``--set`` overrides), presets, a launcher or scheduler
(``--launcher``: local, mpirun, srun, or slurm, pjm), a runtime and a node count, and
decides: the parallel layout (DP derived when the recipe leaves it open), world size,
ranks and threads per node, the pinned argv, the environment the kit sets on purpose
(allocator preload, threads, run id), and for each preset setting who applies it and
with which directive, or that nobody can here (``kit.settings``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator

from kit import (engines, hostinfo, jobopts, launchers, preset as preset_mod, recipe as recipe_mod, runtimes, schedulers,
                 settings as settings_mod, site as site_mod)
from kit.errors import KitError
from kit.launchers import Launcher
from kit.launchers.common import flavour
from kit.preset import Preset
from kit.recipe import Recipe, check_batch
from kit.schedulers import Scheduler
from kit.settings import Setting
from kit.site import Site


class JobOptions(BaseModel):
    """What a batch job asks the scheduler for. Every value is checked against a strict format
    when the object is built (:mod:`kit.jobopts`): it is written verbatim into the job script."""
    time_limit: str = "01:00:00"
    queue: str | None = Field(default=None, description="Slurm partition / PJM rscgrp")
    account: str | None = Field(default=None, description="Slurm account / PJM group (-g)")
    llio: list[str] = Field(default_factory=list, description="PJM --llio lines")
    wait: bool = False

    # a KitError raised here is not wrapped by pydantic: exit 2, one line naming the option
    @field_validator("time_limit")
    @classmethod
    def _time(cls, v: str) -> str:
        return jobopts.check_time(v, "--time")

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str | None) -> str | None:
        return jobopts.check_identifier(v, "--queue")

    @field_validator("account")
    @classmethod
    def _account(cls, v: str | None) -> str | None:
        return jobopts.check_identifier(v, "--account")

    @field_validator("llio")
    @classmethod
    def _llio(cls, v: list[str]) -> list[str]:
        return jobopts.check_llio(v, "--llio")


class Plan(BaseModel):
    recipe: Recipe
    preset: Preset
    recipe_name: str
    preset_names: list[str]
    recipe_file: str
    preset_files: list[str]
    overrides: list[str] = []
    launcher: str = "local"
    runtime: str = "host"
    image: str | None = None
    nodes: int = 1
    dp: int
    world_size: int
    ranks_per_node: int
    threads_per_rank: int
    python: str
    rank_argv: list[str]
    workdir: str | None = None  # where the ranks start (the recipe's workdir); None: the kit's cwd
    env: dict[str, str]
    settings: list[Setting]
    job: JobOptions = JobOptions()
    force: bool = False
    site: Site | None = None

    @property
    def batch(self) -> bool:
        """Run as a batch job (``--launcher slurm|pjm``), not from here."""
        return self.launcher in schedulers.names()

    def setting(self, name: str) -> Setting:
        return next(s for s in self.settings if s.name == name)

    def summary(self) -> dict[str, Any]:
        p = self.recipe.parallel
        return {
            "recipe": self.recipe_name, "recipe_file": self.recipe_file, "recipe_sha256": self.recipe.content_hash(),
            "presets": self.preset_names, "preset_files": self.preset_files, "preset_sha256": self.preset.content_hash(),
            "overrides": self.overrides, "launcher": self.launcher, "runtime": self.runtime, "image": self.image,
            "nodes": self.nodes, "world_size": self.world_size, "ranks_per_node": self.ranks_per_node,
            "threads_per_rank": self.threads_per_rank, "dp": self.dp, "tp": p.tp, "pp": p.pp, "zero": p.zero,
            "micro_batch": self.recipe.batch.micro, "global_batch": self.recipe.batch.global_batch,
            "rank_argv": self.rank_argv, "workdir": self.workdir, "settings": [s.model_dump() for s in self.settings],
            "job": self.job.model_dump(),
        }


def _layout(recipe: Recipe, preset: Preset, nodes: int, where: str) -> tuple[int, int, int]:
    """(dp, world_size, ranks_per_node) with DP×TP×PP = nodes × ranks per node."""
    tp, pp = recipe.parallel.tp, recipe.parallel.pp
    rpn = preset.ranks_per_node
    dp = recipe.parallel.dp
    if dp is None:
        if rpn is None:
            dp = 1
        else:
            total = nodes * rpn
            if total % (tp * pp):
                raise KitError(f"{nodes} node(s) x {rpn} ranks per node = {total} ranks is not a multiple of TP {tp} x PP {pp}",
                               where=where, fix="set parallel.dp, or pick presets/nodes whose rank count TP x PP divides")
            dp = total // (tp * pp)
    world = dp * tp * pp
    if rpn is None:
        if world % nodes:
            raise KitError(f"DP {dp} x TP {tp} x PP {pp} = {world} ranks do not spread evenly over {nodes} nodes",
                           where=where, fix="change --nodes or parallel.dp")
        rpn = world // nodes
    elif world != nodes * rpn:
        raise KitError(f"DP {dp} x TP {tp} x PP {pp} = {world} ranks, but {nodes} node(s) x {rpn} ranks per node "
                       f"(preset {preset.name}) = {nodes * rpn}",
                       where=where, fix=f"set parallel.dp={nodes * rpn // (tp * pp) or 1} or use a preset with "
                                        f"ranks_per_node {world // nodes if world % nodes == 0 else '?'}")
    try:
        check_batch(recipe, dp)
    except ValueError as e:
        raise KitError(str(e), where=where) from None
    return dp, world, rpn


def check_recipe_env(recipe: recipe_mod.Recipe, path: Path | str) -> None:
    """A recipe's ``env`` may not set what the kit sets itself (:func:`kit.settings.reserved_env`)."""
    for name in recipe.env:
        if settings_mod.reserved_env(name):
            raise KitError(f"{name} is a machine setting the kit sets itself", where=f"{path}: env.{name}",
                           fix="set it in a preset (threads_per_rank, allocator) instead, or leave it to the launcher")


def resolve(*, recipe_name: str = recipe_mod.DEFAULT_RECIPE, overrides: list[str] | None = None,
            preset_names: list[str] | None = None, launcher: str = "local", runtime: str | None = None,
            image: str | None = None, nodes: int = 1, job: JobOptions | None = None, force: bool = False,
            cores_per_node: int | None = None, site: str | None = None) -> Plan:
    overrides = list(overrides or [])
    preset_names = list(preset_names or [preset_mod.DEFAULT_PRESET])
    if nodes < 1:
        raise KitError(f"--nodes {nodes} must be at least 1", where="--nodes", fix="use --nodes 1 or more")
    recipe, recipe_path = recipe_mod.load(recipe_name, overrides)
    preset, preset_paths = preset_mod.load(preset_names)
    where = f"{recipe_path} + preset {preset.name}"
    check_recipe_env(recipe, recipe_path)
    dp, world, rpn = _layout(recipe, preset, nodes, where)

    if runtime is None:
        runtime = "host" if image is None else _default_image_runtime()
    rt = runtimes.get(runtime, image=image)
    if runtime != "host" and not image:
        raise KitError(f"runtime {runtime} needs an image", where="--image", fix="pass --image REF (see `kit image build`)")
    launch = backend(launcher)
    batch = isinstance(launch, Scheduler)
    where_site = site_mod.select(site, launcher) if batch else None
    job = job or JobOptions()
    if where_site and where_site.group and not job.account:
        job = job.model_copy(update={"account": where_site.group})

    cores = (cores_per_node or (where_site and where_site.cores_per_node) or launch.cores_per_node()
             or hostinfo.usable_cores())
    threads = preset.threads_per_rank or max(1, cores // rpn)

    values = {**preset.settings(), "allocator": preset.allocator or "glibc", "ranks_per_node": rpn,
              "threads_per_rank": threads}
    env = settings_mod.rank_environment(values)  # OMP_NUM_THREADS, from the threads_per_rank spec
    if where_site and where_site.interface:
        env["GLOO_SOCKET_IFNAME"] = where_site.interface  # gloo's sockets on the site's network (Tofu)
    env.update(recipe.render_env(python=rt.python))  # what the command needs (the recipe's env)
    env.update(preset.env)
    # On a batch system the ranks run on compute nodes, which may not be this (login) node
    # (Fugaku's login nodes are x86-64): unless $KIT_TCMALLOC names the library, tcmalloc is
    # resolved where the ranks run (kit.settings.allocator_on_node, by kit job-run), not here.
    defer_allocator = (batch and runtime == "host" and preset.allocator == "tcmalloc"
                       and not os.environ.get("KIT_TCMALLOC"))
    lib = None if defer_allocator else settings_mod.allocator_library(
        preset.allocator, find=getattr(rt, "find_tcmalloc", None))
    if lib:
        env[settings_mod.ALLOCATOR_ENV] = settings_mod.preload(lib)
    if defer_allocator:
        alloc_by = (f"{settings_mod.ALLOCATOR_ENV}={preset.allocator}, resolved on the compute node by kit job-run "
                    "(set for the ranks only)")
    elif lib:
        alloc_by = f"{settings_mod.ALLOCATOR_ENV}={lib}"
    else:
        alloc_by = "default allocator"
    settings = settings_mod.resolve(
        values, launcher, applied_by={"allocator": alloc_by},
        notes={"threads_per_rank": "" if preset.threads_per_rank else f"{cores} cores / {rpn} ranks per node"},
        mpi=flavour())

    # the ranks of a batch job on the host run the site's job-side Python (kit.site)
    python = where_site.job_python if where_site and where_site.job_python and runtime == "host" else rt.python
    plan = Plan(
        recipe=recipe, preset=preset, recipe_name=recipe.name, preset_names=preset_names,
        recipe_file=str(recipe_path), preset_files=[str(p) for p in preset_paths], overrides=overrides,
        launcher=launcher, runtime=runtime, image=image, nodes=nodes, dp=dp, world_size=world,
        ranks_per_node=rpn, threads_per_rank=threads, python=python,
        rank_argv=recipe.render_command(python=python), workdir=recipe.render_workdir(python=python),
        env=env, settings=settings,
        job=job, force=force, site=where_site,
    )
    launch.validate(plan)
    if plan.workdir and not batch and not Path(plan.workdir).is_dir() and not rt.provides(plan.workdir):
        raise KitError(f"workdir {plan.workdir} is not a directory", where=f"{recipe_path} workdir",
                       fix="point the recipe's vars (--set vars.NAME=PATH) at an existing checkout")
    return plan


def backend(name: str) -> Scheduler | Launcher:
    """The scheduler (slurm, pjm) or launcher (local, mpirun, srun) that ``--launcher name`` means."""
    if name in schedulers.names():
        return schedulers.get(name)
    if name in launchers.names():
        return launchers.get(name)
    raise KitError(f"unknown launcher {name!r}", where="--launcher",
                   fix=f"use one of: {', '.join(sorted([*launchers.names(), *schedulers.names()]))}")


def _default_image_runtime() -> str:
    engine = engines.first_on_path()
    if engine:
        return engine
    raise KitError("an image was given but no container engine was found", where="--image",
                   fix="install apptainer/singularity or podman, or drop --image to run on the host")


def load(path: Path) -> Plan:
    return Plan.model_validate_json(path.read_text())
