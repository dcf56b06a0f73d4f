"""`python bench/bench_kernels.py`: memory and time of the PolyLM loss, fused (chunked) vs naive F.linear + F.cross_entropy.

PolyLM (arXiv 2307.06018, §2/§4) has a 256,000-token vocabulary; at 2,048 tokens the naive loss materializes
2,048 x 256,000 fp32 logits (2.1 GB), their log-softmax (2.1 GB) and their gradient (2.1 GB). This script measures,
on CPU in fp32, one forward + backward of the loss at V = 256,000, N = 2,048 tokens, d_model 512 and 2048.

How memory is measured (CPU has no torch.cuda.max_memory_allocated): every measurement runs in a FRESH subprocess
that allocates the inputs, runs one forward + backward and reports its peak resident set size (ru_maxrss from
resource.getrusage). A baseline subprocess allocates the same inputs, the weight and a weight-sized gradient (which
every method must hold) and nothing else. "extra" = method peak - baseline peak: the memory the loss itself needs on
top of what any method must hold. "total" = the method's whole-process peak RSS (including Python + torch, ~0.3 GB).

Timing: wall clock of that one forward + backward inside the subprocess (no warm-up: at these sizes one run takes
seconds, and the first call's one-time costs are milliseconds). Methods are interleaved (naive, fused, naive, ...)
and we report the median of --repeats runs. The machine is shared with other jobs: timings are noisy.

Other modes: --sweep (chunk sizes at d=512), --threshold (reference vs chunked at small N*V, for impl="auto").
"""
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from kernels.cross_entropy import default_chunk_size, linear_cross_entropy


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
            else:
                name = platform.processor()
        flags = open("/proc/cpuinfo").read()
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
        return f"{name} ({os.cpu_count()} cores visible, {isa}, torch {torch.__version__}, {torch.get_num_threads()} threads)"
    except OSError:
        return platform.processor() or "unknown CPU"


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def make_inputs(n, v, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g) * 1.0).requires_grad_()
    w = (torch.randn(v, d, generator=g) * 0.02).requires_grad_()  # GPT-2 init scale
    t = torch.randint(0, v, (n,), generator=g)
    return x, w, t


def worker(method, n, v, d, chunk_size, save_to):
    """Run in a fresh process: one forward + backward of `method`; print a JSON line with time and peak RSS."""
    x, w, t = make_inputs(n, v, d)
    if method == "baseline":  # inputs + weight + a weight-sized gradient (+ x's gradient), nothing else
        w.grad = torch.zeros_like(w)
        x.grad = torch.zeros_like(x)
        print(json.dumps({"peak": peak_rss_bytes(), "time": 0.0, "cpu": 0.0}))
        return
    t0, c0 = time.perf_counter(), time.process_time()
    if method == "naive":
        logits = F.linear(x, w)  # (N, V): what a model's forward usually returns
        loss = F.cross_entropy(logits, t)
    else:
        loss = linear_cross_entropy(x, w, t, impl="chunked", chunk_size=chunk_size)
    loss.backward()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = {"peak": peak_rss_bytes(), "time": elapsed, "cpu": cpu, "loss": loss.item()}
    print(json.dumps(out))
    if save_to:
        torch.save({"loss": loss.detach(), "gx": x.grad, "gw": w.grad}, save_to)


def run_worker(method, n, v, d, chunk_size=None, save_to=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--n", str(n), "--v", str(v), "--d", str(d)]
    if chunk_size:
        cmd += ["--chunk_size", str(chunk_size)]
    if save_to:
        cmd += ["--save_to", save_to]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


def compare(d, n, v, chunk_size, repeats):
    """Interleaved runs of baseline / naive / fused at one d_model; returns a result dict."""
    base = [run_worker("baseline", n, v, d)["peak"] for _ in range(2)]
    baseline = min(base)
    res = {"naive": [], "fused": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {m: os.path.join(tmp, m + ".pt") for m in res}
        for r in range(repeats):
            for m in ("naive", "fused"):
                out = run_worker(m, n, v, d, chunk_size if m == "fused" else None, paths[m] if r == 0 else None)
                res[m].append(out)
                print(f"  d={d} run {r} {m:5s}: {out['time']:6.2f} s wall, {out['cpu']:6.2f} s CPU, "
                      f"peak {out['peak'] / 2**30:6.2f} GiB", flush=True)
        a, b = torch.load(paths["fused"]), torch.load(paths["naive"])
        errs = {k: rel_err(a[k], b[k]) for k in ("loss", "gx", "gw")}
        del a, b
    summary = {"d": d, "baseline_gib": baseline / 2**30, "rel_err": errs}
    for m, runs in res.items():
        summary[m] = {
            "time_s": statistics.median(o["time"] for o in runs),
            "times": [round(o["time"], 2) for o in runs],
            "cpu_s": statistics.median(o["cpu"] for o in runs),
            "cpus": [round(o["cpu"], 2) for o in runs],
            "total_gib": statistics.median(o["peak"] for o in runs) / 2**30,
            "extra_gib": (statistics.median(o["peak"] for o in runs) - baseline) / 2**30,
        }
    return summary


def main_compare(args):
    chunk = args.chunk_size or default_chunk_size(args.n, args.v)
    print(f"CPU: {cpu_model()}")
    print(f"V={args.v}, N={args.n} tokens, fp32, forward+backward, fused chunk_size={chunk} rows, "
          f"median of {args.repeats} fresh-process runs", flush=True)
    rows = [compare(d, args.n, args.v, chunk, args.repeats) for d in args.dims]
    print()
    print("| d_model | method | wall time (s, median) | wall runs (s) | CPU time (s, median) | CPU runs (s) | "
          "extra memory (GiB) | total peak RSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for m in ("naive", "fused"):
            s = r[m]
            print(f"| {r['d']} | {m} | {s['time_s']:.2f} | {', '.join(map(str, s['times']))} | {s['cpu_s']:.2f} | "
                  f"{', '.join(map(str, s['cpus']))} | {s['extra_gib']:.2f} | {s['total_gib']:.2f} |")
    print()
    print("| d_model | fused/naive extra memory | fused/naive wall time | fused/naive CPU time | loss rel err | "
          "grad x rel err | grad W rel err | baseline RSS (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        e = r["rel_err"]
        print(f"| {r['d']} | {r['fused']['extra_gib'] / r['naive']['extra_gib']:.3f} | "
              f"{r['fused']['time_s'] / r['naive']['time_s']:.3f} | {r['fused']['cpu_s'] / r['naive']['cpu_s']:.3f} | "
              f"{e['loss']:.1e} | {e['gx']:.1e} | {e['gw']:.1e} | "
              f"{r['baseline_gib']:.2f} |")


def main_sweep(args):
    """Time and extra memory of the fused loss for several chunk sizes (one fresh process each, interleaved)."""
    d = args.dims[0]
    baseline = min(run_worker("baseline", args.n, args.v, d)["peak"] for _ in range(2))
    sizes = args.sizes
    res = {c: [] for c in sizes}
    for r in range(args.repeats):
        for c in sizes:
            res[c].append(run_worker("fused", args.n, args.v, d, c))
    print(f"CPU: {cpu_model()}\nd={d}, V={args.v}, N={args.n}")
    print("| chunk rows | chunk logits (MB) | wall time (s, median) | wall runs | CPU time (s, median) | CPU runs | "
          "extra memory (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for c in sizes:
        runs = res[c]
        print(f"| {c} | {c * args.v * 4 / 1e6:.0f} | {statistics.median(o['time'] for o in runs):.2f} | "
              f"{', '.join('%.2f' % o['time'] for o in runs)} | {statistics.median(o['cpu'] for o in runs):.2f} | "
              f"{', '.join('%.2f' % o['cpu'] for o in runs)} | "
              f"{(statistics.median(o['peak'] for o in runs) - baseline) / 2**30:.2f} |")


def main_threshold(args):
    """Reference vs chunked (forward + backward, in-process, median of 7) at small N*V: where should auto switch?"""
    d = 256
    print(f"CPU: {cpu_model()}\nd={d}, fp32, forward+backward, median of 7 after a warm-up")
    print("| N | V | N*V | log2(N*V) | reference (ms) | chunked (ms) | chunked/reference |")
    print("|---|---|---|---|---|---|---|")
    for n, v in [(64, 300), (128, 2048), (256, 4096), (512, 8192), (1024, 16384), (2048, 32768)]:
        x, w, t = make_inputs(n, v, d)
        times = {}
        for impl in ("reference", "chunked"):
            ts = []
            for _ in range(8):
                x.grad = w.grad = None
                t0 = time.perf_counter()
                linear_cross_entropy(x, w, t, impl=impl).backward()
                ts.append(time.perf_counter() - t0)
            times[impl] = statistics.median(ts[1:]) * 1e3
        print(f"| {n} | {v} | {n * v} | {math.log2(n * v):.1f} | {times['reference']:.1f} | "
              f"{times['chunked']:.1f} | {times['chunked'] / times['reference']:.2f} |", flush=True)


@dataclasses.dataclass
class KernelBenchConfig:
    n: int = 2048                       # tokens (rows)
    v: int = 256000                     # vocabulary size
    dims: str = "512,2048"              # d_model values, comma-separated
    d: int = 512                        # (worker) d_model
    repeats: int = 3                    # interleaved runs per method (the median is reported)
    chunk_size: int = 0                 # fused rows per chunk (0 = default_chunk_size)
    sweep: bool = False                 # chunk-size sweep at the first of dims
    sizes: str = "32,64,128,256"        # (sweep) chunk sizes, comma-separated
    threshold: bool = False             # small-shape timing for impl='auto'
    worker: str = ""                    # (internal) run one method in this process: baseline | naive | fused
    save_to: str = ""                   # (internal) where a worker writes its result


def run(args):
    args.dims = [int(x) for x in str(args.dims).split(",") if x]
    args.sizes = [int(x) for x in str(args.sizes).split(",") if x]
    args.chunk_size = args.chunk_size or None
    args.save_to = args.save_to or None
    if args.worker:
        worker(args.worker, args.n, args.v, args.d, args.chunk_size, args.save_to)
    elif args.sweep:
        main_sweep(args)
    elif args.threshold:
        main_threshold(args)
    else:
        main_compare(args)


def main(argv=None):
    from config import run_cli
    return run_cli(run, KernelBenchConfig, argv, prog="bench/bench_kernels.py")


if __name__ == "__main__":
    main()
