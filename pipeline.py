"""The streaming, resumable driver of PolyLM's data pipeline (PolyLM paper §3, "Pre-training data"); data.py has
the overview, the readers and the shard format, lid.py and filters.py the models and rules.

How a run is organised (run_pipeline):
  1. plan: the inputs become units of work (a file, or a ~64 MB range of a big one, cut at a document boundary;
     for .gz/.xz a range of the decompressed stream);
  2. per unit, in worker processes: read -> lid -> rules -> quality, then either tokenize straight away ("fused",
     without the dedup stage) or save the kept documents with their exact-duplicate keys and MinHash signatures
     ("filter"); every unit ends by writing a small JSON marker, so a re-run skips it;
  3. dedup (one process, over all units): exact duplicates, then MinHash-LSH near-duplicates, band by band;
  4. per unit, in workers: tokenize the kept documents minus the duplicates into part shards (+ marker);
  5. join the parts of each (source, split) into out/<source>.<split>.bin, write stats.json, then manifest.json.
Everything deterministic: units in sorted order, documents in file order, the first copy of a duplicate kept, so the
output does not depend on the number of workers or on interruptions.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

import data
import filters
import lid

STAGES = data.STAGES


# ----------------------------------------------------------------------------- the pipeline: units of work

@dataclasses.dataclass(frozen=True)
class Unit:
    """One piece of work: a file or a byte range of one. `lang` declared (None: LID decides); `source`: the output
    name (None: the document's language)."""
    path: str
    kind: str = "mono"                  # mono | bilingual
    lang: str = None
    source: str = None
    start: int = 0
    end: int = None

    @property
    def key(self):
        st = os.stat(self.path)
        return hashlib.sha1(f"{self.path}|{self.start}|{self.end}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


_SUFFIXES = (".txt", ".jsonl", ".tsv")


def _declared_lang(path):
    p = Path(path)
    stem = p.name.split(".")[0]
    return stem if stem in data.LANGS else p.parent.name if p.parent.name in data.LANGS else None


def plan_units(inputs, chunk_bytes=64 << 20, txt_docs="line"):
    """Units for files and directories (searched recursively, sorted). Big files are cut into ranges of about
    chunk_bytes at document boundaries (_cut_points) so that one file can use many workers; compressed ones too,
    by offsets in the decompressed stream, when their compressed size is over chunk_bytes / 4."""
    files = []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.is_file() and any(s in q.name for s in _SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise data.DataError(f"input {inp!r} not found: give files or directories of .txt/.jsonl[.gz|.xz]")
    if not files:
        raise data.DataError(f"no .txt/.jsonl/.tsv files in {', '.join(map(str, inputs))}")
    units = []
    for f in files:
        name = f.name
        if ".tsv" in name:
            xx = name.split(".")[0].split("-")[-1]
            units.append(Unit(str(f), "bilingual", xx, "bi." + name.split(".")[0]))
            continue
        lang, size = _declared_lang(f), f.stat().st_size
        compressed = name.endswith((".gz", ".xz"))
        if chunk_bytes and size > (chunk_bytes // 4 if compressed else chunk_bytes):
            cuts = _cut_points(f, chunk_bytes, blank=txt_docs == "blank" and ".jsonl" not in name)
            units += [Unit(str(f), "mono", lang, None, s, e) for s, e in zip(cuts, cuts[1:] + [None])]
        else:
            units.append(Unit(str(f), "mono", lang, None))
    return units


def _cut_points(path, chunk_bytes, blank=False):
    """[0, c1, c2, ...]: offsets about chunk_bytes apart where a document starts: the start of a line, or with
    blank-line separated documents the start of the line after a blank one. For .gz/.xz these are offsets in the
    decompressed stream: finding them decompresses the file once, and a worker seeking to its range decompresses
    (and discards) what comes before it, a few % of the filter stages' cost per byte."""
    cuts = [0]
    with data._open_binary(path) as f:
        while True:
            f.seek(cuts[-1] + chunk_bytes)                             # forward only: cheap for compressed streams
            line = f.readline()                                        # the rest of the line we landed in
            if blank and line:
                line = f.readline()
                while line and line.strip():                           # whole lines up to a blank one
                    line = f.readline()
            pos = f.tell()
            if not line or not f.read(1):                              # nothing after the cut: the last range
                return cuts
            cuts.append(pos)


# ----------------------------------------------------------------------------- the pipeline: one unit's work

_CTX = {}                                                               # per process: settings and loaded models


def _init_worker(ctx):
    _CTX.clear()
    _CTX.update(ctx)


def _model(name, stats):
    """The LID or quality model, loaded once per process (load time booked apart from the stage's time)."""
    if name not in _CTX:
        t0 = time.perf_counter()
        _CTX[name] = (lid.LanguageIdentifier.load(_CTX["lid_model"]) if name == "lid"
                      else filters.QualityModel.load(_CTX["quality_model"]))
        stats["seconds"]["load_models"] += time.perf_counter() - t0
    return _CTX[name]


def _new_stats():
    return {"by_lang": defaultdict(Counter), "counts": Counter(), "seconds": Counter(), "bytes": Counter()}


def _batches(unit, ctx, stats, batch_bytes=4 << 20):
    """Lists of (text, declared lang, utf-8 bytes) of about batch_bytes; reading time is booked under "read". The
    byte count is taken once here and carried along (the stats of every stage need it)."""
    it = data.read_records(unit.path, ctx["txt_docs"], unit.start, unit.end, stats["counts"], strict=False)
    while True:
        t, batch, size = time.perf_counter(), [], 0
        for text, lang in it:
            n = len(text.encode("utf-8", "surrogatepass"))
            batch.append((text, lang or unit.lang, n))
            size += n
            if size >= batch_bytes:
                break
        stats["seconds"]["read"] += time.perf_counter() - t
        stats["bytes"]["read"] += size
        if not batch:
            return
        yield batch


def _filter_batch(batch, unit, ctx, stats):
    """The per-document stages on one batch of (text, declared lang, bytes): the kept documents in the same form
    (lang now always set), counts booked per language."""
    stages, by_lang = ctx["stages"], stats["by_lang"]
    if unit.kind != "mono":                                            # parallel pairs: only tokenized
        c = by_lang[unit.source]
        c["docs"] += len(batch)
        c["bytes"] += sum(n for _, _, n in batch)
        return batch

    def timed(stage, fn, docs):
        t0 = time.perf_counter()
        stats["bytes"][stage] += sum(n for _, _, n in docs)
        out = fn()
        stats["seconds"][stage] += time.perf_counter() - t0
        return out

    pred = timed("lid", lambda: _model("lid", stats).predict([t for t, _, _ in batch]), batch) \
        if "lid" in stages else [None] * len(batch)
    docs = []
    for (text, declared, n), p in zip(batch, pred):
        lang = declared or p or "other"                                # booked under this
        c = by_lang[lang]
        c["docs"] += 1
        c["bytes"] += n
        if p == "other":
            c["removed:lid_other"] += 1
        elif p and declared and p != declared:
            c["removed:lid_mismatch"] += 1
        else:
            docs.append((text, lang, n))
    if "rules" in stages:
        rules = filters.RuleConfig(**ctx["rules"])

        def run_rules():
            out = []
            for text, lang, n in docs:
                t2, why = filters.apply_rules(text, lang, rules)
                if why:
                    by_lang[lang]["removed:rules:" + why] += 1
                else:                                                  # rules may drop boilerplate lines
                    out.append((t2, lang, n if t2 is text else len(t2.encode("utf-8", "surrogatepass"))))
            return out
        docs = timed("rules", run_rules, docs)
    if "quality" in stages and docs:
        keep, _ = timed("quality", lambda: _model("quality", stats).keep([t for t, _, _ in docs],
                                                                          [lang for _, lang, _ in docs]), docs)
        for (_, lang, _), k in zip(docs, keep):
            if not k:
                by_lang[lang]["removed:quality"] += 1
        docs = [d for d, k in zip(docs, keep) if k]
    return docs


class _Parts:
    """Per (source, split) output of one unit: token shards (or JSONL text without the tokenize stage)."""

    def __init__(self, unit, ctx, prefix):
        self.unit, self.ctx, self.prefix = unit, ctx, Path(prefix)   # files <prefix>.<source>.<split>.bin
        self.writers, self.counts = {}, defaultdict(Counter)
        self.tokenize = "tokenize" in ctx["stages"]

    def add(self, docs, stats):
        """docs: [(text, lang, bytes)] in order; grouped by (source, split) keeping the order inside each group."""
        groups = defaultdict(list)
        keys = [t for t, _, _ in docs] if self.unit.kind == "mono" else [data._split_key("bilingual", t) for t, _, _ in docs]
        for (text, lang, n), val in zip(docs, data.val_mask(keys, self.ctx["val_frac"])):
            groups[(self.unit.source or lang, "val" if val else "train")].append((text, n))
        for (source, split), group in groups.items():
            texts = [t for t, _ in group]
            c = self.counts[f"{source}.{split}"]
            c["docs"] += len(texts)
            nbytes = sum(n for _, n in group)
            c["bytes"] += nbytes
            w = self._writer(source, split)
            if self.tokenize:
                t0 = time.perf_counter()
                tokens = data.encode_documents(self.ctx["enc"], texts)
                stats["seconds"]["tokenize"] += time.perf_counter() - t0
                stats["bytes"]["tokenize"] += nbytes
                w.write(tokens)
                c["tokens"] += int(tokens.size)
            else:
                w.write("".join(json.dumps({"text": t, "lang": self.unit.lang or (source if source in data.LANGS else None)},
                                           ensure_ascii=False) + "\n" for t in texts).encode("utf-8", "surrogatepass"))

    def _writer(self, source, split):
        key = (source, split)
        if key not in self.writers:
            self.prefix.parent.mkdir(parents=True, exist_ok=True)
            if self.tokenize:
                # parts skip fsync (the rename alone keeps a killed run safe); the joined shards are synced
                self.writers[key] = data.ShardWriter(f"{self.prefix}.{source}.{split}.bin", self.ctx["tokenizer_hash"],
                                                     self.ctx["vocab_size"], fsync=False)
            else:
                self.writers[key] = _TextWriter(f"{self.prefix}.{source}.{split}.jsonl")
        return self.writers[key]

    def close(self):
        for w in self.writers.values():
            w.close()
        return {k: dict(v) for k, v in self.counts.items()}


class _TextWriter:
    def __init__(self, path):
        self.path = Path(path)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".tmp")
        self.f = os.fdopen(fd, "wb")

    def write(self, data):
        self.f.write(data)

    def close(self):
        self.f.close()
        os.replace(self.tmp, self.path)


def _atomic_json(path, obj):
    tmp = Path(str(path) + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def _stats_json(stats):
    return {"by_lang": {k: dict(v) for k, v in stats["by_lang"].items()}, "counts": dict(stats["counts"]),
            "seconds": dict(stats["seconds"]), "bytes": dict(stats["bytes"])}


def _dedup_arrays(docs, ctx, stats):
    """Exact keys, MinHash signatures and LSH band keys of the kept documents of a batch."""
    t0 = time.perf_counter()
    texts, langs = [t for t, _, _ in docs], [lang for _, lang, _ in docs]
    exact = np.array([filters.exact_key(t) for t in texts], dtype=np.uint64)
    sig = filters.minhash_signatures(texts, langs, ctx["num_perm"], 0, ctx["shingle_words"], ctx["shingle_chars"])
    stats["seconds"]["minhash"] += time.perf_counter() - t0
    stats["bytes"]["minhash"] += sum(n for _, _, n in docs)
    return exact, sig, filters.band_keys(sig, ctx["bands"])


def run_unit(task):
    """Worker entry point. task = (phase, unit, drop_mask). Phases:
    "fused": read -> filters -> tokenize (no dedup stage); "filter": read -> filters -> kept docs + dedup arrays;
    "tokenize": the kept docs of "filter" minus the dedup drops -> tokenize. Each ends by writing its marker."""
    phase, unit, drop = task
    ctx, work = _CTX, Path(_CTX["work"])
    key = unit.key
    stats = _new_stats()
    if phase in ("fused", "tokenize"):
        parts = _Parts(unit, ctx, work / "parts" / key)              # its files: parts/<key>.<source>.<split>.*
        if phase == "fused":
            for batch in _batches(unit, ctx, stats):
                parts.add(_filter_batch(batch, unit, ctx, stats), stats)
        else:
            with open(work / "filtered" / f"{key}.jsonl", encoding="utf-8") as f:
                docs = [(r["t"], r["l"], len(r["t"].encode("utf-8", "surrogatepass"))) for r in map(json.loads, f)]
            parts.add([d for d, dropped in zip(docs, drop) if not dropped], stats)
        _atomic_json(work / "parts" / f"{key}.json", {"unit": dataclasses.asdict(unit), "files": parts.close(),
                                                     "stats": _stats_json(stats)})
        return key
    # phase == "filter"
    (work / "filtered").mkdir(parents=True, exist_ok=True)
    base = work / "filtered" / key
    ex, sg, bk = [], [], []
    with open(f"{base}.jsonl.tmp", "w", encoding="utf-8") as f:
        for batch in _batches(unit, ctx, stats):
            docs = _filter_batch(batch, unit, ctx, stats)
            f.write("".join(json.dumps({"t": t, "l": lang}, ensure_ascii=False) + "\n" for t, lang, _ in docs))
            e, s, b = _dedup_arrays(docs, ctx, stats)
            ex.append(e)
            sg.append(s)
            bk.append(b)
    P, B = ctx["num_perm"], ctx["bands"]
    for name, arrs, shape in (("exact", ex, (0,)), ("sig", sg, (0, P)), ("bands", bk, (0, B))):
        arr = np.concatenate(arrs) if arrs else np.zeros(shape, dtype=np.uint32 if name == "sig" else np.uint64)
        with open(f"{base}.{name}.npy.tmp", "wb") as f:
            np.save(f, arr)
        os.replace(f"{base}.{name}.npy.tmp", f"{base}.{name}.npy")
    os.replace(f"{base}.jsonl.tmp", f"{base}.jsonl")
    _atomic_json(Path(f"{base}.json"), {"unit": dataclasses.asdict(unit), "stats": _stats_json(stats)})
    return key


# ----------------------------------------------------------------------------- the pipeline: driver

@dataclasses.dataclass
class Options:
    """Filter settings (their defaults are documented in filters.py)."""
    txt_docs: str = "line"
    quality_ref: str = str(data.ROOT / "data" / "sample" / "mono")
    quality_quantile: float = 0.995
    num_perm: int = 128
    bands: int = 32
    jaccard: float = 0.8
    shingle_words: int = 5
    shingle_chars: int = 5
    rules: dict = dataclasses.field(default_factory=dict)
    chunk_mb: int = 64


def _map(tasks, ctx, workers, desc, log):
    """Run tasks in order of submission (results are files, so order only matters for the progress bar)."""
    from tqdm import tqdm
    if not tasks:
        return
    bar = tqdm(total=len(tasks), desc=desc, unit="file", disable=len(tasks) < 2, leave=False)
    if workers <= 1 or len(tasks) == 1:
        _init_worker(ctx)
        for t in tasks:
            run_unit(t)
            bar.update()
    else:
        import multiprocessing as mp
        # spawn: workers start clean (no inherited threads from torch or tokenizers), and get ctx pickled once
        with mp.get_context("spawn").Pool(min(workers, len(tasks)), _init_worker, (ctx,)) as pool:
            for _ in pool.imap_unordered(run_unit, tasks):
                bar.update()
    bar.close()


def _merge_stats(total, s):
    for lang, c in s["by_lang"].items():
        total["by_lang"][lang].update(c)
    for k in ("counts", "seconds", "bytes"):
        total[k].update(s[k])


def run_pipeline(units, out_dir, enc=None, tokenizer_hash=None, stages=STAGES, val_frac=0.05, workers=0,
                 options=None, fingerprint_extra="", log=print, keep_work=False, manifest_extra=None):
    """Run the stages over units into out_dir; returns the manifest. Re-running with the same settings resumes."""
    options = options or Options()
    stages = tuple(s for s in STAGES if s in stages)
    bad = set(stages) - set(STAGES)
    if bad:
        raise data.DataError(f"unknown stage(s) {sorted(bad)}; choose from {','.join(STAGES)}")
    if "tokenize" in stages and enc is None:
        raise data.DataError("the tokenize stage needs a tokenizer: --tokenizer DIR (a bpe.py tokenizer directory)")
    workers = workers or os.cpu_count() or 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lid_model = lid.MODEL_PATH
    settings = {"stages": stages, "val_frac": val_frac, "tokenizer_hash": tokenizer_hash, "split": data.SPLIT_HASH,
                "options": dataclasses.asdict(options), "units": [dataclasses.asdict(u) for u in units],
                "unit_keys": [u.key for u in units], "extra": fingerprint_extra,
                "lid_model": hashlib.sha1(Path(lid_model).read_bytes()).hexdigest() if "lid" in stages else None}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        m = json.loads(manifest_path.read_text())
        if m.get("fingerprint") == fingerprint:
            log(f"data: reusing {out} ({m.get('total_tokens', 0):,} tokens; same inputs and settings)")
            return m
    work = out / f".work-{fingerprint[:16]}"
    work.mkdir(exist_ok=True)
    for tmp in list(work.rglob("*.tmp*")) + list(out.glob("*.tmp*")):
        tmp.unlink()                                                   # leftovers of a killed run
    ctx = {"stages": stages, "val_frac": val_frac, "txt_docs": options.txt_docs, "rules": options.rules,
           "num_perm": options.num_perm, "bands": options.bands, "shingle_words": options.shingle_words,
           "shingle_chars": options.shingle_chars, "work": str(work), "lid_model": str(lid_model), "enc": enc,
           "tokenizer_hash": tokenizer_hash, "vocab_size": enc.n_vocab if enc is not None else 0}
    t_start = time.perf_counter()
    if "quality" in stages:
        qpath = work / "quality.npz"
        if not qpath.exists():
            t0 = time.perf_counter()
            train, held = filters.read_reference(options.quality_ref)
            if not train:
                raise data.DataError(f"quality_ref {options.quality_ref}: no <lang>.txt reference files")
            filters.QualityModel.train(train, held, options.quality_quantile).save(str(qpath) + ".tmp.npz")
            os.replace(str(qpath) + ".tmp.npz", qpath)
            log(f"data: quality model trained on {options.quality_ref} in {time.perf_counter() - t0:.1f}s")
        ctx["quality_model"] = str(qpath)
    dedup = "dedup" in stages
    mono = [u for u in units if u.kind == "mono"]
    fused = [u for u in units if not dedup or u.kind != "mono"]
    todo = [("fused", u, None) for u in fused if not (work / "parts" / f"{u.key}.json").exists()]
    if dedup:
        todo += [("filter", u, None) for u in mono if not (work / "filtered" / f"{u.key}.json").exists()]
    log(f"data: {len(units)} units of work, {len(units) - len(todo)} already done; stages {','.join(stages)}")
    _map(todo, ctx, workers, "filter" if dedup else "process", log)
    dedup_stats = Counter()
    if dedup:
        drops = _dedup(mono, work, options, dedup_stats, log)
        todo = [("tokenize", u, drops[u.key]) for u in mono if not (work / "parts" / f"{u.key}.json").exists()]
        _map(todo, ctx, workers, "tokenize", log)
    return _finish(units, out, work, ctx, stages, fingerprint, settings, dedup_stats, t_start, log, keep_work,
                   manifest_extra or {})


def _dedup(mono, work, options, dedup_stats, log):
    """Exact then near-duplicates over all units' documents; {unit key: drop mask}. Booked per language."""
    t0 = time.perf_counter()
    base = [work / "filtered" / u.key for u in mono]
    exact = [np.load(f"{b}.exact.npy") for b in base]
    sigs = [np.load(f"{b}.sig.npy", mmap_mode="r") for b in base]
    bands = [np.load(f"{b}.bands.npy", mmap_mode="r") for b in base]
    langs = []
    for b in base:
        with open(f"{b}.jsonl", encoding="utf-8") as f:
            langs += [json.loads(line)["l"] for line in f]
    offsets = np.cumsum([0] + [len(e) for e in exact])
    allex = np.concatenate(exact) if exact else np.zeros(0, np.uint64)
    _, first = np.unique(allex, return_index=True)
    exact_dup = np.ones(len(allex), dtype=bool)
    exact_dup[first] = False                                           # every later copy of a key is a duplicate
    no_letters = np.concatenate([(s == 0xFFFFFFFF).all(axis=1) for s in sigs]) if sigs else np.zeros(0, bool)

    def get_sig(idx):
        u = np.searchsorted(offsets, idx, side="right") - 1
        out = np.zeros((len(idx), options.num_perm), dtype=np.uint32)
        for k in np.unique(u):
            m = u == k
            out[m] = sigs[k][idx[m] - offsets[k]]
        return out
    near = filters.near_duplicates(bands, get_sig, options.jaccard, skip=exact_dup | no_letters)
    for i in np.flatnonzero(exact_dup):
        dedup_stats[(langs[i], "removed:dedup_exact")] += 1
    for i in np.flatnonzero(near):
        dedup_stats[(langs[i], "removed:dedup_near")] += 1
    drop = exact_dup | near
    dedup_stats[("", "seconds")] = time.perf_counter() - t0
    log(f"data: dedup over {len(allex):,} documents: {exact_dup.sum():,} exact and {near.sum():,} near duplicates "
        f"({time.perf_counter() - t0:.1f}s)")
    return {u.key: drop[offsets[i]:offsets[i + 1]] for i, u in enumerate(mono)}


def _finish(units, out, work, ctx, stages, fingerprint, settings, dedup_stats, t_start, log, keep_work, extra):
    """Join the parts of each (source, split) in unit order, write stats.json and the manifest (last)."""
    total = _new_stats()
    parts = defaultdict(list)                                           # "src.split" -> [(path, counts)]
    kinds, langs, inputs = {}, {}, defaultdict(list)
    for u in units:
        rec = json.loads((work / "parts" / f"{u.key}.json").read_text())
        _merge_stats(total, rec["stats"])
        if u.kind == "mono" and "dedup" in stages:
            _merge_stats(total, json.loads((work / "filtered" / f"{u.key}.json").read_text())["stats"])
        for name, c in rec["files"].items():
            src = name.rsplit(".", 1)[0]
            parts[name].append((work / "parts" / f"{u.key}.{name}{'.bin' if 'tokenize' in stages else '.jsonl'}", c))
            kinds[src] = u.kind
            langs[src] = u.lang if u.kind == "bilingual" or src.startswith("hq.") else (u.source or src)
            if u.path not in inputs[src]:
                inputs[src].append(u.path)
    for (lang, what), n in dedup_stats.items():
        if what == "seconds":
            total["seconds"]["dedup"] += n
        else:
            total["by_lang"][lang][what] += n
    sources = {}
    t0 = time.perf_counter()
    for src in sorted(kinds, key=lambda s: (s.startswith("bi."), s)):
        entry = {"lang": langs[src], "kind": kinds[src], "inputs": inputs[src]}
        if src.startswith("hq."):
            entry["hq"] = True                                          # data_dir/hq/<lang>.txt: curriculum's HQ share
        for split in ("train", "val"):
            plist = parts.get(f"{src}.{split}", [])
            ext = ".bin" if "tokenize" in stages else ".jsonl"
            fname = f"{src}.{split}{ext}"
            _join_parts([p for p, _ in plist], out / fname, ctx)
            c = Counter()
            for _, pc in plist:
                c.update(pc)
            entry[split] = {"file": fname, "tokens": int(c["tokens"]), "docs": int(c["docs"]), "bytes": int(c["bytes"])}
        sources[src] = entry
    total["seconds"]["write"] += time.perf_counter() - t0
    for name, e in sources.items():
        c = total["by_lang"][e["lang"] if e["kind"] == "mono" else name]
        for k, v in (("kept_docs", "docs"), ("kept_bytes", "bytes"), ("tokens", "tokens")):
            c[k] += e["train"][v] + e["val"][v]
    stats = _stats_json(total)
    stats["wall_seconds"] = time.perf_counter() - t_start
    stats["stages"] = list(stages)
    _atomic_json(out / "stats.json", stats)
    manifest = {"fingerprint": fingerprint, "tokenizer_hash": ctx["tokenizer_hash"], "vocab_size": ctx["vocab_size"],
                "dtype": "uint16" if 0 < ctx["vocab_size"] <= 2**16 else "uint32", "val_frac": ctx["val_frac"],
                "stages": list(stages), "sources": sources,
                "total_tokens": sum(e[s]["tokens"] for e in sources.values() for s in ("train", "val")),
                "stats": stats, "settings": {k: v for k, v in settings.items() if k not in ("units", "unit_keys")},
                **extra}
    _atomic_json(out / "manifest.json", manifest)                      # written last: it marks the output complete
    for line in format_stats(stats).splitlines():
        log(line)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return json.loads(json.dumps(manifest))                            # exactly what a re-run reads back


def _join_parts(paths, dest, ctx):
    """Concatenate part files into dest (atomic; a single part is hard-linked, no copy)."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    if "tokenize" in ctx["stages"]:
        if len(paths) == 1:
            try:
                os.link(paths[0], tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, dest)
                return
            except OSError:
                pass
        w = data.ShardWriter(dest, ctx["tokenizer_hash"], ctx["vocab_size"])
        for p in paths:
            toks = data.read_shard(p, ctx["tokenizer_hash"])
            for i in range(0, len(toks), 1 << 24):                     # 64 MB at a time: bounded memory
                w.write(toks[i:i + (1 << 24)])
        w.close()
    else:
        with open(tmp, "wb") as f:
            for p in paths:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 24)
        os.replace(tmp, dest)


def format_stats(stats):
    """The per-language kept/removed table (documents), then removal reasons and per-stage throughput."""
    by = stats["by_lang"]
    cols = [("lid", "removed:lid"), ("rules", "removed:rules"), ("quality", "removed:quality"),
            ("exact", "removed:dedup_exact"), ("near", "removed:dedup_near")]
    head = f"{'lang':<6}{'docs':>9}{'MB':>8}" + "".join(f"{'-' + c:>9}" for c, _ in cols) + \
        f"{'kept':>9}{'kept%':>7}{'tokens':>12}"
    lines = [head]
    tot = Counter()
    for lang in sorted(by, key=lambda x: (x not in data.LANGS, data.LANGS.index(x) if x in data.LANGS else 0, x)):
        c = Counter(by[lang])
        if not c["docs"]:
            continue
        removed = [sum(v for k, v in c.items() if k.startswith(prefix)) for _, prefix in cols]
        tot.update({"docs": c["docs"], "bytes": c["bytes"], "kept": c["kept_docs"], "tokens": c["tokens"]})
        tot.update({p: r for (_, p), r in zip(cols, removed)})
        lines.append(f"{lang:<6}{c['docs']:>9,}{c['bytes'] / 1e6:>8.2f}" + "".join(f"{r:>9,}" for r in removed) +
                     f"{c['kept_docs']:>9,}{100 * c['kept_docs'] / c['docs']:>6.1f}%{c['tokens']:>12,}")
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


