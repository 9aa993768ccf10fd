"""``kit image recipe | build | inspect``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

import kit
from kit.errors import KitError
from kit.image.recipe import RecipeOptions, committed_path, render, torch_wheel_options

app = typer.Typer(help="Build and inspect the kit's images.", no_args_is_help=True)

TargetOpt = typer.Option("x86_64", "--target", "-t", help="x86_64 or a64fx (aarch64)")
TcmallocOpt = typer.Option(True, "--tcmalloc/--no-tcmalloc", help="install gperftools' tcmalloc in the image")
StagedOpt = typer.Option(False, "--staged/--no-staged", help="install torch, DeepSpeed and their dependencies "
                         "by unpacking the pinned wheels on the build host (native pip) and copying them into "
                         "the image's venv: for emulated builds (a64fx on x86), where pip runs ~20x slower")
BaseOpt = typer.Option(None, "--base", help="base image (default: from containers/versions.yaml), e.g. a local "
                                             "debootstrap import localhost/kit-base:bookworm-amd64")
TorchOpt = typer.Option("pypi", "--torch", help="where torch comes from: pypi (the pinned wheel, default) or "
                        "source (a64fx: built in the image against OpenBLAS for A64FX and oneDNN+ACL with "
                        "-mcpu=a64fx; hours on an aarch64 machine, see containers/README.md)")
DsfOpt = typer.Option(None, "--dsf", help="a DeepSpeedFugaku git checkout (scripts/dsf-setup.sh step 1): "
                      "the tree of its HEAD commit goes into the image at /opt/dsf/DeepSpeedFugaku, set up as "
                      "dsf-setup.sh does (patch, helpers, tiny data in /opt/dsf/data); commit in the labels")
TorchWheelOpt = typer.Option(None, "--torch-wheel", help="install this torch wheel (e.g. RIKEN's A64FX build, or "
                             "one a --torch source image left in /opt/kit/dist) instead; checked by sha256")


def _options(target: str, tcmalloc: bool, base: str | None, staged: bool, torch: str,
             torch_wheel: Path | None, dsf: Path | None = None) -> RecipeOptions:
    from kit.image import dsf as dsf_layer
    from kit.image.recipe import repo_root

    source = dsf_layer.checkout(dsf, repo_root()) if dsf is not None else None
    if torch_wheel is not None:
        if torch not in ("pypi", "wheel"):
            raise KitError(f"--torch {torch} and --torch-wheel both say where torch comes from", where="--torch-wheel",
                           fix="pass one of them")
        return RecipeOptions(target=target, tcmalloc=tcmalloc, base=base, staged=staged, dsf=source,
                             **torch_wheel_options(torch_wheel))
    return RecipeOptions(target=target, tcmalloc=tcmalloc, base=base, staged=staged, torch=torch, dsf=source)


@app.command()
def recipe(
    target: str = TargetOpt,
    tcmalloc: bool = TcmallocOpt,
    base: Optional[str] = BaseOpt,
    staged: bool = StagedOpt,
    torch: str = TorchOpt,
    torch_wheel: Optional[Path] = TorchWheelOpt,
    dsf: Optional[Path] = DsfOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the definition file here (and the "
                                       "Dockerfile beside it as <name>.Dockerfile); default: print it"),
    write: bool = typer.Option(False, "--write", help="write containers/<target>.def and .Dockerfile (the committed ones)"),
    dockerfile: bool = typer.Option(False, "--dockerfile", help="print the converted Dockerfile instead"),
) -> None:
    """Render the Singularity definition file for a target (and its Dockerfile)."""
    from kit.image.convert import to_dockerfile

    opts = _options(target, tcmalloc, base, staged, torch, torch_wheel, dsf)
    r = render(opts)
    if write:
        if opts.torch != "pypi" or opts.dsf:
            raise KitError("--write regenerates the committed default recipes only", where="--write",
                           fix="use -o FILE for a --torch source/--torch-wheel/--dsf recipe")
        out = committed_path(target)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(r.text)
        df = out.with_suffix(".Dockerfile")
        df.write_text(to_dockerfile(r.text))
        typer.echo(f"wrote {out} and {df} (recipe sha256 {r.sha256})")
        return
    typer.echo(to_dockerfile(r.text) if dockerfile else r.text, nl=False)


@app.command()
def build(
    target: str = TargetOpt,
    tcmalloc: bool = TcmallocOpt,
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help="apptainer, singularity, podman or docker "
                                         "(default: the first installed, in that order)"),
    base: Optional[str] = BaseOpt,
    staged: bool = StagedOpt,
    torch: str = TorchOpt,
    torch_wheel: Optional[Path] = TorchWheelOpt,
    dsf: Optional[Path] = DsfOpt,
    wheel_cache: Optional[Path] = typer.Option(None, "--wheel-cache", help="with --staged: where the target's "
                                               "wheels and the unpacked tree are kept (default: $KIT_WHEEL_CACHE "
                                               "or ~/.cache/kit/wheels)"),
    tag: Optional[str] = typer.Option(None, "--tag", help="image name (podman/docker; default localhost/kit:<variant>, e.g. "
                                      "x86_64-tcmalloc, x86_64-tcmalloc-dsf) or SIF path (singularity; default "
                                      "./kit-<variant>.sif)"),
    wheelhouse: list[Path] = typer.Option([], "--wheelhouse", help="directory holding the pinned torch wheel "
                                          "(x86_64 needs the CPU wheel; default: $KIT_WHEELHOUSE, ~/.cache/kit/wheelhouse, /opt/wheels)"),
    context: Optional[Path] = typer.Option(None, "--context", help="build context directory (default: "
                                           "~/.cache/kit/image-build/<variant>)"),
    pip_cache: Optional[Path] = typer.Option(None, "--pip-cache", help="host directory mounted as pip's cache "
                                             "during podman builds (default: $KIT_PIP_CACHE or ~/.cache/kit/pip)"),
    ca_bundle: str = typer.Option("auto", "--ca-bundle", help="host CA bundle mounted for pip during podman builds "
                                  "(auto: $PIP_CERT or the system bundle; none: no mount)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="write the context and print the build command only"),
    json_out: bool = typer.Option(False, "--json", help="print the result as JSON"),
    site: Optional[str] = typer.Option(None, "--site", help="site file (sites/NAME.yaml): how its Singularity "
                                       "builds as a user (e.g. fugaku: --no-setgroups, TMPDIR=/worktmp)"),
) -> None:
    """Build the image for a target with podman, docker, apptainer or singularity."""
    from kit import site as site_mod
    from kit.image import build as b

    opts = _options(target, tcmalloc, base, staged, torch, torch_wheel, dsf)  # bad input first, then the engine
    eng = b.detect_engine(engine)
    ctx = context or kit.cache_dir() / "image-build" / opts.variant()
    cache = pip_cache or Path(os.environ.get("KIT_PIP_CACHE") or kit.cache_dir() / "pip")
    plan = b.prepare(opts, engine=eng, context=ctx, ref=tag, wheelhouse=list(wheelhouse) or None,
                     pip_cache=cache, ca_bundle=ca_bundle, wheel_cache=wheel_cache, torch_wheel=torch_wheel,
                     site=site_mod.load(site) if site else None)
    if dry_run:
        typer.echo(json.dumps(plan.describe(), indent=2) if json_out else
                   " ".join([*(f"{k}={v}" for k, v in plan.env.items()), *plan.argv]))
        return
    info = b.run(plan)
    if json_out:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        typer.echo(f"built {info['ref']} ({info.get('arch')}) digest {info['digest']} in {info['build']['seconds']} s")


@app.command()
def inspect(
    ref: str = typer.Argument(..., help="an OCI image name (podman/docker) or a .sif file"),
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help="podman, docker, apptainer or singularity"),
) -> None:
    """Show an image's digest, architecture and labels (JSON)."""
    from kit.image.inspect import inspect_image

    typer.echo(json.dumps(inspect_image(ref, engine), indent=2, sort_keys=True))
