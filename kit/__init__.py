"""kit: a reproducibility kit for LLM training sweeps on HPC systems.

A run flows recipe + preset -> plan -> launcher + runtime -> monitor -> bundle.
See README.md and the module docstrings of each step.
"""

import os
from pathlib import Path

__version__ = "0.1.0"


def cache_dir() -> Path:
    """Where the kit keeps what it can rebuild (wheels, image contexts, software inventories):
    ``$KIT_CACHE_DIR``, or ``~/.cache/kit``."""
    return Path(os.environ.get("KIT_CACHE_DIR") or Path.home() / ".cache" / "kit")
