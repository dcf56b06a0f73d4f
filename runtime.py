"""The training runtime that pre-training (train.py) and instruction tuning (sft.py) share: the machine, the
process group, the wrapped model, the optimizer step, checkpoints and metrics (PolyLM paper §4 "Pre-training":
AdamW(0.9, 0.95), gradient clipping at 1.0, warmup then cosine decay, bf16, Megatron-style data parallelism over
32 x 8 A100s; §6 fine-tunes with the same recipe). Both scripts call these functions, so a fix lands in both.

Top to bottom:
  settings     RunConfig: the loop's settings both scripts have (each subclasses it and adds its own)
  machine      one policy for device, dtype and torch.compile, used by every script (train, sft, evaluate, chat)
  processes    torchrun init/teardown, barriers, averaging a number over ranks
  the model    DDP or FSDP2 (fully_shard per block, bf16 compute, fp32 gradient reduction), compile per block
  the step     optimizer_step: micro-batches with gradient sync only on the last, the loss normalised by the
               GLOBAL number of target tokens (so 1 process == DDP == FSDP2 even when rows hold different numbers
               of targets, as SFT's do), clip with the FSDP-correct norm, skip a non-finite step, roll back after
               max_bad_steps in a row
  checkpoints  atomic, CRC-listed, resumable bitwise; a damaged newest checkpoint falls back to the previous one
  the run dir  validate, then act: a fresh run never deletes an earlier run before its own first checkpoint
  metrics      metrics.jsonl, and optionally TensorBoard or W&B (offline) with the same scalars
"""
import dataclasses
import gc
import json
import math
import os
import shutil
import time
import zlib
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from common import atomic_write_json, atomic_write_text
from model import CheckpointError, latest_checkpoint, verify_checkpoint


@dataclasses.dataclass
class RunConfig:
    out_dir: str = "out/run"            # run dir: config.json, tokenizer/, ckpt/, metrics.jsonl, plots
    max_iters: int = 150                # optimizer steps
    batch_size: int = 16                # rows per micro-batch per process
    grad_accum: int = 1                 # micro-batches per optimizer step
    learning_rate: float = 2e-3         # peak LR after warmup
    min_lr: float = 2e-4                # LR at the end of the cosine decay
    warmup_iters: int = 15              # linear warmup steps
    weight_decay: float = 1e-4          # AdamW decay on weight matrices (not biases / LayerNorm)
    beta1: float = 0.9                  # AdamW beta1
    beta2: float = 0.95                 # AdamW beta2
    grad_clip: float = 1.0              # clip the global grad norm (0 = off)
    max_bad_steps: int = 5              # non-finite steps in a row before rolling back to the last checkpoint
    eval_interval: int = 50             # evaluate + checkpoint every N steps (and at the end)
    log_interval: int = 10              # steps between metrics.jsonl records
    keep_ckpts: int = 2                 # keep the newest K checkpoints
    consolidate: bool = True            # FSDP: also write a single-file model.pt with each checkpoint
    resume: str = "never"               # never (a fresh run) | auto (continue the newest checkpoint in out_dir)
    overwrite: bool = False             # allow an out_dir that holds other (non-run) files; ours are written beside them
    stop_at_step: int = 0               # end this invocation after this step, checkpointed (e.g. a job time limit)
    log: str = ""                       # live metrics besides metrics.jsonl: tensorboard | wandb (offline) | ''
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    dtype: str = "auto"                 # auto | float32 | bfloat16 (auto: bf16 on CUDA and native-bf16 CPUs)
    compile: str = "auto"               # torch.compile each block: auto (on for CUDA, off for CPU) | True | False
    parallel: str = "ddp"               # with torchrun: ddp | fsdp (FSDP2 fully_shard per block)
    activation_checkpointing: bool = False  # recompute block activations in backward (less memory, ~30% slower)
    seed: int = 1337                    # random seed (init, data order, sampling)


def check_run_config(cfg):
    """The loop's settings that cannot work, as one clear error, before anything is read or written."""
    for key in ("max_iters", "batch_size", "grad_accum", "eval_interval", "log_interval", "keep_ckpts",
                "max_bad_steps"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} must be >= 1")
    for key in ("warmup_iters", "stop_at_step"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key}={getattr(cfg, key)} must be >= 0")
    if not (cfg.learning_rate > 0 and 0 <= cfg.min_lr <= cfg.learning_rate):
        raise ValueError(f"learning_rate={cfg.learning_rate}, min_lr={cfg.min_lr}: need 0 <= min_lr <= learning_rate, "
                         f"learning_rate > 0")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} must be in [0, 1)")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0:
        raise ValueError("weight_decay and grad_clip must be >= 0")
    if cfg.resume not in ("never", "auto"):
        raise ValueError(f"resume={cfg.resume!r}: choose never or auto")
    if cfg.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel={cfg.parallel!r}: choose ddp or fsdp")
    if cfg.log not in ("", "tensorboard", "wandb"):
        raise ValueError(f"log={cfg.log!r}: choose tensorboard, wandb or '' (metrics.jsonl only)")
    resolve_compile(cfg.compile, torch.device("cpu"))
    if cfg.dtype not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"dtype={cfg.dtype!r}: choose auto, float32 or bfloat16")
    resolve_device(cfg.device)


# ----------------------------------------------------------------------------- machine: one policy for every script

def resolve_device(name="auto", local_rank=0):
    """auto -> cuda (this process's GPU) when there is one, else cpu. Asking for CUDA without it is an error."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name}: this machine has no CUDA device (torch {torch.__version__}); use "
                         f"--device=cpu or auto")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    if name not in ("cpu", "mps") and not name.startswith("cuda:"):
        raise ValueError(f"device={name!r}: choose auto, cpu, cuda or cuda:N")
    return torch.device(name)


def cpu_has_native_bf16():
    """True when the CPU computes bf16 in hardware (AVX512-BF16 or AMX). Reads /proc/cpuinfo's flags; torch's own
    (private) probe is used only where /proc is absent."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except (OSError, StopIteration):
        probe = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(f() for f in probe if f is not None)


def matmul_rate(dtype, n=512, reps=6, device="cpu"):
    """FLOP/s of an n x n matmul in dtype (best of reps)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def resolve_dtype(name, device):
    """(torch dtype, reason). bf16 only where the hardware computes it natively; CPUs without AVX512-BF16/AMX
    emulate it and run ~40x slower than fp32, so `auto` checks the CPU and measures before choosing."""
    if name != "auto":
        if name not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={name!r}: choose auto, float32 or bfloat16")
        return getattr(torch, name), "set by config"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA device supports bf16"
        return torch.float32, "CUDA device without bf16"
    cap = torch.backends.cpu.get_cpu_capability()
    if device.type != "cpu":
        return torch.float32, f"{device.type}: fp32"
    if not cpu_has_native_bf16():
        return torch.float32, f"CPU ({cap}) has no native bf16 (AVX512-BF16/AMX); bf16 would be emulated"
    fp32, bf16 = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    if bf16 > 1.2 * fp32:
        return torch.bfloat16, f"CPU ({cap}) has native bf16: matmul probe {bf16 / 1e9:.0f} vs {fp32 / 1e9:.0f} GFLOP/s"
    return torch.float32, f"CPU bf16 probe not faster ({bf16 / 1e9:.0f} vs {fp32 / 1e9:.0f} GFLOP/s)"


def resolve_compile(value, device):
    """(compile the blocks?, reason). `auto` compiles on CUDA, where Inductor's fused kernels are the usual win, and
    not on CPU, where per-block compile gained 0-5% tokens/s (bench/bench_step.py, docs/BENCHMARKS.md) for 15-30 s of
    compiling at start-up. True/False force it."""
    v = str(value).strip().lower()
    if v == "auto":
        if device.type == "cuda":
            return True, "auto: CUDA"
        return False, f"auto: {device.type}, where compiling the blocks measured a 0-5% gain"
    if v in ("true", "1", "yes", "on", "false", "0", "no", "off"):
        return v in ("true", "1", "yes", "on"), "set by config"
    raise ValueError(f"compile={value!r}: choose auto, True or False")


def autocast(device, dtype):
    """The autocast context of a run: bf16 where chosen, nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


def choose(device="auto", dtype="auto", local_rank=0):
    """(device, dtype, reason) with the one policy: what train.py, sft.py, evaluate.py and chat.py all use."""
    dev = resolve_device(device, local_rank)
    dt, why = resolve_dtype(dtype, dev)
    return dev, dt, why


GPU_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "A10": 125e12}  # dense bf16


def peak_flops(device, dtype):
    """Peak FLOP/s used for MFU: a table for GPUs (None when the GPU is not in it), a measured matmul probe on CPUs."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)
    return matmul_rate(dtype, n=1024, reps=4)


# ----------------------------------------------------------------------------- processes

@dataclasses.dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self):
        return self.rank == 0


def setup_distributed(device_name="auto"):
    """torchrun sets RANK/WORLD_SIZE: join the process group (NCCL on GPUs, gloo on CPUs). The timeout is long
    enough for rank 0 to tokenize a small data_dir while the others wait (POLYLM_DIST_TIMEOUT_MIN, default 60)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    cuda = resolve_device(device_name, d.local_rank).type == "cuda"
    if cuda:
        torch.cuda.set_device(d.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo",
                            timeout=timedelta(minutes=float(os.environ.get("POLYLM_DIST_TIMEOUT_MIN", 60))))
    return d


def barrier(d):
    if d.world_size > 1:
        dist.barrier()


def teardown(d):
    """Clean exit. (Gathering full state dicts over gloo can crash at exit unless they are freed first.)"""
    if d.world_size > 1 and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def run_distributed(fn, cfg):
    """Check the loop's settings, join the process group (under torchrun), run fn(cfg, dist), always tear down."""
    check_run_config(cfg)
    d = setup_distributed(cfg.device)
    try:
        return fn(cfg, d)
    finally:
        teardown(d)


def sum_over_ranks(x, d):
    """x summed over all ranks. NCCL reduces CUDA tensors only, gloo CPU ones: the tensor lives where the backend
    wants it."""
    if d.world_size == 1:
        return x
    on_gpu = dist.get_backend() == "nccl"
    t = torch.tensor([float(x)], dtype=torch.float64, device=torch.device("cuda", torch.cuda.current_device())
                     if on_gpu else "cpu")
    dist.all_reduce(t)
    return t.item()


def mean_over_ranks(x, d):
    return sum_over_ranks(x, d) / d.world_size


@dataclasses.dataclass
class Session:
    """What a run knows about its machine: processes, device, dtype, autocast, and a log that only rank 0 prints."""
    d: Dist
    device: torch.device
    dtype: torch.dtype
    autocast: object
    log: object


def start(cfg, d):
    """Seed (the same init on every rank), choose device/dtype/compile, and log the choices and why."""
    from tqdm import tqdm
    log = (lambda msg: tqdm.write(msg)) if d.main else (lambda msg: None)
    torch.manual_seed(cfg.seed)
    device, dtype, why = choose(cfg.device, cfg.dtype, d.local_rank)
    compiled, cwhy = resolve_compile(cfg.compile, device)
    log(f"device: {device} x {d.world_size} process(es), dtype: {str(dtype).replace('torch.', '')} ({why}), "
        f"compile: {'on' if compiled else 'off'} ({cwhy})")
    return Session(d, device, dtype, autocast(device, dtype), log)


# ----------------------------------------------------------------------------- the model

def wrap_model(model, cfg, s):
    """-> the module to call for training. DDP or FSDP2 under torchrun, else the model itself (compiled per block
    first, as torchtitan does, when the compile policy says so)."""
    model.activation_checkpointing = cfg.activation_checkpointing
    if resolve_compile(cfg.compile, s.device)[0]:
        model.compile_blocks()
    if s.d.world_size == 1:
        return model
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[s.d.local_rank] if s.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(s.device.type, (s.d.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=s.dtype, reduce_dtype=torch.float32)   # bf16 compute, fp32 reduction
    for block in model.h:
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)         # the root: embeddings (tied head) and final LayerNorm
    return model


def is_fsdp(model):
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


@contextmanager
def full_params(model):
    """Outside forward() (evaluation, generation), gather the FSDP root's own parameters for the duration."""
    if is_fsdp(model):
        model.unshard()
        try:
            yield
        finally:
            model.reshard()
    else:
        yield


def set_grad_sync(wrapped, sync):
    """Gradient accumulation: only the last micro-batch all-reduces (DDP) / reduce-scatters (FSDP)."""
    if is_fsdp(wrapped):
        wrapped.set_requires_gradient_sync(sync)
    elif hasattr(wrapped, "require_backward_grad_sync"):
        wrapped.require_backward_grad_sync = sync


def make_optimizer(model, cfg, device):
    """AdamW(beta1, beta2), weight decay on matrices only (model.optimizer_groups). The fused kernel (one pass per
    parameter instead of a chain of for-each ops) on CUDA; on CPU where it measured faster (bench/bench_step.py,
    docs/BENCHMARKS.md). Same results to float rounding either way."""
    fused = device.type == "cuda" or (device.type == "cpu" and FUSED_ADAMW_ON_CPU)
    return torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.learning_rate,
                             betas=(cfg.beta1, cfg.beta2), fused=fused)


FUSED_ADAMW_ON_CPU = True


def lr_at(it, cfg):
    """Linear warmup to learning_rate, cosine decay to min_lr at max_iters."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


# ----------------------------------------------------------------------------- the step

@dataclasses.dataclass
class StepResult:
    loss: float          # mean loss per target token over the global batch (all ranks, all micro-batches)
    grad_norm: float     # global gradient norm before clipping
    tokens: int          # target tokens in the global batch
    applied: bool        # False: a non-finite loss or norm, the update was skipped


def optimizer_step(wrapped, model, optimizer, micro_batches, lr, s, grad_clip, ignore_index=-100):
    """One optimizer step over this rank's micro-batches [(x, y), ...] (numpy or tensors).

    The loss of every micro-batch is its SUM over target tokens times world_size / (target tokens of the whole
    global batch), so that the gradient DDP/FSDP average over ranks is the gradient of the global mean: 2 ranks with
    batch 2 give the same update as 1 process with batch 4 even when the rows hold different numbers of targets
    (SFT's prompt tokens are ignored). Gradients sync only on the last micro-batch; the clip norm is the global one
    (FSDP's DTensor norm gathered); a non-finite loss or norm skips the update (the caller counts and rolls back)."""
    for g in optimizer.param_groups:
        g["lr"] = lr
    batches = [tuple(torch.as_tensor(t).to(s.device) for t in mb) for mb in micro_batches]
    local = sum(int((y != ignore_index).sum()) for _, y in batches)
    total = int(sum_over_ranks(local, s.d))
    scale = s.d.world_size / max(total, 1)
    loss_sum = 0.0
    for i, (x, y) in enumerate(batches):
        set_grad_sync(wrapped, i == len(batches) - 1)
        with s.autocast:
            loss = wrapped(x, y, ignore_index=ignore_index, reduction="sum")
        (loss * scale).backward()
        loss_sum += loss.item()
    step_loss = sum_over_ranks(loss_sum, s.d) / max(total, 1)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
    applied = math.isfinite(step_loss) and math.isfinite(norm)
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(step_loss, norm, total, applied)


class BadSteps:
    """The non-finite-step policy: skip, and after max_bad in a row roll the weights back to the last checkpoint
    (keeping the data position, so training goes on with the batches after the bad ones, as PaLM did)."""

    def __init__(self, max_bad):
        self.max_bad, self.in_row, self.skipped = max_bad, 0, 0

    def after(self, result, step, out_dir, wrapped, optimizer, sampler, s, metrics):
        if result.applied:
            self.in_row = 0
            return
        self.skipped += 1
        self.in_row += 1
        s.log(f"step {step}: non-finite loss {result.loss} / grad norm {result.grad_norm}: update skipped "
              f"({self.in_row} in a row)")
        metrics.write({"step": step, "event": "skip", "loss": None, "grad_norm": None})
        if self.in_row >= self.max_bad:
            last = latest_checkpoint(out_dir, warn=s.log)
            if last is None:
                raise RuntimeError(f"{self.in_row} non-finite steps in a row and no checkpoint to roll back to")
            load_training_state(last, wrapped, optimizer, sampler, s.d, restore_data=False)
            s.log(f"step {step}: rolled back weights to {last.name}; continuing with the batches after the bad ones")
            metrics.write({"step": step, "event": "rollback", "to": last.name})
            self.in_row = 0


# ----------------------------------------------------------------------------- checkpoints

def crc_files(folder, names):
    """{relative name: {"bytes", "crc32"}} of files under folder."""
    out = {}
    for name in names:
        crc = 0
        with open(folder / name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                crc = zlib.crc32(chunk, crc)
        out[name] = {"bytes": (folder / name).stat().st_size, "crc32": crc}
    return out


def save_checkpoint(out_dir, step, model, optimizer, sampler, d, cfg):
    """Atomic and crash-safe: every rank writes into ckpt/.tmp_step_X and lists its files' sizes and CRC-32s,
    rank 0 writes state.json (the data position and RNG of every rank + the file list), fsyncs, renames the dir to
    step_X, points ckpt/latest at it, then prunes old ones. A kill at any moment leaves the previous checkpoint
    loadable. FSDP writes a sharded Distributed Checkpoint (dcp/) and, if cfg.consolidate, also the full model.pt."""
    ckpt = Path(out_dir) / "ckpt"
    final, tmp = ckpt / f"step_{step:06d}", ckpt / f".tmp_step_{step:06d}"
    if d.main:
        ckpt.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(d)
    mine = []
    if is_fsdp(model):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict
        msd, osd = get_state_dict(model, optimizer)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp / "dcp")
        del msd, osd
        mine = [f"dcp/{p.name}" for p in (tmp / "dcp").glob(f"__{d.rank}_*")]
        if cfg.consolidate:
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if d.main:
                torch.save(full, tmp / "model.pt")
            del full
            gc.collect()
    elif d.main:
        torch.save(getattr(model, "module", model).state_dict(), tmp / "model.pt")    # no DDP "module." prefix
        torch.save(optimizer.state_dict(), tmp / "optim.pt")
    barrier(d)
    local = {"sampler": sampler.state_dict(), "torch_rng": torch.get_rng_state().tolist(),
             "files": crc_files(tmp, mine)}
    states = [None] * d.world_size
    if d.world_size > 1:
        dist.all_gather_object(states, local)
    else:
        states = [local]
    if d.main:
        files = {}
        for st in states:
            files.update(st.pop("files"))
        own = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()]
        files.update(crc_files(tmp, [n for n in own if n not in files]))
        atomic_write_json(tmp / "state.json", {"step": step, "world_size": d.world_size, "ranks": states,
                                               "files": files}, indent=None)
        if os.environ.get("POLYLM_CKPT_DELAY"):          # test hook: widen the window for a kill -9 test
            time.sleep(float(os.environ["POLYLM_CKPT_DELAY"]))
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write_text(ckpt / "latest", final.name)
        for old in sorted(ckpt.glob("step_*"))[:-cfg.keep_ckpts]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def load_training_state(path, model, optimizer, sampler, d, restore_data=True):
    """Restore model + optimizer (+ this rank's data position and RNG) from a checkpoint; returns its step."""
    state = verify_checkpoint(path, full=False)
    if restore_data and state["world_size"] != d.world_size:
        raise ValueError(f"{path} was written by {state['world_size']} process(es); resume with the same number "
                         f"(the data order depends on it)")
    if (path / "dcp").exists():
        if not is_fsdp(model):
            raise ValueError(f"{path} is a sharded FSDP checkpoint; resume it with --parallel=fsdp under torchrun")
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        msd, osd = get_state_dict(model, optimizer)
        sd = {"model": msd, "optim": osd}
        dcp.load(sd, checkpoint_id=path / "dcp")
        set_state_dict(model, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    else:
        if is_fsdp(model):
            raise ValueError(f"{path} is a single-file checkpoint; resume it without --parallel=fsdp")
        try:
            getattr(model, "module", model).load_state_dict(torch.load(path / "model.pt", map_location="cpu",
                                                                       weights_only=True))
            optimizer.load_state_dict(torch.load(path / "optim.pt", map_location="cpu", weights_only=True))
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit this model ({str(e).splitlines()[0][:200]}); resume with "
                                  f"the settings it was trained with (its run's config.json)") from None
    if restore_data:
        mine = state["ranks"][d.rank]
        sampler.load_state_dict(mine.get("sampler", mine.get("mixer")))
        torch.set_rng_state(torch.tensor(mine["torch_rng"], dtype=torch.uint8))
    return state["step"]


def consolidate_checkpoint(path):
    """Sharded FSDP checkpoint dir -> its model.pt (single file, no process group needed)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    path = Path(path)
    if not (path / "dcp").is_dir():
        raise FileNotFoundError(f"{path}/dcp not found: pass a checkpoint dir written with --parallel=fsdp")
    tmp = path / "full.tmp"
    dcp_to_torch_save(path / "dcp", tmp)
    full = torch.load(tmp, map_location="cpu", weights_only=False)
    torch.save(full["model"], path / "model.pt.tmp")
    os.replace(path / "model.pt.tmp", path / "model.pt")
    tmp.unlink()
    state = json.loads((path / "state.json").read_text())
    if "files" in state:                                   # list the new file, so it is verified like the others
        state["files"].update(crc_files(path, ["model.pt"]))
        atomic_write_json(path / "state.json", state, indent=None)
    return path / "model.pt"


# ----------------------------------------------------------------------------- the run dir: validate, then act

RUN_FILES = ("config.json", "metrics.jsonl", "loss.png", "mixture.png", "results.json", "results.md")


def check_out_dir(cfg, init_from=""):
    """Read-only checks of out_dir (every rank runs them, so a refusal never leaves ranks waiting). Returns the
    checkpoint to resume from (resume=auto) or None. A fresh run may replace a run dir (safely: claim_out_dir), but a
    directory holding other things is refused unless overwrite=True (then only our own files are written), and
    out_dir must not be init_from (its weights would be replaced while being read)."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={out} is a file; give a directory")
    if init_from and out.resolve() == Path(init_from).resolve():
        raise ValueError(f"out_dir={out} is init_from: a new run would overwrite the weights it starts from; choose "
                         f"another out_dir")
    if cfg.resume == "auto":
        return latest_checkpoint(out)
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        ours = (out / "ckpt").is_dir() or (out / "tokenizer").is_dir() or (out / "ckpt.replaced").is_dir() or \
            any((out / f).exists() for f in RUN_FILES)
        if not ours:
            raise ValueError(f"out_dir={out} holds other files and is not a run dir; choose a new or empty directory "
                             f"(or --overwrite=True to write the run's files next to them)")
    return None


def claim_out_dir(cfg, d, log):
    """Rank 0 makes out_dir ready for a fresh run, after every check passed. A previous run is not deleted: its
    ckpt/ and metrics.jsonl move to ckpt.replaced/, which release_replaced() deletes once this run has saved its
    first checkpoint. (If a replaced run's successor died before its first checkpoint, ckpt.replaced/ still holds the
    last good run and is kept; only the dead attempt's files go.)"""
    out = Path(cfg.out_dir)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("ckpt/.tmp_step_*"):    # a checkpoint a crash left half-written
            shutil.rmtree(stale, ignore_errors=True)
        aside = out / "ckpt.replaced"
        if latest_checkpoint(out, verify=False) is not None:
            shutil.rmtree(aside, ignore_errors=True)
            aside.mkdir()
            for name in ("ckpt", "metrics.jsonl"):
                if (out / name).exists():
                    os.replace(out / name, aside / name)
            log(f"out_dir: starting over in {out} (the previous run waits in {aside} until this run's first "
                f"checkpoint; --resume=auto would have continued it)")
        else:                                         # nothing worth keeping in ckpt/: a dead attempt's leftovers
            shutil.rmtree(out / "ckpt", ignore_errors=True)
            (out / "metrics.jsonl").unlink(missing_ok=True)
            if aside.is_dir():
                log(f"out_dir: {aside} holds an earlier run (kept until this run's first checkpoint)")
    barrier(d)


def resume_or_start(resume_from, wrapped, optimizer, sampler, cfg, s):
    """The step to start from: a resumed checkpoint's (model, optimizer, data position and RNG restored), or 0 for a
    fresh run, whose out_dir is then claimed (claim_out_dir) — only now, after everything else was checked."""
    if resume_from is not None:
        step = load_training_state(resume_from, wrapped, optimizer, sampler, s.d)
        s.log(f"resumed from {resume_from} at step {step}")
        return step
    claim_out_dir(cfg, s.d, s.log)
    return 0


def install_tokenizer(tok_dir, out_dir):
    """Copy a tokenizer into out_dir/tokenizer (a temporary copy renamed into place); nothing if it is already it."""
    dest = Path(out_dir) / "tokenizer"
    if dest.exists() and dest.resolve() == Path(tok_dir).resolve():
        return
    tmp = Path(out_dir) / ".tokenizer.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(tok_dir, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def release_replaced(cfg, d):
    """After the first checkpoint of a fresh run: the old run that claim_out_dir moved aside can go."""
    if d.main:
        shutil.rmtree(Path(cfg.out_dir) / "ckpt.replaced", ignore_errors=True)


# ----------------------------------------------------------------------------- metrics

class Metrics:
    """metrics.jsonl (one JSON record per line, append-only), plus the same scalars to TensorBoard
    (`log=tensorboard`, event files in out_dir/tb/) or Weights & Biases (`log=wandb`, offline unless WANDB_MODE says
    otherwise: it writes out_dir/wandb/, `wandb sync` uploads it). Only rank 0 writes. Nested dicts become
    "key/subkey" scalars (val_bpb/en); non-numbers are left out of the live view."""

    def __init__(self, out_dir, d, kind="", config=None, name=None):
        self.path, self.main, self.kind = Path(out_dir) / "metrics.jsonl", d.main, kind
        self.tb = self.wandb = None
        if self.main and self.path.exists():                          # a kill mid-write leaves a torn last line:
            raw = self.path.read_bytes()                               # cut it, so appended records stay readable
            if raw and not raw.endswith(b"\n"):
                with open(self.path, "r+b") as f:
                    f.truncate(raw.rfind(b"\n") + 1)
        if not self.main or not kind:
            return
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("log=tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.tb = SummaryWriter(str(Path(out_dir) / "tb"))
        elif kind == "wandb":
            try:
                import wandb
            except ImportError:
                raise ValueError("log=wandb needs the wandb package (pip install wandb)") from None
            os.environ.setdefault("WANDB_MODE", "offline")
            self.wandb = wandb.init(project="polylm", name=name or Path(out_dir).name, dir=str(out_dir),
                                    config=config or {}, resume="allow")

    @staticmethod
    def scalars(record, prefix=""):
        out = {}
        for k, v in record.items():
            if isinstance(v, dict):
                out.update(Metrics.scalars(v, f"{prefix}{k}/"))
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step" and v is not None:
                out[prefix + k] = float(v)
        return out

    def write(self, record):
        if not self.main:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        if self.tb is not None:
            for k, v in self.scalars(record).items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(self.scalars(record), step=step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
