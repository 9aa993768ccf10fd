"""STAND-IN for DeepSpeedFugaku's ``pretrain_gpt.py`` (Megatron-DeepSpeed) — tests only.

CI cannot fetch DeepSpeedFugaku, so the dsf-* recipes' paths (every launcher, the rank
wrapper, the recipe's env/workdir, the parser, program provenance) are tested with this
program in its place. It honours only what the kit relies on:

- torchrun's contract, read the way Megatron reads it: ``RANK`` and ``WORLD_SIZE`` from
  the environment, ``LOCAL_RANK`` indexed directly (``deepspeed.zero.Init`` does:
  a ``KeyError`` when a launcher did not set it), then ``init_process_group`` on gloo with
  ``env://`` (MASTER_ADDR/MASTER_PORT). No MPI variable is looked at;
- Megatron's command-line flags as the dsf recipes pass them (argparse rejects any other,
  as Megatron's does), the data prefix's ``.bin``/``.idx`` and the vocabulary/merges files
  must exist;
- Megatron's log format: per iteration, from the last rank, ``iteration N/ M | … |
  elapsed time per iteration (ms): X | … | number of skipped iterations: K | number of nan
  iterations: K | samples per second: … | TFLOPs: … |``, and after the first iteration
  ``[Rank 0] (after 1 iterations) CPU memory (MB) | used: … | total: …`` (psutil's node
  figures, as DeepSpeedFugaku prints them).

Each iteration does real work on every rank (a small matmul and an all-reduce of its
result), so the ranks are real torch.distributed processes. Test knobs (environment):
``STANDIN_TIME_UNIT=s`` prints ``elapsed time per iteration (s)`` (another fork's unit),
``=us`` a unit no fork uses (the kit must not take it for a time);
``STANDIN_SKIP_ITERS=3,4`` / ``STANDIN_NAN_ITERS=5`` mark those iterations skipped / NaN
(their counters 1, the loss ``nan``); ``STANDIN_SLEEP_S`` adds a sleep per iteration.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Megatron-LM stand-in (tests only)")
    a = p.add_argument
    for name in ("--num-layers", "--hidden-size", "--num-attention-heads", "--micro-batch-size",
                 "--global-batch-size", "--seq-length", "--max-position-embeddings", "--train-iters",
                 "--lr-decay-iters", "--seed", "--log-interval", "--save-interval", "--eval-interval",
                 "--eval-iters", "--num-workers", "--tensor-model-parallel-size", "--pipeline-model-parallel-size"):
        a(name, type=int, required=name in ("--num-layers", "--hidden-size", "--num-attention-heads",
                                            "--micro-batch-size", "--seq-length", "--train-iters"))
    for name in ("--lr", "--min-lr", "--weight-decay", "--clip-grad", "--lr-warmup-fraction"):
        a(name, type=float)
    a("--data-path", nargs="+", required=True)
    a("--vocab-file", required=True)
    a("--merge-file", required=True)
    a("--data-impl", choices=["lazy", "cached", "mmap", "infer"])
    a("--split")
    a("--distributed-backend", choices=["nccl", "gloo", "ccl", "mpi"], default="nccl")
    a("--lr-decay-style", choices=["constant", "linear", "cosine"])
    a("--DDP-impl", choices=["local", "torch"], default="local")
    for flag in ("--no-cuda", "--use-cpu-initialization", "--checkpoint-activations", "--no-load-rng"):
        a(flag, action="store_true")
    return p.parse_args(argv)


def _iters(name: str) -> set[int]:
    return {int(x) for x in os.environ.get(name, "").split(",") if x.strip()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for prefix in args.data_path:
        if not prefix.replace(".", "").isdigit():  # blends interleave weights and prefixes
            for ext in (".bin", ".idx"):
                if not Path(prefix + ext).is_file():
                    print(f"stand-in: data file {prefix + ext} not found", file=sys.stderr)
                    return 1
    for f in (args.vocab_file, args.merge_file):
        Path(f).read_bytes()  # FileNotFoundError, as Megatron's tokenizer would

    rank = int(os.getenv("RANK", "0"))  # megatron/arguments.py
    world = int(os.getenv("WORLD_SIZE", "1"))
    local_rank = int(os.environ["LOCAL_RANK"])  # deepspeed.zero.Init: KeyError without it
    import psutil
    import torch
    import torch.distributed as dist

    backend = "gloo" if args.distributed_backend in ("gloo", "mpi") and not torch.cuda.is_available() else \
        args.distributed_backend
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    torch.manual_seed((args.seed or 1234) + rank)
    h = args.hidden_size
    w = torch.randn(h, h) / math.sqrt(h)
    x = torch.randn(args.micro_batch_size * args.seq_length, h)
    gbs = args.global_batch_size or args.micro_batch_size * world
    unit = os.environ.get("STANDIN_TIME_UNIT", "ms")
    skip, nan = _iters("STANDIN_SKIP_ITERS"), _iters("STANDIN_NAN_ITERS")
    pause = float(os.environ.get("STANDIN_SLEEP_S", "0"))
    print(f"> stand-in: rank {rank} of {world}, local rank {local_rank}, backend {backend}", flush=True)
    for it in range(1, args.train_iters + 1):
        t0 = time.perf_counter()
        for _ in range(max(1, gbs // (args.micro_batch_size * world))):
            y = torch.tanh(x @ w)
            loss = y.pow(2).mean()
            dist.all_reduce(loss)
        if pause:
            time.sleep(pause)
        dist.barrier()
        elapsed = time.perf_counter() - t0
        lm_loss = float("nan") if it in nan else float(loss) / world
        if rank == world - 1:
            scale = {"s": 1.0, "ms": 1e3}.get(unit, 1e6)  # any other unit: printed as (us)
            t = f"elapsed time per iteration ({unit if scale != 1e6 else 'us'}): {elapsed * scale:.4f}"
            print(f" iteration {it:8d}/{args.train_iters:8d} | consumed samples: {it * gbs:12d} | "
                  f"consumed tokens: {it * gbs * args.seq_length:12d} | {t} | learning rate: {args.lr or 0:.3E} | "
                  f"global batch size: {gbs:5d} | lm loss: {lm_loss:.6E} | loss scale: 1.0 | "
                  f"number of skipped iterations: {int(it in skip):3d} | number of nan iterations: {int(it in nan):3d} | "
                  f"samples per second: {gbs / elapsed:.3f} | TFLOPs: 0.00 |", flush=True)
        if it == 1 and rank == 0:
            vm = psutil.virtual_memory()
            mb = 1024.0 * 1024.0
            print(f"[Rank {rank}] (after 1 iterations) CPU memory (MB) | used: {(vm.total - vm.available) / mb:.2f} | "
                  f"total: {vm.total / mb:.2f} | avail: {vm.available / mb:.2f} | used percent: {vm.percent}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
