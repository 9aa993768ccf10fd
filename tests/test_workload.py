"""The built-in GPT workload (`python -m kit.workload`): CLI, log format, real training runs."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("deepspeed")

from kit.workload.train import Args, Fault, UsageError, check_layout, format_line, lr_at  # noqa: E402

LINE = re.compile(
    r"^ iteration +(\d+)/ +(\d+) \| consumed samples: +(\d+) \| elapsed time per iteration \(ms\): ([\d.]+) \|"
    r" learning rate: ([\d.]+E[-+]\d+) \| global batch size: +(\d+) \| lm loss: ([\d.]+E[-+]\d+) \|"
    r" loss scale: 1\.0 \| grad norm: ([\d.]+) \| number of skipped iterations: +0 \|"
    r" number of nan iterations: +0 \| samples per second: ([\d.]+) \| TFLOPs: ([\d.]+) \|$"
)
# small and fast: a 512-token vocabulary keeps the LM head cheap
TINY = ["--layers", "2", "--hidden", "64", "--heads", "4", "--seq", "64", "--vocab", "512",
        "--micro-batch", "1", "--global-batch", "4"]
ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_", "SLURM_", "OMPI_", "PMIX_"))}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_workload(args: list[str], nproc: int = 1, timeout: int = 150) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "kit.workload", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               f"--master-port={_port()}", "-m", "kit.workload", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)


def parse(stdout: str) -> list[dict]:
    rows = []
    for line in stdout.splitlines():
        if line.startswith(" iteration"):
            m = LINE.match(line)
            assert m, f"unparseable: {line!r}"
            rows.append({"it": int(m[1]), "of": int(m[2]), "consumed": int(m[3]), "ms": float(m[4]),
                         "lr": float(m[5]), "gbs": int(m[6]), "loss": float(m[7]),
                         "grad_norm": float(m[8]), "tflops": float(m[10])})
    return rows


def assert_ok(proc: subprocess.CompletedProcess, iters: int) -> list[dict]:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = parse(proc.stdout)
    assert [r["it"] for r in rows] == list(range(1, iters + 1)), proc.stdout
    assert "kit-workload: done" in proc.stdout
    assert proc.stdout.count("kit-workload: world_size=") == 1
    return rows


# --- fast unit checks ---

@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_fused_head_loss_matches_cross_entropy(dtype: str) -> None:
    """lm_loss (LM head + loss as one op, in-place softmax, reused buffer) gives the value and
    gradients of F.cross_entropy(F.linear(...)), including an incoming gradient != 1 (the
    engine scales the loss by 1/gradient-accumulation steps) and a second step that reuses
    the pooled buffer."""
    import torch
    import torch.nn.functional as F

    from kit.workload.model import lm_loss

    torch.manual_seed(0)
    x0, w0 = torch.randn(2, 48, 32), torch.randn(300, 32) * 0.5
    t = torch.randint(0, 300, (2, 48))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    tol = dict(rtol=0, atol=1e-6) if dtype == "fp32" else dict(rtol=0, atol=4e-3)

    def grads(fn):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with amp:
            loss = fn(x, w)
        (loss * 0.25).backward()
        return loss.detach(), x.grad, w.grad

    ref = grads(lambda x, w: F.cross_entropy(F.linear(x, w).float().flatten(0, 1), t.flatten()))
    for _ in range(2):  # the second call takes the buffer the first one gave back
        got = grads(lambda x, w: lm_loss(x, w, t))
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, **tol)
    with torch.no_grad():
        torch.testing.assert_close(lm_loss(x0, w0, t), ref[0], **tol)


@pytest.mark.parametrize("host_sync", [True, False])
def test_per_row_loss_both_ways_where_the_target_probability_underflows(host_sync: bool) -> None:
    """Both ways of taking the per-row loss (CPU: softmax, -log p, underflowed rows
    recomputed a few at a time; CUDA: log-sum-exp first, no host sync) give
    F.cross_entropy's values, also for rows ~100+ nats off, and leave the softmax."""
    import torch
    import torch.nn.functional as F

    from kit.workload import model

    torch.manual_seed(1)
    x, w = torch.randn(64, 32) * 4, torch.randn(300, 32)
    t = torch.randint(0, 300, (64,))
    logits = F.linear(x, w)
    buf = logits.clone()
    old = model._RECOMPUTE_ROWS
    model._RECOMPUTE_ROWS = 2  # several recompute GEMMs
    try:
        nll = model._target_nll(buf, t, x, w, host_sync=host_sync)
    finally:
        model._RECOMPUTE_ROWS = old
    ref = F.cross_entropy(logits, t, reduction="none")
    assert (ref > 110).sum() >= 3 and (ref < 60).sum() >= 3  # both kinds of row
    torch.testing.assert_close(nll, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(buf, torch.softmax(logits, -1))


def test_fused_head_loss_where_the_target_probability_underflows() -> None:
    """Rows whose target is ~100+ nats below the log-sum-exp (a diverging run): p(target)
    is 0 in float32, and the loss of those rows is recomputed from the logits; value and
    gradients still match F.cross_entropy."""
    import torch
    import torch.nn.functional as F

    from kit.workload.model import lm_loss

    torch.manual_seed(1)
    x0, w0 = torch.randn(64, 32) * 4, torch.randn(300, 32)
    t = torch.randint(0, 300, (64,))
    logits = F.linear(x0, w0)
    per_row = torch.logsumexp(logits, -1) - logits.gather(1, t[:, None]).squeeze(1)
    assert (per_row > 110).sum() >= 3 and (per_row < 60).sum() >= 3  # both kinds of row
    out = []
    for fn in (lambda x, w: F.cross_entropy(F.linear(x, w), t), lambda x, w: lm_loss(x, w, t)):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        loss = fn(x, w)
        loss.backward()
        out.append((loss.detach(), x.grad, w.grad))
    for a, b in zip(*out):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_format_line_is_megatrons() -> None:
    line = format_line(iteration=3, iters=20, consumed=24, ms=123.45, lr=6e-4, gbs=8, loss=10.5,
                       grad_norm=1.5, samples_per_s=64.8, tflops=0.0123)
    assert line == (" iteration        3/      20 | consumed samples:           24 |"
                    " elapsed time per iteration (ms): 123.5 | learning rate: 6.000E-04 |"
                    " global batch size:     8 | lm loss: 1.050000E+01 | loss scale: 1.0 |"
                    " grad norm: 1.500 | number of skipped iterations:   0 |"
                    " number of nan iterations:   0 | samples per second: 64.800 | TFLOPs: 0.01 |")
    assert LINE.match(line)


def test_fault_parse() -> None:
    assert Fault.parse("hang@5:1") == Fault("hang", 5, 1)
    assert Fault.parse("crash@2") == Fault("crash", 2, None)
    for bad in ("boom@1", "crash", "crash@x", "crash@0", "segv@1:-1"):
        with pytest.raises(ValueError):
            Fault.parse(bad)


def test_check_layout() -> None:
    assert check_layout(Args(global_batch=8, micro_batch=1), world=2) == 2
    assert check_layout(Args(global_batch=8, tp=2, pp=2, layers=2, heads=4), world=8) == 2
    for bad, world in [(Args(global_batch=6, micro_batch=4), 1), (Args(heads=3), 1),
                       (Args(tp=2), 3), (Args(pp=2, zero=2), 2), (Args(pp=3, layers=2), 3),
                       (Args(heads=4, tp=8, hidden=128), 8)]:
        with pytest.raises(UsageError):
            check_layout(bad, world)


def test_lr_schedule() -> None:
    a = Args(lr=1e-3, min_lr=1e-4, warmup_iters=10, iters=110)
    assert lr_at(a, 5) == pytest.approx(5e-4)
    assert lr_at(a, 10) == pytest.approx(1e-3)
    assert lr_at(a, 110) == pytest.approx(1e-4)


def test_bad_args_exit_2_with_one_line() -> None:
    for args in (["--bogus"], ["--heads", "3"], ["--fault", "boom@1"], ["--zero", "5"],
                 ["--global-batch", "3", "--micro-batch", "2"]):
        proc = run_workload(args, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("kit-workload: error:")


# --- real runs ---

def test_single_rank_trains_and_is_deterministic(tmp_path: Path) -> None:
    rows = assert_ok(run_workload([*TINY, "--iters", "12", "--lr", "3e-3", "--seed", "7"]), 12)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3])
    assert all(r["gbs"] == 4 and r["consumed"] == 4 * r["it"] and r["ms"] > 0 for r in rows)
    assert rows[0]["lr"] > rows[-1]["lr"]
    again = assert_ok(run_workload([*TINY, "--iters", "1", "--lr", "3e-3", "--seed", "7"]), 1)
    assert again[0]["loss"] == rows[0]["loss"]
    other = assert_ok(run_workload([*TINY, "--iters", "1", "--lr", "3e-3", "--seed", "8"]), 1)
    assert other[0]["loss"] != rows[0]["loss"]


def test_data_file_and_bf16(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "tokens.bin"
    np.random.default_rng(0).integers(0, 500, 20_000, dtype=np.uint16).tofile(path)
    rows = assert_ok(run_workload([*TINY, "--iters", "3", "--data", str(path), "--dtype", "bf16",
                                   "--checkpoint-activations"]), 3)
    assert all(r["loss"] > 0 for r in rows)
    proc = run_workload([*TINY, "--data", str(tmp_path / "missing.bin")])
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_fault_crash_exits_3() -> None:
    proc = run_workload([*TINY, "--iters", "5", "--fault", "crash@2"])
    assert proc.returncode == 3
    assert len(parse(proc.stdout)) == 1
    assert "injecting fault crash at iteration 2" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["1", "3"])
def test_two_rank_dp_matches_one_rank(zero: str) -> None:
    # ZeRO-3 partitions parameters over 1e5 elements (DeepSpeed's persistence threshold): a
    # 4096-token vocabulary makes the tied embedding one, which the LM head reads outside
    # the embedding module
    args = [*TINY, "--iters", "3", "--vocab", "4096"]
    one = assert_ok(run_workload(args), 3)
    two = assert_ok(run_workload([*args, "--zero", zero], nproc=2), 3)
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    assert two[-1]["loss"] == pytest.approx(one[-1]["loss"], rel=1e-4)


@pytest.mark.slow
def test_two_rank_pipeline_with_checkpointing() -> None:
    one = assert_ok(run_workload([*TINY, "--iters", "2"]), 2)
    pp = assert_ok(run_workload([*TINY, "--iters", "2", "--pp", "2", "--checkpoint-activations"], nproc=2), 2)
    assert pp[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    assert pp[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-3)


@pytest.mark.slow
def test_two_rank_tensor_parallel() -> None:
    # vocab 512 pads to 512 at TP 1 and TP 2, so the unsplit model is the same function
    one = assert_ok(run_workload([*TINY, "--iters", "2"]), 2)
    tp = assert_ok(run_workload([*TINY, "--iters", "2", "--tp", "2"], nproc=2), 2)
    assert tp[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-5)
    assert tp[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=1e-3)
    assert tp[1]["loss"] == pytest.approx(one[1]["loss"], rel=1e-4)


@pytest.mark.slow
def test_two_rank_crash_fails_the_job() -> None:
    proc = run_workload([*TINY, "--iters", "4", "--fault", "crash@2:1"], nproc=2)
    assert proc.returncode != 0
    assert "injecting fault crash at iteration 2 on rank 1" in proc.stderr
