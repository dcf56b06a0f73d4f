"""lid.py on held-out text: accuracy on the 18 languages, rejection of 73 others, the trade-off, the speed (PolyLM
paper §3, pre-training data: the language filter that decides what enters the corpus).

    .venv/bin/pip install py3langid matplotlib     # optional, bench only: the off-the-shelf LID to compare with
    python bench/bench_lid.py [--mono=data/sample/mono] [--other=data/lid/flores_other_test.tsv.gz]
                              [--baseline_rev=REV] [--png=out/lid_tradeoff.png]

Held-out text only (never used in training or calibration, see lid.py's docstring):
  the 18   lines of --mono/<lang>.txt with content_hash_frac < lid.HOLDOUT (data/sample/mono: 4,886 lines; the
           shared ../shared/data/mono: its whole held-out slice, a superset)
  others   the FLORES-200 test split (line index % 10 == 0) of 73 languages outside the 18, 7,446 sentences
           (shipped as data/lid/flores_other_test.tsv.gz)
Prints: accuracy on the 18 (mean, min, per language), the share of other-language sentences labelled "other"
(overall, per language), py3langid (97 languages; an answer outside the 18 counts as "other") on the same
sentences, the trade-off table over the rejection knob `margin` (and over the id/zsm discriminator's threshold),
and the speed in MB of text per CPU second (1 process, sentences and ~1.2 KB documents) against lid.py + its model at git
revision --baseline_rev, timed in interleaved rounds (median). Writes the trade-off curve as a PNG.
"""
import dataclasses
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import lid  # noqa: E402
from config import ConfigError, cpu_name, run_cli  # noqa: E402

MARGINS = (0, 2, 5, 10, 15, 20, 30, 50, 100, 200, float("inf"))   # nats; inf = the old rule (no rejection)


@dataclasses.dataclass
class BenchLidConfig:
    mono: str = "data/sample/mono"       # <lang>.txt of the 18; its held-out slice is scored
    other: str = str(lid.OTHER_TEST)     # FLORES other languages: the shipped test slice or the FLORES folder
    model: str = str(lid.MODEL_PATH)     # the model to measure
    baseline_rev: str = ""               # git revision whose lid.py + data/lid/model.npz to time against ('' = none)
    rounds: int = 3                      # speed: interleaved rounds (median; 0 = skip the speed test)
    png: str = "out/lid_tradeoff.png"    # where the trade-off curve goes ('' = none)


def shares(pred, gold, want):
    """{language: share of its lines whose prediction is want(language)}."""
    pred, gold = np.asarray(pred), np.asarray(gold)
    return {g: float(np.mean(pred[gold == g] == want(g))) for g in dict.fromkeys(gold)}


def figures(pred18, gold18, predo, goldo):
    acc = shares(pred18, gold18, lambda g: g)
    rej = shares(predo, goldo, lambda g: "other")
    overall = float(np.mean(np.asarray(predo) == "other"))
    no_zsm = float(np.mean([p == "other" for p, g in zip(predo, goldo) if g != "zsm"]))
    return acc, rej, overall, no_zsm


def py3langid_predict():
    try:
        import py3langid.langid as pl
    except ImportError:
        print("(py3langid not installed: pip install py3langid, bench only)")
        return None
    ident = pl.LanguageIdentifier.from_model_file(pl.MODEL_FILE, norm_probs=False)   # all 97 languages
    return lambda texts: [c if c in lid.LANGS else "other" for c in (ident.classify(t)[0] for t in texts)]


def baseline_predict(rev):
    """predict() of lid.py and data/lid/model.npz as they were at git revision rev (loaded from a temp dir)."""
    tmp = Path(tempfile.mkdtemp(prefix="lid-baseline-"))
    try:
        for path in ("lid.py", "data/lid/model.npz"):
            blob = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, check=True).stdout
            (tmp / Path(path).name).write_bytes(blob)
    except subprocess.CalledProcessError as e:
        raise ConfigError(f"--baseline_rev={rev}: git show failed ({e.stderr.decode().strip()}); give a revision "
                          "of this repository that has lid.py and data/lid/model.npz") from None
    spec = importlib.util.spec_from_file_location("lid_baseline", tmp / "lid.py")
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    return old.LanguageIdentifier.load(tmp / "model.npz").predict


def speed(systems, inputs, rounds):
    """{(system, input): median MB per CPU second} over interleaved rounds (every system on every input once per
    round). Process CPU time, not wall time: on a shared machine other jobs inflate it less."""
    times = {(s, i): [] for s in systems for i in inputs}
    for _ in range(rounds):
        for i, texts in inputs.items():
            for s, fn in systems.items():
                t0 = time.process_time()
                fn(texts)
                times[(s, i)].append(time.process_time() - t0)
    mb = {i: sum(len(t.encode()) for t in texts) / 1e6 for i, texts in inputs.items()}
    return {k: mb[k[1]] / statistics.median(v) for k, v in times.items()}, mb


def plot(rows, disc_rows, shipped, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    x = [r["margin"] for r in rows]
    ax[0].plot(x, [100 * r["mean"] for r in rows], "o-", label="accuracy on the 18, mean")
    ax[0].plot(x, [100 * r["min"] for r in rows], "s--", label="accuracy on the 18, lowest language")
    ax[0].plot(x, [100 * r["no_zsm"] for r in rows], "^-", label="other languages rejected (Malay apart)")
    ax[0].plot(x, [100 * r["overall"] for r in rows], "v:", label="other languages rejected (all 73)")
    ax[0].axvline(shipped, color="grey", lw=0.8)
    ax[0].annotate(f"shipped {shipped:.3g}", (shipped, 96.2), fontsize=8, xytext=(3, 0), textcoords="offset points")
    ax[0].set_xscale("symlog", linthresh=1)
    ax[0].set_xlim(0, 1.2 * max(x))
    ax[0].set_ylim(96, 100.2)
    ax[0].set_xlabel("margin, nats (the rejection knob; symlog)")
    ax[0].set_ylabel("%")
    ax[0].set_title("held-out: the 18 vs 73 other languages")
    ax[0].legend(fontsize=7.5, loc="center left")
    ax[1].plot([100 * r["zsm"] for r in disc_rows], [100 * r["id"] for r in disc_rows], "o-")
    for r in disc_rows:
        ax[1].annotate(f"{r['threshold']:.3g}", (100 * r["zsm"], 100 * r["id"]), textcoords="offset points",
                       xytext=(3, 4), fontsize=7)
    ax[1].set_xlabel("Malay (zsm) sentences rejected, %")
    ax[1].set_ylabel("Indonesian accuracy, %")
    ax[1].set_title("id/zsm discriminator threshold (labels)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(path).with_name(Path(path).name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def bench(cfg):
    model = lid.LanguageIdentifier.load(cfg.model)
    heldout = lid.read_corpus(cfg.mono, heldout=True)
    others = lid.read_other(cfg.other, "test")
    texts18 = [t for v in heldout.values() for t in v]
    gold18 = [g for g, v in heldout.items() for _ in v]
    textso = [t for v in others.values() for t in v]
    goldo = [g for g, v in others.items() for _ in v]
    print(f"lid.py on {cpu_name()}: model {cfg.model} ({Path(cfg.model).stat().st_size / 1e6:.2f} MB, "
          f"{len(model.grams):,} n-grams, {len(model.langs)} + {len(model.others)} classes, margin "
          f"{model.margin:.2f} nats" + "".join(f", {t}/{d.other} threshold {d.threshold:.2f}"
                                                for t, d in model.discriminators.items()) + ")")
    print(f"held-out: {len(texts18):,} lines of the 18 ({cfg.mono}), {len(textso):,} sentences of "
          f"{len(others)} other languages ({cfg.other})\n")

    # one scoring pass; the knobs only change the decision
    s18, d18 = model.class_scores(texts18)
    so, do = model.class_scores(textso)
    decide = lambda: (model.decide(texts18, s18, d18), model.decide(textso, so, do))  # noqa: E731
    pred18, predo = decide()
    acc, rej, overall, no_zsm = figures(pred18, gold18, predo, goldo)
    systems = {"ours": (acc, rej, overall, no_zsm)}
    py3 = py3langid_predict()
    if py3:
        systems["py3langid"] = figures(py3(texts18), gold18, py3(textso), goldo)

    print("| system | 18: mean acc | 18: min acc | others rejected | without zsm | min (not zsm) | zsm |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (a, r, ov, nz) in systems.items():
        worst = min((k for k in r if k != "zsm"), key=r.get)
        print(f"| {name} | {100 * np.mean(list(a.values())):.2f}% | {100 * min(a.values()):.1f}% "
              f"({min(a, key=a.get)}) | {100 * ov:.2f}% | {100 * nz:.2f}% | {100 * r[worst]:.1f}% ({worst}) | "
              f"{100 * r['zsm']:.1f}% |")
    print("\n| lang | lines | " + " | ".join(systems) + " |\n|---|---:|" + "---:|" * len(systems))
    for lang in heldout:
        print(f"| {lang} | {len(heldout[lang])} | " + " | ".join(f"{100 * s[0][lang]:.1f}" for s in systems.values())
              + " |")
    print("\nrejected, % (other language: ours / py3langid):\n")
    cells = [f"{c} {100 * rej[c]:.0f}" + (f"/{100 * systems['py3langid'][1][c]:.0f}" if py3 else "") for c in others]
    for i in range(0, len(cells), 8):
        print("| " + " | ".join(cells[i:i + 8]) + " |")
    accepted = {}
    for p, g in zip(predo, goldo):
        if p != "other":
            accepted[(g, p)] = accepted.get((g, p), 0) + 1
    print("\nours, accepted (other -> label: count):", ", ".join(f"{g}->{p} {c}" for (g, p), c in
                                                               sorted(accepted.items(), key=lambda x: -x[1])))

    margin, rows = model.margin, []
    print("\ntrade-off over the margin (nats; discriminator thresholds as calibrated):\n")
    print("| margin | 18: mean acc | 18: min acc | others rejected | without zsm | min (not zsm) | zsm |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for m in sorted(set(MARGINS) | {margin}):
        model.margin = m
        p18, po = decide()
        a, r, ov, nz = figures(p18, gold18, po, goldo)
        worst = min((k for k in r if k != "zsm"), key=r.get)
        rows.append({"margin": m, "mean": np.mean(list(a.values())), "min": min(a.values()), "no_zsm": nz,
                     "overall": ov})
        mark = " (shipped)" if m == margin else ""
        print(f"| {m:.4g}{mark} | {100 * rows[-1]['mean']:.2f}% | {100 * rows[-1]['min']:.1f}% ({min(a, key=a.get)}) "
              f"| {100 * ov:.2f}% | {100 * nz:.2f}% | {100 * r[worst]:.1f}% ({worst}) | {100 * r['zsm']:.1f}% |")
    model.margin = margin
    disc_rows = []
    for lang, d in model.discriminators.items():
        shipped = d.threshold
        print(f"\n{lang}/{d.other} discriminator threshold (logit; margin as shipped):\n")
        print(f"| threshold | {lang} acc | {d.other} rejected | 18: mean acc |\n|---:|---:|---:|---:|")
        for th in sorted({-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, shipped, float("inf")}):
            d.threshold = th
            p18, po = decide()
            a, r, _, _ = figures(p18, gold18, po, goldo)
            disc_rows.append({"threshold": th, "id": a[lang], "zsm": r[d.other]})
            mark = " (shipped)" if th == shipped else ""
            print(f"| {th:.3g}{mark} | {100 * a[lang]:.1f}% | {100 * r[d.other]:.1f}% | "
                  f"{100 * np.mean(list(a.values())):.2f}% |")
        d.threshold = shipped
    if cfg.png:
        plot(rows[:-1], disc_rows[:-1], margin, cfg.png)               # the last rows are inf: no rejection at all
        print(f"\nwrote {cfg.png}")

    if cfg.rounds <= 0:
        return
    lines = [t for lang in lid.LANGS for t in Path(cfg.mono, f"{lang}.txt").read_text(encoding="utf-8").splitlines()]
    docs = [" ".join(lines[i:i + 20]) for i in range(0, len(lines), 20)]                 # ~1.2 KB documents
    systems = {"ours": model.predict}
    if cfg.baseline_rev:
        systems[f"baseline {cfg.baseline_rev}"] = baseline_predict(cfg.baseline_rev)
    mbs, mb = speed(systems, {"sentences": texts18 + textso, "documents": docs}, cfg.rounds)
    print(f"\nspeed, MB of text per CPU second, 1 process, median of {cfg.rounds} interleaved rounds:\n")
    print("| input | MB | " + " | ".join(systems) + (" | ratio |" if len(systems) > 1 else " |"))
    print("|---|---:|" + "---:|" * (len(systems) + (len(systems) > 1)))
    for i in ("sentences", "documents"):
        vals = [mbs[(s, i)] for s in systems]
        print(f"| {i} | {mb[i]:.2f} | " + " | ".join(f"{v:.2f}" for v in vals)
              + (f" | {vals[0] / vals[1]:.2f}x |" if len(vals) > 1 else " |"))


def main(argv=None):
    return run_cli(bench, BenchLidConfig, argv, prog="bench/bench_lid.py")


if __name__ == "__main__":
    main()
