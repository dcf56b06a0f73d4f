"""PolyLM's data pipeline, from raw web text to token shards, on one box or many (PolyLM paper §3, "Pre-training data":
language identification, rule-based filtering, a model-based quality filter and MinHash-LSH de-duplication remove
about 28% of the text; then the 256K BPE tokenizer). data.py is the command line; corpus.py reads the inputs,
lid.py and filters.py hold the models and rules, shards.py the output format.

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
import contextlib
import dataclasses
import fcntl
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
from corpus import DataError
from common import LANGS

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


# ----------------------------------------------------------------------------- one unit's work (worker processes)

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


def _stats_json(stats):
    return {"by_lang": {k: dict(v) for k, v in stats["by_lang"].items()}, "counts": dict(stats["counts"]),
            "seconds": dict(stats["seconds"]), "bytes": dict(stats["bytes"])}


def _merge_stats(total, s):
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


def _tmp_path(path):
    """A unique temporary sibling of path (pid + random): two processes never write the same temporary file."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.tmp{os.getpid()}-")
    os.close(fd)
    return Path(tmp)


def _fsync(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_json(path, obj):
    """Atomic, durable JSON: a unique temporary file, fsynced, renamed into place."""
    tmp = _tmp_path(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_marker(path, files, **extra):
    """The marker of a finished piece of work, listing its output files and their sizes (written last)."""
    write_json(path, {"files": {Path(f).name: os.path.getsize(f) for f in files}, **extra})


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
                if self.tokenize else _TextWriter(path)
        return self.writers[key]

    def close(self):
        """Close every part (fsynced, renamed into place); -> (their paths, counts per "source.split")."""
        for w in self.writers.values():
            w.close()
        return [w.path for w in self.writers.values()], {k: dict(v) for k, v in self.counts.items()}


class _TextWriter:
    def __init__(self, path):
        self.path = Path(path)
        self.tmp = _tmp_path(path)
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
        stats = _new_stats()
        if phase == "filter":
            files, n = _filter_unit(unit, ctx, stats, folder)
            _write_marker(marker, files, unit=dataclasses.asdict(unit), n_docs=n, stats=_stats_json(stats))
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
        _write_marker(marker, files, unit=dataclasses.asdict(unit), parts=counts, stats=_stats_json(stats))
        return unit.key


def _filter_unit(unit, ctx, stats, folder):
    """The "filter" phase of one unit: kept documents (JSON lines) and their dedup arrays (.npy), all fsynced."""
    base = folder / unit.key
    arrays, n = defaultdict(list), 0
    docs_path = Path(f"{base}.docs.jsonl")
    w = _TextWriter(docs_path)
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
        path = Path(f"{base}.{name}.npy")
        tmp = _tmp_path(path)
        with open(tmp, "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        files.append(path)
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
        pairs = filters.band_pairs(keys, get_sig, ctx["jaccard"], live)
        tmp = _tmp_path(out)
        with open(tmp, "wb") as f:
            np.save(f, pairs)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        _write_marker(marker, [out], pairs=len(pairs), seconds=time.perf_counter() - t0)
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
        tmp = _tmp_path(path)
        with open(tmp, "wb") as f:
            np.save(f, drops)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _write_marker(path.with_suffix(".json"), [path], seconds=time.perf_counter() - t0)
        log(f"data: dedup over {len(exact):,} documents: {(drops == 1).sum():,} exact and {(drops == 2).sum():,} "
            f"near duplicates ({len(pairs):,} candidate pairs; {time.perf_counter() - t0:.1f}s)")
        return np.load(path, mmap_mode="r")


# ----------------------------------------------------------------------------- the driver

def _map(tasks, ctx, workers, desc):
    """Run tasks (results are files; order only matters for the progress bar)."""
    from tqdm import tqdm
    if not tasks:
        return
    bar = tqdm(total=len(tasks), desc=desc, unit="task", disable=len(tasks) < 2, leave=False)
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
        todo = [t for t in todo if not read_marker(work / ("units" if t[0] == "filter" else "parts") / f"{t[1].key}.json")]
        log(f"data: {len(mine)} units of work{where}, {len(mine) - len(todo)} already done; stages {','.join(stages)}")
        _map(todo, ctx, workers, "filter" if dedup else "process")
    if dedup and cfg.phase in ("all", "dedup"):
        _require(work, "units", [u for u in mono], "units", "filtered")
        bands = list(range(cfg.bands))[rank::nodes]
        todo = [("band", None, b) for b in bands if not read_marker(work / "dedup" / f"band_{b:04d}.json")]
        (work / "dedup").mkdir(exist_ok=True)
        log(f"data: dedup: {len(bands)} LSH bands{where}, {len(bands) - len(todo)} already done")
        _map(todo, ctx, workers, "dedup")
    if dedup and cfg.phase in ("all", "tokenize"):
        missing = [b for b in range(cfg.bands) if not read_marker(work / "dedup" / f"band_{b:04d}.json")]
        if missing:
            raise DataError(f"{len(missing)} of {cfg.bands} LSH bands are not done yet (e.g. band {missing[0]}): run "
                            f"--phase=dedup on every node first")
        compute_drops(work, ctx["mono_keys"], log)
        offsets = dict(zip(ctx["mono_keys"], np.cumsum([0] + [read_marker(work / "units" / f"{u.key}.json")["n_docs"]
                                                             for u in mono])[:-1].tolist()))
        todo = [("tokenize", u, offsets[u.key]) for u in mine if u.kind == "mono"
                and not read_marker(work / "parts" / f"{u.key}.json")]
        _map(todo, ctx, workers, "tokenize")
    if cfg.phase not in ("all", "finish"):
        log(f"data: phase {cfg.phase}{where} done in {time.perf_counter() - t_start:.1f}s")
        return None
    _require(work, "parts", units, "units/tokenize", "tokenized")
    return _finish(units, out, work, ctx, stages, fingerprint, settings, t_start, log, cfg.keep_work,
                   manifest_extra or {}, tokenizer_dir, skipped)


def _require(work, folder, units, phase, what):
    missing = [u for u in units if not read_marker(Path(work) / folder / f"{u.key}.json")]
    if missing:
        raise DataError(f"{len(missing)} of {len(units)} units are not {what} yet (e.g. {missing[0].path}): run "
                        f"--phase={phase} on every node first (same --input and settings)")


def _quality_model(work, cfg, log):
    """Train the quality model once per work dir (under a lock: the first node to get here trains it)."""
    path = work / "quality.npz"
    with locked(work, "quality"):
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
    with locked(work, "finish"):
        total = _new_stats()
        parts = defaultdict(list)                                       # "src.split" -> [(path, counts)]
        kinds, langs, inputs = {}, {}, defaultdict(list)
        for u in units:
            rec = read_marker(work / "parts" / f"{u.key}.json")
            _merge_stats(total, rec["stats"])
            if u.kind == "mono" and "dedup" in stages:
                _merge_stats(total, read_marker(work / "units" / f"{u.key}.json")["stats"])
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
            total["seconds"]["dedup"] += sum(read_marker(p)["seconds"] for p in (work / "dedup").glob("*.json"))
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
        stats = _stats_json(total)
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
    write_json(out / "stats.json", stats)
    if tokenizer_dir is not None:
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.tmp", dir=out))
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        if (out / "tokenizer").exists():
            shutil.rmtree(out / "tokenizer")
        os.replace(tmp, out / "tokenizer")
    write_json(out / "manifest.json", manifest)                       # written last: it marks the output complete


def _join_parts(paths, dest, ctx):
    """Concatenate part files into dest (atomic; a single part is hard-linked, no copy)."""
    dest = Path(dest)
    if "tokenize" in ctx["stages"]:
        if len(paths) == 1:
            tmp = _tmp_path(dest)
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
        w = _TextWriter(dest)
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
    units = [make_unit(p, kind, lang, name) for name, (lang, kind, p) in sources.items()]
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
