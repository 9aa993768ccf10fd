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

import math
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
        # exact (erf) GELU, Megatron's default (GPT-2's tanh form is --openai-gelu there);
        # on CPU its kernel is also ~1.6x faster than the tanh form
        return self.proj(F.gelu(self.fc(x)))


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


class _BufferPool:
    """Reuses the loss's N x V float32 buffer across steps on CPU.

    glibc returns every block over 32 MiB to the kernel on free (mmap), so a fresh N x V
    buffer page-faults its ~400 MB in again on every step. A buffer is taken in the forward
    and given back in the backward, so overlapping micro-batches (pipeline schedules) each
    get their own. On CUDA the caching allocator already does this: no pool there.
    """

    def __init__(self) -> None:
        self._free: dict[tuple, list[torch.Tensor]] = {}

    def take(self, shape: tuple[int, int], device: torch.device) -> torch.Tensor:
        if device.type != "cpu":
            return torch.empty(shape, dtype=torch.float32, device=device)
        free = self._free.get(shape)
        return free.pop() if free else torch.empty(shape, dtype=torch.float32)

    def give(self, buf: torch.Tensor) -> None:
        if buf.device.type == "cpu":
            self._free.setdefault(tuple(buf.shape), []).append(buf)


_BUFFERS = _BufferPool()


# -log p(target) is exact while p is well above float32's smallest normal (1.2e-38); rows
# below this (a target ~69 nats under the row's log-sum-exp) get their loss recomputed
_TINY = 1e-30
_RECOMPUTE_ROWS = 1024  # rows per GEMM when recomputing (bounds the extra memory)


def _target_nll(buf: torch.Tensor, targets: torch.Tensor, xc: torch.Tensor, wc: torch.Tensor, *,
                host_sync: bool) -> torch.Tensor:
    """Per-row -log softmax(logits)[target], turning ``buf`` (the logits) into the softmax.

    ``host_sync`` (CPU, where it is free): one in-place softmax pass, then -log p(target);
    rows where p underflows are found (a host sync) and recomputed from their logits, a
    GEMM per ``_RECOMPUTE_ROWS`` rows. Otherwise (CUDA), no host sync in the middle of the
    step and no N x V temporary (``torch.logsumexp`` makes one): the row maximum m before
    the softmax and the largest probability after it, 1/sum exp(x - m), which never
    underflows, give log-sum-exp = m - log max p; two more read passes, cheap on device memory.
    """
    if not host_sync:
        row_max = buf.amax(dim=-1)
        target_logit = buf.gather(1, targets[:, None]).squeeze(1)
        torch.softmax(buf, dim=-1, out=buf)
        return row_max - torch.log(buf.amax(dim=-1)) - target_logit
    torch.softmax(buf, dim=-1, out=buf)  # one row-wise pass (max, exp and sum, scale)
    nll = -torch.log(buf.gather(1, targets[:, None]).squeeze(1))
    lost = (nll > -math.log(_TINY)).nonzero().squeeze(1)
    for rows in (lost.split(_RECOMPUTE_ROWS) if lost.numel() else ()):
        logits = torch.mm(xc[rows], wc.t()).float()
        nll[rows] = torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[rows, None]).squeeze(1)
    return nll


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``x @ weight.T`` (the LM head and the loss as one op).

    Same value and gradients as ``F.cross_entropy(F.linear(x, weight), targets)``, with one
    N x V float32 buffer instead of four: the logits GEMM writes into a reused buffer, the
    softmax runs in place (on CPU a single pass: each row is still in cache for its three
    sweeps; see ``_target_nll`` for the loss), and the buffer then becomes
    d(loss)/d(logits) in place (minus one at the targets); the backward's two GEMMs read it
    and fold the 1/N and the incoming gradient into the GEMM's alpha. With a 50k vocabulary
    this is a large share of a small model's step on CPU. Under bf16 autocast the GEMMs run in bf16
    and the softmax in fp32, as autocast would do.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(dtype), weight.to(dtype)
            buf = _BUFFERS.take((x.size(0), weight.size(0)), x.device)
            if dtype == torch.float32:
                torch.mm(xc, wc.t(), out=buf)
            else:
                buf.copy_(torch.mm(xc, wc.t()))
            loss = _target_nll(buf, targets, xc, wc, host_sync=buf.device.type == "cpu").mean()
            buf[torch.arange(buf.size(0), device=buf.device), targets] -= 1.0
        ctx.save_for_backward(xc, wc, buf)
        ctx.dtypes = (x.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        xc, wc, buf = ctx.saved_tensors
        scale = float(grad_out) / buf.size(0)
        g = buf if xc.dtype == torch.float32 else buf.to(xc.dtype)
        grad_x = torch.addmm(xc.new_empty(xc.shape), g, wc, beta=0, alpha=scale)
        grad_w = torch.addmm(wc.new_empty(wc.shape), g.t(), xc, beta=0, alpha=scale)
        del g
        _BUFFERS.give(buf)
        return grad_x.to(ctx.dtypes[0]), grad_w.to(ctx.dtypes[1]), None, None


@torch.compiler.disable  # GEMMs and in-place passes: nothing for inductor to fuse
def lm_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of the LM head ``x @ weight.T`` (fp32 softmax, also
    under bf16 autocast). ``x``: (..., hidden); ``targets``: (...)."""
    x = x.reshape(-1, x.size(-1))
    targets = targets.reshape(-1)
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        return F.cross_entropy(F.linear(x, weight).float(), targets)
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return _LinearCrossEntropy.apply(x, weight, targets, dtype)


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
        x = self.ln_f(x)
        if targets is None:
            return self.embed.head(x)
        return lm_loss(x, self.embed.wte.weight, targets)


# --- pipeline-parallel pieces (deepspeed.pipe.PipelineModule takes a flat list of layers) ---

class FinalNorm(nn.LayerNorm):
    pass


def tied_head_forward(embedding: Embedding, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last pipeline layer: hands its input and the tied weight to ``pipeline_loss``,
    which runs the LM head and the loss as one op (``lm_loss``)."""
    return x, embedding.wte.weight


def pipeline_loss(outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    return lm_loss(*outputs, targets)


def pipeline_specs(cfg: GPTConfig, tp: TPGroup = NO_TP) -> list:
    """LayerSpecs for deepspeed.pipe: tied embedding, blocks, final LN, tied LM head."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    specs: list = [TiedLayerSpec("embed", Embedding, cfg, tied_weight_attr=["wte.weight"])]
    specs += [LayerSpec(Block, cfg, i, tp) for i in range(cfg.layers)]
    specs.append(LayerSpec(FinalNorm, cfg.hidden))
    specs.append(TiedLayerSpec("embed", Embedding, cfg, forward_fn=tied_head_forward,
                               tied_weight_attr=["wte.weight"]))
    return specs
