"""Language identification for PolyLM's 18 languages, able to say "none of them" (PolyLM paper §3, "Pre-training
data": every document gets a language label before the per-language filters; PolyLM kept web text in 18 languages
and used an off-the-shelf fastText model).

Ours is a small, readable model with numpy as its only dependency: multinomial naive Bayes over character n-grams,
the classic recipe of langid.py (Lui & Baldwin 2012) and Cavnar & Trenkle (1994), with classes for the 18 languages
AND for 57 languages outside them that share their scripts, so that Catalan, Ukrainian or Persian text is not
labelled es, ru or ar just because nothing closer was on offer.

  1. normalise: lower-case; every run of non-letters (digits, punctuation, symbols, spaces) becomes one space, so
     "Hello, World 42!" -> " hello world ". Combining marks are kept (Thai vowels, Arabic harakat, Vietnamese tones).
  2. features: every character 1..5-gram of the normalised text, word-boundary spaces included (" th", "he ").
     Each n-gram is hashed to 64 bits with a polynomial rolling hash, all positions of a batch at once in numpy.
  3. model: for each class, log P(n-gram | class) with add-alpha smoothing over one vocabulary: the `top_k` most
     frequent n-grams of each of the 18 plus the `other_top_k` most frequent of each other language (177K n-grams,
     stored as text so you can read it). The other languages come from FLORES-200 (73 languages; the 16 whose
     script none of the 18 uses need no class: the script rule below rejects them).
  4. script: the dominant script of a text (Latin, Cyrillic, Arabic, Hebrew, Thai, Hangul, Kana, Han, or foreign)
     restricts the classes to those written in it. No letters, or a foreign script (Greek, Devanagari, ...): "other".
  5. decision: t = the best of the 18, o = the best other class. "other" when o explains the text better than t by
     more than `margin` nats (log P(text|o) - log P(text|t) > margin: a prior of e^margin in favour of the 18).
     Indonesian has one more check: Malay (zsm) is too close for character n-grams (their margins overlap even on
     long sentences), so for t = id a word-level discriminator decides instead (logistic regression on which words
     occur, learnt from the data: it finds bahawa/bahwa, kerana/karena, boleh/bisa, daripada, beliau, haiwan/hewan).
  6. calibration: `margin` and the discriminator's threshold are set on a dev split (never trained on) so that each
     rejects at most `max_reject` (0.5%) of any one of the 18 languages' dev lines (so id may lose up to twice that).

Held-out figures of the shipped model (bench/bench_lid.py): 99.61% correct on the 18 (lowest es 97.9%, short
Tatoeba sentences), 99.44% of the sentences of 73 other languages rejected (99.97% without Malay; Malay 61%).

Invariants: predict() returns a code of LANGS or "other" for every text; texts without letters or in a script none
of the 18 use are always "other"; a held-out slice (content hash < HOLDOUT) of the training text of the 18 and the
FLORES lines with index % 10 == 0 are never used for training or calibration (they are the test sets).

Splits. The 18: content_hash_frac(line) < HOLDOUT is test, < HOLDOUT + DEV is dev (calibration), the rest trains.
FLORES (parallel: line i is the same sentence in every language): i % 10 == 0 test, == 1 dev, the rest trains.
data/lid/flores_other_test.tsv.gz is the FLORES test split, shipped for tests/test_lid.py (see data/lid/README.md).

Train the shipped model (data/lid/model.npz, 1.6 MB; ~3 min on 1 core, 2.2 GB of memory):
    python lid.py --train=../shared/data/mono --other=../shared/data/mono_other --out=data/lid/model.npz
Evaluate on the held-out slices (accuracy on the 18, rejection per other language):
    python lid.py --eval=data/sample/mono --other=data/lid/flores_other_test.tsv.gz
Label text (one language code per input line), also `python data.py --lid FILE`:
    python lid.py --label=FILE          (or: python lid.py FILE)
Figures, the trade-off curve and the speed: bench/bench_lid.py.
"""
import dataclasses
import gzip
import hashlib
import lzma
import math
import os
import sys
from pathlib import Path

import numpy as np
import regex

from common import LANGS  # PolyLM's 18, in the paper's order (common.py: one home for language facts)

MODEL_PATH = Path(__file__).resolve().parent / "data" / "lid" / "model.npz"
OTHER_TEST = MODEL_PATH.parent / "flores_other_test.tsv.gz"   # FLORES test split of the other languages (shipped)
HOLDOUT = 0.1            # share of the training corpus held out for evaluation (by content hash)
DEV = 0.1                # the next share (HOLDOUT <= hash < HOLDOUT + DEV) calibrates margin and thresholds
MAX_N = 5                # character n-grams of length 1..MAX_N
TOP_K = 12000            # vocabulary: the top_k most frequent n-grams of each of the 18 languages ...
OTHER_TOP_K = 1000       # ... and the other_top_k most frequent of each other language (union over classes)
ALPHA = 0.1              # add-alpha smoothing of the per-class n-gram distributions
MAX_CHARS = 1000         # only the first MAX_CHARS characters of a document are looked at (enough for long docs)
MAX_REJECT = 0.005       # calibration: at most this share of each language's dev lines may be rejected (per rule)
DISCRIMINATE = {"id": "zsm"}   # target: the other class a word-level discriminator tells it from (not the margin)


class LidError(ValueError):
    """Bad input to lid.py: the message names the file or setting and how to fix it."""


_NON_LETTERS = regex.compile(r"[^\p{L}\p{M}]+")
# Scripts by code-point range; the dominant script of a text (weighted: a Han character says about as much as a word)
# restricts the candidates: Hangul -> ko, Thai -> th, Han -> zh/ja, Kana -> ja, Latin -> the eleven Latin languages.
SCRIPTS = ["latin", "cyrillic", "arabic", "hebrew", "thai", "hangul", "kana", "han", "foreign"]
_RANGES = [(0x41, 0x5A, "latin"), (0x61, 0x7A, "latin"), (0xC0, 0x24F, "latin"), (0x300, 0x36F, "latin"),
           (0x400, 0x52F, "cyrillic"), (0x590, 0x5FF, "hebrew"), (0x600, 0x6FF, "arabic"), (0x750, 0x77F, "arabic"),
           (0x8A0, 0x8FF, "arabic"), (0xE00, 0xE7F, "thai"), (0x1100, 0x11FF, "hangul"), (0x1E00, 0x1EFF, "latin"),
           (0x3005, 0x3005, "han"), (0x3040, 0x30FF, "kana"), (0x3130, 0x318F, "hangul"), (0x31F0, 0x31FF, "kana"),
           (0x3400, 0x4DBF, "han"), (0x4E00, 0x9FFF, "han"), (0xAC00, 0xD7AF, "hangul"), (0xF900, 0xFAFF, "han"),
           (0xFB1D, 0xFB4F, "hebrew"), (0xFB50, 0xFDFF, "arabic"), (0xFE70, 0xFEFF, "arabic"),
           (0xFF66, 0xFF9F, "kana"), (0x20000, 0x2FFFF, "han")]
_BOUNDS = np.array([b for lo, hi, _ in _RANGES for b in (lo, hi + 1)], dtype=np.uint64)
_BOUND_SCRIPT = np.array([SCRIPTS.index(s) for _, _, s in _RANGES], dtype=np.int64)
SCRIPT_WEIGHT = np.array([1, 1, 1, 1, 1, 2, 2, 3, 1], dtype=np.float64)
SCRIPT_LANGS = {"latin": "en es de fr pt it vi id pl tr nl".split(), "cyrillic": ["ru"], "arabic": ["ar"],
                "hebrew": ["he"], "thai": ["th"], "hangul": ["ko"], "kana": ["ja"], "han": ["zh", "ja"], "foreign": []}
FOREIGN = SCRIPTS.index("foreign")


def script_ids(cp):
    """Index into SCRIPTS of every code point of a normalised text (letters and marks only)."""
    k = np.searchsorted(_BOUNDS, cp, side="right")                     # odd k: inside range (k - 1) // 2
    return np.where(k % 2 == 1, _BOUND_SCRIPT[np.maximum(k - 1, 0) // 2], len(SCRIPTS) - 1)


_K = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling hash (2^64 / golden ratio)
_SEP = 1                            # code point separating documents in a batch (U+0001 never survives normalise)


def normalise(text):
    """' hello world ': lower-case letters and marks, one space between words and at both ends."""
    return " " + _NON_LETTERS.sub(" ", text[:MAX_CHARS].lower()).strip() + " "


def codepoints(texts):
    """The texts joined by U+0001 as one uint64 array of code points, and for each position the index of its text."""
    cp = np.frombuffer("\x01".join(texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    seps_before = np.concatenate([[0], np.cumsum(cp == _SEP)])        # separators in cp[:i] = text index of i
    return cp, seps_before


def extend_hashes(h, cp, n):
    """Hashes of the n-grams starting at 0..len-n, from those of the (n-1)-grams (h of length >= len-n+1).
    h(c1..cn) = (..((c1+1)K + c2+1)K + ...) mod 2^64; start with h = zeros."""
    m = len(cp) - n + 1
    with np.errstate(over="ignore"):
        return h[:m] * _K + cp[n - 1:] + np.uint64(1)


def ngram_hashes(texts, max_n=MAX_N):
    """(hashes, text_index, start, n, code points) of every character 1..max_n-gram of already-normalised texts.

    All texts are joined with a separator code point into one array; an n-gram is valid when it contains no
    separator and is not a lone space. All positions of an n are hashed at once by extending the (n-1)-grams, so
    the output comes in runs of one n, each run sorted by text.
    """
    cp, seps_before = codepoints(texts)
    out_h, out_doc, out_pos, out_n = [], [], [], []
    h = np.zeros(len(cp), dtype=np.uint64)
    for n in range(1, max_n + 1):
        m = len(cp) - n + 1
        if m <= 0:
            break
        h = extend_hashes(h, cp, n)
        ok = seps_before[n:n + m] == seps_before[:m]                    # no separator inside
        if n == 1:
            ok &= cp[:m] != 32                                          # a lone space says nothing
        pos = np.flatnonzero(ok)
        out_h.append(h[pos])
        out_doc.append(seps_before[pos])
        out_pos.append(pos)
        out_n.append(np.full(len(pos), n, dtype=np.int8))
    cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
    return cat(out_h, np.uint64), cat(out_doc, np.int64), cat(out_pos, np.int64), cat(out_n, np.int8), cp


def features(texts, max_n=MAX_N):
    """(n-gram hashes, their text index, their n, the dominant script of each text (-1: no letters)) of raw texts."""
    h, doc, pos, n, cp = ngram_hashes([normalise(t) for t in texts], max_n)
    uni = n == 1                                                       # the letters: vote for the dominant script
    sc = script_ids(cp[pos[uni]])
    votes = np.bincount(doc[uni] * len(SCRIPTS) + sc, weights=SCRIPT_WEIGHT[sc], minlength=len(texts) * len(SCRIPTS))
    votes = votes.reshape(len(texts), len(SCRIPTS))
    return h, doc, n, np.where(votes.max(1) > 0, votes.argmax(1), -1)


class HashIndex:
    """uint64 key -> row, an open-addressing hash table (linear probing) built and probed with whole arrays.

    Several times faster than np.searchsorted on a sorted array for millions of lookups (one or two cache misses
    per key instead of ~18). Key 0 marks an empty slot (a real hash is 0 with probability 2^-64).
    """

    def __init__(self, keys):
        keys = np.asarray(keys, dtype=np.uint64)
        self.bits = max(int(2 * len(keys) - 1).bit_length(), 4)       # load factor <= 1/2
        self.mask = (1 << self.bits) - 1
        self.keys = np.zeros(1 << self.bits, dtype=np.uint64)
        self.rows = np.full(1 << self.bits, -1, dtype=np.int64)
        pending, probe = np.arange(len(keys)), 0
        while len(pending):                                            # insert all, one probe step per round
            slot = self._slot(keys[pending], probe)
            free = self.keys[slot] == 0
            slot_f, first = np.unique(slot[free], return_index=True)   # two keys, one free slot: the first wins
            won = pending[free][first]
            self.keys[slot_f], self.rows[slot_f] = keys[won], won
            pending = np.setdiff1d(pending, won, assume_unique=True)
            probe += 1

    def _slot(self, k, probe):
        with np.errstate(over="ignore"):                               # Fibonacci hashing: mix, take the top bits
            home = (k * np.uint64(0xBF58476D1CE4E5B9)) >> np.uint64(64 - self.bits)
        return (home.astype(np.int64) + probe) & self.mask

    def lookup(self, q):
        """Row of each query key, -1 where absent."""
        q = np.asarray(q, dtype=np.uint64)
        out = np.full(len(q), -1, dtype=np.int64)
        pending, probe = np.arange(len(q)), 0
        while len(pending):
            slot = self._slot(q[pending], probe)
            k = self.keys[slot]
            hit = k == q[pending]
            out[pending[hit]] = self.rows[slot[hit]]
            pending = pending[~hit & (k != 0)]                         # an empty slot ends the search
            probe += 1
        return out


def _hash_strings(grams):
    """The ngram_hashes() hash of each n-gram string (the vocabulary is stored as text)."""
    h, doc, pos, n, _ = ngram_hashes(list(grams), max_n=max(len(g) for g in grams))
    lens = np.array([len(g) for g in grams])
    starts = np.concatenate([[0], np.cumsum(lens + 1)[:-1]])           # where each gram begins in the joined text
    whole = (pos == starts[doc]) & (n == lens[doc])                     # the n-gram that is the whole string
    out = np.zeros(len(grams), dtype=np.uint64)
    out[doc[whole]] = h[whole]
    return out


def _pack(data):
    """bytes -> xz-compressed uint8 array (for the model file)."""
    return np.frombuffer(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME), dtype=np.uint8)


def _unpack(arr):
    return lzma.decompress(arr.tobytes())


@dataclasses.dataclass
class Discriminator:
    """Tells `target` from the close other language `other` by the words a text contains: logistic regression,
    logit = bias + the sum of the weights of its distinct words (normalised); logit > threshold -> "other"."""
    target: str
    other: str
    weights: dict            # word -> weight (positive: evidence for `other`)
    bias: float
    threshold: float = 0.0   # 0: the regression's own decision; calibrate() moves it

    def logits(self, texts):
        w = self.weights
        # fsum: exact, so the order of a set (which varies with PYTHONHASHSEED) cannot change a bit of the result
        return np.array([math.fsum([self.bias] + [w.get(x, 0.0) for x in set(normalise(t).split())]) for t in texts])


class LanguageIdentifier:
    """Naive Bayes over character n-grams for the 18 languages (`langs`) and other languages (`others`), plus
    `margin` and the discriminators. `predict(texts) -> codes or "other"`; `scores(texts)` for the 18's scores."""

    def __init__(self, grams, logp, langs, others=(), other_scripts=(), margin=0.0, discriminators=()):
        self.grams, self.langs, self.others = list(grams), list(langs), list(others)
        self.classes = self.langs + self.others
        self.other_scripts = list(other_scripts)                       # script name of each other class
        self.margin = float(margin)                                    # nats, see the module docstring (step 5)
        self.discriminators = {d.target: d for d in discriminators}
        # scoring uses log-probs quantised to 256 levels (as saved): lo + scale * q. Sums of q rank the classes
        # exactly like sums of the log-probs (same n-gram count for every class), in integers, 4x less memory, and
        # a difference of sums times `scale` is a log-likelihood ratio in nats.
        logp = np.asarray(logp, dtype=np.float32)                      # (len(grams), len(classes)) log P(gram|class)
        self.lo, self.hi = float(logp.min()), float(logp.max())
        self.scale = (self.hi - self.lo) / 255 or 1.0
        self.q = np.round((logp - self.lo) / self.scale).astype(np.uint8)
        self._index = HashIndex(_hash_strings(self.grams))            # n-gram hash -> row of q
        allowed = np.array([[c in SCRIPT_LANGS[s] for c in self.langs] + [o == s for o in self.other_scripts]
                            for s in SCRIPTS])                         # (script, class): may class c explain it?
        # per script: its classes and their columns of q, transposed and contiguous (np.take along rows is fast)
        self._cols = [np.flatnonzero(a) for a in allowed]
        self._qt = [np.ascontiguousarray(self.q[:, cols].T) for cols in self._cols]
        # the other class that a target's discriminator handles does not count in that target's margin
        self._exclude = np.zeros((len(self.langs), len(self.others)))
        for d in self.discriminators.values():
            if d.target in self.langs and d.other in self.others:
                self._exclude[self.langs.index(d.target), self.others.index(d.other)] = -np.inf

    @classmethod
    def load(cls, path=MODEL_PATH):
        if not Path(path).is_file():
            raise LidError(f"LID model {path} not found; train one: python lid.py --train=DIR --other=DIR --out={path}")
        z = np.load(path, allow_pickle=False)
        if "grams_xz" in z:
            grams = _unpack(z["grams_xz"]).decode("utf-8").split("\n")
            q = np.frombuffer(_unpack(z["logp_qt_xz"]), dtype=np.uint8).reshape(-1, len(grams)).T
        else:                                                          # the 18-language model of old
            grams, q = z["grams"].tolist(), z["logp_q"]
        logp = q.astype(np.float32) * float(z["scale"]) + float(z["offset"])
        discs = [Discriminator(t, o, dict(zip(_unpack(z[f"disc_{t}_words_xz"]).decode("utf-8").split("\n"),
                                              z[f"disc_{t}_weights"].astype(float).tolist())),
                               float(z[f"disc_{t}_bias"]), float(z[f"disc_{t}_threshold"]))
                 for t, o in (z["disc_pairs"].tolist() if "disc_pairs" in z else [])]
        return cls(grams, logp, z["langs"].tolist(), z["others"].tolist() if "others" in z else (),
                   z["other_scripts"].tolist() if "other_scripts" in z else (),
                   float(z["margin"]) if "margin" in z else 0.0, discs)

    def save(self, path):
        """The vocabulary as text (one n-gram a line; n-grams never hold a newline) and the log-probs quantised to
        256 levels (as used for scoring) class by class, each xz-compressed (most entries of a class are its floor
        for unseen n-grams: 1.3 MB for 177K n-grams x 75 classes, deflate makes 1.8). Temp name, then renamed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        discs = {}
        for t, d in self.discriminators.items():
            words = sorted(d.weights)
            discs.update({f"disc_{t}_words_xz": _pack("\n".join(words).encode("utf-8")),
                          f"disc_{t}_weights": np.array([d.weights[w] for w in words], dtype=np.float32),
                          f"disc_{t}_bias": d.bias, f"disc_{t}_threshold": d.threshold})
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, grams_xz=_pack("\n".join(self.grams).encode("utf-8")),
                 logp_qt_xz=_pack(np.ascontiguousarray(self.q.T).tobytes()), scale=self.scale, offset=self.lo,
                 langs=np.array(self.langs), others=np.array(self.others, dtype=str),
                 other_scripts=np.array(self.other_scripts, dtype=str), margin=self.margin,
                 disc_pairs=np.array([[t, d.other] for t, d in self.discriminators.items()], dtype=str).reshape(-1, 2),
                 **discs)
        os.replace(tmp, path)

    def class_scores(self, texts):
        """(S (D, C): the sum of quantised log-probs of each text's in-vocabulary n-grams under each class of
        `classes`, -inf for classes not written in the text's dominant script; the dominant script (D,), -1 for a
        text without letters). Texts are scored against their script's classes only (a Latin text: 11 + 38)."""
        h, doc, n, dominant = features(texts)
        row = self._index.lookup(h)                                    # -1: not in the vocabulary
        s = np.full((len(texts), len(self.classes)), -np.inf)
        # group the n-grams by their text's script (a stable sort keeps each group in runs of one n, sorted by
        # text), sum each (n, text) run of each group over its script's classes, then add up the runs of a text
        key = np.where(row >= 0, dominant[doc], -1).astype(np.int8)   # -1: out of vocabulary or no letters
        order = np.argsort(key, kind="stable")
        bounds = np.searchsorted(key[order], np.arange(len(SCRIPTS) + 1))
        for script in np.unique(dominant[dominant >= 0]):
            cols = self._cols[script]
            if not len(cols):
                continue
            s[np.ix_(np.flatnonzero(dominant == script), cols)] = 0    # no n-gram in the vocabulary: all equal
            pick = order[bounds[script]:bounds[script + 1]]
            if not len(pick):
                continue
            r, d, nn = row[pick], doc[pick], n[pick]
            runs = np.flatnonzero(np.r_[True, (d[1:] != d[:-1]) | (nn[1:] != nn[:-1])])
            gathered = np.take(self._qt[script], r, axis=1)              # (classes, n-grams) of the script
            sums = np.stack([np.add.reduceat(g, runs, dtype=np.uint32) for g in gathered])   # 1-D: 3x faster
            by_text = np.argsort(d[runs], kind="stable")
            run_doc = d[runs][by_text]
            first = np.flatnonzero(np.r_[True, run_doc[1:] != run_doc[:-1]])
            s[np.ix_(run_doc[first], cols)] = np.add.reduceat(sums[:, by_text], first, axis=1).T
        return s, dominant

    def scores(self, texts):
        """(score per language of `langs` (D, L): the sum of quantised log-probs, -inf outside the dominant
        script's languages; the dominant script (D,), -1 for a text without letters)."""
        s, dominant = self.class_scores(texts)
        return s[:, :len(self.langs)], dominant

    def rival_ratio(self, s):
        """(the best of the 18 per text, log P(text | best other class) - log P(text | it) in nats, -inf where no
        other class is written in the text's script) from class_scores()."""
        L = len(self.langs)
        best = s[:, :L].argmax(1)
        target = s[np.arange(len(s)), best]
        rival = (s[:, L:] + self._exclude[best]).max(1) if self.others else np.full(len(s), -np.inf)
        with np.errstate(invalid="ignore"):                            # -inf - -inf: no rival, no rejection
            return best, np.where(np.isfinite(rival), self.scale * (rival - target), -np.inf)

    def decide(self, texts, s, dominant):
        """The codes for texts from their class_scores(): best of the 18, unless rejected (module docstring)."""
        best, ratio = self.rival_ratio(s)
        target = s[np.arange(len(texts)), best]
        reject = (dominant < 0) | (dominant == FOREIGN) | ~np.isfinite(target) | (ratio > self.margin)
        for lang, d in self.discriminators.items():
            ask = np.flatnonzero(~reject & (best == self.langs.index(lang))) if lang in self.langs else []
            if len(ask):
                reject[ask] = d.logits([texts[i] for i in ask]) > d.threshold
        return ["other" if r else self.langs[b] for b, r in zip(best, reject)]

    def predict(self, texts, batch_chars=1 << 20):
        """One code of `langs`, or "other" (no letters, a script none of the 18 uses, or another language), per
        text."""
        texts, out, i = list(texts), [], 0
        while i < len(texts):                                          # batches bound the memory (~100 B/char)
            j, size = i, 0
            while j < len(texts) and size < batch_chars:
                size += min(len(texts[j]), MAX_CHARS) + 1
                j += 1
            s, dominant = self.class_scores(texts[i:j])
            out += self.decide(texts[i:j], s, dominant)
            i = j
        return out


def _count(lines, max_n):
    """(sorted unique n-gram hashes, their counts, their text) of a class's lines."""
    norm = [normalise(t) for t in lines]
    h, _, pos, n, cp = ngram_hashes(norm, max_n)
    uniq, first, cnt = np.unique(h, return_index=True, return_counts=True)

    def text(i):
        at = pos[first[i]]
        return cp[at:at + n[first[i]]].astype(np.uint32).tobytes().decode("utf-32-le")
    return uniq, cnt, text


def dominant_script(lines):
    """The script most of the lines are written in (a name of SCRIPTS)."""
    dom = features(lines, max_n=1)[3]
    return SCRIPTS[int(np.bincount(dom[dom >= 0], minlength=len(SCRIPTS)).argmax())]


def train(lines_by_lang, top_k=TOP_K, alpha=ALPHA, max_n=MAX_N, others=None, other_top_k=OTHER_TOP_K,
          discriminate=DISCRIMINATE):
    """Fit the model on {lang: [lines]} (the languages to identify) and {other: [lines]} (languages to reject):
    count n-grams, keep each class's top_k (other_top_k), smooth, take logs; fit a Discriminator for each
    discriminate pair present. Other languages in a script none of the langs uses get no class (the script rule
    rejects them). Uncalibrated: margin 0 (plain argmax over all classes), thresholds 0; see calibrate()."""
    others = dict(others or {})
    used = {s for lang in lines_by_lang for s, ls in SCRIPT_LANGS.items() if lang in ls}
    scripts = {o: dominant_script(lines) for o, lines in others.items()}
    others = {o: lines for o, lines in others.items() if scripts[o] in used}
    classes = {**lines_by_lang, **others}
    counts = {c: _count(lines, max_n) for c, lines in classes.items()}
    vocab = {}                                                         # hash -> n-gram text
    for c, (uniq, cnt, text) in counts.items():
        for i in np.argsort(-cnt, kind="stable")[:top_k if c in lines_by_lang else other_top_k].tolist():
            vocab.setdefault(int(uniq[i]), text(i))
    order = sorted(vocab, key=vocab.get)                              # by text: the stored vocabulary packs better
    vh = np.array(order, dtype=np.uint64)
    logp = np.zeros((len(vh), len(classes)), dtype=np.float32)
    for j, (uniq, cnt, _) in enumerate(counts.values()):
        k = np.minimum(np.searchsorted(uniq, vh), len(uniq) - 1)
        c = np.where(uniq[k] == vh, cnt[k], 0)
        logp[:, j] = np.log((c + alpha) / (c.sum() + alpha * len(vh)))
    discs = [train_discriminator(lines_by_lang[t], others[o], t, o) for t, o in discriminate.items()
             if t in lines_by_lang and o in others]
    return LanguageIdentifier([vocab[h] for h in order], logp, list(lines_by_lang), list(others),
                              [scripts[o] for o in others], 0.0, discs)


def train_discriminator(target_lines, other_lines, target, other, l2=10.0, steps=500, lr=0.1):
    """Logistic regression on word presence, target (0) vs other (1), L2-regularised, full-batch Adam.

    The two classes get equal total weight, and the target's lines are re-weighted so that their length
    distribution (in words, log2 bins) matches the other's: the other language's lines (FLORES) are long news
    sentences, and without this the regression learns "long = other" from function words ("dan", "yang") and
    rejects long target documents (measured on id dev lines of >= 20 words: 3.7% wrongly rejected vs 0.6%)."""
    words = [set(normalise(t).split()) for t in list(target_lines) + list(other_lines)]
    y = np.r_[np.zeros(len(target_lines)), np.ones(len(other_lines))]
    size_bin = np.minimum(np.log2(np.maximum([len(w) for w in words], 1)).astype(int), 7)
    t_hist = np.bincount(size_bin[y == 0], minlength=8) + 1e-9
    o_hist = np.bincount(size_bin[y == 1], minlength=8)
    sw = np.where(y == 1, 1.0, (o_hist / o_hist.sum() / (t_hist / t_hist.sum()))[size_bin])
    sw[y == 0] *= 0.5 * len(y) / sw[y == 0].sum()                      # each class: half the total weight
    sw[y == 1] *= 0.5 * len(y) / sw[y == 1].sum()
    index = {}
    feat = np.array([index.setdefault(x, len(index)) for ws in words for x in sorted(ws)], dtype=np.int64)
    doc = np.repeat(np.arange(len(words)), [len(ws) for ws in words])
    w, b = np.zeros(len(index)), 0.0
    m, v = np.zeros(len(index)), np.zeros(len(index))
    for step in range(1, steps + 1):
        z = np.bincount(doc, weights=w[feat], minlength=len(words)) + b
        g = sw * (1 / (1 + np.exp(-z)) - y)                            # d loss / d logit, per line
        gw = (np.bincount(feat, weights=g[doc], minlength=len(w)) + l2 * w) / len(words)
        b -= lr * g.mean()
        m, v = 0.9 * m + 0.1 * gw, 0.999 * v + 0.001 * gw * gw
        w -= lr * (m / (1 - 0.9 ** step)) / (np.sqrt(v / (1 - 0.999 ** step)) + 1e-8)
    names = list(index)
    keep = np.flatnonzero(np.abs(w) >= 1e-3)                          # float32, as saved: calibrate what ships
    return Discriminator(target, other, dict(zip([names[i] for i in keep], w[keep].astype(np.float32).tolist())),
                         float(b))


def calibrate(model, dev_by_lang, max_reject=MAX_REJECT):
    """Set model.margin and each discriminator's threshold from dev lines of the 18 ({lang: lines}, never trained
    on): the smallest values that reject at most max_reject of any language's dev lines (margin >= 0).
    Returns {lang: share of its dev lines rejected}."""
    texts = [t for lines in dev_by_lang.values() for t in lines]
    gold = np.array([lang for lang, lines in dev_by_lang.items() for _ in lines])
    s, dominant = model.class_scores(texts)
    best, ratio = model.rival_ratio(s)
    q = 1 - max_reject
    model.margin = max([0.0] + [float(np.quantile(ratio[gold == lang], q, method="higher"))
                                for lang in dev_by_lang if np.isfinite(ratio[gold == lang]).any()])
    kept = ratio <= model.margin
    for lang, d in model.discriminators.items():
        ask = np.flatnonzero((gold == lang) & kept & (best == model.langs.index(lang)))
        if len(ask):
            d.threshold = float(np.quantile(d.logits([texts[i] for i in ask]), q, method="higher"))
    pred = np.array(model.decide(texts, s, dominant))
    return {lang: float(np.mean(pred[gold == lang] == "other")) for lang in dev_by_lang}


def content_hash_frac(text):
    """A uniform number in [0, 1) from the text's md5: deterministic held-out slices by content."""
    return int.from_bytes(hashlib.md5(text.encode("utf-8", "surrogatepass")).digest()[:8], "little") / 2**64


def split_of(line):
    """'test' (the held-out slice), 'dev' (calibration) or 'train', by the line's content hash."""
    f = content_hash_frac(line)
    return "test" if f < HOLDOUT else "dev" if f < HOLDOUT + DEV else "train"


def read_split(mono_dir, split):
    """{lang: lines} of mono_dir/<lang>.txt for the 18 languages in one split ('train', 'dev' or 'test')."""
    if not Path(mono_dir).is_dir():
        raise LidError(f"{mono_dir}: no such folder; give a folder of <lang>.txt files, e.g. data/sample/mono")
    out = {}
    for lang in LANGS:
        path = Path(mono_dir, f"{lang}.txt")
        if not path.is_file():
            raise LidError(f"{path} not found: the text of the 18 languages is a folder of <lang>.txt files "
                           f"({', '.join(LANGS)}), e.g. data/sample/mono")
        lines = path.read_text(encoding="utf-8").splitlines()
        out[lang] = [x for x in (s.strip() for s in lines) if x and split_of(x) == split]
    return out


def read_corpus(mono_dir, heldout):
    """{lang: lines} of mono_dir/<lang>.txt: the held-out slice (heldout=True) or everything else (False)."""
    if heldout:
        return read_split(mono_dir, "test")
    parts = read_split(mono_dir, "train"), read_split(mono_dir, "dev")
    return {lang: parts[0][lang] + parts[1][lang] for lang in LANGS}


def flores_split(index):
    """'test', 'dev' or 'train' of FLORES line `index` (0-based; the same for every language: FLORES is parallel)."""
    return "test" if index % 10 == 0 else "dev" if index % 10 == 1 else "train"


def read_other(path, split):
    """{code: lines} of the other languages in one split: from a folder of FLORES <code>.txt files (e.g.
    ../shared/data/mono_other) or from a code<TAB>index<TAB>sentence .tsv.gz slice (data/lid/flores_other_test)."""
    path = Path(path)
    out = {}
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise LidError(f"{path} has no <code>.txt files: give the FLORES folder of other languages, "
                           "e.g. --other=../shared/data/mono_other")
        for f in files:
            lines = f.read_text(encoding="utf-8").splitlines()
            out[f.stem] = [x.strip() for i, x in enumerate(lines) if x.strip() and flores_split(i) == split]
        return out
    if not path.is_file():
        raise LidError(f"{path} not found: give a folder of FLORES <code>.txt files or a .tsv.gz slice "
                       f"such as {OTHER_TEST.relative_to(MODEL_PATH.parents[2])}")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows = [row.rstrip("\n").split("\t") for row in f]
    except (OSError, UnicodeDecodeError) as e:
        raise LidError(f"{path}: not a gzip-compressed UTF-8 .tsv.gz ({e}); give a folder of FLORES <code>.txt "
                       "files or a slice such as data/lid/flores_other_test.tsv.gz") from None
    for n, parts in enumerate(rows, 1):
        if len(parts) != 3 or not parts[1].isdigit():
            raise LidError(f"{path}:{n}: want code<TAB>index<TAB>sentence")
        if flores_split(int(parts[1])) == split:
            out.setdefault(parts[0], []).append(parts[2])
    return out


def evaluate(model, lines_by_lang):
    """{lang: accuracy}, {(true, predicted): count} of the errors."""
    acc, confusion = {}, {}
    for lang, lines in lines_by_lang.items():
        pred = model.predict(lines)
        acc[lang] = sum(p == lang for p in pred) / max(len(lines), 1)
        for p in pred:
            if p != lang:
                confusion[(lang, p)] = confusion.get((lang, p), 0) + 1
    return acc, confusion


def rejection(model, lines_by_other):
    """{other language: share of its lines labelled "other"}, {(other, label): count} of the lines accepted."""
    rej, accepted = {}, {}
    for code, lines in lines_by_other.items():
        pred = model.predict(lines)
        rej[code] = sum(p == "other" for p in pred) / max(len(lines), 1)
        for p in pred:
            if p != "other":
                accepted[(code, p)] = accepted.get((code, p), 0) + 1
    return rej, accepted


_DEFAULT = None


def identify(texts):
    """Language codes of texts with the shipped model (loaded once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LanguageIdentifier.load()
    return _DEFAULT.predict(list(texts))


@dataclasses.dataclass
class LidConfig:
    train: str = ""                      # train: folder of <lang>.txt for the 18 (e.g. ../shared/data/mono)
    other: str = ""                      # train/eval: FLORES folder of other languages, or a .tsv.gz test slice
    out: str = str(MODEL_PATH)           # train: where the model goes
    eval: str = ""                       # eval: folder of <lang>.txt; its held-out slice is scored
    model: str = str(MODEL_PATH)         # eval/label: the model to use
    label: str = ""                      # label: a text file; print one language code per line of it
    top_k: int = TOP_K                   # train: n-grams kept per language of the 18
    other_top_k: int = OTHER_TOP_K       # train: n-grams kept per other language
    max_reject: float = MAX_REJECT       # train: calibration, at most this share of each language's dev lines rejected


def _print_table(title, values, extra="", worst=min):
    name = worst(values, key=values.get)
    print(f"{title}: mean {100 * np.mean(list(values.values())):.2f}%, {worst.__name__} {name} "
          f"{100 * values[name]:.1f}%{extra}")
    print("  " + " ".join(f"{k} {100 * v:.1f}" for k, v in values.items()))


def run(cfg):
    if cfg.train:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)       # an unwritable --out fails now, not at the end
        others = read_other(cfg.other, "train") if cfg.other else {}
        model = train(read_split(cfg.train, "train"), cfg.top_k, others=others, other_top_k=cfg.other_top_k)
        dev_rejected = calibrate(model, read_split(cfg.train, "dev"), cfg.max_reject)
        model.save(cfg.out)
        print(f"saved {cfg.out} ({Path(cfg.out).stat().st_size / 1e6:.2f} MB): {len(model.grams):,} n-grams x "
              f"{len(model.langs)} languages + {len(model.others)} other; margin {model.margin:.2f} nats; "
              + ", ".join(f"{t}/{d.other} threshold {d.threshold:.2f}" for t, d in model.discriminators.items()))
        _print_table("dev lines of the 18 rejected", dev_rejected, worst=max)
        if cfg.other:
            _print_table("dev lines of other languages rejected", rejection(model, read_other(cfg.other, "dev"))[0])
    elif cfg.eval:
        model = LanguageIdentifier.load(cfg.model)
        heldout = read_corpus(cfg.eval, heldout=True)
        lines = read_other(cfg.other, "test") if cfg.other else {}      # bad paths fail before the long part
        acc, conf = evaluate(model, heldout)
        _print_table("held-out accuracy", acc)
        print("confusions:", ", ".join(f"{a}->{b} {c}" for (a, b), c in sorted(conf.items(), key=lambda x: -x[1])))
        if lines:
            rej, accepted = rejection(model, lines)
            overall = sum(rej[c] * len(v) for c, v in lines.items()) / sum(len(v) for v in lines.values())
            _print_table("held-out other languages rejected", rej, f"; overall {100 * overall:.2f}%")
            print("accepted:", ", ".join(f"{a}->{b} {c}" for (a, b), c in
                                         sorted(accepted.items(), key=lambda x: -x[1])))
    elif cfg.label:
        if not Path(cfg.label).is_file():
            raise LidError(f"--label={cfg.label}: no such file (one text per line)")
        model = LanguageIdentifier.load(cfg.model)
        with open(cfg.label, encoding="utf-8", errors="replace") as f:
            for code in model.predict([line.rstrip("\n") for line in f]):
                print(code)
    else:
        raise LidError("give --train=DIR [--other=DIR], --eval=DIR [--other=DIR|FILE] or --label=FILE (see --help)")


def _positional_file(argv):
    """`python lid.py FILE` (the interface of old) means --label=FILE."""
    out = []
    for i, a in enumerate(argv):
        is_value = i > 0 and argv[i - 1].startswith("--") and "=" not in argv[i - 1]   # --key VALUE
        out.append(a if a.startswith("-") or a.endswith(".py") or is_value else f"--label={a}")
    return out


def main(argv=None):
    import config
    argv = sys.argv[1:] if argv is None else list(argv)
    return config.run_cli(run, LidConfig, _positional_file(argv), prog="lid.py")


if __name__ == "__main__":
    main()
