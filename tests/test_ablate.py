"""ablate.py: the statistics against printed tables and a hand-computed interval; the plan's refusals; a micro
experiment end to end (2 arms x 2 seeds of a tiny model, interrupted and resumed), which is also an A/A test."""
import json
import math

import pytest

import ablate
from ablate import ExperimentError
from experiment_report import mean_ci, paired_diff, t_cdf, t_ppf

# two-sided 95% quantiles t_{0.975, df}, as printed in every t table
T_TABLE = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 10: 2.2281, 30: 2.0423, 120: 1.9799}


@pytest.mark.parametrize("df,value", sorted(T_TABLE.items()))
def test_t_quantile_matches_the_printed_table(df, value):
    assert t_ppf(0.975, df) == pytest.approx(value, abs=6e-5)


def test_t_distribution_closed_forms_and_symmetry():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)        # Cauchy
        assert t_ppf(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    for t in (-3.0, -0.4, 0.0, 1.7):
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
        assert t_cdf(t, 7) + t_cdf(-t, 7) == pytest.approx(1.0, abs=1e-12)
    assert t_ppf(0.975, 10 ** 6) == pytest.approx(1.959966, abs=2e-5)                      # -> the normal
    assert t_ppf(0.025, 4) == pytest.approx(-T_TABLE[4], abs=6e-5)
    with pytest.raises(ValueError):
        t_ppf(1.0, 3)


def test_mean_interval_by_hand():
    # values 1, 2, 3: mean 2, sd 1, half-width t_{.975,2} * 1 / sqrt(3) = 4.302653 / 1.732051 = 2.484138
    st = mean_ci([1.0, 2.0, 3.0])
    assert (st["mean"], st["sd"], st["n"]) == (2.0, 1.0, 3)
    assert st["half"] == pytest.approx(2.484138, abs=1e-6)
    assert (st["lo"], st["hi"]) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    assert math.isnan(mean_ci([5.0])["half"])


def test_paired_difference_verdicts_and_p_value():
    base = [1.20, 1.25, 1.50]
    arm = [1.00, 1.10, 1.30]              # differences -0.20, -0.15, -0.20
    d = paired_diff(arm, base)
    assert d["mean"] == pytest.approx(-0.183333, abs=1e-6) and d["sd"] == pytest.approx(0.028868, abs=1e-6)
    assert d["half"] == pytest.approx(4.302653 * 0.028868 / math.sqrt(3), abs=1e-5)
    t = d["mean"] / (d["sd"] / math.sqrt(3))                      # -11.0; df=2 has a closed-form tail
    assert d["p"] == pytest.approx(2 * (0.5 - abs(t) / (2 * math.sqrt(2 + t * t))), rel=1e-6)
    assert d["verdict"] == "better"
    assert paired_diff(base, arm)["verdict"] == "worse"
    # an unpaired view of the same numbers would see no difference: the arms' own intervals overlap
    a, b = mean_ci(arm), mean_ci(base)
    assert a["hi"] > b["lo"]
    assert paired_diff([1.0, 1.3, 0.9], [1.1, 1.0, 1.0])["verdict"] == "no difference"
    assert paired_diff([1.0], [1.1])["verdict"].startswith("n/a")
    assert paired_diff([1.0, 2.0], [1.0, 2.0])["verdict"] == "no difference"


# ----------------------------------------------------------------------------- the plan


@pytest.fixture
def tiny_val_dir(tmp_path):
    d = tmp_path / "val"
    d.mkdir()
    (d / "en.txt").write_text("".join(f"A validation sentence, number {i}.\n" for i in range(60)))
    (d / "th.txt").write_text("".join(f"ประโยคตรวจสอบ {i}\n" for i in range(60)))
    (d / "zh.txt").write_text("".join(f"验证句子第{i}号。\n" for i in range(60)))
    return d


def tiny(data_dir, val_dir, exp_dir, *extra):
    return [f"--data_dir={data_dir}", f"--val_data={val_dir}", f"--exp_dir={exp_dir}", "--vocab_size=300",
            "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--max_iters=4",
            "--warmup_iters=1", "--eval_interval=2", "--eval_tokens=64", "--log_interval=1", "--dtype=float32",
            "--final_eval_docs=40", "--split_eval_tokens=128", "--jobs=2", *extra]


def plan_of(argv):
    cfg = ablate.config.parse_args(ablate.AblateConfig, ablate.split_argv(argv))
    return ablate.make_plan(cfg)


def test_the_plan_refuses_what_cannot_be_compared(tiny_data_dir, tiny_val_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tiny(tiny_data_dir, tiny_val_dir, tmp_path / "exp")
    with pytest.raises(ExperimentError, match="token budgets"):
        plan_of(base + ["--arm", "A=", "--arm", "B=--max_iters=8"])
    plan = plan_of(base + ["--arm", "A=", "--arm", "B=--max_iters=8", "--allow_budget_mismatch=True"])
    assert [a.tokens for a in plan.arms.values()] == [4 * 4 * 32, 8 * 4 * 32]
    for bad, msg in ((["--arm", "A="], "at least two arms"), (["--arm", "A=", "--arm", "A=--seed_offset=1"], "two arms"),
                     (["--arm", "A=", "--arm", "B=--seed=3"], "set by ablate.py"),
                     (["--arm", "A=", "--arm", "B=--max_iter=3"], "max_iters"),
                     (["--arm", "A=", "--arm", "B=", "--baseline=C"], "not an arm"),
                     (["--arm", "A=", "--arm", "B=--n_head=3"], "multiple of n_head"),
                     (["curriculum", "--arm", "A="], "not both")):
        with pytest.raises(ExperimentError, match=msg):
            plan_of(base + bad)
    # paired seeds: run k of each arm uses first_seed + k (+ the arm's offset), each in exp_dir/<arm>/seed<s>
    plan = plan_of(base + ["--arm", "A=", "--arm", "B=--seed_offset=100", "--seeds=2"])
    assert [(r.arm, r.k, r.seed) for r in plan.runs] == [("A", 0, 1), ("A", 1, 2), ("B", 0, 101), ("B", 1, 102)]
    assert plan.runs[3].run_dir == tmp_path / "exp" / "B" / "seed102"


def test_match_flops_gives_a_bigger_vocabulary_fewer_steps(tiny_data_dir, tiny_val_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = plan_of(tiny(tiny_data_dir, tiny_val_dir, tmp_path / "exp", "--max_iters=40") +
                   ["--arm", "small=--vocab_size=300", "--arm", "big=--vocab_size=600", "--match_flops=True"])
    small, big = plan.arms["small"], plan.arms["big"]
    assert small.cfg.max_iters == 40 and big.cfg.max_iters < 40
    assert big.flops == pytest.approx(small.flops, rel=0.5 / big.cfg.max_iters + 1e-9)


def test_cli_errors_are_one_line(capsys):
    for argv in (["--jobz=2"], ["curriculum", "lr"], ["nope"]):
        with pytest.raises(SystemExit) as e:
            ablate.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        ablate.main(["--help"])
    assert e.value.code == 0 and "curriculum" in capsys.readouterr().out


# ----------------------------------------------------------------------------- a micro experiment, end to end


def test_micro_experiment_interrupted_resumed_and_an_aa_test(tiny_data_dir, tiny_val_dir, tmp_path, monkeypatch):
    """2 arms x 2 seeds, identical settings, arm B on other seeds (an A/A test). The first invocation stops every
    run at step 2 (stop_at_step: what a job time limit does), one run is then left as a kill before its first
    checkpoint leaves it; the second invocation resumes / restarts them and summarises; the third trains nothing."""
    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "exp"
    argv = tiny(tiny_data_dir, tiny_val_dir, exp) + ["--arm", "A=", "--arm", "B=--seed_offset=100", "--seeds=2"]
    cfg = ablate.config.parse_args(ablate.AblateConfig, ablate.split_argv(argv + ["--stop_at_step=2"]))
    with pytest.raises(ExperimentError, match="stopped before max_iters"):
        ablate.run(cfg)
    for run in ("A/seed1", "A/seed2", "B/seed101", "B/seed102"):
        assert (exp / run / "ckpt" / "latest").read_text() == "step_000002"
    # B/seed102 as a kill before its first checkpoint would leave it: config.json and a partial log, no ckpt/
    broken = exp / "B" / "seed102"
    keep = {n: (broken / n).read_bytes() for n in ("config.json",)}
    for p in sorted(broken.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    for n, b in keep.items():
        (broken / n).write_bytes(b)
    (broken / "metrics.jsonl").write_text('{"step": 1, "loss": 5.6}\n')
    assert ablate.run_state(broken, 4) == "started" and ablate.run_state(exp / "A" / "seed1", 4) == "checkpoint"

    res = ablate.main(argv)
    for run in ("A/seed1", "A/seed2", "B/seed101", "B/seed102"):
        assert ablate.run_state(exp / run, 4) == "complete"
    steps = [json.loads(l)["step"] for l in open(exp / "A" / "seed1" / "metrics.jsonl") if '"loss"' in l]
    assert steps == [1, 2, 3, 4]                                           # resumed at 2, not restarted
    assert "resumed from" in (exp / "logs" / "A" / "seed1.log").read_text()
    assert [json.loads(l)["step"] for l in open(broken / "metrics.jsonl") if '"loss"' in l] == [1, 2, 3, 4]
    saved = json.loads((exp / "results.json").read_text())
    for name in ("results.json", "EXPERIMENT.md", f"{saved['name']}.png"):
        assert (exp / name).stat().st_size > 0
    assert saved["arms"]["B"]["seeds"] == [101, 102] and saved["baseline"] == "A"
    assert set(saved["results"]) == {"main", "split"}
    # the A/A test: identical arms on other seeds differ by chance only, and the intervals are not degenerate
    diffs = res["results"]["main"]["diffs"]["B"]
    langs = ["en", "th", "zh"]
    assert sum(diffs[k]["verdict"] == "no difference" for k in langs) >= 2, {k: diffs[k] for k in langs}
    for k in langs + ["mean", "non_en"]:
        assert diffs[k]["half"] > 0 and res["results"]["main"]["arms"]["A"][k]["half"] > 0
        assert diffs[k]["values"] == pytest.approx([b - a for a, b in zip(res["results"]["main"]["arms"]["A"][k]["values"],
                                                                          res["results"]["main"]["arms"]["B"][k]["values"])])
    assert "| `B` |" in (exp / "EXPERIMENT.md").read_text()

    # a third invocation: nothing to train; other settings in the same dirs are refused, not overwritten
    before = {p: p.stat().st_mtime_ns for p in exp.rglob("metrics.jsonl")}
    ablate.main(argv)
    assert {p: p.stat().st_mtime_ns for p in exp.rglob("metrics.jsonl")} == before
    cfg = ablate.config.parse_args(ablate.AblateConfig, ablate.split_argv(argv + ["--learning_rate=1e-2"]))
    with pytest.raises(ExperimentError, match="other settings"):
        ablate.run(cfg)
