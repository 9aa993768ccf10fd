"""CLI: ``python -m kit.workload [options]`` (or ``torchrun --nproc-per-node N -m kit.workload``)."""

from __future__ import annotations

import argparse
import sys

from kit.workload.train import Args, Fault, UsageError, run

PROG = "kit-workload"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m kit.workload", description="Built-in GPT training workload (DeepSpeed).")
    d = Args()
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--seq", type=int, default=d.seq, help="sequence length")
    p.add_argument("--vocab", type=int, default=d.vocab, help="padded to a multiple of 128*tp")
    p.add_argument("--micro-batch", type=int, default=d.micro_batch)
    p.add_argument("--global-batch", type=int, default=d.global_batch)
    p.add_argument("--tp", type=int, default=d.tp, help="tensor-parallel degree")
    p.add_argument("--pp", type=int, default=d.pp, help="pipeline-parallel degree")
    p.add_argument("--zero", type=int, default=d.zero, choices=(0, 1, 2, 3), help="ZeRO stage")
    p.add_argument("--iters", type=int, default=d.iters)
    p.add_argument("--warmup-iters", type=int, default=d.warmup_iters,
                   help="learning-rate warmup iterations (then cosine decay to lr/10)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--checkpoint-activations", action="store_true")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default=d.dtype,
                   help="bf16 = torch.autocast(bf16) with fp32 master weights")
    p.add_argument("--data", default=d.data, help="'synthetic' or a flat uint16 token file")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (also KIT_WORKLOAD_COMPILE=1); the first iteration compiles")
    p.add_argument("--log-interval", type=int, default=d.log_interval)
    p.add_argument("--fault", action="append", default=[], metavar="KIND@ITER[:RANK]",
                   help="inject a fault: hang|crash|segv at iteration ITER on RANK (default: all ranks)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    try:
        faults = [Fault.parse(f) for f in ns.fault]
    except ValueError as e:
        parser.error(str(e))
    args = Args(layers=ns.layers, hidden=ns.hidden, heads=ns.heads, seq=ns.seq, vocab=ns.vocab,
                micro_batch=ns.micro_batch, global_batch=ns.global_batch, tp=ns.tp, pp=ns.pp,
                zero=ns.zero, iters=ns.iters, warmup_iters=ns.warmup_iters, seed=ns.seed, lr=ns.lr,
                min_lr=ns.lr / 10, checkpoint_activations=ns.checkpoint_activations, dtype=ns.dtype,
                data=ns.data, log_interval=ns.log_interval, compile=ns.compile, faults=faults)
    try:
        return run(args)
    except UsageError as e:
        parser.error(str(e))
    except ValueError as e:
        if str(e).startswith("--data"):
            parser.error(str(e))
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
