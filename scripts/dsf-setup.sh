#!/usr/bin/env bash
# Set up DeepSpeedFugaku (github.com/Fugaku-LLM/DeepSpeedFugaku) for the dsf-* recipes.
#
#   scripts/dsf-setup.sh [--prefix /opt/dsf] [--source URL|DIR] [--commit SHA] [--python PY] [--step N ...]
#
# Makes PREFIX/DeepSpeedFugaku (the recipes' vars.dsf) and PREFIX/data (their vocabulary and
# data), step by step, each step skipped when already done:
#   1. clone SOURCE and check out the pinned commit (the tip of 2024-05, after the sweep);
#   2. pip-install what its code imports and pip's DeepSpeed/torch do not bring
#      (sentencepiece nltk regex six pybind11: the `dsf` extra of pyproject.toml);
#   3. the patch step, scripts/dsf-import-guards.patch (documented, applied with git apply):
#      `import wandb` (top of megatron/training.py; logging only) and
#      `from deepspeed.compression.compress import ...` (gone in DeepSpeed >= 0.19) become
#      guarded imports. The patch is what provenance.json's program.script.diff_sha256
#      hashes; nothing else is changed;
#   4. build megatron/data's C++ helpers with this interpreter's extension suffix and
#      pybind11 (its Makefile hard-codes a Fugaku python3.9-config);
#   5. the tiny recipe's data: a 640-entry byte-level BPE vocabulary in GPT-2's file format
#      trained on the checkout's own text (scripts/dsf_make_data.py; GPT-2's files ship with
#      no package here) and an indexed dataset made by its tools/preprocess_data.py.
# GPT-2's real vocabulary and a corpus for dsf-gpt-124m / dsf-gpt-1.3b are the site's:
# put gpt2-vocab.json, gpt2-merges.txt and a data prefix under PREFIX/data, or --set vars.*.
# --step N (repeatable) runs only those steps: `kit image build --dsf DIR` runs steps 3, 4
# and 5 in the image on the tree of DIR's HEAD (step 1) after its pinned pip line (step 2).
set -euo pipefail

PREFIX=/opt/dsf
SOURCE=https://github.com/Fugaku-LLM/DeepSpeedFugaku
COMMIT=74753f95e34cdde9321bd9788c4bacdc1ed00fdb   # "Update copyright", the repository's tip
PY=${PYTHON:-python3}
STEPS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=$2; shift 2 ;;
    --source) SOURCE=$2; shift 2 ;;
    --commit) COMMIT=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --step) case "$2" in [1-5]) STEPS="$STEPS $2 " ;; *) echo "dsf-setup.sh: --step takes 1-5, not '$2'" >&2; exit 2 ;; esac; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "dsf-setup.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
DSF=$PREFIX/DeepSpeedFugaku
DATA=$PREFIX/data
step() { echo "== dsf-setup: $*"; }
want() { [ -z "$STEPS" ] || case "$STEPS" in *" $1 "*) true ;; *) false ;; esac; }

if want 1; then
step "1. checkout $COMMIT in $DSF"
if [ ! -d "$DSF/.git" ]; then
  mkdir -p "$PREFIX"
  git clone --quiet "$SOURCE" "$DSF"
fi
git -C "$DSF" cat-file -e "$COMMIT^{commit}" 2>/dev/null || git -C "$DSF" fetch --quiet origin
if [ "$(git -C "$DSF" rev-parse HEAD)" != "$COMMIT" ]; then
  git -C "$DSF" checkout --quiet "$COMMIT"
fi
case "$SOURCE" in /*|.*) git -C "$DSF" remote set-url origin https://github.com/Fugaku-LLM/DeepSpeedFugaku ;; esac
fi

if want 2; then
step "2. packages: sentencepiece nltk regex six pybind11"
"$PY" -m pip install --quiet sentencepiece nltk regex six pybind11
fi

if want 3; then
step "3. import guards (scripts/dsf-import-guards.patch)"
if git -C "$DSF" apply --reverse --check "$HERE/dsf-import-guards.patch" 2>/dev/null; then
  echo "   already applied"
else
  git -C "$DSF" apply "$HERE/dsf-import-guards.patch"
fi
fi

if want 4; then
step "4. megatron/data helpers"
EXT=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
make -s -C "$DSF/megatron/data" LIBEXT="$EXT" CPPFLAGS="$("$PY" -m pybind11 --includes)"
fi

if want 5; then
step "5. tiny vocabulary and dataset in $DATA"
if [ ! -f "$DATA/tiny_text_document.idx" ]; then
  mkdir -p "$DATA/tiny-src"
  "$PY" "$HERE/dsf_make_data.py" --source "$DSF" --out "$DATA/tiny-src"
  mv "$DATA/tiny-src/vocab.json" "$DATA/tiny-vocab.json"
  mv "$DATA/tiny-src/merges.txt" "$DATA/tiny-merges.txt"
  (cd "$DSF" && "$PY" tools/preprocess_data.py --input "$DATA/tiny-src/corpus.jsonl" \
      --output-prefix "$DATA/tiny" --vocab-file "$DATA/tiny-vocab.json" --merge-file "$DATA/tiny-merges.txt" \
      --tokenizer-type GPT2BPETokenizer --append-eod --dataset-impl mmap --workers 1 >/dev/null)
  rm -rf "$DATA/tiny-src"
fi
fi
echo "ready: kit run dsf-tiny --set vars.dsf=$DSF --set data=$DATA/tiny_text_document \\"
echo "       --set vars.vocab_file=$DATA/tiny-vocab.json --set vars.merge_file=$DATA/tiny-merges.txt"
echo "       (no --set needed with the default --prefix /opt/dsf)"
