"""A small, readable GPT (nanoGPT style) in plain torch, with Megatron-style TP hooks.

token + position embedding -> L x [LN -> causal self-attention -> +res, LN -> MLP(4h, GELU) -> +res]
-> final LN -> LM head tied to the token embedding. The vocabulary is padded up to a
multiple of 128 * TP (Megatron's ``make_vocab_size_divisible_by``); padded rows are never
targets. Attention is ``F.scaled_dot_product_attention(is_causal=True)`` (flash kernel on
CPU and GPU). No dropout: this is a throughput workload.

Each layer initialises from its own generator seeded by (seed, layer index), so the initial
model is the same whatever the TP degree or pipeline split. Under TP the embedding and the
LM head are replicated (not vocab-parallel); only the block linears are split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from kit.flops import padded_vocab
from kit.workload.tensor_parallel import (
    NO_TP,
    ColumnParallelLinear,
    RowParallelLinear,
    TPGroup,
    scaled_std,
)


@dataclass(frozen=True)
class GPTConfig:
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    seq: int = 1024
    vocab: int = 50257  # as given; the model uses padded_vocab
    tp: int = 1
    seed: int = 1234
    checkpoint_activations: bool = False

    @property
    def padded_vocab(self) -> int:
        return padded_vocab(self.vocab, self.tp)

    def n_params(self) -> int:
        """Parameters of the whole (unsplit) model, embeddings included, head tied."""
        h, L = self.hidden, self.layers
        return self.padded_vocab * h + self.seq * h + L * (12 * h * h + 13 * h) + 2 * h


def _gen(seed: int, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed * 100_003 + index)
    return g


class Embedding(nn.Module):
    """Token + learned position embedding. ``head`` reuses ``wte`` as the tied LM head."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        g = _gen(cfg.seed, 0)
        self.wte = nn.Embedding(cfg.padded_vocab, cfg.hidden)
        self.wpe = nn.Embedding(cfg.seq, cfg.hidden)
        with torch.no_grad():
            self.wte.weight.normal_(0.0, 0.02, generator=g)
            self.wpe.weight.normal_(0.0, 0.01, generator=g)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.size(1)
        pos = torch.arange(t, device=idx.device)
        return self.wte(idx) + self.wpe(pos)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.wte.weight)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, tp: TPGroup, g: torch.Generator):
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden {cfg.hidden} not divisible by heads {cfg.heads}")
        if cfg.heads % tp.size:
            raise ValueError(f"heads {cfg.heads} not divisible by tp {tp.size}")
        self.head_dim = cfg.hidden // cfg.heads
        self.local_heads = cfg.heads // tp.size
        # rows laid out [heads, 3, head_dim]: a contiguous TP slice holds whole heads
        self.qkv = ColumnParallelLinear(cfg.hidden, 3 * cfg.hidden, tp, g)
        self.proj = RowParallelLinear(cfg.hidden, cfg.hidden, tp, g, scaled_std(cfg.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, self.local_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (b, nh, t, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(b, t, self.local_heads * self.head_dim)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig, tp: TPGroup, g: torch.Generator):
        super().__init__()
        self.fc = ColumnParallelLinear(cfg.hidden, 4 * cfg.hidden, tp, g)
        self.proj = RowParallelLinear(4 * cfg.hidden, cfg.hidden, tp, g, scaled_std(cfg.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, index: int, tp: TPGroup = NO_TP):
        super().__init__()
        g = _gen(cfg.seed, index + 1)
        self.ln_1 = nn.LayerNorm(cfg.hidden)
        self.attn = CausalSelfAttention(cfg, tp, g)
        self.ln_2 = nn.LayerNorm(cfg.hidden)
        self.mlp = MLP(cfg, tp, g)
        self.checkpoint_activations = cfg.checkpoint_activations

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.checkpoint_activations and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class _CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy over the rows of ``logits`` (N x V) that keeps one N x V buffer.

    Same value and gradient as ``F.cross_entropy``: the forward's log-softmax buffer becomes
    the gradient in place (exp -> softmax, minus one at the targets, times grad/N in the
    backward), instead of log_softmax's output plus, in the backward, a zero-filled N x V
    gradient, a scatter and log_softmax's backward. With a 50k vocabulary the loss is a
    large share of a small model's step on CPU, where each fresh N x V buffer also costs
    page faults. The backward consumes the buffer: no ``retain_graph`` through the loss.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        buf = torch.log_softmax(logits.float(), dim=-1)
        loss = -buf.gather(1, targets[:, None]).mean()
        buf.exp_()  # softmax
        buf[torch.arange(buf.size(0), device=buf.device), targets] -= 1.0
        ctx.in_dtype = logits.dtype
        ctx.save_for_backward(buf)
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (buf,) = ctx.saved_tensors
        return buf.mul_(grad_out / buf.size(0)).to(ctx.in_dtype), None


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (fp32 math, also under bf16 autocast)."""
    logits = logits.reshape(-1, logits.size(-1))
    if not torch.is_grad_enabled() or not logits.requires_grad:
        return F.cross_entropy(logits.float(), targets.reshape(-1))
    return _CrossEntropy.apply(logits, targets.reshape(-1))


class GPT(nn.Module):
    """The whole model on one rank (TP-split blocks when tp.size > 1)."""

    def __init__(self, cfg: GPTConfig, tp: TPGroup = NO_TP):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg, i, tp) for i in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.embed.head(self.ln_f(x))
        if targets is None:
            return logits
        return lm_loss(logits, targets)


# --- pipeline-parallel pieces (deepspeed.pipe.PipelineModule takes a flat list of layers) ---

class FinalNorm(nn.LayerNorm):
    pass


def tied_head_forward(embedding: Embedding, x: torch.Tensor) -> torch.Tensor:
    return embedding.head(x)


def pipeline_specs(cfg: GPTConfig, tp: TPGroup = NO_TP) -> list:
    """LayerSpecs for deepspeed.pipe: tied embedding, blocks, final LN, tied LM head."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    specs: list = [TiedLayerSpec("embed", Embedding, cfg, tied_weight_attr=["wte.weight"])]
    specs += [LayerSpec(Block, cfg, i, tp) for i in range(cfg.layers)]
    specs.append(LayerSpec(FinalNorm, cfg.hidden))
    specs.append(TiedLayerSpec("embed", Embedding, cfg, forward_fn=tied_head_forward,
                               tied_weight_attr=["wte.weight"]))
    return specs
