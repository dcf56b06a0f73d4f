"""Training-step throughput on CPU: our model and step vs nanoGPT's, and what each speed lever gives (PolyLM paper §4
"Pre-training": the same AdamW(0.9, 0.95) step, here on a CPU; issue #7).

    python bench/bench_step.py --nanogpt=/tmp/nanoGPT [--shapes=toy,100m] [--rounds=5] [--only=...]
    python bench/bench_step.py --shapes=toy,100m --only=fused --rounds=9     # fused AdamW vs for-each, nothing else
    python bench/bench_step.py --optimizer=True --rounds=15                  # AdamW.step() alone: fused vs for-each
    python bench/bench_step.py --help                                        # every setting

nanoGPT is the baseline, not a dependency: `git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT` (its model.py
is imported). Without --nanogpt the nanoGPT rows are left out and the per-lever rows of ours still run.

What runs. Every "runner" is a model + AdamW(0.9, 0.95, wd 0.1) + one training step exactly like its train loop:
forward with targets, backward, clip the grad norm to 1.0, optimizer step, zero_grad(set_to_none=True).
  nanoGPT eager / compile   nanoGPT's own GPT (its model.py, bias=True, dropout 0) and configure_optimizers, fp32
                            (nanoGPT's CPU default: its train.py runs CPU without autocast), default allocator;
                            "compile" is its best CPU setting.
  ours: lever by lever      from plain eager PyTorch (full logits + F.cross_entropy, for-each AdamW) adding, one at a
                            time, the fused chunked linear + cross-entropy (kernels/) and the fused AdamW, then the
                            per-block torch.compile of --compile=True. "1 thread" repeats that with
                            torch.set_num_threads(1).
  ours: + bf16 autocast     train.py's CPU step (fused CE, runtime.FUSED_ADAMW_ON_CPU, no compile) under bf16
                            autocast: the row a user gets where dtype=auto picks bf16. Added when
                            runtime.resolve_dtype("auto", cpu) -- train.py's own decision, a CPU-flag check plus a
                            matmul probe -- picks bf16 (--bf16=auto), or forced with --bf16=True.
All runners start from the same weights (ours, copied into nanoGPT's GPT: same architecture, same exact-erf GeLU) and
see the same batches of real tokens (data/sample, toy tokenizer), so the loss curves must agree; the table shows the
largest difference of every step's loss against nanoGPT compile.

Timing. Every runner is its own worker process (`--worker`: no runner inherits another's allocator state, caches or
compiled code), built and warmed up (compiled) first; then the parent times them in interleaved rounds, one worker at
a time (the others wait, idle, on their stdin), each doing --steps steps per round, so every runner sees the same
machine load. Figures: tokens/s = the median over rounds, and its spread (min-max over rounds); MFU against the
machine's GEMM rate in the row's dtype (runtime.peak_flops: a 1024^3 matmul probe, taken after every round; the best
one counts, since on a loaded machine a single probe can land in a slow moment and give MFU > 100%), with
model.flops_per_token (6N + attention). When both AdamW arms run (for-each and fused, everything else equal) the
script also prints their paired per-round ratio (median, min-max, rounds won), one of the figures
runtime.FUSED_ADAMW_ON_CPU is decided on (with --optimizer=True).

--optimizer=True times only AdamW.step() (the one thing the two AdamW arms differ in, a few % of a CPU step, so a
difference between them can drown in whole-step noise on a busy machine): for each shape, two copies of the model with
the same weights and the same fixed gradients, one torch.optim.AdamW(fused=False) (for-each) and one (fused=True),
stepped alternately (ABBA order) in --rounds rounds of --steps steps. Figures: wall and process CPU ms per step
(median, min-max), the paired per-round ratio for-each/fused (> 1: fused faster) and the largest parameter
difference between the arms after all steps (the same update to float rounding).

bf16. The script makes train.py's decision (runtime.resolve_dtype("auto", cpu)) and prints it with its reason. Where
it keeps fp32 (no AVX512-BF16/AMX: bf16 is emulated and tens of times slower) the script trains fp32 only and prints
the bf16/fp32 matmul probe figures instead of a bf16 row; where it picks bf16 the bf16 autocast row is added next to
nanoGPT's fp32 CPU default, with its MFU against the bf16 probe.
"""
import contextlib
import dataclasses
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import namedtuple
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAPES = {   # name: (model overrides, batch size, block size)
    "toy": (dict(n_layer=4, n_head=4, n_embd=256, vocab_size=8192), 16, 256),
    "100m": (dict(n_layer=12, n_head=12, n_embd=768, vocab_size=32768), 2, 1024),
}
# fused_adamw None = runtime.FUSED_ADAMW_ON_CPU (what train.py uses on CPU); threads None = torch's default
Runner = namedtuple("Runner", "fused_ce fused_adamw compiled threads bf16")
NANO_EAGER, NANO_COMPILE = "nanoGPT eager (fp32)", "nanoGPT compile=True (fp32)"
FOREACH, FUSED = "ours: + fused linear+CE (kernels/), for-each AdamW", "ours: + fused AdamW"
BF16 = "ours: train.py's CPU step + bf16 autocast"
RUNNERS = {
    NANO_EAGER: None,
    NANO_COMPILE: None,
    "ours: plain eager (full logits, for-each AdamW)": Runner(False, False, False, None, False),
    FOREACH: Runner(True, False, False, None, False),
    FUSED: Runner(True, True, False, None, False),
    "ours: + compiled blocks (--compile=True)": Runner(True, True, True, None, False),
    "ours: same, 1 thread": Runner(True, True, True, 1, False),
    BF16: Runner(True, None, False, None, True),
}


@dataclasses.dataclass
class StepBenchConfig:
    nanogpt: str = ""                   # a nanoGPT checkout (its model.py is imported); '' = our rows only
    shapes: str = "toy,100m"            # shapes to run, comma-separated: toy (5.3M params) | 100m (111M)
    warmup: int = 3                     # untimed steps per runner before the rounds (compilation happens here)
    steps: int = 2                      # steps per runner per round (a round's time = their mean)
    rounds: int = 5                     # interleaved timed rounds per runner (tokens/s = the median)
    lr: float = 1e-3                    # AdamW learning rate of every runner
    only: str = ""                      # keep runners whose name contains one of these comma-separated parts
                                        # (nanoGPT compile stays as the baseline); e.g. fused = the two AdamW arms
    bf16: str = "auto"                  # bf16 autocast row: auto (where train.py's dtype=auto picks it) | True | False
    optimizer: bool = False             # time only AdamW.step(), fused vs for-each (see the docstring), not whole steps
    worker: str = ""                    # (internal) run this one runner in this process, commands on stdin
    shape: str = ""                     # (internal) the worker's shape
    batches: str = ""                   # (internal) the worker's .npz of batches


# ----------------------------------------------------------------------------- a worker: one runner, one process

def worker(args):
    name, shape = args.worker, args.shape
    spec = RUNNERS[name]
    import torch
    import runtime
    from model import PolyLM, preset
    if spec and spec.threads:
        torch.set_num_threads(spec.threads)
    overrides, _, block = SHAPES[shape]
    cfg = preset("toy", **overrides, block_size=block)
    torch.manual_seed(0)
    init = PolyLM(cfg).state_dict()                       # the same initial weights in every worker
    if spec is None:
        nanogpt = load_nanogpt(args.nanogpt)
        ncfg = nanogpt.GPTConfig(block_size=block, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer,
                                 n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0, bias=True)
        with contextlib.redirect_stdout(sys.stderr):
            model = nanogpt.GPT(ncfg)
            model.load_state_dict({"transformer." + k: v for k, v in init.items()}
                                  | {"lm_head.weight": init["wte.weight"]})
            opt = model.configure_optimizers(0.1, args.lr, (0.9, 0.95), "cpu")
        fm = torch.compile(model) if name == NANO_COMPILE else model

        def forward(x, y):
            return fm(x, y)[1]
    else:
        fused_adam = runtime.FUSED_ADAMW_ON_CPU if spec.fused_adamw is None else spec.fused_adamw
        model = PolyLM(cfg)
        model.load_state_dict(init)
        if spec.compiled:
            model.compile_blocks()
        opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=args.lr, betas=(0.9, 0.95), fused=fused_adam)
        kernel = "chunked" if spec.fused_ce else "reference"

        def forward(x, y):
            with torch.autocast("cpu", torch.bfloat16) if spec.bf16 else contextlib.nullcontext():
                return model(x, y, kernel=kernel)
    batches = np.load(args.batches)
    xs, ys = torch.from_numpy(batches["x"]), torch.from_numpy(batches["y"])

    def run(a, b):
        times, losses = [], []
        for i in range(a, b):
            t = time.perf_counter()
            loss = forward(xs[i], ys[i])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            times.append(time.perf_counter() - t)
        return {"times": times, "losses": losses}
    for line in sys.stdin:                                 # the parent's commands: "a b" -> run batches a..b-1
        a, b = map(int, line.split())
        print(json.dumps(run(a, b)), flush=True)


def load_nanogpt(path):
    p = Path(path) / "model.py"
    if not p.exists():
        raise FileNotFoundError(f"nanogpt={path}: no model.py there; git clone https://github.com/karpathy/nanoGPT "
                                f"first (or leave --nanogpt empty for our rows only)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- the parent

def make_batches(path, n, batch, block, seed=0):
    """n (x, y) batches of real tokens (the toy run's tokenizer on data/sample, cached by train.py) -> an .npz."""
    import bpe
    import corpus
    import shards
    tok = ROOT / "cache" / "tokenizer-8192-sample"                    # what `python train.py` trains and caches
    if not (tok / "tokenizer.json").exists():
        bpe.train_from_files(sorted(str(p) for p in (ROOT / "data" / "sample" / "mono").glob("*.txt")), 8192, str(tok))
    enc = bpe.load(tok)
    toks = np.concatenate([shards.tokenize_documents(enc, corpus.read_documents(p))
                           for p in sorted((ROOT / "data" / "sample" / "mono").glob("*.txt"))])
    ix = np.random.default_rng(seed).integers(0, len(toks) - block - 1, (n, batch))
    np.savez(path, x=np.stack([[toks[i:i + block] for i in row] for row in ix]),
             y=np.stack([[toks[i + 1:i + 1 + block] for i in row] for row in ix]))


class Worker:
    def __init__(self, name, shape, args, batches):
        cmd = [sys.executable, __file__, f"--worker={name}", f"--shape={shape}", f"--batches={batches}",
               f"--nanogpt={args.nanogpt}", f"--lr={args.lr}"]
        self.name, self.times, self.losses = name, [], []
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=subprocess.DEVNULL)

    def run(self, a, b):
        self.proc.stdin.write(f"{a} {b}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name!r} died (run it alone with --worker=... to see why)")
        out = json.loads(line)
        self.losses += out["losses"]
        return out["times"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def dtype_decision():
    """train.py's dtype for this CPU (runtime.resolve_dtype("auto", cpu)) with its reason, and the 512^3 matmul probe
    figures (runtime.matmul_rate, the probe resolve_dtype uses) in GFLOP/s: (dtype, reason, fp32, bf16)."""
    import torch
    import runtime
    dtype, why = runtime.resolve_dtype("auto", torch.device("cpu"))
    fp32, bf16 = (runtime.matmul_rate(dt, n=512, reps=4) / 1e9 for dt in (torch.float32, torch.bfloat16))
    return dtype, why, fp32, bf16


def want_bf16_row(setting, dtype):
    import torch
    s = str(setting).strip().lower()
    if s == "auto":
        return dtype == torch.bfloat16
    if s in ("true", "false"):
        return s == "true"
    raise ValueError(f"bf16={setting!r}: choose auto, True or False")


def select_runners(args, with_bf16):
    names = [n for n in RUNNERS if (args.nanogpt or RUNNERS[n] is not None) and (n != BF16 or with_bf16)
             and (not args.only or n == NANO_COMPILE or any(s in n for s in args.only.split(",")))]
    return [n for n in names if args.nanogpt or n != NANO_COMPILE]


def paired_ratio(a, b):
    """Per-round ratios time(a) / time(b) over interleaved rounds (> 1: b faster): (median, min, max, b's wins, n)."""
    r = [ta / tb for ta, tb in zip(a.times, b.times)]
    return statistics.median(r), min(r), max(r), sum(x > 1 for x in r), len(r)


def run_shape(shape, args, decision):
    import torch
    import runtime
    from config import cpu_name
    from model import PolyLM, preset
    overrides, batch, block = SHAPES[shape]
    cfg = preset("toy", **overrides, block_size=block)
    dtype, why, p32, p16 = decision
    names = select_runners(args, want_bf16_row(args.bf16, dtype))
    tokens = batch * block
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "batches.npz")
        make_batches(path, args.warmup + args.rounds * args.steps, batch, block)
        print(f"\n## {shape}: {cfg.n_layer}L/{cfg.n_embd}d/{cfg.n_head}h, vocab {cfg.vocab_size:,}, "
              f"{PolyLM(cfg).num_params():,} parameters, batch {batch} x {block} = {tokens:,} tokens/step")
        print(f"machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads; {args.rounds} "
              f"interleaved rounds x {args.steps} step(s) per runner after {args.warmup} warm-up", flush=True)
        workers = [Worker(n, shape, args, path) for n in names]
        probes = {torch.float32: []} | ({torch.bfloat16: []} if BF16 in names else {})
        try:
            for w in workers:                              # warm-up (compilation), one worker at a time
                t = time.perf_counter()
                w.run(0, args.warmup)
                print(f"  warm-up {w.name}: {time.perf_counter() - t:.1f}s", flush=True)
            for k in range(args.rounds):                   # interleaved rounds: the same load for every runner
                a = args.warmup + k * args.steps
                for w in workers:
                    w.times.append(statistics.mean(w.run(a, a + args.steps)))
                for dt, rates in probes.items():           # the GEMM probe too, every round (workers idle)
                    rates.append(runtime.peak_flops(torch.device("cpu"), dt))
        finally:
            for w in workers:
                w.close()
    peak = {dt: max(rates) for dt, rates in probes.items()}     # the best machine state seen over the rounds
    flops = PolyLM(cfg).flops_per_token(block)
    base = next((w for w in workers if w.name == NANO_COMPILE), None)
    print(f"\nGEMM peak (1024^3 matmul probe, the best of one per round; median "
          f"{statistics.median(probes[torch.float32]) / 1e9:.1f}): {peak[torch.float32] / 1e9:.1f} GFLOP/s fp32"
          + (f", {peak[torch.bfloat16] / 1e9:.1f} bf16" if torch.bfloat16 in peak else "")
          + f"; {flops / 1e6:.1f} MFLOP per token\n")
    print("| setting | tokens/s (median) | spread (min-max over rounds) | vs nanoGPT compile | MFU vs GEMM peak | "
          "max \\|loss - nanoGPT's\\| |")
    print("|---|---:|---:|---:|---:|---:|")
    for w in workers:
        tps = tokens / statistics.median(w.times)
        lo, hi = tokens / max(w.times), tokens / min(w.times)
        rel = f"{tps / (tokens / statistics.median(base.times)):.2f}x" if base else "–"
        diff = f"{max(abs(a - b) for a, b in zip(w.losses, base.losses)):.1e}" if base else "–"
        p = peak[torch.bfloat16 if w.name == BF16 else torch.float32]
        print(f"| {w.name} | {tps:,.0f} | {lo:,.0f}-{hi:,.0f} | {rel} | {tps * flops / p:.0%} | {diff} |")
    print(f"\nlosses of the first {len(workers[-1].losses)} steps ({workers[-1].name}): "
          + " ".join(f"{v:.3f}" for v in workers[-1].losses))
    arms = {w.name: w for w in workers}
    if FOREACH in arms and FUSED in arms:
        med, lo, hi, won, n = paired_ratio(arms[FOREACH], arms[FUSED])
        print(f"fused AdamW vs for-each AdamW (all else equal), paired over {n} interleaved rounds: "
              f"{med:.3f}x the tokens/s (median; min {lo:.3f}x, max {hi:.3f}x), faster in {won} of {n} rounds; "
              f"runtime.FUSED_ADAMW_ON_CPU = {runtime.FUSED_ADAMW_ON_CPU}")
    default = FUSED if runtime.FUSED_ADAMW_ON_CPU else FOREACH
    if dtype == torch.bfloat16:
        default = BF16
    print(f"train.py's CPU step on this machine (dtype=auto, compile=auto): {default!r}")
    return workers


def bench_optimizer(shape, args):
    """AdamW.step() alone, for-each vs fused, on the shape's parameters with fixed gradients (same process, ABBA)."""
    import torch
    from config import cpu_name
    from model import PolyLM, preset
    overrides, _, block = SHAPES[shape]
    cfg = preset("toy", **overrides, block_size=block)
    torch.manual_seed(0)
    base = PolyLM(cfg)
    grads = [torch.randn_like(p) * 1e-3 for p in base.parameters()]
    arms = {}
    for name, fused in (("for-each AdamW", False), ("fused AdamW", True)):
        m = PolyLM(cfg)
        m.load_state_dict(base.state_dict())
        for p, g in zip(m.parameters(), grads):
            p.grad = g.clone()
        arms[name] = {"model": m, "opt": torch.optim.AdamW(m.optimizer_groups(0.1), lr=args.lr, betas=(0.9, 0.95),
                                                            fused=fused), "wall": [], "cpu": []}
    n = sum(p.numel() for p in base.parameters())
    print(f"\n## {shape}: AdamW.step() alone on {n:,} parameters ({cfg.n_layer}L/{cfg.n_embd}d, vocab "
          f"{cfg.vocab_size:,}); machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.rounds} rounds x {args.steps} step(s) per arm, ABBA order, after {args.warmup} warm-up", flush=True)
    for a in arms.values():
        for _ in range(args.warmup):
            a["opt"].step()
    order = list(arms)
    for k in range(args.rounds):
        for name in (order if k % 2 == 0 else order[::-1]):
            a = arms[name]
            t, c = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                a["opt"].step()
            a["wall"].append((time.perf_counter() - t) / args.steps)
            a["cpu"].append((time.process_time() - c) / args.steps)
    diff = max((p - q).abs().max().item() for p, q in zip(*(a["model"].parameters() for a in arms.values())))
    print("| arm | wall ms/step (median) | spread (min-max) | process CPU ms/step (median) | spread (min-max) |")
    print("|---|---:|---:|---:|---:|")
    for name, a in arms.items():
        w, c = [1e3 * v for v in a["wall"]], [1e3 * v for v in a["cpu"]]
        print(f"| {name} | {statistics.median(w):.1f} | {min(w):.1f}-{max(w):.1f} | {statistics.median(c):.1f} | "
              f"{min(c):.1f}-{max(c):.1f} |")
    fe, fu = arms["for-each AdamW"], arms["fused AdamW"]
    for what in ("wall", "cpu"):
        r = [x / y for x, y in zip(fe[what], fu[what])]
        print(f"for-each / fused, {what} time, paired over {len(r)} rounds: {statistics.median(r):.3f}x (median; min "
              f"{min(r):.3f}x, max {max(r):.3f}x; > 1 = fused faster), fused faster in {sum(x > 1 for x in r)} of "
              f"{len(r)}")
    print(f"largest parameter difference between the arms after {args.warmup + args.rounds * args.steps} steps: "
          f"{diff:.1e}")
    return arms


def print_dtype_decision(decision):
    import torch
    dtype, why, fp32, bf16 = decision
    probe = f"512^3 matmul probe {bf16:.1f} GFLOP/s bf16 vs {fp32:.1f} fp32"
    if dtype == torch.bfloat16:
        print(f"dtype: train.py's dtype=auto picks bf16 on this CPU ({why}); {probe} ({bf16 / fp32:.1f}x): the bf16 "
              f"autocast row is the one a user gets, nanoGPT's rows are fp32 (its CPU default)")
    else:
        slower = f"{fp32 / bf16:.0f}x slower" if bf16 < fp32 else f"{bf16 / fp32:.2f}x the fp32 rate, not enough"
        print(f"dtype: no native bf16 on this CPU: train.py's dtype=auto keeps fp32 ({why}); {probe} ({slower}), "
              f"so only fp32 is timed")


def run(args):
    for s in args.shapes.split(","):
        if s not in SHAPES:
            raise ValueError(f"shapes: unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    for key in ("steps", "rounds"):
        if getattr(args, key) < 1:
            raise ValueError(f"{key}={getattr(args, key)} must be >= 1")
    if args.worker:
        if args.worker not in RUNNERS:
            raise ValueError(f"worker={args.worker!r} is not a runner")
        return worker(args)
    want_bf16_row(args.bf16, None)                         # a bad setting fails before any work
    if args.optimizer:
        return {shape: bench_optimizer(shape, args) for shape in args.shapes.split(",")}
    if args.nanogpt:
        load_nanogpt(args.nanogpt)                         # fail early, with one line, on a wrong path
    decision = dtype_decision()
    print_dtype_decision(decision)
    return {shape: run_shape(shape, args, decision) for shape in args.shapes.split(",")}


def main(argv=None):
    from config import run_cli
    return run_cli(run, StepBenchConfig, argv, prog="bench/bench_step.py")


if __name__ == "__main__":
    main()
