"""``kit report --plot DIR``: PNG charts of a report (matplotlib, no display needed).

One chart per measure — ``sec_per_iter.png``, ``tflops.png``, ``memory.png`` — with one line
per setting (a report row, or a group of repeats as one row), labelled by preset and layout
(``2.2Hz, ... | DP4 TP1 PP1``), grouped by model size and sequence length. Every sample is a
point; a group's median is a bar and its spread (min-max) a line through the points, with
``N=`` in the label. Rows without a value (not measured, stalled) are an empty slot marked
``-``. Where rows measured energy, ``tradeoff.png`` draws each row's sec/it against its J/it
(what each setting buys in time and costs in energy), one series per group. When
the rows span more than one node count, ``scaling.png``: sec/it and TFLOPs per node against
nodes, one line per model and settings (ok rows only).
"""

from __future__ import annotations

from pathlib import Path

from kit import metricdefs
from kit.bundle import atomic_write
from kit.results.report import Report

CHARTS = tuple((m.column, m.title[:1].upper() + m.title[1:], m.chart,
                f"{m.title}, {m.unit}" + (f" ({m.better} is better)" if m.better else ""))
               for m in metricdefs.charted())  # (row field, title, file, axis label), from kit.metricdefs


def row_label(f: dict) -> str:
    label = f["label"] or "baseline"
    mark = {"stalled": " ^^", "failed": " (failed)", "interrupted": " (interrupted)"}.get(f["status"], "")
    n = f" N={f['n_ok']}" if "samples" in f else ""
    text = f"{label}{mark}{n} | {f['nodes']}N DP{f['dp']} TP{f['tp']} PP{f['pp']}"
    return text.replace("$", r"\$")  # matplotlib reads $...$ as mathtext: a label from a bundle is plain text


def plot(rep: Report, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    sections = rep.sections()
    labels: list[str] = []
    rows: list[dict] = []
    for title, entries in sections:
        for f in entries:
            labels.append((f"[{title.split(',')[0]}] " if len(sections) > 1 else "") + row_label(f))
            rows.append(f)
    written = []
    for key, name, fname, xlabel in CHARTS:
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.6))
        ys = list(range(len(rows)))
        medians = [f.get(key) for f in rows]
        colours = ["tab:blue" if f["status"] == "ok" else "tab:orange" for f in rows]
        ax.barh(ys, [v or 0 for v in medians], color=colours, alpha=0.35)
        for y, f, v in zip(ys, rows, medians):
            samples = (f.get("samples") or {}).get(key) or ([] if v is None else [v])
            if len(samples) > 1:
                ax.hlines(y, min(samples), max(samples), color="black", linewidth=1)
            ax.scatter(samples, [y] * len(samples), s=14, color="black", zorder=3)
            ax.text(max(samples) if samples else 0, y, f" {v:.3g}" if v is not None else " -", va="center", fontsize=8)
        ax.set_yticks(ys, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel + ("; bar: median, points: every run, line: min-max" if any("samples" in f for f in rows) else ""))
        ax.set_title(f"{name}" + (f" — {sections[0][0]}" if len(sections) == 1 else ""))
        fig.tight_layout()
        written.append(_save(plt, fig, out_dir / fname))
    if any(f.get(TRADEOFF[0].column) is not None and f.get(TRADEOFF[1].column) is not None for f in rows):
        written.append(_tradeoff(plt, sections, out_dir))
    if len({f["nodes"] for f in rows}) > 1:
        written.append(_scaling(plt, rows, out_dir))
    return written


def _scaling(plt, rows: list[dict], out_dir: Path) -> Path:
    """``scaling.png``: sec/it and TFLOPs per node against nodes, a line per size and settings."""
    lines: dict[str, list[dict]] = {}
    for f in rows:
        if f["status"] == "ok" and f.get("sec_per_iter") is not None:
            label = f"{f['size']} {f['label'] or 'baseline'} | {f['ranks_per_node']} rank(s)/node TP{f['tp']} PP{f['pp']}"
            lines.setdefault(label, []).append(f)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for (key, name), ax in zip((("sec_per_iter", "Sec/it (lower is better)"),
                                ("tflops", "TFLOPs per node (higher is better)")), axes):
        for label, fs in lines.items():
            fs = sorted(fs, key=lambda f: f["nodes"])
            ax.plot([f["nodes"] for f in fs], [f.get(key) for f in fs], marker="o", label=label)
        ax.set_xlabel("nodes")
        ax.set_title(name)
        ax.set_xticks(sorted({f["nodes"] for f in rows}))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(plt, fig, out_dir / "scaling.png")


#: (x, y) of the trade-off chart: sec/it against J/it
TRADEOFF = (metricdefs.BY_NAME["sec_per_iter"], metricdefs.BY_NAME["energy_j_per_iter"])


def _save(plt, fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    path.chmod(0o644)
    return path


def _tradeoff(plt, groups, out_dir: Path) -> Path:
    """Each measured row as a point (sec/it, J/it), labelled by its preset and layout."""
    x, y = TRADEOFF
    fig, ax = plt.subplots(figsize=(9, 6))
    for title, g in groups:
        pts = [f for f in g if f.get(x.column) is not None and f.get(y.column) is not None]
        if not pts:
            continue
        ax.scatter([f[x.column] for f in pts], [f[y.column] for f in pts], label=title)
        for f in pts:
            ax.annotate(row_label(f), (f[x.column], f[y.column]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel(f"{x.title}, {x.unit} ({x.better} is better)")
    ax.set_ylabel(f"{y.title}, {y.unit} ({y.better} is better)")
    ax.set_title("Time against energy per iteration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, out_dir / "tradeoff.png")
