"""The Singularity / Apptainer runtime: the pinned command runs in ``singularity exec`` of a SIF.

The command line is composed by spython's client (``kit.image.spy.exec_argv``):

    singularity exec --cleanenv --pwd CWD --bind B:B ... --env K=V ... IMAGE ARGV...

- ``--cleanenv``: nothing of the host's environment leaks in (no host LD_LIBRARY_PATH from
  modules, no host PYTHONPATH); the kit's own variables (LD_PRELOAD, OMP_*, ...) reach the
  command with ``--env``.
- Rank variables set by a launcher outside the container (srun's SLURM_*, mpiexec's
  OMPI_*/PMIX_*/PMI_*, PJM's PJM_*/FLIB_*, and RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*) differ per
  rank, so they cannot be written into the command line: a ``sh -c`` shim in front exports
  each one present as ``SINGULARITYENV_<NAME>`` / ``APPTAINERENV_<NAME>``, which
  ``--cleanenv`` lets through.
- The Fujitsu MPI of Fugaku is bound in when the host has it (``/opt/FJSVxtclanga``,
  ``/var/opt/FJSVtcs``, ``/etc/opt/FJSVtcs`` ...): see containers/README.md; a site file
  adds its own binds (``sites/fugaku.yaml``: also ``/run``, ``/sys/devices/system/cpu``,
  ``/sys/fs/cgroup``, as RIKEN's MPI recipe does), passed in by the runner.
- ``LD_PRELOAD`` naming a tcmalloc is rewritten to the image's copy (label
  ``org.kit.tcmalloc.path``), as for podman.
- ``singularity exec`` runs the command as a child in the same pid namespace; the monitor
  finds the ranks by their ``KIT_RUN_ID``, as on the host.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kit.errors import KitError
from kit.image import spy
from kit.runtimes.base import PASS_NAMES, PASS_PREFIXES, Runtime, register
from kit.runtimes.oci import rewrite_preload, run_probe

#: launcher variables passed through --cleanenv (see the module doc)
PASS_PATTERN = f"({'|'.join(PASS_PREFIXES)})[A-Za-z0-9_]*|" + "|".join(PASS_NAMES)
SHIM = ("for v in $(env | grep -E '^(" + PASS_PATTERN + ")=' | cut -d= -f1); do "
        'eval "export SINGULARITYENV_$v=\\"\\$$v\\" APPTAINERENV_$v=\\"\\$$v\\""; done; exec "$@"')

#: host paths bound in when they exist (Fujitsu MPI and its runtime on Fugaku)
FUJITSU_MPI_BINDS = ("/opt/FJSVxtclanga", "/var/opt/FJSVtcs", "/etc/opt/FJSVtcs", "/opt/FJSVtcs",
                     "/var/opt/FJSVxtclanga", "/etc/opt/FJSVxtclanga", "/opt/FJSVmxlang")


@register("singularity", "apptainer")
class SingularityRuntime(Runtime):
    python = "python3"

    def __init__(self, image: str | None = None, *, engine: str | None = None,
                 extra_args: list[str] | None = None, bind_fujitsu_mpi: bool = True, **options: Any):
        super().__init__(image=image, **options)
        if not image:
            raise KitError("the singularity runtime needs an image", where="--image",
                           fix="build a SIF with kit image build --engine singularity and pass --image FILE.sif")
        self.engine = engine
        self.extra_args = list(extra_args or [])
        self.bind_fujitsu_mpi = bind_fujitsu_mpi
        self._info: dict[str, Any] | None = None
        self.name = engine or "singularity"

    def engine_path(self) -> str:
        path = spy.find_engine(self.engine)
        self.name = Path(path).name
        return path

    def image_info(self) -> dict[str, Any]:
        if self._info is None:
            from kit.image.inspect import inspect_sif

            self._info = inspect_sif(self.image, self.engine_path())
        return self._info

    def find_tcmalloc(self) -> str | None:
        return (self.image_info().get("labels") or {}).get("org.kit.tcmalloc.path") or None

    def host_binds(self) -> list[str]:
        if not self.bind_fujitsu_mpi:
            return []
        return [p for p in FUJITSU_MPI_BINDS if os.path.exists(p)]

    def wrap(self, argv: list[str], env: dict[str, str], *, cwd: Path, binds: list[Path]) -> list[str]:
        path = self.engine_path()
        inside, bound = self.container_paths(cwd, binds)
        opts = ["--cleanenv", "--pwd", inside]
        for b in [*bound, *(p for p in self.host_binds() if p not in bound)]:
            opts += ["--bind", f"{b}:{b}"]
        for k, v in env.items():
            if k == "LD_PRELOAD":
                v = rewrite_preload(v, self.find_tcmalloc())
            opts += ["--env", f"{k}={v}"]
        opts += self.extra_args
        inner = spy.exec_argv(path, image=str(self.image), command=list(argv), options=opts)
        return ["sh", "-c", SHIM, "kit-singularity", *inner]

    def describe(self) -> dict[str, Any]:
        info = self.image_info()
        import subprocess

        try:
            version = subprocess.run([self.engine_path(), "--version"], capture_output=True, text=True,
                                     timeout=30).stdout.strip()
        except OSError:
            version = None
        return {
            "runtime": self.name,
            "engine_version": version,
            "image": str(Path(self.image).resolve()),
            "digest": info.get("digest"),
            "arch": info.get("arch"),
            "labels": info.get("labels"),
            "host_binds": self.host_binds(),
            "inside": run_probe(self.wrap([self.python], {}, cwd=Path.cwd(), binds=[])),
        }
