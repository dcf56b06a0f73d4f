"""Training-step throughput on CPU: our model and step vs nanoGPT's, and what each speed lever gives (issue #7).

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT           # the baseline (bench only, not a dependency)
    python bench/bench_step.py --nanogpt /tmp/nanoGPT [--shapes toy,100m] [--rounds 5] [--only ...]

What runs. Every "runner" is a model + AdamW(0.9, 0.95, wd 0.1) + one training step exactly like its train loop:
forward with targets, backward, clip the grad norm to 1.0, optimizer step, zero_grad(set_to_none=True).
  nanoGPT eager / compile   nanoGPT's own GPT (its model.py, bias=True, dropout 0) and configure_optimizers, fp32
                            (its train.py runs CPU in fp32), default allocator; "compile" is its best CPU setting.
  ours: lever by lever      from plain eager PyTorch (full logits + F.cross_entropy, for-each AdamW) adding, one at a
                            time, the fused chunked linear + cross-entropy (kernels/) and the fused AdamW (together
                            train.py's CPU default), then the per-block torch.compile of --compile=True.
                            "1 thread" repeats the last one with torch.set_num_threads(1).
All runners start from the same weights (ours, copied into nanoGPT's GPT: same architecture, same exact-erf GeLU) and
see the same batches of real tokens (data/sample, toy tokenizer), so the loss curves must agree; the script prints the
largest difference of every step's loss against nanoGPT compile.

Timing. Every runner is its own worker process (`--worker`: no runner inherits another's allocator state, caches or
compiled code), built and warmed up (compiled) first; then the parent times them in interleaved rounds, one worker at a time (the others wait, idle, on
their stdin), each doing --steps steps per round. tokens/s is the median over --rounds rounds, so every runner sees
the same machine load. MFU is against the machine's fp32 GEMM rate (runtime.peak_flops: a 1024^3 matmul probe), with
model.flops_per_token (6N + attention). bf16: on CPUs without native bf16 (AVX2 only) a bf16 matmul is emulated and
tens of times slower, so instead of a training row the script prints the bf16/fp32 probe ratio (runtime.resolve_dtype
makes the same choice); on native-bf16 CPUs --bf16 adds an autocast row.
"""
import argparse
import contextlib
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAPES = {   # name: (model overrides, batch size, block size)
    "toy": (dict(n_layer=4, n_head=4, n_embd=256, vocab_size=8192), 16, 256),
    "100m": (dict(n_layer=12, n_head=12, n_embd=768, vocab_size=32768), 2, 1024),
}
# name: (fused CE, fused AdamW, compiled blocks, threads, bf16 autocast); None = nanoGPT
NANO_EAGER, NANO_COMPILE = "nanoGPT eager", "nanoGPT compile=True"
RUNNERS = {
    NANO_EAGER: None,
    NANO_COMPILE: None,
    "ours: plain eager (full logits, for-each AdamW)": (False, False, False, None, False),
    "ours: + fused linear+CE (kernels/)": (True, False, False, None, False),
    "ours: + fused AdamW = train.py's CPU default": (True, True, False, None, False),
    "ours: + compiled blocks (--compile=True)": (True, True, True, None, False),
    "ours: same, 1 thread": (True, True, True, 1, False),
    "ours: same, 2 threads + bf16 autocast": (True, True, True, None, True),
}


# ----------------------------------------------------------------------------- a worker: one runner, one process

def worker(args):
    name, shape = args.worker, args.shape
    spec = RUNNERS[name]
    import torch
    from model import PolyLM, preset
    if spec and spec[3]:
        torch.set_num_threads(spec[3])
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
            model.load_state_dict({"transformer." + k: v for k, v in init.items()} | {"lm_head.weight": init["wte.weight"]})
            opt = model.configure_optimizers(0.1, args.lr, (0.9, 0.95), "cpu")
        fm = torch.compile(model) if name == NANO_COMPILE else model

        def forward(x, y):
            return fm(x, y)[1]
    else:
        fused_ce, fused_adam, compiled, _, bf16 = spec
        model = PolyLM(cfg)
        model.load_state_dict(init)
        if compiled:
            model.compile_blocks()
        opt = torch.optim.AdamW(model.optimizer_groups(0.1), lr=args.lr, betas=(0.9, 0.95), fused=fused_adam)
        kernel = "chunked" if fused_ce else "reference"

        def forward(x, y):
            with torch.autocast("cpu", torch.bfloat16) if bf16 else contextlib.nullcontext():
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
        raise SystemExit(f"--nanogpt {path}: no model.py there; git clone https://github.com/karpathy/nanoGPT first")
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
        cmd = [sys.executable, __file__, "--worker", name, "--shape", shape, "--batches", batches,
               "--nanogpt", args.nanogpt, "--lr", str(args.lr)]
        self.name, self.times, self.losses = name, [], []
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=subprocess.DEVNULL)

    def run(self, a, b):
        self.proc.stdin.write(f"{a} {b}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.name!r} died (run it alone with --worker to see why)")
        out = json.loads(line)
        self.losses += out["losses"]
        return out["times"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def run_shape(shape, args):
    import torch
    import runtime
    from config import cpu_name
    from model import PolyLM, preset
    overrides, batch, block = SHAPES[shape]
    cfg = preset("toy", **overrides, block_size=block)
    names = [n for n in RUNNERS if (args.nanogpt or RUNNERS[n] is not None) and ("bf16" not in n or args.bf16)
             and (not args.only or n == NANO_COMPILE or any(s in n for s in args.only.split(",")))]
    tokens = batch * block
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "batches.npz")
        make_batches(path, args.warmup + args.rounds * args.steps, batch, block)
        print(f"\n## {shape}: {cfg.n_layer}L/{cfg.n_embd}d/{cfg.n_head}h, vocab {cfg.vocab_size:,}, "
              f"{PolyLM(cfg).num_params():,} parameters, batch {batch} x {block} = {tokens:,} tokens/step")
        print(f"machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
        workers = [Worker(n, shape, args, path) for n in names]
        for w in workers:                                  # warm-up (compilation), one worker at a time
            t = time.perf_counter()
            w.run(0, args.warmup)
            print(f"  warm-up {w.name}: {time.perf_counter() - t:.1f}s", flush=True)
        for k in range(args.rounds):                       # interleaved rounds: the same load for every runner
            a = args.warmup + k * args.steps
            for w in workers:
                w.times.append(statistics.mean(w.run(a, a + args.steps)))
        for w in workers:
            w.close()
    peak = runtime.peak_flops(torch.device("cpu"), torch.float32)
    flops = PolyLM(cfg).flops_per_token(block)
    base = next((w for w in workers if w.name == NANO_COMPILE), None)
    print(f"\nGEMM peak (fp32 1024^3 matmul probe): {peak / 1e9:.1f} GFLOP/s; {flops / 1e6:.1f} MFLOP per token\n")
    print("| setting | tokens/s (median) | vs nanoGPT compile | MFU vs GEMM peak | max \\|loss - nanoGPT's\\| |")
    print("|---|---:|---:|---:|---:|")
    for w in workers:
        tps = tokens / statistics.median(w.times)
        rel = f"{tps / (tokens / statistics.median(base.times)):.2f}x" if base else "–"
        diff = f"{max(abs(a - b) for a, b in zip(w.losses, base.losses)):.1e}" if base else "–"
        print(f"| {w.name} | {tps:,.0f} | {rel} | {tps * flops / peak:.0%} | {diff} |")
    print(f"\nlosses of the first {len(workers[-1].losses)} steps ({workers[-1].name}): "
          + " ".join(f"{v:.3f}" for v in workers[-1].losses))
    if not args.bf16:
        fp32, bf = (runtime.matmul_rate(dt, n=512, reps=4) for dt in (torch.float32, torch.bfloat16))
        print(f"bf16: not trained here (no native bf16 on this CPU, runtime.resolve_dtype keeps fp32): a 512^3 bf16 "
              f"matmul runs at {bf / 1e9:.1f} GFLOP/s vs {fp32 / 1e9:.1f} fp32 ({fp32 / bf:.0f}x slower)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nanogpt", default="", help="a nanoGPT checkout (its model.py is imported); empty: ours only")
    ap.add_argument("--shapes", default="toy,100m")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per runner (compilation)")
    ap.add_argument("--steps", type=int, default=2, help="steps per runner per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--only", default="", help="comma-separated parts of runner names to keep (nanoGPT compile stays)")
    ap.add_argument("--bf16", action="store_true", help="add a bf16 autocast row (only sensible with native bf16)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)   # internal: run one runner (see Worker)
    ap.add_argument("--shape", default="", help=argparse.SUPPRESS)
    ap.add_argument("--batches", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    for shape in args.shapes.split(","):
        run_shape(shape, args)


if __name__ == "__main__":
    main()
