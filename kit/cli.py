"""The ``kit`` command line: a thin Typer layer over the library.

Exit codes: 0 ok; 1 the run failed; 2 bad input (one line on stderr, nothing ran);
3 the run stalled; 130 the run was interrupted. See README.md.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
import yaml
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kit import catalog, flops as flops_mod, plan as plan_mod, preset as preset_mod, recipe as recipe_mod
from kit.bundle_reader import BundleReadError
from kit.errors import EXIT_INTERRUPTED, EXIT_USAGE, KitError
from kit.results.cli import JsonOpt
from kit.textsafe import terminal, terminal_tree

if TYPE_CHECKING:
    from kit.outcome import Outcome

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)  # help: _root's docstring
recipes_app = typer.Typer(help="Pinned training recipes (recipes/*.yaml).", no_args_is_help=True)
presets_app = typer.Typer(help="Machine-setting presets (env/*.yaml).", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
app.add_typer(presets_app, name="presets")

console = Console(stderr=False)
err = Console(stderr=True)


def _print_json(data: object, *, one_line: bool = False) -> None:
    print(json.dumps(data, default=str, indent=None if one_line else 2))


def versions() -> dict[str, str | None]:
    """The kit's, Python's, torch's and DeepSpeed's versions (None: not installed), read from
    the installed packages' metadata: nothing heavy is imported."""
    import platform
    from importlib import metadata

    import kit

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"kit": kit.__version__, "python": platform.python_version(), "torch": dist("torch"),
            "deepspeed": dist("deepspeed")}


def _version_callback(value: bool) -> None:
    if value:
        v = versions()
        others = ", ".join(f"{label} {v[k] or 'not installed'}"
                           for k, label in (("python", "Python"), ("torch", "torch"), ("deepspeed", "DeepSpeed")))
        print(f"kit {v['kit']} ({others})")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                                help="print the kit's, Python's, torch's and DeepSpeed's versions")] = False):
    """kit: reproducible LLM training sweeps on HPC systems (Fugaku/PJM, Slurm, workstations)."""


def _register_optional(module: str, name: str) -> None:
    """Sub-apps that live in their own packages (image, bundle, ...)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        return
    app.add_typer(mod.app, name=name)


def _recipe_names(incomplete: str) -> list[str]:
    """Shell completion: the recipes on the search path."""
    return [n for n in catalog.available("recipe") if n.startswith(incomplete)]


def _preset_names(incomplete: str) -> list[str]:
    """Shell completion: the presets on the search path."""
    return [n for n in catalog.available("preset") if n.startswith(incomplete)]


@app.command()
def run(
    recipe: Annotated[str, typer.Argument(help="recipe name or path", autocompletion=_recipe_names)] = recipe_mod.DEFAULT_RECIPE,
    preset: Annotated[Optional[list[str]], typer.Option("--preset", "-p", help="preset(s), composed left to right",
                                                        autocompletion=_preset_names)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a recipe value: key=value (recorded)")] = None,
    launcher: Annotated[str, typer.Option(help="local | mpirun | srun | slurm | pjm")] = "local",
    runtime: Annotated[Optional[str], typer.Option(help="host | podman | docker | singularity | apptainer")] = None,
    image: Annotated[Optional[str], typer.Option(help="run the pinned command inside this image")] = None,
    nodes: Annotated[int, typer.Option(help="number of nodes")] = 1,
    out: Annotated[Path, typer.Option(help="results directory")] = Path("results"),
    time_limit: Annotated[str, typer.Option("--time", help="job time limit HH:MM:SS (slurm, pjm)")] = "01:00:00",
    queue: Annotated[Optional[str], typer.Option(help="Slurm partition / PJM rscgrp")] = None,
    account: Annotated[Optional[str], typer.Option(help="Slurm account / PJM group")] = None,
    llio: Annotated[Optional[list[str]], typer.Option(help="PJM --llio option (repeatable)")] = None,
    site: Annotated[Optional[str], typer.Option(help="site file or name in sites/ (default $KIT_SITE; pjm: fugaku)")] = None,
    wait: Annotated[bool, typer.Option(help="batch launchers: wait for the job and finalize the bundle")] = False,
    force: Annotated[bool, typer.Option(help="run combinations known to hang or fail anyway")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (and job script), run nothing")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="progress to stderr; the result (bundle path, id, status, "
                                                         "summary) as the last line of stdout, in JSON")] = False,
    repeat: Annotated[int, typer.Option(min=1, help="run N times as one group (OUT/<group>/: N bundles sharing a group id)")] = 1,
    spread: Annotated[Optional[str], typer.Option(help="with --repeat: space the runs' starts evenly over this time "
                                                       "(e.g. 30m, 2h)")] = None,
):
    """Run a recipe under presets, watch it, and write a result bundle."""
    from kit import repeat as repeat_mod, runner

    plan = plan_mod.resolve(recipe_name=recipe, overrides=set_ or [], preset_names=preset or None, launcher=launcher,
                            runtime=runtime, image=image, nodes=nodes, force=force, site=site,
                            job=plan_mod.JobOptions(time_limit=time_limit, queue=queue, account=account,
                                                    llio=llio or [], wait=wait))
    if dry_run:
        _print_dry_run(plan, as_json)
        return
    con = err if as_json else console
    if spread is not None and repeat < 2:
        raise KitError("--spread spaces repeats", where="kit run --spread", fix="add --repeat N (2 or more)")
    spread_s = repeat_mod.parse_duration(spread, "kit run --spread") if spread else 0.0
    if repeat > 1:
        g = repeat_mod.run_group(plan, repeat, out, con, spread_s=spread_s)
        if as_json:
            _print_json({"group": g.group, "path": str(g.path), "runs": [_run_result(o) for o in g.outcomes]},
                        one_line=True)
        raise typer.Exit(g.exit_code)
    outcome = runner.run(plan, out, con)
    if as_json:
        _print_json(_run_result(outcome), one_line=True)
    raise typer.Exit(outcome.exit_code)


def _run_result(outcome: Outcome) -> dict:
    """``kit run --json``'s line: the bundle's path, id, status and metrics summary (read back
    from the bundle when the outcome does not carry it: a batch job waited for)."""
    from kit import bundle as bundle_mod

    b = outcome.bundle
    summary = outcome.summary
    if not summary and (b.path / "metrics.json").is_file():
        summary = bundle_mod.load_json(b.path, "metrics.json").get("summary")
    return {"path": str(b.path), "id": b.id, "status": outcome.status, "reason": outcome.reason,
            "exit_code": outcome.exit_code, "summary": summary or None}


def _print_dry_run(plan: plan_mod.Plan, as_json: bool) -> None:
    from kit import known_bad, schedulers

    known_bad.warn(plan, err if as_json else console)
    script = schedulers.get(plan.launcher).render(plan, Path("results") / "<bundle-id>",
                                                  warnings=known_bad.script_warnings(plan)) if plan.batch else None
    if as_json:
        _print_json({"plan": plan.summary(), "script": script}, one_line=True)
    elif script is not None:
        console.print(script, highlight=False, markup=False, soft_wrap=True)
    else:
        console.print_json(json.dumps(plan.summary(), default=str))


@app.command("noise")
def noise_cmd(
    recipe: Annotated[str, typer.Argument(help="recipe name or path")] = recipe_mod.DEFAULT_RECIPE,
    preset: Annotated[Optional[list[str]], typer.Option("--preset", "-p", help="preset(s), composed left to right")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a recipe value: key=value")] = None,
    repeat: Annotated[Optional[int], typer.Option(min=2, help="identical runs to measure [default: 5]")] = None,
    spread: Annotated[Optional[str], typer.Option(help="space the runs' starts evenly over this time (e.g. 30m, 2h), "
                                                       "so that they see the host at different times")] = None,
    from_: Annotated[Optional[list[str]], typer.Option("--from", help="add finished runs of this recipe (a bundle or a "
                                                       "group's directory; repeatable) to the record of the host "
                                                       "they ran on, instead of running any")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="forget the runs stored before (the host changed)")] = False,
    out: Annotated[Path, typer.Option(help="results directory (the runs are OUT/<group>/)")] = Path("results"),
    show: Annotated[bool, typer.Option("--show", help="print the stored floor for this host and recipe; run nothing")] = False,
    host: Annotated[Optional[str], typer.Option(help="with --show: another host's record (e.g. a compute node's, "
                                                     "from a login node)")] = None,
    as_json: JsonOpt = False,
):
    """This host's noise floor for a recipe: identical runs, by how much they differ (stored, adding to earlier
    measurements; compare and reproduce use it)."""
    from kit import noise, repeat as repeat_mod

    modes = [m for m, on in (("--from", bool(from_)), ("--show", show)) if on]
    clash = [o for o, on in (("--repeat", repeat is not None), ("--spread", spread is not None)) if on]
    if len(modes) > 1 or (modes and clash):
        raise KitError(f"{' and '.join(modes + clash)} cannot be used together", where="kit noise",
                       fix="--from adds runs already made, --show prints what is stored; --repeat/--spread run new ones")
    if host is not None and not show:
        raise KitError("--host only selects the record --show prints", where="kit noise --host", fix="add --show")
    plan = plan_mod.resolve(recipe_name=recipe, overrides=set_ or [], preset_names=preset or None)
    if from_:
        path = repeat_mod.noise_from(plan, [Path(p) for p in from_], err if as_json else console, reset=reset)
        if as_json:
            _print_json({"stored": str(path), "record": json.loads(path.read_text())}, one_line=True)
        return
    if show:
        rec = noise.load(host or noise.this_host(), plan.recipe_name, plan.summary()["recipe_sha256"])
        if rec is None:
            raise KitError(f"no noise floor stored for {plan.recipe_name} on {host or 'this host'}", where="kit noise --show",
                           fix=f"measure one: kit noise {recipe}" + "".join(f" --set {s}" for s in set_ or []))
        if as_json:
            _print_json(rec)
        else:
            console.print(noise.describe(rec), highlight=False, markup=False, soft_wrap=True)
        return
    spread_s = repeat_mod.parse_duration(spread, "kit noise --spread") if spread else 0.0
    group, path = repeat_mod.measure_noise(plan, repeat or 5, out, err if as_json else console, spread_s=spread_s,
                                           reset=reset)
    if path is None:
        err.print("kit: noise floor not stored: no run finished", highlight=False, markup=False)
    if as_json:
        _print_json({"group": group.group, "path": str(group.path), "stored": str(path) if path else None,
                     "record": json.loads(path.read_text()) if path else None}, one_line=True)
    raise typer.Exit(group.exit_code)


@app.command("job-run", hidden=True)
def job_run(bundle: Annotated[Path, typer.Argument(help="bundle directory made at submission")]):
    """Inside a batch job: start the ranks of the bundle's plan and finalize the bundle."""
    from kit.jobs import run_inside_job

    raise typer.Exit(run_inside_job(bundle, console))


@app.command()
def status(bundle: Annotated[Path, typer.Argument(help="bundle directory of a batch run")], as_json: JsonOpt = False):
    """A batch run's state: the bundle's status and, until it is final, the job manager's."""
    from kit.jobs import status as job_status

    st = job_status(bundle)
    if as_json:
        _print_json(st)
        return
    console.print(_status_text(st), highlight=False, markup=False, soft_wrap=True)


def _status_text(st: dict) -> str:
    """The status as lines of text, every value from the bundle escaped for the terminal."""
    st = terminal_tree(st)
    line = f"{Path(st['path']).name}: {st['status']}" + (f": {st['reason']}" if st["reason"] else "")
    job = st["job"]
    if job is None:
        return line
    if job["state"] is None:  # the bundle is final: the job manager is not asked
        return f"{line} ({job['launcher']} job {job['job_id']})"
    text = f"{line}\n{job['launcher']} job {job['job_id']}: {job['state']}" + (f" ({job['reason']})" if job["reason"] else "")
    if job["ended"]:
        text += f"\nthe job has ended but the bundle is not finalized: run `kit collect {st['path']}`"
    return text


@app.command()
def collect(
    bundle: Annotated[Path, typer.Argument(help="bundle directory of a batch run")],
    wait: Annotated[bool, typer.Option(help="wait for the job to end first")] = False,
):
    """Finalize a batch run's bundle once its job has ended (also when it was killed or timed out).

    Exit codes as for `kit run`; 4 when the job has not ended yet.
    """
    from kit import jobs

    out = jobs.wait(bundle, console) if wait else jobs.collect(bundle, console)
    raise typer.Exit(out if isinstance(out, int) else out.exit_code)


@app.command()
def cancel(bundle: Annotated[Path, typer.Argument(help="bundle directory of a batch run (kit run --launcher slurm|pjm)")]):
    """Cancel a batch run's job (scancel, pjdel) and finalize its bundle as interrupted, with the reason.

    Waits for the job manager to end the job (up to $KIT_CANCEL_WAIT_S, 120 s), then collects
    it as `kit collect` does; what the run logged is kept. Exit 0 with "already ended" when the
    job manager says the job had ended: nothing is cancelled. A bundle already final is left as
    it is, but its job is cancelled if it still holds its nodes (exit 0). A job whose state is
    unknown is cancelled too, but collected only once the job manager says how it ended. Exit 2
    for a bundle that is not a batch run; 4 when the job has not ended in time or its state is
    unknown (`kit collect` it later); otherwise as for `kit run` (130: interrupted).
    """
    from kit import jobs

    out = jobs.cancel(bundle, console)
    raise typer.Exit(out if isinstance(out, int) else out.exit_code)


@app.command("job-monitor", hidden=True)
def job_monitor(bundle: Annotated[Path, typer.Argument()], head: Annotated[Optional[str], typer.Option()] = None):
    """Inside a multi-node job: watch this node's ranks into monitor/<host>.json until stopped."""
    from kit.jobs import monitor_node

    raise typer.Exit(monitor_node(bundle, head=head))


@app.command()
def flops(
    layers: Annotated[int, typer.Option(help="transformer layers L")],
    hidden: Annotated[int, typer.Option(help="hidden size h")],
    seq: Annotated[int, typer.Option(help="sequence length s")],
    vocab: Annotated[int, typer.Option(help="vocabulary size (padded as Megatron pads it)")],
    global_batch: Annotated[int, typer.Option(help="global batch B")],
    sec_per_iter: Annotated[float, typer.Option(help="measured seconds per iteration")],
    checkpoint_activations: Annotated[bool, typer.Option(help="activation checkpointing (f=4)")] = False,
    tp: Annotated[int, typer.Option(help="tensor parallel size (vocab padding)")] = 1,
    world_size: Annotated[int, typer.Option(help="total ranks")] = 1,
    ranks_per_node: Annotated[Optional[int], typer.Option(help="ranks per node (default world/nodes)")] = None,
    nodes: Annotated[int, typer.Option(help="nodes")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON object")] = False,
):
    """The TFLOPs columns for a shape, batch, layout and sec/it (Megatron's formula)."""
    for name, v in (("--layers", layers), ("--hidden", hidden), ("--seq", seq), ("--vocab", vocab),
                    ("--global-batch", global_batch), ("--tp", tp), ("--world-size", world_size), ("--nodes", nodes)):
        if v <= 0:
            raise KitError(f"{name} {v} must be positive", where=name, fix="give a positive integer")
    if not math.isfinite(sec_per_iter) or sec_per_iter <= 0:
        raise KitError(f"--sec-per-iter {sec_per_iter} must be a positive finite number", where="--sec-per-iter",
                       fix="give the measured seconds")
    t = flops_mod.throughput(layers=layers, hidden=hidden, seq=seq, vocab=vocab, global_batch=global_batch,
                             sec_per_iter=sec_per_iter, checkpoint_activations=checkpoint_activations, tp=tp,
                             world_size=world_size, ranks_per_node=ranks_per_node, nodes=nodes)
    if as_json:
        print(json.dumps(t.as_dict()))
        return
    console.print(f"FLOPs per iteration  {t.flops_per_iter:.4e}\n"
                  f"TFLOPs per rank      {t.tflops_per_rank:.4f}\n"
                  f"TFLOPs (per node)    {t.tflops:.2f}\n"
                  f"Est. Aggr. PetaFLOPs {t.est_aggr_pflops:.4f}", highlight=False)


def _table(*columns: str) -> Table:
    """A catalog table: the name never wrapped, the source last and never cut."""
    t = Table(box=box.SIMPLE_HEAD)
    t.add_column(columns[0], no_wrap=True)
    for c in columns[1:]:
        t.add_column(c, min_width=len(c))
    t.add_column("source", overflow="fold", min_width=14)
    return t


@recipes_app.command("list")
def recipes_list(as_json: JsonOpt = False):
    """Recipes on the search path: name, shape, layout, batch, iterations and where each comes from."""
    rows = []
    for name, path in catalog.entries("recipe").items():
        try:
            r, rpath = recipe_mod.load(name)
            plan_mod.check_recipe_env(r, rpath)
        except KitError as e:
            rows.append({"name": name, "source": catalog.source("recipe", path), "recipe": None, "error": str(e)})
            continue
        rows.append({"name": name, "source": catalog.source("recipe", path), "recipe": r.model_dump(by_alias=True),
                     "error": None})
    if as_json:
        _print_json(rows)
        return
    t = _table("recipe", "model", "layout", "batch", "iters")
    for row in rows:
        if row["error"]:
            t.add_row(row["name"], Text(f"invalid: {row['error']}", style="red"), "", "", "", row["source"])
            continue
        r = recipe_mod.Recipe.model_validate(row["recipe"])
        m, p = r.model, r.parallel
        t.add_row(Text(row["name"]), f"L{m.layers} h{m.hidden} a{m.heads} s{m.seq}" + (" ckpt" if m.checkpoint_activations else ""),
                  f"DP {p.dp or 'auto'} TP {p.tp} PP {p.pp} Z{p.zero}", f"{r.batch.micro}/{r.batch.global_batch}",
                  str(r.train.iters), Text(row["source"]))
    console.print(t)


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="recipe name or path", autocompletion=_recipe_names)],
                 set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a value: key=value")] = None,
                 as_json: JsonOpt = False):
    """A recipe as resolved (with overrides), and the file it came from."""
    r, path = recipe_mod.load(name, set_ or [])
    data = r.model_dump(by_alias=True)
    if as_json:
        _print_json({"name": r.name, "source": catalog.source("recipe", path), "recipe": data})
        return
    console.print(f"# {catalog.source('recipe', path)}", highlight=False, markup=False)
    console.print(yaml.safe_dump(data, sort_keys=False), highlight=False, markup=False, soft_wrap=True)


@presets_app.command("list")
def presets_list(as_json: JsonOpt = False):
    """Presets on the search path, as composed, and where each comes from."""
    rows = []
    for name, path in catalog.entries("preset").items():
        try:
            p, _ = preset_mod.load([name])
        except KitError as e:
            rows.append({"name": name, "source": catalog.source("preset", path), "preset": None, "error": str(e)})
            continue
        rows.append({"name": name, "source": catalog.source("preset", path),
                     "preset": p.model_dump(exclude={"extends"}), "error": None})
    if as_json:
        _print_json(rows)
        return
    t = _table("preset", "MHz", "allocator", "retention", "ranks/node", "threads")
    for row in rows:
        if row["error"]:
            t.add_row(row["name"], Text(f"invalid: {row['error']}", style="red"), "", "", "", "", row["source"])
            continue
        p = row["preset"]
        t.add_row(Text(row["name"]), str(p["freq_mhz"] or "-"), Text(p["allocator"] or "-"),
                  str(p["retention_state"] if p["retention_state"] is not None else "-"),
                  str(p["ranks_per_node"] or "layout"), str(p["threads_per_rank"] or "auto"), Text(row["source"]))
    console.print(t)


@presets_app.command("show")
def presets_show(names: Annotated[list[str], typer.Argument(help="one or more presets, composed left to right",
                                                            autocompletion=_preset_names)],
                 as_json: JsonOpt = False):
    """A preset (or a composition) fully resolved, and the files it came from."""
    p, files = preset_mod.load(names)
    sources = [catalog.source("preset", f) for f in files]
    data = p.model_dump(exclude={"extends"})
    if as_json:
        _print_json({"names": names, "sources": sources, "preset": data})
        return
    console.print("# composed from: " + ", ".join(sources), highlight=False, markup=False)
    console.print(yaml.safe_dump(data, sort_keys=False), highlight=False, markup=False, soft_wrap=True)


@app.command("cli-reference", hidden=True)
def cli_reference(write: Annotated[Optional[Path], typer.Option(help="replace the marked section of this file "
                                                                     "(README.md) instead of printing")] = None):
    """The command reference, as Markdown, from every command's own help (README.md's section)."""
    from kit import clidoc

    ref = clidoc.render(typer.main.get_command(app))
    if write is None:
        sys.stdout.write(ref)
        return
    changed = clidoc.write(write, ref)
    err.print(f"{write}: command reference {'updated' if changed else 'already up to date'}", highlight=False, markup=False)


_register_optional("kit.image.cli", "image")
from kit.results import cli as _results_cli  # noqa: E402  (bundle, report, compare, sweep, reproduce)

_results_cli.register(app)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2, no traceback."""
    try:
        rc = app(standalone_mode=False)
    except KitError as e:
        err.print(f"kit: error: {terminal(e)}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except typer.TyperException as e:  # bad CLI values (click's UsageError and kin), on one line
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "kit"
        msg = " ".join(e.format_message().split())
        if not msg:  # `kit` alone: the help was printed
            sys.exit(e.exit_code)
        err.print(f"kit: error: {cmd}: {msg} (see `{cmd} --help`)", highlight=False, markup=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C outside a run's own guard (a run's bundle is final by then)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a further Ctrl-C must not interrupt the exit
        err.print("kit: interrupted", highlight=False, markup=False)
        sys.exit(EXIT_INTERRUPTED)
    except BundleReadError as e:  # a bundle file that cannot be read safely (a FIFO, a link, too big, bad JSON)
        err.print(f"kit: error: {terminal(e)}; see `kit bundle verify`", highlight=False, markup=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except ValidationError as e:  # a bundle document of the wrong shape (e.g. its manifest)
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        err.print(f"kit: error: {terminal(e.title)}: {terminal(where)}: {terminal(first.get('msg', ''))}; "
                  f"see `kit bundle verify`", highlight=False, markup=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except OSError as e:  # a path given on the command line that cannot be written or read (--out /proc/x)
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"kit: error: {terminal(where)}{e.strerror or e}; pass a directory you can write to",
                  highlight=False, markup=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)
    # the command is done (a run's bundle is final): a Ctrl-C now must not turn its exit code
    # into death by SIGINT on the way out
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
