"""STAND-IN for Linux's RAPL powercap tree (``/sys/class/powercap``), tests only: this VM has none.

Builds the files the kernel exposes, flat as sysfs lists them: ``intel-rapl:N`` (a package:
``name`` ``package-N``, ``energy_uj``, ``max_energy_range_uj``), its parts ``intel-rapl:N:0``
(``core``) and ``intel-rapl:N:1`` (``dram``), and ``intel-rapl:1``... as asked. The counters
are plain files a test (or a background thread) advances; ``advance`` wraps them at
``max_energy_range_uj`` as the hardware counter does. Point ``KIT_POWERCAP_ROOT`` at it.
"""

from __future__ import annotations

from pathlib import Path


def make_tree(root: Path, packages: int = 1, *, start_uj: int = 1_000_000, range_uj: int = 262_143_328_850,
              dram: bool = True, psys: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    zones = []
    for p in range(packages):
        zones.append((f"intel-rapl:{p}", f"package-{p}"))
        zones.append((f"intel-rapl:{p}:0", "core"))
        if dram:
            zones.append((f"intel-rapl:{p}:1", "dram"))
    if psys:
        zones.append((f"intel-rapl:{packages}", "psys"))
    for zone, name in zones:
        d = root / zone
        d.mkdir(exist_ok=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{start_uj}\n")
        (d / "max_energy_range_uj").write_text(f"{range_uj}\n")
    (root / "intel-rapl").mkdir(exist_ok=True)  # the control type directory, not a zone
    return root


def advance(root: Path, zone: str, uj: int) -> int:
    """Adds ``uj`` to a zone's counter, wrapping at its range; the new raw value."""
    d = root / zone
    rng = int((d / "max_energy_range_uj").read_text())
    v = (int((d / "energy_uj").read_text()) + uj) % (rng + 1)
    tmp = d / "energy_uj.tmp"
    tmp.write_text(f"{v}\n")
    tmp.replace(d / "energy_uj")
    return v
