"""Stand-in for a training rank on a CUDA device — tests only.

This machine has no GPU, so no rank here can have a CUDA caching allocator to report on. This
script prints what such a rank prints: Megatron-format iteration lines and, at the end,
Megatron's ``report_memory`` line (``[Rank R] (after N iterations) memory (MB) | allocated:
... | max allocated: ... | reserved: ... | max reserved: ...``), the format the built-in
workload uses on CUDA. The figures are fixed per rank (1000 + 10*rank MiB max allocated,
2048 + 10*rank MiB max reserved) so a test can check the kit records each rank's and the
largest. It runs under a real launcher (torchrun), so the monitor finds it as a rank.
"""

import os
import sys
import time

iters = int(sys.argv[1])
rank = int(os.environ["RANK"])
if rank == int(os.environ["WORLD_SIZE"]) - 1:
    for it in range(1, iters + 1):
        time.sleep(0.2)
        print(f" iteration {it:8d}/{iters:8d} | elapsed time per iteration (ms): 200.0 |"
              f" lm loss: {10.0 / it:.6E} | TFLOPs: 0.01 |", flush=True)
for after, alloc in ((1, 500.0), (iters, 1000.0)):  # the kit keeps the largest of each field
    print(f"[Rank {rank}] (after {after} iterations) memory (MB) | allocated: {alloc / 2 + rank}"
          f" | max allocated: {alloc + 10 * rank} | reserved: {2048.0 + 10 * rank}"
          f" | max reserved: {2048.0 + 10 * rank}", flush=True)
