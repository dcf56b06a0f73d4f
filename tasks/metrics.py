"""Metrics of the PolyLM benchmark (PolyLM paper §5): accuracy, SQuAD-style EM/F1, ROUGE, BLEU/chrF; and the one
script-aware tokenizer and LCS that every ROUGE in the repo uses (evaluate.py's MTG scores and selfinstruct.py's
near-duplicate filter, PolyLM §6).

Everything here is a pure function of strings and numbers, so it is tested against hand-computed values.

Scripts without spaces. Chinese, Japanese and Thai (common.SPACELESS) are written without spaces between words, so
"split on whitespace" turns a whole clause into one "word" and any metric built on words collapses to exact match:
  - EM/F1 (TyDiQA-GoldP, SQuAD 1.1 metric): for zh/ja/th we follow MLQA's `mixed_segmentation`: every character of
    those scripts is one token (Thai: one grapheme cluster, so a vowel sign stays with its consonant), other text
    keeps whole words; punctuation is any Unicode P* character. For every other language the normalisation is the
    official SQuAD v1.1 script's, unchanged (lower-case, drop ASCII punctuation and English articles, split on
    whitespace), because that is the script the TyDiQA-GoldP authors score with.
  - ROUGE: the common `rouge_score` package lower-cases and then keeps only [a-z0-9] ("non-Latin characters are
    removed"), so a Chinese, Thai, Russian or Arabic summary has zero tokens and ROUGE 0 no matter how good it is.
    `rouge_tokens` normalises (NFKC, lower-case, Arabic harakat and tatweel removed) and keeps letters and digits of
    every script: one token per grapheme cluster in Han, kana, Thai, Lao, Khmer, Myanmar and Hangul, one token per
    run of letters/digits elsewhere.
    Korean is written with spaces (it is not in common.SPACELESS), but a space-separated eojeol glues particles and
    endings to its stem (그림을 = 그림 + 을; 설명하세요 / 설명해 주세요 / 설명하십시오 ask the same thing), so two
    Korean sentences that say nearly the same share few whole eojeol and word-level ROUGE-L misses near-duplicates.
    Hangul is therefore scored by syllable block, the dependency-free stand-in for the morpheme (mecab-ko) tokens
    Korean ROUGE usually uses. It changes only ROUGE: EM/F1 for Korean stay the SQuAD script's, BLEU uses ko-mecab.
  - LCS (ROUGE-L): bit-parallel (Allison & Dix 1986, Hyyro 2004): one big-integer step per token of one sequence
    instead of an |a| x |b| table; selfinstruct_text.RougeIndex runs it against a pool of 15K instructions.
  - BLEU: sacrebleu with the tokenizer the field uses per target language: `zh` for Chinese, `ja-mecab` for Japanese
    (needs `pip install sacrebleu[ja]`; without it we fall back to `char` and say so in the signature), `ko-mecab`
    for Korean when installed (else `13a`), `char` for Thai, `13a` otherwise. chrF needs no tokenizer.
"""
import collections
import re
import string
import unicodedata

import regex

from common import SPACELESS

# ----------------------------------------------------------------------------- tokenization of any script

# scripts scored one grapheme cluster at a time: those written without spaces, and Hangul (syllables; see above)
_CHAR_SCRIPTS = r"\p{Han}\p{Hiragana}\p{Katakana}\u30FC\p{Thai}\p{Lao}\p{Khmer}\p{Myanmar}\p{Hangul}"
# one grapheme cluster of those scripts, or a run of letters/digits/marks of any other script
_TOKEN = regex.compile(rf"(?=[{_CHAR_SCRIPTS}])\X|(?:(?![{_CHAR_SCRIPTS}])[\p{{L}}\p{{N}}\p{{M}}])+")
_UNI_PUNCT = regex.compile(r"\p{P}")
_ARABIC_MARKS = re.compile("[\u0640\u064b-\u065f\u0670]")    # tatweel and harakat: vocalised = unvocalised


def script_tokens(text):
    """Letters/digits of every script; Han, kana, Thai, Lao, Khmer, Myanmar and Hangul one grapheme cluster per
    token. Punctuation is dropped. No normalisation (rouge_tokens adds it)."""
    return _TOKEN.findall(text)


def normalize(text):
    """NFKC (full-width letters and digits become plain ones), lower-case, Arabic harakat and tatweel removed."""
    return _ARABIC_MARKS.sub("", unicodedata.normalize("NFKC", text).lower())


def rouge_tokens(text):
    """The ROUGE tokens of a text: script_tokens of the normalised text."""
    return script_tokens(normalize(text))


# ----------------------------------------------------------------------------- extractive QA: EM and F1

def squad_normalize(s):
    """The official SQuAD v1.1 `normalize_answer`: lower, drop ASCII punctuation, drop a/an/the, fix whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def qa_tokens(s, lang):
    """Answer tokens for EM/F1: SQuAD v1.1 for spaced languages, MLQA-style mixed segmentation for zh/ja/th."""
    if lang in SPACELESS:
        s = _UNI_PUNCT.sub(" ", s.lower())
        s = "".join(" " if ch in string.punctuation else ch for ch in s)
        return script_tokens(s)
    return squad_normalize(s).split()


def exact_match(prediction, gold, lang="en"):
    return float(qa_tokens(prediction, lang) == qa_tokens(gold, lang))


def f1(prediction, gold, lang="en"):
    """Token-overlap F1 of SQuAD v1.1 (bag of tokens, clipped counts)."""
    p, g = qa_tokens(prediction, lang), qa_tokens(gold, lang)
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def qa_scores(prediction, golds, lang="en"):
    """(EM, F1) against several gold answers: the max over answers, as SQuAD's script does."""
    return (max(exact_match(prediction, g, lang) for g in golds), max(f1(prediction, g, lang) for g in golds))


# ----------------------------------------------------------------------------- ROUGE (generation, near-duplicates)

def rouge_score_tokens(text):
    """What `rouge_score`'s default tokenizer keeps (lower-case, then only [a-z0-9] runs): shown in the tests to make
    the point that it deletes every non-Latin character. Not used for scoring."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_masks(seq):
    """{token: bit mask of its positions in seq}, the precomputation of lcs_len (reusable for many comparisons)."""
    m = {}
    for i, t in enumerate(seq):
        m[t] = m.get(t, 0) | (1 << i)
    return m


def lcs_len(a, b, masks_a=None):
    """Length of the longest common subsequence of two token sequences, bit-parallel: bit i of v is 0 where a[:i+1]
    has gained a match; each token of b updates all of them with one addition. masks_a: lcs_masks(a), if known."""
    if not a or not b:
        return 0
    masks = masks_a if masks_a is not None else lcs_masks(a)
    full = (1 << len(a)) - 1
    v = full
    for t in b:
        m = masks.get(t)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return len(a) - bin(v).count("1")


def _ngrams(tokens, n):
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _prf(overlap, n_pred, n_ref):
    p = overlap / n_pred if n_pred else 0.0
    r = overlap / n_ref if n_ref else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def rouge_l(a, b):
    """ROUGE-L F1 (beta = 1, as rouge_score) of two texts or token lists: 2 LCS / (|a| + |b|)."""
    a = rouge_tokens(a) if isinstance(a, str) else a
    b = rouge_tokens(b) if isinstance(b, str) else b
    return 2 * lcs_len(a, b) / (len(a) + len(b)) if a and b else 0.0


def rouge(prediction, reference, tokenize=rouge_tokens):
    """{"rouge1", "rouge2", "rougeL"} F-measures in [0, 1] of one prediction against one reference, computed as
    `rouge_score` does (clipped n-gram counts; ROUGE-L from the longest common subsequence), without stemming."""
    p, r = tokenize(prediction), tokenize(reference)
    out = {}
    for n in (1, 2):
        pn, rn = _ngrams(p, n), _ngrams(r, n)
        out[f"rouge{n}"] = _prf(sum((pn & rn).values()), sum(pn.values()), sum(rn.values()))
    out["rougeL"] = rouge_l(p, r)
    return out


# ----------------------------------------------------------------------------- BLEU and chrF (translation)

def bleu_tokenizer(lang):
    """sacrebleu tokenizer name for a target language, and a note when we had to fall back."""
    if lang == "zh":
        return "zh", ""
    if lang in ("ja", "ko"):
        try:
            from sacrebleu.tokenizers import tokenizer_ja_mecab, tokenizer_ko_mecab  # noqa: F401
            (tokenizer_ja_mecab.TokenizerJaMecab if lang == "ja" else tokenizer_ko_mecab.TokenizerKoMecab)()
            return f"{lang}-mecab", ""
        except Exception:           # mecab and its dictionary are extras: pip install sacrebleu[ja] / sacrebleu[ko]
            if lang == "ja":
                return "char", "ja-mecab not installed (pip install 'sacrebleu[ja]'): BLEU on characters, not comparable"
            return "13a", "ko-mecab not installed (pip install 'sacrebleu[ko]'): BLEU with 13a"
    if lang == "th":
        return "char", "no standard Thai word tokenizer in sacrebleu: BLEU on characters"
    return "13a", ""


def bleu_chrf(hypotheses, references, tgt_lang):
    """Corpus BLEU and chrF (sacrebleu, one reference per line) with their signatures."""
    from sacrebleu.metrics import BLEU, CHRF
    tok, note = bleu_tokenizer(tgt_lang)
    bleu, chrf = BLEU(tokenize=tok), CHRF()
    b, c = bleu.corpus_score(hypotheses, [references]), chrf.corpus_score(hypotheses, [references])
    out = {"bleu": b.score, "chrf": c.score, "bleu_signature": str(bleu.get_signature()),
           "chrf_signature": str(chrf.get_signature())}
    if note:
        out["note"] = note
    return out


# ----------------------------------------------------------------------------- small helpers

def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")
