"""Never lose a run: a kill campaign and a bad-input sweep, the figures of docs/BENCHMARKS.md ("Reliability").

    python bench/bench_probes.py                        # defaults: 8 train.py kills, 8 data.py driver kills
    python bench/bench_probes.py --train_kills=16 --data_kills=16 --seed=1

  train     a tiny train.py run is killed with SIGKILL at a random moment (some while a checkpoint is being written:
            POLYLM_CKPT_DELAY widens that window), then resumed with --resume=auto, again and again until it
            finishes; its loss curve must equal an unbroken run's, step for step. A run that finishes before the
            next kill lands is checked the same way and a new one started, until all the kills have landed.
  data      `python data.py` with 2 workers is killed at a random moment — the DRIVER alone (its workers live on and
            keep writing), or the whole process group — then rerun; the shards and manifest must be byte-identical
            to an unbroken run's.
  inputs    every bad setting of tests/test_probes.py, each run as its own process: exit code 2, one line, no
            traceback, nothing written.
Kills are at uniformly random times within the measured length of an unbroken run (seeded), so they land in every
phase: start-up, tokenizing, training steps, checkpoint writes, joins.
"""
import dataclasses
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from common import read_jsonl  # noqa: E402
from config import cpu_name, run_cli  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
TRAIN = ["--vocab_size=300", "--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=32", "--max_iters=12",
         "--warmup_iters=2", "--eval_interval=3", "--eval_tokens=128", "--log_interval=1", "--samples=False",
         "--dtype=float32", "--batch_size=8"]


@dataclasses.dataclass
class ProbeConfig:
    train_kills: int = 8                # kill -9 of train.py, each followed by a resume
    data_kills: int = 8                 # kill -9 of data.py (driver alone or the whole group), each followed by a rerun
    inputs: bool = True                 # also run the bad-input sweep
    seed: int = 0                       # where the kills land


def tiny_data(d):
    (d / "mono").mkdir(parents=True)
    sample = ROOT / "data" / "sample" / "mono"
    for lang in ("en", "th", "zh", "de"):
        lines = (sample / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:400]
        (d / "mono" / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def losses(run):
    return [r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r.get("loss") is not None]


def train_campaign(work, kills, rng):
    data = tiny_data(work / "data")
    cmd = [sys.executable, str(ROOT / "train.py"), *TRAIN, f"--data_dir={data}"]
    t0 = time.time()
    subprocess.run(cmd + [f"--out_dir={work / 'ref'}"], cwd=work, env=ENV, check=True, capture_output=True)
    length = time.time() - t0
    ref = losses(work / "ref")
    done, launches, runs, same, failed = 0, 0, 0, 0, []
    while done < kills:                     # a run that finishes before its kill lands: check it, start another
        run = work / f"run{runs}"
        runs += 1
        while True:
            p = subprocess.Popen(cmd + [f"--out_dir={run}", "--resume=auto"], cwd=work,
                                 env={**ENV, "POLYLM_CKPT_DELAY": "0.3"}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            launches += 1
            killed = False
            if done < kills:
                time.sleep(rng.uniform(0.5, length))
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
                    done, killed = done + 1, True
            rc = p.wait()
            if rc == 0:                                    # it ran to the end
                break
            if not killed:                                 # it failed on its own: that is a finding, stop here
                failed.append(f"{run.name}: exit {rc}")
                break
        by_step = {}
        for rec in read_jsonl(run / "metrics.jsonl"):
            if rec.get("loss") is not None:
                by_step[rec["step"]] = rec["loss"]                 # the last record of a step wins
        same += [by_step.get(i + 1) for i in range(len(ref))] == ref  # a re-done step's last record counts
        if failed:
            break
    return {"kills": done, "launches": launches, "runs": runs, "same_losses": same == runs and not failed,
            "failed": failed, "unbroken_s": round(length, 1)}


def tree_sha(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.bin"))} | \
        {"manifest.json": hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()}


def data_campaign(work, kills, rng):
    import bpe
    inp = work / "in"
    inp.mkdir()
    sample = ROOT / "data" / "sample" / "mono"
    for i, lang in enumerate(["en", "de", "zh", "th", "ru", "es"] * 2):
        lines = (sample / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[i * 200:(i + 1) * 200 + 100]
        (inp / f"part{i:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    bpe.save(work / "tok", {bytes([i]): i for i in range(256)})
    cmd = [sys.executable, str(ROOT / "data.py"), f"--input={inp}", f"--tokenizer={work / 'tok'}", "--workers=2",
           "--stages=lid,rules,quality,dedup,tokenize", "--val_frac=0.2"]
    t0 = time.time()
    subprocess.run(cmd + [f"--out={work / 'ref'}"], env=ENV, check=True, capture_output=True)
    length = time.time() - t0
    ref = tree_sha(work / "ref")
    same, how = 0, {"driver": 0, "group": 0}
    for k in range(kills):
        out = work / f"out{k}"
        p = subprocess.Popen(cmd + [f"--out={out}"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        time.sleep(rng.uniform(0.2, length))
        kind = "driver" if k % 2 == 0 else "group"
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL) if kind == "driver" else os.killpg(p.pid, signal.SIGKILL)
            how[kind] += 1
        p.wait()
        r = subprocess.run(cmd + [f"--out={out}"], env=ENV, capture_output=True, text=True)
        same += int(r.returncode == 0 and tree_sha(out) == ref)
    return {"runs": kills, "driver_kills": how["driver"], "group_kills": how["group"], "identical": same,
            "unbroken_s": round(length, 1)}


def input_sweep(work):
    import test_probes
    probe = work / "probe"
    probe.mkdir()
    ok, total, failures = 0, 0, []
    for script, argv, message in test_probes.bad_cases(probe):
        total += 1
        before = sorted(p.name for p in work.rglob("*"))
        r = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=work, env=ENV, capture_output=True,
                           text=True)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        good = r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr and message in lines[0] and \
            sorted(p.name for p in work.rglob("*")) == before
        ok += good
        if not good:
            failures.append((script, argv, r.returncode, lines[-1:] if lines else []))
    return {"bad_inputs": total, "one_line_exit_2": ok, "failures": failures}


def bench(cfg):
    rng = random.Random(cfg.seed)
    print(f"CPU: {cpu_name()}, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        res = {}
        if cfg.train_kills:
            (tmp / "t").mkdir()
            res["train"] = train_campaign(tmp / "t", cfg.train_kills, rng)
            print("train.py:", res["train"])
        if cfg.data_kills:
            (tmp / "d").mkdir()
            res["data"] = data_campaign(tmp / "d", cfg.data_kills, rng)
            print("data.py:", res["data"])
        if cfg.inputs:
            (tmp / "i").mkdir()
            res["inputs"] = input_sweep(tmp / "i")
            print("bad inputs:", res["inputs"])
    return res


def main(argv=None):
    return run_cli(bench, ProbeConfig, argv, prog="bench/bench_probes.py")


if __name__ == "__main__":
    main()
