"""Document filters of PolyLM's data pipeline (PolyLM paper §3, "Pre-training data": after language identification,
rule-based filtering, a model-based quality filter and MinHash-LSH de-duplication, about 28% of the text removed).

Three independent parts, each a pure function of the text (data.py runs them in order, streaming, per language):

1. Rules (Gopher, Rae et al. 2021 App. A; C4, Raffel et al. 2020 §2.2) -> `apply_rules(text, lang, cfg)`.
   Length (words; characters for zh/ja/th, which are written without spaces), mean word length per script,
   symbol/digit/letter ratios, bullet and ellipsis lines, repeated lines/paragraphs, repeated n-grams, and
   boilerplate lines (cookie banners, "all rights reserved", ...) which are cut out (C4) before the other checks.
   Every threshold is a field of `RuleConfig`, with the paper's value in its comment where ours differs.
2. Quality (CCNet, Wenzek et al. 2020: a language model trained on high-quality text; keep documents it finds
   likely) -> `QualityModel`. Per language a character 4-gram model with Dirichlet-smoothed interpolation,
   trained on a reference corpus (default: the bundled, curated data/sample/mono); a document's score is its
   bits per character; the threshold is a quantile (default 99.5%) of the scores of held-out reference lines.
3. De-duplication (Broder 1997; Leskovec et al. "Mining of Massive Datasets" ch. 3) -> `exact_key`,
   `minhash_signatures`, `band_keys`, `near_duplicates`. Exact duplicates first (md5 of the normalised text),
   then MinHash over shingles (5 words, or 5 characters for zh/ja/th), LSH with `bands` x `rows` and a check of
   the estimated Jaccard similarity of every candidate pair against `threshold` (0.8). Of each cluster of
   near-duplicates the first document (in input order) is kept.
"""
import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np
import regex

from common import LANGS, SPACELESS
from lid import HashIndex, codepoints, content_hash_frac, extend_hashes


# ----------------------------------------------------------------------------- 1. rules


@dataclasses.dataclass
class RuleConfig:
    min_words: int = 2                  # fewer words: too short (Gopher: 50 for web pages; our sample is 1 sentence/line)
    max_words: int = 100_000            # more words: too long (Gopher)
    min_chars: int = 4                  # zh/ja/th: fewer non-space characters is too short
    max_chars: int = 300_000            # zh/ja/th: more is too long
    mean_word_min_words: int = 10       # mean word length is checked from this many words (noisy on short lines)
    max_symbol_ratio: float = 0.1       # ('#' + '...' + '…') per word (Gopher)
    max_digit_frac: float = 0.4         # digits per non-space character
    min_letter_frac: float = 0.45       # letters (and marks) per non-space character (Gopher: 80% of words alphabetic)
    max_bullet_lines: float = 0.9       # share of lines starting with a bullet (Gopher)
    max_ellipsis_lines: float = 0.3     # share of lines ending in an ellipsis (Gopher)
    max_dup_line_frac: float = 0.3      # share of lines that repeat an earlier line (Gopher); also paragraphs
    max_dup_line_chars: float = 0.2     # share of characters in repeated lines (Gopher); also paragraphs
    max_top_ngram: tuple = ((2, 0.2), (3, 0.18), (4, 0.16))          # most frequent n-gram's share of characters
    max_dup_ngram: tuple = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))  # repeated n-grams
    repetition_min_words: int = 50      # repeated n-grams are checked from this many words (Gopher's minimum length)
    max_boilerplate_lines: float = 0.5  # more boilerplate lines than this share: drop the document, else cut them


# mean word length bounds per language (Gopher: 3..10 for English); Vietnamese writes one syllable per "word", Korean
# eojeol are 2-4 syllables, agglutinative languages have long words. zh/ja/th are not checked (no spaces).
MEAN_WORD_LEN = {"default": (3.0, 10.0), "vi": (2.0, 6.0), "ko": (1.5, 6.0), "ar": (2.5, 10.0), "he": (2.5, 10.0),
                 "de": (3.0, 12.0), "tr": (3.0, 12.0), "ru": (3.0, 12.0), "pl": (3.0, 12.0), "id": (3.0, 12.0),
                 "nl": (3.0, 12.0)}
# C4-style boilerplate: a line containing one of these (lower-cased) is cut out: JavaScript warnings, cookie and
# legal banners, copyright lines, in the 18 languages. Plain substrings in one stdlib `re` alternation (fast).
BOILERPLATE_PHRASES = [
    "javascript", "cookie policy", "use cookies", "uses cookies", "use of cookies", "accept cookies",
    "cookies akzeptieren", "aceptar cookies", "accepter les cookies", "accetta i cookie", "aceitar cookies",
    "cookies accepteren", "terms of use", "terms of service", "privacy policy", "all rights reserved", "©",
    "click here", "datenschutzerklärung", "impressum", "alle rechte vorbehalten", "política de privacidad",
    "todos los derechos reservados", "tous droits réservés", "mentions légales", "tutti i diritti riservati",
    "todos os direitos reservados", "alle rechten voorbehouden", "wszelkie prawa zastrzeżone",
    "tüm hakları saklıdır", "все права защищены", "hak cipta dilindungi", "bảo lưu mọi quyền", "版权所有",
    "隐私政策", "免责声明", "無断転載", "利用規約", "プライバシーポリシー", "무단 전재", "개인정보처리방침",
    "สงวนลิขสิทธิ์", "כל הזכויות שמורות", "جميع الحقوق محفوظة"]
BOILERPLATE = re.compile("|".join(map(re.escape, BOILERPLATE_PHRASES)))
_WORD = regex.compile(r"[\p{L}\p{M}\p{N}]+(?:['’\-][\p{L}\p{M}\p{N}]+)*")
_BULLET = regex.compile(r"^\s*(?:[•●▪‣◦·\-\*]|\d+[.)])\s")
_PARA = regex.compile(r"\n\s*\n")
_SPACES, _DIGIT, _LETTER = regex.compile(r"\s+"), regex.compile(r"\d"), regex.compile(r"[\p{L}\p{M}]")


def _units(text, lang):
    """Words (spaces between words) or characters (zh/ja/th): what length and repetition are counted in."""
    if lang in SPACELESS:
        return [c for c in text if not c.isspace()]
    return _WORD.findall(text)


def _dup_fracs(items):
    """(share of items that repeat an earlier one, share of their characters)."""
    seen, dup, dup_chars = set(), 0, 0
    for x in items:
        if x in seen:
            dup += 1
            dup_chars += len(x)
        seen.add(x)
    total = sum(len(x) for x in items)
    return dup / max(len(items), 1), dup_chars / max(total, 1)


def _ngram_repetition(units, sizes_top, sizes_dup, sep_len):
    """Gopher's repetition measures over units (words or characters), all n at once with numpy:
    {("top", n): characters covered by the most frequent n-gram, if it occurs twice or more, / all characters,
     ("dup", n): characters of units inside an n-gram that occurred earlier in the document / all characters}."""
    vocab = {}
    ids = np.array([vocab.setdefault(u, len(vocab)) for u in units], dtype=np.uint64)
    lens = np.fromiter(map(len, units), dtype=np.int64, count=len(units))
    total = max(int(lens.sum()), 1)
    out, h = {}, np.zeros(len(ids), dtype=np.uint64)
    for n in range(1, max(sizes_top + sizes_dup) + 1):
        h = extend_hashes(h, ids, n)                                   # hash of units i .. i+n-1
        if n not in sizes_top and n not in sizes_dup or len(h) == 0:
            continue
        _, first, inv, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
        if n in sizes_top:
            top = int(counts.argmax())
            i = int(first[top])
            out[("top", n)] = 0.0 if counts[top] < 2 else \
                counts[top] * (int(lens[i:i + n].sum()) + (n - 1) * sep_len) / total
        if n in sizes_dup:
            repeat = np.flatnonzero(first[inv] != np.arange(len(h)))   # starts of n-grams seen before
            cover = np.zeros(len(ids) + 1, dtype=np.int64)
            np.add.at(cover, repeat, 1)
            np.add.at(cover, repeat + n, -1)
            out[("dup", n)] = float(lens[np.cumsum(cover)[:-1] > 0].sum() / total)
    return out


def apply_rules(text, lang, cfg=RuleConfig()):
    """(text with boilerplate lines cut out, None) if the document passes, else (None, name of the first failed rule)."""
    lines = text.split("\n")
    lower = text.lower()
    boiler = [bool(BOILERPLATE.search(x)) for x in lower.split("\n")] if BOILERPLATE.search(lower) else []
    if any(boiler):
        if sum(boiler) > cfg.max_boilerplate_lines * len(lines):
            return None, "boilerplate"
        lines = [x for x, b in zip(lines, boiler) if not b]
        text = "\n".join(lines)
    if "lorem ipsum" in lower:                                   # C4: placeholder pages
        return None, "boilerplate"
    units = _units(text, lang)
    if lang in SPACELESS:
        if not cfg.min_chars <= len(units) <= cfg.max_chars:
            return None, "length"
    else:
        if not cfg.min_words <= len(units) <= cfg.max_words:
            return None, "length"
        if len(units) >= cfg.mean_word_min_words:
            lo, hi = MEAN_WORD_LEN.get(lang, MEAN_WORD_LEN["default"])
            if not lo <= sum(map(len, units)) / len(units) <= hi:
                return None, "mean_word_length"
        if (text.count("#") + text.count("...") + text.count("…")) > cfg.max_symbol_ratio * len(units):
            return None, "symbol_ratio"
    chars = _SPACES.sub("", text)
    if len(_DIGIT.findall(chars)) > cfg.max_digit_frac * len(chars):
        return None, "digit_ratio"
    if len(_LETTER.findall(chars)) < cfg.min_letter_frac * len(chars):
        return None, "letter_ratio"
    nonempty = [x.strip() for x in lines if x.strip()]
    if len(nonempty) > 1:
        if sum(bool(_BULLET.match(x)) for x in nonempty) > cfg.max_bullet_lines * len(nonempty):
            return None, "bullet_lines"
        if sum(x.endswith(("...", "…")) for x in nonempty) > cfg.max_ellipsis_lines * len(nonempty):
            return None, "ellipsis_lines"
        paras = [p.strip() for p in _PARA.split(text) if p.strip()]
        for items in (nonempty, paras):
            frac, char_frac = _dup_fracs(items)
            if frac > cfg.max_dup_line_frac or char_frac > cfg.max_dup_line_chars:
                return None, "repeated_lines"
    # repeated n-grams: over words, or over characters with n doubled for zh/ja/th (a word is ~2 characters there)
    k = 2 if lang in SPACELESS else 1
    if len(units) >= k * cfg.repetition_min_words:
        rep = _ngram_repetition(units, [k * n for n, _ in cfg.max_top_ngram], [k * n for n, _ in cfg.max_dup_ngram],
                                0 if lang in SPACELESS else 1)
        if any(rep[("top", k * n)] > limit for n, limit in cfg.max_top_ngram) or \
                any(rep[("dup", k * n)] > limit for n, limit in cfg.max_dup_ngram):
            return None, "repeated_ngrams"
    return text, None


# ----------------------------------------------------------------------------- 2. quality (char n-gram LM)

_BOS = "\x02" * 3                   # start-of-document padding: every real character has a full 3-character context


def _quality_normalise(text, max_chars=5000):
    """Lower-case, digits -> 0, runs of white space -> one space; the first max_chars characters."""
    return _BOS + _SPACES.sub(" ", _DIGIT.sub("0", text[:max_chars].lower())).strip()


class QualityModel:
    """Per-language character 4-gram language model; `score(texts, langs)` = bits per character (lower = likelier).

    p_n(c | h) = (C(h c) + beta * p_{n-1}(c | h[1:])) / (C(h) + beta)   for a context h of n-1 characters,
    p_1(c)     = (C(c) + 1) / (N + V)                                      (add-one over a V-letter alphabet),
    i.e. interpolation with a Dirichlet prior (MacKay & Peto 1995): a context seen often trusts its own counts.
    Counts are exact: 64-bit n-gram hashes salted by language, looked up in a lid.HashIndex.
    """
    ORDER, BETA, V = 4, 2.0, 1 << 16

    def __init__(self, keys, counts, totals, thresholds):
        self.keys, self.counts = keys, counts                          # salted n-gram hashes -> counts
        self.totals, self.thresholds = totals, thresholds              # {lang: characters}, {lang: max bits/char}
        self._index = HashIndex(keys)

    @staticmethod
    def _hashes(texts, lang):
        """(code points, document of each position, [hashes of the n-grams starting at each position, n=1..ORDER])."""
        cp, seps_before = codepoints([_quality_normalise(t) for t in texts])
        salt = np.uint64(int.from_bytes(hashlib.md5(lang.encode()).digest()[:8], "little"))
        hs, h = [], np.zeros(len(cp), dtype=np.uint64)
        for n in range(1, QualityModel.ORDER + 1):
            h = extend_hashes(h, cp, n)
            hs.append(h ^ salt)
        return cp, seps_before, hs

    @classmethod
    def train(cls, lines_by_lang, heldout_by_lang=None, quantile=0.995):
        """Count every n-gram inside a document (BOS padding included: contexts need it); thresholds from held-out."""
        keys, counts, totals = [], [], {}
        for lang, lines in lines_by_lang.items():
            cp, seps_before, hs = cls._hashes(lines, lang)
            totals[lang] = int((cp > 2).sum())
            for n, h in enumerate(hs, 1):
                start = np.arange(len(h))
                inside = seps_before[start + n] == seps_before[start]     # no separator inside the n-gram
                u, c = np.unique(h[inside], return_counts=True)
                keys.append(u)
                counts.append(c)
        u, inv = np.unique(np.concatenate(keys), return_inverse=True)
        model = cls(u, np.bincount(inv, weights=np.concatenate(counts)).astype(np.int64), totals, {})
        for lang, lines in (heldout_by_lang or {}).items():
            s = model.score(lines, [lang] * len(lines))
            s = s[np.isfinite(s)]
            model.thresholds[lang] = float(np.quantile(s, quantile)) if len(s) else float("inf")
        return model

    def _count(self, h):
        row = self._index.lookup(h)
        return np.where(row >= 0, self.counts[np.maximum(row, 0)], 0).astype(np.float64)

    def score(self, texts, langs):
        """Bits per character of each text under its language's model (nan where the language has no model)."""
        out = np.full(len(texts), np.nan)
        langs = np.asarray(langs)
        for lang in sorted(set(langs.tolist()) & set(self.totals)):
            idx = np.flatnonzero(langs == lang)
            cp, seps_before, hs = self._hashes([texts[i] for i in idx], lang)
            e = np.flatnonzero(cp > 2)                                 # predicted characters (not BOS, not separator)
            p = (self._count(hs[0][e]) + 1) / (self.totals[lang] + self.V)
            for n in range(2, self.ORDER + 1):                         # n-gram = context (n-1 chars) + e
                s = e - n + 1
                p = (self._count(hs[n - 1][s]) + self.BETA * p) / (self._count(hs[n - 2][s]) + self.BETA)
            doc = seps_before[e]
            bits = np.bincount(doc, weights=-np.log2(p), minlength=len(idx))
            nchar = np.bincount(doc, minlength=len(idx))
            out[idx] = np.where(nchar > 0, bits / np.maximum(nchar, 1), np.inf)
        return out

    def keep(self, texts, langs):
        """(keep mask, scores): a document is kept when its bits/char <= its language's threshold (no model: kept)."""
        s = self.score(texts, langs)
        thr = np.array([self.thresholds.get(lang, np.inf) for lang in langs])
        return ~(s > thr), s

    def save(self, path):
        langs = list(self.totals)
        np.savez(path, keys=self.keys, counts=self.counts, langs=np.array(langs),
                 totals=np.array([self.totals[x] for x in langs]),
                 thresholds=np.array([self.thresholds.get(x, np.inf) for x in langs]))

    @classmethod
    def load(cls, path):
        z = np.load(path)
        langs = z["langs"].tolist()
        return cls(z["keys"], z["counts"], dict(zip(langs, z["totals"].tolist())),
                   dict(zip(langs, z["thresholds"].tolist())))


def read_reference(mono_dir, holdout=0.1):
    """({lang: training lines}, {lang: held-out lines}) of mono_dir/<lang>.txt, split by content hash."""
    train, held = {}, {}
    for lang in LANGS:
        p = Path(mono_dir) / f"{lang}.txt"
        if p.exists():
            lines = [x.strip() for x in p.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
            held[lang] = [x for x in lines if content_hash_frac(x) < holdout]
            train[lang] = [x for x in lines if content_hash_frac(x) >= holdout]
    return train, held


# ----------------------------------------------------------------------------- 3. de-duplication

_MERSENNE = np.uint64((1 << 61) - 1)
_DEDUP_NORM = regex.compile(r"[^\p{L}\p{M}\p{N}]+")


def dedup_normalise(text):
    """Lower-case words separated by one space: punctuation, case and spacing changes are not differences."""
    return " " + _DEDUP_NORM.sub(" ", text.lower()).strip() + " "


def exact_key(text):
    """64-bit key of the normalised text: equal keys = exact duplicates (up to case, punctuation and spacing)."""
    return int.from_bytes(hashlib.md5(dedup_normalise(text).encode("utf-8", "surrogatepass")).digest()[:8], "little")


def shingle_hashes(texts, langs, word_n=5, char_n=5):
    """(32-bit shingle hashes, text index of each): every run of n consecutive words (n characters for zh/ja/th);
    a text with fewer units is one shingle. Substring hashes come from prefix sums, all texts at once:
    hash(cp[a:b]) = K^(b-1) * (S[b] - S[a]),  S[i] = sum_{j<i} cp[j] * K^-j   (mod 2^64, K odd so invertible)."""
    norm = [dedup_normalise(t) for t in texts]
    spaceless = np.array([lang in SPACELESS for lang in langs], dtype=bool)
    cp, seps_before = codepoints(norm)
    doc = seps_before[:len(cp)]
    unit = (cp != 32) & (cp != 1)                                      # letters: words are runs of them
    word_start = unit & ~np.r_[False, unit[:-1]]
    word_end = unit & ~np.r_[unit[1:], False]
    each_char = spaceless[doc] & unit                                  # zh/ja/th: every character is a unit
    starts = np.flatnonzero(word_start | each_char)
    ends = np.flatnonzero(word_end | each_char) + 1
    udoc = doc[starts]
    n = np.where(spaceless[udoc], char_n, word_n)
    last = np.arange(len(starts)) + n - 1                              # shingle = units i .. i+n-1 of one text
    ok = last < len(starts)
    ok[ok] &= udoc[last[ok]] == udoc[ok]
    counts = np.bincount(udoc, minlength=len(texts))
    first_of_doc = np.r_[True, udoc[1:] != udoc[:-1]] if len(udoc) else np.zeros(0, bool)
    short = first_of_doc & (counts[udoc] < n)                          # shorter than one shingle: the whole text
    a = starts[ok | short]
    last_unit = np.where(short, np.cumsum(counts)[udoc] - 1, last)[ok | short]
    b = ends[last_unit]
    K = np.uint64(0x9E3779B97F4A7C15)
    K_inv = np.uint64(pow(int(K), -1, 1 << 64))
    with np.errstate(over="ignore"):
        pw = np.cumprod(np.r_[np.uint64(1), np.full(len(cp), K, dtype=np.uint64)])[:len(cp) + 1]
        ipw = np.cumprod(np.r_[np.uint64(1), np.full(len(cp), K_inv, dtype=np.uint64)])[:len(cp)]
        S = np.r_[np.uint64(0), np.cumsum(cp * ipw, dtype=np.uint64)]
        h = pw[b - 1] * (S[b] - S[a])
        h = (h * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(32)       # mix, keep 32 bits
    return h, udoc[np.flatnonzero(ok | short)]


def minhash_signatures(texts, langs, num_perm=128, seed=0, word_n=5, char_n=5):
    """(D, num_perm) uint32 MinHash signatures: min over shingles of (a*x + b) mod (2^61 - 1) per permutation.
    A text without letters gets all-ones (it is never a near-duplicate of anything)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 1 << 32, num_perm, dtype=np.uint64)
    b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64)
    sig = np.full((len(texts), num_perm), 0xFFFFFFFF, dtype=np.uint32)
    h, doc = shingle_hashes(texts, langs, word_n, char_n)
    step = max(1, (1 << 22) // num_perm)                               # bound the (shingles x perms) matrix: 32 MB
    for i in range(0, len(h), step):
        hh, dd = h[i:i + step], doc[i:i + step]
        v = ((hh[:, None] * a[None, :] + b[None, :]) % _MERSENNE).astype(np.uint32)   # a*x+b < 2^64: no overflow
        first = np.flatnonzero(np.r_[True, dd[1:] != dd[:-1]])
        d = dd[first]
        sig[d] = np.minimum(sig[d], np.minimum.reduceat(v, first, axis=0))
    return sig


def band_keys(sig, bands):
    """(D, bands) uint64: one hash per band of rows = num_perm / bands signature values. Equal keys = candidates."""
    D, P = sig.shape
    r = P // bands
    if r * bands != P:
        raise ValueError(f"num_perm={P} is not a multiple of bands={bands}")
    x = sig[:, :r * bands].reshape(D, bands, r).astype(np.uint64)
    k = np.zeros((D, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(r):
            k = k * np.uint64(0x100000001B3) + x[:, :, j] + np.uint64(1)
    return k


def band_pairs(keys, get_sig, threshold=0.8, live=None):
    """Near-duplicate pairs (i, j), i < j, found by ONE band: documents whose key in this band is equal are candidates;
    each is paired with the first (lowest index) of its bucket and kept when the estimated Jaccard similarity of the
    two signatures is >= threshold. keys: (N,) uint64 band keys; get_sig(idx) -> their signatures (may stay on disk);
    live: documents to consider (e.g. not the texts without letters). Bands are independent, so they can run as
    separate jobs (pipeline.py's dedup phase: one job per band); memory O(N) for the sort."""
    idx = np.arange(len(keys)) if live is None else np.flatnonzero(live)
    order = idx[np.argsort(keys[idx], kind="stable")]                  # stable: lowest index first in each group
    ks = keys[order]
    same = np.r_[False, ks[1:] == ks[:-1]]
    if not same.any():
        return np.zeros((0, 2), dtype=np.int64)
    group_first = order[np.maximum.accumulate(np.where(~same, np.arange(len(order)), 0))]
    a, b = group_first[same], order[same]                              # candidate pairs (first of group, other)
    ok = (get_sig(a) == get_sig(b)).mean(axis=1) >= threshold
    return np.stack([a[ok], b[ok]], axis=1).astype(np.int64)


def components(n, pairs):
    """Root of every document's cluster when pairs (k, 2) are edges: the lowest index of its connected component.
    Vectorised union-find: hook every edge's larger root onto the smaller, then jump pointers, until stable (a few
    rounds; O(edges) numpy work per round, no Python loop over pairs)."""
    root = np.arange(n)
    if len(pairs) == 0:
        return root
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        ra, rb = root[a], root[b]
        lo, hi = np.minimum(ra, rb), np.maximum(ra, rb)
        if (lo == hi).all():
            return root
        np.minimum.at(root, hi, lo)                                    # hook: the larger root points to the smaller
        while True:                                                    # pointer jumping: root[i] = root[root[i]]
            nxt = root[root]
            if (nxt == root).all():
                break
            root = nxt


def near_duplicates(keys, get_sig, threshold=0.8, skip=None):
    """Boolean mask of documents to drop: in each cluster of near-duplicates all but the first (lowest index).

    keys: (N, bands) band keys (or a list of such arrays, concatenated in order); get_sig(idx) -> signatures of those
    documents; skip: documents not to consider (exact duplicates already dropped, texts without letters).
    The one-process form of what pipeline.py runs band by band across jobs: band_pairs per band, then components."""
    parts = keys if isinstance(keys, list) else [keys]
    N = sum(len(k) for k in parts)
    bands = parts[0].shape[1] if N else 0
    live = None if skip is None else ~np.asarray(skip, dtype=bool)
    pairs = [band_pairs(np.concatenate([p[:, band] for p in parts]), get_sig, threshold, live) for band in range(bands)]
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    return components(N, pairs) != np.arange(N)