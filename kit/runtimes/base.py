"""The runtime interface and its registry (``kit.runtimes`` gets one by name).

A runtime wraps the launcher's argv and environment so that it runs on the host or inside
an image, and reports what it is for the provenance.
"""

from __future__ import annotations

import abc
import hashlib
import os
import platform
import posixpath
import subprocess
import sys
from pathlib import Path
from typing import Any

from kit.hostinfo import cpu_model
from kit.errors import KitError
from kit.image.labels import PROVIDES_LABEL, provided_dirs
from kit.registry import Registry

_REGISTRY: Registry["Runtime"] = Registry("runtime", "--runtime",
                                          ("kit.runtimes.host", "kit.runtimes.oci", "kit.runtimes.singularity"))
register = _REGISTRY.register


#: the software inventory imports torch at the lowest priority; under qemu (an arm64 image on
#: an x86 host) Python runs ~20x slower, and 120 s was seen too short on a loaded host
INVENTORY_TIMEOUT_S = 120.0
EMULATED_FACTOR = 5
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}

#: launcher variables a rank needs inside a container (every runtime passes the same ones):
#: each name starting with one of the prefixes (Slurm, OpenMPI, PMIx, PJM, Fujitsu MPI's PLE_/
#: FLIB_/XOS_MMM_, gloo), the torchrun contract's names, the socket interfaces, and QEMU_CPU
#: (the CPU model qemu-user emulates for a foreign-architecture image)
PASS_PREFIXES = ("SLURM_", "OMPI_", "PMIX_", "PMI_", "PJM_", "PLE_", "FLIB_", "XOS_MMM_", "GLOO_", "OMP_COMM_")
PASS_NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
              "MASTER_PORT", "TP_SOCKET_IFNAME", "QEMU_CPU")
#: the (image, entry) pairs of an ignored ``org.kit.provides`` entry already warned about
_WARNED: set[tuple[str, str]] = set()


class Runtime(abc.ABC):
    """Wraps a command so that it runs in this runtime."""

    name: str = "?"
    #: the Python interpreter to use for the pinned command inside this runtime
    python: str = "python3"

    def __init__(self, image: str | None = None, **options: Any):
        self.image = image
        self.options = options

    @abc.abstractmethod
    def wrap(self, argv: list[str], env: dict[str, str], *, cwd: Path, binds: list[Path]) -> list[str]:
        """The argv that runs ``argv`` with ``env`` in ``cwd`` inside this runtime.

        ``env`` holds only the variables the kit sets on purpose (LD_PRELOAD, OMP_*, ...);
        the runtime decides how they reach the command (inherited, ``--env``, ...).
        ``binds`` are host directories the command must see at the same path.
        """

    def describe(self) -> dict[str, Any]:
        """Provenance: runtime name, image reference, digest, labels, ..."""
        return {"runtime": self.name, "image": self.image}

    def inspect_software(self) -> dict[str, Any]:
        """pip freeze, torch and DeepSpeed versions as seen where the command runs."""
        from kit.provenance import software_info

        return software_info(self.wrap([self.python], {}, cwd=Path.cwd(), binds=[]), cache_key=self.software_key(),
                             timeout=INVENTORY_TIMEOUT_S * (EMULATED_FACTOR if self.emulated() else 1))

    def describe_program(self, rank_argv: list[str], *, workdir: Path, env: dict[str, str]) -> dict[str, Any]:
        """Provenance of the training program (``kit.provenance.program``), taken where its
        files are: on the host, or, for a workdir the image provides (``provides``), by the
        image's own kit inside it, which honours a staged tree's record only within the
        directories the image provides."""
        from kit import provenance

        if not self.provides(workdir):
            return provenance.program(rank_argv, workdir=workdir, env=env)
        return provenance.program_inside(self.wrap([self.python], {}, cwd=workdir, binds=[]), rank_argv,
                                         workdir=workdir, env=env, provided=self.provided(),
                                         timeout=INVENTORY_TIMEOUT_S * (EMULATED_FACTOR if self.emulated() else 1))

    def emulated(self) -> bool:
        """The image is for another architecture than this host's (run under qemu)."""
        arch = self.image_info().get("arch")
        return bool(arch) and _ARCH_ALIASES.get(arch, arch) != _ARCH_ALIASES.get(platform.machine(), platform.machine())

    def image_info(self) -> dict[str, Any]:
        """The image's digest, labels and architecture; {} where there is no image."""
        return {}

    def provided(self) -> list[str]:
        """The directories the image brings (its label ``org.kit.provides``, e.g. ``/opt/dsf``
        of a ``kit image build --dsf`` image), as far as they count
        (``kit.image.labels.provided_dirs``); each entry that does not is named once on stderr."""
        good, bad = provided_dirs(str((self.image_info().get("labels") or {}).get(PROVIDES_LABEL, "")))
        for d in bad:
            if (str(self.image), d) not in _WARNED:
                _WARNED.add((str(self.image), d))
                print(f"kit: warning: image {self.image}: label {PROVIDES_LABEL} entry {d!r} ignored (only a "
                      f"normalised absolute path two or more levels deep counts, e.g. /opt/dsf)", file=sys.stderr)
        return good

    def provides(self, path: str | Path) -> bool:
        """Whether the workdir or program path ``path`` lies in a directory the image brings
        (``provided``). Such a path is the image's: the host's directory of that path is not
        bound over it, and a recipe's workdir there need not exist on the host. Never asked of
        the bundle directory or a site's binds: those are always bound."""
        p = str(path)
        if not p.startswith("/"):
            return False
        p = posixpath.normpath(p)
        return any(p == d or p.startswith(d + "/") for d in self.provided())

    def refuse_bundle_dir(self, out_dir: Path) -> None:
        """A KitError (exit 2) when bundles would be written under a directory the image
        provides: the bundle is bound from the host, over the image's own directory."""
        p = posixpath.normpath(str(Path(out_dir).resolve()))
        for d in self.provided():
            if p == d or p.startswith(d + "/"):
                raise KitError(f"the bundle directory {p} lies under {d}, which the image {self.image} provides "
                               f"(label {PROVIDES_LABEL})", where="the results directory (--out)",
                               fix=f"write the bundles outside {d} (--out DIR)")

    def container_paths(self, cwd: Path, binds: list[Path]) -> tuple[str, list[str]]:
        """The working directory inside and the host directories to bind at the same path,
        each resolved on the host: every one of ``binds`` (the bundle, a site's binds), and
        ``cwd`` unless the image provides it (``provides``): then it is the image's own."""
        provided = self.provides(cwd)
        inside = posixpath.normpath(str(cwd)) if provided else str(Path(cwd).resolve())
        out: list[str] = []
        for b in [*binds, *([] if provided else [cwd])]:
            p = str(Path(b).resolve())
            if p not in out and p != "/":
                out.append(p)
        return inside, out

    def software_key(self) -> str | None:
        """A digest of everything ``inspect_software`` depends on, to reuse its answer: an
        image's content digest, the CPU count (torch's default threads), and the CPU model and
        ``QEMU_CPU`` (torch's CPU capability and OpenBLAS's core follow the CPU: one image on
        an x86 host, emulated, and on an A64FX); None, where there is no such digest: take the
        inventory afresh every run."""
        digest = self.image_info().get("digest")
        if not digest:
            return None
        cpu = f"{os.cpu_count()}|{cpu_model()}|{os.environ.get('QEMU_CPU', '')}"
        return f"{self.name}-" + hashlib.sha256(f"{digest}|{cpu}".encode()).hexdigest()[:32]

    def cleanup_commands(self) -> list[list[str]]:
        """The commands that remove what this runtime created for the run (containers, ...)."""
        return []

    def close(self) -> None:
        """Clean up anything the runtime created: run ``cleanup_commands()``."""
        for argv in self.cleanup_commands():
            try:
                subprocess.run(argv, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError):
                pass
