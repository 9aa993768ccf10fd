"""kit: a reproducibility kit for LLM training sweeps on HPC systems.

A run flows recipe + preset -> plan -> launcher + runtime -> monitor -> bundle.
See README.md and the module docstrings of each step.
"""

__version__ = "0.1.0"
