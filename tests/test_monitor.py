"""The monitor finds a run's ranks by their environment and records their exact peak memory."""

from __future__ import annotations

import os
import subprocess
import sys

from kit.monitor import Monitor

# allocate and touch 300 MiB, free it (glibc returns it to the kernel), then idle
SPIKE = ("import sys, time; b = b'x' * (300 * 2**20); del b; print('freed', flush=True); "
         "sys.stdin.read()")


def test_peak_is_the_high_water_mark_not_a_sample():
    env = {**os.environ, "KIT_RUN_ID": "monitor-test", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SPIKE], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "freed"
        # the spike is over before the monitor starts: only the kernel's VmHWM remembers it
        other = Monitor("another-run", ["-c", SPIKE], expected_local=1)
        other.sample()
        assert other.ranks == {}  # same command line, other run id: not ours
        mon = Monitor("monitor-test", ["-c", SPIKE], expected_local=1)
        mon.sample()
        rank = mon.ranks[0]
        assert rank.pid == proc.pid
        assert rank.last_rss_mib < 150, rank  # what a sample sees now
        assert rank.peak_rss_mib >= 300, rank  # what the process reached
        assert mon.snapshot()["ranks"]["0"]["peak_rss_mib"] == rank.peak_rss_mib
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_kit_cpu_is_the_whole_process_while_watching():
    """``kit_cpu_s``: all of the kit process's CPU (every thread) between start and stop, the
    bound on what the kit takes from the ranks while they run; frozen at stop."""
    import time

    mon = Monitor("nobody-runs-this", ["-c", "nothing"], expected_local=1, interval=0.05).start()
    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:  # another thread of the kit working
        sum(range(1000))
    mon.stop()
    snap = mon.snapshot()
    assert 0.3 <= snap["kit_cpu_s"] < 5, snap
    assert snap["monitor_cpu_s"] < snap["kit_cpu_s"]
    t1 = time.process_time()
    while time.process_time() - t1 < 0.1:
        sum(range(1000))
    assert mon.snapshot()["kit_cpu_s"] == snap["kit_cpu_s"]
