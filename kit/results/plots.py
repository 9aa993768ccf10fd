"""``kit report --plot DIR``: PNG bar charts of a report (matplotlib, no display needed).

One chart per measure — ``sec_per_iter.png``, ``tflops.png``, ``memory.png`` — with one bar per
row, labelled by preset and layout (``2.2Hz, ... | DP4 TP1 PP1``), grouped by model size and
sequence length. Rows without a value (not measured, stalled) are drawn as an empty slot
marked ``-``.
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
    return f"{label}{mark} | {f['nodes']}N DP{f['dp']} TP{f['tp']} PP{f['pp']}"


def plot(rep: Report, out_dir: Path) -> list[Path]:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    groups = rep.groups()
    labels: list[str] = []
    rows: list[dict] = []
    for title, g in groups:
        for f in g:
            labels.append((f"[{title.split(',')[0]}] " if len(groups) > 1 else "") + row_label(f))
            rows.append(f)
    written = []
    for key, name, fname, xlabel in CHARTS:
        values = [f.get(key) for f in rows]
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.6))
        ys = list(range(len(rows)))
        ax.barh(ys, [v or 0 for v in values], color=["tab:blue" if f["status"] == "ok" else "tab:orange" for f in rows])
        for y, v in zip(ys, values):
            ax.text(v or 0, y, f" {v:.3g}" if v is not None else " -", va="center", fontsize=8)
        ax.set_yticks(ys, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.set_title(f"{name}" + (f" — {groups[0][0]}" if len(groups) == 1 else ""))
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        atomic_write(out_dir / fname, buf.getvalue())
        (out_dir / fname).chmod(0o644)
        written.append(out_dir / fname)
    return written
