"""Benchmarks for bpe.py (results: docs/BENCHMARKS.md (bpe section)). Re-run everything with:

    .venv/bin/pip install -r bench/requirements.txt
    .venv/bin/python bench/bench_bpe.py --src /work/shared/data/mono --work /tmp/bench_bpe

Sections (pick with --only): corpus, train (ours vs HF tokenizers, wall time and peak RSS, each run in a fresh
process, alternating, median of --repeats), profile (CPU seconds of counting and of merges by bucket), naive (minbpe-style recount per merge, a few merges, extrapolated),
encode (tiktoken throughput, ours vs cl100k_base), ablation (max CJK/Thai run length vs held-out compression),
compression (bytes/token per language: ours at 32K and 256K vs cl100k/o200k), scale (32K and 256K train time
and peak RSS on the 17 MB split and on all of --src), toy (8192 tokens on data/sample), markdown (print the tables of results.json).
Timings on a shared machine are noisy: every comparison is made side by side in one run.
"""
import dataclasses
import glob
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import regex

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import bpe  # noqa: E402

LANGS = "zh en es de fr pt ru it ar ja ko th vi id pl tr nl he".split()


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        flags = info.get("Flags", "")
        return (f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} cores"
                f"{', AVX2' if 'avx2' in flags else ''}{', AVX-512' if 'avx512f' in flags else ''}")
    except OSError:
        return platform.processor()


def prepare_corpus(src, work, train_bytes=1 << 20, held_bytes=256 << 10):
    """work/train/<lang>.txt: the first <= train_bytes of each language; work/heldout/<lang>.txt: its last lines
    (10% of the file, at most held_bytes), never seen in training."""
    for sub in ("train", "heldout"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    for lang in LANGS:
        lines = Path(src, f"{lang}.txt").read_text(encoding="utf-8").splitlines(keepends=True)
        size = sum(len(x.encode()) for x in lines)
        held, hb = [], 0
        while lines and hb < min(size // 10, held_bytes):
            held.append(lines.pop())
            hb += len(held[-1].encode())
        train, tb = [], 0
        for x in lines:
            if tb + len(x.encode()) > train_bytes:
                break
            train.append(x)
            tb += len(x.encode())
        (work / "train" / f"{lang}.txt").write_text("".join(train), encoding="utf-8")
        (work / "heldout" / f"{lang}.txt").write_text("".join(held[::-1]), encoding="utf-8")
    tb = sum(p.stat().st_size for p in (work / "train").glob("*.txt"))
    hb = sum(p.stat().st_size for p in (work / "heldout").glob("*.txt"))
    print(f"corpus: {tb / 1e6:.2f} MB train, {hb / 1e6:.2f} MB held-out in {work}")
    return tb


# ----------------------------------------------------------------------------- child processes (one run each)

def child(args):
    files = sorted(glob.glob(str(Path(args.train_dir or Path(args.work) / "train") / "*.txt")))
    t0 = time.perf_counter()
    if args.child == "hf":
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([     # the same regex, then bytes -> printable chars
            pre_tokenizers.Split(Regex(args.pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=bpe.SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train(files, trainer)
        seconds = time.perf_counter() - t0
        byte_of = {c: b for b, c in _bytes_to_unicode().items()}
        vocab = [bytes(byte_of[c] for c in t) for t in tok.get_vocab() if t not in bpe.SPECIAL_TOKENS]
    else:
        texts = bpe.read_texts(files)
        ranks = bpe.train(texts, args.vocab_size, alpha=args.alpha, pattern=args.pattern, verbose=False)
        seconds = time.perf_counter() - t0
        if args.save:
            bpe.save(args.save, ranks, pattern=args.pattern)
        vocab = list(ranks)
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    rss = max(peak_rss_kb(), kids.ru_maxrss)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    if args.vocab_out:
        Path(args.vocab_out).write_text(json.dumps([v.hex() for v in vocab]))
    print(json.dumps({"seconds": seconds, "peak_rss_mb": rss / 1024, "cpu_seconds": cpu}))


def peak_rss_kb():
    """This process's peak RSS. Not ru_maxrss: on Linux that carries over the parent's peak through fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _bytes_to_unicode():
    """GPT-2's byte -> printable character table (what HF ByteLevel uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def run_child(args, kind, vocab_size, alpha=1.0, pattern=bpe.PATTERN, save=None, vocab_out=None, train_dir=None):
    cmd = [sys.executable, __file__, f"--child={kind}", f"--work={args.work}", f"--vocab_size={vocab_size}",
           f"--alpha={float(alpha)}", f"--pattern={pattern}"]
    cmd += [f"--train_dir={train_dir}"] if train_dir else []
    cmd += [f"--save={save}"] if save else []
    cmd += [f"--vocab_out={vocab_out}"] if vocab_out else []
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- sections

def bench_train(args, results):
    """Ours vs HF tokenizers, same corpus, same regex, same vocab size; alternating runs, medians."""
    runs = {"ours": [], "hf": []}
    for r in range(args.repeats):
        for kind in ("ours", "hf"):
            save = args.work / "tok-32k-alpha1" if kind == "ours" and r == 0 else None
            res = run_child(args, kind, args.vocab_size, save=save, vocab_out=args.work / f"vocab-{kind}.json")
            runs[kind].append(res)
            print(f"train {kind} run {r}: {res['seconds']:.1f}s wall, {res['cpu_seconds']:.1f}s CPU, "
                  f"peak RSS {res['peak_rss_mb']:.0f} MB, load {os.getloadavg()[0]:.1f}", flush=True)
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    cpu = {k: statistics.median(x["cpu_seconds"] for x in v) for k, v in runs.items()}
    ours_v = set(json.loads((args.work / "vocab-ours.json").read_text()))
    hf_v = set(json.loads((args.work / "vocab-hf.json").read_text()))
    results["train"] = {"runs": runs, "median_s": med, "ratio_ours_over_hf": med["ours"] / med["hf"], "median_cpu_s": cpu,
                        "peak_rss_mb": {k: max(x["peak_rss_mb"] for x in v) for k, v in runs.items()},
                        "vocab_overlap": len(ours_v & hf_v) / len(ours_v | hf_v)}
    print(f"train: ours {med['ours']:.1f}s vs HF {med['hf']:.1f}s = {med['ours'] / med['hf']:.2f}x wall "
          f"(CPU: {cpu['ours']:.1f}s vs {cpu['hf']:.1f}s); "
          f"vocab overlap (Jaccard) {results['train']['vocab_overlap']:.3f}")
    res = run_child(args, "ours", args.vocab_size, alpha=bpe.ALPHA, save=args.work / "tok-32k")
    results["train"]["ours_default_alpha_s"] = res["seconds"]
    print(f"train: ours with alpha={bpe.ALPHA} (the default): {res['seconds']:.1f}s")


def bench_naive(args, results, n_merges=3):
    """minbpe's RegexTokenizer.train: every chunk occurrence kept, all pairs recounted for every merge."""
    files = sorted((args.work / "train").glob("*.txt"))
    text = "".join(p.read_text(encoding="utf-8") for p in files)
    mb = len(text.encode()) / 1e6
    ids = [list(ch.encode("utf-8")) for ch in regex.findall(bpe.PATTERN, text)]
    del text
    times = []
    for k in range(n_merges):
        t0 = time.perf_counter()
        stats = Counter()
        for chunk in ids:
            stats.update(zip(chunk, chunk[1:]))
        pair = max(stats, key=stats.get)
        ids = [bpe.merge(chunk, pair, 256 + k) for chunk in ids]
        times.append(time.perf_counter() - t0)
    per = statistics.median(times)
    n = args.vocab_size - 256 - len(bpe.SPECIAL_TOKENS)
    results["naive"] = {"mb": mb, "s_per_merge": per, "s_per_merge_per_mb": per / mb,
                        "extrapolated_hours": per * n / 3600}
    print(f"naive (minbpe-style): {per:.2f}s per merge on {mb:.1f} MB = {per / mb:.3f} s/merge/MB -> "
          f"{n} merges ~ {per * n / 3600:.1f} h (constant per-merge cost assumed)")
    counts = bpe.count_chunks(bpe.read_texts(files), alpha=1.0, log=lambda *a: None)
    t0 = time.perf_counter()
    bpe.train_naive(counts, 256 + n_merges)
    per_dedup = (time.perf_counter() - t0) / n_merges
    results["naive"]["oracle_s_per_merge"] = per_dedup
    print(f"naive oracle (bpe.train_naive, distinct chunks): {per_dedup:.2f}s per merge -> "
          f"{per_dedup * n / 3600:.1f} h")


def bench_encode(args, results):
    """Encode throughput through tiktoken: our 32K tokenizer vs cl100k_base, same held-out text, 1 thread."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted((args.work / "heldout").glob("*.txt")))
    mb = len(text.encode()) / 1e6
    encs = {"ours-32k": bpe.load(args.work / "tok-32k"),
            "cl100k_base": bpe.reference_encoding("cl100k_base", args.ref / "cl100k_base.tiktoken")}
    best = {name: [] for name in encs}
    for _ in range(args.repeats):
        for name, enc in encs.items():
            t0 = time.perf_counter()
            enc.encode_ordinary(text)
            best[name].append(time.perf_counter() - t0)
    mbs = {name: mb / statistics.median(t) for name, t in best.items()}
    results["encode"] = {"mb": mb, "mb_per_s": mbs, "ratio": mbs["ours-32k"] / mbs["cl100k_base"]}
    print(f"encode: ours {mbs['ours-32k']:.2f} MB/s vs cl100k {mbs['cl100k_base']:.2f} MB/s = "
          f"{mbs['ours-32k'] / mbs['cl100k_base']:.2f}x on {mb:.1f} MB")


def bench_profile(args, results):
    """Where the time goes, in CPU seconds of this one process: counting, then merges in buckets."""
    texts = bpe.read_texts(sorted((args.work / "train").glob("*.txt")))
    c0 = time.process_time()
    counts = bpe.count_chunks(texts, alpha=1.0, processes=1, log=lambda *a: None)
    c1 = time.process_time()
    marks = []

    class Clock:                                   # stands in for tqdm: note the CPU time of every merge
        def __init__(self, *a, **k):
            pass

        def update(self):
            marks.append(time.process_time())

        def close(self):
            pass
    real_tqdm, bpe.tqdm = bpe.tqdm, Clock
    try:
        bpe.train_fast(counts, args.vocab_size - len(bpe.SPECIAL_TOKENS))
    finally:
        bpe.tqdm = real_tqdm
    edges = sorted({min(e, len(marks)) for e in (0, 100, 1000, 4000, 16000, len(marks))})   # small vocabs too
    start = [c1] + marks
    buckets = {f"merges {a}-{b}": start[b] - start[a] for a, b in zip(edges, edges[1:])}
    in_chunks = Counter(pair for c in counts for b in [c.encode("utf-8")] for pair in set(zip(b, b[1:])))
    widest = [(n, bytes(p).hex()) for p, n in in_chunks.most_common(3)]      # the pairs the first merges must visit
    results["profile"] = {"count_1proc_cpu_s": c1 - c0, **buckets, "distinct_chunks": len(counts),
                          "widest_byte_pairs": widest}
    print(f"profile: counting (1 process) {c1 - c0:.1f}s CPU; " + ", ".join(f"{k} {v:.1f}s" for k, v in buckets.items()))
    print(f"profile: {len(counts):,} distinct chunks; the byte pairs in most of them: " +
          ", ".join(f"{p} in {n:,}" for n, p in widest))


def heldout_texts(args):
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted((args.work / "heldout").glob("*.txt"))}


def bench_ablation(args, results):
    """How long may a CJK/Thai pre-token be? Train 32K with each cap; held-out bytes/token and train time."""
    texts = heldout_texts(args)
    rows = {}
    for cap in (4, 8, 16, 32, 64, None):
        pat = bpe.make_pattern(cap)
        d = args.work / f"tok-32k-run{cap}"
        res = run_child(args, "ours", args.vocab_size, alpha=bpe.ALPHA, pattern=pat, save=d)
        table = bpe.bytes_per_token({"x": bpe.load(d)}, texts)
        rows[str(cap)] = {"seconds": res["seconds"], **{lang: table[lang]["x"] for lang in texts},
                          "all": _overall(table, texts, "x")}
        print(f"ablation max_run={cap}: {res['seconds']:.1f}s, " +
              ", ".join(f"{k}={rows[str(cap)][k]:.2f}" for k in ("zh", "ja", "th", "all")), flush=True)
    results["ablation"] = rows


def _overall(table, texts, name):
    nbytes = sum(len(t.encode()) for t in texts.values())
    return nbytes / sum(len(texts[lang].encode()) / table[lang][name] for lang in texts)


def bench_compression(args, results):
    """Bytes/token per language on held-out text: ours at 32K and --big_vocab vs cl100k_base and o200k_base."""
    big = args.work / f"tok-{args.big_vocab // 1000}k"
    if not (big / "tokenizer.json").exists():
        res = run_child(args, "ours", args.big_vocab, alpha=bpe.ALPHA, save=big)
        results["big"] = {"vocab_size": args.big_vocab, "seconds": res["seconds"], "peak_rss_mb": res["peak_rss_mb"]}
        print(f"big: {args.big_vocab} tokens on the same corpus in {res['seconds']:.1f}s, "
              f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    encs = {"ours-32k": bpe.load(args.work / "tok-32k"), f"ours-{args.big_vocab // 1000}k": bpe.load(big)}
    for name in ("cl100k_base", "o200k_base"):
        encs[name] = bpe.reference_encoding(name, args.ref / f"{name}.tiktoken")
    texts = heldout_texts(args)
    table = bpe.bytes_per_token(encs, texts)
    table["all"] = {name: _overall(table, texts, name) for name in encs}
    results["compression"] = table
    print("| lang | " + " | ".join(encs) + " |\n" + "|---" * (len(encs) + 1) + "|")
    for lang, row in table.items():
        print(f"| {lang} | " + " | ".join(f"{row[n]:.2f}" for n in encs) + " |")


def bench_scale(args, results):
    """Train time and peak RSS vs corpus size: 32K and 256K on the 17 MB split and on every file in --src."""
    full = sum(p.stat().st_size for p in Path(args.src).glob("*.txt"))
    rows = []
    for name, train_dir, mb in (("split", None, results.get("corpus_bytes", 0) / 1e6), ("full", args.src, full / 1e6)):
        for vocab in (args.vocab_size, args.big_vocab):
            res = run_child(args, "ours", vocab, alpha=bpe.ALPHA, train_dir=train_dir)
            rows.append({"corpus": name, "mb": mb, "vocab_size": vocab, **res})
            print(f"scale: {vocab} tokens on {mb:.1f} MB: {res['seconds']:.1f}s, peak RSS {res['peak_rss_mb']:.0f} MB",
                  flush=True)
    results["scale"] = rows


def markdown(args, results):
    """Print the tables of docs/BENCHMARKS.md (bpe section) from results.json."""
    if "ablation" in results:
        caps = list(results["ablation"])
        print("| max_run | " + " | ".join(caps) + " |\n" + "|---" * (len(caps) + 1) + "|")
        for key in ("zh", "ja", "th", "en", "ar", "all", "seconds"):
            print(f"| {key} | " + " | ".join(f"{results['ablation'][c][key]:.2f}" for c in caps) + " |")
    if "compression" in results:
        table = results["compression"]
        names = list(table["all"])
        big = next(n for n in names if n.startswith("ours-") and n != "ours-32k")
        print("\n| lang | " + " | ".join(names) + f" | {big} / ours-32k | {big} / o200k |\n" +
              "|---" * (len(names) + 3) + "|")
        for lang, row in table.items():
            print(f"| {lang} | " + " | ".join(f"{row[n]:.2f}" for n in names) +
                  f" | {row[big] / row['ours-32k']:.2f}x | {row[big] / row['o200k_base']:.2f}x |")
    for row in results.get("scale", []):
        print(f"scale: {row['vocab_size']} on {row['mb']:.1f} MB: {row['seconds']:.1f}s, {row['peak_rss_mb']:.0f} MB")


def bench_toy(args, results):
    """The toy pipeline's first step: an 8192-token tokenizer on the bundled data/sample/mono (budget: well under 30 s)."""
    runs = [run_child(args, "ours", 8192, alpha=bpe.ALPHA, train_dir=ROOT / "data" / "sample" / "mono")
            for _ in range(args.repeats)]
    results["toy"] = {"runs": runs, "median_s": statistics.median(r["seconds"] for r in runs)}
    print(f"toy: 8192 tokens on data/sample/mono: " + ", ".join(f"{r['seconds']:.1f}s wall/{r['cpu_seconds']:.1f}s CPU"
                                                              for r in runs))


@dataclasses.dataclass
class BPEBenchConfig:
    src: str = "/work/shared/data/mono"  # dir with <lang>.txt (up to a few MB each)
    ref: str = str(bpe.REFERENCE_DIR)   # dir with cl100k_base/o200k_base.tiktoken
    work: str = "/tmp/bench_bpe"        # scratch dir (corpus split, tokenizers)
    vocab_size: int = 32000             # vocabulary of the main comparison
    big_vocab: int = 256000             # PolyLM's vocabulary, for the scale section
    repeats: int = 3                    # runs per measurement (medians)
    only: str = "corpus,train,profile,naive,encode,ablation,compression,scale,toy,markdown"  # sections, in order
    child: str = ""                     # (internal) run one training in this process: ours | hf
    alpha: float = 1.0                  # (internal) the child's sampling exponent
    pattern: str = bpe.PATTERN          # (internal) the child's pre-tokenizer regex
    save: str = ""                      # (internal) where the child saves its tokenizer
    vocab_out: str = ""                 # (internal) where the child writes its vocabulary
    train_dir: str = ""                 # (internal) the child's training text dir


def run(args):
    if args.child:
        return child(args)
    args.work, args.ref = Path(args.work), Path(args.ref)
    out = args.work / "results.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    results["machine"] = {"cpu": cpu_name(), "python": platform.python_version(), "load_avg_start": os.getloadavg()}
    print(results["machine"])
    sections = {"corpus": lambda a, r: r.__setitem__("corpus_bytes", prepare_corpus(a.src, a.work)),
                "train": bench_train, "naive": bench_naive, "encode": bench_encode,
                "ablation": bench_ablation, "compression": bench_compression, "scale": bench_scale,
                "profile": bench_profile, "toy": bench_toy, "markdown": markdown}
    for name in args.only.split(","):
        sections[name](args, results)
        results["machine"]["load_avg_end"] = os.getloadavg()
        out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


def main(argv=None):
    from config import run_cli
    return run_cli(run, BPEBenchConfig, argv, prog="bench/bench_bpe.py")


if __name__ == "__main__":
    main()
