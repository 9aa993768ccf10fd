"""Megatron-style tensor parallelism: column- and row-parallel linear layers.

A transformer block splits as in Megatron-LM (Shoeybi et al. 2019):

* ``ColumnParallelLinear`` holds a slice of the *output* features (rows of the weight).
  Its input is replicated across the TP group; ``copy_to_tp`` is the identity forward
  and all-reduces the input gradient backward (each rank only saw its own slice's share).
* ``RowParallelLinear`` holds a slice of the *input* features (columns of the weight).
  Each rank computes a partial sum; ``reduce_from_tp`` all-reduces it forward and is the
  identity backward. Its bias is replicated and added after the reduction.

Attention's QKV projection is column-parallel with the full weight laid out per head
(``[heads, 3, head_dim]`` rows), so contiguous slices give each rank whole heads; the
output projection is row-parallel. The MLP is column (h -> 4h) then row (4h -> h).

Every layer draws its *full* weight from its own seeded generator and keeps its slice, so
a model has the same initial function at any TP degree (and any PP split).
Sharded parameters carry ``tensor_model_parallel = True`` (DeepSpeed's grad-norm code
counts them on every TP rank, replicated ones only once).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class TPGroup:
    """The tensor-parallel process group this rank belongs to (size 1 = no TP)."""

    def __init__(self, group=None, size: int = 1, rank: int = 0):
        self.group = group
        self.size = size
        self.rank = rank

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"TPGroup(size={self.size}, rank={self.rank})"


NO_TP = TPGroup()


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp: TPGroup):
        ctx.tp = tp
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.tp.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tp: TPGroup):
        x = x.contiguous()
        dist.all_reduce(x, group=tp.group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_to_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.size == 1 else _CopyToTP.apply(x, tp)


def reduce_from_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.size == 1 else _ReduceFromTP.apply(x, tp)


def _full_normal(out_f: int, in_f: int, std: float, gen: torch.Generator) -> torch.Tensor:
    w = torch.empty(out_f, in_f)
    w.normal_(0.0, std, generator=gen)
    return w


class ColumnParallelLinear(nn.Module):
    """y[:, shard] = x @ W[shard].T + b[shard]; the input is replicated over TP."""

    def __init__(self, in_f: int, out_f: int, tp: TPGroup, gen: torch.Generator, std: float = 0.02):
        super().__init__()
        if out_f % tp.size:
            raise ValueError(f"output features {out_f} not divisible by tp={tp.size}")
        self.tp = tp
        shard = out_f // tp.size
        full = _full_normal(out_f, in_f, std, gen)
        self.weight = nn.Parameter(full[tp.rank * shard:(tp.rank + 1) * shard].clone())
        self.bias = nn.Parameter(torch.zeros(shard))
        if tp.size > 1:
            self.weight.tensor_model_parallel = True
            self.bias.tensor_model_parallel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tp(x, self.tp), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = sum_over_TP(x[:, shard] @ W[:, shard].T) + b; the input arrives already split."""

    def __init__(self, in_f: int, out_f: int, tp: TPGroup, gen: torch.Generator, std: float = 0.02):
        super().__init__()
        if in_f % tp.size:
            raise ValueError(f"input features {in_f} not divisible by tp={tp.size}")
        self.tp = tp
        shard = in_f // tp.size
        full = _full_normal(out_f, in_f, std, gen)
        self.weight = nn.Parameter(full[:, tp.rank * shard:(tp.rank + 1) * shard].clone())
        self.bias = nn.Parameter(torch.zeros(out_f))
        if tp.size > 1:
            self.weight.tensor_model_parallel = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.linear(x, self.weight, self.bias)
        return reduce_from_tp(F.linear(x, self.weight), self.tp) + self.bias


def scaled_std(layers: int, std: float = 0.02) -> float:
    """GPT-2/Megatron scaled init for the residual output projections."""
    return std / math.sqrt(2.0 * layers)
