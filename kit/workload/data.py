"""Training data: a synthetic token stream from the seed, or a flat uint16 token file.

Every iteration draws the *global* batch's start offsets from a generator seeded by
(seed, iteration), identically on every rank; a data-parallel rank then takes its own
micro-batches. So the data of an iteration does not depend on the parallel layout, and a
run is deterministic given the seed.

The synthetic stream is not uniform noise (the loss could not fall below ln V): tokens are
drawn from a skewed (power-law-like) unigram distribution and every other token follows
deterministically from its predecessor, so the loss visibly drops within a few iterations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SYNTHETIC_TOKENS = 1 << 20


def synthetic_stream(vocab: int, seed: int, n: int = SYNTHETIC_TOKENS) -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    toks = (u.pow(6.0) * vocab).long().clamp_(max=vocab - 1)
    # odd positions: a fixed function of the previous token (learnable bigram structure)
    toks[1::2] = (toks[0::2][: toks[1::2].numel()] * 31 + 7) % vocab
    return toks


class TokenSource:
    """Samples (input, target) windows of length ``seq`` from a token stream."""

    def __init__(self, spec: str, *, vocab: int, seq: int, seed: int):
        self.seq = seq
        self.seed = seed
        if spec == "synthetic":
            self.tokens = synthetic_stream(vocab, seed)
            self.description = "synthetic"
        else:
            path = Path(spec)
            if not path.is_file():
                raise ValueError(f"--data: no such file: {spec}")
            mm = np.memmap(path, dtype=np.uint16, mode="r")
            if mm.shape[0] < seq + 2:
                raise ValueError(f"--data: {spec} holds {mm.shape[0]} tokens, fewer than seq+2={seq + 2}")
            self.tokens = mm
            self.description = str(path)
        self.n = int(self.tokens.shape[0])
        self.vocab = vocab

    def _window(self, start: int) -> torch.Tensor:
        w = self.tokens[start:start + self.seq + 1]
        if isinstance(w, np.ndarray):
            w = torch.from_numpy(w.astype(np.int64))
        return w

    def batch(self, iteration: int, global_batch: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples lo..hi-1 of iteration ``iteration``'s global batch, as (x, y) int64 (hi-lo, seq)."""
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + iteration)
        starts = torch.randint(0, self.n - self.seq - 1, (global_batch,), generator=g)
        rows = torch.stack([self._window(int(s)) for s in starts[lo:hi]])
        if rows.max() >= self.vocab:
            raise ValueError(f"--data: token id {int(rows.max())} >= vocab {self.vocab}")
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
