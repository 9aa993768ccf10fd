"""Provenance: what ran, where, with what and under which job.

``collect()`` gathers everything a reader needs to trust and re-run a result: the kit's
version and git commit (with a dirty flag), the software the training command saw (taken
where it ran: on the host or inside the image), the machine, the scheduler's variables and
the training process's environment with secrets redacted. ``program()`` records the
training program itself: the repository of its script or module (remote, commit, dirty
flag, a hash of its local diff) and the sha256 of the data and vocabulary files its
command names; ``program_inside()`` takes the same record with an image's own kit, for a
program the image brings (``kit image build --dsf``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kit
from kit import hostinfo, rankexec
from kit.digest import sha256_file
from kit.bundle import atomic_write
from kit.bundle_reader import BundleReadError, MissingFile, parse_json, read_capped
from kit.redact import redact_env

# The OpenBLAS in this process (run where the ranks run, after torch's import): the first
# library mapped whose file name says openblas and that exports OpenBLAS's own API (numpy's
# scipy_openblas prefixes its symbols, and torch cannot use it).
_BLAS_CORE = r"""def blas_core(torch_config):
    import ctypes, re
    m = re.search(r"BLAS_INFO=([^,\s]+)", torch_config or "")
    info = {"torch_blas": m.group(1) if m else None, "library": None, "corename": None, "config": None}
    if torch_config is None:
        info["reason"] = "torch is not importable here"
        return info
    try:
        maps = open("/proc/self/maps").read().splitlines()
    except OSError as e:
        info["reason"] = f"cannot read /proc/self/maps: {e}"
        return info
    paths = sorted({f[5] for f in (ln.split(None, 5) for ln in maps)
                    if len(f) == 6 and f[5].startswith("/") and "openblas" in f[5].rsplit("/", 1)[-1].lower()})
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # already mapped: the same handle, no second initialisation
            corename, config = lib.openblas_get_corename, lib.openblas_get_config
        except (OSError, AttributeError):
            continue  # e.g. numpy's scipy_openblas, whose symbols are prefixed
        corename.restype = config.restype = ctypes.c_char_p
        info.update(library=path, corename=corename().decode(), config=config().decode().strip())
        return info
    info["reason"] = "torch loaded no OpenBLAS" + (f" (its BLAS_INFO is {info['torch_blas']})" if info["torch_blas"] else "")
    return info
"""

_SOFTWARE_SCRIPT = r"""
import json, platform, sys
out = {"python": platform.python_version(), "executable": sys.executable, "arch": platform.machine()}
try:
    from importlib import metadata
    out["packages"] = sorted({f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions() if d.metadata["Name"]})
except Exception as e:
    out["packages_error"] = repr(e)
try:
    import torch
    out["torch"] = torch.__version__
    out["torch_config"] = torch.__config__.show()
    out["torch_threads"] = torch.get_num_threads()
    out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
except Exception as e:
    out["torch_error"] = repr(e)
""" + _BLAS_CORE + r"""
try:
    out["blas"] = blas_core(out.get("torch_config"))
except Exception as e:
    out["blas"] = {"corename": None, "reason": repr(e)[:300]}
try:
    from importlib.metadata import version
    out["deepspeed"] = version("deepspeed")
except Exception as e:
    out["deepspeed_error"] = repr(e)
print("KIT-SOFTWARE-JSON " + json.dumps(out))
"""


def software_info(python_argv: list[str], timeout: float = 120, *, cache_key: str | None = None) -> dict[str, Any]:
    """Versions and packages as seen by ``python_argv`` (a Python, possibly inside an image),
    with what decides CPU speed there: torch's CPU capability (``DEFAULT`` where its vector
    kernels do not fit the CPU, e.g. PyPI's aarch64 wheel on the 512-bit SVE of an A64FX) and
    ``blas``: the OpenBLAS torch loaded (found in ``/proc/self/maps``) with the core it chose
    (``openblas_get_corename``, e.g. ``a64fx``, ``armv8sve``, ``neoversen1``) and its build,
    or null with the reason (x86 wheels use MKL).

    It runs while the ranks start (about 1.5 s of CPU: it imports torch), at the lowest
    priority, so that on a full node it takes what the ranks leave. With ``cache_key`` (a
    digest of everything the answer depends on, see ``Runtime.software_key``) the answer is
    kept under ~/.cache/kit/software and the next run with the same key reads it back."""
    cached = _software_cache(cache_key)
    if cached is not None and cached.is_file():
        try:
            doc = json.loads(cached.read_text())
            if isinstance(doc, dict) and "error" not in doc:
                return {**doc, "inventory": {"cached": True, "key": cache_key}}
        except (OSError, ValueError):
            pass
    nice = shutil.which("nice")
    doc = marker_json([*([nice, "-n", "19"] if nice else []), *python_argv, "-c", _SOFTWARE_SCRIPT],
                      "KIT-SOFTWARE-JSON", timeout=timeout)
    if "error" in doc:
        return doc
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(cached, json.dumps(doc))
        except OSError:
            pass
    return {**doc, "inventory": {"cached": False, "key": cache_key}}


#: the most a Python started for a record (possibly an image's) may print on stdout
MAX_MARKER_BYTES = 1 << 20


def marker_json(argv: list[str], marker: str, *, timeout: float) -> dict[str, Any]:
    """The JSON object that ``argv`` prints on its stdout line starting with ``marker`` (and a
    space), or ``{"error": why}``. What an image's Python prints is untrusted: stdout is read
    up to ``MAX_MARKER_BYTES`` (the command is killed past it) and the object is parsed
    through the bundle reader's JSON door (nesting depth capped, no NaN/Infinity), so a
    record the kit writes is one its own reader takes."""
    try:
        rc, out, err, why = _run_capped(argv, timeout=timeout, cap=MAX_MARKER_BYTES)
    except OSError as e:
        return {"error": f"could not run {argv[0]!r}: {e}"}
    if why:
        return {"error": why}
    for line in out.splitlines():
        if line.startswith(marker.encode() + b" "):
            try:
                doc = parse_json(line.split(b" ", 1)[1], marker)
            except BundleReadError as e:
                return {"error": str(e)}
            return doc if isinstance(doc, dict) else {"error": f"{marker}: not a JSON object"}
    return {"error": f"exit {rc}: {err.decode(errors='replace').strip()[-500:]}"}


def _run_capped(argv: list[str], *, timeout: float, cap: int) -> tuple[int, bytes, bytes, str | None]:
    """Run ``argv``: its exit code, stdout (at most ``cap`` bytes), the tail of its stderr,
    and why it was killed (past ``timeout`` seconds or ``cap`` bytes), or None."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = bytearray(), bytearray()
    why = None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)  # type: ignore[arg-type]
        sel.register(proc.stderr, selectors.EVENT_READ, err)  # type: ignore[arg-type]
        while sel.get_map() and why is None:
            left = deadline - time.monotonic()
            events = sel.select(left) if left > 0 else []
            if not events:
                why = f"timed out after {timeout:g} s"
            for key, _ in events:
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if key.data is err:
                    del err[:-4096]
                elif len(out) > cap:
                    why = f"printed more than {cap} bytes"
    if why is None:
        try:  # both pipes closed: the command ends, or is past its time
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            why = f"timed out after {timeout:g} s"
    if why:
        proc.kill()
    rc = proc.wait()
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    return rc, bytes(out), bytes(err), why


def _software_cache(key: str | None) -> Path | None:
    if not key:
        return None
    return kit.cache_dir() / "software" / f"{key}.json"


def kit_source() -> dict[str, Any]:
    """The kit's version and, when it runs from a git checkout, the commit and a dirty flag."""
    root = Path(kit.__file__).resolve().parent.parent
    out: dict[str, Any] = {"version": kit.__version__, "path": str(root)}
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out



def collect(*, plan_summary: dict[str, Any], env: dict[str, str], software: dict[str, Any],
            runtime: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kit": kit_source(),
        "plan": plan_summary,
        "runtime": runtime,
        "software": software,
        "host": hostinfo.describe(),
        "scheduler": hostinfo.scheduler_vars(env),
        "environment": redact_env(env),
        "cwd": os.getcwd(),
        **(extra or {}),
    }


# -- the training program: its repository and the files its command names (issue 16) ----------
#: files larger than this are recorded by size, not hashed (a shard of a large corpus)
HASH_MAX_BYTES = 4 * 2**30
MAX_FILES = 64
_CHUNK = 2**20
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def program(rank_argv: list[str], *, workdir: Path, env: dict[str, str],
            max_bytes: int = HASH_MAX_BYTES, provided: Sequence[str] = ()) -> dict[str, Any]:
    """Where the training program comes from and what it read.

    ``script``: the pinned script (``python x.py``) or module (``python -m pkg.mod``, looked
    up on the command's PYTHONPATH and the workdir), and the git repository holding it
    (remote without credentials, commit, dirty flag, the sha256 and file list of its diff
    against HEAD, so a local patch is visible); ``files``: the sha256 and size of every
    existing file the command names (vocabulary, merges, configs) and of a Megatron data
    prefix's ``.bin``/``.idx``, streamed, ``max_bytes`` at most per file.

    ``provided``: the directories an image brings (inside that image, ``program_inside``): a
    script there in a tree without ``.git`` is described by the tree's ``PROGRAM_RECORD``,
    looked for from the script's directory up to the provided directory, never above it; with
    none (on the host) no such record is read."""
    words = rankexec.program_argv(rank_argv)
    script = _script(words, workdir, env)
    out: dict[str, Any] = {"argv": words, "workdir": str(workdir)}
    out["script"] = {"path": str(script), **_git_state(script.parent, provided)} if script else None
    out["files"] = _named_files(words[1:], workdir, skip=script, max_bytes=max_bytes)
    return out


_PROGRAM_SCRIPT = ("import json, sys; from pathlib import Path; from kit import provenance as p; "
                   "a = json.loads(sys.argv[1]); print('KIT-PROGRAM-JSON ' + json.dumps(p.program("
                   "a['argv'], workdir=Path(a['workdir']), env=a['env'], provided=a['provided'])))")

#: the fields of ``program()``'s record taken from an image's answer, with their types (a
#: dict: the fields of each entry); anything else it says is left out
_GIT_FIELDS: dict[str, Any] = {"repository": str, "remote": (str, type(None)), "commit": (str, type(None)),
                               "dirty": (bool, type(None)), "diff_sha256": (str, type(None)), "diff_files": [str],
                               "git": type(None), "why": str, "source": str}
_FILE_FIELDS: dict[str, Any] = {"path": str, "size": int, "sha256": (str, type(None)), "why": str}


def _checked(value: Any, kind: Any) -> tuple[bool, Any]:
    """``value`` as ``kind`` describes it (a type or tuple of types; ``[kind]``: a list of
    such; a dict: an object with those fields, others dropped), and whether it fits."""
    if isinstance(kind, list):
        if not isinstance(value, list):
            return False, None
        items = [_checked(v, kind[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if isinstance(kind, dict):
        if not isinstance(value, dict):
            return False, None
        out = {}
        for key, k in kind.items():
            if key in value:
                ok, v = _checked(value[key], k)
                out[key] = v if ok else None
        return True, out
    ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is int)
    return ok, value if ok else None


def program_inside(python_argv: list[str], rank_argv: list[str], *, workdir: Path, env: dict[str, str],
                   provided: Sequence[str], timeout: float = 120) -> dict[str, Any]:
    """``program()`` as the kit inside an image sees it (``python_argv``: the image's Python,
    wrapped by the runtime; ``provided``: the directories that image brings): for a program
    the image brings, whose files the host cannot read. The answer is untrusted: read through
    ``marker_json`` (capped, depth-checked), of it only ``script`` and ``files`` are kept,
    field by field with their types checked (a field of another type is null), and ``argv``
    and ``workdir`` are the host's. On failure, the record says so (``error``)."""
    arg = json.dumps({"argv": list(rank_argv), "workdir": str(workdir),
                      "env": {"PYTHONPATH": env.get("PYTHONPATH", "")}, "provided": list(provided)})
    out: dict[str, Any] = {"argv": rankexec.program_argv(rank_argv), "workdir": str(workdir)}
    doc = marker_json([*python_argv, "-c", _PROGRAM_SCRIPT, arg], "KIT-PROGRAM-JSON", timeout=timeout)
    if "error" in doc:
        return {**out, "error": str(doc["error"])[:1000]}
    script = doc.get("script")
    ok, files = _checked(doc.get("files"), [_FILE_FIELDS])
    checked_script = _checked(script, {"path": str, **_GIT_FIELDS})[1] if script is not None else None
    return {**out, "script": checked_script, "files": files[:MAX_FILES] if ok else [], "taken": "inside the image"}


def _script(words: list[str], workdir: Path, env: dict[str, str]) -> Path | None:
    """The file the program runs: the script or module after the interpreter's options, or
    the program itself when it is a file (``./train.sh``)."""
    rest = words[1:]
    while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
        rest = rest[2:] if rest[0] in ("-W", "-X") else rest[1:]
    if rest[:1] == ["-m"] and len(rest) > 1:
        search = [str(workdir), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p), *sys.path]
        return _module_file(rest[1], search)
    if rest and rest[0] != "-c":
        path = workdir / rest[0]
        if path.is_file():
            return path.resolve()
    first = workdir / words[0] if words else None
    return first.resolve() if first is not None and "/" in words[0] and first.is_file() else None


def _module_file(name: str, search: list[str]) -> Path | None:
    parts = name.split(".")
    for base in search:
        root = Path(base, *parts)
        for candidate in (root / "__main__.py", root.with_suffix(".py"), root / "__init__.py"):
            if candidate.is_file():
                return candidate.resolve()
    return None


def _git(directory: Path, *args: str) -> subprocess.CompletedProcess | None:
    try:
        r = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r if r.returncode == 0 else None


#: written at the top of a program tree staged without ``.git`` (``kit image build --dsf``):
#: the git facts of the commit it was taken from and the patch applied to it
PROGRAM_RECORD = "KIT_PROGRAM.json"
_RECORD_KEYS = ("remote", "commit", "dirty", "diff_sha256", "diff_files")  # typed as in _GIT_FIELDS


#: the most a ``PROGRAM_RECORD`` may hold
RECORD_MAX_BYTES = 65536


def _program_record(directory: Path, provided: Sequence[str]) -> dict[str, Any] | None:
    """The ``PROGRAM_RECORD`` of the tree holding ``directory``, looked for upwards but only
    within a ``provided`` directory (where an image's build wrote it; a stray file in /tmp or
    a home directory is never taken), read through the bundle reader's door (a regular file,
    no link, capped, depth-checked), reduced to git's fields with their types checked; None
    where there is none."""
    roots = [Path(r) for r in provided]
    for d in [directory, *directory.parents]:
        if not any(d == r or r in d.parents for r in roots):
            return None  # outside every provided directory
        f = d / PROGRAM_RECORD
        try:
            doc = parse_json(read_capped(f, RECORD_MAX_BYTES), f)
        except MissingFile:
            continue
        except BundleReadError:
            return None
        if not isinstance(doc, dict):
            return None
        out: dict[str, Any] = {"repository": str(d)}
        for key in _RECORD_KEYS:
            out[key] = _checked(doc.get(key), _GIT_FIELDS[key])[1]
        out["source"] = f"{f} (a tree staged without .git: {str(doc.get('staged_by', ''))[:200]})"
        return out
    return None


def strip_credentials(url: str) -> str:
    """A remote URL without its ``user:token@`` part."""
    return _USERINFO.sub("", url)


def _git_state(directory: Path, provided: Sequence[str]) -> dict[str, Any]:
    top = _git(directory, "rev-parse", "--show-toplevel")
    if top is None:
        return _program_record(directory, provided) or {"git": None, "why": "not in a git checkout (or git is not installed)"}
    out: dict[str, Any] = {"repository": top.stdout.decode(errors="replace").strip()}
    remote = _git(directory, "remote", "get-url", "origin") or _git(directory, "config", "--get-regexp", r"^remote\..*\.url$")
    url = remote.stdout.decode(errors="replace").strip().split("\n")[0].split(" ")[-1] if remote else None
    out["remote"] = strip_credentials(url) if url else None
    head = _git(directory, "rev-parse", "HEAD")
    out["commit"] = head.stdout.decode().strip() if head else None
    diff = _git(directory, "diff", "--binary", "HEAD")
    names = _git(directory, "diff", "--name-only", "HEAD")
    changed = names.stdout.decode(errors="replace").split() if names else []
    out["dirty"] = bool(changed) if diff is not None else None
    out["diff_sha256"] = hashlib.sha256(diff.stdout).hexdigest() if diff is not None and diff.stdout else None
    out["diff_files"] = changed
    return out


def _named_files(words: list[str], workdir: Path, *, skip: Path | None, max_bytes: int) -> list[dict[str, Any]]:
    """The existing regular files named by ``words`` (``--flag=value`` forms too) and the
    ``.bin``/``.idx`` pair of any Megatron data prefix among them, each once."""
    seen: dict[Path, None] = {}
    for w in words:
        value = w.split("=", 1)[1] if w.startswith("-") and "=" in w else w
        if not value or value.startswith("-") or len(value) > 4096:
            continue
        base = workdir / value
        for cand in (base, Path(f"{base}.bin"), Path(f"{base}.idx")):
            try:
                if cand.is_file():
                    seen.setdefault(cand.resolve(), None)
            except OSError:
                continue
    files = [p for p in seen if p != skip][:MAX_FILES]
    return [_file_digest(p, max_bytes) for p in files]


def _file_digest(path: Path, max_bytes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"path": str(path)}
    try:
        size = path.stat().st_size
        out["size"] = size
        if size > max_bytes:
            out["sha256"] = None
            out["why"] = f"larger than {max_bytes} bytes: not hashed (size recorded)"
            return out
        out["sha256"] = sha256_file(path)[0]
    except OSError as e:
        out["sha256"] = None
        out["why"] = f"unreadable: {e.strerror or e}"
    return out
