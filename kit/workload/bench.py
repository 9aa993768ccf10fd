"""Tokens/s of the workload's GPT against Hugging Face GPT-2 on the same shape (plain torch,
fwd + bwd + AdamW step, one process; no DeepSpeed). Needs ``transformers`` importable.

    python -m kit.workload.bench --layers 2 --hidden 256 --heads 4 --seq 256 --batch 4
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def _time(model, fwd, x, y, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    for i in range(steps + 2):
        if i == 2:
            t0 = time.perf_counter()
        loss = fwd(model, x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss)
    return x.numel() * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser()
    for k, v in (("layers", 2), ("hidden", 256), ("heads", 4), ("seq", 256), ("batch", 4),
                 ("vocab", 50257), ("steps", 5), ("rounds", 3)):
        p.add_argument(f"--{k}", type=int, default=v)
    p.add_argument("--hf-dropout", type=float, default=0.1, help="HF GPT2Config default is 0.1")
    a = p.parse_args()
    if os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from transformers import GPT2Config, GPT2LMHeadModel

    from kit.workload.model import GPT, GPTConfig

    torch.manual_seed(0)
    ours = GPT(GPTConfig(layers=a.layers, hidden=a.hidden, heads=a.heads, seq=a.seq, vocab=a.vocab)).train()
    cfg = GPT2Config(n_layer=a.layers, n_embd=a.hidden, n_head=a.heads, n_positions=a.seq,
                                    vocab_size=a.vocab, resid_pdrop=a.hf_dropout, embd_pdrop=a.hf_dropout,
                                    attn_pdrop=a.hf_dropout)
    cfg._attn_implementation = "sdpa"
    hf = GPT2LMHeadModel(cfg).train()
    x = torch.randint(0, a.vocab, (a.batch, a.seq))
    y = torch.randint(0, a.vocab, (a.batch, a.seq))
    r_ours, r_hf = [], []
    for _ in range(a.rounds):  # interleaved: a busy machine slows both alike
        r_ours.append(_time(ours, lambda m, x, y: m(x, y), x, y, a.steps))
        r_hf.append(_time(hf, lambda m, x, y: m(input_ids=x, labels=x).loss, x, y, a.steps))
    bo, bh = max(r_ours), max(r_hf)
    print(f"kit GPT: {bo:.0f} tokens/s  HF GPT-2 (sdpa, dropout {a.hf_dropout}): {bh:.0f} tokens/s  "
          f"ratio {bo / bh:.2f}x  threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
