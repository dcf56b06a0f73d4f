"""Experiments that answer questions: named arms x seeds at one budget, with confidence intervals and paired
differences (PolyLM paper §3.2 curriculum, §3 tokenizer, §4 training recipe: the checks the paper leaves open).

An experiment is a set of *arms* (each a set of train.py overrides) trained on the same N seeds (a paired design:
run k of every arm uses seed first_seed + k, plus the arm's own `--seed_offset`), all at the same budget. Every run
is a plain train.py run dir, exp_dir/<arm>/seed<seed>/; the runs go in parallel processes (one torch thread each on
a small box), and an interrupted experiment continues where it stopped. Then every finished run is scored once more
on the fixed validation set (train.py's `val_data`, by default data/eval/ntrex_val: the same 1,000 NTREX sentences
in all 18 languages) and, for comparison, on the old per-language val split of the training data, and the results
are summarised over seeds:

    python ablate.py curriculum                     # a ready-made experiment (see EXPERIMENTS below / --help)
    python ablate.py --arm A="--curriculum=stage1" --arm B="--curriculum=polylm" --seeds=3 --max_iters=100
    python ablate.py --arm A= --arm B="--seed_offset=100" --seeds=3   # an A/A test: same settings, other seeds
    python ablate.py curriculum --report_only=True  # redo the tables and the figure from the finished runs
    python ablate.py --help                         # settings; any train.py key (--max_iters=...) is passed on

What it reports, for every language, for the mean over languages ("mean", the primary endpoint) and the mean over
the non-English ones ("non_en"):
  - each arm's mean final val bits per byte over its seeds, +- the 95% Student t confidence half-width
    (t_{0.975, n-1} * sd / sqrt(n));
  - for each arm but the baseline, the PAIRED difference arm - baseline over the seed index k (both runs of a pair
    see the same seed, so seed-to-seed variation common to both cancels), its 95% interval, a two-sided p-value, and
    a verdict: "better" (the interval is below 0: lower bpb), "worse" (above 0), or "no difference" (it spans 0).
    Per-language verdicts are 18 tests per arm: about one in 20 is "significant" by chance when nothing differs.

The statistics (Student t without scipy) and the report (EXPERIMENT.md, the figure) are experiment_report.py's;
tests/test_ablate.py checks them against printed t tables and a hand-computed interval. Running the runs (a run
dir's state, the pool of worker processes, each run trained by `python train.py` and then scored) is
experiment_runs.py's; this file decides what to run and sums it up.

Invariants:
  - every arm has the same budget, max_iters x batch_size x grad_accum x block_size tokens, or is refused
    (--allow_budget_mismatch=True to insist); --match_flops=True instead gives every arm the baseline's training
    FLOPs (model.flops_per_token: 6N + attention), scaling its max_iters — how the vocab experiment makes compute
    equal, since a bigger vocabulary makes each token dearer (its LM head) and each token longer (more bytes);
  - a run dir that holds a run with other settings is refused (--replace_runs=True to redo it); a finished run is
    never trained again; a run with a checkpoint continues with --resume=auto (bitwise, train.py's guarantee); a run
    killed before its first checkpoint is started over;
  - ready-made experiments share the runs of identical arms (Experiment.shared): the toy default is curriculum's
    polylm arm, nonen's 60% arm and vocab's 8K arm, all trained once in lr/b4-lr2e-3 (the lr sweep's winner); the
    settings are checked like any resumed run's, and a lock per run keeps two experiments from training one run at
    once;
  - outputs (results.json, EXPERIMENT.md, <name>.png) are written to a temp name and renamed; nothing is deleted.

results.json: its schema is in experiment_report.py, which writes the report from it.

Ready-made experiments (EXPERIMENTS): curriculum, nonen, vocab, lr — docs/EXPERIMENTS.md has their results.
"""
import dataclasses
import json
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import config
from common import LANGS, atomic_write_json
from experiment_report import fmt_s, mean_ci, paired_diff, pm, signed, t_ppf, write_outputs
from experiment_runs import cores, read_run_record, run_metrics, run_pool, run_state

ROOT = Path(__file__).resolve().parent


class ExperimentError(ValueError):
    """An experiment that cannot be run or summarised as asked: the message says why and what to do."""


# ============================================================================= the ready-made experiments

# PolyLM's natural, English-heavy corpus: ~68% English (the paper's stage 1 holds "the natural distribution", with
# non-English at ~30%: arXiv 2307.06018, abstract and §3.2). Our sample's languages are (nearly) equal-sized, so its
# natural mix is 87% non-English; this arm gives English its PolyLM share explicitly and splits the other 32% equally
# over the 17 languages (the paper's per-language split of those 32% is not reproduced here).
NATURAL_WEIGHTS = {"en": 0.68, **{lang: 0.32 / 17 for lang in LANGS if lang != "en"}}
NATURAL_STAGES = [{"name": "natural (PolyLM corpus: 68% English)", "frac": 1.0, "weights": NATURAL_WEIGHTS}]


def nonen_stages(share):
    """PolyLM's two stages with a stage-2 non-English share of `share` (10 points of it bilingual)."""
    return [{"name": "stage1 (30% non-English)", "frac": 0.8, "non_en": 0.3, "alpha": 1.0},
            {"name": f"stage2 ({share:.0%} non-English + bilingual)", "frac": 0.2, "non_en": share,
             "bilingual": 0.1, "alpha": 1.0}]


@dataclasses.dataclass
class Experiment:
    question: str                       # what the experiment answers, one sentence
    arms: dict                          # arm name -> train.py overrides (a list of --key=value)
    baseline: str                       # the arm the others are compared with
    seeds: int = 3                      # seeds per arm
    train_args: list = dataclasses.field(default_factory=list)   # settings every arm shares
    match_flops: bool = False           # give every arm the baseline's training FLOPs (scale max_iters)
    note: str = ""                      # how to read it
    shared: dict = dataclasses.field(default_factory=dict)   # arm -> "experiment/arm" whose runs it reuses (same
                                        # settings, checked): exp_dir/../<experiment>/<arm>/seed<s>


def _stages_arg(stages):
    return "--curriculum_stages=" + repr(stages)


EXPERIMENTS = {
    "curriculum": Experiment(
        question="Does PolyLM's two-stage curriculum beat one fixed mix at the same token budget?",
        arms={"stage1": ["--curriculum=stage1"], "polylm": ["--curriculum=polylm"],
              "natural": [_stages_arg(NATURAL_STAGES)]},
        baseline="stage1", shared={"polylm": "lr/b4-lr2e-3"},
        note="stage1 = PolyLM's stage-1 mix (70% English) held throughout; polylm = stage 1 for 80% of the tokens, "
             "then 60% non-English incl. 10% bilingual pairs (the toy's default, whose runs it shares with the lr "
             "experiment's b4-lr2e-3 arm: the same settings); natural = PolyLM's natural corpus mix (68% English, "
             "the other 32% split equally), as explicit stage weights."),
    "nonen": Experiment(
        question="How much non-English text should curriculum stage 2 hold (30/45/60/75%)?",
        arms={f"nonen{p}": ["--curriculum=polylm"] if p == 60 else [_stages_arg(nonen_stages(p / 100))]
              for p in (30, 45, 60, 75)},
        baseline="nonen60", shared={"nonen60": "lr/b4-lr2e-3"},
        note="Stage 1 is PolyLM's (30% non-English) for 80% of the tokens; stage 2 (the last 20%) holds the given "
             "non-English share, 10 points of it bilingual pairs. nonen60 is PolyLM's choice (curriculum=polylm, the "
             "toy's default: it shares the runs of the curriculum experiment's polylm arm)."),
    "vocab": Experiment(
        question="Which vocabulary size (4K/8K/16K/32K) gives the lowest bits per byte at equal compute?",
        arms={f"v{k}k": [f"--vocab_size={k * 1024}"] for k in (4, 8, 16, 32)},
        baseline="v8k", match_flops=True, shared={"v8k": "lr/b4-lr2e-3"},
        note="Equal compute = equal training FLOPs (6N + attention per token, N including the tied embedding / LM "
             "head): a bigger vocabulary costs more per token, so its arm trains for fewer steps; the tokens it "
             "sees are longer. Bits per byte does not depend on the tokenizer. Each tokenizer is trained once on "
             "data/sample (3.5 MB) and cached. v8k is the toy's default (it shares the curriculum experiment's polylm "
             "runs: lr/b4-lr2e-3)."),
    "lr": Experiment(
        question="Which peak learning rate and batch size make the toy learn most in its budget?",
        arms={"lr2e-3": ["--learning_rate=2e-3", "--min_lr=2e-4"],
              "lr4e-3": ["--learning_rate=4e-3", "--min_lr=4e-4"],
              "lr8e-3": ["--learning_rate=8e-3", "--min_lr=8e-4"],
              "b8-lr1e-3": ["--batch_size=8", "--max_iters=300", "--warmup_iters=30", "--eval_interval=100",
                            "--learning_rate=1e-3", "--min_lr=1e-4"],
              "b8-lr2e-3": ["--batch_size=8", "--max_iters=300", "--warmup_iters=30", "--eval_interval=100",
                            "--learning_rate=2e-3", "--min_lr=2e-4"],
              "b8-lr4e-3": ["--batch_size=8", "--max_iters=300", "--warmup_iters=30", "--eval_interval=100",
                            "--learning_rate=4e-3", "--min_lr=4e-4"],
              "b4-lr2e-3": ["--batch_size=4", "--max_iters=600", "--warmup_iters=60", "--eval_interval=200",
                            "--learning_rate=2e-3", "--min_lr=2e-4"]},
        baseline="lr2e-3", seeds=2,
        train_args=["--batch_size=16", "--max_iters=150", "--warmup_iters=15", "--eval_interval=50"],
        note="lr2e-3 is the toy as it was before this sweep (batch 16 x 150 steps); the sweep chose b4-lr2e-3, "
             "today's toy default (its runs are shared by the curriculum, nonen and vocab experiments). All arms "
             "see the same 614K tokens; b8 takes twice the steps at half the batch (b4: 4x), warmup 10% of the "
             "steps. min_lr = peak / 10 throughout."),
}



def _repo_path(rel):
    """A path of this repository, as short as it can be written from the current directory."""
    p = ROOT / rel
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


# what every experiment run shares unless overridden: the toy recipe, the fixed validation set, no samples
def base_train_args():
    return [_repo_path("config/toy.py"), f"--val_data={_repo_path('data/eval/ntrex_val')}", "--eval_tokens=2048",
            "--samples=False"]
INVOCATION_KEYS = {"out_dir", "resume", "overwrite", "stop_at_step"}   # may differ between invocations of a run
MANAGED_KEYS = {"out_dir", "seed", "resume", "overwrite"}               # ablate.py sets these itself


# ============================================================================= settings

@dataclasses.dataclass
class AblateConfig:
    experiment: str = ""                # a ready-made experiment: curriculum | nonen | vocab | lr ('' = the --arm ones)
    arm: list = dataclasses.field(default_factory=list)   # NAME="--key=value ..." train.py overrides, one per --arm
    train_args: list = dataclasses.field(default_factory=list)  # settings of every arm (normally given as --key=value)
    seeds: int = 0                      # seeds per arm (0 = the experiment's default, 3 for --arm experiments)
    first_seed: int = 1                 # run k of an arm uses seed first_seed + k (+ the arm's --seed_offset)
    baseline: str = ""                  # the arm the others are compared with ('' = the experiment's, or the first)
    exp_dir: str = ""                   # where runs and results go ('' = out/ablate/<experiment or 'custom'>)
    name: str = ""                      # the experiment's name in reports ('' = experiment, or exp_dir's name)
    jobs: int = 0                       # runs in parallel (0 = the usable CPU cores)
    threads: int = 0                    # torch threads per run (0 = cores // jobs, at least 1)
    allow_budget_mismatch: bool = False  # run arms whose token budgets differ anyway
    match_flops: bool = False           # scale each arm's max_iters to the baseline's training FLOPs
    final_eval_docs: int = 150          # documents per language of the final score on val_data (NTREX: the same
                                        # sentences in all 18 languages, for every tokenizer; 0 = all 1,000)
    split_eval_tokens: int = 2048       # tokens per language of the score on the old val split (0 = skip it)
    replace_runs: bool = False          # redo run dirs that hold runs with other settings (else: refuse)
    report_only: bool = False           # train nothing: summarise the finished runs
    dry_run: bool = False               # print the plan (runs, budgets, commands) and stop


# ============================================================================= the plan

@dataclasses.dataclass
class Arm:
    name: str
    overrides: list                     # train.py argv of this arm (without --seed_offset)
    seed_offset: int
    cfg: object                         # the resolved pretraining.TrainConfig of seed 0 (out_dir/seed are per run)
    tokens: int = 0                     # max_iters x batch x accum x block
    flops: float = 0.0                  # training FLOPs of one run


@dataclasses.dataclass
class Run:
    arm: str
    k: int                              # seed index (the pairing key)
    seed: int
    run_dir: Path
    argv: list                          # train.py argv of the run
    cfg: object                         # its pretraining.TrainConfig


@dataclasses.dataclass
class Plan:
    name: str
    question: str
    note: str
    exp_dir: Path
    arms: dict                          # name -> Arm, in order
    baseline: str
    seeds: int
    first_seed: int
    runs: list
    common: list                        # train argv shared by the arms


def _arm_argv(spec, where):
    """'--a=1 --b=2' or ['--a=1', ...] -> (argv, seed_offset); --seed_offset is ablate's, the rest train.py's."""
    tokens = shlex.split(spec) if isinstance(spec, str) else list(spec)
    out, offset = [], 0
    for tok in tokens:
        key = tok[2:].split("=", 1)[0].replace("-", "_") if tok.startswith("--") else ""
        if key == "seed_offset":
            try:
                offset = int(tok.split("=", 1)[1])
            except (IndexError, ValueError):
                raise ExperimentError(f"{where}: write --seed_offset=K with an integer K (got {tok!r})") from None
        elif key in MANAGED_KEYS:
            raise ExperimentError(f"{where}: --{key} is set by ablate.py for every run (seeds: --seeds, "
                                  f"--first_seed, --seed_offset=K in an arm; dirs: --exp_dir)")
        else:
            out.append(tok)
    return out, offset


def _parse_train(argv, where):
    import pretraining
    try:
        cfg = config.parse_args(pretraining.TrainConfig, argv, prog="train.py")
    except config.ConfigError as e:
        raise ExperimentError(f"{where}: {e}") from None
    return cfg


def _check_train(cfg, where):
    """train.py's own checks of the settings, now, so that a bad arm fails before any run starts."""
    import pretraining
    import runtime
    try:
        runtime.check_run_config(cfg)
        pretraining.check_settings(cfg)
    except (ValueError, OSError) as e:
        raise ExperimentError(f"{where}: {e}") from None


def tokens_of(cfg):
    return cfg.max_iters * cfg.batch_size * cfg.grad_accum * cfg.block_size


def flops_per_token(cfg):
    """Training FLOPs per token of a train config's model (model.flops_per_token), built on the meta device."""
    import torch
    from model import PolyLM, preset
    over = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd") if getattr(cfg, k)}
    with torch.device("meta"):
        m = PolyLM(preset(cfg.preset, **over, block_size=cfg.block_size, vocab_size=cfg.vocab_size))
    return m.flops_per_token(cfg.block_size)


def _arm_specs(cfg):
    """(name, question, note, arms {name: spec}, baseline, seeds, common argv, match_flops, shared) from the
    settings."""
    user_arms = {}
    for a in cfg.arm:
        name, eq, spec = str(a).partition("=")
        name = name.strip()
        if not eq or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
            raise ExperimentError(f"--arm {a!r}: write --arm NAME=\"--key=value ...\" (NAME of letters, digits, "
                                  f"'_.+-'; an empty override list is the train.py defaults)")
        if name in user_arms:
            raise ExperimentError(f"--arm {name}: two arms have this name")
        user_arms[name] = spec
    if cfg.experiment:
        if cfg.experiment not in EXPERIMENTS:
            raise ExperimentError(f"unknown experiment {cfg.experiment!r}: choose {', '.join(EXPERIMENTS)}, or give "
                                  f"arms with --arm NAME=\"--key=value ...\"")
        if user_arms:
            raise ExperimentError(f"give either an experiment ({cfg.experiment}) or --arm arms, not both")
        e = EXPERIMENTS[cfg.experiment]
        return (cfg.name or cfg.experiment, e.question, e.note, e.arms, cfg.baseline or e.baseline,
                cfg.seeds or e.seeds, base_train_args() + e.train_args + cfg.train_args,
                e.match_flops or cfg.match_flops, e.shared)
    if len(user_arms) < 2:
        raise ExperimentError("an experiment needs at least two arms: --arm A=\"...\" --arm B=\"...\", or a "
                              f"ready-made experiment ({', '.join(EXPERIMENTS)})")
    name = cfg.name or (Path(cfg.exp_dir).name if cfg.exp_dir else "custom")
    return (name, "", "", user_arms, cfg.baseline or next(iter(user_arms)), cfg.seeds or 3,
            base_train_args() + cfg.train_args, cfg.match_flops, {})


def make_plan(cfg):
    """Resolve and check every arm and run before anything is trained."""
    name, question, note, specs, baseline, seeds, common, match_flops, shared = _arm_specs(cfg)
    if baseline not in specs:
        raise ExperimentError(f"baseline={baseline!r} is not an arm (arms: {', '.join(specs)})")
    if seeds < 1 or cfg.first_seed < 0:
        raise ExperimentError(f"seeds={seeds} must be >= 1 and first_seed={cfg.first_seed} >= 0")
    common_argv, off = _arm_argv(common, "train settings")
    if off:
        raise ExperimentError("--seed_offset belongs inside an arm (--arm B=\"--seed_offset=100\")")
    arms = {}
    for arm_name, spec in specs.items():
        argv, offset = _arm_argv(spec, f"arm {arm_name}")
        tcfg = _parse_train(common_argv + argv, f"arm {arm_name}")
        arms[arm_name] = Arm(arm_name, argv, offset, tcfg)
    if match_flops:
        ref = arms[baseline]
        ref_flops = tokens_of(ref.cfg) * flops_per_token(ref.cfg)
        for a in arms.values():
            per_step = a.cfg.batch_size * a.cfg.grad_accum * a.cfg.block_size * flops_per_token(a.cfg)
            iters = max(1, round(ref_flops / per_step))
            if iters != a.cfg.max_iters:
                a.overrides = a.overrides + [f"--max_iters={iters}"]
                a.cfg = _parse_train(common_argv + a.overrides, f"arm {a.name}")
    for a in arms.values():
        _check_train(a.cfg, f"arm {a.name}")
        a.tokens, a.flops = tokens_of(a.cfg), tokens_of(a.cfg) * flops_per_token(a.cfg)
    if match_flops:
        ref = arms[baseline]
        for a in arms.values():
            step_flops = a.flops / a.cfg.max_iters
            if abs(a.flops - ref.flops) > step_flops / 2 + 1:
                raise ExperimentError(f"arm {a.name}: cannot match the baseline's FLOPs within half a step")
    elif not cfg.allow_budget_mismatch:
        budgets = {a.name: a.tokens for a in arms.values()}
        if len(set(budgets.values())) > 1:
            shown = ", ".join(f"{n}: {t:,}" for n, t in budgets.items())
            raise ExperimentError(f"the arms' token budgets (max_iters x batch_size x grad_accum x block_size) "
                                  f"differ ({shown}); make them equal, or pass --allow_budget_mismatch=True "
                                  f"(or --match_flops=True for equal compute)")
    exp_dir = Path(cfg.exp_dir or f"out/ablate/{cfg.experiment or 'custom'}")
    runs = []
    for a in arms.values():
        for k in range(seeds):
            seed = cfg.first_seed + k + a.seed_offset
            run_dir = (exp_dir.parent / shared[a.name] if a.name in shared else exp_dir / a.name) / f"seed{seed}"
            argv = common_argv + a.overrides + [f"--seed={seed}", f"--out_dir={run_dir}"]
            runs.append(Run(a.name, k, seed, run_dir, argv, dataclasses.replace(a.cfg, seed=seed,
                                                                                out_dir=str(run_dir))))
    seen = {}
    for r in runs:
        if r.run_dir in seen:
            raise ExperimentError(f"arms {seen[r.run_dir]} and {r.arm} would share {r.run_dir}; give them other "
                                  f"names or seed offsets")
        seen[r.run_dir] = r.arm
    return Plan(name, question, note, exp_dir, arms, baseline, seeds, cfg.first_seed, runs, common_argv)


# ============================================================================= a run dir against the plan

def settings_mismatch(run, saved):
    """Keys whose value in a run dir's config.json differs from what this experiment asks ('' when none)."""
    want = json.loads(json.dumps(dataclasses.asdict(run.cfg)))
    diffs = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in want.items()
             if k not in INVOCATION_KEYS and saved.get(k) != v]
    return "; ".join(diffs[:3]) + (" ..." if len(diffs) > 3 else "")


def eval_request(plan_cfg, run):
    """What the final scoring of a run must be (compared with what its ablate.json holds)."""
    return {"ckpt": f"step_{run.cfg.max_iters:06d}", "val_data": run.cfg.val_data,
            "final_eval_docs": plan_cfg.final_eval_docs, "split_eval_tokens": plan_cfg.split_eval_tokens}


# ============================================================================= the experiment

def _experiment_file(plan):
    return plan.exp_dir / "experiment.json"


def prepare_data(plan, say=print):
    """Train each distinct tokenizer and tokenize the data once, before parallel runs would race to do it."""
    import bpe
    import pretraining
    done = set()
    for a in plan.arms.values():
        c = a.cfg
        key = (c.vocab_size, c.data_dir, c.tokenizer_dir, c.shards, c.init_from)
        if key in done or c.shards:
            continue
        done.add(key)
        tok_dir = pretraining.prepare_tokenizer(c, say)
        enc = bpe.load(tok_dir)
        pretraining.prepare_shards(c, enc, bpe.tokenizer_hash(tok_dir), tok_dir, say)


def run_experiment(cfg, plan, say=print):
    """Train what is missing (in parallel), score what is unscored; returns this invocation's timing record."""
    exp_file = _experiment_file(plan)
    todo = []
    for r in plan.runs:
        state = run_state(r.run_dir, r.cfg.max_iters)
        mode = {"absent": "fresh", "started": "overwrite", "checkpoint": "resume", "complete": "eval_only"}[state]
        if state in ("checkpoint", "complete") and (r.run_dir / "config.json").exists():
            why = settings_mismatch(r, json.loads((r.run_dir / "config.json").read_text())["train"])
            if why:
                if not cfg.replace_runs:
                    raise ExperimentError(f"{r.run_dir} holds a run with other settings ({why}); use another "
                                          f"--exp_dir, or --replace_runs=True to train it again")
                mode = "overwrite"
        if mode == "eval_only" and read_run_record(r.run_dir).get("eval") == eval_request(cfg, r):
            continue
        todo.append((r, mode))
    n_jobs = max(1, min(cfg.jobs or cores(), len(todo) or 1))
    threads = cfg.threads or max(1, cores() // n_jobs)
    start, load_start = time.time(), os.getloadavg()
    inv = {"start": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": len(todo), "jobs": n_jobs, "threads": threads,
           "load_start": [round(x, 2) for x in load_start]}
    if not todo:
        say(f"{plan.name}: every run is finished and scored")
        return None
    modes = {m: sum(1 for _, mm in todo if mm == m) for m in ("fresh", "resume", "overwrite", "eval_only")}
    say(f"{plan.name}: {len(todo)} of {len(plan.runs)} runs to do ({', '.join(f'{v} {k}' for k, v in modes.items() if v)}"
        f"), {n_jobs} at a time, {threads} thread(s) each; load average {load_start[0]:.2f}")
    if cfg.report_only:
        raise ExperimentError(f"report_only: {len(todo)} runs are not finished or not scored (e.g. "
                              f"{todo[0][0].run_dir}); run without --report_only to finish them")
    prepare_data(plan, say)
    specs = [{"label": f"{r.arm} seed{r.seed} ({mode})", "argv": r.argv, "run_dir": str(r.run_dir),
              "max_iters": r.cfg.max_iters, "mode": mode, "threads": threads, "eval": eval_request(cfg, r),
              "log": str(plan.exp_dir / "logs" / r.arm / f"seed{r.seed}.log")} for r, mode in todo]
    try:
        outcomes, loads = run_pool(specs, plan.exp_dir / "jobs", n_jobs, threads, say)
    except KeyboardInterrupt:
        _record_invocation(exp_file, {**inv, "wall_s": time.time() - start, "interrupted": True})
        raise ExperimentError("interrupted: the runs keep their checkpoints; run the same command again to "
                              "continue") from None
    inv.update(wall_s=time.time() - start, load_mean=round(float(np.mean(loads)), 2),
               load_max=round(float(np.max(loads)), 2), load_end=[round(x, 2) for x in os.getloadavg()])
    _record_invocation(exp_file, inv)
    failed = [s for s in specs if outcomes.get(s["label"], {}).get("outcome") not in ("complete", "stopped")]
    if failed:
        raise ExperimentError(f"{len(failed)} of {len(specs)} runs failed ({', '.join(s['label'] for s in failed[:3])}"
                              f"); see {', '.join(s['log'] for s in failed[:3])}; fix and run the same command again")
    stopped = [r for r, _ in todo if run_state(r.run_dir, r.cfg.max_iters) != "complete"]
    if stopped:
        raise ExperimentError(f"{len(stopped)} of {len(todo)} runs stopped before max_iters (e.g. {stopped[0].run_dir}, "
                              f"stop_at_step); run again without stop_at_step to continue them")
    say(f"{plan.name}: trained and scored {len(todo)} runs in {fmt_s(inv['wall_s'])} (load average mean "
        f"{inv['load_mean']:.2f}, max {inv['load_max']:.2f} on {cores()} cores)")
    return inv


def _record_invocation(path, inv):
    rec = json.loads(path.read_text()) if path.exists() else {"invocations": []}
    rec["invocations"].append(inv)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, rec)


# ============================================================================= the summary

def _keys(langs):
    return list(langs) + ["mean", "non_en"]


def _with_aggregates(bpb):
    out = dict(bpb)
    out["mean"] = float(np.mean(list(bpb.values())))
    non_en = [v for k, v in bpb.items() if k != "en"]
    out["non_en"] = float(np.mean(non_en)) if non_en else float("nan")
    return out


def _curve(run):
    """{step: val_bpb dict} of a run's in-training evals (the last record of a step wins: a resumed run repeats)."""
    return {r["step"]: r["val_bpb"] for r in run_metrics(run.run_dir) if "val_bpb" in r}


def _val_set_info(cfg, plan, s, run_scores):
    """What a val set is, and how much text each language's score covers (mean over runs and languages)."""
    c = plan.runs[0].cfg
    if s == "main" and c.val_data:
        info = {"what": c.val_data, "docs_per_lang": cfg.final_eval_docs or "all", "label": Path(c.val_data).name}
    else:
        info = {"what": f"the val split of {c.data_dir} (val_frac={c.val_frac}, {cfg.split_eval_tokens} tokens)",
                "tokens_cap": cfg.split_eval_tokens, "label": f"old val split ({cfg.split_eval_tokens} tok)"}
    info["tokens_per_lang"] = float(np.mean([v for sc in run_scores for v in sc["tokens"].values()]))
    info["bytes_per_lang"] = float(np.mean([v for sc in run_scores for v in sc.get("bytes", {}).values()] or [0]))
    return info


def summarise(cfg, plan):
    """The results dict (schema in the module docstring) from the finished, scored runs."""
    by_arm = {a: [r for r in plan.runs if r.arm == a] for a in plan.arms}
    scores, records = {}, {}
    for r in plan.runs:
        rec = read_run_record(r.run_dir)
        if "scores" not in rec or rec.get("eval") != eval_request(cfg, r):
            raise ExperimentError(f"{r.run_dir} is not finished and scored; run the experiment to finish it")
        records[r.run_dir] = rec
        scores[r.run_dir] = rec["scores"]
    sets = list(next(iter(scores.values())))
    langs = [l for l in LANGS if l in next(iter(scores.values()))["main"]["val_bpb"]]
    results = {}
    for s in sets:
        vals = {a: [_with_aggregates(scores[r.run_dir][s]["val_bpb"]) for r in runs] for a, runs in by_arm.items()}
        keys = [k for k in _keys(langs) if all(k in v for vs in vals.values() for v in vs)]
        arms = {a: {k: mean_ci([v[k] for v in vs]) for k in keys} for a, vs in vals.items()}
        base = vals[plan.baseline]
        diffs = {a: {k: paired_diff([v[k] for v in vs], [b[k] for b in base]) for k in keys}
                 for a, vs in vals.items() if a != plan.baseline}
        results[s] = {"arms": arms, "diffs": diffs}
    ci_width = {}
    for s, res in results.items():
        lang_keys = [k for k in langs if k in next(iter(res["arms"].values()))]
        ci_width[s] = {
            "arm_mean_half": float(np.mean([st["mean"]["half"] for st in res["arms"].values()])),
            "arm_lang_half": float(np.mean([st[k]["half"] for st in res["arms"].values() for k in lang_keys])),
            "diff_mean_half": float(np.mean([d["mean"]["half"] for d in res["diffs"].values()])),
            "diff_lang_half": float(np.mean([d[k]["half"] for d in res["diffs"].values() for k in lang_keys]))}
    curves = {}
    for a, runs in by_arm.items():
        per_run = [_curve(r) for r in runs]
        steps = sorted(set.intersection(*(set(c) for c in per_run)))
        max_iters = plan.arms[a].cfg.max_iters
        entry = {"x": [s / max_iters for s in steps], "steps": steps}
        for k in _keys(langs):
            pts = [[_with_aggregates(c[s]).get(k, float("nan")) for c in per_run] for s in steps]
            stats = [mean_ci(p) for p in pts]
            entry[k] = {"mean": [st["mean"] for st in stats], "half": [st["half"] for st in stats]}
        curves[a] = entry
    exp = json.loads(_experiment_file(plan).read_text()) if _experiment_file(plan).exists() else {"invocations": []}
    df = plan.seeds - 1
    return {
        "schema": 1, "name": plan.name, "question": plan.question, "note": plan.note,
        "command": _COMMAND,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"), "baseline": plan.baseline, "seeds": plan.seeds,
        "first_seed": plan.first_seed, "confidence": 0.95,
        "t_quantile": {"df": df, "value": t_ppf(0.975, df) if df > 0 else float("nan"),
                       "method": "Student t CDF via the regularized incomplete beta (continued fraction), "
                                 "quantile by bisection"},
        "common": plan.common,
        "arms": {a: {"overrides": arm.overrides, "seed_offset": arm.seed_offset,
                     "seeds": [r.seed for r in by_arm[a]], "run_dirs": [str(r.run_dir) for r in by_arm[a]],
                     "max_iters": arm.cfg.max_iters, "batch_size": arm.cfg.batch_size, "tokens": arm.tokens,
                     "train_flops": arm.flops, "vocab_size": arm.cfg.vocab_size,
                     "train_wall_s": [records[r.run_dir].get("train_wall_s") for r in by_arm[a]]}
                 for a, arm in plan.arms.items()},
        "val_sets": {s: _val_set_info(cfg, plan, s, [scores[r.run_dir][s] for r in plan.runs]) for s in sets},
        "results": results, "ci_width": ci_width, "curves": curves,
        "timing": {"wall_s": float(sum(i.get("wall_s", 0) for i in exp["invocations"])),
                   "invocations": exp["invocations"], "cpu": config.cpu_name(), "cores": cores()},
    }


def print_plan(plan, say=print):
    say(f"experiment {plan.name}: {len(plan.arms)} arms x {plan.seeds} seeds = {len(plan.runs)} runs in {plan.exp_dir}/")
    for a in plan.arms.values():
        say(f"  {a.name}{' (baseline)' if a.name == plan.baseline else ''}: {' '.join(a.overrides) or '(defaults)'}"
            f"{f'  seed_offset={a.seed_offset}' if a.seed_offset else ''}; {a.cfg.max_iters} steps, "
            f"{a.tokens:,} tokens, {a.flops / 1e12:.1f} TFLOP")
    for r in plan.runs:
        say(f"  {r.arm} seed{r.seed}: {run_state(r.run_dir, r.cfg.max_iters)}  python train.py "
            + " ".join(shlex.quote(x) for x in r.argv))


def run(cfg: AblateConfig):
    plan = make_plan(cfg)
    if cfg.dry_run:
        return print_plan(plan)
    if not cfg.report_only:
        run_experiment(cfg, plan)
    res = summarise(cfg, plan)
    paths = write_outputs(res, plan.exp_dir)
    main = res["results"]["main"]
    print(f"\n{plan.name}: mean val bpb over languages ({res['seeds']} seeds, 95% CI)")
    for a, st in main["arms"].items():
        d = main["diffs"][a]["mean"] if a in main["diffs"] else None
        print(f"  {a:<14} {pm(st['mean'], 4)}" + (f"   vs {plan.baseline}: {signed(d, 4)} "
                                                   f"(p={d['p']:.3f}, {d['verdict']})" if d else "   (baseline)"))
    print("wrote " + ", ".join(map(str, paths)))
    return res


# ============================================================================= command line

HELP_TAIL = """
experiments (python ablate.py NAME):
""" + "\n".join(f"  {k:<11} {e.question} ({len(e.arms)} arms x {e.seeds} seeds; baseline {e.baseline})"
                for k, e in EXPERIMENTS.items()) + """

Any other --key=value is a train.py setting for every arm (python train.py --help); every experiment run starts from
""" + " ".join(base_train_args()) + """.
Arms: --arm NAME="--key=value ..." (train.py keys, plus --seed_offset=K to shift that arm's seeds)."""


def split_argv(argv):
    """The command line -> ablate.py's argv: the experiment name, --arm NAME=... (repeatable) and train.py
    settings are gathered into the experiment/arm/train_args fields; every other key must be ablate.py's."""
    import pretraining
    own = {f.name for f in dataclasses.fields(AblateConfig)}
    train_keys = {f.name for f in dataclasses.fields(pretraining.TrainConfig)}
    out, arms, train_args, experiment = [], [], [], []
    i = 0
    while i < len(argv):
        arg = config.underscore_key(argv[i])
        if arg == "--arm":
            if i + 1 == len(argv):
                raise config.ConfigError("--arm needs a value: --arm NAME=\"--key=value ...\"")
            arms.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--arm="):
            arms.append(arg[len("--arm="):])
        elif arg.startswith("--"):
            key = arg[2:].partition("=")[0]
            if key in own and key not in ("arm", "train_args"):
                if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--") and \
                        not isinstance(getattr(AblateConfig(), key), bool):
                    arg = f"{arg}={argv[i + 1]}"
                    i += 1
                out.append(arg)
            elif key in train_keys:
                if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    arg = f"{arg}={argv[i + 1]}"
                    i += 1
                train_args.append(arg)
            else:
                raise config.ConfigError(f"unknown key {key!r} (from {argv[i]!r}): neither ablate.py's nor "
                                         f"train.py's.{config.did_you_mean(key, sorted(own | train_keys))}")
        elif arg.endswith(".py"):
            train_args.append(arg)
        else:
            experiment.append(arg)
        i += 1
    if len(experiment) > 1:
        raise config.ConfigError(f"one experiment at a time (got {', '.join(experiment)})")
    if experiment:
        out.append(f"--experiment={experiment[0]}")
    if arms:
        out.append("--arm=" + repr(arms))
    if train_args:
        out.append("--train_args=" + repr(train_args))
    return out


_COMMAND = ""                           # the command line main() was given, for the reports


def main(argv=None):
    global _COMMAND
    argv = sys.argv[1:] if argv is None else list(argv)
    _COMMAND = "python ablate.py " + " ".join(shlex.quote(a) for a in argv)
    if any(a in ("-h", "--help") for a in argv):
        print(config.usage(AblateConfig, "ablate.py").replace("usage: python ablate.py [config/x.py ...] "
                                                                "[--key=value ...]",
                                                                "usage: python ablate.py [EXPERIMENT] [--arm NAME=\"...\" ...] "
                                                                "[--key=value ...]") + "\n" + HELP_TAIL)
        raise SystemExit(0)
    try:
        own_argv = split_argv(argv)
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    try:
        return config.run_cli(run, AblateConfig, own_argv, prog="ablate.py")
    except BrokenPipeError:             # `python ablate.py ... --dry_run=True | head`
        sys.stderr.close()
        raise SystemExit(0)


if __name__ == "__main__":
    main()
