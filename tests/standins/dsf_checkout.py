"""STAND-IN for a DeepSpeedFugaku git checkout (``kit image build --dsf DIR``) — tests only.

CI cannot fetch DeepSpeedFugaku. This makes a git repository laid out like it, holding only
what the image's set-up (``scripts/dsf-setup.sh`` steps 3-5) and a ``dsf-tiny`` run touch:

- ``pretrain_gpt.py``: ``megatron_standin.py`` (torchrun's contract, Megatron's flags and
  log format; see its docstring);
- ``megatron/training.py``: only the lines ``scripts/dsf-import-guards.patch`` changes and
  its context (the patch's pre-image, taken from the patch itself), so the real patch
  applies with ``git apply`` as on the real tree;
- ``megatron/data/Makefile`` + ``helpers.cpp``: a Makefile shaped like Megatron's (its
  ``LIBEXT`` hard-codes a python3.9-config that does not exist, as DeepSpeedFugaku's names
  a Fugaku path) building a one-function pybind11 module, so step 4 compiles for real;
- ``tools/preprocess_data.py``: writes ``PREFIX_text_document.bin``/``.idx`` from the
  corpus (bytes, not Megatron's indexed format: the stand-in program only checks they exist);
- ``README.md``: text for ``scripts/dsf_make_data.py`` to train the tiny vocabulary on.

Committed with fixed dates and author, so the same inputs give the same commit (and a
podman build of it hits its layer cache).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

MAKEFILE = """\
CXXFLAGS += -O3 -Wall -shared -std=c++11 -fPIC
CPPFLAGS += $(shell python3 -m pybind11 --includes)
LIBNAME = helpers
LIBEXT = $(shell /nonexistent/fugaku/bin/python3.9-config --extension-suffix)

default: $(LIBNAME)$(LIBEXT)

%$(LIBEXT): %.cpp
\t$(CXX) $(CXXFLAGS) $(CPPFLAGS) $< -o $@
"""

HELPERS = """\
// stand-in for megatron/data/helpers.cpp: one function, built as Megatron's is
#include <pybind11/pybind11.h>
PYBIND11_MODULE(helpers, m) { m.def("standin", []() { return 1; }); }
"""

PREPROCESS = '''\
"""STAND-IN for tools/preprocess_data.py: PREFIX_text_document.bin/.idx from a JSON-lines corpus."""
import argparse
import json

p = argparse.ArgumentParser()
for flag in ("--input", "--output-prefix", "--vocab-file", "--merge-file", "--tokenizer-type", "--dataset-impl",
             "--workers"):
    p.add_argument(flag)
p.add_argument("--append-eod", action="store_true")
a = p.parse_args()
texts = [json.loads(line)["text"] for line in open(a.input, encoding="utf-8")]
json.load(open(a.vocab_file, encoding="utf-8"))  # the vocabulary must be readable
with open(a.output_prefix + "_text_document.bin", "wb") as f:
    f.write("".join(texts).encode("utf-8"))
with open(a.output_prefix + "_text_document.idx", "wb") as f:
    f.write(b"MMIDIDX\\x00\\x00" + len(texts).to_bytes(8, "little"))
'''


def patch_preimage(patch: str) -> str:
    """megatron/training.py as the patch expects it: each hunk's context and removed lines."""
    lines: list[str] = []
    for hunk in re.split(r"^@@[^\n]*\n", patch, flags=re.M)[1:]:
        for ln in hunk.splitlines():
            if ln.startswith((" ", "-")):
                lines.append(ln[1:])
            elif ln.startswith("diff --git"):
                break
        lines.append("")  # hunks apart
    return "\n".join(lines) + "\n"


def make_checkout(dest: Path, *, remote: str = "https://github.com/Fugaku-LLM/DeepSpeedFugaku") -> Path:
    """A committed stand-in checkout at ``dest`` (created); returns ``dest``."""
    dest.mkdir(parents=True)
    shutil.copyfile(HERE / "megatron_standin.py", dest / "pretrain_gpt.py")
    (dest / "megatron" / "data").mkdir(parents=True)
    (dest / "megatron" / "__init__.py").write_text("")
    (dest / "megatron" / "training.py").write_text(
        patch_preimage((REPO / "scripts" / "dsf-import-guards.patch").read_text()))
    (dest / "megatron" / "data" / "Makefile").write_text(MAKEFILE)
    (dest / "megatron" / "data" / "helpers.cpp").write_text(HELPERS)
    (dest / "tools").mkdir()
    (dest / "tools" / "preprocess_data.py").write_text(PREPROCESS)
    # text to learn 383 merges from (dsf_make_data.py reads *.md and megatron/**/*.py)
    (dest / "README.md").write_text((REPO / "containers" / "README.md").read_text())
    env = {**os.environ, "GIT_AUTHOR_NAME": "stand-in", "GIT_AUTHOR_EMAIL": "standin@example.invalid",
           "GIT_COMMITTER_NAME": "stand-in", "GIT_COMMITTER_EMAIL": "standin@example.invalid",
           "GIT_AUTHOR_DATE": "2024-05-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-05-01T00:00:00Z"}
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "stand-in"],
                 ["remote", "add", "origin", remote]):
        subprocess.run(["git", "-C", str(dest), *argv], check=True, env=env, capture_output=True)
    return dest
