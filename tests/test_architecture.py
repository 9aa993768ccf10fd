"""The layering of kit/, checked from the source: no import cycles, and no layer imports one
above it (ARCHITECTURE.md's layers). Imports under ``if TYPE_CHECKING:`` are types only and
not counted; imports inside functions are."""

from __future__ import annotations

import ast
from pathlib import Path

KIT = Path(__file__).resolve().parent.parent / "kit"


def _module_name(path: Path) -> str:
    rel = path.relative_to(KIT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    out: set[str] = set()

    def add(name: str) -> None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != me:
            out.add(name)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("kit"):
                    add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if not base.startswith("kit"):
                continue
            for a in node.names:
                full = f"{base}.{a.name}"
                add(full if full in modules else base)
    return out


def import_graph() -> dict[str, set[str]]:
    files = [p for p in KIT.rglob("*.py")]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_is_built_from_the_source():
    g = import_graph()
    assert "kit.execute" in g["kit.jobs"] and "kit.jobs" in g["kit.runner"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles in kit/: " + "; ".join(" <-> ".join(c) for c in found)


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# the layers, from the top down (ARCHITECTURE.md); a module may import only its own layer or
# lower. A name ending in "." stands for the package and every module below it; each module
# of kit/ has exactly one layer (kit.workload stands apart: its own test below)
LAYERS: list[tuple[str, ...]] = [
    ("kit.cli", "kit.__main__", "kit.clidoc", "kit.results.cli", "kit.image.cli"),
    ("kit.image.build", "kit.image.recipe", "kit.image.convert", "kit.image.dsf", "kit.image.stage"),
    ("kit.sweep", "kit.reproduce", "kit.repeat"),
    ("kit.runner",),
    ("kit.jobs",),
    ("kit.execute", "kit.finalize"),
    ("kit.outcome",),
    ("kit.results", "kit.results."),
    ("kit.plan", "kit.settings", "kit.site", "kit.metrics", "kit.known_bad", "kit.noise", "kit.recipe", "kit.preset",
     "kit.jobopts", "kit.table"),
    ("kit.schedulers", "kit.schedulers.", "kit.launchers", "kit.launchers.", "kit.runtimes", "kit.runtimes."),
    ("kit.monitor", "kit.energy", "kit.reaper", "kit.logparse", "kit.claim", "kit.proc", "kit.progress"),
    ("kit.bundle", "kit.bundle_reader", "kit.provenance", "kit.signing"),
    ("kit", "kit.errors", "kit.envvars", "kit.registry", "kit.redact", "kit.textsafe", "kit.digest", "kit.locks",
     "kit.engines", "kit.metricdefs", "kit.configfile", "kit.catalog", "kit.flops", "kit.verdict", "kit.hostinfo", "kit.allocator",
     "kit.rankenv", "kit.rankexec", "kit.image", "kit.image.labels", "kit.image.inspect", "kit.image.spy"),
]
RESULTS_READ_ONLY = ("kit.runner", "kit.execute", "kit.finalize", "kit.jobs", "kit.sweep", "kit.reproduce", "kit.repeat")
APART = "kit.workload"


def _layer(module: str) -> int | None:
    exact = [i for i, names in enumerate(LAYERS) if module in names]
    if exact:
        return exact[0]
    under = [i for i, names in enumerate(LAYERS) for n in names if n.endswith(".") and module.startswith(n)]
    return under[0] if under else None


def test_every_module_has_one_layer():
    """A new module is placed in ARCHITECTURE.md's layer list (and here) before it is checked."""
    mods = [m for m in import_graph() if not (m == APART or m.startswith(APART + "."))]
    assert not [m for m in mods if _layer(m) is None], "modules with no layer: " + ", ".join(
        sorted(m for m in mods if _layer(m) is None))
    twice = [m for m in mods if sum(m in names for names in LAYERS) > 1]
    assert not twice, "modules in two layers: " + ", ".join(twice)


def test_the_layer_check_sees_an_upward_import():
    assert _layer("kit.runtimes.base") > _layer("kit.plan") and _layer("kit.results.store") < _layer("kit.plan")
    assert _layer("kit.image.labels") > _layer("kit.runtimes.base")


def test_no_layer_imports_one_above_it():
    bad = []
    for mod, deps in import_graph().items():
        if mod == APART or mod.startswith(APART + "."):
            continue
        mine = _layer(mod)
        for d in deps:
            theirs = _layer(d)
            if theirs is not None and (mine is None or theirs < mine):
                bad.append(f"{mod} imports {d}")
    assert not bad, "; ".join(sorted(bad))


def test_results_only_read():
    bad = [f"{m} imports {d}" for m, deps in import_graph().items() if m.startswith("kit.results.")
           and m != "kit.results.cli" for d in deps if d in RESULTS_READ_ONLY]
    assert not bad, "; ".join(sorted(bad))


def test_the_workload_imports_only_rankenv_and_flops():
    bad = [f"{m} imports {d}" for m, deps in import_graph().items() if m.startswith("kit.workload")
           for d in deps if not d.startswith("kit.workload") and d not in ("kit.rankenv", "kit.flops", "kit")]
    assert not bad, "; ".join(sorted(bad))
