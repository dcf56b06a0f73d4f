"""Training-step throughput on CPU: our model and step vs nanoGPT's, and what each speed lever gives (issue #7).

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT           # the baseline (bench only, not a dependency)
    python bench/bench_step.py --nanogpt /tmp/nanoGPT [--shapes toy,100m] [--rounds 5]

What runs. Every "runner" is a model + AdamW(0.9, 0.95, wd 0.1) + one training step exactly like its train loop:
forward with targets, backward, clip the grad norm to 1.0, optimizer step, zero_grad(set_to_none=True).
  nanoGPT eager / compile   nanoGPT's own GPT (its model.py, bias=True, dropout 0) and configure_optimizers, fp32
                            (its train.py runs CPU in fp32); "compile" is its best CPU setting, torch.compile(model).
  ours: lever by lever      from plain eager PyTorch (full logits + F.cross_entropy, for-each AdamW) adding, one at a
                            time, the fused chunked linear + cross-entropy (kernels/), the fused AdamW, and the
                            per-block torch.compile that train.py's --compile=True applies; the last row is train.py's
                            own setting. "1 thread" repeats the best setting with torch.set_num_threads(1).
All runners start from the same weights (ours, copied into nanoGPT's GPT: same architecture, same exact-erf GeLU) and
see the same batches of real tokens (data/sample, toy tokenizer), so the loss curves must agree; the script prints the
largest difference of the first steps' losses against nanoGPT compile.

Timing: runners are built and warmed up (compiled) first, then timed in interleaved rounds (each runner does
--steps steps per round); tokens/s is the median over --rounds rounds, so all configurations see the same machine
load. MFU is against the machine's measured fp32 GEMM rate (train.peak_flops: a 1024^3 matmul probe), with the
FLOPs per token of model.flops_per_token (6N + attention). bf16: on CPUs without native bf16 (AVX2 only) a bf16
matmul is emulated and tens of times slower, so instead of a training row the script prints the bf16/fp32 probe ratio
(train.resolve_dtype makes the same choice); on native-bf16 CPUs (--bf16) it adds an autocast row.
"""
import argparse
import contextlib
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train  # noqa: E402
from config import cpu_name  # noqa: E402
from kernels.compiled import maybe_compile  # noqa: E402
from model import PolyLM, preset  # noqa: E402

SHAPES = {   # name: (model overrides, batch size, block size)
    "toy": (dict(n_layer=4, n_head=4, n_embd=256, vocab_size=8192), 16, 256),
    "100m": (dict(n_layer=12, n_head=12, n_embd=768, vocab_size=32768), 2, 1024),
}


def load_nanogpt(path):
    p = Path(path) / "model.py"
    if not p.exists():
        raise SystemExit(f"--nanogpt {path}: no model.py there; git clone https://github.com/karpathy/nanoGPT first")
    spec = importlib.util.spec_from_file_location("nanogpt_model", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def batches(n, batch, block, seed=0):
    """n (x, y) batches of real tokens: the toy run's tokenizer on data/sample (cached by train.py)."""
    import bpe
    import data
    cfg = train.TrainConfig()
    tok = train.prepare_tokenizer(cfg, print)
    enc = bpe.load(tok)
    toks = np.concatenate([data.tokenize_documents(enc, data.read_documents(p))
                           for p in sorted((ROOT / "data" / "sample" / "mono").glob("*.txt"))])
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ix = rng.integers(0, len(toks) - block - 1, batch)
        x = np.stack([toks[i:i + block] for i in ix])
        y = np.stack([toks[i + 1:i + 1 + block] for i in ix])
        out.append((torch.from_numpy(x), torch.from_numpy(y)))
    return out


class Runner:
    """One model + optimizer + step function; step(x, y) -> loss (float)."""

    def __init__(self, name, model, optimizer, forward, threads=None):
        self.name, self.model, self.opt, self.forward, self.threads = name, model, optimizer, forward, threads
        self.times, self.losses = [], []

    def step(self, x, y):
        with _threads(self.threads):
            loss = self.forward(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return loss.item()


@contextlib.contextmanager
def _threads(n):
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def make_runners(shape, nanogpt, lr, bf16, only=()):
    overrides, _, block = SHAPES[shape]
    cfg = preset("toy", **overrides, block_size=block)
    torch.manual_seed(0)
    init = PolyLM(cfg).state_dict()
    runners = []

    def ours(name, fused_ce, fused_adam, compile_blocks, threads=None, autocast=False):
        m = PolyLM(cfg)
        m.load_state_dict(init)
        if compile_blocks:
            m.compile_blocks()
        opt = torch.optim.AdamW(m.optimizer_groups(0.1), lr=lr, betas=(0.9, 0.95), fused=fused_adam)
        kernel = "chunked" if fused_ce else "reference"

        def fwd(x, y):
            with torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext():
                return m(x, y, kernel=kernel)
        runners.append(Runner(name, m, opt, fwd, threads))

    if nanogpt is not None:
        for compiled in (False, True):
            ncfg = nanogpt.GPTConfig(block_size=block, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer,
                                     n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0, bias=True)
            with contextlib.redirect_stdout(None):
                m = nanogpt.GPT(ncfg)
                m.load_state_dict({"transformer." + k: v for k, v in init.items()} | {"lm_head.weight": init["wte.weight"]})
                opt = m.configure_optimizers(0.1, lr, (0.9, 0.95), "cpu")
            fm = torch.compile(m) if compiled else m
            runners.append(Runner(f"nanoGPT {'compile=True' if compiled else 'eager'}", m, opt,
                                  lambda x, y, fm=fm: fm(x, y)[1]))
    ours("ours: plain eager (full logits, for-each AdamW)", False, False, False)
    ours("ours: + fused linear+CE (kernels/)", True, False, False)
    ours("ours: + fused AdamW", True, True, False)
    ours("ours: + compiled blocks = train.py --compile=True", True, True, True)
    ours("ours: same, 1 thread", True, True, True, threads=1)
    if bf16:
        ours("ours: same + bf16 autocast", True, True, True, autocast=True)
    return cfg, [r for r in runners if not only or r.name == "nanoGPT compile=True" or any(s in r.name for s in only)]


def run_shape(shape, args, nanogpt):
    overrides, batch, block = SHAPES[shape]
    cfg, runners = make_runners(shape, nanogpt, args.lr, args.bf16, [x for x in args.only.split(",") if x])
    model = runners[-1].model
    tokens = batch * block
    n_steps = args.warmup + args.rounds * args.steps
    data = batches(n_steps, batch, block)
    print(f"\n## {shape}: {cfg.n_layer}L/{cfg.n_embd}d/{cfg.n_head}h, vocab {cfg.vocab_size:,}, "
          f"{model.num_params():,} parameters, batch {batch} x {block} = {tokens:,} tokens/step")
    print(f"machine: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for r in runners:                                      # warm-up: compilation happens here
        t = time.perf_counter()
        for x, y in data[:args.warmup]:
            r.losses.append(r.step(x, y))
        print(f"  warm-up {r.name}: {time.perf_counter() - t:.1f}s", flush=True)
    for k in range(args.rounds):                           # interleaved: same load for every runner
        batch_data = data[args.warmup + k * args.steps: args.warmup + (k + 1) * args.steps]
        for r in runners:
            t = time.perf_counter()
            for x, y in batch_data:
                r.losses.append(r.step(x, y))
            r.times.append((time.perf_counter() - t) / args.steps)
    peak = train.peak_flops(torch.device("cpu"), torch.float32)
    flops = model.flops_per_token(block)
    base = next((r for r in runners if r.name == "nanoGPT compile=True"), None)
    print(f"\nGEMM peak (fp32 1024^3 matmul probe): {peak / 1e9:.1f} GFLOP/s; {flops / 1e6:.1f} MFLOP per token\n")
    print("| setting | tokens/s (median) | vs nanoGPT compile | MFU vs GEMM peak | max |loss - nanoGPT's| |")
    print("|---|---:|---:|---:|---:|")
    for r in runners:
        tps = tokens / statistics.median(r.times)
        rel = f"{tps / (tokens / statistics.median(base.times)):.2f}x" if base else "–"
        diff = f"{max(abs(a - b) for a, b in zip(r.losses, base.losses)):.1e}" if base else "–"
        print(f"| {r.name} | {tps:,.0f} | {rel} | {tps * flops / peak:.0%} | {diff} |")
    print(f"\nlosses of the first {len(runners[-1].losses)} steps (last runner): "
          + " ".join(f"{v:.3f}" for v in runners[-1].losses))
    if not args.bf16:
        fp32, bf = (train._matmul_rate(dt, n=512, reps=4) for dt in (torch.float32, torch.bfloat16))
        print(f"bf16: not trained here (no native bf16 on this CPU, train.resolve_dtype keeps fp32): a 512^3 bf16 "
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
    args = ap.parse_args()
    nanogpt = load_nanogpt(args.nanogpt) if args.nanogpt else None
    for shape in args.shapes.split(","):
        run_shape(shape, args, nanogpt)


if __name__ == "__main__":
    main()
