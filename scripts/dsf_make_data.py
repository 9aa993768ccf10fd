"""Make a small GPT-2-format vocabulary and a JSON-lines corpus for DeepSpeedFugaku's tiny runs.

GPT-2's own ``gpt2-vocab.json`` / ``gpt2-merges.txt`` ship with no package installed here
(and nothing may be downloaded), so this trains a byte-level BPE with GPT-2's
pre-tokenizer pattern and byte-to-unicode table on text that is already on the machine
(DeepSpeedFugaku's own Markdown and Python files), and writes the files in GPT-2's
format: ``vocab.json`` ({token: id}, the 256 byte symbols first, then one entry per merge,
then ``<|endoftext|>``) and ``merges.txt`` (``#version: 0.2`` then one merge per line).
Megatron's ``GPT2BPETokenizer`` reads them unchanged. The vocabulary has
256 + MERGES + 1 entries (640 by default; Megatron pads it to a multiple of 128).

    python scripts/dsf_make_data.py --source DSF_DIR --out DIR [--merges 383]

writes DIR/vocab.json, DIR/merges.txt and DIR/corpus.jsonl (one {"text": ...} per file),
deterministically (files in sorted order). Used by scripts/dsf-setup.sh.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import regex

# GPT-2's pre-tokenizer (megatron/tokenizer/gpt2_tokenization.py)
PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
MAX_CORPUS_BYTES = 2_000_000
MAX_TRAIN_BYTES = 300_000


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def corpus_files(source: Path) -> list[Path]:
    files = sorted(p for pat in ("*.md", "megatron/**/*.py") for p in source.glob(pat) if p.is_file())
    return files


def train_bpe(text: str, merges: int) -> list[tuple[str, str]]:
    """The first ``merges`` merges of a byte-level BPE trained on ``text`` (ties: first pair seen)."""
    b2u = bytes_to_unicode()
    words = collections.Counter("".join(b2u[b] for b in w.encode("utf-8")) for w in PATTERN.findall(text))
    vocab = {tuple(w): c for w, c in words.items()}
    out: list[tuple[str, str]] = []
    while len(out) < merges:
        pairs: collections.Counter = collections.Counter()
        for sym, c in vocab.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        out.append(best)
        merged = best[0] + best[1]
        new: dict[tuple[str, ...], int] = {}
        for sym, c in vocab.items():
            if best[0] not in sym:
                new[sym] = new.get(sym, 0) + c
                continue
            s, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == best[0] and sym[i + 1] == best[1]:
                    s.append(merged)
                    i += 2
                else:
                    s.append(sym[i])
                    i += 1
            t = tuple(s)
            new[t] = new.get(t, 0) + c
        vocab = new
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, required=True, help="DeepSpeedFugaku checkout (text to train on)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--merges", type=int, default=383)
    a = ap.parse_args(argv)
    docs, size = [], 0
    for f in corpus_files(a.source):
        t = f.read_text(encoding="utf-8", errors="replace")
        if size + len(t) > MAX_CORPUS_BYTES:
            break
        docs.append(t)
        size += len(t)
    merges = train_bpe("".join(docs)[:MAX_TRAIN_BYTES], a.merges)
    if len(merges) < a.merges:
        raise SystemExit(f"only {len(merges)} merges could be learnt from {a.source}; pass --merges {len(merges)}")
    # two merges can spell the same token ("a"+"bc", "ab"+"c"): it gets one id
    symbols = list(dict.fromkeys([*bytes_to_unicode().values(), *(x + y for x, y in merges), "<|endoftext|>"]))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}, ensure_ascii=False))
    (a.out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{x} {y}\n" for x, y in merges), encoding="utf-8")
    with (a.out / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"text": d}) + "\n")
    print(f"vocab {len(symbols)} entries ({len(merges)} merges), corpus {len(docs)} documents, {size} characters")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
