"""``kit image build``: one definition file, four engines.

- ``apptainer`` / ``singularity``: ``build`` of the definition file as it is (the command line
  composed by spython's client), ``--fakeroot`` when not root; the result is a SIF file.
- ``podman`` / ``docker``: ``build`` of the Dockerfile that spython converts from the same
  definition file; the result is an image in the engine's local store, tagged
  ``localhost/kit:<target>-<tcmalloc|glibc>``.

The build context is a directory holding ``kit.def``, ``Dockerfile``, ``constraints.txt``,
``wheelhouse/`` (the pinned torch wheel when one was found), ``kit-src/`` (the kit's own
source, plus ``KIT_SOURCE.json`` with its sha256) and, with ``--dsf DIR``, ``dsf/`` (the
tree of DIR's HEAD and the set-up scripts, ``kit.image.dsf``). The source sha256 and the kit's version
become labels too (``--label`` for podman/docker; in ``/opt/kit/src/KIT_SOURCE.json`` in
every image).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kit
from kit.engines import ENGINES, OCI_ENGINES, SIF_ENGINES, first_on_path
from kit.errors import KitError
from kit.image import spy
from kit.site import Site
from kit.image.convert import to_dockerfile
from kit.image.recipe import PIP_CACHE, WHEELHOUSE, Recipe, RecipeOptions, render, repo_root, torch_wheel_options

CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE")


def detect_engine(preferred: str | None = None) -> str:
    if preferred:
        if preferred not in ENGINES:
            raise KitError(f"unknown engine {preferred!r}", where="--engine", fix=f"use one of: {', '.join(ENGINES)}")
        if preferred in SIF_ENGINES:
            spy.find_engine(preferred)  # raises the clear error
        elif not shutil.which(preferred):
            raise KitError(f"{preferred} is not installed", where="--engine",
                           fix=f"install {preferred} or choose another of: {', '.join(ENGINES)}")
        return preferred
    found = first_on_path(ENGINES)
    if found:
        return found
    raise KitError("no container engine found (tried apptainer, singularity, podman, docker)", where="kit image build",
                   fix="install one: apt-get install podman, or Apptainer/SingularityCE (on Fugaku /usr/bin/singularity is SingularityPRO)")


def default_wheelhouses() -> list[Path]:
    out = []
    if os.environ.get("KIT_WHEELHOUSE"):
        out += [Path(p) for p in os.environ["KIT_WHEELHOUSE"].split(os.pathsep) if p]
    out += [kit.cache_dir() / "wheelhouse", Path("/opt/wheels")]
    return out


def find_wheel(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        p = d / name
        if p.is_file():
            return p
    return None


def kit_source_files(root: Path) -> list[Path]:
    files = [root / f for f in SOURCE_FILES if (root / f).is_file()]
    for p in sorted((root / "kit").rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".pyo")):
            files.append(p)
    return files


def source_sha256(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(files):
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@dataclass
class BuildPlan:
    engine: str
    recipe: Recipe
    context: Path
    ref: str
    argv: list[str]
    source_sha256: str
    wheel: Path | None
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    def describe(self) -> dict[str, Any]:
        return {"engine": self.engine, "target": self.recipe.options.target, "ref": self.ref,
                "context": str(self.context), "argv": self.argv, "recipe_sha256": self.recipe.sha256,
                "source_sha256": self.source_sha256, "wheel": str(self.wheel) if self.wheel else None,
                "env": self.env}


def default_wheel_cache() -> Path:
    return Path(os.environ.get("KIT_WHEEL_CACHE") or kit.cache_dir() / "wheels")


def prepare(options: RecipeOptions, *, engine: str, context: Path, ref: str | None = None,
            wheelhouse: list[Path] | None = None, pip_cache: Path | None = None,
            ca_bundle: str | None = "auto", extra_args: list[str] | None = None,
            wheel_cache: Path | None = None, torch_wheel: Path | None = None, log=None,
            site: Site | None = None) -> BuildPlan:
    """Write the build context and compose the engine's command line (nothing is built).

    With ``options.staged`` the host resolves, downloads and unpacks the pinned packages for
    the target into ``wheelhouse/venv`` first (``kit.image.stage``; wheels and the unpacked
    tree are cached in ``wheel_cache``). With ``options.torch == "wheel"``, ``torch_wheel``
    is the file the recipe names (checked against its sha256 here and in the image)."""
    recipe = render(options)
    root = repo_root()
    if options.torch == "wheel":
        wheel = _brought_wheel(options, torch_wheel)
    else:
        wheel_name = recipe.target.get("torch_wheel") if options.torch == "pypi" else None
        dirs = wheelhouse if wheelhouse is not None else default_wheelhouses()
        wheel = find_wheel(wheel_name, dirs) if wheel_name else None
    if wheel is None and options.torch == "pypi" and "+" in str(recipe.target["torch"]):
        raise KitError(
            f"the {options.target} image needs {wheel_name} (PyPI has only the CUDA build of this torch)",
            where="--wheelhouse",
            fix=f"put the wheel in a directory and pass --wheelhouse DIR (looked in: {', '.join(map(str, dirs))})")

    if context.exists():
        shutil.rmtree(context)
    context.mkdir(parents=True)
    (context / "kit.def").write_text(recipe.text)
    (context / "constraints.txt").write_text(recipe.constraints)
    (context / "wheelhouse").mkdir()
    if wheel is not None:
        _link_or_copy(wheel, context / "wheelhouse" / wheel.name)
    if options.staged:
        from kit.image import stage
        from kit.image.recipe import STAGED_VENV, VENV, load_versions

        cache = wheel_cache or default_wheel_cache()
        if wheel is not None:  # the target's torch wheel from --wheelhouse (x86_64's CPU build)
            _link_or_copy(wheel, cache / recipe.target["machine"] / wheel.name)
        t0 = time.monotonic()
        staged = stage.stage(options.target, load_versions(), root=root, wheel_cache=cache,
                             dest=context / "wheelhouse" / Path(STAGED_VENV).relative_to(WHEELHOUSE), prefix=VENV,
                             log=log)
        print(f"staged {len(staged['wheels'])} packages for {options.target} on the host in "
              f"{time.monotonic() - t0:.1f} s ({staged['tree']})", file=log or sys.stderr, flush=True)
    if options.dsf:
        from kit.image import dsf
        from kit.image.recipe import load_versions

        dsf.stage(options.dsf, root, context, load_versions())
    files = kit_source_files(root)
    src_sha = source_sha256(root, files)
    for f in files:
        dst = context / "kit-src" / f.relative_to(root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
    if not (context / "kit-src" / "README.md").exists():
        (context / "kit-src" / "README.md").write_text("kit\n")
    import kit
    (context / "kit-src" / "KIT_SOURCE.json").write_text(
        json.dumps({"version": kit.__version__, "source_sha256": src_sha}, sort_keys=True) + "\n")

    if engine in OCI_ENGINES:
        ref = ref or options.tag()
        dockerfile = to_dockerfile(recipe.text, mount_build_inputs=(engine == "podman"))
        (context / "Dockerfile").write_text(dockerfile)
        argv = [engine, "build", "-f", str(context / "Dockerfile"), "-t", ref,
                "--label", f"org.kit.source.sha256={src_sha}", "--label", f"org.kit.version={kit.__version__}"]
        if engine == "podman":
            argv += ["--arch", recipe.arch, "--layers"]
            argv += ["--volume", f"{context / 'wheelhouse'}:{WHEELHOUSE}:ro"]
            if pip_cache is not None:
                pip_cache.mkdir(parents=True, exist_ok=True)
                argv += ["--volume", f"{pip_cache}:{PIP_CACHE}"]
            ca = _ca_bundle(ca_bundle)
            if ca:
                argv += ["--volume", f"{ca}:/host-ca.crt:ro"]
        else:
            argv += ["--platform", f"linux/{recipe.arch}"]
        argv += list(extra_args or []) + [str(context)]
        return BuildPlan(engine, recipe, context, ref, argv, src_sha, wheel)

    # apptainer / singularity
    path = spy.find_engine(engine)
    (context / "Dockerfile").write_text(to_dockerfile(recipe.text, mount_build_inputs=False))
    ref = str(Path(ref).resolve()) if ref else str((Path.cwd() / f"kit-{options.variant()}.sif").resolve())
    # as a user: --fakeroot, and what the site's Singularity needs with it (Fugaku's
    # SingularityPRO: --no-setgroups, and TMPDIR on node-local /worktmp)
    user = os.geteuid() != 0
    opts = ["--fakeroot", *(site.build_flags if site else [])] if user else []
    opts += list(extra_args or [])
    env: dict[str, str] = {}
    if user and site and site.build_tmpdir and "TMPDIR" not in os.environ:
        env = {"TMPDIR": site.build_tmpdir, "SINGULARITY_TMPDIR": site.build_tmpdir,
               "APPTAINER_TMPDIR": site.build_tmpdir}
    argv = spy.build_argv(path, recipe="kit.def", image=ref, options=opts)
    return BuildPlan(engine, recipe, context, ref, argv, src_sha, wheel, env=env, cwd=context)


def _brought_wheel(options: RecipeOptions, path: Path | None) -> Path:
    if path is None:
        raise KitError("the recipe installs a brought torch wheel but none was given", where="--torch-wheel",
                       fix="pass --torch-wheel PATH")
    got = torch_wheel_options(path)
    if (got["torch_wheel"], got["torch_wheel_sha256"]) != (options.torch_wheel, options.torch_wheel_sha256):
        raise KitError(f"{path} is not the wheel the recipe names ({options.torch_wheel}, sha256 "
                       f"{options.torch_wheel_sha256})", where="--torch-wheel", fix="pass the same file to both")
    return path


def _ca_bundle(setting: str | None) -> str | None:
    if setting in (None, "", "none"):
        return None
    if setting != "auto":
        if not Path(setting).is_file():
            raise KitError(f"CA bundle {setting} does not exist", where="--ca-bundle", fix="pass a PEM file or none")
        return setting
    env = os.environ.get("PIP_CERT") or os.environ.get("REQUESTS_CA_BUNDLE")
    for c in ([env] if env else []) + list(CA_BUNDLES):
        if c and Path(c).is_file():
            return c
    return None


def run(plan: BuildPlan, *, log=None) -> dict[str, Any]:
    """Run the build; return the image's inspection plus the build's own facts."""
    from kit.image.inspect import inspect_image

    log = log or sys.stderr
    print("+ " + " ".join(plan.argv), file=log, flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(plan.argv, cwd=plan.cwd or plan.context, env={**os.environ, **plan.env})
    seconds = round(time.monotonic() - t0, 1)
    if proc.returncode != 0:
        raise KitError(f"{plan.engine} build failed with exit code {proc.returncode} after {seconds} s",
                       where="kit image build", fix=f"see the build output above; the context is kept in {plan.context}")
    info = inspect_image(plan.ref, plan.engine)
    info["build"] = {**plan.describe(), "seconds": seconds}
    return info
