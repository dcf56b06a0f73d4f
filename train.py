"""Pre-train PolyLM (PolyLM paper §4 "Pre-training"), from a laptop toy run to the 1.7B/13B recipes on 32 A100s.

    python train.py                                  # the toy run: tokenizer -> shards -> train -> samples -> bpb table
    python train.py config/polylm_1_7b.py            # a preset recipe
    python train.py --max_iters=50 --curriculum=none # any setting, nanoGPT style (python train.py --help lists them)
    torchrun --standalone --nproc_per_node=8 train.py config/polylm_13b.py --parallel=fsdp   # one node, 8 GPUs
    python plan.py config/polylm_13b.py              # memory per GPU and days to 640B tokens, without allocating

What one run does, top to bottom:
  1. tokenizer: bpe.py trains a byte-level BPE (digits split one by one) on data_dir/mono/*.txt, cached in cache/;
  2. data: data.py tokenizes every source into train/val shards, cached in cache/shards-<tokenizer hash>-<data>/;
  3. the two-stage language curriculum (curriculum.py) fills every batch, each rank reading its own rows;
  4. AdamW(0.9, 0.95), weight decay 1e-4, grad clip 1.0, linear warmup then cosine decay to 10% of the peak LR
     (PolyLM: 6e-5 -> 6e-6 for 13B), bf16 autocast where the hardware has it natively;
     a non-finite loss or gradient skips the step; max_bad_steps in a row roll back to the last checkpoint and
     go on with the batches after the offending ones (as PaLM did for loss spikes);
  5. every eval_interval: per-language validation loss and bits-per-byte, and an atomic checkpoint;
  6. at the end: samples from prompts in several scripts, the per-language table and a loss-curve PNG.

Parallelism is PyTorch's own: one process, or torchrun with DDP (`parallel=ddp`: every rank holds the model,
gradients are averaged) or FSDP2 (`parallel=fsdp`: `fully_shard` per block, parameters/gradients/optimizer state
sharded across ranks, bf16 compute with fp32 gradient reduction), checkpointed with Distributed Checkpoint.

The run dir (out_dir) is self-contained: config.json, tokenizer/, ckpt/step_XXXXXX/ (+ ckpt/latest), metrics.jsonl,
loss.png. `python train.py --plot=RUN_DIR` redraws the plot; `--consolidate=RUN_DIR/ckpt/step_X` turns a sharded
(FSDP) checkpoint into the single model.pt that chat.py, evaluate.py and export.py read.
"""
import dataclasses
import gc
import json
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import bpe
import data
import evaluate
from config import run_cli
from curriculum import Mixer, make_schedule
from model import PolyLM, latest_checkpoint, load_model, preset


@dataclasses.dataclass
class TrainConfig:
    # model
    preset: str = "toy"                 # model preset: toy | polylm-1.7b | polylm-13b (model.py)
    n_layer: int = 0                    # override the preset's layers (0 = keep)
    n_head: int = 0                     # override the preset's heads (0 = keep)
    n_embd: int = 0                     # override the preset's width (0 = keep)
    block_size: int = 256               # context length in tokens (PolyLM: 2048)
    dropout: float = 0.0                # dropout (PolyLM: none)
    init_from: str = ""                 # start from this run dir's weights, model shape and tokenizer (e.g. export.py --import)
    # data and tokenizer
    data_dir: str = "data/sample"       # raw text: mono/<lang>.txt and parallel/en-<xx>.tsv
    tokenizer_dir: str = ""             # a bpe.py tokenizer dir ('' = train one on data_dir, cached in cache/)
    vocab_size: int = 8192              # vocab when training the tokenizer (PolyLM: 256,000)
    val_frac: float = 0.05              # share of documents held out for validation (by content hash)
    curriculum: str = "polylm"          # language schedule: polylm (two stages) | stage1 | none (natural) | uniform
    stage2_frac: float = 0.2            # share of training tokens in curriculum stage 2 (polylm)
    curriculum_stages: list = dataclasses.field(default_factory=list)  # explicit stage specs (curriculum.py), overrides
    curriculum_ramp: float = 0.0        # share of training tokens over which stages blend linearly (0 = hard switch)
    repeat_warn: int = 8                # warn when a source is repeated this many epochs
    # optimisation (PolyLM: AdamW 0.9/0.95, wd 1e-4, clip 1.0, warmup + cosine to 10% of peak)
    max_iters: int = 150                # optimizer steps
    batch_size: int = 16                # sequences per micro-batch per process
    grad_accum: int = 1                 # micro-batches per optimizer step
    learning_rate: float = 2e-3         # peak LR (PolyLM-13B: 6e-5; a tiny model wants more)
    min_lr: float = 2e-4                # LR at the end of cosine decay (10% of peak)
    warmup_iters: int = 15              # linear warmup steps
    weight_decay: float = 1e-4          # AdamW decay on weight matrices (not biases / LayerNorm)
    beta1: float = 0.9                  # AdamW beta1
    beta2: float = 0.95                 # AdamW beta2
    grad_clip: float = 1.0              # clip the global grad norm (0 = off)
    max_bad_steps: int = 5              # non-finite steps in a row before rolling back to the last checkpoint
    # evaluation, logging, checkpoints
    out_dir: str = "out/toy"            # run dir
    eval_interval: int = 50             # evaluate + checkpoint every N steps (and at the end)
    eval_tokens: int = 2048             # validation tokens per language at each eval (0 = all)
    log_interval: int = 10              # steps between metrics.jsonl records
    keep_ckpts: int = 2                 # keep the newest K checkpoints
    consolidate: bool = True            # FSDP: also write a single-file model.pt with each checkpoint
    samples: bool = True                # print samples from multilingual prompts at the end
    resume: str = "never"               # never (fresh run, overwrites out_dir) | auto (continue newest checkpoint)
    stop_at_step: int = 0               # end this invocation after this step, checkpointed (e.g. a job time limit)
    # system
    device: str = "auto"                # auto | cpu | cuda
    dtype: str = "auto"                 # auto | float32 | bfloat16 (auto: bf16 on CUDA and native-bf16 CPUs)
    compile: str = "auto"               # torch.compile each block: auto (on for CUDA, off for CPU) | True | False
    parallel: str = "ddp"               # with torchrun: ddp | fsdp (FSDP2 fully_shard per block)
    activation_checkpointing: bool = False  # recompute block activations in backward (less memory, ~30% slower)
    seed: int = 1337                    # random seed (init, sampling)
    # one-shot tools (do this and exit)
    plot: str = ""                      # redraw loss.png (and mixture.png) of this run dir
    consolidate_ckpt: str = ""          # write model.pt for this sharded checkpoint dir (ckpt/step_X)


PROMPTS = {"en": "The history of", "zh": "今天的天气", "ar": "في يوم من الأيام", "ru": "Сегодня в Москве",
           "th": "ประเทศไทย", "es": "El gobierno"}


# ----------------------------------------------------------------------------- machine choices

def resolve_device(name, local_rank=0):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _matmul_rate(dtype, n=512, reps=6):
    """FLOP/s of an n x n matmul in dtype on the CPU (best of reps)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
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
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    cap = torch.backends.cpu.get_cpu_capability()
    if not native:
        return torch.float32, f"CPU ({cap}) has no native bf16 (AVX512-BF16/AMX); bf16 would be emulated"
    fp32, bf16 = _matmul_rate(torch.float32), _matmul_rate(torch.bfloat16)
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


GPU_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}   # dense bf16 tensor-core peaks


def peak_flops(device, dtype):
    """Peak FLOP/s used for MFU: a table for GPUs, a measured matmul probe on CPUs."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)
    return _matmul_rate(dtype, n=1024, reps=4)


def lr_at(it, cfg):
    """Linear warmup to learning_rate, cosine decay to min_lr at max_iters."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    progress = min(1.0, (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


# ----------------------------------------------------------------------------- distributed

@dataclasses.dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self):
        return self.rank == 0


def setup_distributed(device_name):
    """torchrun sets RANK/WORLD_SIZE: join the process group (NCCL on GPUs, gloo on CPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    d = Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))
    cuda = resolve_device(device_name, d.local_rank).type == "cuda"
    if cuda:
        torch.cuda.set_device(d.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return d


def barrier(d):
    if d.world_size > 1:
        dist.barrier()


def teardown(d):
    """Clean exit. (Gathering full state dicts over gloo can crash at exit unless they are freed first.)"""
    if d.world_size > 1:
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def wrap_model(model, cfg, d, device, dtype):
    """-> (module to call for training, model to read/save). DDP or FSDP2 under torchrun, else the model itself."""
    model.activation_checkpointing = cfg.activation_checkpointing
    if resolve_compile(cfg.compile, device)[0]:
        model.compile_blocks()                        # per block, before DDP/FSDP wrap it (as torchtitan does)
    if d.world_size == 1:
        return model
    if cfg.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(model, device_ids=[d.local_rank] if device.type == "cuda" else None)
    if cfg.parallel == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        mesh = init_device_mesh(device.type, (d.world_size,))
        # compute in bf16, reduce gradients in fp32; in fp32 runs both are fp32
        mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
        for block in model.h:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)     # the root: embeddings (tied head) and final LayerNorm
        return model
    raise ValueError(f"parallel={cfg.parallel!r}: choose ddp or fsdp")


def make_optimizer(model, cfg, device):
    """AdamW(beta1, beta2), weight decay on matrices only (model.optimizer_groups). The fused kernel (one pass per
    parameter instead of a chain of for-each ops) on CUDA and CPU: +2% tokens/s at toy size, +6% at ~100M parameters
    on CPU (bench/bench_step.py; docs/BENCHMARKS.md), same results to float rounding."""
    return torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.learning_rate,
                             betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cuda", "cpu"))


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


def mean_over_ranks(x, d):
    if d.world_size == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / d.world_size


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(out_dir, step, model, optimizer, mixer, d, cfg):
    """Atomic and crash-safe: every rank writes into ckpt/.tmp_step_X, rank 0 fsyncs, renames it to step_X, then
    points ckpt/latest at it, then prunes old ones. A kill at any moment leaves the previous checkpoint loadable.
    FSDP writes a sharded Distributed Checkpoint (dcp/) and, if cfg.consolidate, also the full model.pt."""
    ckpt = Path(out_dir) / "ckpt"
    final, tmp = ckpt / f"step_{step:06d}", ckpt / f".tmp_step_{step:06d}"
    if d.main:
        ckpt.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(d)
    if is_fsdp(model):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict
        msd, osd = get_state_dict(model, optimizer)
        dcp.save({"model": msd, "optim": osd}, checkpoint_id=tmp / "dcp")
        del msd, osd
        if cfg.consolidate:
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if d.main:
                torch.save(full, tmp / "model.pt")
            del full
            gc.collect()
    elif d.main:
        torch.save(getattr(model, "module", model).state_dict(), tmp / "model.pt")    # no DDP "module." prefix
        torch.save(optimizer.state_dict(), tmp / "optim.pt")
    local = {"mixer": mixer.state_dict(), "torch_rng": torch.get_rng_state().tolist()}
    states = [None] * d.world_size
    if d.world_size > 1:
        dist.all_gather_object(states, local)
    else:
        states = [local]
    if d.main:
        (tmp / "state.json").write_text(json.dumps({"step": step, "world_size": d.world_size, "ranks": states}))
        if os.environ.get("POLYLM_CKPT_DELAY"):          # test hook: widen the window for a kill -9 test
            time.sleep(float(os.environ["POLYLM_CKPT_DELAY"]))
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        (ckpt / "latest.tmp").write_text(final.name)
        os.replace(ckpt / "latest.tmp", ckpt / "latest")
        for old in sorted(ckpt.glob("step_*"))[:-cfg.keep_ckpts]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(d)
    return final


def load_training_state(path, model, optimizer, mixer, d, restore_data=True):
    """Restore model + optimizer (+ this rank's data position and RNG) from a checkpoint; returns its step."""
    state = json.loads((path / "state.json").read_text())
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
        getattr(model, "module", model).load_state_dict(torch.load(path / "model.pt", map_location="cpu",
                                                                   weights_only=True))
        optimizer.load_state_dict(torch.load(path / "optim.pt", map_location="cpu", weights_only=True))
    if restore_data:
        mine = state["ranks"][d.rank]
        mixer.load_state_dict(mine["mixer"])
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
    return path / "model.pt"


# ----------------------------------------------------------------------------- run pieces

def prepare_tokenizer(cfg, log):
    """Load cfg.tokenizer_dir, or train (once, cached) a tokenizer on data_dir/mono/*.txt."""
    if cfg.init_from and not cfg.tokenizer_dir:
        return Path(cfg.init_from) / "tokenizer"
    tok_dir = Path(cfg.tokenizer_dir or f"cache/tokenizer-{cfg.vocab_size}-{Path(cfg.data_dir).name}")
    if not (tok_dir / "tokenizer.json").exists():
        if cfg.tokenizer_dir:
            raise FileNotFoundError(f"tokenizer_dir={cfg.tokenizer_dir!r} has no tokenizer.json; "
                                    f"train one with `python bpe.py --input ... --out DIR` or leave it empty")
        files = sorted(str(p) for p in Path(cfg.data_dir).glob("mono/*.txt"))
        if not files:
            raise FileNotFoundError(f"no {cfg.data_dir}/mono/*.txt to train a tokenizer on; set data_dir")
        log(f"tokenizer: training a {cfg.vocab_size}-token BPE on {len(files)} files of {cfg.data_dir}/mono -> {tok_dir}")
        t = time.time()
        bpe.train_from_files(files, cfg.vocab_size, str(tok_dir))
        log(f"tokenizer: trained in {time.time() - t:.1f}s")
    else:
        log(f"tokenizer: reusing {tok_dir}")
    return tok_dir


def write_metrics(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def plot_run(out_dir):
    """loss.png: training loss and per-language validation bpb against steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: --plot takes a run dir written by train.py")
    recs = [json.loads(line) for line in open(path, encoding="utf-8")]
    train_recs = [r for r in recs if "loss" in r]
    evals = [r for r in recs if "val_bpb" in r]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.5))
    a1.plot([r["step"] for r in train_recs], [r["loss"] for r in train_recs], label="train loss")
    for r in recs:
        if r.get("event") in ("stage", "rollback"):
            a1.axvline(r["step"], color="gray" if r["event"] == "stage" else "red", ls="--",
                       label=f"→ {r['stage']}" if r["event"] == "stage" else "rollback")
    a1.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="training loss")
    a1.legend()
    if evals:
        steps = [r["step"] for r in evals]
        colors = plt.get_cmap("tab20").colors
        for i, lang in enumerate(evals[-1]["val_bpb"]):
            a2.plot(steps, [r["val_bpb"].get(lang, float("nan")) for r in evals], marker=".", label=lang, lw=1,
                    color=colors[i % 20], ls="-" if i < 10 else "--")
        a2.set(xlabel="step", ylabel="bits per byte", title="validation bpb per language")
        a2.legend(ncol=3, fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "loss.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- the run

def train(cfg: TrainConfig):
    if cfg.plot:
        plot_run(cfg.plot)
        from curriculum import plot_mixture
        plot_mixture(cfg.plot)
        return print(f"wrote {cfg.plot}/loss.png and {cfg.plot}/mixture.png")
    if cfg.consolidate_ckpt:
        return print(f"wrote {consolidate_checkpoint(cfg.consolidate_ckpt)}")
    return run_distributed(_train, cfg)


def run_distributed(fn, cfg):
    """Join the process group (under torchrun), run fn(cfg, dist), always tear down. Shared with sft.py."""
    if cfg.resume not in ("never", "auto"):
        raise ValueError(f"resume={cfg.resume!r}: choose never or auto")
    d = setup_distributed(cfg.device)
    try:
        return fn(cfg, d)
    finally:
        teardown(d)


def setup_run(cfg, d):
    """(log, device, dtype, autocast context) for a run; logs the device and why this dtype. Shared with sft.py."""
    log = (lambda msg: tqdm.write(msg)) if d.main else (lambda msg: None)
    torch.manual_seed(cfg.seed)                       # same init on every rank
    device = resolve_device(cfg.device, d.local_rank)
    dtype, why = resolve_dtype(cfg.dtype, device)
    compiled, cwhy = resolve_compile(cfg.compile, device)
    log(f"device: {device} x {d.world_size} process(es), dtype: {str(dtype).replace('torch.', '')} ({why}), "
        f"compile: {'on' if compiled else 'off'} ({cwhy})")
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    return log, device, dtype, autocast


def _train(cfg, d):
    log, device, dtype, autocast = setup_run(cfg, d)
    out = Path(cfg.out_dir)
    metrics = out / "metrics.jsonl"
    resume_from = latest_checkpoint(out) if cfg.resume == "auto" else None

    # 1-2. tokenizer and token shards (both cached; rank 0 builds them, the others wait)
    if d.main:
        if resume_from is None and (out / "ckpt").exists():
            log(f"out_dir: starting fresh in {out} (old checkpoints removed; --resume=auto continues instead)")
            shutil.rmtree(out / "ckpt")
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("ckpt/.tmp_step_*"):    # a checkpoint a crash left half-written
            shutil.rmtree(stale, ignore_errors=True)
        tok_dir = prepare_tokenizer(cfg, log)
    barrier(d)
    tok_dir = prepare_tokenizer(cfg, lambda m: None) if not d.main else tok_dir
    enc, tok_hash = bpe.load(tok_dir), bpe.tokenizer_hash(tok_dir)
    shard_dir = Path("cache") / f"shards-{tok_hash[:12]}-{Path(cfg.data_dir).name}"
    if d.main:
        data.prepare(cfg.data_dir, enc, tok_hash, shard_dir, cfg.val_frac, log=log)
        if (out / "tokenizer").resolve() != tok_dir.resolve():
            shutil.rmtree(out / "tokenizer", ignore_errors=True)
            shutil.copytree(tok_dir, out / "tokenizer")
    barrier(d)
    manifest = json.loads((shard_dir / "manifest.json").read_text())

    # 3. model, optimizer, curriculum
    overrides = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd") if getattr(cfg, k)}
    mcfg = preset(cfg.preset, **overrides, block_size=cfg.block_size, vocab_size=enc.n_vocab, dropout=cfg.dropout)
    if cfg.init_from:                                 # continue from another run's weights: its shape wins
        init = load_model(cfg.init_from)
        if init.cfg.block_size < cfg.block_size:
            raise ValueError(f"block_size={cfg.block_size} exceeds init_from's context ({init.cfg.block_size})")
        mcfg = dataclasses.replace(init.cfg, dropout=cfg.dropout)
        log(f"init_from: weights of {cfg.init_from} ({mcfg.n_layer}L/{mcfg.n_embd}d), fresh optimizer and data order")
    model = PolyLM(mcfg).to(device)
    if cfg.init_from:
        model.load_state_dict(init.state_dict())
        del init
    n_params = model.num_params()
    flops_per_token = model.flops_per_token(cfg.block_size)
    wrapped = wrap_model(model, cfg, d, device, dtype)
    optimizer = make_optimizer(model, cfg, device)
    rows_per_step = cfg.batch_size * cfg.grad_accum * d.world_size
    stages = make_schedule(cfg.curriculum, manifest, cfg.stage2_frac, cfg.curriculum_stages or None)
    total_rows = cfg.max_iters * rows_per_step
    mixer = Mixer(data.load_shards(shard_dir, manifest, "train"), stages, total_rows, cfg.block_size,
                  rank=d.rank, world_size=d.world_size, ramp_rows=round(cfg.curriculum_ramp * total_rows),
                  repeat_warn=cfg.repeat_warn, log=log)
    if d.main:
        (out / "config.json").write_text(json.dumps({"train": dataclasses.asdict(cfg),
                                                     "model": dataclasses.asdict(mcfg), "tokenizer_hash": tok_hash,
                                                     "world_size": d.world_size}, indent=1))
    step = 0
    if resume_from is not None:
        step = load_training_state(resume_from, wrapped, optimizer, mixer, d)
        log(f"resumed from {resume_from} at step {step}")
    elif d.main:
        metrics.unlink(missing_ok=True)

    val_streams = {lang: data.read_shard(shard_dir / e["val"]["file"], tok_hash)
                   for lang, e in manifest["sources"].items() if e["kind"] == "mono" and not e.get("hq")}
    byte_lens = evaluate.token_byte_lengths(enc)
    tokens_per_step = rows_per_step * cfg.block_size
    peak = peak_flops(device, dtype)
    peak = peak * d.world_size if peak else None
    log(f"model: {cfg.preset} {mcfg.n_layer}L/{mcfg.n_embd}d/{mcfg.n_head}h, {n_params:,} parameters, "
        f"vocab {mcfg.vocab_size:,}; {tokens_per_step:,} tokens/step, {cfg.max_iters} steps"
        + (f", {cfg.parallel} over {d.world_size} processes" if d.world_size > 1 else ""))
    log("curriculum: " + " then ".join(f"{s.name} for {s.frac:.0%} of tokens" for s in stages))

    def run_eval(step):
        with full_params(wrapped):
            res = evaluate.bits_per_byte(model, val_streams, byte_lens, cfg.block_size, cfg.batch_size, device,
                                         autocast, max_tokens=cfg.eval_tokens or None)
        rec = {"step": step, "val_loss": {k: v["val_loss"] for k, v in res.items()},
               "val_bpb": {k: v["val_bpb"] for k, v in res.items()}}
        if d.main:
            write_metrics(metrics, rec)
        log(f"step {step}: val bpb mean {np.mean(list(rec['val_bpb'].values())):.3f} over {len(res)} languages")
        return res

    # 4. the loop
    model.train()
    stage = stages[mixer.stage_index()].name
    log(f"curriculum: {stage}")
    t_last, mix, losses, res, bad_in_row, skipped = time.time(), {}, [], None, 0, 0
    target_last = dict(mixer.target)
    end = min(cfg.max_iters, cfg.stop_at_step or cfg.max_iters)
    bar = tqdm(total=cfg.max_iters, initial=step, desc="train", unit="step", dynamic_ncols=True, disable=not d.main)
    while step < end:
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            x, y, names = mixer.next_batch(cfg.batch_size)
            for n in names:
                mix[n] = mix.get(n, 0) + 1
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            set_grad_sync(wrapped, micro == cfg.grad_accum - 1)
            with autocast:
                loss = wrapped(x, y) / cfg.grad_accum
            loss.backward()
            step_loss += loss.item()
        step_loss = mean_over_ranks(step_loss, d)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        step += 1
        if math.isfinite(step_loss) and math.isfinite(norm):
            optimizer.step()
            bad_in_row = 0
            losses.append(step_loss)
        else:                                          # a loss spike / overflow: skip this update
            skipped += 1
            bad_in_row += 1
            log(f"step {step}: non-finite loss {step_loss} / grad norm {norm}: update skipped ({bad_in_row} in a row)")
            if d.main:
                write_metrics(metrics, {"step": step, "event": "skip", "loss": None, "grad_norm": None})
            if bad_in_row >= cfg.max_bad_steps:
                last = latest_checkpoint(out)
                if last is None:
                    raise RuntimeError(f"{bad_in_row} non-finite steps in a row and no checkpoint to roll back to")
                load_training_state(last, wrapped, optimizer, mixer, d, restore_data=False)
                log(f"step {step}: rolled back weights to {last.name}; continuing with the batches after the bad ones")
                if d.main:
                    write_metrics(metrics, {"step": step, "event": "rollback", "to": last.name})
                bad_in_row = 0
        optimizer.zero_grad(set_to_none=True)
        bar.update(1)
        new_stage = stages[mixer.stage_index()].name
        if new_stage != stage:
            stage = new_stage
            log(f"step {step}: curriculum switches to {stage}")
            if d.main:
                write_metrics(metrics, {"step": step, "event": "stage", "stage": stage})
        if (step % cfg.log_interval == 0 or step == end) and losses:
            dt = time.time() - t_last
            tps = len(losses) * tokens_per_step / dt
            total = sum(mix.values())                                                    # this rank's rows
            global_rows = sum(mixer.target.values()) - sum(target_last.values())      # all ranks' rows
            rec = {"step": step, "loss": float(np.mean(losses)), "lr": lr, "grad_norm": norm,
                   "tok_per_s": tps, "mfu": tps * flops_per_token / peak if peak else None,
                   "stage": stages[mixer.stage_index(mixer.rows_done - 1)].name, "skipped": skipped,
                   "mix": {k: v / total for k, v in sorted(mix.items())},
                   "target": {k: (v - target_last[k]) / global_rows for k, v in sorted(mixer.target.items())},
                   "epochs": {k: v for k, v in mixer.epoch.items() if v}}
            if d.main:
                write_metrics(metrics, rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.1e}", tok_s=f"{tps:,.0f}")
            t_last, mix, losses, target_last = time.time(), {}, [], dict(mixer.target)
        if step % cfg.eval_interval == 0 or step == end:
            res = run_eval(step)
            save_checkpoint(out, step, wrapped, optimizer, mixer, d, cfg)
            t_last = time.time()
    bar.close()
    if step < cfg.max_iters:
        log(f"stopped at step {step} of {cfg.max_iters} (stop_at_step); continue with --resume=auto")
        return res

    # 6. what a person wants to see at the end
    if res is None:            # resumed a finished run: nothing was trained, evaluate once for the table
        res = run_eval(step)
    if cfg.samples:
        log("\nsamples (temperature 0.8, top-k 50):")
        g = torch.Generator(device=device).manual_seed(cfg.seed)
        for lang, prompt in PROMPTS.items():
            ids = torch.tensor([enc.encode_ordinary(prompt)], device=device)
            with autocast, full_params(wrapped):
                outp = model.generate(ids, 40, temperature=0.8, top_k=50, stop_ids=(enc.eot_token,), generator=g)
            text = enc.decode([t for t in outp[0].tolist() if t != enc.eot_token]).replace("\n", " ⏎ ")
            log(f"  [{lang}] {text}")
    if d.main:
        print(f"\nper-language validation after {step} steps ({cfg.eval_tokens or 'all'} tokens per language):")
        print(evaluate.format_table(res))
        plot_run(out)
        print(f"\nrun dir: {out}/ (config.json, tokenizer/, ckpt/, metrics.jsonl, loss.png)")
    return res


def main(argv=None):
    return run_cli(train, TrainConfig, argv, prog="train.py")


if __name__ == "__main__":
    main()
