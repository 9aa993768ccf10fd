"""The podman / docker runtime: the pinned command runs in ``<engine> run`` of an OCI image.

- The kit's environment reaches the command with ``--env``; nothing else of the host's
  environment does (the image's own ENV applies: PATH to the image's venv, KIT_TCMALLOC).
- ``binds`` (the bundle directory, the working directory) are mounted at the same path;
  the working directory is the same as on the host.
- ``--network=host`` and ``--ipc=host``: torchrun/gloo rendezvous on the host's addresses,
  and shared memory is not capped at podman's 64 MB default.
- Each ``wrap`` names its container ``kit-<random>`` (removed by ``cleanup_commands``). The
  container's processes are children of conmon, not of ``podman run``; the monitor finds
  the ranks by the ``KIT_RUN_ID`` in their environment (``--env``), as for host ranks, and
  reads each rank's ``/proc/<pid>/maps`` (and finds libtcmalloc there).
- ``LD_PRELOAD`` entries naming a tcmalloc library are rewritten to the image's own copy
  (label ``org.kit.tcmalloc.path``): the host's path need not exist in the image (an arm64
  image keeps it under ``/usr/lib/aarch64-linux-gnu``).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from kit.errors import KitError
from kit.provenance import marker_json
from kit.runtimes.base import PASS_NAMES, PASS_PREFIXES, Runtime, register

PROBE_SCRIPT = r"""
import ctypes, json, os, platform, struct
out = {"machine": platform.machine(), "qemu_cpu": os.environ.get("QEMU_CPU")}
try:
    info = open("/proc/cpuinfo").read()
    for key in ("model name", "CPU implementer", "CPU part", "Features", "flags"):
        for line in info.splitlines():
            if line.lower().startswith(key.lower()):
                out.setdefault("cpuinfo", {})[key] = line.split(":", 1)[1].strip()[:400]
                break
except OSError as e:
    out["cpuinfo_error"] = str(e)
try:
    raw = open("/proc/self/auxv", "rb").read()
    aux = dict(struct.iter_unpack("QQ", raw[: len(raw) // 16 * 16]))
    hwcap, hwcap2 = aux.get(16, 0), aux.get(26, 0)
    out["hwcap"], out["hwcap2"] = hex(hwcap), hex(hwcap2)
    if out["machine"] == "aarch64":
        names = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
                 "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
        out["hwcap_features"] = [n for i, n in enumerate(names) if hwcap & (1 << i)]
        out["sve"] = bool(hwcap & (1 << 22))
        if out["sve"]:
            libc = ctypes.CDLL(None, use_errno=True)
            vl = libc.prctl(51, 0, 0, 0, 0)  # PR_SVE_GET_VL
            if vl > 0:
                out["sve_vector_bits"] = (vl & 0xFFFF) * 8
except Exception as e:
    out["auxv_error"] = repr(e)
try:
    import torch
    out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
except Exception as e:
    out["torch_cpu_capability_error"] = repr(e)[:200]
host_x86 = "flags" in out.get("cpuinfo", {}) and out["machine"] not in ("x86_64", "i686")
out["emulated"] = bool(host_x86)
out["cpu_model"] = ("qemu-user " + (out["qemu_cpu"] or "default cpu")) if host_x86 else \
    out.get("cpuinfo", {}).get("model name") or out.get("cpuinfo", {}).get("CPU part")
print("KIT-PROBE-JSON " + json.dumps(out))
"""


#: the launcher variables of kit.runtimes.base as podman takes them (globs) and as docker does
#: (names only: those the launchers set per rank)
PASS_GLOBS = (*(f"{p}*" for p in PASS_PREFIXES), *PASS_NAMES)
DOCKER_NAMES = (*PASS_NAMES, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_ID",
                "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "PMIX_RANK", "PMI_RANK",
                "PMI_SIZE", "PJM_JOBID", "PLE_RANK_ON_NODE")


def run_probe(prefix: list[str], timeout: float = 300) -> dict[str, Any]:
    """What the CPU looks like from inside (machine, CPU model, SVE, emulation); the image's
    answer is read as any other (``kit.provenance.marker_json``: capped, depth-checked)."""
    return marker_json([*prefix, "-c", PROBE_SCRIPT], "KIT-PROBE-JSON", timeout=timeout)


def rewrite_preload(value: str, image_tcmalloc: str | None) -> str:
    if not image_tcmalloc:
        return value
    parts = [p for p in re.split(r"[:\s]+", value) if p]
    return ":".join(image_tcmalloc if re.search(r"/?libtcmalloc[^/]*\.so", p) else p for p in parts)


@register("podman")
class OciRuntime(Runtime):
    """``podman run`` / ``docker run`` of a local OCI image."""

    python = "python3"
    default_engine = "podman"

    def __init__(self, image: str | None = None, *, engine: str | None = None,
                 extra_args: list[str] | None = None, **options: Any):
        super().__init__(image=image, **options)
        if not image:
            raise KitError("the podman runtime needs an image", where="--image",
                           fix="build one with kit image build (e.g. localhost/kit:x86_64-tcmalloc) and pass --image")
        self.engine = engine or self.default_engine
        self.name = self.engine
        self.extra_args = list(extra_args or [])
        self._containers: list[str] = []
        self._info: dict[str, Any] | None = None

    # -- the image --------------------------------------------------------------------
    def _engine_path(self) -> str:
        path = shutil.which(self.engine)
        if not path:
            raise KitError(f"{self.engine} is not installed", where="--runtime",
                           fix="install podman (apt-get install podman) or use --runtime host/singularity")
        return path

    def image_info(self) -> dict[str, Any]:
        if self._info is None:
            from kit.image.inspect import inspect_oci

            self._engine_path()
            self._info = inspect_oci(self.image, self.engine)
        return self._info

    def labels(self) -> dict[str, str]:
        return self.image_info().get("labels") or {}

    def find_tcmalloc(self) -> str | None:
        """The image's tcmalloc (for ``kit.allocator.resolve(..., find=runtime.find_tcmalloc)``)."""
        return self.labels().get("org.kit.tcmalloc.path") or None

    # -- the command ------------------------------------------------------------------
    def wrap(self, argv: list[str], env: dict[str, str], *, cwd: Path, binds: list[Path]) -> list[str]:
        info = self.image_info()
        name = f"kit-{secrets.token_hex(6)}"
        self._containers.append(name)
        out = [self.engine, "run", "--rm", "--name", name, "--network=host", "--ipc=host"]
        if self.engine == "podman" and os.geteuid() != 0:
            out.append("--userns=keep-id")
        arch = info.get("arch")
        if arch:
            out += ["--arch", arch] if self.engine == "podman" else ["--platform", f"linux/{arch}"]
        inside, bound = self.container_paths(cwd, binds)
        for p in bound:
            out += ["-v", f"{p}:{p}"]
        out += ["--workdir", inside]
        # launcher variables set outside the container (per rank: srun, mpiexec, PJM)
        out += [f"--env={p}" for p in (PASS_GLOBS if self.engine == "podman" else DOCKER_NAMES)]
        for k, v in env.items():
            if k == "LD_PRELOAD":
                v = rewrite_preload(v, self.find_tcmalloc())
            out += ["--env", f"{k}={v}"]
        out += self.extra_args
        out += [self.image, *argv]
        return out

    def engine_version(self) -> str | None:
        try:
            p = subprocess.run([self.engine, "--version"], capture_output=True, text=True, timeout=30)
            return p.stdout.strip() or None
        except OSError:
            return None

    def probe(self) -> dict[str, Any]:
        """The CPU as seen inside the image (machine, model, SVE, emulated or not)."""
        env = {k: os.environ[k] for k in ("QEMU_CPU",) if k in os.environ}
        return run_probe(self.wrap([self.python], env, cwd=Path.cwd(), binds=[]))

    def describe(self) -> dict[str, Any]:
        info = self.image_info()
        return {
            "runtime": self.engine,
            "engine_version": self.engine_version(),
            "image": self.image,
            "digest": info.get("digest"),
            "manifest_digest": info.get("manifest_digest"),
            "repo_digests": info.get("repo_digests"),
            "arch": info.get("arch"),
            "labels": info.get("labels"),
            "inside": self.probe(),
        }

    def cleanup_commands(self) -> list[list[str]]:
        flags = ["-f", "--ignore"] if self.engine == "podman" else ["-f"]
        return [[self.engine, "rm", *flags, name] for name in self._containers]

    def close(self) -> None:
        super().close()
        self._containers.clear()


@register("docker")
class DockerRuntime(OciRuntime):
    default_engine = "docker"
