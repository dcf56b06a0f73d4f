"""Generation speed: greedy tokens/s of model.generate with and without the KV cache (the same tokens either way),
the numbers of docs/BENCHMARKS.md (generation section). For the server under concurrent clients:
bench/bench_serve.py.

    python bench/bench_generate.py --ckpt out/toy --threads=1                 # batch 1
    python bench/bench_generate.py --ckpt out/toy --threads=1 --bench_batch=8 # batch 8
    python bench/bench_generate.py --ckpt out/toy --bench_runs=5              # torch's default threads

It loads the run dir (or, without a checkpoint, a random `toy` preset: speed does not depend on the weights), makes a
random prompt of --bench_prompt tokens, generates --bench_new new tokens greedily (no stop token), median of
--bench_runs runs after a warm-up, and checks that cached and uncached generation give identical tokens.
"""
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import runtime  # noqa: E402
from config import cpu_name, run_cli  # noqa: E402
from model import PolyLM, latest_checkpoint, load_model, preset  # noqa: E402


@dataclasses.dataclass
class GenerateBenchConfig:
    ckpt: str = "out/toy"               # run dir (a random toy-preset model when it has no checkpoint)
    device: str = "auto"                # auto | cpu | cuda
    threads: int = 0                    # torch CPU threads (0 = torch's default)
    bench_prompt: int = 16              # prompt tokens per sequence
    bench_new: int = 200                # new tokens per sequence
    bench_batch: int = 1                # sequences generated together
    bench_runs: int = 3                 # timed runs per setting (the median is reported)


def bench(cfg):
    """Greedy tokens/s with and without the KV cache (same tokens either way), median of cfg.bench_runs runs."""
    device = str(runtime.resolve_device(cfg.device))
    if latest_checkpoint(cfg.ckpt) is not None and (Path(cfg.ckpt) / "config.json").exists():
        model, what = load_model(cfg.ckpt, device=device), cfg.ckpt
    else:
        torch.manual_seed(0)
        model, what = PolyLM(preset("toy")).to(device).eval(), "toy preset, random weights (no checkpoint found)"
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.cfg.vocab_size, (cfg.bench_batch, cfg.bench_prompt), generator=g).to(device)
    n = cfg.bench_new
    print(f"model: {what}; {model.num_params():,} parameters, context {model.cfg.block_size}")
    print(f"device: {device} ({cpu_name() if device == 'cpu' else torch.cuda.get_device_name()}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"batch {cfg.bench_batch}, prompt {cfg.bench_prompt} tokens, {n} new tokens, greedy, "
          f"median of {cfg.bench_runs} runs")
    model.generate(x, 8, temperature=0)                           # warm-up
    model.generate(x, 8, temperature=0, use_cache=False)
    results, outs = {}, {}
    for use_cache in (True, False):
        rates = []
        for _ in range(cfg.bench_runs):
            if device != "cpu":
                torch.cuda.synchronize()
            t = time.perf_counter()
            outs[use_cache] = model.generate(x, n, temperature=0, use_cache=use_cache)
            if device != "cpu":
                torch.cuda.synchronize()
            rates.append(cfg.bench_batch * n / (time.perf_counter() - t))
        results[use_cache] = (statistics.median(rates), rates)
    same = torch.equal(outs[True], outs[False])
    print("| KV cache | tokens/s (median) | runs |\n|---|---:|---|")
    for use_cache, (med, rates) in results.items():
        print(f"| {'yes' if use_cache else 'no'} | {med:,.1f} | {', '.join(f'{r:,.1f}' for r in rates)} |")
    print(f"speed-up {results[True][0] / results[False][0]:.2f}x; identical tokens: {same}")
    return results




def run(cfg):
    for key in ("bench_prompt", "bench_new", "bench_batch", "bench_runs"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)}: must be >= 1")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return bench(cfg)


def main(argv=None):
    return run_cli(run, GenerateBenchConfig, argv, prog="bench/bench_generate.py")


if __name__ == "__main__":
    main()
