#!/usr/bin/env bash
# GPU check (BENCHMARKS.md, target 6): the kit's recipe on one NVIDIA GPU through DeepSpeed's
# CUDA accelerator and nccl, at the 124M shape (12 layers / 768 / 12 heads, seq 1024, vocab
# 50257) in bf16 autocast; model-FLOPs utilization (Megatron formula, kit.flops) against the
# card's bf16 GEMM rate measured here (8192^3 torch.matmul, CUDA events).
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, from the repository root
#   bash benchmarks/gpu_check.sh --cpu-dry    # the same logic on CPU at a tiny shape (a test)
#
# Needs: python3 with torch (CUDA), typer, rich, psutil, pyyaml, numpy; the wheels in .whl/
# (deepspeed pure wheel, hjson, einops, msgpack, pydantic(+core), annotated-types,
# typing-inspection, typing-extensions, spython, setuptools) are installed into /tmp/site.
# Results: $OUT/gpu_check.json, summary.txt, logs (at most 8 files). Each step has a timeout;
# a failed step is reported and the script goes on to the summary; exit 1 if the main run failed.
set -uo pipefail
MODE=gpu
[[ "${1:-}" == "--cpu-dry" ]] && MODE=cpu
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
PY=${PY:-python3}
WORK=$(mktemp -d /tmp/gpu_check.XXXX)
T0=$(date +%s)
log() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
  log "installing .whl/*.whl into /tmp/site"
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    || { log "FAIL: wheel install"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

if [[ $MODE == gpu ]]; then
  L=12 H=768 NH=12 S=1024 MB=${MB:-16} GB=${GB:-64} ITERS=${ITERS:-15} WARM=3 GEMM_N=8192
else
  L=2 H=128 NH=4 S=128 MB=2 GB=4 ITERS=4 WARM=1 GEMM_N=1024
fi

log "env"
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; timeout 120 "$PY" -c "
import torch, sys, deepspeed
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'available', torch.cuda.is_available(), 'deepspeed', deepspeed.__version__)
if torch.cuda.is_available(): print('device', torch.cuda.get_device_name(0))
"; } > "$OUT/env.txt" 2>&1 || log "FAIL: env probe (see env.txt)"
cat "$OUT/env.txt" | tail -3 | tee -a "$OUT/summary.txt"

log "bf16 GEMM rate (${GEMM_N}^3)"
timeout 120 "$PY" - "$GEMM_N" "$MODE" > "$WORK/gemm.json" 2>"$WORK/gemm.err" <<'EOF'
import json, statistics, sys, time
import torch
n, mode = int(sys.argv[1]), sys.argv[2]
dev = "cuda" if mode == "gpu" else "cpu"
if mode == "gpu" and not torch.cuda.is_available():
    raise SystemExit("CUDA not available")
out = {"n": n, "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"}
for name, dt in (("bf16", torch.bfloat16), ("fp32_tf32off", torch.float32)):
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(n, n, device=dev, dtype=dt); b = torch.randn(n, n, device=dev, dtype=dt)
    for _ in range(3): torch.matmul(a, b)
    ts = []
    for _ in range(10 if dev == "cuda" else 3):
        if dev == "cuda":
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(); s.record(); torch.matmul(a, b); e.record(); torch.cuda.synchronize()
            ts.append(s.elapsed_time(e) / 1e3)
        else:
            t0 = time.perf_counter(); torch.matmul(a, b); ts.append(time.perf_counter() - t0)
    out[name + "_tflops"] = round(2 * n**3 / statistics.median(ts) / 1e12, 2)
    out[name + "_tflops_max"] = round(2 * n**3 / min(ts) / 1e12, 2)
print(json.dumps(out))
EOF
[[ $? == 0 ]] && log "GEMM: $(cat "$WORK/gemm.json")" || { log "FAIL: GEMM ($(tail -2 "$WORK/gemm.err"))"; echo '{}' > "$WORK/gemm.json"; }

# 0. the fused LM head + loss on the device: value and gradients vs F.cross_entropy(F.linear)
#    (fp32 and bf16 autocast, at the 124M vocabulary), and both per-row loss paths
log "fused head + loss vs F.cross_entropy on the device"
timeout 120 "$PY" - "$MODE" > "$OUT/fused_loss.txt" 2>&1 <<'EOF'
import sys
import torch
import torch.nn.functional as F
from kit.workload import model
dev = "cuda" if sys.argv[1] == "gpu" else "cpu"
torch.manual_seed(0)
N, H, V = (4096, 768, 50304) if dev == "cuda" else (256, 64, 50304)
x0, w0 = torch.randn(N, H, device=dev), torch.randn(V, H, device=dev) * 0.05
t = torch.randint(0, V, (N,), device=dev)
worst = 0.0
for dtype, tol in (("fp32", 1e-4), ("bf16", 3e-2)):
    amp = torch.autocast(dev, dtype=torch.bfloat16, enabled=dtype == "bf16")
    res = []
    for fn in (lambda x, w: F.cross_entropy(F.linear(x, w).float(), t), lambda x, w: model.lm_loss(x, w, t)):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        with amp:
            loss = fn(x, w)
        (loss * 0.5).backward()
        res.append((loss.detach().float(), x.grad.float(), w.grad.float()))
    errs = [((a - b).abs().max() / (b.abs().max() + 1e-12)).item() for a, b in zip(res[1], res[0])]
    print(dtype, "relative max error loss/grad_x/grad_w", ["%.2e" % e for e in errs], "ok" if max(errs) < tol else "FAIL")
    worst = max(worst, max(errs) / tol)
logits = F.linear(x0, w0 * 40)  # rows whose target probability underflows in float32
ref = F.cross_entropy(logits, t, reduction="none")
for host_sync in (True, False):
    err = (model._target_nll(logits.clone(), t, x0, w0 * 40, host_sync=host_sync) - ref).abs().max().item()
    print("per-row loss, host_sync", host_sync, "max abs error %.2e" % err, "(targets > 100 nats off: %d)"
          % int((ref > 100).sum()), "ok" if err < 1e-3 * ref.abs().max().item() else "FAIL")
    worst = max(worst, err / (1e-3 * ref.abs().max().item()))
sys.exit(0 if worst < 1 else 1)
EOF
[[ $? == 0 ]] && log "fused loss: ok" || log "FAIL: fused loss (see fused_loss.txt)"
tail -4 "$OUT/fused_loss.txt" | tee -a "$OUT/summary.txt"

# 1. through `kit run` (local launcher: torchrun, nccl on GPU), bundle and all
log "kit run gpt-124m bf16 (micro $MB, global $GB, $ITERS iters)"
SETS=(--set batch.micro=$MB --set batch.global=$GB --set train.iters=$ITERS --set train.warmup_iters=$WARM
      --set train.dtype=bf16 --set train.startup_timeout_s=300 --set train.stall_timeout_s=120)
if [[ $MODE == cpu ]]; then
  SETS+=(--set model.layers=$L --set model.hidden=$H --set model.heads=$NH --set model.seq=$S)
fi
timeout 300 "$PY" -m kit run gpt-124m --preset baseline "${SETS[@]}" --out "$WORK/results" > "$WORK/kit_run.out" 2>&1
KIT_RC=$?
BUNDLE=$(ls -d "$WORK"/results/*/ 2>/dev/null | head -1)
tail -5 "$WORK/kit_run.out" | tee -a "$OUT/summary.txt"
if [[ -n "$BUNDLE" ]]; then
  cp "$BUNDLE/logs/launcher.log" "$OUT/kit_run_launcher.log" 2>/dev/null
  cp "$BUNDLE/metrics.json" "$OUT/kit_run_metrics.json" 2>/dev/null
fi
log "kit run exit code $KIT_RC"

# 2. the workload directly with torch.compile (optional: a figure for the compiled path)
log "python -m kit.workload --compile bf16 (direct, optional)"
timeout 240 "$PY" -m kit.workload --layers $L --hidden $H --heads $NH --seq $S --vocab 50257 \
  --micro-batch $MB --global-batch $GB --iters $ITERS --warmup-iters $WARM --dtype bf16 --zero 1 --compile \
  > "$OUT/workload_compile.log" 2>&1
COMP_RC=$?
log "compiled run exit code $COMP_RC"

"$PY" - "$WORK/gemm.json" "$OUT/kit_run_metrics.json" "$OUT/workload_compile.log" "$OUT/kit_run_launcher.log" \
  "$L" "$H" "$S" "$GB" "$WARM" "$KIT_RC" "$COMP_RC" "$MODE" > "$OUT/gpu_check.json" 2>>"$OUT/summary.txt" <<'EOF'
import json, re, statistics, sys
from pathlib import Path
from kit import flops
gemm_p, met_p, comp_p, launch_p, L, H, S, GB, WARM, krc, crc, mode = sys.argv[1:]
L, H, S, GB, WARM = int(L), int(H), int(S), int(GB), int(WARM)
gemm = json.loads(Path(gemm_p).read_text() or "{}")
peak = gemm.get("bf16_tflops")
ITER = re.compile(r"elapsed time per iteration \(ms\): ([0-9.]+)")
def run_fig(ms):
    steady = ms[WARM:] or ms
    if not steady:
        return None
    sec = statistics.median(steady) / 1e3
    t = flops.throughput(layers=L, hidden=H, seq=S, vocab=50257, global_batch=GB, sec_per_iter=sec)
    return {"ms_per_iter": [round(x, 1) for x in ms], "median_ms": round(sec * 1e3, 2),
            "tokens_per_s": round(GB * S / sec), "model_tflops": round(t.tflops_per_rank, 2),
            "mfu_vs_measured_bf16_gemm": round(t.tflops_per_rank / peak, 4) if peak else None}
out = {"mode": mode, "shape": {"layers": L, "hidden": H, "heads_note": "12 at 124M", "seq": S, "vocab": 50257,
       "global_batch": GB, "dtype": "bf16 autocast"}, "gemm": gemm, "kit_run_rc": int(krc), "compile_rc": int(crc)}
lp = Path(launch_p)
out["kit_run"] = run_fig([float(x) for x in ITER.findall(lp.read_text(errors="replace"))]) if lp.exists() else None
if Path(met_p).exists():
    s = json.loads(Path(met_p).read_text())["summary"]
    out["kit_run_bundle_summary"] = {k: s.get(k) for k in ("sec_per_iter", "tflops_per_rank", "peak_mem_mib",
                                                        "device_peak_allocated_mib", "device_peak_reserved_mib",
                                                        "final_loss", "status")}
cp = Path(comp_p)
out["compiled"] = run_fig([float(x) for x in ITER.findall(cp.read_text(errors="replace"))]) if cp.exists() else None
hdr = re.search(r"kit-workload: world_size.*", lp.read_text(errors="replace")) if lp.exists() else None
out["workload_header"] = hdr.group(0) if hdr else None
print(json.dumps(out, indent=1))
EOF
log "SUMMARY"
"$PY" -c "
import json; d = json.load(open('$OUT/gpu_check.json'))
g = d['gemm']; print('GEMM bf16 %s TFLOP/s (fp32, TF32 off: %s) on %s' % (g.get('bf16_tflops'), g.get('fp32_tf32off_tflops'), g.get('device')))
for k in ('kit_run', 'compiled'):
    r = d.get(k)
    print(k, 'n/a' if not r else '%s ms/it  %s tokens/s  %s model TFLOP/s  MFU %s' % (r['median_ms'], r['tokens_per_s'], r['model_tflops'], r['mfu_vs_measured_bf16_gemm']))
print('bundle:', d.get('kit_run_bundle_summary'))
print('header:', d.get('workload_header'))
" 2>&1 | tee -a "$OUT/summary.txt"
rm -rf "$WORK"
log "done in $(( $(date +%s) - T0 ))s; files: $(ls "$OUT" | tr '\n' ' ')"
[[ $KIT_RC == 0 ]] || exit 1
