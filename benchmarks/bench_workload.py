"""The workload's speed: kit GPT vs transformers' GPT-2, the GEMM rate, MFU, fp32 vs bf16.

Everything is measured in one process (plus the workload subprocesses for MFU), alternating
the variants round by round (A B A B ...) so a busy machine slows each alike; medians.

    PYTHONPATH=/tmp/hfpkgs python benchmarks/bench_workload.py --json benchmarks/results/workload.json
    python benchmarks/bench_workload.py --quick          # seconds; smoke test

Parts:
1. GEMM rate: torch.mm n x n x n at the run's thread count, fp32 and bf16 (GFLOP/s = 2n^3/t).
2. Model step (fwd + bwd + fused AdamW, plain torch, one process): kit GPT vs HF GPT2LMHeadModel
   (sdpa attention, dropout 0 = the same computation; its default config has dropout 0.1,
   measured too), per shape and precision (bf16 = torch.autocast on both).
3. The workload itself (``python -m kit.workload``, DeepSpeed, gloo) at the 6/512/512 shape:
   median ms per iteration after warm-up → Megatron-formula FLOP/s → MFU vs the fp32 GEMM rate
   measured in between, and the bf16 run vs the bf16 GEMM rate.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load, machine, median, write_json  # noqa: E402

import torch  # noqa: E402

SHAPES = {  # name: (layers, hidden, heads, seq, batch)
    "tiny": (2, 128, 4, 128, 8),
    "6L-512h-512s": (6, 512, 8, 512, 4),
}


def gemm_rate(dtype: torch.dtype, n: int, reps: int) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        ts.append(time.perf_counter() - t0)
    return 2 * n**3 / median(ts) / 1e9


class Variant:
    def __init__(self, name: str, model: torch.nn.Module, fwd, dtype: str):
        self.name, self.model, self.fwd, self.dtype = name, model, fwd, dtype
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=True)
        self.tps: list[float] = []

    def step(self, x, y) -> None:
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.dtype == "bf16" else _null()
        with ctx:
            loss = self.fwd(self.model, x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        loss.item()

    def time(self, x, y, steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step(x, y)
        tps = x.numel() * steps / (time.perf_counter() - t0)
        self.tps.append(tps)
        return tps


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def model_compare(shape: str, dtype: str, rounds: int, steps: int, compile_: bool, hf_default_dropout: bool,
                  vocab: int) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    from kit.workload.model import GPT, GPTConfig

    L, h, nh, s, B = SHAPES[shape]
    torch.manual_seed(0)
    variants = [Variant("kit", GPT(GPTConfig(layers=L, hidden=h, heads=nh, seq=s, vocab=vocab)).train(),
                        lambda m, x, y: m(x, y), dtype)]
    if compile_:
        m = GPT(GPTConfig(layers=L, hidden=h, heads=nh, seq=s, vocab=vocab)).train()
        variants.append(Variant("kit+compile", torch.compile(m), lambda m, x, y: m(x, y), dtype))
    for drop in ((0.0, 0.1) if hf_default_dropout else (0.0,)):
        cfg = GPT2Config(n_layer=L, n_embd=h, n_head=nh, n_positions=s, vocab_size=vocab,
                         resid_pdrop=drop, embd_pdrop=drop, attn_pdrop=drop)
        cfg._attn_implementation = "sdpa"
        variants.append(Variant(f"hf-gpt2(dropout {drop})", GPT2LMHeadModel(cfg).train(),
                                lambda m, x, y: m(input_ids=x, labels=x).loss, dtype))
    x = torch.randint(0, vocab, (B, s))
    y = torch.roll(x, -1, dims=1)  # kit takes shifted targets; HF shifts labels itself
    for v in variants:  # warm-up (and compilation)
        for _ in range(2):
            v.step(x, y)
    loads = []
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]  # A B B A: no fixed position bias
        for v in order:
            v.time(x, y, steps)
        loads.append(load())
    out = {"shape": shape, "layers": L, "hidden": h, "heads": nh, "seq": s, "batch": B, "dtype": dtype,
           "rounds": rounds, "steps_per_round": steps, "loadavg_per_round": loads, "tokens_per_s": {}}
    base = median(variants[-1 if not hf_default_dropout else -2].tps)
    for v in variants:
        out["tokens_per_s"][v.name] = {"median": round(median(v.tps), 1), "max": round(max(v.tps), 1),
                                       "all": [round(t, 1) for t in v.tps]}
    hf0 = median(next(v for v in variants if v.name.startswith("hf-gpt2(dropout 0.0")).tps)
    out["ratio_vs_hf_dropout0"] = {v.name: round(median(v.tps) / hf0, 3) for v in variants}
    # per-round ratios (each round's pair measured back to back)
    hfv = next(v for v in variants if v.name.startswith("hf-gpt2(dropout 0.0"))
    out["per_round_ratio_kit_vs_hf0"] = [round(a / b, 3) for a, b in zip(variants[0].tps, hfv.tps)]
    del base
    return out


ITER_RE = re.compile(r"elapsed time per iteration \(ms\): ([0-9.]+)")


def workload_run(dtype: str, iters: int, warm: int, threads: int, shape: str, extra: list[str]) -> dict:
    L, h, nh, s, B = SHAPES[shape]
    argv = [sys.executable, "-m", "kit.workload", "--layers", str(L), "--hidden", str(h), "--heads", str(nh),
            "--seq", str(s), "--micro-batch", str(B), "--global-batch", str(B), "--iters", str(iters),
            "--dtype", dtype, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    env.pop("PYTHONPATH", None)  # the workload runs on the venv alone
    r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    ms = [float(m) for m in ITER_RE.findall(r.stdout)]
    steady = ms[warm:] or ms
    from kit import flops

    sec = median(steady) / 1e3
    tp = flops.throughput(layers=L, hidden=h, seq=s, vocab=50257, global_batch=B, sec_per_iter=sec)
    return {"dtype": dtype, "extra": extra, "ms_per_iter": [round(x, 1) for x in ms],
            "median_ms": round(median(steady), 1), "model_gflops": round(tp.tflops_per_rank * 1e3, 1),
            "tokens_per_s": round(B * s / sec, 1), "loadavg": load()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke test")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--shapes", default="tiny,6L-512h-512s")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(kit GPT)")
    p.add_argument("--hf-default-dropout", action="store_true", help="also time HF with its default dropout 0.1")
    p.add_argument("--workload-rounds", type=int, default=3, help="alternated fp32/bf16 workload runs (0: skip)")
    p.add_argument("--workload-iters", type=int, default=8)
    p.add_argument("--gemm-n", type=int, default=2048)
    p.add_argument("--json", default=None)
    p.add_argument("--skip-hf", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.quick:
        a.rounds, a.steps, a.shapes, a.workload_rounds, a.workload_iters, a.gemm_n = 1, 1, "tiny", 1, 3, 512
    doc = {"machine": machine(), "threads": a.threads, "torch": torch.__version__}
    print(f"machine: {doc['machine']['cpu']} x{doc['machine']['cores']} flags={doc['machine']['flags']} "
          f"threads={a.threads} load={load()}", flush=True)

    gemm = {"fp32": [], "bf16": []}

    def measure_gemm():
        for dt, tdt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            gemm[dt].append(gemm_rate(tdt, a.gemm_n, 5 if not a.quick else 2))

    measure_gemm()
    print(f"GEMM {a.gemm_n}^3: fp32 {gemm['fp32'][-1]:.0f} GFLOP/s  bf16 {gemm['bf16'][-1]:.0f} GFLOP/s", flush=True)

    doc["models"] = []
    if not a.skip_hf:
        try:
            import transformers
            doc["transformers"] = transformers.__version__
        except ImportError:
            print("transformers not importable: skipping the HF comparison (set PYTHONPATH)", flush=True)
            a.skip_hf = True
    if not a.skip_hf:
        for shape in a.shapes.split(","):
            for dt in a.dtypes.split(","):
                r = model_compare(shape, dt, a.rounds, a.steps, a.compile, a.hf_default_dropout, 50257)
                doc["models"].append(r)
                print(f"{shape} {dt}: " + "  ".join(f"{k} {v['median']:.0f} tok/s" for k, v in r["tokens_per_s"].items())
                      + f"  ratio vs HF(d=0) {r['ratio_vs_hf_dropout0']}  per-round kit/HF {r['per_round_ratio_kit_vs_hf0']}"
                      + f"  load {r['loadavg_per_round']}", flush=True)
                measure_gemm()

    doc["workload"] = {"fp32": [], "bf16": []}
    shape = "6L-512h-512s" if not a.quick else "tiny"
    for r in range(a.workload_rounds):
        for dt in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
            if dt not in a.dtypes.split(","):
                continue
            w = workload_run(dt, a.workload_iters, 2, a.threads, shape, [])
            w["gemm_before"] = {k: round(v[-1], 1) for k, v in gemm.items()}
            doc["workload"][dt].append(w)
            print(f"workload {shape} {dt}: median {w['median_ms']} ms/it  {w['model_gflops']} model GFLOP/s  "
                  f"load {w['loadavg']}", flush=True)
        measure_gemm()
        for dt in ("fp32", "bf16"):  # MFU against the GEMM rate measured just before and just after
            for w in doc["workload"][dt][-1:]:
                if "gemm_before" in w:
                    g = {k: (w["gemm_before"][k] + gemm[k][-1]) / 2 for k in gemm}
                    w["adjacent_gemm_gflops"] = {k: round(v, 1) for k, v in g.items()}
                    w["mfu_vs_adjacent_fp32_gemm"] = round(w["model_gflops"] / g["fp32"], 3)
                    w["mfu_vs_adjacent_own_gemm"] = round(w["model_gflops"] / g[dt], 3)
    doc["gemm_gflops"] = {k: [round(x, 1) for x in v] for k, v in gemm.items()}
    g32, g16 = median(gemm["fp32"]), median(gemm["bf16"])
    doc["gemm_median_gflops"] = {"fp32": round(g32, 1), "bf16": round(g16, 1)}
    summ = {}
    for dt, runs in doc["workload"].items():
        if runs:
            gf = median([w["model_gflops"] for w in runs])
            summ[dt] = {"median_model_gflops": round(gf, 1), "median_ms": median([w["median_ms"] for w in runs]),
                        "mfu_vs_fp32_gemm": round(gf / g32, 3),
                        "median_mfu_vs_adjacent_fp32_gemm": median([w.get("mfu_vs_adjacent_fp32_gemm", float("nan")) for w in runs]), "mfu_vs_own_dtype_gemm": round(gf / (g32 if dt == "fp32" else g16), 3)}
    if "fp32" in summ and "bf16" in summ:
        summ["bf16_speedup"] = round(summ["fp32"]["median_ms"] / summ["bf16"]["median_ms"], 3)
    doc["workload_summary"] = summ
    print(f"GEMM medians: fp32 {g32:.0f}  bf16 {g16:.0f} GFLOP/s; workload: {summ}", flush=True)
    write_json(a.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
