"""PolyLM's data pipeline: raw multilingual text -> filtered, de-duplicated, tokenized shards + manifest.

PolyLM paper §3 ("Pre-training data"): the 640B-token corpus (web, books, code, parallel text) goes through
language identification, rule-based filtering, a model-based quality filter and MinHash-LSH de-duplication (about
28% of the text is removed), and is then tokenized with the 256K BPE tokenizer. This file runs that flow as one
streaming, resumable stage; the models and rules themselves live in lid.py and filters.py.

    python data.py --input web/,books.jsonl.gz --tokenizer TOK_DIR --out shards/ [--stages lid,rules,quality,dedup,tokenize]
    python data.py --lid FILE                                    # one language code per input line

Top to bottom, per input file (or 64 MB chunk of one), in parallel worker processes, a batch of documents at a time:
  read      .txt (one document per line, or --txt_docs=blank for blank-line separated), .jsonl (`text`, optional
            `lang`), en-<xx>.tsv (parallel pairs), each optionally .gz/.xz. Bad UTF-8 is counted and replaced.
  lid       lid.py's character n-gram naive Bayes labels every document (18 languages or "other"). A document whose
            language was declared (a file named <lang>.txt, a directory <lang>/, a jsonl `lang`) is dropped when the
            model disagrees; "other" is dropped.
  rules     filters.apply_rules: Gopher/C4 length, word length, symbol/digit/letter ratios, repetition, boilerplate.
  quality   filters.QualityModel: bits/char under a per-language char 4-gram LM trained on a high-quality reference.
  dedup     exact-duplicate keys and MinHash signatures are computed here, per document; then, once over all inputs,
            exact duplicates and MinHash-LSH near-duplicates are found (filters.near_duplicates), the first kept.
  tokenize  a bpe.py tokenizer; <|endoftext|> after every document; train/val by a hash of the document's text
            (data.is_val), so the split is stable when data is added; one part file per (input, language, split).
Finally the parts of each (language, split) are joined into out/<lang>.<split>.bin, and manifest.json (tokens
per source, filter stats, tokenizer hash) and stats.json are written. Each stage's kept/removed counts per language
are printed as a table.

Resumable: every finished unit of work leaves a marker in out/.work-<config hash>/ (written last, after its files
were renamed into place); a re-run skips finished units, and the manifest, written last, marks the whole output.
Files are written to a temporary name and renamed, so a killed run never leaves a shard that looks complete.

Shard format (little-endian): a 64-byte header, then the tokens.
    0  8s  magic  b"PLMSHARD"      16  Q  number of tokens
    8  I   format version (1)      24  32s first 32 hex digits of the tokenizer hash
    12 I   bytes per token (2 = uint16 when the vocab fits in 65,536, else 4 = uint32; 256K needs uint32)
Reading a shard with a different tokenizer than the one that wrote it is an error, never silent garbage.

`prepare()` is the same machinery for the toy run's layout (data_dir/mono/<lang>.txt, data_dir/parallel/en-<xx>.tsv):
sources `en`, `th`, ... and `bi.en-th`, ... (each pair as two documents, "English\\nThai" and "Thai\\nEnglish").
By default it only tokenizes (the bundled sample is curated text); `stages=` turns the filters on.
"""
import array
import dataclasses
import gzip
import hashlib
import json
import lzma
import os
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

import lid
from lid import LANGS  # noqa: F401  (PolyLM's 18 languages: data.LANGS)

MAGIC, VERSION, HEADER = b"PLMSHARD", 1, 64
_HEADER_FMT = "<8sIIQ32s"
STAGES = ("lid", "rules", "quality", "dedup", "tokenize")
EOT_TEXT = "<|endoftext|>"
ROOT = Path(__file__).resolve().parent


class DataError(ValueError):
    """Bad input data or a shard/tokenizer mismatch: the message names the file and the fix."""


# ----------------------------------------------------------------------------- reading raw text

def _open_binary(path):
    path = str(path)
    return gzip.open(path, "rb") if path.endswith(".gz") else lzma.open(path, "rb") if path.endswith(".xz") \
        else open(path, "rb")


def _open_text(path):
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else lzma.open if path.endswith(".xz") else open
    # bad UTF-8 is replaced (U+FFFD), never a crash: web text always has some
    return opener(path, "rt", encoding="utf-8", errors="replace")


def _lines(path, start=0, end=None, stats=None, block=4 << 20):
    """Decoded lines (without the newline) of a file, or of the byte range [start, end): a line belongs to the range
    it starts in. Read in blocks of whole lines and decoded a block at a time (5x faster than line by line on short
    lines); bad UTF-8 is replaced by U+FFFD and counted in stats["bad_utf8_lines"]. Byte offsets of .gz/.xz files are
    offsets in the decompressed stream (seeking there decompresses and discards what comes before)."""
    with _open_binary(path) as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()                                               # skip the line that began before start
        left = None if end is None else end - f.tell()
        while left is None or left > 0:
            buf = f.read(block if left is None else min(block, left))
            if not buf:
                return
            if not buf.endswith(b"\n"):
                buf += f.readline()                                    # finish the last line (it began in range)
            if left is not None:
                left -= len(buf)
            try:
                lines = buf.decode("utf-8").split("\n")
            except UnicodeDecodeError:                                 # rare: decode line by line to count them
                lines = []
                for raw in buf.split(b"\n"):
                    try:
                        lines.append(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        if stats is not None:
                            stats["bad_utf8_lines"] += 1
                        lines.append(raw.decode("utf-8", errors="replace"))
            if lines[-1] == "":
                lines.pop()                                            # after the final newline
            yield from lines


def read_records(path, txt_docs="line", start=0, end=None, stats=None, strict=True):
    """Yield (text, lang or None) from a .txt / .jsonl / en-<xx>.tsv file (optionally .gz/.xz).

    .txt: one document per non-empty line (txt_docs="line") or per blank-line separated block ("blank").
    .jsonl: the `text` field, and `lang` when it is one of LANGS. A malformed line raises DataError (strict) or is
    counted in stats["bad_json_lines"]. .tsv: parallel pairs, as the two directions "en\\nxx" and "xx\\nen".
    """
    name = Path(path).name
    if ".jsonl" in name:
        for n, line in enumerate(_lines(path, start, end, stats), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                text = rec["text"]
                if not isinstance(text, str):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                if strict:
                    raise DataError(f"{path}:{n}: expected a JSON object with a 'text' field") from None
                stats["bad_json_lines"] += 1
                continue
            text = text.strip()
            if text:
                lang = rec.get("lang")
                yield text, lang if lang in LANGS else None
    elif ".tsv" in name:
        lang = name.split(".")[0].split("-")[-1]
        for line in _lines(path, start, end, stats):
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) == 2 and parts[0].strip() and parts[1].strip():
                en, other = parts[0].strip(), parts[1].strip()
                yield f"{en}\n{other}", lang
                yield f"{other}\n{en}", lang
    elif txt_docs == "blank":
        block = []
        for line in _lines(path, start, end, stats):
            if line.strip():
                block.append(line.strip())
            elif block:
                yield "\n".join(block), None
                block = []
        if block:
            yield "\n".join(block), None
    else:
        for line in _lines(path, start, end, stats):
            line = line.strip()
            if line:
                yield line, None


def read_documents(path):
    """Yield documents: one per non-empty line of a .txt, or the `text` field of each .jsonl line."""
    for text, _ in read_records(path):
        yield text


def read_pairs(path):
    """Yield (english, other) from a `English<TAB>Other` file."""
    with _open_text(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 2 and parts[0].strip() and parts[1].strip():
                yield parts[0].strip(), parts[1].strip()


SPLIT_HASH = "crc32"      # recorded in the manifest: shards made with another split function are re-made


def is_val(text, val_frac):
    """Deterministic train/val split from the document's own content: its CRC-32 as a uniform number in [0, 1).
    (A checksum, not a cryptographic hash, is plenty to spread natural text evenly, and 5x cheaper than md5 per call:
    on short lines the split hash was a fifth of the tokenization stage's time.)"""
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) < val_frac * 2**32


def val_mask(texts, val_frac):
    """[is_val(t, val_frac) for t in texts], inlined: this runs once per document of the whole corpus."""
    crc, limit = zlib.crc32, val_frac * 2**32
    return [crc(t.encode("utf-8", "surrogatepass")) < limit for t in texts]


def _split_key(kind, doc):
    return doc if kind == "mono" else "\n".join(sorted(doc.split("\n", 1)))   # both directions of a pair together


def discover_sources(data_dir):
    """{source name: (lang, kind, path)} for data_dir/mono/<lang>.txt[.gz|.xz], data_dir/parallel/en-<xx>.tsv and
    data_dir/hq/<lang>.txt (a high-quality subset: source `hq.<lang>`, flagged `"hq": true` in the manifest so the
    curriculum can give it a share of its own, as PolyLM's stage 2 does)."""
    data_dir = Path(data_dir)
    if not (data_dir / "mono").is_dir():
        raise DataError(f"{data_dir}/mono/ not found: data_dir must hold mono/<lang>.txt files (see data/sample)")
    sources = {}
    for p in sorted((data_dir / "mono").iterdir()):
        lang = p.name.split(".")[0]
        if lang in LANGS:
            sources[lang] = (lang, "mono", p)
    for p in sorted((data_dir / "parallel").glob("en-*.tsv")) if (data_dir / "parallel").is_dir() else []:
        sources["bi." + p.stem] = (p.stem.split("-")[1], "bilingual", p)
    for p in sorted((data_dir / "hq").iterdir()) if (data_dir / "hq").is_dir() else []:
        lang = p.name.split(".")[0]
        if lang in LANGS:
            sources["hq." + lang] = (lang, "mono", p)
    if not sources:
        raise DataError(f"no mono/<lang>.txt files for any of {' '.join(LANGS)} in {data_dir}")
    return sources


def source_documents(kind, path):
    if kind == "mono":
        yield from read_documents(path)
    else:
        for en, other in read_pairs(path):
            yield f"{en}\n{other}"
            yield f"{other}\n{en}"


def split_documents(kind, path, val_frac):
    """(train_docs, val_docs) of one source; the two directions of a pair always land in the same split."""
    train, val = [], []
    for doc in source_documents(kind, path):
        (val if is_val(_split_key(kind, doc), val_frac) else train).append(doc)
    return train, val


# ----------------------------------------------------------------------------- shards

class ShardWriter:
    """Append tokens to a temporary file; close() writes the header and renames it into place (atomic)."""

    def __init__(self, path, tokenizer_hash, vocab_size, fsync=True):
        self.path, self.n, self.fsync = Path(path), 0, fsync
        self.dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
        self.vocab_size, self.tokenizer_hash = vocab_size, tokenizer_hash
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".tmp")
        self.f = os.fdopen(fd, "wb")
        self.f.write(b"\0" * HEADER)                                   # an all-zero header: not a shard until closed

    def write(self, tokens):
        tokens = np.asarray(tokens)
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            self.abort()
            raise DataError(f"{self.path}: token id {int(tokens.max())} >= vocab_size {self.vocab_size}")
        self.f.write(tokens.astype(self.dtype, copy=False).tobytes())
        self.n += tokens.size

    def close(self):
        self.f.seek(0)
        self.f.write(struct.pack(_HEADER_FMT, MAGIC, VERSION, np.dtype(self.dtype).itemsize, self.n,
                                 self.tokenizer_hash[:32].encode("ascii")).ljust(HEADER, b"\0"))
        self.f.flush()
        if self.fsync:                                                 # durable across a power loss, not only a kill
            os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self):
        self.f.close()
        Path(self.tmp).unlink(missing_ok=True)


def write_shard(path, tokens, tokenizer_hash, vocab_size):
    """Atomically write tokens with a header: a crash never leaves a shard that looks complete."""
    w = ShardWriter(path, tokenizer_hash, vocab_size)
    w.write(tokens)
    w.close()


def shard_header(path):
    """(bytes per token, number of tokens, tokenizer hash prefix) of a shard; DataError if it is not a whole one."""
    with open(path, "rb") as f:
        raw = f.read(HEADER)
    if len(raw) < HEADER:
        raise DataError(f"{path}: too short to be a shard (truncated?); delete it and re-run data preparation")
    magic, version, itemsize, n, tok_hash = struct.unpack_from(_HEADER_FMT, raw)
    if magic != MAGIC or version != VERSION:
        raise DataError(f"{path}: not a version-{VERSION} PolyLM shard (magic {magic!r}, version {version})")
    if os.path.getsize(path) != HEADER + n * itemsize:
        raise DataError(f"{path}: header says {n} tokens but the file size disagrees (truncated?)")
    return itemsize, n, tok_hash.decode("ascii")


def read_shard(path, tokenizer_hash=None):
    """Memory-map a shard's tokens (no copy). Checks magic, version, size and, if given, the tokenizer hash."""
    itemsize, n, tok_hash = shard_header(path)
    if tokenizer_hash is not None and tok_hash != tokenizer_hash[:32]:
        raise DataError(f"{path}: written with tokenizer {tok_hash[:12]}…, but tokenizer {tokenizer_hash[:12]}… is in "
                        f"use; re-tokenize the data with this tokenizer (delete the shard directory)")
    return np.memmap(path, dtype={2: np.uint16, 4: np.uint32}[itemsize], mode="r", offset=HEADER, shape=(n,))


def encode_documents(enc, docs):
    """uint32 token ids of docs, each followed by <|endoftext|>. One tiktoken call for the whole batch: the text is
    joined with the special token, which tiktoken splits on before BPE, so this equals encoding each document
    alone (and is faster than encode_ordinary_batch, whose per-document thread hand-off dominates)."""
    if not docs:
        return np.zeros(0, dtype=np.uint32)
    text = EOT_TEXT.join(docs) + EOT_TEXT
    if text.count(EOT_TEXT) != len(docs):                              # a document holds the literal text, which
        ids = [t for d in docs for t in (*enc.encode_ordinary(d), enc.eot_token)]   # is not the special token
    else:
        ids = enc.encode(text, allowed_special={EOT_TEXT})
    return np.frombuffer(array.array("I", ids), dtype=np.uint32)      # 3x faster than np.array(list of ints)


def tokenize_documents(enc, docs):
    """Token ids of docs, each followed by <|endoftext|>, as one flat int64 array."""
    return encode_documents(enc, list(docs)).astype(np.int64)


# ----------------------------------------------------------------------------- prepare (the toy run's entry point)

def _fingerprint(paths):
    h = hashlib.sha256()
    for p in paths:
        h.update(str(Path(p).name).encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def prepare(data_dir, enc, tokenizer_hash, out_dir, val_frac=0.05, log=print, stages=("tokenize",), workers=1,
            options=None):
    """Tokenize every source of data_dir into out_dir/<source>.<split>.bin and write out_dir/manifest.json.

    stages: ("tokenize",) by default (the bundled sample is curated text); add "lid", "rules", "quality", "dedup"
    to filter the monolingual sources (parallel pairs are only tokenized). Cached: if the manifest matches the
    tokenizer, the inputs' content, val_frac and the stages, nothing is redone.
    """
    sources = discover_sources(data_dir)
    import pipeline
    units = [pipeline.Unit(str(p), kind, lang, name) for name, (lang, kind, p) in sources.items()]
    fp = _fingerprint(p for _, _, p in sources.values())
    msgs = []
    m = pipeline.run_pipeline(units, out_dir, enc, tokenizer_hash, tuple(stages) + ("tokenize",), val_frac, workers, options,
                     fingerprint_extra=fp, log=msgs.append,
                     manifest_extra={"data_dir": str(data_dir), "input_fingerprint": fp})
    if msgs and msgs[0].startswith("data: reusing"):
        log(f"data: reusing token shards in {out_dir} ({m['total_tokens']:,} tokens)")
    else:
        for msg in msgs if set(stages) - {"tokenize"} else []:
            log(msg)
        log(f"data: wrote {len(m['sources'])} sources, {m['total_tokens']:,} tokens to {out_dir}")
    return m


def load_shards(out_dir, manifest, split):
    """{source: memmapped tokens} for one split, checked against the manifest's tokenizer."""
    return {name: read_shard(Path(out_dir) / e[split]["file"], manifest["tokenizer_hash"])
            for name, e in manifest["sources"].items()}


# ----------------------------------------------------------------------------- command line

@dataclasses.dataclass
class DataConfig:
    input: str = ""                     # files/directories, comma-separated (or several after --input): .txt .jsonl .tsv
    tokenizer: str = ""                 # a bpe.py tokenizer directory (the tokenize stage needs it)
    out: str = ""                       # output directory: <lang>.<split>.bin, manifest.json, stats.json
    stages: str = ",".join(STAGES)      # stages to run, comma-separated: lid,rules,quality,dedup,tokenize
    lid: str = ""                       # a text file: print one language code per line of it, and exit
    val_frac: float = 0.05              # share of documents held out for validation (by content hash)
    workers: int = 0                    # worker processes (0 = one per core)
    txt_docs: str = "line"              # .txt documents: line (one per line) | blank (blank-line separated)
    chunk_mb: int = 64                  # files bigger than this (.gz/.xz: over a quarter of it) are split into units this big
    min_words: int = 2                  # rules: minimum words (Gopher: 50 for web pages); zh/ja/th use min_chars
    quality_ref: str = "data/sample/mono"  # high-quality reference for the quality model: <lang>.txt files
    quality_quantile: float = 0.995     # quality threshold: this quantile of held-out reference bits/char
    num_perm: int = 128                 # MinHash permutations
    bands: int = 32                     # LSH bands (rows per band = num_perm / bands)
    jaccard: float = 0.8                # near-duplicate threshold on the estimated Jaccard similarity
    shingle_words: int = 5              # shingle = this many consecutive words ...
    shingle_chars: int = 5              # ... or characters for zh/ja/th
    keep_work: bool = False             # keep out/.work-*/ (intermediate files) after a successful run


def _print_lid(path):
    with _open_text(path) as f:
        lines = [line.rstrip("\n") for line in f]
    for code in lid.identify(lines):
        print(code)


def run(cfg):
    if cfg.lid:
        return _print_lid(cfg.lid)
    import pipeline
    if not cfg.input or not cfg.out:
        raise DataError("give --input FILES_OR_DIRS and --out DIR (and --tokenizer DIR for the tokenize stage); "
                        "or --lid FILE")
    stages = tuple(s.strip() for s in cfg.stages.split(",") if s.strip())
    enc = tok_hash = None
    if "tokenize" in stages:
        if not cfg.tokenizer:
            raise DataError("the tokenize stage needs --tokenizer DIR (a bpe.py tokenizer); or leave it out of "
                            "--stages to write filtered text (<lang>.<split>.jsonl)")
        import bpe
        enc, tok_hash = bpe.load(cfg.tokenizer), bpe.tokenizer_hash(cfg.tokenizer)
    options = pipeline.Options(txt_docs=cfg.txt_docs, quality_ref=cfg.quality_ref,
                               quality_quantile=cfg.quality_quantile, num_perm=cfg.num_perm, bands=cfg.bands,
                               jaccard=cfg.jaccard, shingle_words=cfg.shingle_words, shingle_chars=cfg.shingle_chars,
                               rules={"min_words": cfg.min_words})
    units = pipeline.plan_units([p for p in cfg.input.split(",") if p], cfg.chunk_mb << 20, cfg.txt_docs)
    m = pipeline.run_pipeline(units, cfg.out, enc, tok_hash, stages, cfg.val_frac, cfg.workers, options,
                              keep_work=cfg.keep_work)
    print(f"data: {len(m['sources'])} sources, {m['total_tokens']:,} tokens in {cfg.out} (manifest.json, stats.json)")
    return m


def main(argv=None):
    from config import run_cli
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--input" in argv:                                              # --input a b c -> --input=a,b,c
        i = argv.index("--input")
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        argv[i:j] = ["--input=" + ",".join(argv[i + 1:j])]
    return run_cli(run, DataConfig, argv, prog="data.py")


if __name__ == "__main__":
    main()
