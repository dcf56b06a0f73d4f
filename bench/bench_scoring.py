"""Benchmark: log-likelihood scoring speed of evaluate.py's multiple-choice tasks (PolyLM paper §5: XCOPA, XWinograd,
XNLI, PAWS-X), naive (one forward per choice) vs batched (rows) vs batched with the shared context (tree), in
questions ("items") per second on a checkpoint. Numbers for docs/BENCHMARKS.md (evaluate section).

    python bench/bench_scoring.py --ckpt out/toy --tasks xcopa,xwinograd --limit 100 --runs 3
    python bench/bench_scoring.py --help

Every scorer scores the same requests (lm-eval-harness templates, 0-shot); the log-likelihoods are checked to agree
(to 1e-3 nats) before any number is printed. Runs are interleaved (naive, rows, tree, naive, ...) so that a busy
machine slows all three alike; the median of --runs is reported, wall and CPU seconds. The model runs where
runtime.choose puts it (--device/--dtype as in evaluate.py). A benchmark may import evaluate.py; tasks/ never does.
"""
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np                                            # noqa: E402
import torch                                                  # noqa: E402

import evaluate                                               # noqa: E402
import runtime                                                # noqa: E402
from config import cpu_name, run_cli                          # noqa: E402
from model import load_model, load_tokenizer                  # noqa: E402
from tasks import scoring as S                                # noqa: E402


@dataclasses.dataclass
class BenchConfig:
    ckpt: str = "out/toy"           # run dir
    tasks: str = "xcopa,xwinograd"  # multiple-choice tasks to score (bundled ones need no data)
    langs: str = ""                 # languages ('' = all of each task)
    limit: int = 100                # questions per language
    shots: int = 0                  # few-shot examples per prompt
    runs: int = 3                   # timed runs per scorer (the median is reported)
    threads: int = 0                # torch CPU threads (0 = default)
    batch_tokens: int = 8192        # tokens per forward of the batched scorers
    device: str = "auto"            # auto | cpu | cuda (runtime.choose, as evaluate.py)
    dtype: str = "auto"             # auto | float32 | bfloat16 (naive vs batched agree to 1e-3 only in float32)


def bench(cfg: BenchConfig):
    if cfg.runs < 1 or cfg.limit < 1:
        raise ValueError("runs and limit must be >= 1")
    unknown = [t for t in evaluate.split_list(cfg.tasks) if evaluate.TASKS.get(t, ("",))[0] != "understanding"]
    if unknown:
        raise ValueError(f"tasks: {', '.join(unknown)} are not multiple-choice tasks; choose from xcopa, xwinograd, "
                         f"xnli, pawsx")
    ecfg = evaluate.EvalConfig(ckpt=cfg.ckpt, langs=cfg.langs, limit=cfg.limit, shots=cfg.shots)
    evaluate.check_eval_config(ecfg)
    run = evaluate.check_run_dir(cfg.ckpt)
    device, dtype, why = runtime.choose(cfg.device, cfg.dtype)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = load_model(run, device)
    enc = load_tokenizer(run)
    ac = runtime.autocast(device, dtype)
    requests = []
    for task in evaluate.split_list(cfg.tasks):
        for lang in evaluate.task_langs(task, ecfg):
            docs, pool, pool_is_eval, _, _ = evaluate.load_mc(task, ecfg, lang)
            _, reqs = evaluate.mc_requests(task, enc, docs[:cfg.limit], pool, pool_is_eval, cfg.shots, 1234, lang)
            requests += reqs
    n_items, n_req = len(requests), sum(len(q) for q in requests)
    block = model.cfg.block_size
    flat = [r for q in requests for r in q]
    runs = {"naive": lambda: S.loglik_naive(model, flat, block, device, ac),
            "rows": lambda: S.loglik_batched(model, requests, block, device, ac, cfg.batch_tokens, tree=False),
            "tree": lambda: S.loglik_batched(model, requests, block, device, ac, cfg.batch_tokens, tree=True)}
    times, cpu, outs = {k: [] for k in runs}, {k: [] for k in runs}, {}
    for name in ("rows", "tree"):                  # warm-up (the naive run is long enough to need none)
        runs[name]()
    for _ in range(cfg.runs):                      # interleaved rounds
        for name, fn in runs.items():
            t, c = time.perf_counter(), time.process_time()
            outs[name] = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)     # CPU seconds of this process: less hurt by a busy machine
    for name in ("rows", "tree"):
        diff = np.abs(np.array(outs[name]) - np.array(outs["naive"])).max()
        if diff > (1e-3 if dtype == torch.float32 else 0.5):
            raise RuntimeError(f"{name} disagrees with naive by {diff:.2g} nats: a scoring bug, not a slow machine")
    tokens = sum(len(c) + len(x) for c, x in flat)
    print(f"checkpoint {cfg.ckpt}: {model.num_params():,} parameters, block {block}, vocab {model.cfg.vocab_size:,}")
    print(f"{n_items} questions ({cfg.tasks}, {cfg.limit} per language), {n_req} choices, {tokens:,} tokens naive")
    print(f"{device}, {str(dtype).removeprefix('torch.')} ({why}); CPU: {cpu_name()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {cfg.runs} interleaved rounds, median")
    print("\n| scorer | sequences run | wall s per run | median wall s | items/s (wall) | speed-up (wall) | "
          "median CPU s | items per CPU-s | speed-up (CPU) |\n|---|---:|---|---:|---:|---:|---:|---:|---:|")
    med = {k: statistics.median(v) for k, v in times.items()}
    medc = {k: statistics.median(v) for k, v in cpu.items()}
    for name in runs:
        seqs = n_req if name == "naive" else S.count_rows(requests, block, tree=(name == "tree"))
        print(f"| {name} | {seqs} | {', '.join(f'{t:.1f}' for t in times[name])} | {med[name]:.2f} | "
              f"{n_items / med[name]:.1f} | {med['naive'] / med[name]:.1f}x | {medc[name]:.2f} | "
              f"{n_items / medc[name]:.1f} | {medc['naive'] / medc[name]:.1f}x |")
    return med


def main(argv=None):
    return run_cli(bench, BenchConfig, argv, prog="bench/bench_scoring.py")


if __name__ == "__main__":
    main()
