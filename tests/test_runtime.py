"""runtime.py: the one device/dtype/compile policy, the LR schedule, the out_dir rules, metrics, checkpoints."""
import dataclasses
import json

import pytest
import torch

import runtime
from model import CheckpointError, latest_checkpoint, verify_checkpoint


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = runtime.RunConfig(max_iters=100, warmup_iters=10, learning_rate=1.0, min_lr=0.1)
    lrs = [runtime.lr_at(i, cfg) for i in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[100] == pytest.approx(0.1)


def test_compile_auto_is_on_for_cuda_off_for_cpu_and_bad_values_are_clear():
    assert runtime.resolve_compile("auto", torch.device("cpu"))[0] is False
    assert runtime.resolve_compile("auto", torch.device("cuda", 0))[0] is True
    assert runtime.resolve_compile("True", torch.device("cpu")) == (True, "set by config")
    assert runtime.resolve_compile(False, torch.device("cuda", 0)) == (False, "set by config")
    with pytest.raises(ValueError, match="compile='maybe'"):
        runtime.resolve_compile("maybe", torch.device("cpu"))


def test_dtype_auto_picks_fp32_without_native_bf16_and_explains():
    dtype, why = runtime.resolve_dtype("auto", torch.device("cpu"))
    if not runtime.cpu_has_native_bf16():
        assert dtype == torch.float32 and "no native bf16" in why
    else:
        assert dtype in (torch.float32, torch.bfloat16) and "probe" in why


def test_device_policy_is_one_line_for_bad_values():
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            runtime.resolve_device("cuda")
    with pytest.raises(ValueError, match="choose auto, cpu, cuda"):
        runtime.resolve_device("tpu")


@pytest.mark.parametrize("key,value,message", [("max_iters", -1, "max_iters=-1 must be >= 1"),
                                               ("grad_accum", 0, "grad_accum=0"), ("eval_interval", 0, "eval_interval=0"),
                                               ("beta2", 1.0, "beta2=1.0"), ("resume", "yes", "resume='yes'"),
                                               ("log", "mlflow", "log='mlflow'"), ("dtype", "fp8", "dtype='fp8'")])
def test_run_settings_are_checked(key, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        runtime.check_run_config(dataclasses.replace(runtime.RunConfig(), **{key: value}))


def test_out_dir_rules(tmp_path):
    cfg = runtime.RunConfig(out_dir=str(tmp_path / "run"))
    assert runtime.check_out_dir(cfg) is None                         # absent: fine
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a run dir"):
        runtime.check_out_dir(cfg)
    assert runtime.check_out_dir(dataclasses.replace(cfg, overwrite=True)) is None
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert runtime.check_out_dir(cfg) is None                         # a run dir: a fresh run may replace it
    with pytest.raises(ValueError, match="is init_from"):
        runtime.check_out_dir(cfg, init_from=str(tmp_path / "run"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        runtime.check_out_dir(dataclasses.replace(cfg, out_dir=str(tmp_path / "file")))


def test_a_replaced_run_is_kept_until_the_new_one_has_a_checkpoint(tmp_path):
    run, logs = tmp_path / "run", []
    cfg = runtime.RunConfig(out_dir=str(run))
    _fake_checkpoint(run, 10, b"old run")
    runtime.claim_out_dir(cfg, runtime.Dist(), logs.append)
    assert (run / "ckpt.replaced" / "ckpt" / "step_000010" / "model.pt").read_bytes() == b"old run"
    (run / "ckpt").mkdir()                                             # the new run dies before its first save
    runtime.claim_out_dir(cfg, runtime.Dist(), logs.append)           # and a third start must not lose the old run
    assert (run / "ckpt.replaced" / "ckpt" / "step_000010" / "model.pt").read_bytes() == b"old run"
    _fake_checkpoint(run, 5, b"new run")
    runtime.release_replaced(cfg, runtime.Dist())
    assert not (run / "ckpt.replaced").exists() and (run / "ckpt" / "step_000005").is_dir()


def test_metrics_flatten_nested_scalars(tmp_path):
    m = runtime.Metrics(tmp_path, runtime.Dist())
    m.write({"step": 3, "loss": 1.5, "val_bpb": {"en": 2.0}, "stage": "s1", "mfu": None})
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["val_bpb"] == {"en": 2.0}
    assert runtime.Metrics.scalars({"step": 3, "loss": 1.5, "val_bpb": {"en": 2.0}, "stage": "s1", "mfu": None}) == \
        {"loss": 1.5, "val_bpb/en": 2.0}


def test_live_metrics_to_tensorboard_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    m = runtime.Metrics(tmp_path, runtime.Dist(), "tensorboard")
    m.write({"step": 1, "loss": 2.0})
    m.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def _fake_checkpoint(run, step, payload):
    d = run / "ckpt" / f"step_{step:06d}"
    d.mkdir(parents=True)
    (d / "model.pt").write_bytes(payload)
    files = runtime.crc_files(d, ["model.pt"])
    (d / "state.json").write_text(json.dumps({"step": step, "world_size": 1, "ranks": [], "files": files}))
    (run / "ckpt" / "latest").write_text(d.name)
    return d


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    old = _fake_checkpoint(tmp_path, 10, b"a" * 1000)
    new = _fake_checkpoint(tmp_path, 20, b"b" * 1000)
    assert latest_checkpoint(tmp_path) == new
    raw = bytearray((new / "model.pt").read_bytes())
    raw[500] ^= 1
    (new / "model.pt").write_bytes(bytes(raw))
    warned = []
    assert latest_checkpoint(tmp_path, warn=warned.append) == old
    assert "CRC-32 mismatch" in warned[0] and "older checkpoint" in warned[0]
    (old / "model.pt").write_bytes(b"a" * 10)                           # truncated too
    with pytest.raises(CheckpointError, match="wrong size"):
        verify_checkpoint(old)
    assert latest_checkpoint(tmp_path, warn=warned.append) is None


def test_live_metrics_to_wandb_offline_when_installed(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    m = runtime.Metrics(tmp_path, runtime.Dist(), "wandb", config={"lr": 1e-3})
    m.write({"step": 1, "loss": 2.0, "val_bpb": {"en": 3.0}})
    m.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))           # written locally, nothing uploaded


def test_a_torn_last_metrics_line_is_cut_before_appending(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')   # killed mid-write
    m = runtime.Metrics(tmp_path, runtime.Dist())
    m.write({"step": 2, "loss": 1.5})
    assert [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
        [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
