"""Running the runs of an experiment (ablate.py): the state of a run dir, one job (train the run with
`python train.py`, then score its final checkpoint) and a pool of worker processes that take jobs from a queue dir.

A job is a JSON spec written by ablate.py: {"label", "run_dir", "argv" (train.py's), "mode" (fresh | resume |
overwrite | eval_only), "max_iters", "threads", "eval" (what to score), "log"}. A worker claims a spec by renaming
it (pending/ -> running/: atomic, so two workers never take the same one), writes its outcome to done/, and goes on
until the queue is empty; its output and that of the train.py it runs go to the job's log.

Invariants:
  - a run is trained only by train.py itself (a child process: the run a user would start, with its own checks and
    its bitwise resume), and by one process at a time (a lock file beside the run dir, for experiments that share
    runs);
  - a run's scores and the time it trained go to RUN/ablate.json, written atomically; nothing is deleted;
  - each worker leads its own process group, so stopping the pool stops the train.py runs too (their checkpoints
    stay: the next invocation resumes them).
"""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import atomic_write_json, read_jsonl
from experiment_report import fmt_s

ROOT = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- the state of a run dir

EVAL_FILE = "ablate.json"               # in each run dir: the final scores and the time this run trained


def run_metrics(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def run_state(run_dir, max_iters):
    """absent | started (files, no checkpoint: killed before its first save) | checkpoint (can resume) |
    complete (the eval at max_iters is logged and ckpt/latest names step max_iters)."""
    d = Path(run_dir)
    if not d.is_dir() or not any(d.iterdir()):
        return "absent"
    latest = d / "ckpt" / "latest"
    if not latest.exists():
        return "started"
    done = latest.read_text().strip() == f"step_{max_iters:06d}" and any(
        r.get("step") == max_iters and "val_bpb" in r for r in run_metrics(d))
    return "complete" if done else "checkpoint"


def read_run_record(run_dir):
    path = Path(run_dir) / EVAL_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


# ----------------------------------------------------------------------------- one run (a pool job)

def execute(spec):
    """Train one run (fresh, resumed or started over, as the spec says), then score its final checkpoint on the
    val sets; the times and scores go to RUN/ablate.json. Returns 'complete' or 'stopped'."""
    import fcntl
    run_dir = Path(spec["run_dir"])
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir.parent / f".{run_dir.name}.lock", "w")      # two experiments that share a run: one trains
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print(f"ablate: {run_dir} is being trained by another ablate.py (an experiment sharing this run); run this "
              f"one again when that has finished")
        return "failed"
    if spec["mode"] != "eval_only":
        extra = {"fresh": [], "resume": ["--resume=auto"], "overwrite": ["--overwrite=True"]}[spec["mode"]]
        t = time.time()
        sys.stdout.flush()
        sys.stderr.flush()              # train.py is a child process writing to the same log (fds 1 and 2)
        rc = subprocess.run([sys.executable, str(ROOT / "train.py"), *spec["argv"], *extra],
                            env=dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))).returncode
        if rc != 0:                     # its one-line error or traceback is in the log already
            print(f"ablate: train.py exited with code {rc}")
            return "failed"
        rec = read_run_record(run_dir)
        rec["train_wall_s"] = rec.get("train_wall_s", 0.0) + time.time() - t
        rec["train_invocations"] = rec.get("train_invocations", 0) + 1
        atomic_write_json(run_dir / EVAL_FILE, rec)
    if run_state(run_dir, spec["max_iters"]) != "complete":
        print(f"ablate: {run_dir} stopped before step {spec['max_iters']}; run the experiment again to continue")
        return "stopped"
    t = time.time()
    scores = final_scores(run_dir, spec["eval"])
    rec = read_run_record(run_dir)
    rec.update(eval=spec["eval"], scores=scores, eval_wall_s=time.time() - t)
    atomic_write_json(run_dir / EVAL_FILE, rec)
    print(f"ablate: scored {run_dir} in {time.time() - t:.1f}s: mean val bpb "
          f"{np.mean(list(scores['main']['val_bpb'].values())):.4f} ({spec['eval']['val_data'] or 'val split'})")
    return "complete"


def final_scores(run_dir, req):
    """{"main": {"val_bpb": {lang: bpb}, "tokens", "bytes"}, "split": ...}: the final checkpoint's bits per byte on
    the first final_eval_docs documents of each val_data/<lang>.txt (NTREX: the same sentences in every language,
    whatever the tokenizer) and on the first split_eval_tokens tokens of the training data's own val split (what
    train.py reported before val_data existed). Without val_data, "main" is that split."""
    import bpe
    import pretraining
    import runtime
    import shards
    from model import load_model, load_tokenizer
    from tasks.bpb import bits_per_byte, token_byte_lengths
    saved = json.loads((Path(run_dir) / "config.json").read_text())
    tcfg = pretraining.TrainConfig(**{k: v for k, v in saved["train"].items()
                                      if k in {f.name for f in dataclasses.fields(pretraining.TrainConfig)}})
    device, dtype, _ = runtime.choose(tcfg.device, tcfg.dtype)
    model = load_model(run_dir, device=device)
    enc = load_tokenizer(run_dir)
    shard_dir = Path(saved["shards"])
    manifest = shards.load_manifest(shard_dir, bpe.tokenizer_hash(Path(run_dir) / "tokenizer"))
    byte_lens = token_byte_lengths(enc)

    def streams(val_data, max_docs=None):
        return pretraining.val_streams(dataclasses.replace(tcfg, val_data=val_data), shard_dir, manifest, enc,
                                       max_docs)
    if req["val_data"]:
        sets = {"main": (streams(req["val_data"], req["final_eval_docs"] or None), None)}
        if req["split_eval_tokens"]:
            sets["split"] = (streams(""), req["split_eval_tokens"])
    else:
        sets = {"main": (streams(""), req["split_eval_tokens"] or None)}
    out = {}
    for key, (streams, max_tokens) in sets.items():
        res = bits_per_byte(model, streams, byte_lens, tcfg.block_size, tcfg.batch_size, device,
                            runtime.autocast(device, dtype), max_tokens=max_tokens)
        out[key] = {"val_bpb": {k: v["val_bpb"] for k, v in res.items()},
                    "tokens": {k: v["tokens"] for k, v in res.items()}, "bytes": {k: v["bytes"] for k, v in res.items()}}
    return out


# ----------------------------------------------------------------------------- the pool

def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _redirect_output(path):
    """Point this process's stdout and stderr (file descriptors 1 and 2) at a log file, appending."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def worker(queue_dir):
    """A pool process: claim job files from queue_dir/pending/ (an atomic rename, so two processes never take the
    same one), run each with its output in the job's log, record the outcome in queue_dir/done/; stop when none is
    left. A job trains its run with `python train.py ...` (a child process, exactly the run a user would start) and
    then scores it here."""
    import traceback
    import torch
    q = Path(queue_dir)
    while True:
        pending = sorted((q / "pending").glob("*.json"))
        if not pending:
            return
        claimed = q / "running" / f"{pending[0].stem}.{os.getpid()}.json"
        try:
            os.rename(pending[0], claimed)
        except OSError:                 # another worker took it first
            continue
        spec = json.loads(claimed.read_text())
        torch.set_num_threads(spec["threads"])
        Path(spec["log"]).parent.mkdir(parents=True, exist_ok=True)
        _redirect_output(spec["log"])
        print(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} ablate.py worker {os.getpid()}: {spec['label']}", flush=True)
        t, outcome = time.time(), "failed"
        try:
            outcome = execute(spec)
        except Exception:               # a bug or a broken run: keep going with the other jobs
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        atomic_write_json(q / "done" / f"{pending[0].stem}.json", {"label": spec["label"], "outcome": outcome,
                                                                   "wall_s": time.time() - t, "log": spec["log"]})
        claimed.unlink()


def _signal_group(proc, sig):
    """Signal a worker's process group: the worker and the train.py it is running."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:          # already gone
        pass


def run_pool(specs, queue_dir, n_jobs, threads, say=print):
    """Run job specs with n_jobs worker processes (`python experiment_runs.py QUEUE_DIR`), threads torch threads
    each. Returns ({label: outcome}, 1-minute load averages sampled during the run). Each worker leads its own
    process group (so does the train.py it runs), so Ctrl-C stops them all, here; their runs keep their checkpoints."""
    q = Path(queue_dir)
    for sub in ("pending", "running", "done"):
        (q / sub).mkdir(parents=True, exist_ok=True)
        for old in (q / sub).glob("*.json"):        # job files of an earlier, interrupted invocation
            old.unlink()
    for i, spec in enumerate(specs):
        atomic_write_json(q / "pending" / f"{i:04d}.json", spec)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TQDM_MININTERVAL="30",
               PYTHONUNBUFFERED="1")
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(q)], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(q / f"worker{i}.err", "ab"),
                              start_new_session=True)
             for i in range(n_jobs)]
    outcomes, loads, t_load, started = {}, [os.getloadavg()[0]], time.time(), set()
    try:
        while True:
            alive = [p for p in procs if p.poll() is None]
            for f in sorted((q / "running").glob("*.json")):
                if f.name not in started:
                    started.add(f.name)
                    say(f"  {json.loads(f.read_text())['label']}: started")
            for f in sorted((q / "done").glob("*.json")):
                if f.name not in outcomes:
                    rec = json.loads(f.read_text())
                    outcomes[f.name] = rec
                    status = rec["outcome"] if rec["outcome"] != "failed" else f"FAILED (log {rec['log']})"
                    say(f"  {rec['label']}: {status} in {fmt_s(rec['wall_s'])} ({len(outcomes)}/{len(specs)})")
            if not alive:
                break
            if time.time() - t_load > 15:
                loads.append(os.getloadavg()[0])
                t_load = time.time()
            time.sleep(0.5)
    except KeyboardInterrupt:
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
        raise
    loads.append(os.getloadavg()[0])
    result = {rec["label"]: rec for rec in outcomes.values()}
    for f in (q / "running").glob("*.json"):          # a worker process that died mid-run
        spec = json.loads(f.read_text())
        result[spec["label"]] = {"label": spec["label"], "outcome": "failed", "log": spec["log"], "wall_s": 0}
        f.unlink()
    for i, p in enumerate(procs):
        if p.returncode != 0:
            say(f"  worker {i} exited with code {p.returncode} (see {q / f'worker{i}.err'})")
    return result, loads


if __name__ == "__main__":             # a pool worker: python experiment_runs.py QUEUE_DIR
    worker(sys.argv[1])
