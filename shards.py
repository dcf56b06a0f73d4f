"""Token shards: the contract between the data pipeline and training (PolyLM paper §3-4: the filtered corpus is
tokenized once with the 256K tokenizer, then read by every training rank).

A shards directory (written by `python data.py ... --out DIR`, or by train.py's own small-data path) holds
    manifest.json            sources {name: {lang, kind, train: {file, tokens, docs, bytes}, val: {...}}}, the
                             tokenizer hash, vocab size, stages, filter statistics; written LAST: it marks the
                             directory complete
    <source>.<split>.bin     one shard per source (en, th, ..., bi.en-th, hq.de) and split (train, val)
    tokenizer/               a copy of the tokenizer that made them (so `train.py --shards=DIR` needs nothing else)
    stats.json               the pipeline's per-language counts and per-stage throughput

Shard format, version 2 (little-endian): a 64-byte header, the tokens, then one CRC-32 per block of the token bytes.
    0  8s  magic  b"PLMSHARD"      16  Q  number of tokens
    8  I   format version (2)      24  32s first 32 hex digits of the tokenizer hash
    12 I   bytes per token (2 = uint16 when the vocab fits in 65,536, else 4 = uint32; 256K needs uint32)
    56 I   block size in bytes (1 MiB) of the CRC table that follows the tokens
Invariants: a shard being written has an all-zero header and a temporary name, so it never looks complete; reading a
shard with another tokenizer is an error, never silent garbage; every block is checked against its CRC the first
time it is read (`Shard`), so a flipped byte anywhere is one clear error naming the file and the offset, not an
IndexError deep in training. Checking costs one CRC-32 pass over the data read (~1 GB/s), once per process.

The train/val split is also defined here (`is_val`): by a hash of a document's own text, so it is stable when data is
added and the same on every machine.
"""
import array
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from common import temp_sibling
from corpus import DataError

MAGIC, VERSION, HEADER = b"PLMSHARD", 2, 64
_HEADER_FMT = "<8sIIQ32sI"
BLOCK = 1 << 20
EOT_TEXT = "<|endoftext|>"
SPLIT_HASH = "crc32"      # recorded in the manifest: shards made with another split function are re-made


# ----------------------------------------------------------------------------- the train/val split

def is_val(text, val_frac):
    """Deterministic train/val split from the document's own content: its CRC-32 as a uniform number in [0, 1).
    (A checksum, not a cryptographic hash, is plenty to spread natural text evenly, and 5x cheaper than md5 per call:
    on short lines the split hash was a fifth of the tokenization stage's time.)"""
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) < val_frac * 2**32


def val_mask(texts, val_frac):
    """[is_val(t, val_frac) for t in texts], inlined: this runs once per document of the whole corpus."""
    crc, limit = zlib.crc32, val_frac * 2**32
    return [crc(t.encode("utf-8", "surrogatepass")) < limit for t in texts]


def split_key(kind, doc):
    """The text the split is decided on: the document, or for a pair both directions sorted (so "en\\nxx" and
    "xx\\nen" always land in the same split)."""
    return doc if kind == "mono" else "\n".join(sorted(doc.split("\n", 1)))


# ----------------------------------------------------------------------------- tokenizing documents

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


# ----------------------------------------------------------------------------- writing

class ShardWriter:
    """Append tokens to a temporary file (CRC-32 per block on the way); close() writes the CRC table and the header
    and renames the file into place (atomic)."""

    def __init__(self, path, tokenizer_hash, vocab_size, fsync=True):
        self.path, self.n, self.fsync = Path(path), 0, fsync
        self.dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
        self.vocab_size, self.tokenizer_hash = vocab_size, tokenizer_hash
        fd, self.tmp = temp_sibling(self.path)
        self.f = os.fdopen(fd, "wb")
        self.f.write(b"\0" * HEADER)                                   # an all-zero header: not a shard until closed
        self.crcs, self.crc, self.in_block = [], 0, 0

    def write(self, tokens):
        tokens = np.asarray(tokens)
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            self.abort()
            raise DataError(f"{self.path}: token id {int(tokens.max())} >= vocab_size {self.vocab_size}")
        raw = memoryview(tokens.astype(self.dtype, copy=False).tobytes())
        self.f.write(raw)
        self.n += tokens.size
        while len(raw):                                                # CRC-32 of every BLOCK bytes
            take = min(BLOCK - self.in_block, len(raw))
            self.crc = zlib.crc32(raw[:take], self.crc)
            self.in_block += take
            raw = raw[take:]
            if self.in_block == BLOCK:
                self.crcs.append(self.crc)
                self.crc, self.in_block = 0, 0

    def close(self):
        if self.in_block:
            self.crcs.append(self.crc)
        self.f.write(np.asarray(self.crcs, dtype="<u4").tobytes())
        self.f.seek(0)
        self.f.write(struct.pack(_HEADER_FMT, MAGIC, VERSION, np.dtype(self.dtype).itemsize, self.n,
                                 self.tokenizer_hash[:32].encode("ascii"), BLOCK).ljust(HEADER, b"\0"))
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


# ----------------------------------------------------------------------------- reading

def shard_header(path):
    """(bytes per token, number of tokens, tokenizer hash prefix, block size) of a shard; DataError if it is not a
    whole one."""
    with open(path, "rb") as f:
        raw = f.read(HEADER)
    if len(raw) < HEADER:
        raise DataError(f"{path}: too short to be a shard (truncated?); delete it and re-run data preparation")
    magic, version, itemsize, n, tok_hash, block = struct.unpack_from(_HEADER_FMT, raw)
    if magic != MAGIC or version != VERSION:
        raise DataError(f"{path}: not a version-{VERSION} PolyLM shard (magic {magic!r}, version {version}); "
                        f"re-run data preparation")
    nblocks = -(-n * itemsize // block) if block else 0
    if itemsize not in (2, 4) or not block or os.path.getsize(path) != HEADER + n * itemsize + 4 * nblocks:
        raise DataError(f"{path}: header says {n} tokens but the file size disagrees (truncated?); re-run data "
                        f"preparation")
    return itemsize, n, tok_hash.decode("ascii"), block


class Shard:
    """A shard's tokens, memory-mapped (no copy), each block checked against its CRC-32 when first read.
    Behaves like a read-only 1-D array for len() and slicing (`shard[a:b]` -> np.ndarray)."""

    def __init__(self, path, tokenizer_hash=None):
        itemsize, n, tok_hash, block = shard_header(path)
        if tokenizer_hash is not None and tok_hash != tokenizer_hash[:32]:
            raise DataError(f"{path}: written with tokenizer {tok_hash[:12]}…, but tokenizer {tokenizer_hash[:12]}… "
                            f"is in use; re-tokenize the data with this tokenizer (delete the shard directory)")
        self.path, self.n, self.itemsize, self.block = Path(path), n, itemsize, block
        self.dtype = np.dtype({2: "<u2", 4: "<u4"}[itemsize])
        self.tokens = np.memmap(path, dtype=self.dtype, mode="r", offset=HEADER, shape=(n,)) if n else \
            np.zeros(0, self.dtype)
        nblocks = -(-n * itemsize // block)
        self.crcs = np.fromfile(path, dtype="<u4", offset=HEADER + n * itemsize, count=nblocks) if nblocks else \
            np.zeros(0, "<u4")
        self.checked = np.zeros(nblocks, dtype=bool)

    def __len__(self):
        return self.n

    def _check(self, start, stop):
        """Verify the blocks holding tokens [start, stop) that no one has verified yet."""
        if stop <= start:
            return
        per = self.block // self.itemsize
        first, last = start // per, (stop - 1) // per
        if self.checked[first:last + 1].all():
            return
        raw = self.tokens.view(np.uint8)
        for b in range(first, last + 1):
            if not self.checked[b]:
                if zlib.crc32(raw[b * self.block:(b + 1) * self.block]) != int(self.crcs[b]):
                    raise DataError(f"{self.path}: corrupt data in bytes {HEADER + b * self.block:,}.."
                                    f"{HEADER + (b + 1) * self.block:,} (CRC mismatch); re-create this shard "
                                    f"(re-run data preparation) or restore it from a copy")
                self.checked[b] = True

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError("index a Shard with a slice, e.g. shard[a:b]")
        start, stop, step = key.indices(self.n)
        self._check(start, stop)
        return self.tokens[start:stop:step]

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else np.asarray(out)

    def verify(self):
        """Check every block now (python data.py --verify=DIR); returns the number of tokens."""
        self._check(0, self.n)
        return self.n


def read_shard(path, tokenizer_hash=None):
    """A Shard (memory-mapped tokens, CRC-checked on first read); checks magic, version, size and, if given, the
    tokenizer hash."""
    return Shard(path, tokenizer_hash)


def load_manifest(shard_dir, tokenizer_hash=None):
    """manifest.json of a shards directory, checked: complete, and made with tokenizer_hash when one is given."""
    path = Path(shard_dir) / "manifest.json"
    if not path.exists():
        hint = "a data.py run that has not finished (run it again to resume)" if any(Path(shard_dir).glob(".work-*")) \
            else "not a shards directory"
        raise DataError(f"{path} not found: {shard_dir} is {hint}; make one with `python data.py --input ... "
                        f"--tokenizer TOK --out {shard_dir}`")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e}); re-run data.py") from None
    if tokenizer_hash is not None and m.get("tokenizer_hash") != tokenizer_hash:
        raise DataError(f"{shard_dir} was tokenized with tokenizer {str(m.get('tokenizer_hash'))[:12]}…, not with "
                        f"{tokenizer_hash[:12]}… ({'the one in use'}); train with the shards' own tokenizer "
                        f"({shard_dir}/tokenizer, the default) or re-tokenize")
    return m


def load_shards(shard_dir, manifest, split):
    """{source: Shard} for one split, checked against the manifest's tokenizer and token counts."""
    out = {}
    for name, e in manifest["sources"].items():
        s = read_shard(Path(shard_dir) / e[split]["file"], manifest["tokenizer_hash"])
        if len(s) != e[split]["tokens"]:
            raise DataError(f"{s.path}: {len(s):,} tokens, the manifest says {e[split]['tokens']:,}; the directory "
                            f"mixes two data.py runs: re-run data.py")
        out[name] = s
    return out
