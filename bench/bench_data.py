"""Benchmarks for the data pipeline (PolyLM paper §3, pre-training data; results: docs/BENCHMARKS.md (data section)).

    .venv/bin/pip install py3langid          # bench only: the off-the-shelf LID to compare with
    .venv/bin/python bench/bench_data.py [--only lid,stages,tokenize,minhash] [--bench_mono /work/shared/data/mono]

Sections:
  lid       our LID vs py3langid (langid.py's model restricted to the 18 languages) on the same held-out sentences:
            --per_lang lines per language of --bench_mono that are NOT in data/sample (the training data);
            accuracy per language, by length, the confusion pairs, sentences/s and MB/s (1 process).
  stages    MB/s of every stage on the bundled sample (data.prepare with all stages, 1 worker process).
  tokenize  end-to-end (read -> split -> tokenize -> shards -> manifest, data.prepare, 1 process) vs raw tiktoken
            encode_ordinary of the same documents already in memory, same tokenizer, 1 thread.
  minhash   planted near-duplicates: precision/recall against exact shingle Jaccard for a few (perms, bands).
Timings on a shared 2-core machine are noisy; each comparison is made side by side in one run.
"""
import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
import filters  # noqa: E402
import lid  # noqa: E402
import pipeline  # noqa: E402

SAMPLE = ROOT / "data" / "sample"


def bench_sentences(mono, per_lang, seed=0):
    """{lang: lines} of mono/<lang>.txt not in the sample (never seen by the LID model), shuffled, per_lang each."""
    out = {}
    for lang in lid.LANGS:
        seen = set((SAMPLE / "mono" / f"{lang}.txt").read_text().splitlines())
        lines = [x for x in Path(mono, f"{lang}.txt").read_text().splitlines() if x.strip() and x not in seen]
        random.Random(seed).shuffle(lines)
        out[lang] = lines[:per_lang]
    return out


def run_lid(args):
    sents = bench_sentences(args.bench_mono, args.per_lang)
    texts = [t for v in sents.values() for t in v]
    gold = [lang for lang, v in sents.items() for _ in v]
    nbytes = sum(len(t.encode()) for t in texts)
    model = lid.LanguageIdentifier.load()
    systems = {"ours": lambda ts: model.predict(ts)}
    try:
        import py3langid.langid as pl
        pl.set_languages(lid.LANGS)
        systems["py3langid"] = lambda ts: [pl.classify(t)[0] for t in ts]
    except ImportError:
        print("py3langid not installed: pip install py3langid (bench only)")
    preds = {}
    print(f"\n## LID: {len(texts):,} held-out sentences ({nbytes / 1e6:.2f} MB), {args.per_lang} per language\n")
    print("| system | mean acc | min acc | sentences/s | MB/s |\n|---|---:|---:|---:|---:|")
    for name, fn in systems.items():
        t0 = time.perf_counter()
        p = fn(texts)
        dt = time.perf_counter() - t0
        preds[name] = p
        acc = {lang: np.mean([a == lang for a, g in zip(p, gold) if g == lang]) for lang in lid.LANGS}
        print(f"| {name} | {100 * np.mean(list(acc.values())):.2f}% | {100 * min(acc.values()):.2f}% "
              f"({min(acc, key=acc.get)}) | {len(texts) / dt:,.0f} | {nbytes / dt / 1e6:.2f} |")
    print("\n| lang | " + " | ".join(preds) + " |\n|---|" + "---:|" * len(preds))
    for lang in lid.LANGS:
        print(f"| {lang} | " + " | ".join(f"{100 * np.mean([a == lang for a, g in zip(p, gold) if g == lang]):.1f}"
                                         for p in preds.values()) + " |")
    lens = np.array([len(t) for t in texts])
    print("\n| length (chars) | sentences | " + " | ".join(preds) + " |\n|---|---:|" + "---:|" * len(preds))
    for lo, hi in ((0, 20), (20, 50), (50, 100), (100, 10**9)):
        m = (lens >= lo) & (lens < hi)
        print(f"| {lo}-{hi if hi < 10**9 else ''} | {m.sum():,} | " +
              " | ".join(f"{100 * np.mean(np.array(p)[m] == np.array(gold)[m]):.2f}%" for p in preds.values()) + " |")
    for name, p in preds.items():
        conf = {}
        for a, g in zip(p, gold):
            if a != g:
                conf[(g, a)] = conf.get((g, a), 0) + 1
        top = sorted(conf.items(), key=lambda x: -x[1])[:12]
        print(f"\n{name} confusions (true->predicted: count): " + ", ".join(f"{g}->{a} {c}" for (g, a), c in top))


def encoder(args):
    import bpe
    if args.tokenizer:
        return bpe.load(args.tokenizer), bpe.tokenizer_hash(args.tokenizer), args.tokenizer
    import tiktoken
    base = bpe.reference_encoding("cl100k_base", Path(bpe.REFERENCE_DIR) / "cl100k_base.tiktoken")
    enc = tiktoken.Encoding("cl100k_base", pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks,
                            special_tokens={"<|endoftext|>": 100257})   # the reference file has no specials
    return enc, "c1" * 32, "cl100k_base"


def run_stages(args):
    enc, h, name = encoder(args)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        m = data.prepare(SAMPLE, enc, h, d, 0.05, log=lambda s: None, stages=pipeline.STAGES, workers=1)
        wall = time.perf_counter() - t0
    st = m["stats"]
    print(f"\n## Stages on data/sample ({sum(c['bytes'] for c in st['by_lang'].values()) / 1e6:.2f} MB, "
          f"tokenizer {name}, 1 process): {wall:.1f} s wall\n")
    print("| stage | MB in | seconds | MB/s |\n|---|---:|---:|---:|")
    for s in ("read", "lid", "rules", "quality", "minhash", "dedup", "tokenize", "write", "load_models"):
        sec, mb = st["seconds"].get(s, 0), st["bytes"].get(s, 0) / 1e6
        print(f"| {s} | {mb:.2f} | {sec:.2f} | " + (f"{mb / sec:.2f} |" if mb and sec else "– |"))
    print("\n```\n" + pipeline.format_stats(st) + "\n```")


def _long_docs_dir(tmp, per_doc=20):
    """data/sample with every per_doc consecutive lines of a mono file joined into one ~1.3 KB document (web-page
    sized), the parallel files as they are: the same text, 20x fewer documents."""
    import shutil
    d = Path(tmp) / "long"
    (d / "mono").mkdir(parents=True)
    for f in sorted((SAMPLE / "mono").glob("*.txt")):
        lines = [x for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
        (d / "mono" / f.name).write_text("".join(" ".join(lines[i:i + per_doc]) + "\n"
                                                 for i in range(0, len(lines), per_doc)), encoding="utf-8")
    shutil.copytree(SAMPLE / "parallel", d / "parallel")
    return d


def run_tokenize(args):
    enc, h, name = encoder(args)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (label, src) in enumerate((("data/sample as it is (one sentence per document)", SAMPLE),
                           ("mono documents of 20 sentences (parallel pairs as they are)", _long_docs_dir(tmp)))):
            docs = [d for _, (lang, kind, p) in data.discover_sources(src).items() for d in data.source_documents(kind, p)]
            mb = sum(len(d.encode()) for d in docs) / 1e6
            raw, ours = [], []
            for i in range(args.repeats):                             # alternate, take the best of each
                t0 = time.perf_counter()
                for d in docs:
                    enc.encode_ordinary(d)
                raw.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                data.prepare(src, enc, h, Path(tmp) / f"out{k}-{i}", 0.05, log=lambda s: None, workers=1)
                ours.append(time.perf_counter() - t0)
            r, o = mb / min(raw), mb / min(ours)
            print(f"\n## Tokenization, {name}: {label}, {mb:.2f} MB ({len(docs):,} documents, "
                  f"{mb * 1e6 / len(docs):,.0f} bytes each), best of {args.repeats}\n")
            print("| what | MB/s |\n|---|---:|")
            print(f"| raw tiktoken encode_ordinary per document, text in memory, 1 thread | {r:.2f} |")
            print(f"| data.prepare end-to-end (read, split, encode, shards, manifest), 1 process | {o:.2f} |")
            print(f"| ratio | {o / r:.2f}x |")


def run_minhash(args):
    rng = random.Random(0)
    lines = (SAMPLE / "mono" / "en.txt").read_text().splitlines()
    originals = [" ".join(rng.sample(lines, 10)) for _ in range(1000)]
    planted = []
    for i in range(500):
        w = originals[i].split()
        for _ in range(rng.randint(1, 8)):
            w[rng.randrange(len(w))] = rng.choice(["xyzzy", "plugh", "foo", "bar"])
        planted.append(" ".join(w))

    def jac(a, b):
        ha, hb = (set(filters.shingle_hashes([x], ["en"])[0].tolist()) for x in (a, b))
        return len(ha & hb) / len(ha | hb)
    j = np.array([jac(o, p) for o, p in zip(originals, planted)])
    docs = originals + planted
    print(f"\n## MinHash-LSH on planted near-duplicates: 1,000 originals (10 sentences each) + 500 copies with 1-8 "
          f"words replaced; truth = exact 5-word-shingle Jaccard >= 0.8 ({(j >= 0.8).sum()} of 500)\n")
    print("| perms | bands x rows | recall | precision | missed with J>=0.9 | dropped with J<0.7 | originals dropped "
          "| MB/s |\n|---:|---|---:|---:|---:|---:|---:|---:|")
    mb = sum(len(d.encode()) for d in docs) / 1e6
    for perms, bands in ((64, 16), (128, 16), (128, 32), (256, 32), (256, 64)):
        t0 = time.perf_counter()
        sig = filters.minhash_signatures(docs, ["en"] * len(docs), num_perm=perms)
        drop = filters.near_duplicates(filters.band_keys(sig, bands), lambda i: sig[i], threshold=0.8)
        dt = time.perf_counter() - t0
        f, t = drop[1000:], j >= 0.8
        print(f"| {perms} | {bands} x {perms // bands} | {(f & t).sum() / t.sum():.3f} | "
              f"{(f & t).sum() / max(f.sum(), 1):.3f} | {(~f & (j >= 0.9)).sum()} | {(f & (j < 0.7)).sum()} | "
              f"{drop[:1000].sum()} | {mb / dt:.2f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="lid,stages,tokenize,minhash")
    ap.add_argument("--bench_mono", default="/work/shared/data/mono")
    ap.add_argument("--per_lang", type=int, default=1000)
    ap.add_argument("--tokenizer", default="", help="a bpe.py tokenizer dir (default: cl100k_base via bpe.py)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for name in args.only.split(","):
        {"lid": run_lid, "stages": run_stages, "tokenize": run_tokenize, "minhash": run_minhash}[name](args)


if __name__ == "__main__":
    main()
