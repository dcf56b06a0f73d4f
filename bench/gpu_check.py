"""First contact with a GPU in one command: is every CUDA path of this repo correct, and how fast is it?
(PolyLM paper §3.3 / §4: bf16 training of the 1.7B and 13B models with Megatron-LM on A100s at ~31% MFU, a
256,000-token vocabulary; §5: log-likelihood evaluation.)

    python bench/gpu_check.py                       # on a GPU box: every check, <= 8 minutes on one H100/H200/A100
    python bench/gpu_check.py --dry_run=True        # tiny shapes on the GPU: a smoke test (minutes, mostly compiling)
    python bench/gpu_check.py --device=cpu          # the CPU dry run (tiny shapes; CUDA-only parts "skipped: no CUDA")
    python bench/gpu_check.py --device=cpu --mfu_procs=2   # ... with the MFU check on 2 spawned gloo ranks (FSDP2)
    python bench/gpu_check.py --only=ce,mfu --mfu_layers=12     # a subset, a smaller shape; --help lists every setting

Everything CUDA here (bf16 autocast, per-block torch.compile, the Triton cross-entropy kernel, FSDP2 with bf16 compute
and fp32 reduction, generation, evaluation) was written on CPU-only machines. This script runs all of it in ONE
process, each check with its own wall-clock budget (--train_s 90 + --ce_s 100 + --mfu_s 200 + --gen_eval_s 60 = 450
s, plus ~20 s of start-up): a check (or one row of it) that runs out of time is stopped and
reported as "timeout", one that raises is reported as "crash" with the exception's last line (full traceback in the
JSON), and the remaining checks still run. It writes OUT_DIR/gpu_check.json (every figure, setting and machine fact)
and OUT_DIR/gpu_check.md (tables ready for docs/BENCHMARKS.md), prints the markdown, and exits 1 if any check did not
pass. Statuses: pass | fail (ran; a stated tolerance was missed) | crash | timeout | skipped (with the reason).

The checks and what each figure means:
  1. train     The toy model (4L/256d/4h, vocab 8,192, 256 context; byte tokens of data/sample) trained ~50 steps
               with train.py's own step (runtime.wrap_model / make_optimizer / optimizer_step / lr_at, RunConfig's
               AdamW settings), all arms from the same init on the same batches:
                 A  CPU, fp32 (the reference; on a GPU box it runs after B and C, so a slow host cannot starve
                    them),
                 B  CUDA, fp32, eager: |loss_B - loss_A| <= fp32_tol_early over steps 0-9 and <= fp32_tol at every
                    step (fp32 vs fp32 differ only by rounding, which training amplifies: on CPU, 1 vs 2 threads
                    or ulp-level noise on every weight after every step moved the toy curve by 0 in steps 0-9 and
                    by at most 3.0e-3 nats by step 50),
                 C  CUDA, bf16 autocast + compiled blocks + fused CE (train.py's CUDA default) vs B: |loss_C - loss_B|
                    <= bf16_tol0 at step 0 (the same weights: only the forward's rounding differs) and the mean loss
                    of the last 10 steps within bf16_rel_tol of B's (per-step bf16 differences are not a criterion:
                    a loss spike lands on different steps; on CPU, emulated bf16 at batch 2 x 256 spiked 1.4 nats
                    apart at one step while the last-10 means differed by 1.2%); a torch.compile fallback to
                    eager is a fail.
  2. ce        Loss + gradients of x @ W.T at N=8,192 tokens, V=256,000, d=2,048 (bf16 and fp32 inputs): naive
               F.linear + F.cross_entropy (logits materialised), torch.compile of the same, kernels/ chunked (its
               per-chunk step compiled) and the Triton kernel (impl="triton"). Figures: max relative error of loss,
               grad x, grad W against an fp32 reference (F.linear + F.cross_entropy, in blocks of 1,024 rows), median
               time of forward + backward (CUDA events), and peak memory over the inputs
               (torch.cuda.max_memory_allocated; includes the weight gradient every method must hold).
               Pass: chunked and Triton within the stated tolerance of their dtype.
  3. mfu       The polylm-1.7b shape (24 layers, d 2,048, 16 heads, context 2,048, vocab 256,000; --mfu_layers
               fewer, stated in the table) trained with runtime.wrap_model (parallel=fsdp, compile=auto, dtype=auto)
               and runtime.optimizer_step, with and without activation checkpointing. One GPU: a 1-rank process group
               in this process (runtime.wrap_model does not shard at world size 1, as train.py on one GPU does not:
               the table's "FSDP2 sharded" column says so); more GPUs (or --mfu_procs): one process per rank,
               started like torchrun (RANK/WORLD_SIZE/MASTER_ADDR, runtime.setup_distributed), each rank's output
               kept in OUT_DIR/mfu_ranks/. Figures: tokens/s (all GPUs), MFU =
               tokens/s x model.flops_per_token / (bf16 peak x GPUs) with the peak from runtime.GPU_PEAK_FLOPS by
               device name ("unknown peak" if the name is not in the table), peak memory per GPU.
  4. gen_eval  model.generate with its KV cache: greedy tokens/s at batch 1 and 8 (random-weight toy and polylm-1.7b
               models, dtype=auto), cached == uncached tokens on the trained toy model; evaluate.py's XCOPA
               log-likelihoods (evaluate.load_mc / mc_requests / score_requests, tree scorer, byte tokenizer) on CUDA
               in fp32 equal the CPU ones per item (|delta| <= eval_tol x max(1, |ll|), and no item's choice flips),
               on the toy model check 1 trained (its CUDA fp32 arm; on CPU its CPU arm), or a random toy model when
               check 1 did not finish (the table says which); bf16 log-likelihoods and accuracy for information.

Good numbers on a GPU (docs/BENCHMARKS.md): MFU: torchtitan FSDP2 reaches 54-61% for a 13B Llama on A100s, nanochat
~46% (d18), Megatron-LM core 41-48% on H100; PolyLM-13B itself ran at ~31% (1,170 tokens/s/GPU on A100s, §3.3).
Cross-entropy: Apple's Cut Cross-Entropy computes loss + gradient at 8,192 tokens x 256K vocab x d 2,304 in 135 ms and
1.2 GB on an A100, where plain PyTorch needs 28 GB.

--device=cpu runs the same code at tiny shapes (the CPU arms, bf16 autocast (emulated), the chunked CE, the 1-rank
process group, generation, evaluation) and marks what needs CUDA (arm B, compiled blocks, torch.compile'd CE, Triton,
max_memory_allocated, the CUDA-vs-CPU comparisons) "skipped: no CUDA"; it takes seconds. Triton is imported only on
CUDA. tests/test_gpu_check.py runs it.
"""
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402,F401 - up front, outside every budget: torch.optim and torch.device() import it
import torch.nn.functional as F  # noqa: E402  lazily (seconds), and an import cut short by SIGALRM stays broken

import runtime  # noqa: E402
from config import cpu_name, run_cli  # noqa: E402
from kernels import linear_cross_entropy, linear_cross_entropy_reference  # noqa: E402
from model import PolyLM, count_params, preset  # noqa: E402

CHECKS = ("train", "ce", "mfu", "gen_eval")
TITLES = {"train": "1. training: bf16 + compiled blocks + fused CE vs fp32, CUDA vs CPU",
          "ce": "2. cross-entropy at V=256K: Triton / chunked vs naive and torch.compile",
          "mfu": "3. MFU of the polylm-1.7b shape (FSDP2 path of train.py)",
          "gen_eval": "4. generation (KV cache) and evaluation (XCOPA) on CUDA"}
NO_CUDA = "skipped: no CUDA"
CE_TOL = {"float32": (1e-5, 1e-4), "bfloat16": (2e-3, 2e-2)}   # (loss, gradients): max relative error vs fp32
CE_REF_ROWS = 1024


@dataclasses.dataclass
class GPUCheckConfig:
    device: str = "auto"                # auto | cuda | cuda:N | cpu (cpu = the dry run: tiny shapes)
    dry_run: bool = False               # tiny shapes (always on for cpu); on CUDA a smoke test of every path
    out_dir: str = "out/gpu_check"      # writes gpu_check.json and gpu_check.md here
    only: str = ""                      # checks to run, comma-separated: train,ce,mfu,gen_eval ('' = all)
    train_s: float = 90.0               # budget of check 1 in seconds of wall clock (then: timeout)
    ce_s: float = 100.0                 # budget of check 2
    mfu_s: float = 200.0                # budget of check 3 (split between its rows)
    gen_eval_s: float = 60.0            # budget of check 4
    train_steps: int = 50               # 1: optimizer steps per arm
    fp32_tol_early: float = 1e-3        # 1: max |loss CUDA fp32 - loss CPU fp32| over steps 0-9 (nats)
    fp32_tol: float = 1e-2              # 1: ... over every step
    bf16_tol0: float = 0.02             # 1: |loss bf16+compile - loss fp32| at step 0 (nats)
    bf16_rel_tol: float = 0.05          # 1: |mean of the last 10 losses, bf16 - fp32| / fp32's
    ce_tokens: int = 8192               # 2: rows N
    ce_vocab: int = 256000              # 2: vocabulary V
    ce_dim: int = 2048                  # 2: hidden size d
    ce_dtypes: str = "bfloat16,float32"  # 2: input dtypes, in order
    ce_reps: int = 3                    # 2: timed forward + backward runs per method (median; after 1 warm-up)
    mfu_layers: int = 24                # 3: layers of the polylm-1.7b shape (fewer to fit a small GPU or the time)
    mfu_batch: int = 4                  # 3: rows of 2,048 tokens per GPU per step
    mfu_warmup: int = 3                 # 3: untimed steps (compilation)
    mfu_steps: int = 8                  # 3: timed steps (tokens/s from their median)
    mfu_procs: int = 0                  # 3: ranks: 0 = one per visible GPU (1 on CPU); > 1 spawns one process each
    gen_presets: str = "toy,polylm-1.7b"  # 4: model shapes for the generation speed rows (random weights)
    gen_prompt: int = 64                # 4: prompt tokens
    gen_new_tokens: int = 128           # 4: new tokens per row (greedy, no stop token)
    eval_limit: int = 50                # 4: XCOPA items per language (6 languages)
    eval_tol: float = 1e-4              # 4: max |ll CUDA - ll CPU| / max(1, |ll|) per choice
    fail_check: str = ""                # (test hook) make these checks raise, e.g. ce: reported as crash, others run
    worker: str = ""                    # (internal) mfu: run one rank of the multi-process MFU check
    worker_out: str = ""                # (internal) where rank 0 appends its rows (JSON lines)
    worker_deadline: float = 0.0        # (internal) the rank's deadline (time.time())


# ----------------------------------------------------------------------------- shapes

TINY = {
    "train": dict(model=dict(n_layer=2, n_head=2, n_embd=32, vocab_size=512, block_size=64), batch=4, steps=12),
    "ce": dict(n=256, v=1000, d=32, reps=2),
    "mfu": dict(model=dict(n_layer=2, n_head=2, n_embd=64, vocab_size=1024, block_size=64), batch=2, warmup=1,
                steps=2),
    "gen": dict(models={"tiny": dict(n_layer=2, n_head=2, n_embd=32, vocab_size=512, block_size=64)}, prompt=8,
                new=8),
    "eval": dict(langs=("it", "zh"), limit=3),
}


def shapes(cfg, dry):
    """The sizes every check runs at: TINY for the dry run, else from the settings."""
    for name in (p for p in cfg.gen_presets.split(",") if p):
        preset(name)                                   # unknown names: one clear error
    for name in (p.strip() for p in cfg.ce_dtypes.split(",") if p.strip()):
        if name not in CE_TOL:
            raise ValueError(f"ce_dtypes: {name!r}; choose from {', '.join(CE_TOL)}")
    if dry:
        return TINY
    return {
        "train": dict(model=dataclasses.asdict(preset("toy")), batch=16, steps=cfg.train_steps),
        "ce": dict(n=cfg.ce_tokens, v=cfg.ce_vocab, d=cfg.ce_dim, reps=cfg.ce_reps),
        "mfu": dict(model=dataclasses.asdict(preset("polylm-1.7b", n_layer=cfg.mfu_layers)), batch=cfg.mfu_batch,
                    warmup=cfg.mfu_warmup, steps=cfg.mfu_steps),
        "gen": dict(models={n: dataclasses.asdict(preset(n)) for n in cfg.gen_presets.split(",") if n},
                    prompt=cfg.gen_prompt, new=cfg.gen_new_tokens),
        "eval": dict(langs=("id", "it", "th", "tr", "vi", "zh"), limit=cfg.eval_limit),
    }


def model_cfg(d):
    return preset("toy", **{k: v for k, v in d.items() if k in ("n_layer", "n_head", "n_embd", "block_size",
                                                                    "vocab_size", "dropout", "init_std")})


# ----------------------------------------------------------------------------- budgets

class CheckTimeout(Exception):
    """A check (or a part of it) ran past its wall-clock budget."""


class Clock:
    """A check's deadline. check() raises CheckTimeout once it has passed (called between steps); on POSIX, in the
    main thread, a SIGALRM at the deadline also interrupts a single long call (a compile, a stuck kernel launch loop)
    and names where it was. part(seconds) gives a row its own, tighter deadline inside the check's."""

    def __init__(self, seconds):
        self.budget = float(seconds)
        self.deadlines = [time.monotonic() + self.budget]
        self.can_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
        self.hard = False                              # True inside running(): our SIGALRM handler is installed

    def left(self):
        return self.deadlines[-1] - time.monotonic()

    def check(self, where=""):
        if self.left() <= 0:
            raise CheckTimeout(f"ran out of its {self.budget:.0f} s budget" + (f" ({where})" if where else ""))

    def _arm(self):
        if self.hard:
            signal.setitimer(signal.ITIMER_REAL, max(self.left(), 1e-3))

    def _fire(self, signum, frame):
        where = f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno} in {frame.f_code.co_name}" if frame else ""
        raise CheckTimeout(f"ran out of its {self.budget:.0f} s budget (interrupted in {where})")

    @contextlib.contextmanager
    def running(self):
        """The whole check: install the handler and arm the hard limit; always disarm and restore."""
        if self.can_alarm:
            old = signal.signal(signal.SIGALRM, self._fire)
            self.hard = True
        self._arm()
        try:
            yield self
        finally:
            if self.hard:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
                self.hard = False

    @contextlib.contextmanager
    def part(self, seconds):
        """A row's own budget (min(seconds, what is left)); CheckTimeout inside names the part's budget."""
        outer_budget = self.budget
        self.deadlines.append(min(self.deadlines[-1], time.monotonic() + max(0.0, seconds)))
        self.budget = max(0.0, self.left())
        self._arm()
        try:
            yield self
        finally:
            self.deadlines.pop()
            self.budget = outer_budget
            if self.hard:
                signal.setitimer(signal.ITIMER_REAL, 0)
                if self.left() > 0:                    # else the caller's next check() stops the check
                    self._arm()


def last_line(e):
    """'ExcType: the last non-empty line of its message' (what a person needs first; the JSON has the traceback)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[-1]}" if lines else type(e).__name__


@contextlib.contextmanager
def log_warnings(name):
    """Collect the WARNING records of a logger (kernels.compiled reports a torch.compile fallback to eager there)."""
    messages = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())
    h = Keep(logging.WARNING)
    logger = logging.getLogger(name)
    logger.addHandler(h)
    try:
        yield messages
    finally:
        logger.removeHandler(h)


# ----------------------------------------------------------------------------- the device

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device):
    """Between rows and checks on CUDA: drop what cycles hold and hand cached blocks back (the next row's peak memory
    starts clean). Nothing to do on CPU (no memory figures there; a full gc.collect costs ~1 s with dynamo loaded)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


class PeakMemory:
    """Peak bytes allocated above what was allocated at the start (torch.cuda.max_memory_allocated); None on CPU."""

    def __init__(self, device):
        self.device, self.cuda = device, device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.base
        return False

    @property
    def gib(self):
        return self.extra / 2 ** 30 if self.cuda else None


def timed(fn, device):
    """(result, seconds) of fn(): CUDA events around it on CUDA, perf_counter on CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end) / 1e3
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def machine(device):
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_name(),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        peak = runtime.peak_flops(device, torch.bfloat16)
        info.update(gpu=props.name, gpus=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                    bf16_supported=torch.cuda.is_bf16_supported(), bf16_peak_tflops=peak / 1e12 if peak else None,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
        try:
            import triton                               # only on CUDA: the CPU run never imports triton
            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
    return info


# ----------------------------------------------------------------------------- 1. training correctness

def text_batches(n, batch, block, seed=0):
    """n (x, y) batches of byte tokens (0-255) of data/sample/mono/*.txt: real, learnable text that needs no tokenizer
    (a fresh GPU box has no cache/), so the loss falls from ln(vocab) within a few steps."""
    files = sorted((ROOT / "data" / "sample" / "mono").glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{ROOT / 'data' / 'sample' / 'mono'} holds no *.txt (part of the repository)")
    data = np.frombuffer(b"".join(p.read_bytes() for p in files), dtype=np.uint8).astype(np.int64)
    ix = np.random.default_rng(seed).integers(0, len(data) - block - 1, (n, batch))
    return [(np.stack([data[i:i + block] for i in row]), np.stack([data[i + 1:i + 1 + block] for i in row]))
            for row in ix]


def train_arm(mcfg, init, batches, device, dtype, compiled, clock, label, log):
    """train.py's step on (device, dtype, compile): -> (losses, grad norms, model, seconds, compile warnings)."""
    rcfg = runtime.RunConfig(max_iters=len(batches), warmup_iters=min(15, len(batches) // 3), device=str(device),
                             dtype=str(dtype).replace("torch.", ""), compile=str(compiled))
    s = runtime.Session(runtime.Dist(), device, dtype, runtime.autocast(device, dtype), log)
    model = PolyLM(mcfg)
    model.load_state_dict(init)
    model.to(device).train()
    losses, norms = [], []
    t = time.perf_counter()
    with log_warnings("kernels.compiled") as warned:
        wrapped = runtime.wrap_model(model, rcfg, s)
        opt = runtime.make_optimizer(model, rcfg, device)
        for step, (x, y) in enumerate(batches):
            clock.check(f"{label}, step {step}")
            r = runtime.optimizer_step(wrapped, model, opt, [(x, y)], runtime.lr_at(step, rcfg), s, rcfg.grad_clip)
            losses.append(r.loss)
            norms.append(r.grad_norm)
    sync(device)
    return losses, norms, model, time.perf_counter() - t, list(warned)


def check_train(ctx):
    sh, cfg, dev = ctx.shapes["train"], ctx.cfg, ctx.device
    mcfg = model_cfg(sh["model"])
    torch.manual_seed(1337)
    init = PolyLM(mcfg).state_dict()
    batches = text_batches(sh["steps"], sh["batch"], mcfg.block_size)
    tokens = sh["batch"] * mcfg.block_size
    res = ctx.result
    res["setup"] = (f"{mcfg.n_layer}L/{mcfg.n_embd}d/{mcfg.n_head}h, vocab {mcfg.vocab_size:,}, {tokens:,} tokens/step "
                    f"(byte tokens of data/sample), {sh['steps']} steps of runtime.optimizer_step, RunConfig AdamW "
                    f"(lr 2e-3, warmup, cosine)")
    rows = res["rows"]

    def add(arm, where, dtype, compiled, losses, ref, kind, secs, warned, note="", first=False):
        row = {"arm": arm, "device": str(where), "dtype": str(dtype).replace("torch.", ""), "compile": compiled,
               "steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1], "losses": losses,
               "tokens_per_s": len(losses) * tokens / secs, "seconds": secs, "status": "reference"}
        if note:
            row["note"] = note
        if ref is not None:
            compare(row, ref, kind)
        if warned:
            row["status"] = f"fail: torch.compile fell back to eager ({warned[0][:200]})"
        rows.insert(0, row) if first else rows.append(row)
        return row

    def compare(row, ref, kind):
        """fp32: every step within fp32_tol (fp32_tol_early over steps 0-9); bf16: step 0 and the last-10 mean."""
        loss = row["losses"]
        diffs = [abs(a - b) for a, b in zip(loss, ref)]
        finite = all(map(math.isfinite, diffs))
        row["max_abs_diff"] = max(diffs) if finite else float("nan")
        if kind == "fp32":
            bad = [i for i, dlt in enumerate(diffs) if not math.isfinite(dlt) or
                   dlt > (cfg.fp32_tol_early if i < 10 else cfg.fp32_tol)]
            row["tolerance"] = f"{cfg.fp32_tol_early:g} (steps 0-9), {cfg.fp32_tol:g}"
            row["status"] = "pass" if not bad else f"fail: step {bad[0]} differs by {diffs[bad[0]]:.2e}"
            return
        k = min(10, max(1, len(ref) // 2))
        tail = abs(sum(loss[-k:]) - sum(ref[-k:])) / abs(sum(ref[-k:]))
        row.update(step0_diff=diffs[0], tail_mean_rel_diff=tail, tail_steps=k,
                   tolerance=f"step 0: {cfg.bf16_tol0:g}; last-{k} mean: {cfg.bf16_rel_tol:.0%}")
        if not finite:
            first = next(i for i, d in enumerate(diffs) if not math.isfinite(d))
            row["status"] = f"fail: non-finite loss at step {first}"
        elif diffs[0] > cfg.bf16_tol0:
            row["status"] = f"fail: step 0 differs by {diffs[0]:.2e}"
        elif tail > cfg.bf16_rel_tol:
            row["status"] = f"fail: the last-{k} mean differs by {tail:.1%}"
        else:
            row["status"] = "pass"

    cpu = torch.device("cpu")

    def keep(model, losses, what):                         # the trained toy model check 4 evaluates
        ctx.shared["toy_model"] = (mcfg, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                                   f"the toy model check 1 trained ({len(losses)} steps, {what})")

    if dev.type == "cuda":
        # the GPU arms first, so that a slow host CPU cannot starve them; the CPU reference last
        lb, _, model_b, secs, _ = train_arm(mcfg, init, batches, dev, torch.float32, False, ctx.clock, "arm B",
                                            ctx.log)
        keep(model_b, lb, "CUDA fp32 arm")
        del model_b
        row_b = add("B: CUDA fp32 vs A", dev, torch.float32, False, lb, None, None, secs, [])
        row_b["status"] = "not compared: arm A (CPU) did not finish"
        dtype_c, why = runtime.resolve_dtype("auto", dev)
        compiled = runtime.resolve_compile("auto", dev)[0]
        if dtype_c != torch.bfloat16:
            rows.append({"arm": "C: bf16 + compile vs B", "status": f"skipped: {why}"})
        else:
            free_memory(dev)
            lc, _, _, secs, warned = train_arm(mcfg, init, batches, dev, dtype_c, compiled, ctx.clock, "arm C",
                                               ctx.log)
            add("C: bf16 + compiled blocks + fused CE vs B", dev, dtype_c, compiled, lc, lb, "bf16", secs, warned,
                note="includes compile time in tokens/s")
        la, _, _, secs, _ = train_arm(mcfg, init, batches, cpu, torch.float32, False, ctx.clock, "arm A", ctx.log)
        add("A: reference", cpu, torch.float32, False, la, None, None, secs, [], first=True)
        compare(row_b, la, "fp32")
    else:
        la, _, model_a, secs, _ = train_arm(mcfg, init, batches, cpu, torch.float32, False, ctx.clock, "arm A",
                                            ctx.log)
        add("A: reference", cpu, torch.float32, False, la, None, None, secs, [])
        keep(model_a, la, "CPU fp32 arm")
        rows.append({"arm": "B: CUDA fp32 vs A", "status": NO_CUDA})
        # the same autocast + fused-CE code on CPU (bf16 emulated, tiny shapes); compiled blocks need CUDA here
        lc, _, _, secs, warned = train_arm(mcfg, init, batches, dev, torch.bfloat16, False, ctx.clock, "arm C",
                                           ctx.log)
        add("C (CPU): bf16 autocast + fused CE vs A", dev, torch.bfloat16, False, lc, la, "bf16", secs, warned,
            note="compiled blocks: skipped: no CUDA")
        ctx.skipped.append("CUDA fp32 arm, compiled blocks")
    failed = [r for r in rows if str(r.get("status", "")).startswith("fail")]
    ctx.status = "fail" if failed else "pass"
    parts = [f"{r['arm'].split(':')[0]}: max |dloss| {r['max_abs_diff']:.1e}"
             + (f", step 0 {r['step0_diff']:.1e}, last-{r['tail_steps']} mean {r['tail_mean_rel_diff']:.1%}"
                if "step0_diff" in r else "") for r in rows if "max_abs_diff" in r]
    ctx.summary = "; ".join(parts) + (f"; {failed[0]['arm']}: {failed[0]['status']}" if failed else "")


# ----------------------------------------------------------------------------- 2. cross-entropy at V=256K

def rel_err(a, b):
    """max |a - b| / max |b| (0 when equal), in fp32."""
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def ce_reference(x, w, t):
    """The fp32 definition, F.linear + F.cross_entropy (kernels.linear_cross_entropy_reference), over blocks of rows
    so that it fits any GPU: (mean loss, grad x, grad W), all fp32."""
    xr, wr = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    n, total = x.shape[0], 0.0
    for s in range(0, n, CE_REF_ROWS):
        loss = linear_cross_entropy_reference(xr[s:s + CE_REF_ROWS], wr, t[s:s + CE_REF_ROWS], reduction="sum") / n
        loss.backward()
        total += loss.item()
    return torch.tensor(total), xr.grad, wr.grad


def naive_ce(x, w, t):
    """What a model usually does: full logits, upcast, F.cross_entropy."""
    return F.cross_entropy(F.linear(x, w).float(), t)


def ce_methods(device):
    """key -> (row name, loss function, None or the reason it cannot run here). Triton is imported only on CUDA."""
    cuda = device.type == "cuda"
    out = {"naive": ("naive: F.linear + F.cross_entropy", naive_ce, None),
           "compiled": ("torch.compile(naive)", torch.compile(naive_ce) if cuda else None, None if cuda else NO_CUDA),
           "chunked": ("kernels chunked (impl=chunked)",
                       lambda x, w, t: linear_cross_entropy(x, w, t, impl="chunked"), None)}
    reason = NO_CUDA
    if cuda:
        from kernels.triton_ce import triton_available
        reason = None if triton_available("cuda") else "skipped: the triton package is not installed"
    out["triton"] = ("kernels Triton (impl=triton)",
                     lambda x, w, t: linear_cross_entropy(x, w, t, impl="triton"), reason)
    return out


def check_ce(ctx):
    sh, dev, rows = ctx.shapes["ce"], ctx.device, ctx.result["rows"]
    n, v, d = sh["n"], sh["v"], sh["d"]
    dtypes = [s.strip() for s in ctx.cfg.ce_dtypes.split(",") if s.strip()]
    ctx.result["setup"] = (f"N={n:,} tokens, V={v:,}, d={d:,}; forward + backward of the mean loss; errors vs the fp32 "
                           f"definition (blocks of {CE_REF_ROWS:,} rows); time: median of {sh['reps']} after a "
                           f"warm-up; memory: peak over inputs, includes the weight gradient")
    if dev.type != "cuda":
        ctx.skipped.append("torch.compile'd CE, Triton, max_memory_allocated")
    ours_bad = []
    for name in dtypes:
        dtype = getattr(torch, name)
        ctx.clock.check(f"before {name}")
        g = torch.Generator(device=dev).manual_seed(0)
        x = torch.randn(n, d, generator=g, device=dev).to(dtype).requires_grad_()
        w = (torch.randn(v, d, generator=g, device=dev) * 0.02).to(dtype).requires_grad_()   # GPT-2 init scale
        t = torch.randint(0, v, (n,), generator=g, device=dev)
        ref_loss, ref_gx, ref_gw = ce_reference(x, w, t)
        grads_gib = (x.numel() + w.numel()) * x.element_size() / 2 ** 30
        tol_loss, tol_grad = CE_TOL[name]
        chunked_grads = None
        for key, (method, fn, skip) in ce_methods(dev).items():
            row = {"key": key, "method": method, "dtype": name, "grads_gib": grads_gib}
            rows.append(row)
            if skip:
                row["status"] = skip
                continue
            ctx.clock.check(f"{name} {method}")

            def fwd_bwd():
                x.grad = w.grad = None
                loss = fn(x, w, t)
                loss.backward()
                return loss.detach()
            try:
                loss, first = timed(fwd_bwd, dev)                   # warm-up: compilation, Triton JIT, autotune
                row.update(first_call_s=first, loss_rel_err=rel_err(loss.cpu(), ref_loss),
                           grad_x_rel_err=rel_err(x.grad, ref_gx), grad_w_rel_err=rel_err(w.grad, ref_gw))
                if key == "chunked":
                    chunked_grads = (x.grad.clone(), w.grad.clone())
                elif key == "triton" and chunked_grads is not None:
                    row["vs_chunked_grad_rel_err"] = max(rel_err(x.grad, chunked_grads[0]),
                                                         rel_err(w.grad, chunked_grads[1]))
                times = []
                for k in range(sh["reps"]):
                    ctx.clock.check(f"{name} {method}, rep {k}")
                    x.grad = w.grad = None                  # freed by refcount: the peak counts this run only
                    with PeakMemory(dev) as mem:
                        _, secs = timed(fwd_bwd, dev)
                    times.append(secs)
                row.update(ms=1e3 * statistics.median(times), times_ms=[round(1e3 * s, 2) for s in times],
                           peak_extra_gib=mem.gib)
                if mem.gib is None:
                    row["memory"] = NO_CUDA
                ok = row["loss_rel_err"] <= tol_loss and max(row["grad_x_rel_err"], row["grad_w_rel_err"]) <= tol_grad
                row["status"] = "pass" if ok else f"fail: beyond {tol_loss:g} (loss) / {tol_grad:g} (grads)"
            except torch.cuda.OutOfMemoryError as e:
                row["status"] = f"OOM: {last_line(e)[:200]}"
            except CheckTimeout:
                row["status"] = "timeout"
                raise
            except Exception as e:  # noqa: BLE001 - one method's crash is that row's result
                row["status"], row["traceback"] = f"crash: {last_line(e)[:300]}", traceback.format_exc()[-4000:]
            finally:
                x.grad = w.grad = None
                free_memory(dev)
            if key in ("chunked", "triton") and row["status"] != "pass":
                ours_bad.append(f"{method} {name}: {row['status']}")
        x = w = t = ref_gx = ref_gw = chunked_grads = None  # (rebound, not del: fwd_bwd closes over them)
        free_memory(dev)
    # our kernels decide; a naive or torch.compile row that crashes or runs out of memory is a figure, not our bug
    ctx.status = overall(["fail" if ours_bad else "pass"] + [r.get("status", "") for r in rows
                                                             if str(r.get("status", "")).startswith("timeout")])
    fig = []
    for name in dtypes:
        done = [r for r in rows if r["dtype"] == name and "ms" in r]
        best = next((r for r in done if r["key"] == "triton"), None) or \
            next((r for r in done if r["key"] == "chunked"), None)
        naive = next((r for r in done if r["key"] == "naive"), None)
        if best:
            mem = f", {best['peak_extra_gib']:.1f} GiB" if best.get("peak_extra_gib") is not None else ""
            vs = (f" vs naive {naive['ms']:.0f} ms" + (f", {naive['peak_extra_gib']:.1f} GiB"
                                                        if naive.get("peak_extra_gib") is not None else "")
                  if naive else "")
            err = max(best["loss_rel_err"], best["grad_x_rel_err"], best["grad_w_rel_err"])
            fig.append(f"{name}: {best['method'].split('(')[0].strip()} {best['ms']:.0f} ms{mem}{vs}; max rel err "
                       f"{err:.1e}")
    ctx.summary = "; ".join(fig) + (f"; {ours_bad[0]}" if ours_bad else "")


# ----------------------------------------------------------------------------- 3. MFU (FSDP2 path of train.py)

def mfu_row(mcfg, batch, warmup, steps, ac, s, clock):
    """train.py's model + wrapper + optimizer + step on this rank: a dict of figures (rank-local memory)."""
    rcfg = runtime.RunConfig(parallel="fsdp", compile="auto", dtype="auto", device=str(s.device),
                             activation_checkpointing=ac, max_iters=warmup + steps, warmup_iters=1)
    torch.manual_seed(0)                                   # the same init on every rank
    with torch.device(s.device):
        model = PolyLM(mcfg)
    with log_warnings("kernels.compiled") as warned:
        wrapped = runtime.wrap_model(model, rcfg, s)
        opt = runtime.make_optimizer(model, rcfg, s.device)
        gen = torch.Generator().manual_seed(1000 + s.d.rank)
        times, applied = [], 0
        T = mcfg.block_size
        for i in range(warmup + steps):
            clock.check(f"step {i}")
            xy = torch.randint(0, mcfg.vocab_size, (batch, T + 1), generator=gen)
            sync(s.device)
            if i == warmup and s.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(s.device)      # the steady state: weights, optimizer, one step
            t = time.perf_counter()
            r = runtime.optimizer_step(wrapped, model, opt, [(xy[:, :-1], xy[:, 1:])], rcfg.learning_rate, s, 1.0)
            sync(s.device)
            if i >= warmup:
                times.append(time.perf_counter() - t)
                applied += r.applied
    sharded = runtime.is_fsdp(wrapped)
    tokens = batch * T * s.d.world_size
    tps = tokens / statistics.median(times)
    peak = runtime.peak_flops(s.device, s.dtype)
    row = {"activation_checkpointing": ac, "ranks": s.d.world_size, "fsdp_sharded": sharded,
           "compiled": runtime.resolve_compile("auto", s.device)[0] and not warned, "dtype": str(s.dtype)[6:],
           "tokens_per_step": tokens, "step_ms": 1e3 * statistics.median(times),
           "step_ms_range": [round(1e3 * min(times), 1), round(1e3 * max(times), 1)], "tokens_per_s": tps,
           "tokens_per_s_per_gpu": tps / s.d.world_size, "peak_tflops": peak / 1e12 if peak else None,
           "mfu": tps * model.flops_per_token(T) / (peak * s.d.world_size) if peak else "unknown peak",
           "peak_memory_gib": (torch.cuda.max_memory_allocated(s.device) / 2 ** 30) if s.device.type == "cuda"
           else NO_CUDA, "steps_applied": applied, "steps_timed": len(times), "status": "pass"}
    if warned:
        row["status"] = f"fail: torch.compile fell back to eager ({warned[0][:200]})"
    if applied < len(times):
        row["status"] = f"fail: {len(times) - applied} of {len(times)} steps had a non-finite loss or grad norm"
    del wrapped, opt, model
    free_memory(s.device)
    return row


def failed_row(ac, e):
    """The row of an MFU run that ran out of memory or crashed (with the exception's last line)."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return {"activation_checkpointing": ac, "status": f"OOM: {last_line(e)[:200]}"}
    return {"activation_checkpointing": ac, "status": f"crash: {last_line(e)[:300]}",
            "traceback": traceback.format_exc()[-4000:]}


@contextlib.contextmanager
def one_rank_group(device):
    """A 1-rank process group in this process, on the backend runtime.setup_distributed would pick."""
    import torch.distributed as dist
    if dist.is_initialized():
        yield
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def mfu_rows_plan():
    return [False, True]                                   # activation checkpointing off, on


def check_mfu(ctx):
    sh, dev, cfg = ctx.shapes["mfu"], ctx.device, ctx.cfg
    mcfg = model_cfg(sh["model"])
    procs = cfg.mfu_procs or (torch.cuda.device_count() if dev.type == "cuda" else 1)
    if dev.type == "cuda" and procs > torch.cuda.device_count():
        raise ValueError(f"mfu_procs={procs}: only {torch.cuda.device_count()} GPU(s) visible")
    n_params = count_params(mcfg)                          # on the meta device: no memory, no time
    ctx.result["setup"] = (f"polylm-1.7b shape with {mcfg.n_layer} of 24 layers, d {mcfg.n_embd}, {mcfg.n_head} "
                           f"heads, context {mcfg.block_size:,}, vocab {mcfg.vocab_size:,}; batch {sh['batch']} x "
                           f"{mcfg.block_size:,} tokens per GPU; {sh['warmup']} warm-up + {sh['steps']} timed steps; "
                           f"{procs} rank(s)" + (" (tiny dry-run shape)" if ctx.dry else "")
                           + f"; {n_params:,} parameters")
    rows = ctx.result["rows"]
    plan = mfu_rows_plan()
    if procs == 1:
        dtype = runtime.resolve_dtype("auto", dev)[0]
        s = runtime.Session(runtime.Dist(), dev, dtype, runtime.autocast(dev, dtype), ctx.log)
        with one_rank_group(dev):
            for k, ac in enumerate(plan):
                share = ctx.clock.left() / (len(plan) - k)
                try:
                    with ctx.clock.part(share):
                        rows.append(mfu_row(mcfg, sh["batch"], sh["warmup"], sh["steps"], ac, s, ctx.clock))
                except CheckTimeout as e:
                    rows.append({"activation_checkpointing": ac, "status": f"timeout: {e}"})
                    free_memory(dev)
                    if ctx.clock.left() <= 0:
                        raise
                except Exception as e:  # noqa: BLE001 - OOM or a crash of one row; the other row still runs
                    rows.append(failed_row(ac, e))
                    free_memory(dev)
    else:
        rows += spawn_mfu(ctx, procs, plan)
    if rows and not rows[0].get("fsdp_sharded", True) and "ranks" in rows[0]:
        ctx.result["notes"].append(
            "one rank: runtime.wrap_model returns the model unsharded at world size 1 (what train.py runs on one "
            "GPU), so FSDP2 itself runs only with >= 2 ranks (--mfu_procs); these rows measure the model as "
            "train.py trains it in one process (compiled blocks where compile=auto compiles)")
    if dev.type != "cuda":
        ctx.skipped.append("peak memory, compiled blocks, MFU against a GPU peak")
    ctx.status = overall([r.get("status", "") for r in rows])
    parts = []
    for r in rows:
        ac = "AC" if r.get("activation_checkpointing") else "no AC"
        if "tokens_per_s" in r:
            mfu = f"{r['mfu']:.1%} MFU" if isinstance(r["mfu"], float) else f"MFU {r['mfu']}"
            mem = f", {r['peak_memory_gib']:.1f} GiB" if isinstance(r["peak_memory_gib"], float) else ""
            parts.append(f"{ac}: {r['tokens_per_s']:,.0f} tokens/s, {mfu}{mem}")
        else:
            parts.append(f"{ac}: {r['status']}")
    ctx.summary = f"{mcfg.n_layer}L, {procs} rank(s): " + "; ".join(parts)


def spawn_mfu(ctx, procs, plan):
    """One process per rank, torchrun-style environment; rank 0 appends a JSON line per finished row."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ranks_dir = Path(ctx.cfg.out_dir) / "mfu_ranks"           # every rank's output stays here, for reading
    shutil.rmtree(ranks_dir, ignore_errors=True)
    ranks_dir.mkdir(parents=True)
    out = ranks_dir / "rows.jsonl"
    deadline = time.time() + ctx.clock.left()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker=mfu", f"--worker_out={out}",
           f"--worker_deadline={deadline}", f"--device={'cuda' if ctx.device.type == 'cuda' else 'cpu'}",
           f"--dry_run={ctx.dry}", f"--mfu_layers={ctx.cfg.mfu_layers}", f"--mfu_batch={ctx.cfg.mfu_batch}",
           f"--mfu_warmup={ctx.cfg.mfu_warmup}", f"--mfu_steps={ctx.cfg.mfu_steps}"]
    logs = [ranks_dir / f"rank{r}.log" for r in range(procs)]
    running = []
    for r in range(procs):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(procs), "LOCAL_WORLD_SIZE":
               str(procs), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        if ctx.device.type != "cuda":
            env["OMP_NUM_THREADS"] = "1"
        running.append(subprocess.Popen(cmd, env=env, stdout=open(logs[r], "w"), stderr=subprocess.STDOUT,
                                        start_new_session=True))
    timed_out, failed = False, []
    try:                                                   # like torchrun: one rank failing stops them all
        while any(p.poll() is None for p in running):
            failed = [r for r, p in enumerate(running) if p.poll() not in (None, 0)]
            if failed:
                break
            if time.time() > deadline:
                timed_out = True
                break
            time.sleep(0.2)
        failed = [r for r, p in enumerate(running) if p.poll() not in (None, 0)]
    except CheckTimeout:
        timed_out = True
    finally:
        for p in running:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)           # our own children, by process group
                p.wait()
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {r.get("activation_checkpointing") for r in rows}
    tails = []
    for r in failed or range(procs):
        lines = [ln for ln in logs[r].read_text(errors="replace").splitlines() if ln.strip()]
        tails.append(f"rank {r} (exit {running[r].returncode}): {lines[-1][:300] if lines else 'no output'}")
    why = ("crash: " if failed else "timeout: the ranks ran out of the check's budget; " if timed_out
           else "crash: no row written; ")
    for ac in plan:
        if ac not in done:
            rows.append({"activation_checkpointing": ac, "status": why + "; ".join(tails[:2]),
                         "logs": str(ranks_dir)})
    return rows


def mfu_worker(cfg):
    """One rank of the multi-process MFU check (spawned by spawn_mfu with RANK/WORLD_SIZE/MASTER_*)."""
    d = runtime.setup_distributed(cfg.device)
    try:
        dev = runtime.resolve_device(cfg.device, d.local_rank)
        dtype = runtime.resolve_dtype("auto", dev)[0]
        s = runtime.Session(d, dev, dtype, runtime.autocast(dev, dtype), print if d.main else (lambda m: None))
        sh = shapes(cfg, cfg.dry_run or dev.type == "cpu")["mfu"]
        mcfg = model_cfg(sh["model"])
        plan = mfu_rows_plan()
        for k, ac in enumerate(plan):
            clock = Clock(max(0.0, (cfg.worker_deadline - time.time()) / (len(plan) - k)))
            try:
                with clock.running():
                    row = mfu_row(mcfg, sh["batch"], sh["warmup"], sh["steps"], ac, s, clock)
            except CheckTimeout as e:
                row = {"activation_checkpointing": ac, "status": f"timeout: {e}"}
            except Exception as e:  # noqa: BLE001 - reported by rank 0's row; the parent also keeps every log
                row = failed_row(ac, e)
                print(row.get("traceback", ""), flush=True)
            if d.main:
                with open(cfg.worker_out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    finally:
        runtime.teardown(d)


# ----------------------------------------------------------------------------- 4. generation and evaluation

def gen_speed(mcfg, batch, prompt, new, device, dtype, clock):
    """Greedy tokens/s of model.generate (KV cache) at this batch size, random weights."""
    torch.manual_seed(0)
    with torch.device(device):
        model = PolyLM(mcfg).eval()
    ids = torch.randint(0, mcfg.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    with runtime.autocast(device, dtype):
        model.generate(ids, 4, temperature=0)                                   # warm-up
        clock.check("generation warm-up")
        out, secs = timed(lambda: model.generate(ids, new, temperature=0), device)
    assert out.shape == (batch, prompt + new), f"generate returned {tuple(out.shape)}"
    model = None                                           # noqa: F841 - free it before the next row
    free_memory(device)
    return batch * new / secs, secs


def byte_tokenizer(tmp):
    """A byte-level tokenizer (256 byte tokens + the specials), the tokens check 1 trains on."""
    import bpe
    bpe.save(Path(tmp) / "tokenizer", {bytes([i]): i for i in range(256)})
    return bpe.load(Path(tmp) / "tokenizer")


def check_gen_eval(ctx):
    import evaluate                                        # imported here: a broken evaluate.py fails this check only
    sh, dev = ctx.shapes, ctx.device
    res, rows = ctx.result, ctx.result["rows"]
    dtype = runtime.resolve_dtype("auto", dev)[0]
    if "toy_model" in ctx.shared:
        mcfg, state, what = ctx.shared["toy_model"]
    else:
        mcfg = model_cfg(sh["train"]["model"])
        torch.manual_seed(0)
        state, what = PolyLM(mcfg).state_dict(), "a random toy model (check 1 did not finish)"
    res["setup"] = f"evaluation and cache check on {what}; generation speed on random weights, dtype {str(dtype)[6:]}"
    cpu_model = PolyLM(mcfg)
    cpu_model.load_state_dict(state)
    cpu_model.eval()
    dev_model = PolyLM(mcfg)
    dev_model.load_state_dict(state)
    dev_model.to(dev).eval()
    bad = []

    # a) KV cache on the device: the same greedy tokens as recomputing the whole prefix (fp32)
    xs, _ = text_batches(1, 8, 16, seed=7)[0]
    ids = torch.from_numpy(xs).to(dev)
    n_new = min(32, mcfg.block_size - 16)
    with torch.no_grad():
        a = dev_model.generate(ids, n_new, temperature=0, use_cache=True)
        b = dev_model.generate(ids, n_new, temperature=0, use_cache=False)
    same = int((a == b).all(1).sum())
    rows.append({"what": f"KV cache == recompute, greedy, batch 8 x {n_new} new tokens, fp32, {dev.type}",
                 "value": f"{same}/8 rows identical", "status": "pass" if same == 8 else "fail"})
    if same != 8:
        bad.append("KV cache tokens differ from recomputing")
    ctx.clock.check("after the KV-cache check")

    # b) XCOPA log-likelihoods: CUDA fp32 == CPU fp32 per item (and bf16 for information)
    with tempfile.TemporaryDirectory() as tmp:
        enc = byte_tokenizer(tmp)
    ecfg_cpu = evaluate.EvalConfig(device="cpu", scorer="tree")
    ecfg_dev = dataclasses.replace(ecfg_cpu, device=str(dev))
    requests, gold = [], []
    for lang in sh["eval"]["langs"]:
        docs, pool, pool_is_eval, _, _ = evaluate.load_mc("xcopa", ecfg_cpu, lang)
        items, reqs = evaluate.mc_requests("xcopa", enc, docs[:sh["eval"]["limit"]], pool, pool_is_eval, 0,
                                           ecfg_cpu.seed, lang)
        requests += reqs
        gold += [it["gold"] for it in items]
    ll_cpu = np.array(evaluate.score_requests(cpu_model, requests, ecfg_cpu, None, desc="xcopa cpu"))
    per_item = lambda ll: [int(np.argmax(ll[2 * i:2 * i + 2])) for i in range(len(requests))]   # noqa: E731
    acc_cpu = float(np.mean([p == g for p, g in zip(per_item(ll_cpu), gold)]))
    row = {"what": f"XCOPA log-likelihoods, {len(requests)} items x 2 choices ({', '.join(sh['eval']['langs'])}), "
                   f"evaluate.score_requests (tree)", "cpu_fp32_acc": acc_cpu}
    rows.append(row)
    ctx.clock.check("after XCOPA on CPU")
    if dev.type == "cuda":
        ll_dev = np.array(evaluate.score_requests(dev_model, requests, ecfg_dev, None, desc="xcopa cuda"))
        scale = np.maximum(1.0, np.abs(ll_cpu))
        worst = float(np.max(np.abs(ll_dev - ll_cpu) / scale))
        flips = sum(p != q for p, q in zip(per_item(ll_cpu), per_item(ll_dev)))
        row.update(max_rel_diff_fp32=worst, choice_flips_fp32=flips, tolerance=ctx.cfg.eval_tol,
                   status="pass" if worst <= ctx.cfg.eval_tol and flips == 0 else "fail")
        if row["status"] != "pass":
            bad.append(f"XCOPA CUDA vs CPU: max rel diff {worst:.1e}, {flips} choice flips")
        if dtype == torch.bfloat16:
            ll_bf = np.array(evaluate.score_requests(dev_model, requests, ecfg_dev, runtime.autocast(dev, dtype),
                                                     desc="xcopa cuda bf16"))
            row.update(bf16_max_abs_diff=float(np.max(np.abs(ll_bf - ll_cpu))),
                       bf16_acc=float(np.mean([p == g for p, g in zip(per_item(ll_bf), gold)])))
    else:
        row["status"] = f"cpu only; CUDA vs CPU: {NO_CUDA}"
        ctx.skipped.append("XCOPA on CUDA")
    del dev_model
    free_memory(dev)

    # c) generation speed, batch 1 and 8, every shape asked for
    models = sh["gen"]["models"]
    jobs = [(name, b) for name in models for b in (1, 8)]
    for k, (name, b) in enumerate(jobs):
        gcfg = model_cfg(models[name])
        new = min(sh["gen"]["new"], gcfg.block_size - sh["gen"]["prompt"])
        grow = {"model": name, "batch": b,
                "what": f"generate, {name} ({gcfg.n_layer}L/{gcfg.n_embd}d, vocab {gcfg.vocab_size:,}), batch {b}, "
                        f"{sh['gen']['prompt']} prompt + {new} new tokens, KV cache, {str(dtype)[6:]}"}
        rows.append(grow)
        try:
            with ctx.clock.part(ctx.clock.left() / (len(jobs) - k)):
                tps, secs = gen_speed(gcfg, b, sh["gen"]["prompt"], new, dev, dtype, ctx.clock)
            grow.update(tokens_per_s=tps, seconds=secs, value=f"{tps:,.0f} tokens/s", status="pass")
        except CheckTimeout as e:
            grow["status"] = f"timeout: {e}"
            bad.append(f"{name} batch {b}: timeout")
            if ctx.clock.left() <= 0:
                raise
        except Exception as e:  # noqa: BLE001 - OOM or a crash of one row; the other rows still run
            grow.update(failed_row(None, e))
            grow.pop("activation_checkpointing")
            bad.append(f"{name} batch {b}: {grow['status']}")
            free_memory(dev)
    ctx.status = overall([r.get("status", "pass") for r in rows])
    fig = ", ".join(f"{r['model']} b{r['batch']} {r['tokens_per_s']:,.0f}" for r in rows if "tokens_per_s" in r)
    xc = rows[1]
    xtext = (f"XCOPA CUDA fp32 vs CPU max rel diff {xc['max_rel_diff_fp32']:.1e} ({xc['choice_flips_fp32']} flips)"
             if "max_rel_diff_fp32" in xc else f"XCOPA CPU acc {xc['cpu_fp32_acc']:.2f} (CUDA: {NO_CUDA})")
    ctx.summary = f"KV cache tokens/s: {fig}; {rows[0]['value']}; {xtext}" + (f"; {bad[0]}" if bad else "")


# ----------------------------------------------------------------------------- the run

class Context:
    def __init__(self, cfg, device, dry, name, result, shared, log):
        self.cfg, self.device, self.dry, self.shapes = cfg, device, dry, shapes(cfg, dry)
        self.result, self.shared, self.log = result, shared, log
        self.clock = Clock(result["budget_s"])
        self.status, self.summary, self.skipped = "pass", "", []


def run_check(name, fn, cfg, device, dry, shared, log):
    """Run one check under its budget; whatever happens, return its result dict (status, summary, rows, ...)."""
    result = {"check": name, "title": TITLES[name], "budget_s": getattr(cfg, f"{name}_s"), "rows": [], "notes": []}
    t = time.monotonic()
    ctx = None
    try:
        ctx = Context(cfg, device, dry, name, result, shared, log)
        if device.type == "cuda":
            torch.compiler.reset()                         # no automatic-dynamic recompiles from an earlier check
        with ctx.clock.running():
            if name in [c.strip() for c in cfg.fail_check.split(",")]:
                raise RuntimeError(f"injected failure (--fail_check={cfg.fail_check})")
            fn(ctx)
        result["status"], result["summary"] = ctx.status, ctx.summary
    except CheckTimeout as e:
        result["status"] = "timeout"
        result["summary"] = f"{e}; rows finished before it are kept" if result["rows"] else str(e)
    except Exception as e:  # noqa: BLE001 - a crash is this check's result; the others still run
        result["status"], result["summary"] = "crash", last_line(e)[:500]
        result["error"], result["traceback"] = last_line(e), traceback.format_exc()[-6000:]
    finally:
        with contextlib.suppress(Exception):
            free_memory(device)
    if ctx is not None and ctx.skipped:
        result["skipped"] = f"{NO_CUDA}: " + ", ".join(ctx.skipped)
    result["seconds"] = time.monotonic() - t
    return result


def overall(statuses):
    """A check's status from its rows': fail if any row failed / crashed / ran out of memory, else timeout if one
    ran out of time, else pass (rows skipped for a stated reason do not count)."""
    s = [str(x) for x in statuses]
    if any(x.startswith(("fail", "crash", "OOM")) for x in s):
        return "fail"
    if any(x.startswith("timeout") for x in s):
        return "timeout"
    return "pass"


def cell(text):
    """Text for a markdown table cell (an unescaped '|' would end the cell)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def fmt(v, spec):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    return "–" if v is None else str(v)


def markdown(report):
    m, lines = report["machine"], []
    gpu = (f"{m['gpu']} x {m['gpus']} (compute {m['capability']}, {m['gpu_memory_gib']} GiB), CUDA {m['cuda']}, "
           f"triton {m['triton']}, bf16 peak {fmt(m['bf16_peak_tflops'], '.0f')} TFLOP/s (runtime.GPU_PEAK_FLOPS)"
           if "gpu" in m else "no GPU (CPU dry run: tiny shapes)")
    lines += [f"`python bench/gpu_check.py {' '.join(report['argv'])}`".replace(" `", "`"), "",
              f"Machine: {gpu}; host {m['cpu']}, torch {m['torch']}. Total {report['seconds']:.0f} s.", "",
              "| check | status | figure | time / budget (s) |", "|---|---|---|---:|"]
    for r in report["checks"]:
        fig = r.get("summary", "") + (f" ({r['skipped']})" if r.get("skipped") else "")
        lines.append(f"| {r['title']} | {r['status']} | {cell(fig)} | "
                     f"{r.get('seconds', 0):.0f} / {r['budget_s']:.0f} |")
    for r in report["checks"]:
        if r["status"] == "skipped" and not r["rows"]:
            continue
        lines += ["", f"### {r['title']}", ""]
        if r.get("setup"):
            lines += [r["setup"], ""]
        rows = r["rows"]
        if r["check"] == "train" and rows:
            lines += ["| arm | device | dtype | compile | steps | first → last loss | max \\|Δloss\\| | "
                      "bf16: Δ step 0, Δ mean of the last steps | tolerance | tokens/s | status |",
                      "|---|---|---|---|---:|---|---:|---|---|---:|---|"]
            for x in rows:
                lines.append(f"| {x['arm']} | {x.get('device', '–')} | {x.get('dtype', '–')} | "
                             f"{x.get('compile', '–')} | {x.get('steps', '–')} | "
                             f"{fmt(x.get('first_loss'), '.3f')} → "
                             f"{fmt(x.get('last_loss'), '.3f')} | {fmt(x.get('max_abs_diff'), '.1e')} | "
                             + (f"{x['step0_diff']:.1e}, {x['tail_mean_rel_diff']:.2%} | " if "step0_diff" in x
                                else "– | ")
                             + f"{x.get('tolerance', '–')} | {fmt(x.get('tokens_per_s'), ',.0f')} | "
                             f"{cell(x['status'])} |")
        elif r["check"] == "ce" and rows:
            lines += ["| method | inputs | loss rel err | grad x rel err | grad W rel err | fwd+bwd ms (median) | "
                      "first call s | peak memory over inputs (GiB) | status |",
                      "|---|---|---:|---:|---:|---:|---:|---:|---|"]
            for x in rows:
                mem = fmt(x.get("peak_extra_gib"), ".2f") if x.get("peak_extra_gib") is not None else \
                    x.get("memory", "–")
                lines.append(f"| {x['method']} | {x['dtype']} | {fmt(x.get('loss_rel_err'), '.1e')} | "
                             f"{fmt(x.get('grad_x_rel_err'), '.1e')} | {fmt(x.get('grad_w_rel_err'), '.1e')} | "
                             f"{fmt(x.get('ms'), ',.1f')} | {fmt(x.get('first_call_s'), '.2f')} | {mem} | "
                             f"{cell(x['status'])} |")
            lines += ["", "Tolerances (max relative error vs the fp32 definition): "
                      + "; ".join(f"{k}: loss {a:g}, gradients {b:g}" for k, (a, b) in CE_TOL.items())
                      + f". The weight + input gradients alone take {rows[0]['grads_gib']:.3g} GiB"
                      f" ({rows[0]['dtype']})."]
        elif r["check"] == "mfu" and rows:
            lines += ["| activation checkpointing | ranks | FSDP2 sharded | compiled | tokens/s | tokens/s/GPU | "
                      "step ms (min-max) | MFU | peak memory/GPU (GiB) | status |",
                      "|---|---:|---|---|---:|---:|---:|---:|---:|---|"]
            for x in rows:
                mfu = fmt(x.get("mfu"), ".1%") if "mfu" in x else "–"
                rng = x.get("step_ms_range")
                lines.append(f"| {x.get('activation_checkpointing')} | {x.get('ranks', '–')} | "
                             f"{x.get('fsdp_sharded', '–')} | {x.get('compiled', '–')} | "
                             f"{fmt(x.get('tokens_per_s'), ',.0f')} | {fmt(x.get('tokens_per_s_per_gpu'), ',.0f')} | "
                             f"{fmt(x.get('step_ms'), ',.0f')}" + (f" ({rng[0]:,.0f}-{rng[1]:,.0f})" if rng else "")
                             + f" | {mfu} | {fmt(x.get('peak_memory_gib'), '.1f')} | {cell(x['status'])} |")
        elif r["check"] == "gen_eval" and rows:
            lines += ["| what | figure | status |", "|---|---|---|"]
            for x in rows:
                if "cpu_fp32_acc" in x:
                    val = (f"CPU fp32 acc {x['cpu_fp32_acc']:.3f}"
                           + (f"; CUDA fp32 max \\|Δll\\|/max(1,\\|ll\\|) {x['max_rel_diff_fp32']:.1e} (tol "
                              f"{x['tolerance']:g}), {x['choice_flips_fp32']} choice flips"
                              if "max_rel_diff_fp32" in x else "")
                           + (f"; CUDA bf16 max \\|Δll\\| {x['bf16_max_abs_diff']:.2e}, acc {x['bf16_acc']:.3f}"
                              if "bf16_acc" in x else ""))
                else:
                    val = x.get("value", "–")
                lines.append(f"| {x['what']} | {val} | {cell(x.get('status', '–'))} |")
        for note in r.get("notes", []):
            lines += ["", f"Note: {note}"]
        if r.get("error"):
            lines += ["", f"Error: `{r['error'][:300]}`"]
    return "\n".join(lines) + "\n"


def run(cfg):
    if cfg.worker:
        if cfg.worker != "mfu":
            raise ValueError(f"worker={cfg.worker!r}: the only worker is mfu")
        return mfu_worker(cfg)
    only = [c.strip() for c in cfg.only.split(",") if c.strip()] or list(CHECKS)
    for c in only + [c.strip() for c in cfg.fail_check.split(",") if c.strip()]:
        if c not in CHECKS:
            raise ValueError(f"unknown check {c!r}; choose from {', '.join(CHECKS)}")
    for c in CHECKS:
        if getattr(cfg, f"{c}_s") < 0:
            raise ValueError(f"{c}_s={getattr(cfg, f'{c}_s')} must be >= 0")
    for key in ("train_steps", "ce_reps", "mfu_layers", "mfu_batch", "mfu_steps", "gen_new_tokens", "gen_prompt",
                "eval_limit"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} must be >= 1")
    device = runtime.resolve_device(cfg.device)
    dry = cfg.dry_run or device.type != "cuda"
    shapes(cfg, dry)                                       # bad shape settings fail here, with one line
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log = lambda msg: print(f"  {msg}", flush=True)        # noqa: E731
    info = machine(device)
    print(f"gpu_check: {info.get('gpu', 'no GPU')} ({device}), torch {info['torch']}"
          + (", dry run (tiny shapes)" if dry else ""), flush=True)
    report = {"argv": ARGV, "machine": info,
              "settings": dataclasses.asdict(cfg), "dry_run": dry, "checks": []}
    fns = {"train": check_train, "ce": check_ce, "mfu": check_mfu, "gen_eval": check_gen_eval}
    shared = {}
    for name in CHECKS:
        if name not in only:
            report["checks"].append({"check": name, "title": TITLES[name], "status": "skipped",
                                     "summary": "skipped: not in --only", "budget_s": getattr(cfg, f"{name}_s"),
                                     "rows": [], "seconds": 0.0})
            continue
        print(f"[{name}] {TITLES[name]} (budget {getattr(cfg, f'{name}_s'):.0f} s)", flush=True)
        r = run_check(name, fns[name], cfg, device, dry, shared, log)
        report["checks"].append(r)
        print(f"[{name}] {r['status']}: {r['summary']} ({r['seconds']:.1f} s)", flush=True)
    report["seconds"] = time.monotonic() - t0
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report)
    (out / "gpu_check.md").write_text(md)
    print("\n" + md)
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    print("summary: " + "; ".join(f"{r['check']} {r['status']}" for r in report["checks"]))
    if any(r["status"] not in ("pass", "skipped") for r in report["checks"]):
        raise SystemExit(1)
    return report


ARGV = []                                                  # the command line, for the report


def main(argv=None):
    ARGV[:] = sys.argv[1:] if argv is None else list(argv)
    return run_cli(run, GPUCheckConfig, argv, prog="bench/gpu_check.py")


if __name__ == "__main__":
    main()
