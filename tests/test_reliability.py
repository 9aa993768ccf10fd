"""Hangs, crashes, interrupts and bad input never lose a result.

Every test here provokes the real failure: a rank that really stops calling collectives
(the others block in gloo), a rank that exits non-zero or dies of SIGSEGV, a real SIGINT to
`kit run`, the kit itself killed with SIGKILL mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kit.bundle import read_manifest, verify
from kit.recipe import DEFAULT_COMMAND
from conftest import REPO, bundle_from_output, kit_cli, load, run_pids

pytestmark = pytest.mark.slow


def fault_recipe(tmp_path: Path, fault: str, *, iters: int = 8, stall: float = 60, extra: dict | None = None) -> Path:
    data = yaml.safe_load((REPO / "recipes" / "tiny.yaml").read_text())
    data["name"] = "tiny-fault"
    data["train"].update(iters=iters, warmup_iters=1, stall_timeout_s=stall)
    data["command"] = DEFAULT_COMMAND + ["--fault", fault]
    data.update(extra or {})
    p = tmp_path / "tiny-fault.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_hang_is_stopped_with_stacks_and_status_stalled(tmp_path):
    recipe = fault_recipe(tmp_path, "hang@3:1", stall=8)
    t0 = time.monotonic()
    proc = kit_cli("run", str(recipe), "--preset", "baseline", "--set", "parallel.dp=2", "--out", str(tmp_path / "r"))
    took = time.monotonic() - t0
    assert proc.returncode == 3, proc.stdout + proc.stderr
    bundle = bundle_from_output(proc.stdout)
    m = read_manifest(bundle)
    assert m.status == "stalled" and "no new iteration" in m.reason
    assert verify(bundle).ok  # a stalled run is a finished, verifiable bundle
    stacks = list((bundle / "logs" / "stacks").glob("rank*.py-spy.txt"))
    assert len(stacks) == 2, stacks
    text = {p.name: p.read_text() for p in stacks}
    # rank 1 sleeps in the injected hang; rank 0 waits in a collective
    assert "_inject" in text["rank1.py-spy.txt"] or "sleep" in text["rank1.py-spy.txt"]
    assert "Thread" in text["rank0.py-spy.txt"]
    summary = load(bundle, "metrics.json")["summary"]
    assert summary["iterations_logged"] == 2  # what was measured before the hang is kept
    assert took < 600  # stopped by the watchdog, not by the test's own timeout
    assert "^^" in proc.stdout  # the table's mark for a stalled run


@pytest.mark.parametrize("kind,expect", [("crash", {"exit_code": 3}), ("segv", {"signal": signal.SIGSEGV.value})])
def test_rank_failure_stops_the_others_and_is_recorded(tmp_path, kind, expect):
    recipe = fault_recipe(tmp_path, f"{kind}@3:1")
    proc = kit_cli("run", str(recipe), "--preset", "baseline", "--set", "parallel.dp=2", "--out", str(tmp_path / "r"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bundle = bundle_from_output(proc.stdout)
    m = read_manifest(bundle)
    assert m.status == "failed" and "rank 1" in m.reason
    assert verify(bundle).ok
    ranks = load(bundle, "metrics.json")["ranks"]
    for k, v in expect.items():
        assert ranks["1"][k] == v, ranks
    assert load(bundle, "metrics.json")["summary"]["iterations_logged"] >= 1
    assert (bundle / "logs" / "launcher.log").stat().st_size > 0


def _wait_for(proc: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen:\n{''.join(lines)}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_interrupt_finalizes_the_bundle_quickly(tmp_path, sig):
    out = tmp_path / "r"
    proc = _start(out)
    _wait_for(proc, "iteration 2/", 300)
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=300)  # 4000 iterations would take many minutes more
    assert proc.returncode == 130, rest
    bundle = next(out.iterdir())
    m = read_manifest(bundle)
    assert m.status == "interrupted" and signal.Signals(sig).name in m.reason
    assert verify(bundle).ok
    assert load(bundle, "metrics.json")["summary"]["iterations_logged"] >= 2
    # no rank outlives the kit
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", f"KIT_RUN_ID={m.id}"], capture_output=True, text=True).stdout
    assert not any(_env_has(int(pid), m.id) for pid in _workload_pids()), left


def _workload_pids() -> list[str]:
    r = subprocess.run(["pgrep", "-f", "kit.workload"], capture_output=True, text=True)
    return r.stdout.split()


def _env_has(pid: int, run_id: str) -> bool:
    try:
        return f"KIT_RUN_ID={run_id}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False


def test_kit_killed_mid_run_leaves_an_incomplete_bundle(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "kit", "run", "tiny", "--preset", "tuned", "--set", "train.iters=400",
                             "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "COLUMNS": "200"})
    _wait_for(proc, "iteration 1/", 300)
    os.killpg(proc.pid, signal.SIGKILL)  # the kit dies without any chance to clean up
    proc.wait(timeout=30)
    bundle = next(out.iterdir())
    try:
        # the launcher runs in its own session; the kit's reaper stops it and the ranks
        deadline = time.monotonic() + 20
        while run_pids(bundle.name) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not run_pids(bundle.name), "the ranks outlived the killed kit"
    finally:
        _kill_run(bundle.name)  # left alone they would train on and slow every later test
    v = verify(bundle)
    assert not v.ok and v.status == "running"
    assert "incomplete" in v.problems[0]
    r = kit_cli("bundle", "verify", str(bundle))
    assert r.returncode != 0 and "incomplete" in (r.stdout + r.stderr)


def _kill_run(run_id: str) -> None:
    """SIGKILL every process of run ``run_id`` (the kit puts KIT_RUN_ID in their environment)."""
    import psutil

    victims = []
    for pid in run_pids(run_id):
        try:
            victims.append(psutil.Process(pid))
            victims[-1].kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=30)


def test_an_ignored_sighup_stays_ignored():
    """Under `nohup kit run ...` SIGHUP is ignored: the run is meant to outlive the terminal,
    so the kit does not turn a hang-up into an interrupt; SIGINT/SIGTERM are still handled."""
    from kit.execute import _Interrupt

    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with _Interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with _Interrupt():
            assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_IGN, signal.SIG_DFL)
    finally:
        signal.signal(signal.SIGHUP, old)


def _as_from_a_terminal() -> None:
    """In the child: SIGINT and SIGHUP as a terminal leaves them. A test suite started in the
    background by a script (`cmd &`, nohup) ignores both, the child would inherit that, and the
    kit keeps an ignored signal ignored (nohup's intent) - the test would then measure how it
    was started."""
    for s in (signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def _start(out: Path, iters: int = 4000) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kit", "run", "tiny", "--preset", "tuned", "--set",
                             f"train.iters={iters}", "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"},
                            preexec_fn=_as_from_a_terminal)


def test_a_killed_launcher_leaves_no_rank_training(tmp_path):
    """SIGKILL to torchrun (the OOM killer, an admin): its worker, in a session of its own,
    would train on and write into the finalized bundle. The kit stops it first."""
    import psutil

    out = tmp_path / "r"
    proc = _start(out)
    _wait_for(proc, "iteration 2/", 300)
    bundle = next(out.iterdir())
    launcher = [p for p in (psutil.Process(pid) for pid in run_pids(bundle.name))
                if "torch.distributed.run" in " ".join(p.cmdline())]
    assert len(launcher) == 1
    launcher[0].kill()
    try:
        rest, _ = proc.communicate(timeout=300)
        assert proc.returncode == 1, rest
        m = read_manifest(bundle)
        assert m.status == "failed" and "outlived the launcher and were stopped by the kit" in m.reason
        assert not run_pids(bundle.name), "a rank outlived its killed launcher"
        time.sleep(3)  # nothing writes into the sealed bundle afterwards
        assert verify(bundle).ok
    finally:
        _kill_run(bundle.name)


def test_repeated_interrupts_still_finalize_the_bundle(tmp_path):
    """Ctrl-C pressed again and again, also while the bundle is being written."""
    out = tmp_path / "r"
    proc = _start(out)
    _wait_for(proc, "iteration 2/", 300)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    bundle = next(out.iterdir())
    assert read_manifest(bundle).status == "interrupted"
    assert verify(bundle).ok
