"""The training loop: DeepSpeed data parallelism / ZeRO, optional pipeline and tensor parallelism.

Rank layout (the same as ``deepspeed.runtime.pipe.topology.PipeModelDataParallelTopology``):
``rank = (pp_stage * dp + dp_rank) * tp + tp_rank``; TP ranks are neighbours.

dtype: ``fp32`` trains in fp32. ``bf16`` runs the forward/backward under
``torch.autocast(bf16)`` with fp32 master weights and fp32 optimizer (on CPU and on CUDA);
this works with every ZeRO stage and with the pipeline engine, and needs no loss scaling.

``--compile`` (or ``KIT_WORKLOAD_COMPILE=1`` in the environment, e.g. from a preset's ``env``)
runs the model through ``torch.compile`` (inductor): on CPU it fuses LayerNorm, GELU, the
residual adds and the loss (see BENCHMARKS.md for the measured effect); the first iteration
pays the compilation (tens of seconds on 2 cores), which warm-up iterations absorb.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from kit import rankenv


@dataclass(frozen=True)
class Fault:
    kind: str  # hang | crash | segv
    iteration: int
    rank: int | None  # None: every rank

    @classmethod
    def parse(cls, text: str) -> "Fault":
        try:
            kind, rest = text.split("@", 1)
            it, _, rank = rest.partition(":")
            fault = cls(kind, int(it), int(rank) if rank else None)
        except ValueError:
            raise ValueError(f"--fault {text!r}: expected KIND@ITER[:RANK], e.g. crash@5:1") from None
        if fault.kind not in ("hang", "crash", "segv"):
            raise ValueError(f"--fault {text!r}: kind must be hang, crash or segv")
        if fault.iteration < 1 or (fault.rank is not None and fault.rank < 0):
            raise ValueError(f"--fault {text!r}: ITER must be >= 1 and RANK >= 0")
        return fault


@dataclass
class Args:
    layers: int = 2
    hidden: int = 128
    heads: int = 4
    seq: int = 128
    vocab: int = 50257
    micro_batch: int = 1
    global_batch: int = 8
    tp: int = 1
    pp: int = 1
    zero: int = 0
    iters: int = 20
    warmup_iters: int = 0
    seed: int = 1234
    lr: float = 6e-4
    min_lr: float = 6e-5
    checkpoint_activations: bool = False
    dtype: str = "fp32"
    data: str = "synthetic"
    log_interval: int = 1
    compile: bool = False
    faults: list[Fault] = field(default_factory=list)


class UsageError(ValueError):
    """Bad arguments: one line on stderr, exit code 2."""


def check_layout(a: Args, world: int) -> int:
    """Validate the arguments against the world size; returns the data-parallel degree."""
    for name in ("layers", "hidden", "heads", "seq", "vocab", "micro_batch", "global_batch",
                 "tp", "pp", "iters", "log_interval"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1")
    if a.warmup_iters < 0:
        raise UsageError("--warmup-iters must be >= 0")
    if a.zero not in (0, 1, 2, 3):
        raise UsageError("--zero must be 0, 1, 2 or 3")
    if a.dtype not in ("fp32", "bf16"):
        raise UsageError("--dtype must be fp32 or bf16")
    if a.hidden % a.heads:
        raise UsageError(f"--hidden {a.hidden} is not divisible by --heads {a.heads}")
    if world % (a.tp * a.pp):
        raise UsageError(f"world size {world} is not divisible by tp*pp = {a.tp}*{a.pp}")
    dp = world // (a.tp * a.pp)
    if a.heads % a.tp:
        raise UsageError(f"--heads {a.heads} is not divisible by --tp {a.tp}")
    if a.pp > a.layers:
        raise UsageError(f"--pp {a.pp} exceeds --layers {a.layers}")
    if a.pp > 1 and a.zero > 1:
        raise UsageError("pipeline parallelism (--pp > 1) supports only --zero 0 or 1")
    if a.global_batch % (a.micro_batch * dp):
        raise UsageError(f"--global-batch {a.global_batch} is not divisible by "
                         f"micro-batch*dp = {a.micro_batch}*{dp}")
    return dp


class ParallelState:
    """Process groups and a Megatron-like ``mpu`` object for DeepSpeed."""

    def __init__(self, tp: int, pp: int, dp: int, rank: int, world: int):
        import torch.distributed as dist

        self.tp, self.pp, self.dp, self.rank, self.world = tp, pp, dp, rank, world
        self.tp_rank = rank % tp
        self.dp_rank = (rank // tp) % dp
        self.pp_rank = rank // (tp * dp)
        self.tp_group = self.dp_group = None
        if world > 1:
            for s in range(pp):
                for d in range(dp):
                    ranks = [(s * dp + d) * tp + t for t in range(tp)]
                    g = dist.new_group(ranks)
                    if rank in ranks:
                        self.tp_group, self.tp_ranks = g, ranks
                for t in range(tp):
                    ranks = [(s * dp + d) * tp + t for d in range(dp)]
                    g = dist.new_group(ranks)
                    if rank in ranks:
                        self.dp_group, self.dp_ranks = g, ranks
        else:
            self.tp_ranks = self.dp_ranks = [0]

    # --- the mpu interface DeepSpeed queries (pp == 1 only; the pipe engine has its own grid) ---
    def get_model_parallel_group(self):
        return self.tp_group

    def get_model_parallel_rank(self):
        return self.tp_rank

    def get_model_parallel_world_size(self):
        return self.tp

    get_tensor_model_parallel_group = get_model_parallel_group
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_world_size = get_model_parallel_world_size

    def get_tensor_model_parallel_src_rank(self):
        return self.tp_ranks[0]

    def get_data_parallel_group(self):
        return self.dp_group

    def get_data_parallel_rank(self):
        return self.dp_rank

    def get_data_parallel_world_size(self):
        return self.dp

    def get_data_parallel_group_ranks(self):
        return self.dp_ranks

    def get_pipeline_model_parallel_world_size(self):
        return 1


def lr_at(a: Args, it: int) -> float:
    """Megatron-style: linear warmup over warmup_iters, then cosine decay to min_lr at iters."""
    if a.warmup_iters and it <= a.warmup_iters:
        return a.lr * it / a.warmup_iters
    span = max(1, a.iters - a.warmup_iters)
    progress = min(1.0, (it - a.warmup_iters) / span)
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1.0 + math.cos(math.pi * progress))


def format_line(*, iteration: int, iters: int, consumed: int, ms: float, lr: float, gbs: int,
                loss: float, grad_norm: float, samples_per_s: float, tflops: float) -> str:
    """One iteration in Megatron-DeepSpeed's ``training_log`` format."""
    s = " iteration {:8d}/{:8d} |".format(iteration, iters)
    s += " consumed samples: {:12d} |".format(consumed)
    s += " elapsed time per iteration (ms): {:.1f} |".format(ms)
    s += " learning rate: {:.3E} |".format(lr)
    s += " global batch size: {:5d} |".format(gbs)
    s += " lm loss: {:.6E} |".format(loss)
    s += " loss scale: {:.1f} |".format(1.0)
    s += " grad norm: {:.3f} |".format(grad_norm)
    s += " number of skipped iterations: {:3d} |".format(0)
    s += " number of nan iterations: {:3d} |".format(0 if math.isfinite(loss) else 1)
    s += " samples per second: {:.3f} |".format(samples_per_s)
    s += " TFLOPs: {:.2f} |".format(tflops)
    return s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inject(fault: Fault, rank: int) -> None:
    print(f"kit-workload: injecting fault {fault.kind} at iteration {fault.iteration} on rank {rank}",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    if fault.kind == "hang":
        while True:  # stop calling collectives: peers block in their next all-reduce
            time.sleep(3600)
    if fault.kind == "crash":
        os._exit(3)
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(60)  # pragma: no cover - the signal kills us first


def _setup_env() -> tuple[str, bool]:
    """Rank variables, DeepSpeed accelerator choice, threads. Returns (launcher, cuda)."""
    import faulthandler

    faulthandler.enable()  # a crash (e.g. --fault segv) leaves a Python traceback on stderr
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID` dumps every thread's stack (hang triage)
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    if rankenv.detect() is None and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())  # single process: never collide
    source = rankenv.resolve()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return source, cuda


def _quiet_deepspeed() -> None:
    if os.environ.get("KIT_WORKLOAD_VERBOSE"):
        return
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


def _skip_shm_op(cuda: bool) -> None:
    """Skip DeepSpeed's CPU shared-memory allreduce op (a ~35 s g++ build on first use).

    It only serves ``inference_all_reduce``; training collectives go through gloo anyway.
    There is no DeepSpeed env var for this: we mark the op incompatible in DeepSpeed's own
    cached compatibility table, which ``build_shm_op`` consults. KIT_DS_SHM=1 keeps it.
    """
    if cuda or os.environ.get("KIT_DS_SHM") == "1":
        return
    import deepspeed.ops

    try:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    except Exception:  # pragma: no cover - layout changed in another DeepSpeed version
        pass


def _maybe_compile(model, a: Args) -> bool:
    """torch.compile in place (parameter names unchanged, so DeepSpeed and checkpoints see the
    same module): the whole GPT, or each Block of a pipeline stage."""
    if not (a.compile or os.environ.get("KIT_WORKLOAD_COMPILE") == "1"):
        return False
    from kit.workload.model import GPT, Block

    if isinstance(model, GPT):
        model.compile()
    else:
        for m in model.modules():
            if isinstance(m, Block):
                m.compile()
    return True


def _make_optimizer(model, a: Args, cuda: bool):
    import torch

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    for extra in ({"fused": True}, {"foreach": True}, {}):
        try:
            return torch.optim.AdamW(groups, **kw, **extra), next(iter(extra), "for-loop")
        except (RuntimeError, ValueError, TypeError):
            continue
    raise RuntimeError("cannot build AdamW")  # pragma: no cover


def _clip_grad_norm(params, max_norm: float, tp_rank: int, mp_group, mp_size: int) -> float:
    """Megatron's clip_grad_norm: each gradient counted once across TP and PP, then clipped.

    A TP-replicated parameter counts on TP rank 0 only; a pipeline-tied copy
    (``ds_pipe_replicated``) is skipped. Data-parallel peers hold identical gradients.
    """
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    counted = [p.grad.detach() for p in params if p.grad is not None
               and (tp_rank == 0 or getattr(p, "tensor_model_parallel", False))
               and not getattr(p, "ds_pipe_replicated", False)]
    # per-tensor norms without a squared copy of each gradient (the tied 50k x h embedding
    # gradient alone is ~100 MB), then the norm of those norms
    sq = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else "cpu")
    if counted:
        sq += torch.stack(torch._foreach_norm(counted)).float().pow(2).sum()
    if mp_size > 1:
        dist.all_reduce(sq, group=mp_group)
    norm = float(sq.sqrt())
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        torch._foreach_mul_(grads, coef)
    return norm


def run(a: Args) -> int:
    source, cuda = _setup_env()
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dp = check_layout(a, world)

    import warnings

    import torch

    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    # deepspeed.pipe's gloo p2p (broadcast) on tensors that require grad; the results match
    # the unsplit model exactly (same loss and grad norm), so the warning is noise here.
    warnings.filterwarnings("ignore", message="c10d::broadcast_: an autograd kernel", category=UserWarning)
    import deepspeed
    import deepspeed.comm as ds_dist

    from kit import flops
    from kit.workload.data import TokenSource
    from kit.workload.model import GPT, GPTConfig, pipeline_loss, pipeline_specs
    from kit.workload.tensor_parallel import TPGroup

    _quiet_deepspeed()
    _skip_shm_op(cuda)
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)

    ps = ParallelState(a.tp, a.pp, dp, rank, world)
    tp = TPGroup(ps.tp_group, a.tp, ps.tp_rank)
    cfg = GPTConfig(layers=a.layers, hidden=a.hidden, heads=a.heads, seq=a.seq, vocab=a.vocab,
                    tp=a.tp, seed=a.seed, checkpoint_activations=a.checkpoint_activations)
    data = TokenSource(a.data, vocab=a.vocab, seq=a.seq, seed=a.seed)
    gas = a.global_batch // (a.micro_batch * dp)

    torch.manual_seed(a.seed)
    if a.pp > 1:
        from deepspeed.pipe import PipelineModule
        from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

        topo = PipeModelDataParallelTopology(num_pp=a.pp, num_mp=a.tp, num_dp=dp)
        model = PipelineModule(layers=pipeline_specs(cfg, tp), topology=topo, loss_fn=pipeline_loss,
                               partition_method="type:Block", activation_checkpoint_interval=0)
        mpu = None
    else:
        model = GPT(cfg, tp)
        mpu = ps if world > 1 else None
    model.to(device)
    compiled = _maybe_compile(model, a)
    optimizer, opt_kind = _make_optimizer(model, a, cuda)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(a, step + 1) / a.lr)
    ds_config = {
        "train_batch_size": a.global_batch,
        "train_micro_batch_size_per_gpu": a.micro_batch,
        "gradient_accumulation_steps": gas,
        # ZeRO reports the pre-clip norm itself; without ZeRO we clip in a step pre-hook
        # (_clip_hook) because the engine drops the norm it computes.
        "gradient_clipping": 1.0 if a.zero > 0 else 0.0,
        "zero_optimization": {"stage": a.zero},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if a.dtype == "bf16":
        # The engine runs forward under its own autocast setting and turns an outer
        # torch.autocast off (its "enabled outside DeepSpeed but disabled within" warning):
        # without this section a bf16 run silently computes in fp32.
        ds_config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, mpu=mpu)
    if a.zero == 0 and a.pp == 1 and dp == 1:
        # No data-parallel peer: the engine would still flatten every gradient, all-reduce it
        # over a group of one and copy it back (~2.5% of a 6/512/512 step on 2 cores).
        engine.enable_backward_allreduce = False
    if a.zero == 0:
        params = [p for grp in optimizer.param_groups for p in grp["params"]]
        # model-parallel peers (same DP index): the TP group, or the pipe engine's pp*tp group
        mp_group = engine.mpu.get_model_parallel_group() if a.pp > 1 else ps.tp_group
        mp_size = a.pp * a.tp

        def _clip_hook(opt, _args, _kwargs):
            opt._global_grad_norm = _clip_grad_norm(params, 1.0, ps.tp_rank, mp_group, mp_size)

        optimizer.register_step_pre_hook(_clip_hook)

    threads = torch.get_num_threads()
    if rank == 0:
        print(f"kit-workload: world_size={world} dp={dp} tp={a.tp} pp={a.pp} zero={a.zero} "
              f"dtype={a.dtype} threads={threads} params={cfg.n_params()} "
              f"padded_vocab={cfg.padded_vocab} micro_batch={a.micro_batch} "
              f"global_batch={a.global_batch} grad_accum={gas} device={device.type} "
              f"optimizer=AdamW({opt_kind}) launcher={source} data={data.description}"
              + (" compile=inductor" if compiled else ""), flush=True)

    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if a.dtype == "bf16" else contextlib.nullcontext())
    my_faults = [f for f in a.faults if f.rank is None or f.rank == rank]
    last = rank == world - 1
    dp_group = ps.dp_group
    samples = []

    def micro_batches(it: int):
        for m in range(gas):
            lo = (ps.dp_rank * gas + m) * a.micro_batch
            x, y = data.batch(it, a.global_batch, lo, lo + a.micro_batch)
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    engine.train()
    for it in range(1, a.iters + 1):
        for f in my_faults:
            if f.iteration == it:
                _inject(f, rank)
        lr = lr_at(a, it)
        t0 = time.perf_counter()
        if a.pp > 1:
            with autocast:
                loss = engine.train_batch(data_iter=micro_batches(it))
            loss = loss.detach().float()
        else:
            total = torch.zeros((), device=device)
            for x, y in micro_batches(it):
                with autocast:
                    loss_mb = engine(x, y)
                engine.backward(loss_mb)
                engine.step()
                total += loss_mb.detach().float()
            loss = total / gas
            if dp > 1:
                ds_dist.all_reduce(loss, group=dp_group)
                loss = loss / dp
        loss_value = float(loss.item())
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        samples.append(dt)
        if last and (it % a.log_interval == 0 or it == a.iters):
            gn = engine.get_global_grad_norm()
            gn = float(gn) if gn is not None else float("nan")
            tput = flops.throughput(layers=a.layers, hidden=a.hidden, seq=a.seq, vocab=a.vocab,
                                    global_batch=a.global_batch, sec_per_iter=dt,
                                    checkpoint_activations=a.checkpoint_activations, tp=a.tp,
                                    world_size=world)
            print(format_line(iteration=it, iters=a.iters, consumed=it * a.global_batch, ms=dt * 1e3,
                              lr=lr, gbs=a.global_batch, loss=loss_value, grad_norm=gn,
                              samples_per_s=a.global_batch / dt, tflops=tput.tflops_per_rank), flush=True)

    if cuda:  # every rank, in Megatron's report_memory format (the kit records the peaks)
        mb = 1024.0 * 1024.0
        print(f"[Rank {rank}] (after {a.iters} iterations) memory (MB)"
              f" | allocated: {torch.cuda.memory_allocated() / mb}"
              f" | max allocated: {torch.cuda.max_memory_allocated() / mb}"
              f" | reserved: {torch.cuda.memory_reserved() / mb}"
              f" | max reserved: {torch.cuda.max_memory_reserved() / mb}", flush=True)
    if last:
        steady = samples[1:] or samples
        mean = sum(steady) / len(steady)
        tput = flops.throughput(layers=a.layers, hidden=a.hidden, seq=a.seq, vocab=a.vocab,
                                global_batch=a.global_batch, sec_per_iter=mean,
                                checkpoint_activations=a.checkpoint_activations, tp=a.tp,
                                world_size=world)
        print(f"kit-workload: summary iterations={len(steady)} (excluding the first) "
              f"mean_ms={mean * 1e3:.1f} tokens_per_s={a.global_batch * a.seq / mean:.1f} "
              f"tflops_per_rank={tput.tflops_per_rank:.4f}", flush=True)
    if world > 1:
        ds_dist.barrier()
    if rank == 0:
        print("kit-workload: done", flush=True)
    with contextlib.suppress(Exception):
        if world > 1:
            torch.distributed.destroy_process_group()
    return 0
