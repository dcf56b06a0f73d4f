"""Speed of selfinstruct's ROUGE-L filter (PolyLM §6, MultiAlpaca: every candidate instruction is compared with its
language's whole pool) on pools of 15K instructions per language (docs/BENCHMARKS.md, selfinstruct section).

    python bench/bench_selfinstruct.py [--pool=15000] [--queries=200] [--rounds=3]
    python bench/bench_selfinstruct.py --baseline_rev=HEAD    # side by side with selfinstruct_text.py at a revision
    python bench/bench_selfinstruct.py --filters              # the filters' verdicts on the bundled MultiAlpaca records
    python bench/bench_selfinstruct.py --help

Pools are built from the bundled monolingual sample (data/sample/mono/<lang>.txt): random spans of 5-30 words
(10-60 characters in the languages without spaces), 15K per language, kept as text so that each version tokenizes
them itself. Queries are real MultiAlpaca instructions (es, ja) or, for languages without bundled MultiAlpaca,
held-out spans. "near" queries are pool entries with 1-2 tokens replaced by a word no entry has, so the filter has
a match >= 0.7 to find. Methods, per query against the whole pool:
  index        RougeIndex.best(stop_at=0.7): numpy bag-of-tokens bounds + exact bit-parallel LCS in bound order
  index exact  RougeIndex.best(): the exact maximum (what is stored as rouge_l_max for kept records)
  bitpar all   bit-parallel LCS against every entry, no pruning (timed on 10 queries)
  dp all       rouge_score's algorithm: an |a| x |b| dynamic-programming table per entry, pure Python (timed on a
               sample of 1,000 entries and 3 queries, scaled to the pool)
Times are CPU ms of this process per query (a busy shared machine inflates them less than wall time). With
--baseline_rev, both versions' index methods are timed in interleaved rounds (after a warm-up; the order alternating
each round) and the median of the rounds is shown side by side; the baseline file's own imports resolve to the
working tree.
"""
import dataclasses
import importlib.util
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import selfinstruct_text as st                                                    # noqa: E402
from common import SPACELESS, read_jsonl                                          # noqa: E402
from config import ConfigError, cpu_name, run_cli                                 # noqa: E402
from tasks.metrics import lcs_len                                                 # noqa: E402


@dataclasses.dataclass
class SelfInstructBenchConfig:
    pool: int = 15000                   # pool entries per language
    queries: int = 200                  # queries per kind (real instructions, near copies) and language
    langs: str = "es,ja,th,ar"          # languages (data/sample/mono/<lang>.txt must exist)
    rounds: int = 3                     # interleaved timing rounds (the median is reported)
    baseline_rev: str = ""              # git revision whose selfinstruct_text.py to time side by side ('' = none)
    filters: bool = False               # instead: the filters' verdicts on the bundled MultiAlpaca records
    seed: int = 0                       # random seed of the pools and queries


def baseline_module(rev):
    """selfinstruct_text.py as it was at git revision rev, imported from a temporary directory."""
    try:
        src = subprocess.run(["git", "show", f"{rev}:selfinstruct_text.py"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (subprocess.CalledProcessError, OSError) as e:
        raise ConfigError(f"--baseline_rev={rev}: git show failed ({getattr(e, 'stderr', b'').decode().strip()}); "
                          f"give a revision of this repository, e.g. HEAD") from None
    tmp = Path(tempfile.mkdtemp(prefix="bench_si_"))
    (tmp / "selfinstruct_text_baseline.py").write_bytes(src)
    spec = importlib.util.spec_from_file_location("selfinstruct_text_baseline", tmp / "selfinstruct_text_baseline.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def spans(lines, n, rng, char_level):
    """n random spans of the text (as text: joined tokens), 10-60 characters or 5-30 words."""
    out, lo, hi = [], *((10, 60) if char_level else (5, 30))
    while len(out) < n:
        t = st.tokens(rng.choice(lines))
        k = rng.randint(lo, hi)
        if len(t) >= lo:
            s = rng.randrange(max(1, len(t) - k + 1))
            out.append(("" if char_level else " ").join(t[s:s + k]))
    return out


def near_copies(pool, n, rng, char_level):
    """n pool entries with 1-2 tokens replaced by a word no entry has."""
    out = []
    for text in rng.sample(pool, n):
        q = st.tokens(text)
        for _ in range(rng.randint(1, 2)):
            q[rng.randrange(len(q))] = " zzqx " if char_level else "zzqx"
        out.append(("" if char_level else " ").join(q))
    return out


def dp_lcs(a, b):
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def timed(fn, queries):
    """(CPU ms per query, results)."""
    t = time.process_time()
    out = [fn(q) for q in queries]
    return (time.process_time() - t) / len(queries) * 1e3, out


def build(mod, texts):
    """(the module's RougeIndex over texts, their token lists, CPU ms to build it)."""
    toks = [mod.tokens(x) for x in texts]
    t = time.process_time()
    index = mod.RougeIndex()
    for x in toks:
        index.add(x)
    return index, toks, (time.process_time() - t) * 1e3


def bench_lang(lang, cfg, rng, baseline):
    lines = [x for x in (ROOT / "data/sample/mono" / f"{lang}.txt").read_text(encoding="utf-8").splitlines() if x]
    char = lang in SPACELESS
    pool = spans(lines, cfg.pool, rng, char)
    real = read_jsonl(ROOT / "data/instruct/multialpaca" / f"{lang}.jsonl") \
        if (ROOT / "data/instruct/multialpaca" / f"{lang}.jsonl").exists() else []
    kinds = {("MultiAlpaca" if real else "held-out"): [r["instruction"] for r in real[:cfg.queries]]
             or spans(lines, cfg.queries, rng, char), "near": near_copies(pool, cfg.queries, rng, char)}
    versions = {"new": st} | ({"baseline": baseline} if baseline else {})
    built = {name: build(mod, pool) for name, mod in versions.items()}
    rows, side = [], []
    for kind, texts in kinds.items():
        qs = {name: [mod.tokens(x) for x in texts] for name, mod in versions.items()}
        ms = {(name, m): [] for name in versions for m in ("stop", "exact")}
        for name in versions:                               # warm-up: caches, numpy's first calls
            timed(lambda q: built[name][0].best(q, stop_at=0.7), qs[name][:20])
        for r in range(cfg.rounds):                         # interleaved, the order alternating each round
            for name in (list(versions) if r % 2 == 0 else list(versions)[::-1]):
                index = built[name][0]
                t, res = timed(lambda q: index.best(q, stop_at=0.7), qs[name])
                ms[name, "stop"].append(t)
                t, exact = timed(lambda q: index.best(q), qs[name])
                ms[name, "exact"].append(t)
                if name == "new":
                    share = sum(x[0] >= 0.7 for x in res) / len(res)
                    best_new = exact
        pool_toks = built["new"][1]
        ms_bit, brute = timed(lambda q: max(2 * lcs_len(q, p) / (len(q) + len(p)) for p in pool_toks), qs["new"][:10])
        assert all(abs(e[0] - b) < 1e-9 for e, b in zip(best_new, brute)), "the index is not exact"
        sample = pool_toks[:1000]
        ms_dp, _ = timed(lambda q: max(2 * dp_lcs(q, p) / (len(q) + len(p)) for p in sample), qs["new"][:3])
        med = {k: statistics.median(v) for k, v in ms.items()}
        rows.append((lang, kind, statistics.mean(len(q) for q in qs["new"]), med["new", "stop"], med["new", "exact"],
                     ms_bit, ms_dp * len(pool_toks) / len(sample), share))
        if baseline:
            side.append((lang, kind, med["new", "stop"], med["baseline", "stop"], med["new", "exact"],
                         med["baseline", "exact"], ms["new", "stop"], ms["baseline", "stop"]))
    return {name: b[2] for name, b in built.items()}, rows, side


def bench(cfg):
    if cfg.filters:
        return bench_filters()
    if cfg.pool < 1000 or cfg.queries < 10 or cfg.rounds < 1:
        raise ConfigError("pool >= 1000, queries >= 10 and rounds >= 1, please")
    langs = [x.strip() for x in cfg.langs.split(",") if x.strip()]
    missing = [lg for lg in langs if not (ROOT / "data/sample/mono" / f"{lg}.txt").exists()]
    if missing:
        raise FileNotFoundError(f"data/sample/mono/{missing[0]}.txt not found: choose --langs among the bundled "
                                f"sample's languages")
    baseline = baseline_module(cfg.baseline_rev) if cfg.baseline_rev else None
    rng = random.Random(cfg.seed)
    print(f"pool {cfg.pool:,} per language, {cfg.queries} queries per kind; CPU ms per query (mean over the queries, "
          f"median of {cfg.rounds} rounds); CPU: {cpu_name()}\n")
    print("| lang | queries | tokens/query | index (stop at 0.7) | index exact max | bit-parallel, all | "
          "DP, all (rouge_score's algorithm) | share >= 0.7 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    builds, sides = {}, []
    for lang in langs:
        builds[lang], rows, side = bench_lang(lang, cfg, rng, baseline)
        sides += side
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.0f} | {r[6]:,.0f} | {r[7]:.0%} |")
    print(f"\nbuilding the index ({cfg.pool:,} add() calls), CPU ms: "
          + ", ".join(f"{k} {v['new']:.0f}" + (f" (baseline {v['baseline']:.0f})" if "baseline" in v else "")
                      for k, v in builds.items()))
    if sides:
        print(f"\nside by side with selfinstruct_text.py at {cfg.baseline_rev} (CPU ms per query, median of "
              f"{cfg.rounds} interleaved rounds; the rounds of 'stop at 0.7' in brackets):\n")
        print("| lang | queries | index (stop at 0.7) | baseline | index exact | baseline exact | rounds (new) | "
              "rounds (baseline) |\n|---|---|---:|---:|---:|---:|---|---|")
        for lang, kind, a, b, c, d, ra, rb in sides:
            print(f"| {lang} | {kind} | {a:.2f} | {b:.2f} | {c:.2f} | {d:.2f} | "
                  f"{', '.join(f'{x:.2f}' for x in ra)} | {', '.join(f'{x:.2f}' for x in rb)} |")
    return sides


def bench_filters():
    """The filters on the bundled MultiAlpaca records #100-499 (the first 100 are the seeds), five per reply."""
    import selfinstruct as si
    cfg = si.SelfInstructConfig(plot=False)
    print("| lang | records | kept | " + " | ".join(si.REASONS[:-1]) + " | CPU ms per task |")
    print("|---|" + "---:|" * (len(si.REASONS) + 2))
    for lang in ("es", "ja", "pt"):
        recs = read_jsonl(ROOT / "data/instruct/multialpaca" / f"{lang}.jsonl")[100:]
        pool, total = si.LangPool(lang, 10 ** 6, si.load_seeds(cfg, lang)), Counter()
        t = time.process_time()
        for i in range(0, len(recs), 5):
            reply = "\n###\n".join(st.format_task(k, r["instruction"], r.get("input") or "", r["output"])
                                    for k, r in enumerate(recs[i:i + 5], 4))
            total.update(si.filter_reply(pool, reply, "stop", cfg, {})[1])
        ms = (time.process_time() - t) / len(recs) * 1e3
        print(f"| {lang} | {total['generated']} | {total['kept']} | "
              + " | ".join(str(total[r]) for r in si.REASONS[:-1]) + f" | {ms:.2f} |")


def main(argv=None):
    return run_cli(bench, SelfInstructBenchConfig, argv, prog="bench/bench_selfinstruct.py")


if __name__ == "__main__":
    main()
