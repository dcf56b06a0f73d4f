"""Benchmarks for the data pipeline (PolyLM paper §3, pre-training data; results: docs/BENCHMARKS.md (data section)).

    .venv/bin/python bench/bench_data.py [--only=stages,tokenize,minhash,scale] [--bench_mono=/work/shared/data/mono]
    .venv/bin/python bench/bench_data.py --only=scale --scale_mb=400     # the scale section alone (~25 min, 2 cores)

Sections (language identification has its own benchmark: bench/bench_lid.py):
  stages    MB/s of every stage on the bundled sample (pipeline.prepare with all stages, 1 worker process).
  tokenize  end-to-end (read -> split -> tokenize -> shards -> manifest, pipeline.prepare, 1 process) vs raw tiktoken
            encode_ordinary of the same documents already in memory, same tokenizer, 1 thread.
  minhash   planted near-duplicates: precision/recall against exact shingle Jaccard for a few (perms, bands).
  scale     `python data.py` (all stages) as a real user runs it, on --bench_mono (40 MB, 18 languages) and on a
            synthetic corpus of --scale_mb MB built from it in the shapes of real corpora (FineWeb-2 parquet, OSCAR
            .jsonl.zst, CC-100 .txt.xz; documents of 5-15 shuffled lines, a share with words changed, some exact
            copies): seconds and MB/s per core of every stage, peak RSS of the whole process tree and of the largest
            process, the dedup index's bytes per document, 1 vs 2 machines (phases as job arrays, run one after the
            other here), the cost of one big .xz (one unit: one decompression pass), and train.py's start-up
            (first and cached) on a raw data_dir of the same size.
Timings on a shared 2-core machine are noisy; each comparison is made side by side in one run.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import threading
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import corpus  # noqa: E402
import filters  # noqa: E402
import lid  # noqa: E402
import pipeline  # noqa: E402
import workunits  # noqa: E402
from config import cpu_name  # noqa: E402

SAMPLE = ROOT / "data" / "sample"


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
        m = pipeline.prepare(SAMPLE, enc, h, d, 0.05, log=lambda s: None, stages=pipeline.STAGES, workers=1)
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
            docs = [d for _, (lang, kind, p) in pipeline.discover_sources(src).items() for d, _ in corpus.read_records(p)]
            mb = sum(len(d.encode()) for d in docs) / 1e6
            raw, ours = [], []
            for i in range(args.repeats):                             # alternate, take the best of each
                t0 = time.perf_counter()
                for d in docs:
                    enc.encode_ordinary(d)
                raw.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                pipeline.prepare(src, enc, h, Path(tmp) / f"out{k}-{i}", 0.05, log=lambda s: None, workers=1)
                ours.append(time.perf_counter() - t0)
            r, o = mb / min(raw), mb / min(ours)
            print(f"\n## Tokenization, {name}: {label}, {mb:.2f} MB ({len(docs):,} documents, "
                  f"{mb * 1e6 / len(docs):,.0f} bytes each), best of {args.repeats}\n")
            print("| what | MB/s |\n|---|---:|")
            print(f"| raw tiktoken encode_ordinary per document, text in memory, 1 thread | {r:.2f} |")
            print(f"| pipeline.prepare end-to-end (read, split, encode, shards, manifest), 1 process | {o:.2f} |")
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


def tree_rss(pid):
    """(sum of RSS over a process and its descendants, largest single RSS) in bytes, from /proc."""
    kids, procs = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{d}/statm") as f:
                    procs[int(d)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    todo, total, top = [pid], 0, 0
    while todo:
        p = todo.pop()
        total += procs.get(p, 0)
        top = max(top, procs.get(p, 0))
        todo += kids.get(p, [])
    return total, top


def timed_run(cmd, **kw):
    """Run a command; (seconds, peak tree RSS, peak single-process RSS, stdout) sampling /proc every 0.1 s."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
    peak = [0, 0]

    def watch():
        while p.poll() is None:
            total, top = tree_rss(p.pid)
            peak[0], peak[1] = max(peak[0], total), max(peak[1], top)
            time.sleep(0.1)
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    out, _ = p.communicate()
    th.join()
    if p.returncode:
        raise SystemExit(f"{cmd} failed:\n{out[-3000:]}")
    return time.perf_counter() - t0, peak[0], peak[1], out


def synthetic_corpus(src, out, target_mb, seed=0):
    """A corpus of about target_mb MB from src/<lang>.txt in the layouts of real downloads: FineWeb-2 parquet for 6
    languages, OSCAR .jsonl.zst (text in `content`) for 6, CC-100-style .txt.xz (one document per line) for 6.
    Documents are 5-15 random lines of one language; 20% have 1-3 words replaced (near duplicates of nothing in
    particular, but not exact copies), 2% are exact copies of an earlier document."""
    import lzma
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard
    import corpus as C
    rng = random.Random(seed)
    langs = lid.LANGS
    per_lang = target_mb * 1e6 / len(langs)
    code3 = {lang: codes.split()[0] for lang, codes in C.ISO639_3.items()}
    scripts = {"zh": "Hani", "ja": "Jpan", "ko": "Hang", "ru": "Cyrl", "ar": "Arab", "he": "Hebr", "th": "Thai"}
    for k, lang in enumerate(langs):
        lines = [x for x in Path(src, f"{lang}.txt").read_text(encoding="utf-8").splitlines() if x.strip()]
        docs, size = [], 0
        while size < per_lang:
            if docs and rng.random() < 0.02:
                d = rng.choice(docs)
            else:
                d = " ".join(rng.choice(lines) for _ in range(rng.randint(5, 15)))
                if rng.random() < 0.2:
                    w = d.split(" ")
                    for _ in range(rng.randint(1, 3)):
                        w[rng.randrange(len(w))] = rng.choice(["xyzzy", "plugh", "42", "ok"])
                    d = " ".join(w)
            docs.append(d)
            size += len(d.encode())
        if k % 3 == 0:
            d = Path(out, "fineweb2", "data", f"{code3[lang]}_{scripts.get(lang, 'Latn')}", "train")
            d.mkdir(parents=True, exist_ok=True)
            for i in range(0, len(docs), 20000):
                pq.write_table(pa.table({"text": docs[i:i + 20000], "id": [str(j) for j in range(len(docs[i:i + 20000]))]}),
                               d / f"{i // 20000:03d}_00000.parquet", row_group_size=2000)
        elif k % 3 == 1:
            d = Path(out, "oscar", f"{lang}_meta")
            d.mkdir(parents=True, exist_ok=True)
            body = "".join(json.dumps({"content": t, "metadata": {"identification": {"label": lang}}},
                                      ensure_ascii=False) + "\n" for t in docs)
            (d / f"{lang}_meta_part_1.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(body.encode()))
        else:
            d = Path(out, "cc100")
            d.mkdir(parents=True, exist_ok=True)
            with lzma.open(d / f"{lang}.txt.xz", "wt", encoding="utf-8", preset=1) as f:
                f.write("\n".join(docs) + "\n")
    return sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())


def _stage_table(stats, cores):
    rows = ["| stage | MB in | CPU-seconds (sum over workers) | MB/s per core |", "|---|---:|---:|---:|"]
    for s in ("read", "lid", "rules", "quality", "minhash", "dedup", "tokenize", "write", "load_models"):
        sec, mb = stats["seconds"].get(s, 0), stats["bytes"].get(s, 0) / 1e6
        if sec:
            rows.append(f"| {s} | {mb:,.1f} | {sec:,.1f} | " + (f"{mb / sec:.2f} |" if mb else "– |"))
    return "\n".join(rows)


def run_scale(args):
    import bpe
    py = sys.executable
    tok = ROOT / "cache" / "tokenizer-8192-sample"
    if not (tok / "tokenizer.json").exists():
        bpe.train_from_files(sorted(str(p) for p in (SAMPLE / "mono").glob("*.txt")), 8192, str(tok))
    work = Path(args.scale_dir)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cores = os.cpu_count()
    print(f"\n## Scale: python data.py, all stages, {cores} worker processes, CPU: {cpu_name()}\n")
    synth = work / f"synthetic-{args.scale_mb}"
    if not synth.exists():
        t0 = time.perf_counter()
        size = synthetic_corpus(args.bench_mono, synth, args.scale_mb)
        print(f"synthetic corpus: {size / 1e6:,.0f} MB on disk, made in {time.perf_counter() - t0:.0f} s")
    rows = ["| input | MB of text | documents | wall s | tree peak RSS | largest process | dedup index on disk, "
            "bytes/doc | kept |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    tables = []
    for label, inp in (("shared/data/mono (18 x .txt)", Path(args.bench_mono)), (f"synthetic {args.scale_mb} MB "
                       "(parquet, .jsonl.zst, .txt.xz)", synth)):
        out = work / f"out-{inp.name}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [py, str(ROOT / "data.py"), f"--input={inp}", f"--tokenizer={tok}", f"--out={out}", "--keep_work=True",
               f"--workers={cores}"]
        sec, peak, top, log = timed_run(cmd, env=env, cwd=ROOT)
        m = json.loads((out / "manifest.json").read_text())
        st = json.loads((out / "stats.json").read_text())
        docs = sum(c.get("docs", 0) for k, c in st["by_lang"].items())
        kept = sum(c.get("kept_docs", 0) for c in st["by_lang"].values())
        unit_docs = sum(json.loads(p.read_text())["n_docs"] for p in out.glob(".work-*/units/*.json"))
        index = sum(p.stat().st_size for p in out.glob(".work-*/units/*.npy"))
        mb = sum(c.get("bytes", 0) for c in st["by_lang"].values()) / 1e6
        rows.append(f"| {label} | {mb:,.1f} | {docs:,} | {sec:,.0f} | {peak / 2**20:,.0f} MiB | {top / 2**20:,.0f} "
                    f"MiB | {index / max(unit_docs, 1):,.0f} | {100 * kept / max(docs, 1):.1f}% |")
        tables.append((label, st, m))
        shutil.rmtree(next(out.glob(".work-*")), ignore_errors=True)
    print("\n".join(rows))
    for label, st, m in tables:
        print(f"\n### {label}: per stage\n")
        print(_stage_table(st, cores))
        print("\n```\n" + pipeline.format_stats(st) + "\n```")
    # 2 machines, phase by phase (here one after the other: each "machine" gets all the cores in turn)
    one, two = work / f"out-{synth.name}", work / "out-two-nodes"
    shutil.rmtree(two, ignore_errors=True)
    total = 0.0
    for phase in ("units", "dedup", "tokenize", "finish"):
        for rank in (range(2) if phase != "finish" else [0]):
            sec, *_ = timed_run([py, str(ROOT / "data.py"), f"--input={synth}", f"--tokenizer={tok}", f"--out={two}",
                                 f"--phase={phase}", f"--nodes={2 if phase != 'finish' else 1}", f"--node_rank={rank}",
                                 f"--workers={cores}"], env=env, cwd=ROOT)
            total += sec
    same = (one / "manifest.json").read_bytes() == (two / "manifest.json").read_bytes() and all(
        (one / f.name).read_bytes() == f.read_bytes() for f in two.glob("*.bin"))
    print(f"\n2 machines (phases as job arrays, run here one task after the other): {total:,.0f} s of task time; "
          f"output byte-identical to 1 machine: {same}")
    # one big .xz: one unit, decompressed once
    big = work / "big.txt.xz"
    if not big.exists():
        import lzma
        with lzma.open(big, "wb", preset=1) as f:
            for p in sorted(synth.rglob("*.txt.xz")):
                with lzma.open(p, "rb") as g:
                    shutil.copyfileobj(g, f, 1 << 24)
    t0 = time.perf_counter()
    n = 0
    for line in corpus.lines(big):
        n += len(line) + 1
    dt = time.perf_counter() - t0
    units, _ = workunits.plan_units([big])
    ranges = max(1, -(-n // (64 << 20)))                             # the old 64 MB ranges of the decompressed stream
    cc100 = -(-300e9 // (64 << 20))                                  # CC-100 en.txt.xz: ~300 GB of text
    print(f"\none {big.stat().st_size / 1e6:,.0f} MB .txt.xz ({n / 1e6:,.0f} MB of text): {len(units)} unit, read "
          f"(decompressed + decoded) in {dt:.1f} s = {n / 1e6 / dt:.0f} MB/s, once. Cut into {ranges} ranges of 64 MB as "
          f"before, every range decompressing what precedes it, it would have cost {(ranges + 1) / 2:.1f}x that "
          f"({n * (ranges + 1) / 2 / 1e6:,.0f} MB); the factor grows with the file: {(cc100 + 1) / 2:,.0f}x "
          f"(~{300 * (cc100 + 1) / 2 / 1e3:,.0f} TB) for a 300 GB CC-100 en.txt.xz.")
    # train.py start-up on a raw data_dir of the same size
    raw = work / "raw_data_dir"
    if not raw.exists():
        (raw / "mono").mkdir(parents=True)
        for lang in lid.LANGS:
            with open(raw / "mono" / f"{lang}.txt", "w", encoding="utf-8") as f:
                for p in list(synth.rglob(f"{lang}.txt.xz")) + list(synth.rglob(f"{lang}_meta_part_1.jsonl.zst")) + \
                        [q for q in synth.rglob("*.parquet") if corpus.lang_from_path(q, synth)[0] == lang]:
                    for text, _ in corpus.read_records(p):
                        f.write(text.replace("\n", " ") + "\n")
    cache = ROOT / "cache" / f"shards-{bpe.tokenizer_hash(tok)[:12]}-{raw.name}"
    shutil.rmtree(cache, ignore_errors=True)
    mb = sum(f.stat().st_size for f in (raw / "mono").iterdir()) / 1e6
    print(f"\ntrain.py start-up on a raw data_dir of {mb:,.0f} MB (toy model, 1 step, tokenizer given):\n")
    print("| start | wall s (whole command) | tree peak RSS | largest process |\n|---|---:|---:|---:|")
    for label in ("first (tokenizes data_dir into cache/)", "again (cached shards: sizes, mtimes, sampled hash)"):
        sec, peak, top, _ = timed_run([py, str(ROOT / "train.py"), f"--data_dir={raw}", f"--tokenizer_dir={tok}",
                                       f"--out_dir={work / 'run'}", "--max_iters=1", "--eval_interval=1",
                                       "--eval_tokens=256", "--samples=False", "--batch_size=2"], env=env, cwd=ROOT)
        print(f"| {label} | {sec:,.1f} | {peak / 2**20:,.0f} MiB | {top / 2**20:,.0f} MiB |")


@dataclasses.dataclass
class BenchConfig:
    only: str = "stages,tokenize,minhash,scale"  # sections to run, comma-separated
    bench_mono: str = "/work/shared/data/mono"  # 18 x <lang>.txt of real text (the shared bundle's mono/)
    tokenizer: str = ""                  # a bpe.py tokenizer dir ('' = cl100k_base via bpe.py)
    repeats: int = 3                     # tokenize section: rounds (best of)
    scale_mb: int = 400                  # scale section: size of the synthetic corpus
    scale_dir: str = "/tmp/polylm-bench-scale"  # scale section: where its corpora and outputs go


def bench(cfg):
    for name in cfg.only.split(","):
        {"stages": run_stages, "tokenize": run_tokenize, "minhash": run_minhash,
         "scale": run_scale}[name](cfg)


def main(argv=None):
    from config import run_cli
    return run_cli(bench, BenchConfig, argv, prog="bench/bench_data.py")


if __name__ == "__main__":
    main()
