"""The statistics and the report of an experiment (ablate.py): Student t intervals and paired differences without
scipy, then EXPERIMENT.md and the figure from a results dict, which ablate.py also writes as results.json.

Statistics, stated once:
  - an arm's mean over n seeds is reported with its 95% Student t half-width, t_{0.975, n-1} * sd / sqrt(n);
  - a difference arm - baseline is PAIRED over the seed index k (run k of every arm uses the same seed), so
    seed-to-seed variation common to both arms cancels: the interval is that of the n differences, the p-value the
    two-sided t test of "mean difference = 0", and the verdict "better" (interval below 0: lower bpb), "worse" (above
    0) or "no difference" (it spans 0);
  - the Student t CDF comes from the regularized incomplete beta function (continued fraction, Numerical Recipes
    §6.4 / Lentz's method), its quantile from bisection; tests/test_ablate.py checks both against printed t tables.

results.json (schema 1):
  {"schema": 1, "name", "question", "command", "created", "baseline", "seeds", "first_seed", "confidence": 0.95,
   "t_quantile": {"df", "value", "method"},
   "arms": {arm: {"overrides": [argv], "seed_offset", "seeds": [int], "run_dirs": [str], "max_iters",
                  "tokens": budget in tokens, "train_flops", "train_wall_s": [per run]}},
   "val_sets": {set: {"what", "label", "tokens_per_lang", "bytes_per_lang", ...}},   # set = "main" (val_data:
        # its first final_eval_docs documents per language) and "split" (the old val split, split_eval_tokens)
   "results": {set: {"arms": {arm: {key: stat}}, "diffs": {arm: {key: diff}}}},
        # key = a language code, "mean" (all languages) or "non_en"
        # stat = {"mean", "sd", "n", "half", "lo", "hi", "values": [per seed]}
        # diff = stat of arm - baseline over the seed pairs + {"p", "verdict"}
   "ci_width": {set: {"arm_mean_half", "arm_lang_half", "diff_mean_half", "diff_lang_half"}},  # averages
   "curves": {arm: {"x": [fraction of the budget], key: {"mean": [...], "half": [...]}}},  # in-training evals
   "timing": {"wall_s", "invocations": [{"start", "wall_s", "runs", "jobs", "threads", "load_start",
                                          "load_mean", "load_max", "load_end"}], "cpu", "cores"}}
"""
import math
import os
from pathlib import Path

import numpy as np

from common import LANGS, atomic_write_json, atomic_write_text, pyplot


def fmt_s(s):
    """Seconds as '3m07s' (or '42s')."""
    return f"{int(s // 60)}m{int(s % 60):02d}s" if s >= 60 else f"{s:.0f}s"


# ============================================================================= statistics (Student t, no scipy)

def _betacf(a, b, x, eps=3e-16, max_iter=500):
    """The continued fraction of the incomplete beta function (Lentz's method, Numerical Recipes §6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, max_iter + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a, b, x):
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom: the upper tail is I_{df/(df+t^2)}(df/2, 1/2) / 2."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_ppf(p, df):
    """The p-quantile of Student's t (bisection on t_cdf, to float precision)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_ppf needs 0 < p < 1 and df > 0 (got p={p}, df={df})")
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values, level=0.95):
    """{"mean", "sd", "n", "half", "lo", "hi", "values"}: the Student t interval of the mean (half = NaN for n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    sd = float(x.std(ddof=1)) if n > 1 else float("nan")
    half = t_ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "sd": sd, "n": n, "half": half, "lo": mean - half, "hi": mean + half,
            "values": [float(v) for v in x]}


def paired_diff(arm, base, level=0.95):
    """The paired difference arm - base (lists in the same seed order): mean_ci of the differences + a two-sided
    p-value of 'mean difference = 0' and a verdict (lower bpb is better)."""
    if len(arm) != len(base):
        raise ValueError(f"paired_diff needs as many values in both arms ({len(arm)} vs {len(base)})")
    d = mean_ci(np.asarray(arm, dtype=np.float64) - np.asarray(base, dtype=np.float64), level)
    n = d["n"]
    if n < 2:
        d.update(p=float("nan"), verdict="n/a (needs >= 2 seeds)")
    elif d["sd"] == 0:
        d.update(p=1.0 if d["mean"] == 0 else 0.0,
                 verdict="no difference" if d["mean"] == 0 else "degenerate (zero variance)")
    else:
        t = d["mean"] / (d["sd"] / math.sqrt(n))
        d["p"] = 2.0 * (1.0 - t_cdf(abs(t), n - 1))
        d["verdict"] = "better" if d["hi"] < 0 else "worse" if d["lo"] > 0 else "no difference"
    return d


# ============================================================================= report and figure

def pm(st, digits=3):
    if st["n"] < 2 or not math.isfinite(st["half"]):
        return f"{st['mean']:.{digits}f}"
    return f"{st['mean']:.{digits}f} ± {st['half']:.{digits}f}"


def signed(d, digits=3):
    h = f" ± {d['half']:.{digits}f}" if math.isfinite(d["half"]) else ""
    return f"{d['mean']:+.{digits}f}{h}"


VERDICT_MARK = {"better": "better", "worse": "worse", "no difference": "="}


def _docs(info):
    return f"{info['docs_per_lang']} documents = " if "docs_per_lang" in info else ""


def render_report(res, figure_name):
    """EXPERIMENT.md: the question, the arms, the tables with intervals and verdicts, the time it took."""
    main = res["results"]["main"]
    arms = list(res["arms"])
    base = res["baseline"]
    langs = [k for k in LANGS if k in main["arms"][base]]
    t = res["t_quantile"]
    vs = res["val_sets"]
    main_name = vs["main"]["label"]
    lines = [f"# Experiment `{res['name']}`", ""]
    if res["question"]:
        lines += [f"**Question.** {res['question']}", ""]
    if res["note"]:
        lines += [res["note"], ""]
    lines += [f"{len(arms)} arms × {res['seeds']} seeds (paired: seed index k of every arm is one pair), baseline "
              f"`{base}`. Scores: final val bits per byte on `{vs['main']['what']}` "
              f"({_docs(vs['main'])}{vs['main']['tokens_per_lang']:,.0f} tokens, {vs['main']['bytes_per_lang']:,.0f} "
              f"bytes per language on average); ± is the 95% Student t "
              f"half-width over seeds (t = {t['value']:.3f} at df = {t['df']}).", "",
              "| arm | overrides | seeds | steps × batch | tokens | train PFLOP | mean run time |",
              "|---|---|---|---:|---:|---:|---:|"]
    for a, info in res["arms"].items():
        walls = [w for w in info["train_wall_s"] if w]
        over = " ".join(info["overrides"]) or "(defaults)"
        over = over if len(over) <= 80 else over[:77] + "..."            # results.json has the whole list
        offset = f" seed_offset={info['seed_offset']}" if info["seed_offset"] else ""
        lines.append(f"| `{a}`{' (baseline)' if a == base else ''} | `{over}`{offset}"
                     f" | {', '.join(map(str, info['seeds']))} | {info['max_iters']} × {info['batch_size']} | "
                     f"{info['tokens']:,} | {info['train_flops'] / 1e15:.2f} | "
                     f"{fmt_s(float(np.mean(walls))) if walls else '?'} |")
    lines += ["", f"## Result (primary endpoint: mean over the {len(langs)} languages)", "",
              "| arm | mean bpb | non-English bpb | English bpb | Δ mean vs baseline | p | verdict |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for a in arms:
        st = main["arms"][a]
        d = main["diffs"][a]["mean"] if a in main["diffs"] else None
        lines.append(f"| `{a}` | {pm(st['mean'])} | {pm(st['non_en'])} | {pm(st['en']) if 'en' in st else '—'} | "
                     + (f"{signed(d)} | {d['p']:.3f} | **{d['verdict']}** |" if d else "— | — | baseline |"))
    if main["diffs"]:
        lines += ["", "## Per language: paired difference to the baseline (bpb; negative = lower = better)", "",
                  "| lang | " + f"`{base}` | " + " | ".join(f"`{a}` − `{base}`" for a in main["diffs"]) + " |",
                  "|---|---:|" + "---:|" * len(main["diffs"])]
        for k in langs + ["non_en", "mean"]:
            cells = []
            for a, d in main["diffs"].items():
                v = d[k]["verdict"]
                cells.append(signed(d[k]) + ("" if v == "no difference" else f" **{VERDICT_MARK.get(v, v)}**"))
            lines.append(f"| {k} | {main['arms'][base][k]['mean']:.3f} | " + " | ".join(cells) + " |")
        counts = {a: {v: sum(1 for k in langs if d[k]["verdict"] == v) for v in ("better", "worse")}
                  for a, d in main["diffs"].items()}
        lines += ["", "Languages with a significant difference (95%): " + "; ".join(
            f"`{a}`: {c['better']} better, {c['worse']} worse of {len(langs)}" for a, c in counts.items())
                  + f" (by chance alone about {0.05 * len(langs):.1f} of {len(langs)} per arm)."]
    if "split" in res["results"]:
        w, ws = res["ci_width"]["main"], res["ci_width"]["split"]
        lines += ["", f"## Validation set: `{main_name}` vs the old per-language val split", "",
                  "The same final checkpoints scored on both; mean 95% half-widths (bpb):", "",
                  f"| | `{main_name}` ({vs['main']['tokens_per_lang']:,.0f} tok/lang) | "
                  f"old val split ({vs['split']['tokens_per_lang']:,.0f} tok/lang) | ratio |", "|---|---:|---:|---:|"]
        for key, label in (("arm_mean_half", "arm mean bpb (over languages)"), ("arm_lang_half", "arm, per language"),
                           ("diff_mean_half", "paired Δ, mean"), ("diff_lang_half", "paired Δ, per language")):
            if math.isfinite(w[key]) and math.isfinite(ws[key]):
                lines.append(f"| {label} | {w[key]:.4f} | {ws[key]:.4f} | {w[key] / ws[key]:.2f} |")
        sd = res["results"]["split"]
        lines += ["", "Verdicts on the old split, for comparison: " + "; ".join(
            f"`{a}` mean {signed(d['mean'])} ({d['mean']['verdict']})" for a, d in sd["diffs"].items()) + "."]
    tm = res["timing"]
    inv = tm["invocations"]
    lines += ["", "## Time", "",
              f"{fmt_s(tm['wall_s'])} wall in {len(inv)} invocation(s) on {tm['cpu']} ({tm['cores']} cores):", ""]
    for i in inv:
        lines.append(f"- {i['start']}: {i['runs']} runs, {i['jobs']} in parallel × {i['threads']} thread(s), "
                     f"{fmt_s(i.get('wall_s', 0))}; load average at start {i['load_start'][0]:.2f}"
                     + (f", mean {i['load_mean']:.2f}, max {i['load_max']:.2f} during the run" if "load_mean" in i else "")
                     + (" (interrupted)" if i.get("interrupted") else ""))
    lines += ["", f"![curves and paired differences]({figure_name})", "",
              f"Command: `{res['command']}`" if res["command"] else "", ""]
    return "\n".join(lines)


def draw_figure(res, path):
    """Per-language validation curves (mean over seeds, 95% band) + a forest plot of the paired differences."""
    plt = pyplot()
    curves, base = res["curves"], res["baseline"]
    langs = [k for k in LANGS if k in next(iter(curves.values()))]
    panels = ["mean"] + langs
    fig = plt.figure(figsize=(22, 11))
    gs = fig.add_gridspec(4, 8, wspace=0.35, hspace=0.45)
    colors = plt.get_cmap("tab10").colors
    arm_color = {a: colors[i % 10] for i, a in enumerate(curves)}
    for i, key in enumerate(panels):
        ax = fig.add_subplot(gs[i // 5, i % 5])
        for a, c in curves.items():
            x, m, h = np.array(c["x"]), np.array(c[key]["mean"]), np.nan_to_num(np.array(c[key]["half"]))
            ax.plot(x, m, marker=".", color=arm_color[a], label=a, lw=1.4 if a != base else 2.2)
            ax.fill_between(x, m - h, m + h, color=arm_color[a], alpha=0.18, lw=0)
        ax.set_title(f"mean of {len(langs)} languages" if key == "mean" else key, fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.text(0.33, 0.02, "fraction of the training budget (every arm: the same tokens, or FLOPs)", ha="center")
    fig.text(0.005, 0.5, "validation bits per byte (in-training evals; band: 95% CI over seeds)", va="center",
             rotation=90)
    ax = fig.add_subplot(gs[:, 5:])
    diffs = res["results"]["main"]["diffs"]
    rows = ["mean", "non_en"] + langs
    n_arms = max(1, len(diffs))
    for j, (a, d) in enumerate(diffs.items()):
        ys = np.arange(len(rows)) + (j - (n_arms - 1) / 2) * 0.8 / n_arms
        ms = np.array([d[k]["mean"] for k in rows])
        hs = np.nan_to_num(np.array([d[k]["half"] for k in rows]))
        ax.errorbar(ms, ys, xerr=hs, fmt="o", ms=4, capsize=2, color=arm_color[a], label=f"{a} − {base}")
    ax.axvline(0, color="gray", lw=1)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"paired difference in final val bpb vs {base} (95% CI; < 0 = better)")
    ax.set_title(f"{res['name']}: {res['seeds']} seeds per arm, final bpb on {res['val_sets']['main']['label']}",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=90, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def write_outputs(res, exp_dir):
    exp_dir = Path(exp_dir)
    fig = exp_dir / f"{res['name']}.png"
    draw_figure(res, fig)
    atomic_write_json(exp_dir / "results.json", res)
    atomic_write_text(exp_dir / "EXPERIMENT.md", render_report(res, fig.name))
    return exp_dir / "results.json", exp_dir / "EXPERIMENT.md", fig
