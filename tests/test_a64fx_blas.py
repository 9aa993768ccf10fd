"""OpenBLAS for A64FX, proved as far as a machine without an A64FX can.

- The OpenBLAS that ``kit image build --target a64fx --torch source`` pins (versions.yaml,
  ``a64fx.source``: 0.3.29, ``TARGET=A64FX``) is cross-built here with Debian's
  ``gcc-aarch64-linux-gnu`` (single precision only, no LAPACK, 2 jobs: about 4 minutes on
  this 2-core machine, cached in ``~/.cache/kit/a64fx-blas``) from Debian's orig tarball of
  that version (upstream's tree less lapack-netlib/relapack, sha256 below), and its SGEMM
  runs under qemu-user with ``QEMU_CPU=a64fx``: the result matches a double-precision
  reference, OpenBLAS names its core A64FX, the kernel it runs is SVE code, and the same
  program dies of SIGILL on a CPU model without SVE.
- The OpenBLAS that torch's PyPI aarch64 wheel bundles (the default a64fx image) is loaded
  from the wheel under the same emulation: it detects the A64FX by itself, and
  ``OPENBLAS_CORETYPE=A64FX`` changes nothing (so the image no longer sets it).

Stand-ins: qemu-user's ``a64fx`` CPU model stands in for the A64FX (SVE at 512 bits, Fujitsu's
MIDR, which OpenBLAS's run-time detection reads); the cross compiler for the image's native
gcc. Nothing here measures speed: emulated timings say nothing about the chip.

Marked ``arm64`` and ``slow``; each test skips with the reason when the cross compiler,
qemu-aarch64-static, or the network for the sources is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

import kit
from kit.image.recipe import load_versions

HERE = Path(__file__).parent
PROBE_SRC = HERE / "a64fx_blas" / "sgemm_check.c"
CROSS = "aarch64-linux-gnu-"
QEMU = "qemu-aarch64-static"
SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's libc6-arm64-cross, pulled in by the cross gcc

# Debian's source of OpenBLAS 0.3.29 (trixie's openblas 0.3.29+ds-3): upstream's release less
# lapack-netlib/ and relapack/ (debian/copyright's Files-Excluded), which a BLAS-only build
# does not need. apt-cache showsrc openblas gives this checksum.
DEBIAN_OPENBLAS = {
    "version": "0.3.29",
    "url": "http://deb.debian.org/debian/pool/main/o/openblas/openblas_0.3.29+ds.orig.tar.xz",
    "sha256": "eb691e2cff83799400da22aa6ab93ebaa346ad317fea578b7ae119e226ce1b01",
}
# the cross build: only what SGEMM needs, one thread, a static library
MAKE_ARGS = ["TARGET=A64FX", "NOFORTRAN=1", "NO_LAPACK=1", "NO_LAPACKE=1", "BUILD_SINGLE=1", "USE_THREAD=0",
             "USE_OPENMP=0", "NO_SHARED=1", "libs"]
TORCH_WHEEL = load_versions()["targets"]["a64fx"]["torch_wheel"]
# fp32 SGEMM against a double reference, relative to sum |a_ip * b_pj|: K * eps32 is the bound
# (257 * 6e-8 = 1.5e-5 at the largest K here); a wrong kernel is off by O(1)
MAX_REL_ERR = 2e-5


def cache() -> Path:
    return kit.cache_dir() / "a64fx-blas"


def _tools_missing() -> str | None:
    if not shutil.which(CROSS + "gcc"):
        return "no aarch64 cross compiler (apt-get install gcc-aarch64-linux-gnu)"
    if not shutil.which(QEMU):
        return "no qemu-aarch64-static (apt-get install qemu-user-static)"
    return None


def _download(url: str, dest: Path, sha256: str | None = None) -> Path:
    """``url`` into ``dest`` once (checked against ``sha256`` when given); skips the test
    with the reason when it cannot be fetched."""
    if dest.is_file() and (sha256 is None or _sha256(dest) == sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=120) as r, tmp.open("wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        pytest.skip(f"cannot fetch {url}: {e}")
    if sha256 is not None and _sha256(tmp) != sha256:
        tmp.unlink()
        pytest.fail(f"{url} does not have the pinned sha256 {sha256}")
    tmp.replace(dest)
    return dest


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def a64fx_openblas() -> dict:
    """The cross-built static libopenblas for A64FX (built once, then read from the cache)."""
    why = _tools_missing()
    if why:
        pytest.skip(why)
    out = cache() / f"openblas-{DEBIAN_OPENBLAS['version']}-A64FX-sgemm"
    if not (out / "build.json").is_file():
        tarball = _download(DEBIAN_OPENBLAS["url"], cache() / Path(DEBIAN_OPENBLAS["url"]).name,
                            DEBIAN_OPENBLAS["sha256"])
        work = out.with_name(out.name + ".work")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        subprocess.run(["tar", "-C", str(work), "--strip-components=1", "-xf", str(tarball)], check=True)
        t0 = time.monotonic()
        proc = subprocess.run(["make", "-j2", f"CC={CROSS}gcc", "HOSTCC=gcc", *MAKE_ARGS], cwd=work,
                              capture_output=True, text=True, timeout=3600)
        seconds = round(time.monotonic() - t0, 1)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        lib = next(work.glob("libopenblas_*.a"))
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        shutil.copy2(lib, out / "libopenblas.a")
        (out / "build.json").write_text(json.dumps({"source": DEBIAN_OPENBLAS, "make": MAKE_ARGS,
                                                    "cc": f"{CROSS}gcc", "seconds": seconds}, indent=2))
        shutil.rmtree(work)
    return {"lib": out / "libopenblas.a", **json.loads((out / "build.json").read_text())}


@pytest.fixture(scope="session")
def static_probe(a64fx_openblas, tmp_path_factory) -> Path:
    exe = tmp_path_factory.mktemp("a64fx-blas") / "sgemm_check"
    subprocess.run([CROSS + "gcc", "-O1", "-static", "-DSTATIC_OPENBLAS", "-o", str(exe), str(PROBE_SRC),
                    str(a64fx_openblas["lib"]), "-lm"], check=True)
    return exe


def qemu(cpu: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
    return subprocess.run([QEMU, "-L", str(SYSROOT), *argv], env={**e, "QEMU_CPU": cpu, **(env or {})},
                          capture_output=True, text=True, timeout=600)


def probe(cpu: str, argv: list[str], env: dict[str, str] | None = None) -> dict:
    proc = qemu(cpu, argv, env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cross_build_is_the_openblas_version_the_source_image_pins():
    """What is proved here is the OpenBLAS that ``--torch source`` builds (same version, same target)."""
    src = load_versions()["targets"]["a64fx"]["source"]
    assert str(src["openblas"]) == DEBIAN_OPENBLAS["version"]
    assert src["openblas_target"] == "A64FX" and "TARGET=A64FX" in MAKE_ARGS


@pytest.mark.arm64
@pytest.mark.slow
def test_cross_built_openblas_names_its_core_a64fx_and_sgemm_matches_reference(static_probe):
    out = probe("a64fx", [str(static_probe)])
    assert out["corename"] == "A64FX", out
    assert "A64FX" in out["config"] and out["config"].startswith(f"OpenBLAS {DEBIAN_OPENBLAS['version']}")
    assert len(out["max_rel_err"]) == 5
    assert all(err < MAX_REL_ERR for err in out["max_rel_err"].values()), out


@pytest.mark.arm64
@pytest.mark.slow
def test_cross_built_sgemm_kernel_is_sve_code_that_needs_sve(static_probe):
    """The kernel OpenBLAS runs is SVE code (``fmla zN.s`` in ``sgemm_kernel``), and the
    program dies of SIGILL on a CPU model without SVE (cortex-a57, ARMv8.0)."""
    objdump = shutil.which(CROSS + "objdump")
    if objdump:
        dis = subprocess.run([objdump, "-d", "--disassemble=sgemm_kernel", str(static_probe)],
                             capture_output=True, text=True, check=True).stdout
        assert sum("fmla\tz" in ln for ln in dis.splitlines()) > 16, dis[:2000]
    proc = qemu("cortex-a57", [str(static_probe)])
    assert proc.returncode in (-4, 132), (proc.returncode, proc.stderr)
    assert "Illegal instruction" in proc.stderr or proc.returncode == -4


@pytest.mark.arm64
@pytest.mark.slow
def test_openblas_coretype_cannot_change_a_single_target_build(static_probe):
    """A TARGET=A64FX build has one core: the variable is not even read (DYNAMIC_ARCH only)."""
    for value in ("NEOVERSEN1", "ARMV8", "A64FX"):
        assert probe("a64fx", [str(static_probe)], {"OPENBLAS_CORETYPE": value})["corename"] == "A64FX"


# -- torch's PyPI wheel (the default a64fx image) -------------------------------------------

def _arm64_libz() -> Path:
    """Debian's arm64 zlib (libgfortran in torch's wheel needs libz.so.1; the cross sysroot
    has none), fetched with apt-get under a private configuration (the host's is untouched)."""
    d = cache() / "arm64-libs"
    if (d / "libz.so.1").is_file():
        return d
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        pytest.skip("apt-get/dpkg-deb needed to fetch Debian's arm64 zlib")
    apt = cache() / "apt"
    (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb [arch=arm64] http://deb.debian.org/debian {load_versions()['debian']} main\n")
    opts = [f"-oDir::Etc::sourcelist={apt / 'sources.list'}", "-oDir::Etc::sourceparts=-",
            f"-oDir::State::Lists={apt / 'lists'}", "-oAPT::Architectures::=arm64", "-oAPT::Architecture=arm64",
            "-oDebug::NoLocking=1"]
    for argv in (["apt-get", *opts, "update"], ["apt-get", *opts, "download", "zlib1g:arm64"]):
        proc = subprocess.run(argv, cwd=apt, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.skip(f"{' '.join(argv[:1] + argv[-2:])} failed: {proc.stderr.strip()[-300:]}")
    deb = next(apt.glob("zlib1g_*_arm64.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(apt / "zlib")], check=True)
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy2(next((apt / "zlib").rglob("libz.so.1")), d / "libz.so.1")
    return d


@pytest.fixture(scope="session")
def torch_wheel_openblas(tmp_path_factory) -> dict:
    """torch/lib of the pinned PyPI aarch64 wheel (from the staged builds' wheel cache, else
    downloaded there with pip) and a dynamically linked probe that dlopens its libopenblas."""
    why = _tools_missing()
    if why:
        pytest.skip(why)
    from kit.image.build import default_wheel_cache

    wheel = default_wheel_cache() / "aarch64" / TORCH_WHEEL
    if not wheel.is_file():
        version = TORCH_WHEEL.split("-")[1]
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--platform", "manylinux_2_28_aarch64", "--python-version", "3.11",
                               "--implementation", "cp", "--abi", "cp311", f"torch=={version}", "-d",
                               str(wheel.parent)], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0 or not wheel.is_file():
            pytest.skip(f"cannot download {TORCH_WHEEL}: {proc.stderr.strip()[-300:]}")
    d = tmp_path_factory.mktemp("torch-wheel")
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.startswith("torch/lib/") and
                 any(k in n for k in ("libopenblas", "libgfortran", "libgomp"))]
        for n in names:
            z.extract(n, d)
    lib_dir = d / "torch" / "lib"
    openblas = next(lib_dir.glob("libopenblas*.so*"))
    exe = d / "sgemm_check_dyn"
    subprocess.run([CROSS + "gcc", "-O1", "-o", str(exe), str(PROBE_SRC), "-ldl", "-lm"], check=True)
    return {"exe": exe, "lib": openblas, "ld_path": f"{lib_dir}:{_arm64_libz()}"}


@pytest.mark.arm64
@pytest.mark.slow
def test_torch_wheels_openblas_finds_a64fx_by_itself_and_coretype_changes_nothing(torch_wheel_openblas):
    """The default image's BLAS: OpenBLAS built DYNAMIC_ARCH with A64FX in its core table,
    which run-time detection picks on qemu's a64fx model (Fujitsu MIDR); setting
    ``OPENBLAS_CORETYPE=A64FX`` gives the same core, so the image does not set it."""
    w = torch_wheel_openblas
    argv = [str(w["exe"]), str(w["lib"])]
    auto = probe("a64fx", argv, {"LD_LIBRARY_PATH": w["ld_path"]})
    forced = probe("a64fx", argv, {"LD_LIBRARY_PATH": w["ld_path"], "OPENBLAS_CORETYPE": "A64FX"})
    assert "DYNAMIC_ARCH" in auto["config"], auto
    assert auto["corename"].lower() == "a64fx", auto
    assert forced["corename"] == auto["corename"]
    for out in (auto, forced):
        assert all(err < MAX_REL_ERR for err in out["max_rel_err"].values()), out
