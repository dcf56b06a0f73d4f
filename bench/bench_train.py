"""Checkpoint save/load time and size (toy and a ~100M model), and training tokens/s for 1 vs 2 processes.

    python bench/bench_train.py --only=ckpt           # save/load of model + AdamW state, median of 3
    python bench/bench_train.py --only=scaling        # tokens/s: 1 process vs torchrun 2 processes (DDP), same global batch
"""
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from model import PolyLM, preset  # noqa: E402


def bench_ckpt():
    import runtime
    from curriculum import Mixer, Stage
    import numpy as np
    for name, cfg in (("toy", preset("toy")), ("~100M", preset("toy", n_layer=12, n_head=12, n_embd=768,
                                                                   vocab_size=32768, block_size=1024))):
        m = PolyLM(cfg)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        m(torch.randint(0, cfg.vocab_size, (1, 8)), torch.randint(0, cfg.vocab_size, (1, 8))).backward()
        opt.step()                                         # materialise the AdamW state
        mixer = Mixer({"en": np.arange(10_000)}, [Stage("s", 1.0, {"en": 1.0})], 100, 8)
        tcfg = runtime.RunConfig(keep_ckpts=1)
        saves, loads = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(3):
                t = time.perf_counter()
                path = runtime.save_checkpoint(tmp, i + 1, m, opt, mixer, runtime.Dist(), tcfg)
                saves.append(time.perf_counter() - t)
                t = time.perf_counter()
                runtime.load_training_state(path, m, opt, mixer, runtime.Dist())
                loads.append(time.perf_counter() - t)
            size = sum(f.stat().st_size for f in path.iterdir())
        print(f"{name}: {m.num_params():,} params, checkpoint {size / 2**20:,.1f} MiB, "
              f"save {sorted(saves)[1]:.2f}s, load {sorted(loads)[1]:.2f}s (median of 3, fsync included)")


def bench_scaling(steps=12):
    work = Path(tempfile.mkdtemp())
    args = ["--max_iters=%d" % steps, "--eval_interval=1000", "--eval_tokens=64", "--samples=False",
            "--log_interval=4", "--dtype=float32", "--overwrite=True"]
    res = {}
    for label, cmd, batch in (("1 process", [sys.executable, str(ROOT / "train.py")], 16),
                              ("2 processes (DDP)", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc_per_node=2", str(ROOT / "train.py")], 8)):
        out = work / label.split()[0]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if batch == 8:
            env["OMP_NUM_THREADS"] = "1"                   # one core per rank
        subprocess.run(cmd + args + [f"--batch_size={batch}", f"--out_dir={out}",
                                     f"--data_dir={ROOT / 'data' / 'sample'}"], cwd=ROOT, env=env, check=True,
                       capture_output=True)
        recs = [json.loads(l) for l in open(out / "metrics.jsonl") if '"tok_per_s"' in l]
        res[label] = sorted(r["tok_per_s"] for r in recs[1:])[len(recs[1:]) // 2]   # skip the first (warm-up)
        print(f"{label}: {res[label]:,.0f} tokens/s (median over log intervals after the first)")
    a, b = res.values()
    print(f"scaling efficiency (2 processes on 2 cores vs 1 process using both): {b / a:.2f}")


@dataclasses.dataclass
class TrainBenchConfig:
    only: str = "ckpt"                  # sections, comma-separated: ckpt | scaling
    steps: int = 12                     # scaling: training steps per run


def run(cfg):
    for name in cfg.only.split(","):
        if name not in ("ckpt", "scaling"):
            raise ValueError(f"only={name!r}: choose ckpt or scaling")
        bench_ckpt() if name == "ckpt" else bench_scaling(cfg.steps)


def main(argv=None):
    from config import run_cli
    return run_cli(run, TrainBenchConfig, argv, prog="bench/bench_train.py")


if __name__ == "__main__":
    main()
