"""The a64fx (aarch64) image under qemu-user emulation, QEMU_CPU=a64fx.

.ci/arm64.sh registers qemu-aarch64 with binfmt_misc, makes the arm64 base and builds the
image; the session fixture here rebuilds it from podman's layer cache (seconds when only
the tests changed) and the tests run a few iterations of the tiny recipe on 1 and 2 ranks.
Python runs ~20x slower emulated: iterations are few and the stall timeouts long.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_image_podman import build_image, kit_run, only_bundle, podman_ready

# The tiny recipe shrunk further: qemu's SVE-512 emulation (QEMU_CPU=a64fx) computes at
# ~5 MFLOP/s here (one 128x128x50304 logits matmul took 320 s), so tiny's 50257-token vocab
# would not finish one iteration in 15 minutes. Same code path, smaller numbers.
EMULATED_SETS = ["--set", "model.hidden=64", "--set", "model.heads=2", "--set", "model.seq=32",
                 "--set", "model.vocab=512", "--set", "train.iters=3", "--set", "train.warmup_iters=1",
                 "--set", "train.stall_timeout_s=600", "--set", "train.startup_timeout_s=900"]


def binfmt_ready() -> str | None:
    p = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if not p.exists():
        return "qemu-aarch64 is not registered with binfmt_misc (run .ci/arm64.sh)"
    if "enabled" not in p.read_text():
        return "qemu-aarch64 binfmt entry is disabled (update-binfmts --enable qemu-aarch64)"
    return None


@pytest.fixture(scope="session")
def a64fx_image():
    why = binfmt_ready() or podman_ready("arm64")
    if why:
        pytest.skip(why)
    return build_image("a64fx", "arm64", [], staged=True)


@pytest.mark.arm64
def test_a64fx_image_is_arm64_with_tcmalloc(a64fx_image):
    assert a64fx_image["arch"] == "arm64"
    assert a64fx_image["labels"]["org.kit.target"] == "a64fx"
    assert a64fx_image["labels"]["org.kit.tcmalloc.path"] == "/usr/lib/aarch64-linux-gnu/libtcmalloc.so.4"
    assert a64fx_image["labels"]["org.kit.staged"] == "host"


@pytest.mark.arm64
def test_a64fx_staged_venv_has_the_pins_scripts_and_kit(a64fx_image):
    """The host-staged venv is a working pip venv: pins as versions.yaml says, pip check clean,
    console scripts (torchrun) run, the kit's workload module imports (kit run tiny, below,
    runs it)."""
    import subprocess

    from kit.image.recipe import load_versions

    v = load_versions()
    script = ("set -e; pip check; pip freeze; torchrun --help >/dev/null && echo TORCHRUN_OK; "
              "python3 -c 'import kit.workload, deepspeed, numpy; print(\"IMPORT_OK\")'")
    r = subprocess.run(["podman", "run", "--rm", "--arch", "arm64", a64fx_image["ref"], "sh", "-c", script],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    freeze = dict(ln.split("==", 1) for ln in r.stdout.splitlines() if "==" in ln)
    assert freeze["torch"] == str(v["targets"]["a64fx"]["torch"]) and freeze["deepspeed"] == str(v["deepspeed"])
    for c in v["constraints"]:
        name, _, ver = c.partition("==")
        if name in freeze:
            assert freeze[name] == ver, c
    assert "TORCHRUN_OK" in r.stdout and "IMPORT_OK" in r.stdout


@pytest.mark.arm64
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_kit_run_tiny_tuned_emulated_a64fx(a64fx_image, tmp_path, ranks):
    r = kit_run("tiny", "--preset", "tuned", "--runtime", "podman", "--image", a64fx_image["ref"],
                "--set", f"parallel.dp={ranks}", "--set", f"batch.global={ranks}", *EMULATED_SETS, "--out", str(tmp_path / "results"),
                cwd=tmp_path, env={"QEMU_CPU": "a64fx"}, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    bundle = only_bundle(tmp_path / "results")
    prov = json.loads((bundle / "provenance.json").read_text())
    rt = prov["runtime"]
    assert rt["digest"] == a64fx_image["digest"] and rt["arch"] == "arm64"
    inside = rt["inside"]
    assert inside["machine"] == "aarch64" and prov["software"]["arch"] == "aarch64"
    assert inside["emulated"] is True and inside["qemu_cpu"] == "a64fx"
    assert inside["cpu_model"] == "qemu-user a64fx"
    assert inside["sve"] is True and inside["sve_vector_bits"] == 512, inside
    assert "sve" in inside["hwcap_features"]
    # the inventory, taken inside: the generic wheel is visible as such (ATen's SVE kernels are
    # 256-bit: DEFAULT on 512-bit SVE), and its OpenBLAS chose its A64FX kernels by itself
    sw = prov["software"]
    assert sw["torch_cpu_capability"] == "DEFAULT", sw.get("torch_cpu_capability")
    assert sw["blas"]["corename"] == "a64fx" and "DYNAMIC_ARCH" in sw["blas"]["config"], sw["blas"]
    alloc = next(s for s in prov["plan"]["settings"] if s["name"] == "allocator")
    assert alloc["verified"] is True and len(alloc["seen"]) == ranks and set(alloc["seen"].values()) == {"tcmalloc"}
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics  # the run produced its iteration series
