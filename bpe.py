"""PolyLM's tokenizer: a byte-level BPE with digits split one by one, trained from scratch on 18 languages.

PolyLM paper (arXiv 2307.06018) §3, "Tokenizer" (part of the pre-training data section): a BPE vocabulary of 256,000
tokens trained on the multilingual corpus, every number split into single digits, and byte fallback so no character is
ever unknown. The big vocabulary is there for compression: with 256K tokens, non-Latin scripts (Chinese, Thai, Arabic,
...) need far fewer tokens per sentence than with English-centric vocabularies. This file makes such a tokenizer:

  1. Pre-tokenize. A regex (PATTERN, below) cuts text into chunks: words with their leading space, single digits,
     punctuation runs, whitespace. Merges never cross a chunk boundary, so e.g. no token can hold two digits.
  2. Count. Each distinct chunk is stored once with its count (17 MB of our 18 languages: 2.7M chunks, 364K distinct),
     and per-language counts are reweighted so small languages are not drowned by big ones (sampling with alpha:
     language l gets a share proportional to n_l**alpha of its n_l bytes, like XLM-R / mT5; alpha=1 keeps raw sizes).
  3. Start from the 256 bytes. A chunk is its UTF-8 bytes, so the 256 byte tokens spell any string: that is the
     byte fallback, nothing is ever unknown.
  4. Merge, vocab_size - 256 - len(specials) times: find the adjacent pair of tokens (a, b) with the highest count
     over all chunks (ties: the smallest (a, b) ids), give it a new token id whose bytes are bytes(a) + bytes(b), and
     replace every non-overlapping occurrence, left to right, in every chunk. The order of merges is the vocabulary:
     token id == rank == when it was learned. Special tokens (<|endoftext|>, ...) take the last ids.
  5. Encode new text (encode_reference, the same rule tiktoken uses): split with PATTERN, then in each chunk keep
     merging the adjacent pair whose merged bytes have the lowest rank, until no adjacent pair is in the vocab.

Step 4 done literally (train_naive) recounts every pair of the corpus for every merge: O(corpus x merges), days for
256K. train_fast gives exactly the same merges (tested) by updating counts incrementally:
  - a chunk is a Python str whose characters are token ids (chr(id)), so a pair is a 2-char str and applying a merge
    to a chunk is one C-level str.replace, which is exactly BPE's left-to-right non-overlapping rule;
  - an index pair -> chunks that contain it, so a merge only visits the chunks it changes;
  - around each new token only the neighbour pairs change: (x, a) and (b, y) lose counts, (x, new) and (new, y) are
    born. Every new adjacency involves the new token, so the counts of older pairs only ever go down, and a lazy
    max-heap works: a popped entry whose count is stale (too high) is pushed back with its true count;
  - numpy builds the initial byte-pair counts and index in one pass, and two processes share the regex work.

The output is a tiktoken rank file, so encoding at runtime is tiktoken's Rust code: `load(dir)` returns a
tiktoken.Encoding. Benchmarks (train time vs HF tokenizers, encode speed, compression per language vs cl100k/o200k):
docs/BENCHMARKS.md (bpe section), made by bench/bench_bpe.py.

A tokenizer dir holds exactly tokenizer.tiktoken (the ranks) and tokenizer.json (pattern, special tokens, content
hash), plus compression.png if --report drew it there. Writing one never loses a user's files (save, the CLI and
train.py's cache all go through `output_dir`): the new dir is built under a temporary name next to DIR and renamed
into place; an existing DIR is replaced only if it is empty or a bpe.py tokenizer dir, and only once the new one is
complete; anything else (a run dir, a folder of a user's files) is refused unless overwrite=True.

    python bpe.py --input data/sample/mono/*.txt --vocab_size 8192 --out tok/     # train; language = file stem
    python bpe.py --input a.txt,b.txt --vocab_size 256000 --max_bytes 2e9 --out tok-256k/
    python bpe.py --report tok/ [--heldout FILES] [--cl100k PATH|none] [--o200k PATH|none] [--png c.png]
    python bpe.py --help                                                           # every key, default and meaning
"""
import base64
import contextlib
import dataclasses
import hashlib
import heapq
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import weakref
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import regex
import tiktoken
from tqdm import tqdm

from config import run_cli

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|user|>", "<|assistant|>"]   # take the LAST ids of the vocab
ALPHA = 0.3             # per-language sampling exponent (XLM-R, mT5 use 0.3); 1.0 = use the corpus as it is
MAX_RUN = 32            # most characters in one CJK or Thai pre-token (see make_pattern and the benchmarks)
PARALLEL_BYTES = 4 << 20  # corpora larger than this are pre-tokenized by `processes` worker processes
REPO = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------- 1. pre-tokenization

def make_pattern(max_run=MAX_RUN):
    r"""The pre-tokenizer regex for 18 languages, one alternative per line (the first that matches wins).

    Classes: \p{L} letter, \p{M} combining mark, \p{N} any digit/number character, \s whitespace,
    \p{Han}/\p{Hiragana}/\p{Katakana}/\p{Thai} scripts; [^\P{X}\p{N}] reads "X but not a number".
    - Words of space-separated scripts (Latin, Cyrillic, Greek, Arabic, Hebrew, Hangul, Devanagari, ...): letters
      and the combining marks after them (Arabic/Hebrew diacritics, Indic vowel signs) stay in one chunk, with at
      most one leading space or punctuation mark (" the", "'homme"), like cl100k.
    - Chinese/Japanese (Han + kana) and Thai are written without spaces, so "a word" would be a whole clause. They get
      their own alternatives: a run of one script of at most `max_run` characters (Thai: letter+marks clusters, so a
      vowel or tone mark is never cut from its consonant). Per-script runs keep "iPhone手机" apart as "iPhone" "手机".
      The cap is a guard, not a word splitter: held-out compression at 32K (docs/BENCHMARKS.md (bpe section)) drops clearly
      with caps of 4 or 8 (merges cannot span the arbitrary cut points) and is flat from 32 up to no cap at all,
      while a cap bounds the length of a chunk, so a page of Chinese without punctuation cannot become one giant
      chunk that every merge has to rescan.
    - Numbers: exactly one character each (PolyLM splits numbers into digits), in every script (٣, ๓, ², 〇).
    - Punctuation/symbol runs (emoji with their modifiers stay whole), newlines, other whitespace: as in cl100k.
    """
    run = "+" if max_run is None else "{1,%d}" % max_run
    cjk = r"\p{Han}\p{Hiragana}\p{Katakana}\u30FC"                  # U+30FC: the katakana long-vowel mark ー
    return "|".join([
        r"[^\r\n\p{L}\p{N}]?(?:[^\P{L}" + cjk + r"\p{Thai}]|\p{M})+",   # words (letters not CJK/Thai, + marks)
        r" ?(?:[^\P{Han}\p{N}]|[\p{Hiragana}\p{Katakana}\u30FC])" + run,  # Chinese/Japanese runs
        r" ?(?:[^\P{Thai}\p{N}\p{M}]\p{M}*)" + run,                     # Thai runs of letter+marks clusters
        r"\p{N}",                                                      # one digit
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",                                  # punctuation, symbols, emoji
        r"\s*[\r\n]+",                                                 # newlines (with the spaces before them)
        r"\s+(?!\S)",                                                  # spaces, leaving the last one to the next word
        r"\s+",
    ])


PATTERN = make_pattern()


class BPEError(ValueError):
    """Bad input or a bad tokenizer directory. The message names the file or key, and the fix."""


class BPEFileError(FileNotFoundError, BPEError):
    """A file that should be there is missing or unreadable."""


def _split_at_lines(text, size):
    """Cut text into pieces of about `size` chars at "\n" + non-space, which is always a chunk boundary of PATTERN."""
    pieces, start = [], 0
    while len(text) - start > size:
        cut = text.find("\n", start + size)
        while cut != -1 and cut + 1 < len(text) and text[cut + 1].isspace():
            cut = text.find("\n", cut + 1)
        if cut == -1 or cut + 1 >= len(text):
            break
        pieces.append(text[start:cut + 1])
        start = cut + 1
    return pieces + [text[start:]]


def _count_piece(job):
    lang, text, pattern = job
    return lang, Counter(regex.findall(pattern, text))


def count_chunks(texts, pattern=PATTERN, alpha=ALPHA, max_bytes=None, processes=2, log=print):
    """{chunk: weighted count} over a corpus. texts: {lang: str or [str]} or [str] (one language).

    Per-language sampling: language l has n_l bytes; we want it to weigh like q_l ~ n_l**alpha. With max_bytes, each
    language is first cut (at a line end) to its share q_l * max_bytes, small languages keeping all they have; then
    every count of language l is multiplied by q_l / p_l (p_l = its share of the bytes used), scaled so the smallest
    weight is 1, and rounded. No text is duplicated or dropped beyond the max_bytes cut.
    """
    if isinstance(texts, str):
        texts = [texts]
    texts = dict(texts) if isinstance(texts, dict) else {"": list(texts)}
    texts = {lang: [t] if isinstance(t, str) else list(t) for lang, t in texts.items()}
    sizes = {lang: sum(len(t.encode("utf-8", "surrogatepass")) for t in ts) for lang, ts in texts.items()}
    sizes = {lang: n for lang, n in sizes.items() if n > 0}
    if not sizes:
        raise BPEError("the training corpus is empty (0 bytes of text); pass files or strings that contain text")
    share = lambda s: {lang: n ** alpha / sum(m ** alpha for m in s.values()) for lang, n in s.items()}  # noqa: E731
    target = share(sizes)
    if max_bytes is not None and sum(sizes.values()) > max_bytes:
        budget, left, room = {}, dict(sizes), max_bytes
        while left:                                   # water-filling: languages smaller than their share keep all
            q = share(left)
            small = [lang for lang in left if left[lang] <= q[lang] * room]
            if not small:
                budget.update({lang: int(q[lang] * room) for lang in left})
                break
            for lang in small:
                budget[lang] = left.pop(lang)
                room -= budget[lang]
        for lang, b in budget.items():
            data = "".join(texts[lang]).encode("utf-8", "surrogatepass")[:b].decode("utf-8", "ignore")
            texts[lang] = [data[:data.rfind("\n") + 1] or data]
        sizes = {lang: len(texts[lang][0].encode("utf-8", "surrogatepass")) for lang in sizes}
    total = sum(sizes.values())
    weight = {lang: target[lang] / (n / total) for lang, n in sizes.items()}
    weight = {lang: w / min(weight.values()) for lang, w in weight.items()}
    jobs = [(lang, piece, pattern) for lang in sizes for t in texts[lang] for piece in _split_at_lines(t, 1 << 20)]
    t0 = time.time()
    if processes > 1 and total > PARALLEL_BYTES:
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        with ctx.Pool(processes) as pool:
            results = pool.map(_count_piece, jobs, chunksize=1)
    else:
        results = map(_count_piece, jobs)
    per_lang = {}
    for lang, c in results:
        per_lang.setdefault(lang, Counter()).update(c)
    if all(abs(w - 1) < 1e-9 for w in weight.values()):
        counts = Counter()
        for c in per_lang.values():
            counts.update(c)
    else:
        counts = {}
        for lang in sorted(per_lang):
            w = weight[lang]
            for chunk, n in per_lang[lang].items():
                counts[chunk] = counts.get(chunk, 0) + n * w
        counts = {chunk: max(1, round(n)) for chunk, n in counts.items()}
    log(f"bpe: {total / 1e6:.2f} MB of text in {len(sizes)} language(s) -> {len(counts):,} distinct chunks "
        f"in {time.time() - t0:.1f}s; weights " + ", ".join(f"{lang or 'all'}={weight[lang]:.2f}" for lang in sizes))
    return counts


# ----------------------------------------------------------------------------- 2. training: the naive oracle

def merge(ids, pair, new_id):
    """Replace every non-overlapping occurrence of `pair` in `ids`, left to right (minbpe's merge)."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_naive(counts, n_tokens):
    """BPE by the definition: recount all pairs before every merge. Readable, O(corpus x merges); the test oracle.

    counts: {chunk: count}. Returns the vocabulary: a list of bytes, index = token id, n_tokens long.
    """
    words = [(list(chunk.encode("utf-8", "surrogatepass")), n) for chunk, n in counts.items()]
    vocab = [bytes([i]) for i in range(256)]
    while len(vocab) < n_tokens:
        stats = Counter()
        for ids, n in words:
            for pair in zip(ids, ids[1:]):
                stats[pair] += n
        if not stats:
            raise _too_small(len(vocab), n_tokens)
        a, b = min(stats, key=lambda p: (-stats[p], p))       # most frequent; ties -> smallest ids
        vocab.append(vocab[a] + vocab[b])     # always new bytes (see the note in train_fast)
        words = [(merge(ids, (a, b), len(vocab) - 1), n) for ids, n in words]
    return vocab


def _too_small(have, want):
    return BPEError(f"the corpus is too small: no pairs are left to merge after {have} tokens, but vocab_size needs "
                    f"{want} tokens before the special tokens; add text or lower vocab_size")


# ----------------------------------------------------------------------------- 3. training: the fast version

def _initial_index(raw, freqs):
    """Byte-pair counts and pair -> chunk index for all chunks at once, with numpy (the first merge's stats)."""
    buf = np.frombuffer(b"".join(raw), dtype=np.uint8).astype(np.int64)
    lens = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
    word = np.repeat(np.arange(len(raw), dtype=np.int32), lens)[:-1]
    code = ((buf[:-1] << 8) | buf[1:]).astype(np.uint16)          # pair (a, b) of bytes -> a*256 + b
    inside = np.ones(len(code), dtype=bool)
    inside[np.cumsum(lens)[:-1] - 1] = False                       # pairs that straddle two chunks don't exist
    code, word = code[inside], word[inside]
    if len(code) == 0:
        return {}, {}
    pair_count = np.bincount(code, weights=np.asarray(freqs, dtype=np.float64)[word], minlength=1 << 16)
    order = np.argsort(code, kind="stable")                        # group positions by pair, chunks in order
    code, word = code[order], word[order]
    first = np.ones(len(code), dtype=bool)
    first[1:] = (code[1:] != code[:-1]) | (word[1:] != word[:-1])  # one entry per (pair, chunk)
    code, word = code[first], word[first]
    starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
    where = {chr(c >> 8) + chr(c & 255): ws for c, ws in zip(code[starts].tolist(), np.split(word, starts[1:]))}
    counts = {p: int(pair_count[(ord(p[0]) << 8) | ord(p[1])]) for p in where}
    return counts, where


def train_fast(counts, n_tokens, verbose=True):
    """Same result as train_naive(counts, n_tokens), with incremental pair counts (see the top of the file).

    A merge always makes bytes that no token has yet: a run of tokens is segmented exactly as its bytes would be on
    their own (merges never cross its edges), and once token T exists its bytes alone end as [T], never as (A, B).
    """
    raw = [chunk.encode("utf-8", "surrogatepass") for chunk in counts]
    freqs = list(counts.values())
    words = [r.decode("latin-1") for r in raw]         # a chunk as a str of token ids: byte b -> chr(b)
    pair_counts, where = _initial_index(raw, freqs) if raw else ({}, {})
    del raw
    heap = [(-n, p) for p, n in pair_counts.items()]   # max-heap by count, ties -> smallest pair (a, b)
    heapq.heapify(heap)
    vocab = [bytes([i]) for i in range(256)]
    bar = tqdm(total=n_tokens - 256, desc="bpe merges", unit="merge", disable=not verbose, mininterval=0.5)
    while len(vocab) < n_tokens:
        if not heap:
            raise _too_small(len(vocab), n_tokens)
        neg, pair = heapq.heappop(heap)
        n = pair_counts.get(pair, 0)
        if n != -neg:                                   # stale entry: counts only fall, so push the true one back
            if n > 0:
                heapq.heappush(heap, (-n, pair))
            continue
        a, b = pair
        ba = b + a
        chunks = where.pop(pair)
        chunks = chunks.tolist() if isinstance(chunks, np.ndarray) else chunks
        z = chr(len(vocab))
        vocab.append(vocab[ord(a)] + vocab[ord(b)])
        bar.update()
        born = defaultdict(list)    # new pair -> chunk ids, once per occurrence (a repeat visit finds the pair gone)
        for w in chunks:
            word = words[w]
            if pair not in word:                        # stale index entry: an earlier merge took the pair away
                continue
            word = words[w] = word.replace(pair, z)
            f, last = freqs[w], len(word) - 1
            i = word.find(z)
            while i != -1:                              # each new token: fix the pairs with its neighbours
                if i > 0:
                    x = word[i - 1]
                    pair_counts[ba if x == z else x + a] -= f   # (x, a) is gone; in "abab" -> "zz" it was (b, a)
                    born[x + z].append(w)
                if i < last and word[i + 1] != z:
                    y = word[i + 1]
                    pair_counts[b + y] -= f                      # (b, y) is gone
                    born[z + y].append(w)
                i = word.find(z, i + 1)
        del pair_counts[pair]
        for p, ws in born.items():                      # a new pair's count: the sum over its occurrences
            pair_counts[p] = n = sum(map(freqs.__getitem__, ws))
            where[p] = ws
            heapq.heappush(heap, (-n, p))
    bar.close()
    return vocab


def check_sizes(vocab_size, max_bytes=None, special_tokens=SPECIAL_TOKENS):
    """Raise BPEError unless vocab_size leaves room for merges and max_bytes is None or a positive number of bytes."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= 256 + len(special_tokens):
        raise BPEError(f"vocab_size={vocab_size!r} leaves no room for merges: it must be > 256 bytes + "
                       f"{len(special_tokens)} special tokens = {256 + len(special_tokens)}; pass a larger vocab_size")
    whole = isinstance(max_bytes, int) or (isinstance(max_bytes, float) and max_bytes.is_integer())
    if max_bytes is not None and (isinstance(max_bytes, bool) or not whole or max_bytes <= 0):
        raise BPEError(f"max_bytes={max_bytes!r}: pass a positive number of bytes (e.g. 2e9), or leave it out to "
                       f"train on all the text")


def train(texts, vocab_size, *, special_tokens=SPECIAL_TOKENS, pattern=PATTERN, alpha=ALPHA, max_bytes=None,
          verbose=True, processes=2):
    """Train a byte-level BPE. texts: {lang: text} (per-language alpha sampling) or [text, ...].

    Returns the mergeable ranks {token bytes: id}: the 256 bytes, then one token per merge in the order learned.
    vocab_size counts the special tokens too; they are added by save()/load() at the last ids.
    """
    check_sizes(vocab_size, max_bytes, special_tokens)
    n_tokens = vocab_size - len(special_tokens)
    log = print if verbose else (lambda *a, **k: None)
    counts = count_chunks(texts, pattern, alpha, None if max_bytes is None else int(max_bytes), processes, log)
    t0 = time.time()
    vocab = train_fast(counts, n_tokens, verbose)
    log(f"bpe: {n_tokens - 256:,} merges in {time.time() - t0:.1f}s")
    return {b: i for i, b in enumerate(vocab)}


# ----------------------------------------------------------------------------- 4. encoding (the teaching version)

def encode_chunk(chunk, ranks):
    """Token ids of one pre-token's bytes: keep merging the adjacent pair whose merged bytes have the lowest rank
    (leftmost on ties) until no adjacent pair is in the vocab. Every single byte must be in ranks (byte fallback)."""
    parts = [bytes([b]) for b in chunk]
    while len(parts) > 1:
        rank, i = min((ranks.get(parts[i] + parts[i + 1], float("inf")), i) for i in range(len(parts) - 1))
        if rank == float("inf"):
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


def encode_reference(text, ranks, pattern=PATTERN):
    """Token ids of `text` (no special tokens), in plain Python. tiktoken does exactly this, in Rust."""
    ids = []
    for chunk in regex.findall(pattern, text):
        ids += encode_chunk(chunk.encode("utf-8", "surrogatepass"), ranks)
    return ids


def encode_bytes(enc, data):
    """Token ids for raw bytes (e.g. invalid UTF-8) with enc.decode_bytes(ids) == data exactly, unlike
    enc.encode(str), which replaces lone surrogates. Runs tiktoken's private `_encode_bytes` (Rust) when this tiktoken
    has it, else the public-API path encode_bytes_python; both give encode_ordinary's ids on valid UTF-8."""
    data = bytes(data)
    rust = getattr(enc, "_encode_bytes", None)
    return rust(data) if rust is not None else encode_bytes_python(enc, data)


_RANKS = weakref.WeakKeyDictionary()     # Encoding -> {token bytes: id}, built once from the public API
_ESCAPED = regex.compile(r"[\udc80-\udcff]+")   # the bytes that surrogateescape could not decode


def encode_bytes_python(enc, data):
    """encode_bytes with only tiktoken's public API: every run of valid UTF-8 through enc.encode_ordinary, every run
    of invalid bytes as one pre-token of its own, merged with the ranks (encode_chunk). Exact round trip; on valid
    UTF-8 the same ids as tiktoken. (tiktoken's private version BPEs everything after the first invalid byte as one
    piece, so the ids of mixed input may differ; both decode to `data`.)"""
    text, ids, at = bytes(data).decode("utf-8", "surrogateescape"), [], 0
    for m in _ESCAPED.finditer(text):
        ids += enc.encode_ordinary(text[at:m.start()])
        if enc not in _RANKS:
            _RANKS[enc] = {b: enc.encode_single_token(b) for b in enc.token_byte_values()}
        ids += encode_chunk(m.group().encode("utf-8", "surrogateescape"), _RANKS[enc])
        at = m.end()
    return ids + enc.encode_ordinary(text[at:])


# ----------------------------------------------------------------------------- 5. saving and loading

def _rank_file(ranks):
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise BPEError("ranks must be the ids 0..len(ranks)-1 exactly once each (as train() returns)")
    lines = (base64.b64encode(tok).decode("ascii") + f" {rank}\n" for tok, rank in sorted(ranks.items(),
                                                                                        key=lambda kv: kv[1]))
    return "".join(lines).encode("ascii")


def _hash(rank_file, pattern, specials):
    h = hashlib.sha256(rank_file)
    h.update(b"\0" + pattern.encode("utf-8") + b"\0" + json.dumps(specials, sort_keys=True).encode("utf-8"))
    return h.hexdigest()


class OutputDirError(BPEError):
    """An output path that must not be replaced: a file, or a non-empty directory the writer did not make."""


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.tiktoken")
REPORT_FILES = ("compression.png",)          # what --report writes into a tokenizer dir by default


def is_tokenizer_dir(path):
    """True if `path` holds a bpe.py tokenizer and nothing else: tokenizer.json (with bpe.py's keys) and
    tokenizer.tiktoken, maybe compression.png."""
    names = {p.name for p in Path(path).iterdir()}
    if not set(TOKENIZER_FILES) <= names <= set(TOKENIZER_FILES + REPORT_FILES):
        return False
    try:
        read_info(path)
    except BPEError:
        return False
    return True


def check_output_dir(out_dir, replaceable, overwrite=False, what="bpe.py tokenizer dir"):
    """Raise OutputDirError unless out_dir may be (re)written: it is absent, an empty dir, a dir that
    `replaceable(dir)` accepts, or any dir when overwrite=True. A file is always refused."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output {out} is a file, not a directory; pass a new directory path (or a {what} to "
                             f"replace)")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if names and not overwrite and not replaceable(out):
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} entries)" if len(names) > 4 else "")
        raise OutputDirError(f"output {out} is not empty and not a {what} (it holds {shown}); refusing to replace "
                             f"it: choose a new directory, or pass --overwrite=True to replace it (the old one is "
                             f"deleted only once the new one is complete)")


@contextlib.contextmanager
def output_dir(out_dir, replaceable=is_tokenizer_dir, overwrite=False, what="bpe.py tokenizer dir"):
    """Build a directory under a temporary name next to out_dir, then rename it into place:

        with output_dir(out) as tmp:
            (tmp / "tokenizer.json").write_text(...)

    out_dir is checked with check_output_dir before the block runs and again before the swap. When the block
    succeeds, the old out_dir (if any) is moved aside, the new one renamed in, and only then the old one deleted; when
    it raises, out_dir is untouched and the temporary dir removed. out_dir is always the old dir or the new one,
    never half written (absent only between two renames)."""
    out = Path(out_dir)
    check_output_dir(out, replaceable, overwrite, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = None
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        check_output_dir(out, replaceable, overwrite, what)   # it may have changed while the new one was built
        if out.exists():                                  # move the old one aside; put it back if the swap fails
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except OSError:
            if old:
                os.replace(old / out.name, out)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old:
            shutil.rmtree(old, ignore_errors=True)


def save(out_dir, ranks, special_tokens=SPECIAL_TOKENS, pattern=PATTERN, meta=None, *, overwrite=False):
    """Write out_dir/tokenizer.tiktoken (the ranks) and out_dir/tokenizer.json; returns the content hash.

    Atomic (output_dir): everything is written to a temporary sibling directory that is renamed into place, so
    out_dir is either the old tokenizer, the new one, or absent; never half written. The "may I replace it" check
    lives here, so every caller (the CLI, train.py's cache, export.py --import, tests) is safe: an existing out_dir
    is replaced only if it is empty or a bpe.py tokenizer dir (is_tokenizer_dir), else OutputDirError before anything
    is written; overwrite=True replaces any directory. meta: extra JSON (not hashed).
    """
    rank_file = _rank_file(ranks)
    specials = {tok: len(ranks) + i for i, tok in enumerate(special_tokens)}
    digest = _hash(rank_file, pattern, specials)
    info = {"pattern": pattern, "special_tokens": specials, "vocab_size": len(ranks) + len(specials),
            "hash": digest, "meta": meta or {}}
    with output_dir(out_dir, is_tokenizer_dir, overwrite) as tmp:
        (tmp / "tokenizer.tiktoken").write_bytes(rank_file)
        (tmp / "tokenizer.json").write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
    return digest


def read_info(tok_dir):
    """The parsed tokenizer.json of a bpe.py tokenizer dir: pattern, special_tokens {text: id}, vocab_size, hash,
    meta. BPEFileError if it is missing, BPEError if it is not bpe.py's."""
    path = Path(tok_dir) / "tokenizer.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BPEFileError(f"{path} not found: train a tokenizer there first "
                           f"(python bpe.py --input FILES... --vocab_size N --out {tok_dir})") from None
    except (OSError, ValueError) as e:
        raise BPEError(f"{path} is not readable JSON ({e}); delete {tok_dir} and train or copy it again") from None
    for key in ("pattern", "special_tokens", "vocab_size", "hash"):
        if not isinstance(info, dict) or key not in info:
            raise BPEError(f"{path} has no {key!r} key: not a bpe.py tokenizer; train it again with bpe.py")
    return info


def read_ranks(path):
    """Parse a tiktoken rank file (lines "base64-token rank") into {bytes: rank}."""
    try:
        return _parse_ranks(Path(path).read_bytes())
    except OSError as e:
        raise BPEFileError(f"cannot read rank file {path} ({e.strerror}); check the path") from None


def _parse_ranks(data):
    return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}


def load(tok_dir):
    """The tokenizer in tok_dir as a tiktoken.Encoding, after checking its content hash."""
    info = read_info(tok_dir)
    path = Path(tok_dir) / "tokenizer.tiktoken"
    try:
        rank_file = path.read_bytes()
    except OSError as e:
        raise BPEFileError(f"cannot read {path} ({e.strerror}): the tokenizer dir is incomplete; "
                           f"copy the whole directory again or re-train it") from None
    if _hash(rank_file, info["pattern"], info["special_tokens"]) != info["hash"]:
        raise BPEError(f"{path} does not match the hash in {Path(tok_dir) / 'tokenizer.json'}: the files were edited "
                       f"or come from two different tokenizers; copy the whole directory again or re-train it")
    ranks = _parse_ranks(rank_file)
    if info["vocab_size"] != len(ranks) + len(info["special_tokens"]):
        raise BPEError(f"'vocab_size' in {Path(tok_dir) / 'tokenizer.json'} is {info['vocab_size']}, but the "
                       f"files hold {len(ranks) + len(info['special_tokens'])} tokens; re-train or re-copy the tokenizer")
    return tiktoken.Encoding(name=Path(tok_dir).name, pat_str=info["pattern"], mergeable_ranks=ranks,
                             special_tokens=info["special_tokens"], explicit_n_vocab=info["vocab_size"])


def tokenizer_hash(tok_dir):
    """The content hash stored in tok_dir/tokenizer.json (cheap: the files are not re-hashed)."""
    return read_info(tok_dir)["hash"]


def read_texts(paths):
    """{lang: [text, ...]} from text files; the language is the file stem (data/sample/mono/th.txt -> "th")."""
    texts = {}
    for p in map(Path, paths):
        try:
            text = p.read_text(encoding="utf-8", errors="replace")   # bad UTF-8 -> U+FFFD, like data.py
        except OSError as e:
            raise BPEFileError(f"cannot read training file {p} ({e.strerror}); check the path") from None
        texts.setdefault(p.stem, []).append(text)
    return texts


def check_input_files(paths):
    """Raise BPEFileError unless every path is a readable, non-empty file (the CLI checks this before any work)."""
    if not paths:
        raise BPEError("no training files given; pass --input FILES (e.g. data/sample/mono/*.txt)")
    for p in map(Path, paths):
        if not p.is_file():
            raise BPEFileError(f"training file {p} does not exist (or is not a file); check the path")
        if p.stat().st_size == 0:
            raise BPEFileError(f"training file {p} is empty; remove it from --input or give it text")


def train_from_files(paths, vocab_size, out_dir, *, overwrite=False, **kw):
    """Read text files (lang = file stem), train, save to out_dir, and return the loaded tiktoken.Encoding.

    The sizes and out_dir are checked before the files are read (training a 256K vocab takes minutes to hours);
    out_dir follows save()'s rule (overwrite=True replaces a directory that is not a tokenizer dir)."""
    if not paths:
        raise BPEError("no training files given; pass text files (e.g. data/sample/mono/*.txt)")
    check_sizes(vocab_size, kw.get("max_bytes"), kw.get("special_tokens", SPECIAL_TOKENS))
    check_output_dir(out_dir, is_tokenizer_dir, overwrite)
    texts = read_texts(paths)
    t0 = time.time()
    ranks = train(texts, vocab_size, **kw)
    meta = {"files": [str(p) for p in paths], "seconds": round(time.time() - t0, 2),
            "alpha": kw.get("alpha", ALPHA), "max_bytes": kw.get("max_bytes")}
    save(out_dir, ranks, kw.get("special_tokens", SPECIAL_TOKENS), kw.get("pattern", PATTERN), meta=meta,
         overwrite=overwrite)
    return load(out_dir)


# ----------------------------------------------------------------------------- 6. the compression report

REFERENCE_PATTERNS = {   # copied from tiktoken_ext/openai_public.py (MIT); the rank files come from disk
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
                   r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
    "o200k_base": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""", r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""", r"""\s*[\r\n]+""", r"""\s+(?!\S)""", r"""\s+"""]),
}
REFERENCE_DIR = REPO.parent / "shared" / "data" / "tiktoken"


def reference_encoding(name, path):
    """cl100k_base or o200k_base from a local rank file (no download)."""
    ranks = read_ranks(path)
    return tiktoken.Encoding(name=name, pat_str=REFERENCE_PATTERNS[name], mergeable_ranks=ranks, special_tokens={})


def bytes_per_token(encodings, texts):
    """{lang: {name: UTF-8 bytes / tokens}} for each {name: Encoding} on each {lang: text}."""
    return {lang: {name: len(t.encode("utf-8")) / max(1, len(enc.encode_ordinary(t)))
                   for name, enc in encodings.items()} for lang, t in texts.items()}


def report(tok_dir, heldout=None, references=None, png=None):
    """Print bytes/token per language (higher = better compression) for our tokenizer vs the references; plot it."""
    encs = {f"ours-{Path(tok_dir).name}": load(tok_dir)}
    png = Path(png or Path(tok_dir) / "compression.png")
    if png.is_dir() or not png.parent.is_dir():
        raise BPEFileError(f"cannot write the chart to {png}: " + ("it is a directory" if png.is_dir() else
                           f"{png.parent} does not exist") + "; pass --png PATH.png in an existing directory")
    heldout = heldout or sorted(str(p) for p in (REPO / "data" / "sample" / "mono").glob("*.txt"))
    if references is None:
        references = {n: REFERENCE_DIR / f"{n}.tiktoken" for n in REFERENCE_PATTERNS
                      if (REFERENCE_DIR / f"{n}.tiktoken").exists()}
    for name, path in references.items():
        if path and str(path).lower() != "none":
            encs[name] = reference_encoding(name, path)
    texts = {lang: "".join(ts) for lang, ts in read_texts(heldout).items()}
    table = bytes_per_token(encs, texts)
    names = list(encs)
    print(f"bytes per token on {len(heldout)} file(s), e.g. {heldout[0]} (higher is better)")
    print(f"{'lang':6}" + "".join(f"{n:>22}" for n in names))
    for lang, row in table.items():
        print(f"{lang:6}" + "".join(f"{row[n]:22.2f}" for n in names))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(8, len(table) * 0.7), 4))
    width = 0.8 / len(names)
    for k, n in enumerate(names):
        ax.bar(np.arange(len(table)) + k * width, [row[n] for row in table.values()], width, label=n)
    ax.set_xticks(np.arange(len(table)) + 0.4 - width / 2, list(table))
    ax.set(ylabel="UTF-8 bytes per token (higher = better)", title="tokenizer compression per language")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = png.with_name(f".{png.stem}.tmp-{os.getpid()}{png.suffix}")     # written whole, then renamed
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    print(f"wrote {png}")
    return table


# ----------------------------------------------------------------------------- 7. command line

@dataclasses.dataclass
class BPEConfig:
    input: str = ""                     # training text files, comma-separated (or several after --input); language = file stem
    vocab_size: int = 32000             # total vocab incl. the special tokens (PolyLM: 256000)
    out: str = ""                       # tokenizer dir to write (tokenizer.json + tokenizer.tiktoken)
    overwrite: bool = False             # replace --out even if it is not a bpe.py tokenizer dir (deleted only once the new one is complete)
    alpha: float = ALPHA                # per-language sampling exponent (1 = use the corpus as it is)
    max_bytes: int | None = None        # use at most this many bytes of text (None = all of it)
    processes: int = 2                  # worker processes that pre-tokenize corpora over 4 MB (1 = none)
    report: str = ""                    # instead of training: print bytes/token per language for this tokenizer dir
    heldout: str = ""                   # report text files, comma-separated ('' = data/sample/mono/*.txt)
    cl100k: str = str(REFERENCE_DIR / "cl100k_base.tiktoken")   # cl100k_base rank file for --report (none = leave it out)
    o200k: str = str(REFERENCE_DIR / "o200k_base.tiktoken")     # o200k_base rank file for --report (none = leave it out)
    png: str = ""                       # report bar chart path ('' = DIR/compression.png)


LIST_KEYS = ("input", "heldout")        # keys that take several files


def _join_lists(argv):
    """`--input a b c` (a shell glob) -> `--input=a,b,c`, for each key of LIST_KEYS."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and arg[2:].replace("-", "_") in LIST_KEYS:
            j = i + 1
            while j < len(argv) and not argv[j].startswith("--"):
                j += 1
            out.append(f"{arg}={','.join(argv[i + 1:j])}")
            i = j
        else:
            out.append(arg)
            i += 1
    return out


def _split(files):
    return [f for f in files.split(",") if f]


def run(cfg: BPEConfig):
    if cfg.report:
        refs = {}
        for name, key in (("cl100k_base", "cl100k"), ("o200k_base", "o200k")):
            path = getattr(cfg, key)
            if path.lower() == "none":
                continue
            if path == getattr(BPEConfig, key) and not Path(path).exists():   # the default may be absent (CI)
                print(f"note: no {path}, so no {name} column (pass --{key}=PATH)")
                continue
            refs[name] = path
        return report(cfg.report, _split(cfg.heldout) or None, refs, cfg.png or None)
    if not (cfg.input and cfg.out):
        raise BPEError("pass --input FILES --out DIR to train a tokenizer, or --report DIR to measure one "
                       "(python bpe.py --help lists every key)")
    files = _split(cfg.input)
    check_input_files(files)                                  # everything is checked before any work
    check_sizes(cfg.vocab_size, cfg.max_bytes)
    check_output_dir(cfg.out, is_tokenizer_dir, cfg.overwrite)
    max_bytes = None if cfg.max_bytes is None else int(cfg.max_bytes)          # 2e9 -> 2000000000
    enc = train_from_files(files, cfg.vocab_size, cfg.out, alpha=cfg.alpha, max_bytes=max_bytes,
                           processes=cfg.processes, overwrite=cfg.overwrite)
    print(f"wrote {cfg.out}: {enc.n_vocab:,} tokens, hash {tokenizer_hash(cfg.out)[:12]}")
    return enc


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_cli(run, BPEConfig, _join_lists(argv), prog="bpe.py")


if __name__ == "__main__":
    main()
