"""train.py and sft.py at scale, on CPU with gloo: 1 process == DDP == FSDP2, exact resume, crash-safe checkpoints,
2 nodes.

Every launch is a real `torchrun` with 2 processes (or two 1-process launchers for the 2-node case), as on a
cluster. The data order is a pure function of (schedule, step, rank) and 2 ranks with batch 4 read exactly the
rows of 1 process with batch 8, so the loss curves must agree to float rounding (gradient averaging order).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--vocab_size=300", "--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=32", "--max_iters=6",
        "--warmup_iters=2", "--learning_rate=3e-3", "--eval_interval=3", "--eval_tokens=128", "--log_interval=1",
        "--samples=False", "--dtype=float32"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(work, out, *extra, nproc=1, env=None, wait=True, script="train.py"):
    cmd = [sys.executable, str(ROOT / script)] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         str(ROOT / script)]
    cmd += (ARGS + [f"--data_dir={work / 'data'}"] if script == "train.py" else []) + [f"--out_dir={work / out}", *extra]
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.Popen(cmd, cwd=work, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return p
    log, _ = p.communicate(timeout=300)
    assert p.returncode == 0, log[-3000:]
    return log


def losses(run):
    return [json.loads(l)["loss"] for l in open(run / "metrics.jsonl") if '"loss"' in l]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A data dir, and the single-process reference run (which also builds the cached tokenizer and shards)."""
    w = tmp_path_factory.mktemp("dist")
    (w / "data" / "mono").mkdir(parents=True)
    (w / "data" / "mono" / "en.txt").write_text("".join(f"English sentence number {i} is here.\n" for i in range(400)))
    (w / "data" / "mono" / "th.txt").write_text("".join(f"ประโยคภาษาไทยที่ {i}\n" for i in range(200)))
    (w / "data" / "mono" / "zh.txt").write_text("".join(f"这是第{i}个中文句子。\n" for i in range(300)))
    launch(w, "single", "--batch_size=8")
    return w


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one_process_loss_curve(work, parallel):
    launch(work, parallel, "--batch_size=4", f"--parallel={parallel}", nproc=2)
    ref, got = losses(work / "single"), losses(work / parallel)
    assert len(ref) == len(got) == 6
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)          # float rounding of the gradient average only
    ckpt = work / parallel / "ckpt" / "step_000006"
    assert (ckpt / "model.pt").exists() and (ckpt / "state.json").exists()
    if parallel == "fsdp":
        assert (ckpt / "dcp").is_dir()                             # sharded Distributed Checkpoint + consolidated


@pytest.mark.parametrize("parallel,nproc,batch", [("ddp", 1, 8), ("ddp", 2, 4), ("fsdp", 2, 4)])
def test_resume_is_exact(work, parallel, nproc, batch):
    run = f"resume-{parallel}-{nproc}"
    flags = [f"--batch_size={batch}", f"--parallel={parallel}"]
    uninterrupted = losses(work / ("single" if nproc == 1 else parallel))   # made by the test above
    launch(work, run, *flags, "--stop_at_step=3", nproc=nproc)
    assert losses(work / run) == uninterrupted[:3]
    launch(work, run, *flags, "--resume=auto", nproc=nproc)
    assert losses(work / run) == uninterrupted                      # bitwise: same data, same state, same kernels


def test_kill_during_checkpoint_write_keeps_previous_and_resume_continues(work):
    run = work / "killed"
    p = launch(work, "killed", "--batch_size=8", "--max_iters=9", env={"POLYLM_CKPT_DELAY": "2"}, wait=False)
    deadline = time.time() + 240
    while not (run / "ckpt" / ".tmp_step_000006").exists():        # first checkpoint done, second being written
        assert p.poll() is None and time.time() < deadline, p.stdout.read()[-3000:]
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (run / "ckpt" / "latest").read_text() == "step_000003"
    sys.path.insert(0, str(ROOT))
    from model import load_model
    load_model(run)                                                 # the previous checkpoint is intact
    launch(work, "killed", "--batch_size=8", "--max_iters=9", "--resume=auto")
    assert (run / "ckpt" / "latest").read_text() == "step_000009"
    assert not list((run / "ckpt").glob(".tmp_*"))
    assert losses(run)[:3] == losses(work / "single")[:3]


def test_two_nodes_on_localhost(work):
    port = free_port()
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
               f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", str(ROOT / "train.py"),
               *ARGS, "--batch_size=4", f"--data_dir={work / 'data'}", f"--out_dir={work / 'twonode'}"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    for p in procs:
        log, _ = p.communicate(timeout=300)
        assert p.returncode == 0, log[-3000:]
    assert losses(work / "twonode") == pytest.approx(losses(work / "single"), rel=1e-5, abs=1e-6)
    assert (work / "twonode" / "ckpt" / "latest").read_text() == "step_000006"


# ----------------------------------------------------------------------------- sft.py: the same runtime, so the same guarantees

SFT_ARGS = ["--max_iters=6", "--warmup_iters=1", "--learning_rate=3e-3", "--min_lr=3e-4", "--eval_interval=3",
            "--log_interval=1", "--samples=0", "--dtype=float32", "--val_frac=0.2"]


@pytest.fixture(scope="module")
def sft_work(work):
    """Instruction records of very different lengths (so the ranks hold different numbers of response tokens), and
    the single-process reference SFT run from the pre-trained `single` run."""
    import json as j
    recs = [{"instruction": f"Question {i}: " + "why " * (i % 7), "input": "x" * (i % 5),
             "output": "Because " + "it is so " * (1 + i % 4), "lang": "en"} for i in range(40)]
    recs += [{"messages": [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello " * (i % 3 + 1)},
                           {"role": "user", "content": "More?"}, {"role": "assistant", "content": "No."}]}
             for i in range(10)]
    (work / "sft.jsonl").write_text("".join(j.dumps(r) + "\n" for r in recs))
    common = [f"--init_from={work / 'single'}", f"--data={work / 'sft.jsonl'}", *SFT_ARGS]
    launch(work, "sft-single", *common, "--batch_size=4", script="sft.py")
    return common


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_sft_two_processes_match_one_process(work, sft_work, parallel):
    launch(work, f"sft-{parallel}", *sft_work, "--batch_size=2", f"--parallel={parallel}", nproc=2, script="sft.py")
    ref, got = losses(work / "sft-single"), losses(work / f"sft-{parallel}")
    assert len(ref) == len(got) == 6
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    evals = [j for j in (json.loads(x) for x in open(work / f"sft-{parallel}" / "metrics.jsonl")) if "val_loss" in j]
    ref_evals = [j for j in (json.loads(x) for x in open(work / "sft-single" / "metrics.jsonl")) if "val_loss" in j]
    flat = lambda es: [v for e in es for _, v in sorted(e["val_loss"].items())]   # noqa: E731
    assert flat(evals) == pytest.approx(flat(ref_evals), rel=1e-5) and len(flat(evals)) == 4


def test_sft_resume_under_ddp_is_exact(work, sft_work):
    uninterrupted = losses(work / "sft-ddp")
    launch(work, "sft-resume", *sft_work, "--batch_size=2", "--stop_at_step=3", nproc=2, script="sft.py")
    launch(work, "sft-resume", *sft_work, "--batch_size=2", "--resume=auto", nproc=2, script="sft.py")
    assert losses(work / "sft-resume") == uninterrupted
