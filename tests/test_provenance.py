"""The software inventory: taken where the command runs, reused only while nothing it
depends on has changed."""

from __future__ import annotations

import os

from kit.runtimes import get


def test_inventory_is_reused_until_a_path_directory_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.setenv("PYTHONPATH", str(site))  # on the inventory Python's sys.path
    host = get("host")
    first = host.inspect_software()
    assert first["inventory"]["cached"] is False and first["torch"]
    again = host.inspect_software()
    assert again["inventory"] == {"cached": True, "key": first["inventory"]["key"]}
    assert again["packages"] == first["packages"]
    # "installing a package": a new entry in a directory on sys.path changes its mtime
    (site / "newpkg-1.0.dist-info").mkdir()
    os.utime(site, ns=(0, os.stat(site).st_mtime_ns + 1_000_000_000))
    fresh = host.inspect_software()
    assert fresh["inventory"]["cached"] is False and fresh["inventory"]["key"] != first["inventory"]["key"]


def test_no_key_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    host = get("host")
    monkeypatch.setattr(type(host), "software_key", lambda self: None)
    assert host.inspect_software()["inventory"] == {"cached": False, "key": None}
    assert not (tmp_path / "cache").exists()


def test_inventory_records_torch_cpu_capability_and_the_blas_core_where_it_runs(tmp_path, monkeypatch):
    """Taken by the command's Python (here the host's): torch's CPU capability as torch reports
    it, and the OpenBLAS core, or null with the reason (the x86 CPU wheel uses MKL)."""
    import torch

    monkeypatch.setenv("KIT_CACHE_DIR", str(tmp_path / "cache"))
    sw = get("host").inspect_software()
    assert sw["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    blas = sw["blas"]
    if "BLAS_INFO=open" in torch.__config__.show():
        assert blas["corename"] and blas["library"], blas
    else:
        assert blas["corename"] is None and blas["library"] is None
        assert blas["reason"] == f"torch loaded no OpenBLAS (its BLAS_INFO is {blas['torch_blas']})", blas


STANDIN_OPENBLAS_C = """
const char *openblas_get_corename(void) { return "standin"; }
const char *openblas_get_config(void) { return "OpenBLAS stand-in DYNAMIC_ARCH "; }
"""


def test_blas_core_is_the_mapped_library_with_openblas_api(tmp_path):
    """The lookup that runs where the ranks run, in this process: numpy's scipy_openblas (mapped
    here, symbols prefixed) is not taken for torch's OpenBLAS; a library exporting OpenBLAS's
    API is. The stand-in (a 2-function C library) stands in for the libopenblas that torch's
    aarch64 wheel or a --torch source image loads, which cannot run natively on this x86 host
    (tests/test_a64fx_blas.py runs the real ones under qemu)."""
    import ctypes
    import shutil
    import subprocess

    import numpy  # noqa: F401 (maps numpy.libs/libscipy_openblas*)
    import pytest

    from kit.provenance import _BLAS_CORE

    ns: dict = {}
    exec(_BLAS_CORE, ns)
    blas_core = ns["blas_core"]
    maps = open("/proc/self/maps").read()
    if "scipy_openblas" not in maps:
        pytest.skip("this numpy does not bundle scipy_openblas")
    config = "  - Build settings: BLAS_INFO=open, BUILD_TYPE=Release"
    assert blas_core(config) == {"torch_blas": "open", "library": None, "corename": None, "config": None,
                                 "reason": "torch loaded no OpenBLAS (its BLAS_INFO is open)"}
    assert blas_core(None)["reason"] == "torch is not importable here"
    if not shutil.which("gcc"):
        pytest.skip("no gcc to build the stand-in library")
    (tmp_path / "s.c").write_text(STANDIN_OPENBLAS_C)
    lib = tmp_path / "libopenblas_standin.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "s.c")], check=True)
    ctypes.CDLL(str(lib))
    got = blas_core(config)
    assert got == {"torch_blas": "open", "library": str(lib), "corename": "standin",
                   "config": "OpenBLAS stand-in DYNAMIC_ARCH"}


def test_image_inventory_key_follows_the_emulated_cpu(monkeypatch):
    """One image, two CPU models (QEMU_CPU): torch's capability and OpenBLAS's core differ, so
    the cached inventory of one is not reused for the other."""
    rt = get("podman", image="localhost/kit:a64fx-tcmalloc")
    monkeypatch.setattr(rt, "image_info", lambda: {"digest": "sha256:" + "0" * 64})
    monkeypatch.setenv("QEMU_CPU", "a64fx")
    a64fx = rt.software_key()
    monkeypatch.setenv("QEMU_CPU", "max")
    assert a64fx and rt.software_key() != a64fx
    monkeypatch.setenv("QEMU_CPU", "a64fx")
    assert rt.software_key() == a64fx
