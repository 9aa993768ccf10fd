"""Energy counters of this node, read by the monitor (``kit.monitor``) around the timed iterations.

Three kinds of counter, each used where the hardware exposes it:

- ``Powercap``: Intel/AMD RAPL through ``/sys/class/powercap`` (``KIT_POWERCAP_ROOT``
  overrides the root): each CPU package zone and its DRAM subzone, ``energy_uj`` in µJ,
  wrapping at ``max_energy_range_uj``.
- ``Nvml``: NVIDIA GPUs through NVML (``nvidia-ml-py``): each device's total energy since
  the driver loaded (``nvmlDeviceGetTotalEnergyConsumption``, mJ, 64-bit: no wrap).
- ``PowerApi``: Fujitsu's Power API on Fugaku/A64FX compute nodes (``libpwr.so`` through
  ctypes): the node's measured energy (context ``PWR_CNTXT_FX1000``, object ``plat.node``,
  ``PWR_ATTR_MEASURED_ENERGY``, J), and the estimated energy of each CMG's cores and memory
  (context ``PWR_CNTXT_DEFAULT``, ``plat.node.cpu.cmgN.cores`` / ``plat.node.memN``,
  ``PWR_ATTR_ENERGY``) as detail. The constants' values are read from Fujitsu's own headers
  (``KIT_PWR_INCLUDE``, default ``/opt/FJSVtcs/pwrm/aarch64/include``), never guessed.

A ``Meter`` reads every counter found, turns the raw readings into running totals per
domain (adding a counter's range when it wrapped), and keeps the samples with their wall
time; ``window_joules`` then interpolates a node's totals at the start and end of the timed
window. After a PJM job, ``accounted_energy`` reads the job's accounted energy
(``pjstata -j ID``'s ``ACCT_ECON``) as a cross-check.

Where nothing is exposed (a VM, energy_uj readable by root only, no NVIDIA driver, not a
Fugaku node) the meter has no counters and its note says why; energy is then None, never 0.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POWERCAP_ROOT = "/sys/class/powercap"
PWR_INCLUDE = "/opt/FJSVtcs/pwrm/aarch64/include"
PWR_LIBRARY = "/usr/lib64/libpwr.so"
CMGS = 4  # A64FX: four core memory groups per node


class Unavailable(Exception):
    """This kind of counter is not exposed here; the message says why."""


class Counter:
    """One kind of energy counter on this node: ``read()`` gives joules per domain."""

    source = ""
    #: domains whose energy is the node's (summed); the others are detail (estimates, parts)
    counted: tuple[str, ...] = ()
    #: per domain, the joules at which the raw counter wraps to 0 (None: it does not wrap)
    ranges: dict[str, float | None] = {}

    def read(self) -> dict[str, float]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.source} ({', '.join(self.counted)})"

    def close(self) -> None:
        pass


# -- RAPL (powercap) -------------------------------------------------------------------------
class Powercap(Counter):
    """RAPL package and DRAM zones under ``root`` (``intel-rapl:N``, ``intel-rapl:N:M``)."""

    source = "rapl"

    def __init__(self, root: str | os.PathLike | None = None):
        root = Path(root or os.environ.get("KIT_POWERCAP_ROOT") or POWERCAP_ROOT)
        self.files: dict[str, Path] = {}
        self.ranges = {}
        if not root.is_dir():
            raise Unavailable(f"powercap: {root} does not exist (no RAPL driver, or a VM)")
        # sysfs lists every zone flat: intel-rapl:N (a package; or DRAM on some servers) and
        # intel-rapl:N:M (its parts: core, uncore, dram); intel-rapl-mmio duplicates a package
        zones = {z.name: z for z in root.iterdir() if re.fullmatch(r"intel-rapl:\d+(:\d+)?", z.name)}
        for zname in sorted(zones, key=lambda n: [int(x) for x in n.split(":")[1:]]):
            zone = zones[zname]
            name = _read_text(zone / "name")
            if name is None or not (name.startswith("package") or name == "dram"):
                continue  # core, uncore: parts of the package; psys: the platform, overlaps both
            parts = zname.split(":")
            if name == "dram":
                pkg = _read_text(zones[f"intel-rapl:{parts[1]}"] / "name") if len(parts) == 3 and \
                    f"intel-rapl:{parts[1]}" in zones else None
                domain = f"{pkg}.dram" if pkg else f"dram-{parts[1]}"
            else:
                domain = name
            self.files[domain] = zone / "energy_uj"
            rng = _read_text(zone / "max_energy_range_uj")
            self.ranges[domain] = int(rng) / 1e6 if rng and rng.isdigit() else None
        if not self.files:
            raise Unavailable(f"powercap: no RAPL package zone under {root}")
        try:
            self.read()
        except PermissionError:
            raise Unavailable(f"powercap: {next(iter(self.files.values()))} is readable by root only "
                              "(Linux since 5.10); an administrator can make energy_uj readable") from None
        except (OSError, ValueError) as e:
            raise Unavailable(f"powercap: cannot read the RAPL counters: {e}") from None
        self.counted = tuple(self.files)

    def read(self) -> dict[str, float]:
        return {d: int(p.read_text()) / 1e6 for d, p in self.files.items()}


def _read_text(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except OSError:
        return None


# -- NVML --------------------------------------------------------------------------------------
class Nvml(Counter):
    """Every NVIDIA GPU of the node: total energy since the driver loaded (mJ)."""

    source = "nvml"

    def __init__(self, nvml: Any = None):
        if nvml is None:
            try:
                import pynvml as nvml  # nvidia-ml-py
            except ImportError:
                raise Unavailable("NVML: nvidia-ml-py is not installed") from None
        self.nvml = nvml
        try:
            nvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            raise Unavailable(f"NVML: no NVIDIA driver here ({e})") from None
        try:
            n = nvml.nvmlDeviceGetCount()
            self.handles = {f"gpu{i}": nvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)}
            if not self.handles:
                raise Unavailable("NVML: no NVIDIA GPU")
            self.read()
        except Unavailable:
            nvml.nvmlShutdown()
            raise
        except Exception as e:  # noqa: BLE001 - e.g. NotSupported before Volta
            nvml.nvmlShutdown()
            raise Unavailable(f"NVML: no total-energy counter ({e})") from None
        self.counted = tuple(self.handles)
        self.ranges = dict.fromkeys(self.handles)

    def read(self) -> dict[str, float]:
        return {d: self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3 for d, h in self.handles.items()}

    def describe(self) -> str:
        return f"nvml ({len(self.handles)} GPU{'s' if len(self.handles) > 1 else ''})"

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


# -- Fujitsu Power API -------------------------------------------------------------------------
_DEFINE = re.compile(r"^\s*#\s*define\s+(PWR_\w+)\s+\(?\s*([-+]?\w+)\s*\)?\s*(?://.*|/\*.*)?$", re.M)
_ENUM = re.compile(r"\benum\b[^{;]*\{([^}]*)\}", re.S)


def header_constants(include: Path) -> dict[str, int]:
    """Integer values of ``PWR_*`` names in the C headers under ``include`` (``#define`` and
    ``enum``, implicit enum values counted), as the compiler would give them."""
    values: dict[str, int] = {}
    texts = [re.sub(r"/\*.*?\*/", "", p.read_text(errors="replace"), flags=re.S) for p in sorted(include.glob("*.h"))]

    def value(tok: str) -> int | None:
        try:
            return int(tok, 0)
        except ValueError:
            return values.get(tok)

    for text in texts:
        for body in _ENUM.findall(text):
            nxt = 0
            for item in body.split(","):
                item = re.sub(r"//.*", "", item).strip()
                if not item:
                    continue
                name, _, expr = item.partition("=")
                v = value(expr.strip()) if expr.strip() else nxt
                if v is None:
                    break
                values[name.strip()] = v
                nxt = v + 1
    for _ in range(2):  # a define may name an enum value or another define
        for text in texts:
            for name, tok in _DEFINE.findall(text):
                v = value(tok)
                if v is not None:
                    values[name] = v
    return values


class PowerApi(Counter):
    """Fujitsu's Power API: the node's measured energy; the CMGs' estimates as detail (J)."""

    source = "fujitsu-powerapi"
    NEEDED = ("PWR_CNTXT_FX1000", "PWR_CNTXT_DEFAULT", "PWR_ROLE_APP", "PWR_ATTR_MEASURED_ENERGY", "PWR_ATTR_ENERGY",
              "PWR_RET_SUCCESS")

    def __init__(self, library: str | None = None, include: str | None = None):
        lib_path = library or os.environ.get("KIT_LIBPWR") or PWR_LIBRARY
        inc = Path(include or os.environ.get("KIT_PWR_INCLUDE") or PWR_INCLUDE)
        if not Path(lib_path).exists():
            raise Unavailable(f"Fujitsu Power API: {lib_path} not found (not a Fugaku compute node)")
        if not inc.is_dir():
            raise Unavailable(f"Fujitsu Power API: its headers ({inc}) are not here; the constants' values come "
                              "from them (set KIT_PWR_INCLUDE)")
        c = header_constants(inc)
        missing = [n for n in self.NEEDED if n not in c]
        if missing:
            raise Unavailable(f"Fujitsu Power API: {', '.join(missing)} not found in the headers under {inc}")
        self.c = c
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as e:
            raise Unavailable(f"Fujitsu Power API: cannot load {lib_path}: {e}") from None
        self.lib = lib
        lib.PWR_CntxtInit.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.PWR_CntxtGetObjByName.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.PWR_ObjAttrGetValue.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_double),
                                            ctypes.POINTER(ctypes.c_uint64)]
        lib.PWR_CntxtDestroy.argtypes = [ctypes.c_void_p]
        for f in (lib.PWR_CntxtInit, lib.PWR_CntxtGetObjByName, lib.PWR_ObjAttrGetValue, lib.PWR_CntxtDestroy):
            f.restype = ctypes.c_int
        self.contexts: list[ctypes.c_void_p] = []
        measured = self._context("PWR_CNTXT_FX1000")
        try:
            node = self._object(measured, "plat.node")
        except Unavailable:
            self.close()
            raise
        self.objects: dict[str, tuple[ctypes.c_void_p, int]] = {"node": (node, c["PWR_ATTR_MEASURED_ENERGY"])}
        try:
            estimated = self._context("PWR_CNTXT_DEFAULT")
            for i in range(CMGS):
                self.objects[f"cmg{i}.cores.estimated"] = (self._object(estimated, f"plat.node.cpu.cmg{i}.cores"),
                                                           c["PWR_ATTR_ENERGY"])
                self.objects[f"cmg{i}.mem.estimated"] = (self._object(estimated, f"plat.node.mem{i}"),
                                                         c["PWR_ATTR_ENERGY"])
        except Unavailable:
            pass  # the estimates are detail: the measured node energy stands without them
        try:
            self.read()
        except OSError as e:
            self.close()
            raise Unavailable(f"Fujitsu Power API: {e}") from None
        self.counted = ("node",)
        self.ranges = dict.fromkeys(self.objects)

    def _context(self, kind: str) -> ctypes.c_void_p:
        ctx = ctypes.c_void_p()
        rc = self.lib.PWR_CntxtInit(self.c[kind], self.c["PWR_ROLE_APP"], b"kit", ctypes.byref(ctx))
        if rc != self.c["PWR_RET_SUCCESS"]:
            self.close()
            raise Unavailable(f"Fujitsu Power API: PWR_CntxtInit({kind}) returned {rc}")
        self.contexts.append(ctx)
        return ctx

    def _object(self, ctx: ctypes.c_void_p, name: str) -> ctypes.c_void_p:
        obj = ctypes.c_void_p()
        rc = self.lib.PWR_CntxtGetObjByName(ctx, name.encode(), ctypes.byref(obj))
        if rc != self.c["PWR_RET_SUCCESS"]:
            raise Unavailable(f"Fujitsu Power API: object {name}: PWR_CntxtGetObjByName returned {rc}")
        return obj

    def read(self) -> dict[str, float]:
        out = {}
        for domain, (obj, attr) in self.objects.items():
            v, ts = ctypes.c_double(), ctypes.c_uint64()
            rc = self.lib.PWR_ObjAttrGetValue(obj, attr, ctypes.byref(v), ctypes.byref(ts))
            if rc != self.c["PWR_RET_SUCCESS"]:
                raise OSError(f"PWR_ObjAttrGetValue({domain}) returned {rc}")
            out[domain] = v.value
        return out

    def describe(self) -> str:
        return "fujitsu-powerapi (node measured" + (", CMG estimates" if len(self.objects) > 1 else "") + ")"

    def close(self) -> None:
        for ctx in self.contexts:
            self.lib.PWR_CntxtDestroy(ctx)
        self.contexts = []


KINDS = (PowerApi, Powercap, Nvml)


# -- the meter ---------------------------------------------------------------------------------
@dataclass
class Meter:
    """Running totals (J) of every counter found on this node, sampled with their wall time."""

    counters: list[Counter] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)  # why each kind is not here
    interval_s: float = 10.0  # the longest gap between samples (RAPL wraps after minutes at the least)
    samples: list[list[Any]] = field(default_factory=list)  # [time.time(), {domain: J since the first sample}]
    problems: list[str] = field(default_factory=list)
    _last_raw: dict[str, float] = field(default_factory=dict)
    _total: dict[str, float] = field(default_factory=dict)
    _closed: bool = False

    @classmethod
    def detect(cls, kinds=KINDS) -> "Meter":
        m = cls()
        for kind in kinds:
            try:
                m.counters.append(kind())
            except Unavailable as e:
                m.unavailable.append(str(e))
            except OSError as e:  # an unexpected sysfs/library error: no energy, never a failed run
                m.unavailable.append(f"{kind.source}: {e}")
        return m

    def due(self, now: float | None = None) -> bool:
        return bool(self.counters) and (not self.samples or (now or time.time()) - self.samples[-1][0] >= self.interval_s)

    def sample(self) -> float | None:
        """Read every counter now; the sample's wall time (None when there is no counter)."""
        if not self.counters or self._closed:
            return None
        t = time.time()
        for c in self.counters:
            try:
                raw = c.read()
            except (OSError, ValueError) as e:
                self.problems.append(f"{c.source}: read failed at {t:.1f}: {e}")
                continue
            for d, v in raw.items():
                key = f"{c.source}:{d}"
                last = self._last_raw.get(key)
                if last is None:
                    self._total[key] = 0.0
                else:
                    delta = v - last
                    if delta < 0:
                        rng = c.ranges.get(d)
                        if rng:
                            delta += rng  # wrapped once: sampled often enough that it cannot wrap twice
                        else:
                            self.problems.append(f"{key}: counter went back from {last} to {v} (reset); "
                                                 "counted from its new value")
                            delta = v
                    self._total[key] += delta
                self._last_raw[key] = v
        self.samples.append([t, dict(self._total)])
        return t

    def counted(self) -> list[str]:
        return [f"{c.source}:{d}" for c in self.counters for d in c.counted]

    def doc(self) -> dict[str, Any]:
        """What the monitor's snapshot carries for this node."""
        return {"source": " + ".join(c.describe() for c in self.counters) or None,
                "counted": self.counted(), "unavailable": self.unavailable, "problems": self.problems,
                "interval_s": self.interval_s, "samples": list(self.samples)}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for c in self.counters:
                c.close()


def _at(samples: list[list[Any]], t: float, domain: str) -> float | None:
    """A domain's running total at wall time ``t``, linear between the samples around it."""
    pts = [(s[0], s[1][domain]) for s in samples if domain in s[1]]
    if not pts or t < pts[0][0] or t > pts[-1][0]:
        return None
    for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return pts[-1][1] if t == pts[-1][0] else None


def window_joules(doc: dict[str, Any], t0: float, t1: float) -> dict[str, float] | None:
    """Each domain's joules between wall times ``t0`` and ``t1`` from a node's samples; None
    when the samples do not cover the window."""
    out = {}
    for domain in doc["samples"][-1][1] if doc.get("samples") else {}:
        a, b = _at(doc["samples"], t0, domain), _at(doc["samples"], t1, domain)
        if a is None or b is None:
            return None
        out[domain] = b - a
    return out or None


# -- accounted energy (PJM) ----------------------------------------------------------------------
_ECON_KV = re.compile(r"\bACCT_ECON\b\s*[:=]?\s*([-+0-9.eE]+)\s*([A-Za-z]*)")


def parse_acct_econ(text: str) -> tuple[float, str] | None:
    """``ACCT_ECON`` from ``pjstata``'s output, as a ``KEY: value`` pair or a column of a
    table with a header line; (value, unit as printed, "" when none). None when absent."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        cols = line.split()
        if "ACCT_ECON" in cols and len(cols) > 1 and i + 1 < len(lines):
            row = lines[i + 1].split()
            if len(row) == len(cols):
                try:
                    return float(row[cols.index("ACCT_ECON")]), ""
                except ValueError:
                    pass
    m = _ECON_KV.search(text)
    return (float(m.group(1)), m.group(2)) if m else None


def accounted_energy(job_id: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """The job's accounted energy after it ended (``pjstata -j ID``'s ``ACCT_ECON``), as a
    cross-check of the measured energy; its unit is recorded as pjstata prints it."""
    try:
        r = subprocess.run(["pjstata", "-j", str(job_id)], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return {"value": None, "note": f"pjstata could not run: {e}"}
    found = parse_acct_econ(r.stdout)
    if found is None:
        return {"value": None, "note": f"pjstata -j {job_id} printed no ACCT_ECON (exit {r.returncode})"}
    return {"value": found[0], "unit": found[1] or "as printed by pjstata (unit not stated)",
            "source": f"pjstata -j {job_id}", "output": r.stdout}
