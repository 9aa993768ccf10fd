"""The built-in GPT training workload: ``python -m kit.workload --help``.

A nanoGPT-style model (``model.py``) trained through DeepSpeed (``train.py``) with data
parallelism / ZeRO, optional pipeline parallelism (deepspeed.pipe) and Megatron-style tensor
parallelism (``tensor_parallel.py``). It prints Megatron-DeepSpeed's per-iteration log line,
so the kit parses it like the original sweep's logs.
"""

from kit.workload.train import Args, Fault, format_line

__all__ = ["Args", "Fault", "format_line"]
