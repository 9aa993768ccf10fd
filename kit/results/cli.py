"""The results commands: ``kit bundle pack|verify|import|sign|keygen|show``, ``kit report``, ``kit compare``,
``kit sweep``, ``kit reproduce``. A thin Typer layer over :mod:`kit.results`.

Exit codes: 0 ok; 1 verification failed (each problem on its own line, naming the file), a
report left bundles out, a sweep point failed, or a reproduction differs beyond its
tolerance; 2 bad input (``KitError``: one line on stderr); 3 a reproduction's run failed or
stalled; 4 a reproduction's environment could not be matched; 130 interrupted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from kit.errors import EXIT_FAILED, EXIT_OK
from kit.results import VerificationFailed
from kit.textsafe import terminal

bundle_app = typer.Typer(help="Result bundles: pack to one .tar.gz, verify, import safely, sign, show.",
                         no_args_is_help=True)
out = Console(stderr=False, soft_wrap=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="print the result as JSON (schema: README.md, JSON output)")]
err = Console(stderr=True, soft_wrap=True)


def _problems(e: VerificationFailed) -> None:
    err.print(terminal(f"kit: {e.what}"), highlight=False, markup=False)
    for p in e.problems:
        print(terminal(p), file=sys.stderr)
    raise typer.Exit(EXIT_FAILED)


MaxArchive = Annotated[Optional[float], typer.Option("--max-archive-mib", help="refuse archives larger than this")]
MaxMember = Annotated[Optional[float], typer.Option("--max-member-mib", help="refuse any file larger than this")]
MaxTotal = Annotated[Optional[float], typer.Option("--max-total-mib", help="refuse bundles larger than this in all")]
MaxMembers = Annotated[Optional[int], typer.Option("--max-members", help="refuse archives with more members")]
MaxRatio = Annotated[Optional[float], typer.Option("--max-ratio", help="refuse archives that inflate more than this many times")]
MaxSeconds = Annotated[Optional[float], typer.Option("--max-seconds", help="give up reading an archive after this long")]


TrustedKeys = Annotated[Optional[Path], typer.Option(
    "--trusted-keys", envvar="KIT_TRUSTED_KEYS", metavar="FILE|DIR",
    help="ssh-ed25519 public keys (a file of .pub lines or a directory of .pub files): "
         "the bundle must be signed by one of them")]


def _trust(path: Path | None):
    from kit import signing

    return signing.load_trusted(path) if path is not None else None


def _limits(**given):
    from kit.results import archive

    return archive.resolve_limits(**{k.removesuffix("_mib"): v for k, v in given.items()})


@bundle_app.command("pack")
def pack_cmd(bundle: Annotated[Path, typer.Argument(help="bundle directory")],
             output: Annotated[Optional[Path], typer.Option("--out", "-o", help="archive file or directory")] = None):
    """Verify a bundle and pack it into one <id>.tar.gz."""
    from kit.results import archive

    try:
        path = archive.pack(bundle, output)
    except VerificationFailed as e:
        _problems(e)
    out.print(f"packed: {path}", highlight=False, markup=False)


@bundle_app.command("verify")
def verify_cmd(paths: Annotated[list[Path], typer.Argument(help="bundle directories, .tar.gz archives or results directories")],
               max_archive_mib: MaxArchive = None, max_member_mib: MaxMember = None, max_total_mib: MaxTotal = None,
               max_members: MaxMembers = None, max_ratio: MaxRatio = None, max_seconds: MaxSeconds = None,
               trusted_keys: TrustedKeys = None, as_json: JsonOpt = False):
    """Check the schema, the final status, every checksum and the signature; print each problem, naming the file."""
    from kit.results import archive

    lim = _limits(max_archive_mib=max_archive_mib, max_member_mib=max_member_mib, max_total_mib=max_total_mib,
                  max_members=max_members, max_ratio=max_ratio, max_seconds=max_seconds)
    trust = _trust(trusted_keys)
    results: list[dict] = []
    for p in paths:
        try:
            verdicts = archive.verify_path(p, lim, trust)
        except VerificationFailed as e:
            results.append({"path": str(p), "ok": False, "status": None, "problems": list(e.problems)})
            if not as_json:
                for line in e.problems:
                    print(terminal(line), file=sys.stderr)
            continue
        for v, sig in verdicts:
            results.append({"path": str(v.path), "ok": v.ok, "status": v.status, "problems": list(v.problems),
                            "signature": sig.to_json()})
            if as_json:
                continue
            if v.ok:
                out.print(terminal(f"ok: {v.path} ({v.status}; {sig.describe()})"), highlight=False, markup=False)
            else:
                for line in v.problems:
                    print(terminal(line), file=sys.stderr)
                err.print(terminal(f"FAILED: {v.path}: {len(v.problems)} problem(s)"), highlight=False, markup=False)
    bad = sum(not r["ok"] for r in results)
    if as_json:
        print(json.dumps({"ok": not bad, "bundles": results}, indent=2))
    raise typer.Exit(EXIT_FAILED if bad else EXIT_OK)


@bundle_app.command("import")
def import_cmd(archive_file: Annotated[Path, typer.Argument(metavar="FILE", help="a .tar.gz written by `kit bundle pack`")],
               into: Annotated[Path, typer.Option(help="results directory to import into")] = Path("results"),
               max_archive_mib: MaxArchive = None, max_member_mib: MaxMember = None, max_total_mib: MaxTotal = None,
               max_members: MaxMembers = None, max_ratio: MaxRatio = None, max_seconds: MaxSeconds = None,
               trusted_keys: TrustedKeys = None):
    """Extract an archive safely (no links, devices, absolute or .. paths; size, count, ratio and time caps) and verify it."""
    from kit.results import archive

    lim = _limits(max_archive_mib=max_archive_mib, max_member_mib=max_member_mib, max_total_mib=max_total_mib,
                  max_members=max_members, max_ratio=max_ratio, max_seconds=max_seconds)
    try:
        path = archive.import_archive(archive_file, into, lim, _trust(trusted_keys))
    except VerificationFailed as e:
        _problems(e)
    out.print(f"imported: {path}", highlight=False, markup=False)


@bundle_app.command("sign")
def sign_cmd(bundle: Annotated[Path, typer.Argument(help="bundle directory")],
             key: Annotated[Path, typer.Option("--key", "-k", help="Ed25519 private key (kit bundle keygen, ssh-keygen -t ed25519)")]):
    """Sign a finished, verified bundle: signature.json covers its manifest, and so every file."""
    from kit import signing

    sig = signing.sign(bundle, key)
    out.print(terminal(f"signed: {bundle} ({sig.describe()})"), highlight=False, markup=False)


@bundle_app.command("keygen")
def keygen_cmd(key: Annotated[Path, typer.Argument(metavar="KEYFILE", help="private key to write (KEYFILE.pub beside it)")],
               comment: Annotated[str, typer.Option(help="name written after the public key (e.g. you@lab)")] = ""):
    """Make an Ed25519 key pair for signing bundles (OpenSSH format; share only KEYFILE.pub)."""
    from kit import signing

    private, public, fp = signing.generate_key(key, comment)
    out.print(terminal(f"private key: {private} (keep it; never put it in a bundle)"), highlight=False, markup=False)
    out.print(terminal(f"public key:  {public} ({fp})"), highlight=False, markup=False)


@bundle_app.command("show")
def show_cmd(bundle: Annotated[Path, typer.Argument(help="bundle directory")],
             as_json: JsonOpt = False):
    """A bundle's summary: status, what ran, the table row, the settings and the verification."""
    from kit.results import show

    s = show.summary(bundle)
    if as_json:
        print(json.dumps(s, indent=2, default=str))
    else:
        out.print(show.render(s), highlight=False, markup=False)
    raise typer.Exit(EXIT_OK if s["verified"] else EXIT_FAILED)


def report_cmd(paths: Annotated[list[Path], typer.Argument(help="bundle directories or results directories")],
               fmt: Annotated[str, typer.Option("--format", "-f", help="markdown | csv | json")] = "markdown",
               as_json: Annotated[bool, typer.Option("--json", help="the same as --format json")] = False,
               plot: Annotated[Optional[Path], typer.Option(help="write PNG charts (sec/it, TFLOPs, memory) here")] = None,
               output: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the report to this file")] = None):
    """The sweep table (fugaku-config-sweep.md's columns), grouped by model size and sequence length."""
    from kit.bundle import atomic_write
    from kit.results import report

    rep = report.build(paths)
    text = report.render(rep, "json" if as_json else fmt)
    if output:
        atomic_write(output, text)
        err.print(f"report: {output}", highlight=False, markup=False)
    else:
        sys.stdout.write(text)
    for s in rep.skipped:
        print(f"warning: {terminal(s)}", file=sys.stderr)
    if plot:
        from kit.results import plots

        for p in plots.plot(rep, plot):
            err.print(f"plot: {p}", highlight=False, markup=False)
    raise typer.Exit(EXIT_FAILED if rep.skipped else EXIT_OK)


def compare_cmd(a: Annotated[Path, typer.Argument(help="bundle A, or a group's directory (kit run --repeat)")],
                b: Annotated[Path, typer.Argument(help="bundle B, or a group's directory")],
                show_all: Annotated[bool, typer.Option("--all", help="list identical sections too")] = False,
                as_json: JsonOpt = False):
    """What differs between two bundles or groups (plan, settings, image, packages, hardware, environment) and,
    per metric, the ratio B/A with its 95% interval and a verdict (faster, slower, within noise, not comparable)."""
    from kit.results import compare, judge

    try:  # nothing unverified is compared: its figures could be anyone's
        c = compare.compare(judge.load_side(a), judge.load_side(b))
    except VerificationFailed as e:
        _problems(e)
    if as_json:
        print(json.dumps(compare.to_json(c), indent=2, default=str))
    else:
        sys.stdout.write(compare.render(c, show_all=show_all))


def sweep_cmd(sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP.yaml", help="sweep file (see sweeps/)")],
              output: Annotated[Optional[Path], typer.Option("--out", help="results directory (default: the file's out:)")] = None,
              launcher: Annotated[Optional[str], typer.Option(help="override the file's launcher (local | slurm | pjm ...)")] = None,
              dry_run: Annotated[bool, typer.Option("--dry-run", help="list the points and what is done, run nothing")] = False):
    """Run (or submit) every point of a grid, skipping points with a finished bundle; end with the report."""
    from kit.bundle import atomic_write
    from kit import sweep
    from kit.results import report

    res = sweep.run_sweep(sweep_file, out=output, launcher=launcher, console=out, dry_run=dry_run)
    if dry_run:
        raise typer.Exit(EXIT_OK)
    sw = sweep.load(sweep_file)
    rep = sweep.summary_report(res, sw.job)
    if rep is not None:
        text = report.render(rep, "markdown")
        out.print("", highlight=False)
        out.print(text, highlight=False, markup=False)
        atomic_write(res.out / f"REPORT-{sw.name}.md", text)
        for s in rep.skipped:
            err.print(f"note: {terminal(s)}", highlight=False, markup=False)
    states: dict[str, int] = {}
    for r in res.rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    out.print("sweep: " + ", ".join(f"{n} {s}" for s, n in states.items()) + f"; results in {res.out}", highlight=False)
    raise typer.Exit(res.exit_code)


def reproduce_cmd(bundle: Annotated[Path, typer.Argument(help="bundle directory to re-run")],
                  output: Annotated[Path, typer.Option("--out", help="results directory for the new bundle")] = Path("results"),
                  tolerance: Annotated[float, typer.Option(help="sec/it and TFLOPs may differ by a factor of 1+T either way; inf: not judged")] = 0.25,
                  mem_tolerance: Annotated[float, typer.Option(help="relative tolerance for peak memory")] = 0.25,
                  loss_tolerance: Annotated[float, typer.Option(help="absolute tolerance for the final loss")] = 1e-3,
                  recipe: Annotated[Optional[str], typer.Option(help="the recipe (name or path) instead of the bundle's catalog name")] = None,
                  preset: Annotated[Optional[list[str]], typer.Option("--preset", "-p", help="preset(s) instead of the bundle's catalog names")] = None,
                  set_: Annotated[Optional[list[str]], typer.Option("--set", help="a recipe value the bundle asks for beyond the allow-list, if you trust it")] = None,
                  launcher: Annotated[Optional[str], typer.Option(help="launcher (default local; never taken from the bundle)")] = None,
                  runtime: Annotated[Optional[str], typer.Option(help="runtime (never taken from the bundle)")] = None,
                  image: Annotated[Optional[str], typer.Option(help="image (never taken from the bundle)")] = None,
                  nodes: Annotated[Optional[int], typer.Option(help="nodes (default 1; never taken from the bundle)")] = None,
                  force: Annotated[bool, typer.Option(help="run even when the environment does not match (still exit 4), or a known-bad combination")] = False):
    """Re-run what a bundle describes (data only: nothing the sender chose runs unless you pass it) and compare."""
    from kit import reproduce

    choices = reproduce.Choices(recipe=recipe, presets=preset or None, overrides=set_ or [], launcher=launcher,
                                runtime=runtime, image=image, nodes=nodes, force=force)
    try:
        r = reproduce.reproduce(bundle, out=output, tol=reproduce.Tolerance(tolerance, mem_tolerance, loss_tolerance),
                                console=out, choices=choices)
    except VerificationFailed as e:
        _problems(e)
    raise typer.Exit(r.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``bundle`` (sub-app), ``report``, ``compare``, ``sweep`` and ``reproduce`` to the main app."""
    app.add_typer(bundle_app, name="bundle")
    app.command("report")(report_cmd)
    app.command("compare")(compare_cmd)
    app.command("sweep")(sweep_cmd)
    app.command("reproduce")(reproduce_cmd)
