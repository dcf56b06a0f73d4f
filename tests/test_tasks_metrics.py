"""tasks/metrics.py against hand-computed values; BLEU/chrF against sacrebleu itself; the one script-aware ROUGE
tokenizer and bit-parallel LCS that evaluate.py (MTG) and selfinstruct.py (near-duplicates) share."""
import math
import random
import re

import pytest

from tasks import metrics as M


def test_em_f1_spaced_languages_follow_squad_v11():
    assert M.exact_match("The Cat!", "cat") == 1.0                     # case, punctuation, article
    assert M.exact_match("a cat", "cats") == 0.0
    # pred {big, red, dog} vs gold {red, dog, barked}: 2 common -> P = R = 2/3
    assert M.f1("a big red dog", "the red dog barked") == pytest.approx(2 / 3)
    assert M.f1("Paris", "London") == 0.0
    # several gold answers: the best one counts
    assert M.qa_scores("in 1889", ["1889", "in 1889"]) == (1.0, 1.0)
    # SQuAD v1.1 drops only ASCII punctuation, so Arabic "؟" stays part of the token (parity with the official script)
    assert M.qa_tokens("باريس؟", "ar") == ["باريس؟"]


def test_em_f1_are_character_level_for_zh_ja_th():
    # whitespace split would make "北京大学" one token and give F1 = 0; by character: P = 2/4, R = 2/2 -> F1 = 2/3
    assert M.f1("北京大学", "北京", "zh") == pytest.approx(2 / 3)
    assert M.exact_match("北京 大学。", "北京大学", "zh") == 1.0         # spaces and Unicode punctuation ignored
    assert M.f1("東京タワー", "東京", "ja") == pytest.approx(2 * (2 / 5) * 1 / (2 / 5 + 1))
    # Thai by grapheme cluster: a vowel mark stays with its consonant: "ที่" is one token
    assert M.qa_tokens("ที่นี่", "th") == ["ที่", "นี่"]
    # กรุงเทพ = ก รุ ง เ ท พ (6 clusters; the vowel sign ุ belongs to ร), กรุง = 3 of them: P = 1/2, R = 1
    assert M.f1("กรุงเทพ", "กรุง", "th") == pytest.approx(2 / 3)
    # mixed text keeps Latin words whole
    assert M.qa_tokens("iPhone手机", "zh") == ["iphone", "手", "机"]


def test_rouge_matches_hand_computed_values():
    r = M.rouge("the cat sat on the mat", "the cat is on the mat")
    assert r["rouge1"] == pytest.approx(5 / 6)           # 5 of 6 unigrams (clipped "the" x2)
    assert r["rouge2"] == pytest.approx(3 / 5)           # the cat, on the, the mat
    assert r["rougeL"] == pytest.approx(5 / 6)           # LCS "the cat on the mat"
    assert M.rouge("same words", "same words") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert M.rouge("", "anything")["rouge1"] == 0.0


def test_rouge_is_script_aware_where_rouge_score_sees_nothing():
    pred, ref = "猫坐在垫子上", "猫在垫子上"
    # rouge_score's default tokenizer keeps only [a-z0-9]: Chinese vanishes, ROUGE would be 0 for any output
    assert M.rouge_score_tokens(pred) == [] and M.rouge_score_tokens("Привет мир") == []
    assert M.rouge(pred, ref, tokenize=M.rouge_score_tokens)["rouge1"] == 0.0
    r = M.rouge(pred, ref)
    assert r["rouge1"] == pytest.approx(10 / 11)         # 5 common chars: P = 5/6, R = 5/5
    assert r["rouge2"] == pytest.approx(2 * 0.6 * 0.75 / 1.35)   # bigrams: 3 common of 5 (pred) and 4 (ref)
    assert r["rougeL"] == pytest.approx(10 / 11)
    assert M.rouge("Привет, мир!", "привет мир")["rouge1"] == 1.0   # Cyrillic kept, lower-cased
    try:                                                  # the real package, when it happens to be installed
        from rouge_score import rouge_scorer
    except ImportError:
        return
    assert rouge_scorer.RougeScorer(["rouge1"]).score(ref, pred)["rouge1"].fmeasure == 0.0


def test_rouge_l_on_known_pairs_in_several_scripts():
    assert M.rouge_l("the cat sat on the mat", "The cat lay on the mat.") == pytest.approx(5 / 6)
    # Japanese by character: この文章を + してください in common = 11 of 13 characters each
    assert M.rouge_l("この文章を要約してください", "この文章を翻訳してください") == pytest.approx(11 / 13)
    # Thai by character with its marks: สวัสดี = ส|วั|ส|ดี, 4 of the 7 of สวัสดีครับ
    assert M.rouge_tokens("สวัสดีครับ") == ["ส", "วั", "ส", "ดี", "ค", "รั", "บ"]
    assert M.rouge_l("สวัสดี", "สวัสดีครับ") == pytest.approx(8 / 11)
    assert M.rouge_l("안녕하세요", "안녕히 가세요") == pytest.approx(2 * 4 / (5 + 6))   # 안녕 세요 by syllable
    assert M.rouge_l("مَرْحَبًا بِالعالم", "مرحبا بالعالم") == 1.0                     # harakat do not count
    assert M.rouge_l("Привет, МИР!", "привет мир") == 1.0
    assert M.rouge_l("Escribe un poema sobre el mar", "Escribe un cuento sobre la montaña") == pytest.approx(6 / 12)
    assert M.rouge_l("", "x") == 0.0
    # the original self-instruct scorer (rouge_score's default tokenizer keeps [a-z0-9] only) sees nothing here
    assert re.sub(r"[^a-z0-9]+", " ", "この文章を要約してください".lower()).split() == []
    assert M.rouge("この文章を要約してください", "この文章を翻訳してください")["rougeL"] == pytest.approx(11 / 13)


def test_korean_is_spaced_but_rouge_counts_its_syllables():
    from common import SPACELESS
    assert "ko" not in SPACELESS and SPACELESS == {"zh", "ja", "th"}
    # an eojeol glues particles and endings to the stem: the same request, politely or not, shares no whole eojeol
    a, b = "이 그림을 설명하세요", "이 그림에 대해 설명해 주세요"
    assert M.rouge_l(a.split(), b.split()) == pytest.approx(2 * 1 / (3 + 5))        # only "이" in common
    assert M.rouge_tokens("그림을 그려") == ["그", "림", "을", "그", "려"]
    assert M.rouge_l(a, b) == pytest.approx(2 * 7 / (9 + 12))       # by syllable: 이 그 림 설 명 세 요 in common
    # EM/F1 stay the SQuAD script's for Korean (whitespace words), as the TyDiQA-GoldP authors score it
    assert M.qa_tokens("서울 특별시", "ko") == ["서울", "특별시"]
    # full-width forms are the same letters (NFKC)
    assert M.rouge_tokens("ＧＰＴ４") == ["gpt4"]


def test_bit_parallel_lcs_equals_dynamic_programming():
    def dp(a, b):
        t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
        return t[-1][-1]
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.randrange(6) for _ in range(rng.randrange(70))]
        b = [rng.randrange(6) for _ in range(rng.randrange(70))]
        assert M.lcs_len(a, b) == dp(a, b)
        masks = M.lcs_masks(a)
        assert M.lcs_len(a, b, masks) == dp(a, b)


def test_bleu_chrf_are_sacrebleus_numbers_with_the_right_tokenizer():
    import sacrebleu
    hyps = ["The cat sat on the mat.", "It is raining today", "Completely different"]
    refs = ["The cat is on the mat.", "It is raining today.", "Something else entirely."]
    ours = M.bleu_chrf(hyps, refs, "de")
    assert ours["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)
    assert ours["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert "tok:13a" in ours["bleu_signature"] and "version:" in ours["chrf_signature"]
    zh_h, zh_r = ["我今天很高兴。", "天气很好"], ["我今天非常高兴。", "今天天气很好"]
    z = M.bleu_chrf(zh_h, zh_r, "zh")
    assert z["bleu"] == pytest.approx(sacrebleu.corpus_bleu(zh_h, [zh_r], tokenize="zh").score) and z["bleu"] > 0
    assert "tok:zh" in z["bleu_signature"]
    assert M.bleu_tokenizer("th")[0] == "char" and M.bleu_tokenizer("ja")[0] in ("ja-mecab", "char")


def test_mean_of_nothing_is_nan():
    assert math.isnan(M.mean([])) and M.mean([1, 2]) == 1.5
