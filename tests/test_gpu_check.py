"""bench/gpu_check.py, the one-command first contact with a GPU, in its CPU dry run (tiny shapes): every check reports
a status, the JSON and the markdown are written, CUDA-only parts are marked "skipped: no CUDA" (not hidden), a crash
or a timeout is reported as such while the other checks still run, and the budget logic (Clock) stops a check or a
part of it. No timing thresholds: budgets are either generous or zero."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check as G  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: one thread is fastest (conftest.py)


def report(out):
    rep = json.loads((out / "gpu_check.json").read_text())
    return rep, {c["check"]: c for c in rep["checks"]}, (out / "gpu_check.md").read_text()


def test_cpu_dry_run_runs_every_check_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "gc"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device=cpu", f"--out_dir={out}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep, by, md = report(out)
    assert [c["check"] for c in rep["checks"]] == list(G.CHECKS) and rep["dry_run"] is True
    for name, c in by.items():
        assert c["status"] == "pass" and c["summary"] and c["rows"], (name, c)
        assert f"| {c['title']} | pass |" in md and f"### {c['title']}" in md
        assert 0 < c["seconds"] and c["budget_s"] == getattr(G.GPUCheckConfig(), f"{name}_s")
    assert "summary: train pass; ce pass; mfu pass; gen_eval pass" in r.stdout
    # 1: the CPU reference and the bf16-autocast arm ran; the CUDA arm is marked, not hidden
    arms = {row["arm"][0]: row for row in by["train"]["rows"]}
    assert arms["A"]["status"] == "reference" and len(arms["A"]["losses"]) == G.TINY["train"]["steps"]
    assert arms["A"]["last_loss"] < arms["A"]["first_loss"]                 # byte text is learnable
    assert arms["B"]["status"] == G.NO_CUDA and arms["C"]["status"] == "pass" and arms["C"]["dtype"] == "bfloat16"
    assert "compiled blocks" in by["train"]["skipped"]
    # 2: naive and chunked measured against the fp32 reference; Triton / torch.compile / memory need CUDA
    ce = {(row["key"], row["dtype"]): row for row in by["ce"]["rows"]}
    for dtype in ("bfloat16", "float32"):
        assert ce[("triton", dtype)]["status"] == G.NO_CUDA and ce[("compiled", dtype)]["status"] == G.NO_CUDA
        assert ce[("naive", dtype)]["status"] == "pass"
        chunked = ce[("chunked", dtype)]
        assert chunked["status"] == "pass" and chunked["memory"] == G.NO_CUDA and chunked["ms"] > 0
        assert chunked["grad_w_rel_err"] <= G.CE_TOL[dtype][1]
    assert "Triton" in by["ce"]["skipped"] and "max_memory_allocated" in by["ce"]["skipped"]
    # 3: with and without activation checkpointing, train.py's wrapper in a 1-rank process group
    mfu = by["mfu"]["rows"]
    assert [row["activation_checkpointing"] for row in mfu] == [False, True]
    assert all(row["ranks"] == 1 and row["tokens_per_s"] > 0 and 0 < row["mfu"] for row in mfu)
    assert all(row["peak_memory_gib"] == G.NO_CUDA and row["steps_applied"] == row["steps_timed"] for row in mfu)
    # 4: the KV cache agrees with recomputing; XCOPA scored on CPU, its CUDA comparison marked
    gen = by["gen_eval"]["rows"]
    assert gen[0]["status"] == "pass" and G.NO_CUDA in gen[1]["status"] and 0 <= gen[1]["cpu_fp32_acc"] <= 1
    assert [row["batch"] for row in gen[2:]] == [1, 8] and all(row["tokens_per_s"] > 0 for row in gen[2:])
    assert "the toy model check 1 trained" in by["gen_eval"]["setup"]
    assert "skipped: no CUDA" in md and "| skipped: no CUDA |" in md


def test_a_crash_and_a_timeout_are_reported_and_the_later_checks_still_run(tmp_path):
    """In-process: check 1 made to crash (the test hook), check 2 given no time, check 3 still runs -- spawning one
    process per rank, as on a multi-GPU box (2 gloo ranks on CPU: FSDP2 really shards)."""
    out, triton_before = tmp_path / "gc", "triton" in sys.modules
    with pytest.raises(SystemExit) as exit_:
        G.main(["--device=cpu", f"--out_dir={out}", "--only=train,ce,mfu", "--fail_check=train", "--ce_s=0",
                "--mfu_procs=2"])
    assert exit_.value.code == 1                                             # not every check passed
    rep, by, md = report(out)
    assert by["train"]["status"] == "crash" and by["train"]["error"] == "RuntimeError: injected failure " \
        "(--fail_check=train)" and "Traceback" in by["train"]["traceback"]
    assert by["ce"]["status"] == "timeout" and "ran out of its 0 s budget" in by["ce"]["summary"]
    assert by["mfu"]["status"] == "pass", by["mfu"]
    assert [(row["ranks"], row["fsdp_sharded"]) for row in by["mfu"]["rows"]] == [(2, True), (2, True)]
    assert by["gen_eval"]["status"] == "skipped" and "--only" in by["gen_eval"]["summary"]
    assert "| crash | RuntimeError: injected failure" in md and "| timeout |" in md
    assert triton_before or "triton" not in sys.modules                      # the CPU run never imports triton


def test_one_method_crashing_fails_the_ce_check_but_keeps_the_other_rows(tmp_path, monkeypatch):
    real = G.linear_cross_entropy

    def broken(x, w, t, impl="auto", **kw):
        if impl == "chunked":
            raise RuntimeError("first line\nthe last line says what broke")
        return real(x, w, t, impl=impl, **kw)
    monkeypatch.setattr(G, "linear_cross_entropy", broken)
    with pytest.raises(SystemExit):
        G.main(["--device=cpu", f"--out_dir={tmp_path}", "--only=ce", "--ce_dtypes=float32"])
    _, by, md = report(tmp_path)
    rows = {row["key"]: row for row in by["ce"]["rows"]}
    assert by["ce"]["status"] == "fail"
    assert rows["chunked"]["status"] == "crash: RuntimeError: the last line says what broke"
    assert rows["naive"]["status"] == "pass" and rows["naive"]["loss_rel_err"] < 1e-5
    assert "crash: RuntimeError: the last line says what broke" in md


def test_a_crashing_rank_is_reported_with_its_last_line_and_the_other_ranks_are_stopped(tmp_path, monkeypatch):
    fake = tmp_path / "rank.py"                            # stands in for gpu_check.py --worker=mfu
    fake.write_text("import os, time\nif os.environ['RANK'] == '0':\n"
                    "    raise RuntimeError('No backend type associated with device type cpu')\ntime.sleep(600)\n")
    monkeypatch.setattr(G, "__file__", str(fake))
    with pytest.raises(SystemExit):
        G.main(["--device=cpu", f"--out_dir={tmp_path / 'gc'}", "--only=mfu", "--mfu_procs=2"])
    _, by, md = report(tmp_path / "gc")
    assert by["mfu"]["status"] == "fail"                  # (rank 1 sleeps 600 s: it was stopped, not waited for)
    for row in by["mfu"]["rows"]:
        assert row["status"] == ("crash: rank 0 (exit 1): RuntimeError: No backend type associated with device "
                                 "type cpu")
    assert (tmp_path / "gc" / "mfu_ranks" / "rank1.log").exists()


def test_clock_stops_a_part_and_the_check_goes_on():
    clock = G.Clock(100)
    with clock.running():
        with pytest.raises(G.CheckTimeout, match="ran out of its 0 s budget"):
            with clock.part(0):
                clock.check("row 1")
        clock.check("row 2")                               # the check itself still has time
        assert clock.left() > 0 and clock.budget == 100
    with pytest.raises(G.CheckTimeout, match=r"ran out of its 0 s budget \(before anything\)"):
        G.Clock(0).check("before anything")


def test_the_hard_limit_interrupts_a_long_call_and_names_where():
    clock = G.Clock(0.2)
    t = time.monotonic()
    with pytest.raises(G.CheckTimeout, match=r"interrupted in test_gpu_check.py:\d+ in busy"):
        with clock.running():
            def busy():                                    # a long call that never checks the clock itself
                while time.monotonic() - t < 60:
                    pass
            busy()                                         # (without the alarm: no exception, the test fails)


def test_bad_settings_are_one_line_and_write_nothing(tmp_path, capsys):
    for argv, message in ((["--only=speed"], "unknown check 'speed'"), (["--ce_dtypes=fp8", "--only=ce"], "'fp8'"),
                          (["--gen_presets=huge"], "unknown model preset 'huge'"), (["--mfu_s=-1"], "mfu_s=-1"),
                          (["--train_steps=0"], "train_steps=0"), (["--device=tpu"], "device='tpu'")):
        with pytest.raises(SystemExit) as e:
            G.main([f"--device={'tpu' if '--device=tpu' in argv else 'cpu'}", f"--out_dir={tmp_path / 'x'}"]
                   + [a for a in argv if not a.startswith("--device")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()
