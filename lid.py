"""Language identification for PolyLM's 18 languages (PolyLM paper §3, "Pre-training data": every document gets a
language label before the per-language filters; PolyLM used an off-the-shelf fastText model).

Ours is a small, readable, dependency-free model: multinomial naive Bayes over character n-grams, the classic
recipe of langid.py (Lui & Baldwin 2012) and Cavnar & Trenkle (1994), vectorised with numpy.

  1. normalise: lower-case; every run of non-letters (digits, punctuation, symbols, spaces) becomes one space, so
     "Hello, World 42!" -> " hello world ". Combining marks are kept (Thai vowels, Arabic harakat, Vietnamese tones).
  2. features: every character 1..5-gram of the normalised text, word-boundary spaces included (" th", "he ").
     Each n-gram is hashed to 64 bits with a polynomial rolling hash, all positions of a batch at once in numpy.
  3. model: for each language, log P(n-gram | language) with add-alpha smoothing, over a vocabulary made of the
     `top_k` most frequent n-grams of every language (the union: 222K n-grams, stored as text so you can read it).
  4. predict: argmax over languages of the sum of log-probs of the text's in-vocabulary n-grams (a uniform prior).
     "other" when the text has no letters, when most of its letters are in a script none of the 18 languages use
     (Greek, Devanagari, ...), or when almost none of its n-grams are in the vocabulary.

Script alone decides ko (Hangul), th, he, ar, ru (Cyrillic) in practice; the model's work is among the eleven
Latin-script languages (es/pt/it, de/nl/en, id) and between zh and ja (kana is decisive; kanji-only Japanese is not).

Train (the shipped model, data/lid/model.npz, 1.7 MB, trained on data/sample/mono minus its held-out slice):
    python lid.py --train data/sample/mono --out data/lid/model.npz
Evaluate on the held-out slice (lines with `content_hash_frac(line) < HOLDOUT`, never used in training):
    python lid.py --eval data/sample/mono
Label text (one language code per input line), also `python data.py --lid FILE`:
    python lid.py FILE
"""
import hashlib
import sys
from pathlib import Path

import numpy as np
import regex

LANGS = "zh en es de fr pt ru it ar ja ko th vi id pl tr nl he".split()   # = data.LANGS (data imports us)
MODEL_PATH = Path(__file__).resolve().parent / "data" / "lid" / "model.npz"
HOLDOUT = 0.1            # share of the training corpus held out for evaluation (by content hash)
MAX_N = 5                # character n-grams of length 1..MAX_N
TOP_K = 16000            # vocabulary: the top_k most frequent n-grams of each language (union over languages)
ALPHA = 0.1              # add-alpha smoothing of the per-language n-gram distributions
MAX_CHARS = 1000         # only the first MAX_CHARS characters of a document are looked at (enough for long docs)

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
    separator and is not a lone space. All positions of an n are hashed at once by extending the (n-1)-grams.
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


class LanguageIdentifier:
    """Naive Bayes over character n-grams. `predict(texts) -> codes`; `scores(texts)` for the log-likelihoods."""

    def __init__(self, grams, logp, langs):
        self.grams, self.langs = list(grams), list(langs)
        self.logp = np.asarray(logp, dtype=np.float32)                 # (len(grams), len(langs)) log P(gram|lang)
        # scoring uses log-probs quantised to 256 levels (as saved): lo + scale * q. Sums of q rank the languages
        # exactly like sums of the log-probs (same n-gram count for every language), in integers, 4x less memory.
        self.lo, self.hi = float(self.logp.min()), float(self.logp.max())
        self.q = np.round((self.logp - self.lo) / ((self.hi - self.lo) / 255 or 1)).astype(np.uint8)
        self._index = HashIndex(_hash_strings(self.grams))            # n-gram hash -> row of q
        self._mask = np.array([[0.0 if l in SCRIPT_LANGS[s] else -np.inf for l in self.langs] for s in SCRIPTS])

    @classmethod
    def load(cls, path=MODEL_PATH):
        z = np.load(path, allow_pickle=False)
        logp = z["logp_q"].astype(np.float32) * float(z["scale"]) + float(z["offset"])
        return cls(z["grams"].tolist(), logp, z["langs"].tolist())

    def save(self, path):
        """Log-probs quantised to 256 levels (as used for scoring): 1.7 MB compressed for 222K n-grams."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, grams=np.array(self.grams), logp_q=self.q, scale=(self.hi - self.lo) / 255,
                            offset=self.lo, langs=np.array(self.langs))

    def scores(self, texts):
        """(score per language (D, L): the sum of quantised log-probs, -inf outside the dominant script's languages;
        the dominant script (D,), -1 for a text without letters)."""
        h, doc, pos, n, cp = ngram_hashes([normalise(t) for t in texts])
        D, L = len(texts), len(self.langs)
        uni = n == 1                                                   # the letters: vote for the dominant script
        sc = script_ids(cp[pos[uni]])
        votes = np.bincount(doc[uni] * len(SCRIPTS) + sc, weights=SCRIPT_WEIGHT[sc], minlength=D * len(SCRIPTS))
        votes = votes.reshape(D, len(SCRIPTS))
        dominant = np.where(votes.max(1) > 0, votes.argmax(1), -1)     # -1: no letters at all
        row = self._index.lookup(h)                                    # -1: not in the vocabulary
        s = np.zeros((D, L), dtype=np.float64)
        cuts = np.flatnonzero(np.diff(n)) + 1                          # h comes in runs of one n, sorted by text
        for r, d in zip(np.split(row, cuts), np.split(doc, cuts)):
            r, d = r[r >= 0], d[r >= 0]
            if len(d):
                first = np.flatnonzero(np.r_[True, d[1:] != d[:-1]])   # where each text's run starts
                s[d[first]] += np.add.reduceat(self.q[r], first, axis=0, dtype=np.int64)
        return s + self._mask[dominant], dominant

    def predict(self, texts, batch_chars=1 << 20):
        """One code of LANGS, or "other" (no letters, or a script none of the 18 languages use), per text."""
        texts, out, i = list(texts), [], 0
        while i < len(texts):                                          # batches bound the memory (~100 B/char)
            j, size = i, 0
            while j < len(texts) and size < batch_chars:
                size += min(len(texts[j]), MAX_CHARS) + 1
                j += 1
            s, dominant = self.scores(texts[i:j])
            best = s.argmax(1)
            out += ["other" if d < 0 or SCRIPTS[d] == "foreign" else self.langs[b] for b, d in zip(best, dominant)]
            i = j
        return out


def train(lines_by_lang, top_k=TOP_K, alpha=ALPHA, max_n=MAX_N):
    """Fit the model on {lang: [lines]}: count n-grams, keep each language's top_k, smooth, take logs."""
    counts = {}
    for lang, lines in lines_by_lang.items():
        norm = [normalise(t) for t in lines]
        h, _, pos, n, cp = ngram_hashes(norm, max_n)
        uniq, first, cnt = np.unique(h, return_index=True, return_counts=True)
        counts[lang] = (uniq, cnt, pos[first], n[first], cp)
    vocab = {}                                                         # hash -> n-gram text
    for lang, (uniq, cnt, pos, n, cp) in counts.items():
        top = np.argsort(-cnt, kind="stable")[:top_k]
        for i in top.tolist():
            if int(uniq[i]) not in vocab:
                vocab[int(uniq[i])] = cp[pos[i]:pos[i] + n[i]].astype(np.uint32).tobytes().decode("utf-32-le")
    vh = np.array(sorted(vocab), dtype=np.uint64)
    logp = np.zeros((len(vh), len(lines_by_lang)), dtype=np.float32)
    for j, (uniq, cnt, _, _, _) in enumerate(counts.values()):
        c = np.zeros(len(vh))
        k = np.searchsorted(uniq, vh)
        k = np.minimum(k, len(uniq) - 1)
        found = uniq[k] == vh
        c[found] = cnt[k[found]]
        logp[:, j] = np.log((c + alpha) / (c.sum() + alpha * len(vh)))
    grams = [vocab[int(x)] for x in vh]
    return LanguageIdentifier(grams, logp, list(lines_by_lang))


def content_hash_frac(text):
    """A uniform number in [0, 1) from the text's md5: deterministic held-out slices by content."""
    return int.from_bytes(hashlib.md5(text.encode("utf-8", "surrogatepass")).digest()[:8], "little") / 2**64


def read_corpus(mono_dir, heldout):
    """{lang: lines} of mono_dir/<lang>.txt: the training part (heldout=False) or the held-out slice (True)."""
    out = {}
    for lang in LANGS:
        lines = Path(mono_dir, f"{lang}.txt").read_text(encoding="utf-8").splitlines()
        out[lang] = [x for x in (s.strip() for s in lines) if x and (content_hash_frac(x) < HOLDOUT) == heldout]
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


_DEFAULT = None


def identify(texts):
    """Language codes of texts with the shipped model (loaded once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = LanguageIdentifier.load()
    return _DEFAULT.predict(list(texts))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--train"]:
        out = argv[argv.index("--out") + 1] if "--out" in argv else MODEL_PATH
        model = train(read_corpus(argv[1], heldout=False))
        model.save(out)
        print(f"saved {out}: {len(model.grams):,} n-grams x {len(model.langs)} languages")
    elif argv[:1] == ["--eval"]:
        model = LanguageIdentifier.load(argv[argv.index("--model") + 1] if "--model" in argv else MODEL_PATH)
        acc, conf = evaluate(model, read_corpus(argv[1], heldout=True))
        for lang, a in acc.items():
            print(f"{lang}  {a:.4f}")
        print(f"mean {np.mean(list(acc.values())):.4f}")
        print("confusions:", ", ".join(f"{a}->{b} {c}" for (a, b), c in sorted(conf.items(), key=lambda x: -x[1])))
    else:
        with open(argv[0], encoding="utf-8", errors="replace") as f:
            for code in identify([line.rstrip("\n") for line in f]):
                print(code)


if __name__ == "__main__":
    main()
