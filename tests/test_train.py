"""train.py end to end on a tiny model: the loss falls, the run dir is complete, resume and errors behave."""
import json
import math

import pytest
import torch

import train
from model import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(data_dir, out_dir, **kw):
    base = dict(data_dir=str(data_dir), out_dir=str(out_dir), vocab_size=300, n_layer=2, n_head=2, n_embd=64,
                block_size=32, batch_size=8, max_iters=30, warmup_iters=5, learning_rate=3e-3, min_lr=3e-4,
                eval_interval=30, eval_tokens=256, log_interval=5, samples=False, dtype="float32")
    return train.TrainConfig(**{**base, **kw})


@pytest.fixture
def trained(tiny_data_dir, tmp_path_factory, monkeypatch):
    work = tmp_path_factory.mktemp("work")
    monkeypatch.chdir(work)                       # the tokenizer/shard cache goes to ./cache
    cfg = tiny_cfg(tiny_data_dir, work / "run")
    res = train.train(cfg)
    return cfg, res, work


def metrics(out_dir):
    return [json.loads(l) for l in open(f"{out_dir}/metrics.jsonl")]


def test_30_step_toy_run_loss_falls_and_run_dir_is_complete(trained):
    cfg, res, work = trained
    recs = [r for r in metrics(cfg.out_dir) if "loss" in r]
    assert recs[0]["loss"] > recs[-1]["loss"] + 0.5, [r["loss"] for r in recs]
    assert recs[0]["loss"] < math.log(300) + 0.3                 # starts near uniform over the vocab
    for r in recs:
        assert {"step", "loss", "lr", "tok_per_s", "mix", "stage"} <= set(r)
    evals = [r for r in metrics(cfg.out_dir) if "val_bpb" in r]
    assert set(evals[-1]["val_bpb"]) == {"en", "th", "zh"} == set(res)
    run = work / "run"
    for name in ("config.json", "tokenizer/tokenizer.json", "metrics.jsonl", "loss.png", "ckpt/latest"):
        assert (run / name).exists(), name
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["max_iters"] == 30 and saved["model"]["vocab_size"] == 300


def test_checkpoint_loads_and_gives_the_trained_model(trained):
    cfg, _, work = trained
    m = load_model(work / "run")
    assert m.cfg.n_layer == 2 and not m.training
    x = torch.randint(0, 300, (1, 8))
    assert m(x).shape == (1, 8, 300)


def test_resume_auto_continues_from_the_checkpoint(trained, tiny_data_dir):
    cfg, _, work = trained
    train.train(tiny_cfg(tiny_data_dir, work / "run", max_iters=40, eval_interval=10, resume="auto"))
    recs = metrics(cfg.out_dir)
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps[:6] == [5, 10, 15, 20, 25, 30] and steps[-1] == 40 and 35 in steps   # appended, not restarted
    assert (work / "run" / "ckpt" / "latest").read_text() == "step_000040"



def test_bad_settings_fail_before_training(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="unknown curriculum"):
        train.train(tiny_cfg(tiny_data_dir, tmp_path / "r", curriculum="nope"))
    with pytest.raises(FileNotFoundError, match="tokenizer_dir"):
        train.train(tiny_cfg(tiny_data_dir, tmp_path / "r", tokenizer_dir=str(tmp_path / "missing")))
    with pytest.raises(SystemExit):
        train.main(["--max_iter=3"])


def test_evaluate_cli_reads_only_the_run_dir(trained, capsys):
    import evaluate
    cfg, _, work = trained
    evaluate.main([f"--ckpt={work / 'run'}", "--max_tokens=200"])
    out = json.loads((work / "run" / "results.json").read_text())
    assert set(out["bpb"]["results"]) == {"en", "th", "zh"}
    assert "| th |" in capsys.readouterr().out


def test_non_finite_steps_are_skipped_then_rolled_back(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real_forward, calls = train.PolyLM.forward, []

    def spiky_forward(self, idx, targets=None, **kw):     # steps 8 and 13-15 produce a NaN loss
        loss = real_forward(self, idx, targets, **kw)
        calls.append(1)
        return loss * float("nan") if len(calls) in (8, 13, 14, 15) else loss

    monkeypatch.setattr(train.PolyLM, "forward", spiky_forward)
    train.train(tiny_cfg(tiny_data_dir, tmp_path / "run", max_iters=20, eval_interval=10, max_bad_steps=3,
                         log_interval=1))
    recs = metrics(tmp_path / "run")
    assert [r["step"] for r in recs if r.get("event") == "skip"] == [8, 13, 14, 15]
    assert [(r["step"], r["to"]) for r in recs if r.get("event") == "rollback"] == [(15, "step_000010")]
    losses = [r for r in recs if "loss" in r and r["loss"] is not None]
    assert all(math.isfinite(r["loss"]) for r in losses) and losses[-1]["step"] == 20
    assert losses[-1]["skipped"] == 4


def test_plot_flag_redraws_the_run_plots(trained):
    cfg, _, work = trained
    (work / "run" / "loss.png").unlink()
    train.main([f"--plot={work / 'run'}"])
    assert (work / "run" / "loss.png").exists() and (work / "run" / "mixture.png").exists()


def test_init_from_continues_from_another_runs_weights(trained, tiny_data_dir):
    cfg, _, work = trained
    first_fresh = metrics(cfg.out_dir)[0]["loss"]
    last = [r["loss"] for r in metrics(cfg.out_dir) if "loss" in r][-1]
    train.train(tiny_cfg(tiny_data_dir, work / "cont", init_from=str(work / "run"), max_iters=5, log_interval=1,
                         learning_rate=1e-4, min_lr=1e-4, eval_interval=5))
    first_cont = [r["loss"] for r in metrics(work / "cont") if "loss" in r][0]
    assert abs(first_cont - last) < 0.5 < first_fresh - first_cont


def test_nothing_of_a_previous_run_is_lost_to_a_bad_setting(trained, tiny_data_dir):
    cfg, _, work = trained
    run = work / "run"
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    bad = [dict(preset="bogus"), dict(curriculum="bogus"), dict(vocab_size=10), dict(n_head=3),
           dict(eval_interval=0), dict(max_iters=-1), dict(grad_accum=0), dict(block_size=100000),
           dict(tokenizer_dir=str(work / "missing")), dict(init_from=str(run)), dict(data_dir=str(work / "nodata"))]
    for kw in bad:
        with pytest.raises((ValueError, FileNotFoundError)):
            train.train(tiny_cfg(kw.pop("data_dir", tiny_data_dir), run, overwrite=True, **kw))
    with pytest.raises(ValueError, match="does not fit this model"):        # resume with another shape
        train.train(tiny_cfg(tiny_data_dir, run, n_layer=3, resume="auto"))
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before                                                  # config.json included


def test_a_damaged_newest_checkpoint_is_skipped_on_resume(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    train.train(tiny_cfg(tiny_data_dir, run, max_iters=20, eval_interval=10, keep_ckpts=2))
    (run / "ckpt" / "step_000020" / "model.pt").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="step_000020.*using an older checkpoint"):
        assert load_model(run).cfg.n_layer == 2                            # evaluate/chat/export fall back too
    with pytest.warns(UserWarning, match="using an older checkpoint"):
        train.train(tiny_cfg(tiny_data_dir, run, max_iters=20, eval_interval=10, resume="auto"))
    steps = [r["step"] for r in metrics(run) if "loss" in r]
    assert steps == [5, 10, 15, 20, 15, 20]                                # resumed at 10, not at the damaged 20
    assert load_model(run) is not None and (run / "ckpt" / "latest").read_text() == "step_000020"
