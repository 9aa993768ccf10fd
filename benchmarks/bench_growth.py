"""Growth: `kit report` over many bundles, and `kit bundle verify` of a bundle with a big log.

1. One real bundle (``kit run tiny --set train.iters=3``, or ``--from BUNDLE``) is copied N
   times (default 1,000) under fresh ids and re-finalized (``Bundle.finalize``: every file
   re-checksummed, a valid manifest), then ``kit report DIR`` is timed (median of rounds).
2. A copy gets a ``logs/big.log`` of ``--big-mib`` MiB (default 1024) and is re-finalized;
   ``kit bundle verify`` is run on it and on the same bundle without the big file, alternating,
   and each process's peak RSS (``ru_maxrss`` of the child) is compared: streaming means the
   two peaks are the same to within a few MiB.

    python benchmarks/bench_growth.py --json benchmarks/results/growth.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, load, machine, median, write_json  # noqa: E402
from bench_overhead import kit_cmd, newest  # noqa: E402

from kit.bundle import Bundle  # noqa: E402


def kit_exe() -> list[str]:
    return kit_cmd("x", "x", [], Path("."))[:-6]  # [kit] or [python, -m, kit]


def clone(src: Path, dst_dir: Path, i: int) -> Path:
    m = json.loads((src / "manifest.json").read_text())
    new_id = re.sub(r"_[0-9a-f]{6}$", f"_{i:06x}", m["id"])
    dst = dst_dir / new_id
    shutil.copytree(src, dst)
    # every copy gets its own recipe document (a different seed), as the points of a sweep do,
    # so nothing is measured that only holds for identical bundles
    rec = dst / "recipe.yaml"
    if rec.is_file():
        rec.write_text(re.sub(r"(?m)^(\s*seed:\s*)\d+", lambda m: f"{m.group(1)}{1000 + i}", rec.read_text()))
    b = Bundle.open(dst)
    b.manifest.id = new_id
    b.finalize(b.manifest.status, b.manifest.reason)
    return dst


def child_run(argv: list[str]) -> tuple[float, float, int, float]:
    """wall seconds, the child's peak RSS in MiB, exit code, its CPU seconds (user + sys)."""
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.execvp(argv[0], argv)
    _, status, ru = os.wait4(pid, 0)
    return (time.perf_counter() - t0, ru.ru_maxrss / 1024, os.waitstatus_to_exitcode(status),
            ru.ru_utime + ru.ru_stime)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundles", type=int, default=1000)
    p.add_argument("--big-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--from", dest="src", type=Path, default=None, help="a finished bundle to copy")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if a.quick:
        a.bundles, a.big_mib, a.rounds = 20, 16, 1
    tmp = Path(tempfile.mkdtemp(prefix="kit-bench-growth-"))
    src = a.src
    if src is None:
        out = tmp / "seed"
        r = subprocess.run(kit_cmd("tiny", "baseline", ["train.iters=3", "train.warmup_iters=1"], out),
                           cwd=ROOT, capture_output=True, text=True)
        if r.returncode:
            print(r.stdout[-2000:], r.stderr[-2000:])
            return 1
        src = newest(out)
    many = tmp / "many"
    many.mkdir()
    t0 = time.perf_counter()
    for i in range(a.bundles):
        clone(src, many, i)
    made_s = time.perf_counter() - t0
    print(f"{a.bundles} bundles made in {made_s:.1f}s from {src.name}", flush=True)
    kit = kit_exe()
    report, loads = [], []
    for _ in range(a.rounds):
        wall, rss, rc, cpu = child_run([*kit, "report", str(many)])
        if rc:
            print("kit report failed", rc)
            return 1
        report.append((wall, rss, cpu))
        loads.append(load())
        print(f"kit report over {a.bundles}: {wall:.2f}s (CPU {cpu:.2f}s), peak RSS {rss:.0f} MiB, load {loads[-1]}", flush=True)
    # the no-op floor: kit's own start-up
    floor = [child_run([*kit, "--help"])[0] for _ in range(a.rounds)]

    small = clone(src, tmp, 999_999)
    big = clone(src, tmp, 999_998)
    chunk = os.urandom(1 << 20)
    with (big / "logs" / "big.log").open("wb") as f:
        for _ in range(a.big_mib):
            f.write(chunk)
    b = Bundle.open(big)
    b.finalize(b.manifest.status, b.manifest.reason)
    ver = {"small": [], "big": []}
    for rnd in range(a.rounds):
        for which in (("big", "small") if rnd % 2 == 0 else ("small", "big")):
            wall, rss, rc, _ = child_run([*kit, "bundle", "verify", str(big if which == "big" else small)])
            if rc:
                print(f"verify {which} failed rc={rc}")
                return 1
            ver[which].append((wall, rss))
    for k, v in ver.items():
        print(f"verify {k}: wall {median([x[0] for x in v]):.2f}s peak RSS {median([x[1] for x in v]):.1f} MiB", flush=True)
    doc = {"machine": machine(), "bundles": a.bundles, "seed_bundle": src.name, "make_s": round(made_s, 2),
           "report_wall_s": [round(x[0], 3) for x in report], "report_peak_rss_mib": [round(x[1], 1) for x in report],
           "report_median_s": round(median([x[0] for x in report]), 3),
           "report_cpu_s": [round(x[2], 3) for x in report],
           "kit_help_median_s": round(median(floor), 3), "loadavg": loads,
           "verify": {k: {"wall_s": [round(x[0], 3) for x in v], "peak_rss_mib": [round(x[1], 1) for x in v]}
                      for k, v in ver.items()},
           "big_log_mib": a.big_mib,
           "verify_rss_growth_mib": round(median([x[1] for x in ver["big"]]) - median([x[1] for x in ver["small"]]), 1),
           "verify_big_mib_per_s": round(a.big_mib / median([x[0] for x in ver["big"]]), 1)}
    print(f"report {doc['report_median_s']}s (kit --help {doc['kit_help_median_s']}s); verify RSS growth with a "
          f"{a.big_mib} MiB log: {doc['verify_rss_growth_mib']} MiB", flush=True)
    write_json(a.json, doc)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
