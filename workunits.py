"""Units of work of PolyLM's data pipeline (PolyLM paper §3, "Pre-training data"): how the inputs are cut into
units, and what a worker process does with one. pipeline.py runs them phase by phase, on one machine or many.

  plan       inputs -> units: a file; a ~64 MB byte range of a big plain file, cut at a document boundary; a few row
             groups of a parquet file; a compressed file is ONE unit (ranges of a compressed stream would cost
             quadratic decompression). Files whose path declares a language outside the 18 are skipped unread.
  a unit     read -> lid -> rules -> quality, then either tokenize straight away ("fused", no dedup stage) or keep the
             documents with their exact-duplicate keys and MinHash signatures ("filter"); later "tokenize" writes
             the kept documents minus the duplicates as part shards.
  a band     one LSH band over every unit's documents: its near-duplicate pairs (the dedup phase, one task a band);
             compute_drops then joins exact duplicates and all pairs into the documents to drop.
Crash consistency, per unit: its files are written under unique temporary names (pid in them) and renamed; its
marker (JSON, listing the files and their sizes) is written last, after they are fsynced, and a marker whose files
are missing or of another size does not count; the work is done under an exclusive lock on the unit (flock), so a
rerun waits for the orphaned workers of a killed run instead of racing them, and only the lock holder clears the
unit's stale temporary files.
"""
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

import corpus
import filters
import lid
import shards
from common import LANGS, atomic_write_json, temp_sibling
from corpus import DataError


# ----------------------------------------------------------------------------- plan: inputs -> units of work

@dataclasses.dataclass(frozen=True)
class Unit:
    """One piece of work: a file, a byte range of a plain file, or row groups [start, end) of a parquet file.
    lang: declared by the path (None: LID decides); source: the output name (None: the document's language);
    key: the unit's identity (path, range, size, mtime), the name of its files in the work dir."""
    path: str
    kind: str = "mono"                  # mono | bilingual
    lang: str = None
    source: str = None
    start: int = 0
    end: int = None
    key: str = ""


def make_unit(path, kind="mono", lang=None, source=None, start=0, end=None):
    st = os.stat(path)
    key = hashlib.sha1(f"{path}|{start}|{end}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return Unit(str(path), kind, lang, source, start, end, key)


def plan_units(inputs, chunk_bytes=64 << 20, txt_docs="line", include_noisy=False):
    """(units, skipped) for files and directories (searched recursively, sorted). skipped: [(path, reason, bytes)]
    for files not read: a language outside the 18 in the path, MADLAD noisy / FineWeb-2 removed splits, and
    non-data files found in directories (README.md, .gitattributes, ...). Big plain files are cut into ranges of
    about chunk_bytes at document boundaries, parquet files into groups of row groups."""
    files, skipped = [], []
    for inp in inputs:
        p = Path(inp)
        if p.is_dir():
            for q in sorted(q for q in p.rglob("*") if q.is_file()):
                if corpus.is_data_file(q):
                    corpus.file_format(q)                              # unknown format: an error naming it
                    files.append((q, p))
                else:
                    skipped.append((str(q), "not_data", q.stat().st_size))
        elif p.is_file():
            corpus.file_format(p)
            files.append((p, None))
        else:
            raise DataError(f"input {inp!r} not found: give files or directories ({corpus.ACCEPTED})")
    units = []
    for f, root in files:
        fmt, comp = corpus.file_format(f)
        size = f.stat().st_size
        if fmt == "tsv":
            xx = corpus.tsv_lang(f)
            units.append(make_unit(f, "bilingual", xx, "bi." + f.name.split(".")[0]))
            continue
        lang, skip = corpus.lang_from_path(f, root)
        if skip and not (include_noisy and skip in ("noisy", "removed")):
            skipped.append((str(f), skip, size))
            continue
        if lang == "other":
            skipped.append((str(f), "other_lang", size))
            continue
        if fmt == "parquet":
            n, sizes = corpus.parquet_row_groups(f)
            cuts, acc = [0], 0
            for i, s in enumerate(sizes[:-1]):
                acc += s
                if chunk_bytes and acc >= chunk_bytes:
                    cuts.append(i + 1)
                    acc = 0
            units += [make_unit(f, "mono", lang, None, a, b) for a, b in zip(cuts, cuts[1:] + [n])] if n else []
        elif not comp and chunk_bytes and size > chunk_bytes:
            cuts = _cut_points(f, chunk_bytes, blank=txt_docs == "blank" and fmt == "txt")
            units += [make_unit(f, "mono", lang, None, s, e) for s, e in zip(cuts, cuts[1:] + [None])]
        else:
            units.append(make_unit(f, "mono", lang))
    if not units:
        why = f" ({len(skipped)} files skipped: {Counter(r for _, r, _ in skipped)})" if skipped else ""
        raise DataError(f"no data files in {', '.join(map(str, inputs))}{why} ({corpus.ACCEPTED})")
    return units, skipped


def _cut_points(path, chunk_bytes, blank=False):
    """[0, c1, c2, ...]: offsets about chunk_bytes apart in a plain file where a document starts: the start of a
    line, or with blank-line separated documents the start of the line after a blank one."""
    cuts = [0]
    with open(path, "rb") as f:
        while True:
            f.seek(cuts[-1] + chunk_bytes)
            line = f.readline()                                        # the rest of the line we landed in
            if blank and line:
                line = f.readline()
                while line and line.strip():                           # whole lines up to a blank one
                    line = f.readline()
            pos = f.tell()
            if not line or not f.read(1):                              # nothing after the cut: the last range
                return cuts
            cuts.append(pos)


# ----------------------------------------------------------------------------- one unit's work (worker processes)

_CTX = {}                                                               # per process: settings and loaded models


def init_worker(ctx):
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


def new_stats():
    return {"by_lang": defaultdict(Counter), "counts": Counter(), "seconds": Counter(), "bytes": Counter()}


def stats_json(stats):
    return {"by_lang": {k: dict(v) for k, v in stats["by_lang"].items()}, "counts": dict(stats["counts"]),
            "seconds": dict(stats["seconds"]), "bytes": dict(stats["bytes"])}


def merge_stats(total, s):
    for lang, c in s["by_lang"].items():
        total["by_lang"][lang].update(c)
    for k in ("counts", "seconds", "bytes"):
        total[k].update(s[k])


def _batches(unit, ctx, stats, batch_bytes=4 << 20):
    """Lists of (text, declared lang, utf-8 bytes) of about batch_bytes; reading time is booked under "read". The
    byte count is taken once here and carried along (the stats of every stage need it). A unit in which every record
    is bad is an error naming the file and the field looked for."""
    it = corpus.read_records(unit.path, ctx["txt_docs"], unit.start, unit.end, stats["counts"], ctx["text_field"],
                             ctx["lang_field"])
    good = 0
    while True:
        t, batch, size = time.perf_counter(), [], 0
        for text, label in it:
            n = len(text.encode("utf-8", "surrogatepass"))
            batch.append((text, label or unit.lang, n))
            size += n
            if size >= batch_bytes:
                break
        stats["seconds"]["read"] += time.perf_counter() - t
        stats["bytes"]["read"] += size
        good += len(batch)
        if not batch:
            bad = {k: v for k, v in stats["counts"].items() if k.startswith("bad_record:")}
            if not good and bad:
                field = ctx["text_field"] or "'text' (or 'content')"
                raise DataError(f"{unit.path}: no usable record, looked for the {field} field ({bad}); set "
                                f"--text_field (and check the file is what you think)")
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
        if declared == "other":
            c["removed:declared_other"] += 1                           # a record labelled outside the 18
        elif p == "other":
            c["removed:lid_other"] += 1
        elif p and declared and p != declared:
            c["removed:lid_mismatch"] += 1
        elif lang == "other":
            c["removed:no_language"] += 1                              # no LID stage and nothing declared
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


def tmp_path(path):
    """A unique temporary sibling of path (pid + random): two processes never write the same temporary file."""
    fd, tmp = temp_sibling(path)
    os.close(fd)
    return Path(tmp)


def save_npy(path, arr):
    """np.save through a unique temporary file, fsynced, renamed into place; returns path."""
    tmp = tmp_path(path)
    with open(tmp, "wb") as f:
        np.save(f, arr)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _write_marker(path, files, **extra):
    """The marker of a finished piece of work, listing its output files and their sizes (written last)."""
    atomic_write_json(path, {"files": {Path(f).name: os.path.getsize(f) for f in files}, **extra})


def read_marker(path):
    """A marker whose files all exist with the recorded sizes, or None (missing, half-written, or not matching)."""
    try:
        m = json.loads(Path(path).read_text(encoding="utf-8"))
        if all(os.path.getsize(Path(path).parent / f) == n for f, n in m["files"].items()):
            return m
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


@contextlib.contextmanager
def locked(work, name):
    """An exclusive lock (flock) on work/locks/<name>.lock for the duration: one process at a time per unit."""
    d = Path(work) / "locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{name}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _clear_stale(folder, key):
    """Temporary files of one unit that a killed process left (call only while holding the unit's lock)."""
    for tmp in Path(folder).glob(f".{key}.*.tmp*"):
        tmp.unlink(missing_ok=True)


class _Parts:
    """Per (source, split) output of one unit: token shards (or JSONL text without the tokenize stage)."""

    def __init__(self, unit, ctx, folder):
        self.unit, self.ctx, self.folder = unit, ctx, Path(folder)     # files <folder>/<key>.<source>.<split>.bin
        self.writers, self.counts = {}, defaultdict(Counter)
        self.tokenize = "tokenize" in ctx["stages"]

    def add(self, docs, stats):
        """docs: [(text, lang, bytes)] in order; grouped by (source, split) keeping the order inside each group."""
        groups = defaultdict(list)
        keys = [t for t, _, _ in docs] if self.unit.kind == "mono" else \
            [shards.split_key("bilingual", t) for t, _, _ in docs]
        for (text, lang, n), val in zip(docs, shards.val_mask(keys, self.ctx["val_frac"])):
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
                tokens = shards.encode_documents(self.ctx["enc"], texts)
                stats["seconds"]["tokenize"] += time.perf_counter() - t0
                stats["bytes"]["tokenize"] += nbytes
                w.write(tokens)
                c["tokens"] += int(tokens.size)
            else:
                lang = self.unit.lang or (source if source in LANGS else None)
                w.write("".join(json.dumps({"text": t, "lang": lang}, ensure_ascii=False) + "\n"
                                for t in texts).encode("utf-8", "surrogatepass"))

    def _writer(self, source, split):
        key = (source, split)
        if key not in self.writers:
            path = self.folder / f"{self.unit.key}.{source}.{split}{'.bin' if self.tokenize else '.jsonl'}"
            self.writers[key] = shards.ShardWriter(path, self.ctx["tokenizer_hash"], self.ctx["vocab_size"]) \
                if self.tokenize else TextWriter(path)
        return self.writers[key]

    def close(self):
        """Close every part (fsynced, renamed into place); -> (their paths, counts per "source.split")."""
        for w in self.writers.values():
            w.close()
        return [w.path for w in self.writers.values()], {k: dict(v) for k, v in self.counts.items()}


class TextWriter:
    def __init__(self, path):
        self.path = Path(path)
        self.tmp = tmp_path(path)
        self.f = open(self.tmp, "wb")

    def write(self, data):
        self.f.write(data)

    def close(self):
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)


def _dedup_arrays(docs, ctx, stats):
    """Exact keys, MinHash signatures, LSH band keys and has-letters flags of the kept documents of a batch."""
    t0 = time.perf_counter()
    texts, langs = [t for t, _, _ in docs], [lang for _, lang, _ in docs]
    exact = np.array([filters.exact_key(t) for t in texts], dtype=np.uint64)
    sig = filters.minhash_signatures(texts, langs, ctx["num_perm"], 0, ctx["shingle_words"], ctx["shingle_chars"])
    stats["seconds"]["minhash"] += time.perf_counter() - t0
    stats["bytes"]["minhash"] += sum(n for _, _, n in docs)
    return {"exact": exact, "sig": sig, "bands": filters.band_keys(sig, ctx["bands"]),
            "live": ~(sig == 0xFFFFFFFF).all(axis=1),                 # a text without letters is nobody's duplicate
            "lang": np.array([LANGS.index(x) for x in langs], dtype=np.uint8)}


_EMPTY = {"exact": ((0,), np.uint64), "sig": None, "bands": None, "live": ((0,), bool), "lang": ((0,), np.uint8)}


def run_unit(task):
    """Worker entry point. task = (phase, unit, arg). Phases:
    "fused": read -> filters -> tokenize (no dedup stage); "filter": read -> filters -> kept docs + dedup arrays;
    "tokenize": the kept docs of "filter" minus the duplicates (arg: offset of the unit's first document in the
    global index) -> part shards; "band": arg = band number -> its near-duplicate pairs."""
    phase, unit, arg = task
    ctx, work = _CTX, Path(_CTX["work"])
    if os.environ.get("POLYLM_UNIT_DELAY"):                           # test hook: widen the window for kill -9 tests
        time.sleep(float(os.environ["POLYLM_UNIT_DELAY"]))
    if phase == "band":
        return _run_band(arg, work, ctx)
    folder = work / ("units" if phase == "filter" else "parts")
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{unit.key}.json"
    with locked(work, unit.key if phase != "tokenize" else unit.key + ".tok"):
        if read_marker(marker):                                        # done, perhaps by an orphan of a killed run
            return unit.key
        _clear_stale(folder, unit.key)
        stats = new_stats()
        if phase == "filter":
            files, n = _filter_unit(unit, ctx, stats, folder)
            _write_marker(marker, files, unit=dataclasses.asdict(unit), n_docs=n, stats=stats_json(stats))
            return unit.key
        parts = _Parts(unit, ctx, folder)
        if phase == "fused":
            for batch in _batches(unit, ctx, stats):
                parts.add(_filter_batch(batch, unit, ctx, stats), stats)
        else:
            drops = np.load(work / "dedup" / "drops.npy", mmap_mode="r")
            base = work / "units" / unit.key
            with open(f"{base}.docs.jsonl", encoding="utf-8") as f:
                docs = [(r["t"], r["l"], len(r["t"].encode("utf-8", "surrogatepass"))) for r in map(json.loads, f)]
            mine = drops[arg:arg + len(docs)]
            parts.add([d for d, dropped in zip(docs, mine) if not dropped], stats)
        files, counts = parts.close()
        _write_marker(marker, files, unit=dataclasses.asdict(unit), parts=counts, stats=stats_json(stats))
        return unit.key


def _filter_unit(unit, ctx, stats, folder):
    """The "filter" phase of one unit: kept documents (JSON lines) and their dedup arrays (.npy), all fsynced."""
    base = folder / unit.key
    arrays, n = defaultdict(list), 0
    docs_path = Path(f"{base}.docs.jsonl")
    w = TextWriter(docs_path)
    for batch in _batches(unit, ctx, stats):
        docs = _filter_batch(batch, unit, ctx, stats)
        w.write("".join(json.dumps({"t": t, "l": lang}, ensure_ascii=False) + "\n"
                        for t, lang, _ in docs).encode("utf-8", "surrogatepass"))
        for k, v in _dedup_arrays(docs, ctx, stats).items():
            arrays[k].append(v)
        n += len(docs)
    w.close()
    files = [docs_path]
    shapes = {"sig": ((0, ctx["num_perm"]), np.uint32), "bands": ((0, ctx["bands"]), np.uint64)}
    for name, (shape, dtype) in {**_EMPTY, **shapes}.items():
        arr = np.concatenate(arrays[name]) if arrays[name] else np.zeros(shape, dtype=dtype)
        files.append(save_npy(Path(f"{base}.{name}.npy"), arr))
    return files, n


def _run_band(band, work, ctx):
    """One LSH band over all units' documents: its near-duplicate pairs (global document indices) -> dedup/."""
    out = work / "dedup" / f"band_{band:04d}.npy"
    with locked(work, f"band_{band:04d}"):
        marker = out.with_suffix(".json")
        if read_marker(marker):
            return band
        t0 = time.perf_counter()
        base = [work / "units" / k for k in ctx["mono_keys"]]
        keys = np.concatenate([np.load(f"{b}.bands.npy", mmap_mode="r")[:, band] for b in base] or
                              [np.zeros(0, np.uint64)])
        live = np.concatenate([np.load(f"{b}.live.npy") for b in base] or [np.zeros(0, bool)])
        sigs = [np.load(f"{b}.sig.npy", mmap_mode="r") for b in base]
        offsets = np.cumsum([0] + [len(s) for s in sigs])

        def get_sig(idx):
            u = np.searchsorted(offsets, idx, side="right") - 1
            sig = np.zeros((len(idx), ctx["num_perm"]), dtype=np.uint32)
            for k in np.unique(u):
                m = u == k
                sig[m] = sigs[k][idx[m] - offsets[k]]
            return sig
        save_npy(out, filters.band_pairs(keys, get_sig, ctx["jaccard"], live))
        _write_marker(marker, [out], pairs=len(np.load(out, mmap_mode="r")), seconds=time.perf_counter() - t0)
    return band


def compute_drops(work, mono_keys, log=print):
    """work/dedup/drops.npy: per document of all units (in order) 0 = keep, 1 = exact duplicate, 2 = near duplicate
    (in a cluster of near-duplicates, all but the first). Computed once (under a lock), by whoever needs it first."""
    path = Path(work) / "dedup" / "drops.npy"
    with locked(work, "drops"):
        if read_marker(path.with_suffix(".json")):
            return np.load(path, mmap_mode="r")
        t0 = time.perf_counter()
        base = [Path(work) / "units" / k for k in mono_keys]
        exact = np.concatenate([np.load(f"{b}.exact.npy") for b in base] or [np.zeros(0, np.uint64)])
        _, first = np.unique(exact, return_index=True)
        drops = np.ones(len(exact), dtype=np.uint8)                    # every later copy of a key: exact duplicate
        drops[first] = 0
        bands = sorted((Path(work) / "dedup").glob("band_*.npy"))
        pairs = np.concatenate([np.load(b) for b in bands] or [np.zeros((0, 2), np.int64)])
        near = filters.components(len(exact), pairs) != np.arange(len(exact))
        drops[near & (drops == 0)] = 2
        save_npy(path, drops)
        _write_marker(path.with_suffix(".json"), [path], seconds=time.perf_counter() - t0)
        log(f"data: dedup over {len(exact):,} documents: {(drops == 1).sum():,} exact and {(drops == 2).sum():,} "
            f"near duplicates ({len(pairs):,} candidate pairs; {time.perf_counter() - t0:.1f}s)")
        return np.load(path, mmap_mode="r")
