"""PolyLM's data pipeline, from raw web text to token shards, on one box or many (PolyLM paper §3, "Pre-training data":
language identification, rule-based filtering, a model-based quality filter and MinHash-LSH de-duplication remove
about 28% of the text; then the 256K BPE tokenizer). data.py is the command line; corpus.py reads the inputs,
workunits.py cuts them into units of work and does one unit's work in a worker process, lid.py and filters.py hold the
models and rules, shards.py the output format. This file runs the phases.

How a run is organised: PHASES, each a set of independent tasks, so that N machines can share them
  plan      the inputs become units of work, the same on every machine: a file; a ~64 MB byte range of a big plain
            file, cut at a document boundary; a few row groups of a parquet file. A compressed file is ONE unit:
            finding a range inside a .gz/.xz/.zst stream means decompressing everything before it, so ranges of one
            compressed file would cost quadratic decompression. (Corpora ship as many compressed shards; a single
            huge one should be re-split.) Files whose path declares a language outside the 18 (and MADLAD's noisy
            / FineWeb-2's removed splits) are skipped unread and counted.
  units     per unit: read -> lid -> rules -> quality; then either tokenize straight away (no dedup stage) or keep
            the documents with their exact-duplicate keys and MinHash signatures for the next phase.
  dedup     one task per LSH band: the near-duplicate pairs that band finds (filters.band_pairs). Bands are
            independent, so this runs as parallel jobs; then exact duplicates + the union of all pairs
            (filters.components) give the documents to drop: in every cluster all but the first.
  tokenize  per unit: the kept documents minus the duplicates -> part shards.
  finish    the parts of each (source, split) are joined in unit order into <source>.<split>.bin, then stats.json,
            the tokenizer copy and manifest.json, written last.
One box runs them all in sequence (`--phase=all`, worker processes per phase); N machines run
`--phase=units`, `dedup`, `tokenize` as job arrays with `--nodes=N --node_rank=i` (defaults: SLURM_ARRAY_TASK_COUNT /
SLURM_ARRAY_TASK_ID), then `--phase=finish` once (scripts/data_pipeline.sbatch chains them with dependencies).

Invariants
  - The output is the same bytes whatever the number of machines, workers and interruptions: units in plan order,
    documents in file order, the first copy of a duplicate kept, and the output depends on no timing.
  - Crash consistency: every output is written to a unique temporary name (pid in it) and renamed; a unit's marker
    (work dir, JSON) is written only after its files are fsynced, and lists their sizes: a marker whose files are
    missing or of another size is not "done". A unit is worked on under an exclusive lock (flock on
    work/locks/<unit>.lock), so a rerun waits for orphaned workers of a killed run instead of racing them, and only
    the lock holder clears a unit's stale temporary files. kill -9 at any moment, then the same command: it resumes.
  - The work dir is .work-<fingerprint of inputs and settings>; changing any setting that changes the output starts
    a new one. The manifest, written last, marks the whole output; shards of an older run in the same directory are
    replaced only in the finish phase, right before the new manifest is written.
Memory does not grow with the corpus except for the dedup index: on disk ~780 bytes per kept document (signature
128 x 4, band keys 32 x 8, exact key 8, flags); in memory at most ~40 bytes per document in a band task or in the
final drop computation (docs/BENCHMARKS.md, data section).
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

import corpus
import filters
import lid
import shards
import workunits
from corpus import DataError
from common import LANGS, atomic_write_json

STAGES = ("lid", "rules", "quality", "dedup", "tokenize")
PHASES = ("all", "units", "dedup", "tokenize", "finish")
ROOT = Path(__file__).resolve().parent


@dataclasses.dataclass
class DataConfig:
    input: str = ""                     # files/directories, comma-separated (or several after --input)
    tokenizer: str = ""                 # a bpe.py tokenizer directory (the tokenize stage needs it)
    out: str = ""                       # output directory: <source>.<split>.bin, manifest.json, stats.json, tokenizer/
    stages: str = ",".join(STAGES)      # stages to run, comma-separated: lid,rules,quality,dedup,tokenize
    val_frac: float = 0.05              # share of documents held out for validation (by content hash)
    workers: int = 0                    # worker processes on this machine (0 = one per core)
    nodes: int = 0                      # machines sharing the work (0 = $SLURM_ARRAY_TASK_COUNT, else 1)
    node_rank: int = -1                 # this machine, 0..nodes-1 (-1 = $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, else 0)
    phase: str = "all"                  # all (one machine) | units | dedup | tokenize | finish (see pipeline.py)
    txt_docs: str = "line"              # .txt documents: line (one per line) | blank (blank-line separated)
    text_field: str = ""                # JSON/parquet field with the text ('' = text, else content); a.b for nested
    lang_field: str = ""                # JSON/parquet field with a language label, if the corpus has one (a.b nested)
    include_noisy: bool = False         # also read MADLAD-400 *_noisy_* files and FineWeb-2 *_removed folders
    chunk_mb: float = 64.0              # plain files / parquet bigger than this are split into units of this size
    min_words: int = 2                  # rules: minimum words (Gopher: 50 for web pages); zh/ja/th use min_chars
    quality_ref: str = "data/sample/mono"  # high-quality reference for the quality model: <lang>.txt files
    quality_quantile: float = 0.995     # quality threshold: this quantile of held-out reference bits/char
    num_perm: int = 128                 # MinHash permutations
    bands: int = 32                     # LSH bands (rows per band = num_perm / bands)
    jaccard: float = 0.8                # near-duplicate threshold on the estimated Jaccard similarity
    shingle_words: int = 5              # shingle = this many consecutive words ...
    shingle_chars: int = 5              # ... or characters for zh/ja/th
    keep_work: bool = False             # keep out/.work-*/ (intermediate files) after a successful run
    lid: str = ""                       # a text file: print one language code per line of it, and exit
    verify: str = ""                    # a shards directory: check every block of every shard against its CRC, and exit


def parse_stages(spec):
    """The stages of a comma list, in pipeline order; an unknown name (a typo) is an error, never dropped."""
    stages = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise DataError(f"unknown stage(s) {', '.join(bad) or '(none given)'}: choose from {','.join(STAGES)}")
    return tuple(s for s in STAGES if s in stages)


def check_config(cfg):
    """Settings that cannot work, before anything is read or written."""
    parse_stages(cfg.stages)
    if cfg.phase not in PHASES:
        raise DataError(f"phase={cfg.phase!r}: choose one of {', '.join(PHASES)}")
    for key in ("val_frac", "jaccard", "quality_quantile"):
        if not 0.0 <= getattr(cfg, key) < 1.0 + (key != "val_frac"):
            raise DataError(f"{key}={getattr(cfg, key)} must be in [0, 1)")
    for key in ("num_perm", "bands", "shingle_words", "shingle_chars"):
        if getattr(cfg, key) < 1:
            raise DataError(f"{key}={getattr(cfg, key)} must be >= 1")
    if cfg.num_perm % cfg.bands:
        raise DataError(f"num_perm={cfg.num_perm} is not a multiple of bands={cfg.bands}")
    if cfg.txt_docs not in ("line", "blank"):
        raise DataError(f"txt_docs={cfg.txt_docs!r}: choose line or blank")
    if cfg.chunk_mb <= 0:
        raise DataError(f"chunk_mb={cfg.chunk_mb} must be > 0")
    if cfg.workers < 0:
        raise DataError(f"workers={cfg.workers} must be >= 0 (0 = one per core)")


def resolve_nodes(cfg):
    """(nodes, node_rank) from the settings, else from a SLURM job array, else (1, 0)."""
    env = os.environ
    nodes = cfg.nodes or int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    rank = cfg.node_rank if cfg.node_rank >= 0 else \
        int(env.get("SLURM_ARRAY_TASK_ID", 0)) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    if nodes < 1 or not 0 <= rank < nodes:
        raise DataError(f"node_rank={rank} with nodes={nodes}: need 0 <= node_rank < nodes")
    return nodes, rank


def sampled_fingerprint(paths, samples=8, block=1 << 16):
    """A cheap identity of input files: name, size and a hash of `samples` evenly spaced 64 KB blocks (first and last
    included) of each, so a start-up never reads whole files (a 400 MB data_dir costs ~1 ms per file, not seconds).
    Units also carry size + mtime in their keys; the sampled hash catches an edit that keeps both."""
    h = hashlib.sha256()
    for p in paths:
        size = os.path.getsize(p)
        h.update(f"{Path(p).name}|{size}|".encode())
        with open(p, "rb") as f:
            for k in range(samples):
                f.seek(max(0, (size - block) * k // max(1, samples - 1)))
                h.update(f.read(block))
    return h.hexdigest()


# ----------------------------------------------------------------------------- the driver

def _map(tasks, ctx, workers, desc):
    """Run tasks (results are files; order only matters for the progress bar)."""
    from tqdm import tqdm
    if not tasks:
        return
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=len(tasks) < 2, leave=False)
    if workers <= 1 or len(tasks) == 1:
        workunits.init_worker(ctx)
        for t in tasks:
            workunits.run_unit(t)
            bar.update()
    else:
        import multiprocessing as mp
        # spawn: workers start clean (no inherited threads from torch or tokenizers), and get ctx pickled once
        with mp.get_context("spawn").Pool(min(workers, len(tasks)), workunits.init_worker, (ctx,)) as pool:
            for _ in pool.imap_unordered(workunits.run_unit, tasks):
                bar.update()
    bar.close()


def _settings(units, stages, cfg, tokenizer_hash, fingerprint_extra):
    """What the output depends on (never the number of machines or workers): its hash names the work dir."""
    lid_hash = hashlib.sha1(Path(lid.MODEL_PATH).read_bytes()).hexdigest() if "lid" in stages else None
    keys = ("val_frac", "txt_docs", "text_field", "lang_field", "min_words", "quality_ref", "quality_quantile",
            "num_perm", "bands", "jaccard", "shingle_words", "shingle_chars")
    return {"stages": list(stages), "tokenizer_hash": tokenizer_hash, "split": shards.SPLIT_HASH,
            "shard_version": shards.VERSION, "lid_model": lid_hash, "extra": fingerprint_extra,
            "units": [u.key for u in units], **{k: getattr(cfg, k) for k in keys}}


def check_out_dir(out):
    """The output directory is ours to write: absent, empty, or a data.py output (manifest / work dir). A file, or
    a directory holding other things, is refused: we never write over what a user made."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"out={out} is a file; give a directory for the shards")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if names and "manifest.json" not in names and not any(n.startswith(".work-") for n in names):
        raise DataError(f"out={out} holds other files ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''}) and "
                        f"is not a data.py output; choose a new or empty directory")


def run_pipeline(units, out_dir, enc=None, tokenizer_hash=None, cfg=None, log=print, tokenizer_dir=None,
                 skipped=(), fingerprint_extra="", manifest_extra=None):
    """Run cfg.phase (default: all phases) of the pipeline over units into out_dir; returns the manifest after the
    finish phase (else None). Re-running with the same inputs and settings resumes, or reuses a finished output."""
    cfg = cfg or DataConfig()
    check_config(cfg)
    stages = parse_stages(cfg.stages)
    if "tokenize" in stages and enc is None:
        raise DataError("the tokenize stage needs a tokenizer: --tokenizer DIR (a bpe.py tokenizer directory)")
    nodes, rank = resolve_nodes(cfg)
    if cfg.phase == "all" and nodes > 1:
        raise DataError(f"with nodes={nodes} run the phases one after the other on every node: --phase=units, "
                        f"then dedup, then tokenize, then finish once (scripts/data_pipeline.sbatch does this)")
    out = Path(out_dir)
    check_out_dir(out)
    settings = _settings(units, stages, cfg, tokenizer_hash, fingerprint_extra)
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        try:
            m = json.loads(manifest_path.read_text(encoding="utf-8"))
        except ValueError:
            m = {}
        if m.get("fingerprint") == fingerprint:
            log(f"data: reusing {out} ({m.get('total_tokens', 0):,} tokens; same inputs and settings)")
            return m
    out.mkdir(parents=True, exist_ok=True)
    work = out / f".work-{fingerprint[:16]}"
    work.mkdir(exist_ok=True)
    workers = cfg.workers or os.cpu_count() or 1
    dedup = "dedup" in stages
    mono = [u for u in units if u.kind == "mono"]
    ctx = {"stages": stages, "val_frac": cfg.val_frac, "txt_docs": cfg.txt_docs, "text_field": cfg.text_field,
           "lang_field": cfg.lang_field, "rules": {"min_words": cfg.min_words}, "num_perm": cfg.num_perm,
           "bands": cfg.bands, "jaccard": cfg.jaccard, "shingle_words": cfg.shingle_words,
           "shingle_chars": cfg.shingle_chars, "work": str(work), "lid_model": str(lid.MODEL_PATH), "enc": enc,
           "tokenizer_hash": tokenizer_hash, "vocab_size": enc.n_vocab if enc is not None else 0,
           "mono_keys": [u.key for u in mono]}
    if "quality" in stages and cfg.phase in ("all", "units"):
        ctx["quality_model"] = str(_quality_model(work, cfg, log))
    elif "quality" in stages:
        ctx["quality_model"] = str(work / "quality.npz")
    t_start = time.perf_counter()
    where = f" (node {rank} of {nodes})" if nodes > 1 else ""
    mine = units[rank::nodes]
    if cfg.phase in ("all", "units"):
        todo = [("filter" if dedup and u.kind == "mono" else "fused", u, None) for u in mine]
        todo = [t for t in todo if not workunits.read_marker(work / ("units" if t[0] == "filter" else "parts") / f"{t[1].key}.json")]
        log(f"data: {len(mine)} units of work{where}, {len(mine) - len(todo)} already done; stages {','.join(stages)}")
        _map(todo, ctx, workers, "filter" if dedup else "process")
    if dedup and cfg.phase in ("all", "dedup"):
        _require(work, "units", [u for u in mono], "units", "filtered")
        bands = list(range(cfg.bands))[rank::nodes]
        todo = [("band", None, b) for b in bands if not workunits.read_marker(work / "dedup" / f"band_{b:04d}.json")]
        (work / "dedup").mkdir(exist_ok=True)
        log(f"data: dedup: {len(bands)} LSH bands{where}, {len(bands) - len(todo)} already done")
        _map(todo, ctx, workers, "dedup")
    if dedup and cfg.phase in ("all", "tokenize"):
        missing = [b for b in range(cfg.bands) if not workunits.read_marker(work / "dedup" / f"band_{b:04d}.json")]
        if missing:
            raise DataError(f"{len(missing)} of {cfg.bands} LSH bands are not done yet (e.g. band {missing[0]}): run "
                            f"--phase=dedup on every node first")
        workunits.compute_drops(work, ctx["mono_keys"], log)
        offsets = dict(zip(ctx["mono_keys"], np.cumsum([0] + [workunits.read_marker(work / "units" / f"{u.key}.json")["n_docs"]
                                                             for u in mono])[:-1].tolist()))
        todo = [("tokenize", u, offsets[u.key]) for u in mine if u.kind == "mono"
                and not workunits.read_marker(work / "parts" / f"{u.key}.json")]
        _map(todo, ctx, workers, "tokenize")
    if cfg.phase not in ("all", "finish"):
        log(f"data: phase {cfg.phase}{where} done in {time.perf_counter() - t_start:.1f}s")
        return None
    _require(work, "parts", units, "units/tokenize", "tokenized")
    return _finish(units, out, work, ctx, stages, fingerprint, settings, t_start, log, cfg.keep_work,
                   manifest_extra or {}, tokenizer_dir, skipped)


def _require(work, folder, units, phase, what):
    missing = [u for u in units if not workunits.read_marker(Path(work) / folder / f"{u.key}.json")]
    if missing:
        raise DataError(f"{len(missing)} of {len(units)} units are not {what} yet (e.g. {missing[0].path}): run "
                        f"--phase={phase} on every node first (same --input and settings)")


def _quality_model(work, cfg, log):
    """Train the quality model once per work dir (under a lock: the first node to get here trains it)."""
    path = work / "quality.npz"
    with workunits.locked(work, "quality"):
        if not path.exists():
            t0 = time.perf_counter()
            ref = Path(cfg.quality_ref) if Path(cfg.quality_ref).is_absolute() or Path(cfg.quality_ref).exists() \
                else ROOT / cfg.quality_ref
            train, held = filters.read_reference(ref)
            if not train:
                raise DataError(f"quality_ref={cfg.quality_ref}: no <lang>.txt reference files")
            tmp = work / f"quality.tmp{os.getpid()}.npz"
            filters.QualityModel.train(train, held, cfg.quality_quantile).save(str(tmp))
            os.replace(tmp, path)
            log(f"data: quality model trained on {ref} in {time.perf_counter() - t0:.1f}s")
    return path


def _finish(units, out, work, ctx, stages, fingerprint, settings, t_start, log, keep_work, extra, tokenizer_dir,
            skipped):
    """Join the parts of each (source, split) in unit order, write stats.json, the tokenizer copy and the manifest."""
    with workunits.locked(work, "finish"):
        total = workunits.new_stats()
        parts = defaultdict(list)                                       # "src.split" -> [(path, counts)]
        kinds, langs, inputs = {}, {}, defaultdict(list)
        for u in units:
            rec = workunits.read_marker(work / "parts" / f"{u.key}.json")
            workunits.merge_stats(total, rec["stats"])
            if u.kind == "mono" and "dedup" in stages:
                workunits.merge_stats(total, workunits.read_marker(work / "units" / f"{u.key}.json")["stats"])
            ext = ".bin" if "tokenize" in stages else ".jsonl"
            for name, c in rec["parts"].items():
                src = name.rsplit(".", 1)[0]
                parts[name].append((work / "parts" / f"{u.key}.{name}{ext}", c))
                kinds[src] = u.kind
                langs[src] = u.lang if u.kind == "bilingual" or src.startswith("hq.") else (u.source or src)
                if u.path not in inputs[src]:
                    inputs[src].append(u.path)
            if not any(c.get("docs") for c in rec["parts"].values()):
                log(f"data: {u.path}{'' if u.end is None and not u.start else f' [{u.start}:{u.end}]'}: no documents "
                    f"kept")
        lost = total["by_lang"].get("other", {}).get("removed:no_language", 0)
        if lost:
            log(f"data: {lost:,} documents dropped with no language (no lid stage, and no language in the path or "
                f"--lang_field): add the lid stage, or name the files by language")
        if "dedup" in stages:
            drops = np.load(work / "dedup" / "drops.npy")
            lang_idx = np.concatenate([np.load(work / "units" / f"{k}.lang.npy") for k in ctx["mono_keys"]] or
                                      [np.zeros(0, np.uint8)])
            for code, what in ((1, "removed:dedup_exact"), (2, "removed:dedup_near")):
                for li, n in zip(*np.unique(lang_idx[drops == code], return_counts=True)):
                    total["by_lang"][LANGS[li]][what] += int(n)
            total["seconds"]["dedup"] += sum(workunits.read_marker(p)["seconds"] for p in (work / "dedup").glob("*.json"))
        for path, reason, size in skipped:
            total["counts"][f"skipped_files:{reason}"] += 1
            total["bytes"][f"skipped:{reason}"] += size
        t0 = time.perf_counter()
        joined = work / "joined"
        joined.mkdir(exist_ok=True)
        for stale in joined.glob(".*.tmp*"):
            stale.unlink()
        sources, jobs = {}, []
        ext = ".bin" if "tokenize" in stages else ".jsonl"
        for src in sorted(kinds, key=lambda s: (s.startswith("bi."), s)):
            entry = {"lang": langs[src], "kind": kinds[src], "inputs": inputs[src]}
            if src.startswith("hq."):
                entry["hq"] = True                                      # data_dir/hq/<lang>.txt: curriculum's HQ share
            for split in ("train", "val"):
                plist = parts.get(f"{src}.{split}", [])
                fname = f"{src}.{split}{ext}"
                jobs.append(([p for p, _ in plist], joined / fname))
                c = Counter()
                for _, pc in plist:
                    c.update(pc)
                entry[split] = {"file": fname, "tokens": int(c["tokens"]), "docs": int(c["docs"]),
                                "bytes": int(c["bytes"])}
            sources[src] = entry
        with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 8))) as pool:   # zlib and file copies release the GIL
            list(pool.map(lambda job: _join_parts(*job, ctx), jobs))
        total["seconds"]["write"] += time.perf_counter() - t0
        for name, e in sources.items():
            c = total["by_lang"][e["lang"] if e["kind"] == "mono" else name]
            for k, v in (("kept_docs", "docs"), ("kept_bytes", "bytes"), ("tokens", "tokens")):
                c[k] += e["train"][v] + e["val"][v]
        stats = workunits.stats_json(total)
        stats["wall_seconds"] = time.perf_counter() - t_start
        stats["stages"] = list(stages)
        manifest = {"fingerprint": fingerprint, "tokenizer_hash": ctx["tokenizer_hash"],
                    "vocab_size": ctx["vocab_size"], "dtype": "uint16" if 0 < ctx["vocab_size"] <= 2**16 else "uint32",
                    "shard_version": shards.VERSION, "val_frac": ctx["val_frac"], "stages": list(stages),
                    "sources": sources, "total_tokens": sum(e[s]["tokens"] for e in sources.values()
                                                            for s in ("train", "val")),
                    "stats": {k: stats[k] for k in ("by_lang", "counts", "bytes")},   # no timings: the manifest
                    "settings": {k: v for k, v in settings.items() if k != "units"}, **extra}   # is deterministic
        _install(out, joined, [j[1].name for j in jobs], stats, manifest, tokenizer_dir)
    for line in format_stats(stats).splitlines():
        log(line)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return json.loads(json.dumps(manifest))                            # exactly what a re-run reads back


def _install(out, joined, names, stats, manifest, tokenizer_dir):
    """Put the finished output in place: the old manifest goes first (from now on the directory is not complete),
    then the shards are renamed in, old shards the new manifest does not list are removed, stats and the tokenizer
    copy are written, and the new manifest last."""
    old = out / "manifest.json"
    old_files = []
    if old.exists():
        try:
            old_m = json.loads(old.read_text(encoding="utf-8"))
            old_files = [e[s]["file"] for e in old_m.get("sources", {}).values() for s in ("train", "val")]
        except (ValueError, KeyError, TypeError):
            pass
        old.unlink()
    for name in names:
        os.replace(joined / name, out / name)
    for name in set(old_files) - set(names):
        (out / name).unlink(missing_ok=True)
    atomic_write_json(out / "stats.json", stats)
    if tokenizer_dir is not None:
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.tmp", dir=out))
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        if (out / "tokenizer").exists():
            shutil.rmtree(out / "tokenizer")
        os.replace(tmp, out / "tokenizer")
    atomic_write_json(out / "manifest.json", manifest)                       # written last: it marks the output complete


def _join_parts(paths, dest, ctx):
    """Concatenate part files into dest (atomic; a single part is hard-linked, no copy)."""
    dest = Path(dest)
    if "tokenize" in ctx["stages"]:
        if len(paths) == 1:
            tmp = workunits.tmp_path(dest)
            tmp.unlink()
            try:
                os.link(paths[0], tmp)
                os.replace(tmp, dest)
                return
            except OSError:
                tmp.unlink(missing_ok=True)
        w = shards.ShardWriter(dest, ctx["tokenizer_hash"], ctx["vocab_size"])
        for p in paths:
            toks = shards.read_shard(p, ctx["tokenizer_hash"])
            for i in range(0, len(toks), 1 << 24):                     # 64 MB at a time: bounded memory
                w.write(toks[i:i + (1 << 24)])
        w.close()
    else:
        w = workunits.TextWriter(dest)
        for p in paths:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, w.f, 1 << 24)
        w.close()


def format_stats(stats):
    """The per-language kept/removed table (documents), then removal reasons and per-stage throughput."""
    by = stats["by_lang"]
    cols = [("lid", "removed:lid"), ("rules", "removed:rules"), ("quality", "removed:quality"),
            ("exact", "removed:dedup_exact"), ("near", "removed:dedup_near")]
    head = f"{'lang':<6}{'docs':>9}{'MB':>8}" + "".join(f"{'-' + c:>9}" for c, _ in cols) + \
        f"{'kept':>9}{'kept%':>7}{'tokens':>12}"
    lines = [head]
    tot = Counter()
    for lang in sorted(by, key=lambda x: (x not in LANGS, LANGS.index(x) if x in LANGS else 0, x)):
        c = Counter(by[lang])
        if not c["docs"]:
            continue
        removed = [sum(v for k, v in c.items() if k.startswith(prefix)) for _, prefix in cols]
        other = sum(v for k, v in c.items() if k.startswith("removed:")) - sum(removed)
        tot.update({"docs": c["docs"], "bytes": c["bytes"], "kept": c["kept_docs"], "tokens": c["tokens"]})
        tot.update({p: r for (_, p), r in zip(cols, removed)})
        lines.append(f"{lang:<6}{c['docs']:>9,}{c['bytes'] / 1e6:>8.2f}" + "".join(f"{r:>9,}" for r in removed) +
                     f"{c['kept_docs']:>9,}{100 * c['kept_docs'] / c['docs']:>6.1f}%{c['tokens']:>12,}" +
                     (f"  (+{other:,} other removals)" if other else ""))
    if tot["docs"]:
        lines.append(f"{'total':<6}{tot['docs']:>9,}{tot['bytes'] / 1e6:>8.2f}" +
                     "".join(f"{tot[p]:>9,}" for _, p in cols) +
                     f"{tot['kept']:>9,}{100 * tot['kept'] / tot['docs']:>6.1f}%{tot['tokens']:>12,}")
    reasons = Counter()
    for c in by.values():
        reasons.update({k[8:]: v for k, v in c.items() if k.startswith("removed:")})
    if reasons:
        lines.append("removed by: " + ", ".join(f"{k} {v:,}" for k, v in reasons.most_common()))
    if stats["counts"]:
        lines.append("input: " + ", ".join(f"{k} {v:,}" for k, v in sorted(stats["counts"].items())))
    speed = [f"{s} {stats['bytes'].get(s, 0) / 1e6 / t:.2f} MB/s" for s, t in stats["seconds"].items()
             if t > 0 and stats["bytes"].get(s)]
    if speed:
        lines.append("throughput per process: " + ", ".join(speed))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- train.py's small-data path

def discover_sources(data_dir):
    """{source name: (lang, kind, path)} for train.py's data_dir layout: mono/<lang>.<ext>, parallel/en-<xx>.tsv and
    hq/<lang>.<ext> (a high-quality subset: source `hq.<lang>`, flagged `"hq": true` in the manifest so the
    curriculum can give it a share of its own, as PolyLM's stage 2 does). <ext>: any format corpus.py reads."""
    data_dir = Path(data_dir)
    if not (data_dir / "mono").is_dir():
        raise DataError(f"{data_dir}/mono/ not found: data_dir must hold mono/<lang>.txt files (see data/sample); a "
                        f"data.py output directory is trained on with --shards=DIR instead")
    sources = {}
    for sub, prefix in (("mono", ""), ("hq", "hq.")):
        folder = data_dir / sub
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not p.is_file() or not corpus.is_data_file(p):
                continue
            if p.name == "manifest.json" or p.name.split(".")[1:2] in (["train"], ["val"]):
                raise DataError(f"{p} looks like data.py output; train on that directory with --shards=DIR, "
                                f"and keep data_dir for raw text (mono/<lang>.txt)")
            corpus.file_format(p)
            lang = corpus.normalize_lang(p.name.split(".")[0])
            if lang not in LANGS:
                raise DataError(f"{p}: the file name must be one of the 18 language codes ({' '.join(LANGS)}), "
                                f"e.g. mono/de.txt")
            if prefix + lang in sources:
                raise DataError(f"{p}: a second file for {prefix + lang} ({sources[prefix + lang][2].name}); keep one")
            sources[prefix + lang] = (lang, "mono", p)
    for p in sorted((data_dir / "parallel").glob("en-*.tsv*")) if (data_dir / "parallel").is_dir() else []:
        sources["bi." + p.name.split(".")[0]] = (corpus.tsv_lang(p), "bilingual", p)
    if not any(k for k, (_, kind, _) in sources.items() if kind == "mono"):
        raise DataError(f"no mono/<lang>.txt files for any of {' '.join(LANGS)} in {data_dir}")
    return sources


def prepare(data_dir, enc, tokenizer_hash, out_dir, val_frac=0.05, log=print, stages=("tokenize",), workers=1,
            tokenizer_dir=None):
    """Tokenize every source of a train.py data_dir into a shards directory (the same format data.py writes, so
    train.py always trains from a shards directory). stages: ("tokenize",) by default (the bundled sample is
    curated text); add "lid", "rules", "quality", "dedup" to filter the monolingual sources. Cached: a manifest
    with the same tokenizer, inputs (size, mtime and sampled content: `sampled_fingerprint`), val_frac and stages is
    reused without reading the text."""
    sources = discover_sources(data_dir)
    units = [workunits.make_unit(p, kind, lang, name) for name, (lang, kind, p) in sources.items()]
    fp = sampled_fingerprint([p for _, _, p in sources.values()])
    cfg = dataclasses.replace(DataConfig(), stages=",".join(tuple(stages) + ("tokenize",)), val_frac=val_frac,
                              workers=workers, nodes=1, node_rank=0)
    msgs = []
    m = run_pipeline(units, out_dir, enc, tokenizer_hash, cfg, log=msgs.append, tokenizer_dir=tokenizer_dir,
                     fingerprint_extra=fp, manifest_extra={"data_dir": str(data_dir), "input_fingerprint": fp})
    if msgs and msgs[0].startswith("data: reusing"):
        log(f"data: reusing token shards in {out_dir} ({m['total_tokens']:,} tokens)")
    else:
        for msg in msgs if set(stages) - {"tokenize"} else [x for x in msgs if "no documents" in x]:
            log(msg)
        log(f"data: wrote {len(m['sources'])} sources, {m['total_tokens']:,} tokens to {out_dir}")
    return m


def split_documents(kind, path, val_frac):
    """(train_docs, val_docs) of one source file, in memory (small data: evaluate.py's held-out text); the two
    directions of a pair always land in the same split."""
    train, val = [], []
    for doc, _ in corpus.read_records(path):
        (val if shards.is_val(shards.split_key(kind, doc), val_frac) else train).append(doc)
    return train, val
