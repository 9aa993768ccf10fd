"""The kit's own cost: `kit run` wall time vs the same pinned command run directly, and the
monitor's CPU time.

A first `kit run` (not timed) compiles/caches what a first run needs and gives the exact
launcher argv (``logs/launcher.log``'s first line) and environment (``plan.json``'s env,
``PYTHONUNBUFFERED``, a ``KIT_RUN_ID``). Then, alternating A B A B: A = the whole `kit run`
process (start-up, plan, ranks, monitor, metrics, provenance, manifest), B = that launcher
argv as a plain subprocess with the same environment. Medians of each and the ratio; the
monitor's cost is ``monitor_cpu_s / duration_s`` from each A run's metrics.json (fraction of
one core).

On a shared machine the same command varies by more than the 3% being measured, so each A
run is also split into the launcher's own wall time (``duration_s``: launch to exit, as the
kit saw it) and the kit's time outside it (start-up, plan, bundle, finalize): that part is
measured exactly per run, and ``fixed / median(direct)`` bounds what the kit adds serially.
While the ranks run, the kit can only slow them by the CPU it takes from them: its whole
process's CPU time meanwhile (``kit_cpu_s`` in metrics.json: monitor, log reader, progress
display). ``(fixed + kit_cpu_s) / median(direct)`` bounds the kit's cost in time and CPU,
without this machine's noise; any other interference (the log pipe, caches) would show as
the launcher's time inside the kit exceeding the direct run's. What a sweep records is the
rank's own time per iteration: its median (after warm-up) is compared too, kit vs direct.

    python benchmarks/bench_overhead.py --rounds 5 --json benchmarks/results/overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load, machine, median, write_json  # noqa: E402


def kit_cmd(recipe: str, preset: str, sets: list[str], out: Path) -> list[str]:
    kit = shutil.which("kit", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    base = [kit] if kit else [sys.executable, "-m", "kit"]
    argv = [*base, "run", recipe, "--preset", preset, "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    return argv


ITER_MS = re.compile(r"elapsed time per iteration \(ms\): ([0-9.]+)")


def iter_ms(text: str, warm: int) -> float:
    """Median ms per iteration after ``warm`` warm-up iterations, from Megatron-format lines."""
    ms = [float(x) for x in ITER_MS.findall(text)]
    return median(ms[warm:] or ms)


def newest(out: Path) -> Path:
    return max((p for p in out.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="tiny")
    p.add_argument("--preset", default="baseline")
    p.add_argument("--set", dest="sets", action="append", default=[])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.quick:
        a.rounds, a.sets = 1, [*a.sets, "train.iters=3", "train.warmup_iters=1"]
    tmp = Path(tempfile.mkdtemp(prefix="kit-bench-overhead-"))
    out = tmp / "results"
    env0 = {k: v for k, v in os.environ.items() if not k.startswith("KIT_RUN_ID")}
    cmd = kit_cmd(a.recipe, a.preset, a.sets, out)
    print("kit run:", shlex.join(cmd), flush=True)
    r = subprocess.run(cmd, env=env0, cwd=ROOT, capture_output=True, text=True)  # warm-up + the pinned argv
    if r.returncode:
        print(r.stdout[-3000:], r.stderr[-3000:])
        return 1
    b = newest(out)
    first = (b / "logs" / "launcher.log").read_text().splitlines()[0]
    assert first.startswith("# kit: ")
    direct = shlex.split(first[len("# kit: "):])
    plan = json.loads((b / "plan.json").read_text())
    warm = int(plan["recipe"]["train"]["warmup_iters"])
    denv = {**env0, **plan.get("env", {}), "PYTHONUNBUFFERED": "1", "KIT_RUN_ID": "bench-direct"}
    # the direct command writes torchrun's per-rank logs into its own folder, as kit's does
    ddir = tmp / "direct-logs"
    try:
        i = direct.index("--log-dir")
        direct[i + 1] = str(ddir)
    except ValueError:
        pass
    print("direct:", shlex.join(direct), flush=True)
    A, B, mon, loads, it_kit, it_direct = [], [], [], [], [], []
    for rnd in range(a.rounds):
        for which in (("kit", "direct") if rnd % 2 == 0 else ("direct", "kit")):
            t0 = time.perf_counter()
            if which == "kit":
                rr = subprocess.run(cmd, env=env0, cwd=ROOT, capture_output=True, text=True)
                A.append(time.perf_counter() - t0)
                it_kit.append(iter_ms((newest(out) / "logs" / "launcher.log").read_text(), warm))
                m = json.loads((newest(out) / "metrics.json").read_text())
                dur = m["summary"]["duration_s"]
                cpu = sum(n.get("monitor_cpu_s", 0.0) for n in m["nodes"].values())
                kcpu = sum(n.get("kit_cpu_s") or 0.0 for n in m["nodes"].values())
                mon.append({"monitor_cpu_s": cpu, "kit_cpu_s": kcpu, "run_s": dur, "core_fraction": cpu / dur,
                            "outside_launcher_s": A[-1] - dur})
            else:
                shutil.rmtree(ddir, ignore_errors=True)
                rr = subprocess.run(direct, env=denv, cwd=ROOT, capture_output=True, text=True)
                B.append(time.perf_counter() - t0)
                it_direct.append(iter_ms(rr.stdout, warm))
            if rr.returncode:
                print(f"{which} failed rc={rr.returncode}:", rr.stdout[-2000:], rr.stderr[-2000:])
                return 1
            loads.append(load())
        print(f"round {rnd}: kit {A[-1]:.2f}s (launcher {mon[-1]['run_s']:.2f}s + kit "
              f"{mon[-1]['outside_launcher_s']:.2f}s, kit CPU meanwhile {mon[-1]['kit_cpu_s']:.3f}s) direct {B[-1]:.2f}s ratio {A[-1] / B[-1]:.3f} "
              f"monitor {mon[-1]['core_fraction'] * 100:.2f}% of a core; ms/iteration kit {it_kit[-1]:.1f} direct "
              f"{it_direct[-1]:.1f}  load {loads[-1]}", flush=True)
    ratio = median(A) / median(B)
    fixed = median([m["outside_launcher_s"] for m in mon])
    launcher = median([m["run_s"] for m in mon])
    kcpu = median([m["kit_cpu_s"] for m in mon])
    bound = (fixed + kcpu) / median(B)
    doc = {"machine": machine(), "kit_cmd": cmd, "direct_cmd": direct, "direct_env_added": plan.get("env", {}),
           "kit_wall_s": [round(x, 3) for x in A], "direct_wall_s": [round(x, 3) for x in B],
           "median_kit_s": round(median(A), 3), "median_direct_s": round(median(B), 3),
           "ratio_medians": round(ratio, 4), "per_round_ratio": [round(x / y, 4) for x, y in zip(A, B)],
           "monitor": mon, "monitor_core_fraction_median": round(median([m["core_fraction"] for m in mon]), 5),
           "median_launcher_in_kit_s": round(launcher, 3), "median_kit_outside_launcher_s": round(fixed, 3),
           "ratio_launcher_in_kit_vs_direct": round(launcher / median(B), 4),
           "fixed_cost_fraction_of_direct": round(fixed / median(B), 4),
           "median_kit_cpu_during_run_s": round(kcpu, 4), "bound_fraction_of_direct": round(bound, 4),
           "iter_ms_kit": [round(x, 1) for x in it_kit], "iter_ms_direct": [round(x, 1) for x in it_direct],
           "ratio_iter_ms_medians": round(median(it_kit) / median(it_direct), 4),
           "loadavg_per_run": loads}
    print(f"kit run {median(A):.2f}s vs direct {median(B):.2f}s: ratio {ratio:.3f}; launcher inside kit "
          f"{launcher:.2f}s ({launcher / median(B):.3f}x direct) + kit outside it {fixed:.2f}s "
          f"({fixed / median(B) * 100:.1f}% of direct), kit CPU while the ranks ran {kcpu:.3f}s: (fixed + CPU) "
          f"{bound * 100:.1f}% of direct; monitor "
          f"{doc['monitor_core_fraction_median'] * 100:.2f}% of one core; ms/iteration kit {median(it_kit):.1f} vs "
          f"direct {median(it_direct):.1f} (ratio {doc['ratio_iter_ms_medians']:.3f})", flush=True)
    write_json(a.json, doc)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
