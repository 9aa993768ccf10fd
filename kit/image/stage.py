"""Stage the image's Python packages on the build host (``kit image build --staged``).

Under qemu-user emulation pip is ~20x slower than native: installing torch's aarch64 wheel
(resolution, unpacking ~15k files, byte-compiling them) took ~8 of the a64fx image's 13
minutes. With ``--staged`` the host does that work with its own, native Python:

1. **resolve**: from the pinned roots (torch, DeepSpeed, the kit's own dependencies), each
   requirement's version is the pin in ``containers/versions.yaml``; dependencies are read
   from the wheels' ``METADATA`` and their markers evaluated for the *target* (aarch64
   Linux, CPython 3.11), not for the host (pip's ``--platform`` keeps the host's markers,
   e.g. torch's ``platform_machine == "x86_64"`` CUDA wheels). A dependency without a pin
   is an error: the image installs pinned versions only.
2. **download**: ``pip download --no-deps --only-binary=:all: --platform ... --python-version
   --implementation cp --abi`` with the host's pip, into a wheel cache kept between builds.
   DeepSpeed is an sdist: it is built here as a pure wheel (``DS_BUILD_OPS=0 pip wheel``;
   checked to be ``py3-none-any``).
3. **install**: each wheel is unpacked the way pip installs it into ``/opt/kit/venv``
   (``.data/`` scripts, headers and data; console scripts from ``entry_points.txt`` with
   pip's launcher text and ``#!/opt/kit/venv/bin/python3``; ``__pycache__`` compiled for
   3.11 with the in-image paths; ``INSTALLER``, ``REQUESTED`` and ``RECORD`` rewritten), into
   a tree laid out like the venv. The recipe's ``%post`` then copies that tree into the venv
   and lets the image's pip confirm, offline, that every pin is satisfied.

pip, setuptools and wheel are not staged: the venv's own pip and the recipe's
``pip install setuptools wheel`` line install them, as in an unstaged build.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Any

from kit.errors import KitError

STAGE_FORMAT = 2  # bump when the installed layout changes (invalidates staged trees)
NOT_STAGED = {"pip", "setuptools", "wheel"}
INSTALLER = "kit-image-stage"

# pip's console-script launcher (distlib ScriptMaker), so staged scripts read as pip's do
_LAUNCHER = """# -*- coding: utf-8 -*-
import re
import sys
from {module} import {import_name}
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit({func}())
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def marker_env(python: str, machine: str) -> dict[str, str]:
    full = f"{python}.2" if python.count(".") == 1 else python  # bookworm's 3.11.2
    return {"implementation_name": "cpython", "implementation_version": full, "os_name": "posix",
            "platform_machine": machine, "platform_python_implementation": "CPython", "platform_release": "",
            "platform_system": "Linux", "platform_version": "", "python_full_version": full,
            "python_version": python, "sys_platform": "linux"}


def pip_platform_args(machine: str, python: str) -> list[str]:
    # bookworm's glibc is 2.36: every manylinux tag up to 2_36 (pip does not expand them)
    nodot = python.replace(".", "")
    plats = [f"manylinux_2_{m}_{machine}" for m in range(36, 16, -1)] + [f"manylinux2014_{machine}"]
    return ["--only-binary=:all:", *sum((["--platform", p] for p in plats), []), "--python-version", python,
            "--implementation", "cp", "--abi", f"cp{nodot}"]


def pins_from(versions: dict[str, Any], target: str) -> dict[str, str]:
    pins = {}
    for c in versions["constraints"]:
        name, _, ver = c.partition("==")
        pins[canonical(name)] = ver.strip()
    pins["torch"] = str(versions["targets"][target]["torch"])
    pins["deepspeed"] = str(versions["deepspeed"])
    return pins


def _find_wheel(wheel_dir: Path, name: str, version: str) -> Path | None:
    for p in sorted(wheel_dir.glob("*.whl")):
        # {name}-{version}(-{build})?-{python}-{abi}-{platform}.whl; name as the project writes it
        stem = p.name.split("-")
        if len(stem) >= 5 and canonical(stem[0]) == canonical(name) and stem[1] == version:
            return p
    return None


def _metadata(wheel: Path) -> tuple[str, str, Any]:
    with zipfile.ZipFile(wheel) as z:
        md = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        msg = Parser().parsestr(z.read(md).decode("utf-8"))
    return msg["Name"], msg["Version"], msg


def _pip(args: list[str], *, env: dict[str, str] | None = None, log=None) -> None:
    argv = [sys.executable, "-m", "pip", *args]
    print("+ " + " ".join(argv), file=log or sys.stderr, flush=True)
    r = subprocess.run(argv, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})},
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise KitError(f"pip {args[0]} failed (exit {r.returncode}): {r.stdout.strip()[-1500:]}",
                       where="kit image build --staged", fix="check the host can reach the package index")


def deepspeed_wheel(version: str, wheel_dir: Path, *, log=None) -> Path:
    """DeepSpeed's sdist built as a pure wheel (no ops), cached in ``wheel_dir``."""
    w = _find_wheel(wheel_dir, "deepspeed", version)
    if w is None:
        with tempfile.TemporaryDirectory() as d:
            # isolated: the host's torch must not leak into torch_info (install_wheel writes
            # the target's); DS_BUILD_OPS=0 keeps it pure Python
            _pip(["wheel", "--no-deps", "--no-binary", "deepspeed", "-w", d, f"deepspeed=={version}"],
                 env={"DS_BUILD_OPS": "0"}, log=log)
            built = next(Path(d).glob("deepspeed-*.whl"))
            wheel_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(str(built), wheel_dir / built.name)
            w = wheel_dir / built.name
    if not w.name.endswith("-py3-none-any.whl"):
        raise KitError(f"{w.name} is not a pure wheel", where="kit image build --staged",
                       fix="build DeepSpeed with DS_BUILD_OPS=0 (no ops), or build without --staged")
    return w


def resolve(roots: list[str], pins: dict[str, str], *, wheel_dir: Path, python: str, machine: str,
            log=None) -> dict[str, Path]:
    """Wheels (name -> file) for ``roots`` and all their dependencies, for the target."""
    from packaging.markers import Marker
    from packaging.requirements import Requirement

    env = marker_env(python, machine)
    wheel_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    done: set[tuple[str, str]] = set()  # (name, extra)
    queue = [Requirement(r) for r in roots]
    while queue:
        level, queue = queue, []
        wanted: dict[str, set[str]] = {}
        for req in level:
            n = canonical(req.name)
            if n in NOT_STAGED:
                continue
            if n not in pins:
                raise KitError(f"{req.name} (needed: {req}) has no pin in containers/versions.yaml",
                               where="kit image build --staged",
                               fix=f"add {req.name}==<version> to the constraints list in containers/versions.yaml")
            if not req.specifier.contains(pins[n], prereleases=True):
                raise KitError(f"the pin {n}=={pins[n]} does not satisfy {req}", where="containers/versions.yaml",
                               fix="change the pin")
            wanted.setdefault(n, set()).update(req.extras | {""})
        missing = [n for n in wanted if n not in found and _find_wheel(wheel_dir, n, pins[n]) is None]
        if "deepspeed" in missing:
            missing.remove("deepspeed")
            deepspeed_wheel(pins["deepspeed"], wheel_dir, log=log)
        if missing:
            _pip(["download", "--no-deps", "--progress-bar", "off", *pip_platform_args(machine, python), "-d",
                  str(wheel_dir), *(f"{n}=={pins[n]}" for n in sorted(missing))], log=log)
        for n, extras in sorted(wanted.items()):
            w = found.get(n) or _find_wheel(wheel_dir, n, pins[n])
            if w is None:
                raise KitError(f"no wheel for {n}=={pins[n]} in {wheel_dir} after pip download",
                               where="kit image build --staged", fix="see pip's output above")
            found[n] = w
            _, _, msg = _metadata(w)
            for extra in sorted(extras):
                if (n, extra) in done:
                    continue
                done.add((n, extra))
                for dep in msg.get_all("Requires-Dist") or []:
                    r = Requirement(dep)
                    if r.marker is None or Marker(str(r.marker)).evaluate({**env, "extra": extra}):
                        queue.append(r)
    return found


# -- installing a wheel the way pip does ---------------------------------------------------

def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def deepspeed_torch_info(torch_version: str):
    """A rewrite of DeepSpeed's ``git_version_info_installed.py``: ``torch_info`` as its setup.py
    writes it when the target's CPU torch is installed (the wheel was built on the host,
    without it), i.e. as a native build in the image would have it."""
    major_minor = ".".join(torch_version.split("+")[0].split(".")[:2])

    def rewrite(data: bytes) -> bytes:
        out = re.sub(rb"^torch_info=\{'version': '[0-9.]+'", b"torch_info={'version': '" + major_minor.encode() + b"'",
                     data, flags=re.M)
        if out == data and f"'version': '{major_minor}'".encode() not in data:
            raise KitError("DeepSpeed's git_version_info_installed.py has no torch_info line",
                           where="kit image build --staged", fix="build without --staged")
        return out
    return rewrite


def install_wheel(wheel: Path, stage: Path, *, prefix: str, python: str, requested: bool,
                  rewrite: dict[str, Any] | None = None) -> list[str]:
    """Unpack ``wheel`` into ``stage`` (laid out as ``prefix``); returns the .py files written.
    ``rewrite`` maps a member's path in the wheel to a function of its bytes."""
    site_rel = f"lib/python{python}/site-packages"
    site = stage / site_rel
    written: dict[Path, bytes | None] = {}  # path -> content for RECORD (None: read back)
    pys: list[str] = []
    shebang = f"#!{prefix}/bin/python3".encode()
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.count("/") == 1 and n.endswith(".dist-info/WHEEL"))
        data_dir = dist_info[: -len(".dist-info")] + ".data"
        for info in z.infolist():
            n = info.filename
            if n.endswith("/"):
                continue
            if n == f"{dist_info}/RECORD" or n.startswith(f"{dist_info}/RECORD."):
                continue
            script = False
            if n.startswith(data_dir + "/"):
                _, key, rest = n.split("/", 2)
                if key in ("purelib", "platlib"):
                    dst = site / rest
                elif key == "scripts":
                    dst, script = stage / "bin" / rest, True
                elif key == "headers":
                    dst = stage / "include" / "site" / f"python{python}" / dist_info.split("-")[0] / rest
                elif key == "data":
                    dst = stage / rest
                else:
                    raise KitError(f"{wheel.name}: unknown .data key {key}", where="kit image build --staged",
                                   fix="build without --staged")
            else:
                dst = site / n
            data = z.read(info)
            if rewrite and n in rewrite:
                data = rewrite[n](data)
            mode = (info.external_attr >> 16) & 0o777
            if script and data.startswith(b"#!python"):
                data = shebang + b"\n" + (data.split(b"\n", 1) + [b""])[1]
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
            dst.chmod(0o755 if (script or mode & 0o111) else 0o644)
            written[dst] = data
            if dst.suffix == ".py" and site in dst.parents:
                pys.append(str(dst))
        eps = f"{dist_info}/entry_points.txt"
        if eps in names:
            import configparser

            cp = configparser.ConfigParser(delimiters=("=",))
            cp.optionxform = str  # type: ignore[assignment]
            cp.read_string(z.read(eps).decode())
            for section in ("console_scripts", "gui_scripts"):
                if not cp.has_section(section):
                    continue
                for name, value in cp.items(section):
                    module, _, attr = value.split("[")[0].strip().partition(":")
                    attr = attr.strip() or "main"
                    text = shebang + b"\n" + _LAUNCHER.format(module=module.strip(), import_name=attr.split(".")[0],
                                                              func=attr).encode()
                    dst = stage / "bin" / name.strip()
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(text)
                    dst.chmod(0o755)
                    written[dst] = text
    di = site / dist_info
    extra = {di / "INSTALLER": f"{INSTALLER}\n".encode()}
    if requested:
        extra[di / "REQUESTED"] = b""
    for p, data in extra.items():
        p.write_bytes(data)
        p.chmod(0o644)
        written[p] = data
    # byte-compile like pip (3.11 pycs, code objects naming the in-image paths)
    import py_compile

    for src in pys:
        rel = Path(src).relative_to(stage)
        cfile = importlib.util.cache_from_source(src)
        try:
            py_compile.compile(src, cfile=cfile, dfile=f"{prefix}/{rel.as_posix()}", doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
        except py_compile.PyCompileError:
            continue  # pip ignores files that do not compile (e.g. templates)
        Path(cfile).chmod(0o644)
        written[Path(cfile)] = None
    rows = []
    for p, data in written.items():
        data = p.read_bytes() if data is None else data
        rows.append((os.path.relpath(p, site), _record_hash(data), str(len(data))))
    rows.append((os.path.relpath(di / "RECORD", site), "", ""))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(sorted(rows))
    (di / "RECORD").write_text(buf.getvalue())
    (di / "RECORD").chmod(0o644)
    return pys


def _check_compile_python(python: str) -> None:
    if f"{sys.version_info[0]}.{sys.version_info[1]}" != python:
        raise KitError(f"--staged byte-compiles for the image's Python {python}, but the host's is "
                       f"{sys.version_info[0]}.{sys.version_info[1]}", where="kit image build --staged",
                       fix=f"run kit with a Python {python}, or build without --staged")


def staged_roots(root: Path, target: str, versions: dict[str, Any]) -> list[str]:
    import tomllib

    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    return [f"torch=={versions['targets'][target]['torch']}", f"deepspeed=={versions['deepspeed']}", *deps]


def stage(target: str, versions: dict[str, Any], *, root: Path, wheel_cache: Path, dest: Path,
          prefix: str, log=None) -> dict[str, Any]:
    """Make ``dest``: the venv tree holding every staged package (cached under ``wheel_cache``)."""
    t = versions["targets"][target]
    python = str(versions["python"])
    _check_compile_python(python)
    wheel_dir = wheel_cache / t["machine"]
    roots = staged_roots(root, target, versions)
    wheels = resolve(roots, pins_from(versions, target), wheel_dir=wheel_dir, python=python,
                     machine=t["machine"], log=log)
    requested = {"torch", "deepspeed"}
    key = hashlib.sha256(json.dumps({"format": STAGE_FORMAT, "prefix": prefix, "python": python,
                                     "wheels": sorted((w.name, w.stat().st_size) for w in wheels.values()),
                                     "requested": sorted(requested)}).encode()).hexdigest()[:16]
    tree = wheel_cache / "staged" / f"{target}-{key}"
    if not (tree / "STAGED.json").is_file():
        tmp = tree.with_name(tree.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        for n, w in sorted(wheels.items()):
            rw = ({"deepspeed/git_version_info_installed.py": deepspeed_torch_info(str(t["torch"]))}
                  if n == "deepspeed" else None)
            install_wheel(w, tmp, prefix=prefix, python=python, requested=n in requested, rewrite=rw)
        (tmp / "STAGED.json").write_text(json.dumps(
            {"target": target, "prefix": prefix, "wheels": {n: w.name for n, w in sorted(wheels.items())}},
            indent=1, sort_keys=True) + "\n")
        if tree.exists():
            shutil.rmtree(tree)
        tmp.rename(tree)
        for old in tree.parent.glob(f"{target}-*"):  # keep only the newest staged tree per target
            if old != tree and not old.name.endswith(".tmp"):
                shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        shutil.rmtree(dest)
    try:
        subprocess.run(["cp", "-al", str(tree), str(dest)], check=True)  # hard links: instant
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(tree, dest, symlinks=True)
    (dest / "STAGED.json").unlink()
    return {"tree": str(tree), "wheels": {n: w.name for n, w in sorted(wheels.items())}}
