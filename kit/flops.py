"""The TFLOPs column: Megatron-DeepSpeed's ``throughput_calculator`` and the table's definitions.

    B = global batch, f = 4 with activation checkpointing else 3,
    V = vocab padded up to a multiple of 128 * TP,
    F = 24 f B s L h^2 (1 + s/(6h) + V/(16 L h))      FLOPs per iteration
    TFLOPs per rank = F / (sec_per_iter * world_size * 1e12)
    TFLOPs (the table's column, per node) = per rank * ranks per node
    Est. Aggr. PetaFLOPs = TFLOPs * nodes / 1024      (the table's own definition: 1024)

Source: Megatron-DeepSpeed ``megatron/utils.py`` and the sweep's sibling files; see
``shared/reference/fugaku-facts.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def padded_vocab(vocab: int, tp: int = 1, multiple: int = 128) -> int:
    """Vocabulary padded the way Megatron pads it: up to a multiple of ``multiple * tp``."""
    step = multiple * tp
    return ((vocab + step - 1) // step) * step


def flops_per_iteration(
    *, layers: int, hidden: int, seq: int, vocab: int, global_batch: int,
    checkpoint_activations: bool = False, tp: int = 1,
) -> float:
    """Model FLOPs of one training iteration (forward + backward [+ recompute])."""
    f = 4 if checkpoint_activations else 3
    v = padded_vocab(vocab, tp)
    L, h, s, B = layers, hidden, seq, global_batch
    return 24.0 * f * B * s * L * h * h * (1.0 + s / (6.0 * h) + v / (16.0 * L * h))


@dataclass(frozen=True)
class Throughput:
    flops_per_iter: float
    tflops_per_rank: float
    tflops: float  # per node: the table's TFLOPs column
    est_aggr_pflops: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def throughput(
    *, layers: int, hidden: int, seq: int, vocab: int, global_batch: int, sec_per_iter: float,
    checkpoint_activations: bool = False, tp: int = 1, world_size: int = 1,
    ranks_per_node: int | None = None, nodes: int = 1,
) -> Throughput:
    """All of the table's throughput columns from a shape, a layout and a measured sec/it."""
    if not math.isfinite(sec_per_iter) or sec_per_iter <= 0:
        raise ValueError("sec_per_iter must be a positive finite number")
    if ranks_per_node is None:
        ranks_per_node = max(1, world_size // max(1, nodes))
    F = flops_per_iteration(
        layers=layers, hidden=hidden, seq=seq, vocab=vocab, global_batch=global_batch,
        checkpoint_activations=checkpoint_activations, tp=tp,
    )
    per_rank = F / (sec_per_iter * world_size * 1e12)
    per_node = per_rank * ranks_per_node
    return Throughput(
        flops_per_iter=F,
        tflops_per_rank=per_rank,
        tflops=per_node,
        est_aggr_pflops=per_node * nodes / 1024.0,
    )
