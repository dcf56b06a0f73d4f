"""Loaders read each benchmark's official file format (tiny fixtures we wrote, tests/fixtures/, and the bundled
data/eval/); templates produce lm-eval-harness's exact strings."""
import json
from pathlib import Path

import pytest

from tasks import benchmarks as B

FIX = Path(__file__).resolve().parent / "fixtures"
EVAL = Path(__file__).resolve().parents[1] / "data" / "eval"


# ----------------------------------------------------------------------------- templates (lm-eval-harness strings)

def test_xcopa_template_drops_the_period_adds_the_connective_and_lowercases_choices():
    doc = {"premise": "该物品用气泡包装纸包着。", "choice1": "它很易碎。", "choice2": "它很小。", "question": "cause",
           "label": 0}
    it = B.xcopa_item(doc, "zh")
    assert it["contexts"] == ["该物品用气泡包装纸包着 因为"] * 2
    assert it["continuations"] == [" 它很易碎。", " 它很小。"] and it["gold"] == 0
    doc = {"premise": "L'uomo aprì il rubinetto.", "choice1": "Il water si riempì d'acqua.",
           "choice2": "L'acqua fluì dal beccuccio.", "question": "effect", "label": 1}
    it = B.xcopa_item(doc, "it")
    assert it["contexts"][0] == "L'uomo aprì il rubinetto quindi"
    assert it["continuations"] == [" il water si riempì d'acqua.", " l'acqua fluì dal beccuccio."]
    assert it["example"] == "L'uomo aprì il rubinetto quindi l'acqua fluì dal beccuccio."
    assert it["choice_lens"] == [len("il water si riempì d'acqua."), len("l'acqua fluì dal beccuccio.")]


def test_xnli_template_is_the_right_yes_also_no_cloze():
    it = B.xnli_item({"premise": "The cat sleeps", "hypothesis": "A cat rests", "label": 2}, "en")
    assert it["contexts"][0] == "The cat sleeps, right?"
    assert it["continuations"] == [" Yes, A cat rests", " Also, A cat rests", " No, A cat rests"] and it["gold"] == 2
    assert B.xnli_item({"premise": "猫睡了", "hypothesis": "猫在休息", "label": 0}, "zh")["continuations"][2] == \
        " 不是的, 猫在休息"


def test_pawsx_template_v1_puts_yes_at_the_paraphrase_label():
    it = B.pawsx_item({"sentence1": "A", "sentence2": "B", "label": 1}, "en")
    assert it["contexts"] == ["", ""] and it["gold"] == 1
    assert it["continuations"] == ["A, right? No, B", "A, right? Yes, B"]      # label 1 (paraphrase) -> "Yes"
    assert B.pawsx_item({"sentence1": "A", "sentence2": "B", "label": 0}, "fr")["continuations"][0] == \
        "A, n'est-ce pas? Non, B"


def test_xwinograd_partial_scoring_has_two_contexts_and_one_continuation():
    doc = {"sentence": "The trophy does not fit in the suitcase because _ is too big.", "option1": "the trophy",
           "option2": "the suitcase", "answer": "1"}
    it = B.xwinograd_item(doc, "en")
    assert it["contexts"] == ["The trophy does not fit in the suitcase because the trophy",
                              "The trophy does not fit in the suitcase because the suitcase"]
    assert it["continuations"] == [" is too big."] * 2 and it["gold"] == 0
    assert it["choice_lens"] == [len(c) for c in it["contexts"]]


# ----------------------------------------------------------------------------- official formats (fixtures)

def test_xwinograd_tsv_rows_become_blanked_sentences_even_with_nltk_quotes():
    docs, files = B.load_xwinograd(FIX / "xwinograd" / "dataset.tsv", "en")
    assert [d["sentence"] for d in docs] == ["The ball broke the table because _ was made of steel.",
                                             'Ann said "hi" to Bea because _ was polite.']
    assert (docs[0]["option1"], docs[0]["option2"], docs[0]["answer"]) == ("The ball", "the table", "1")
    ja, _ = B.load_xwinograd(FIX / "xwinograd" / "dataset.tsv", "ja")          # "ja" reads the file's "jp" rows
    assert ja[0]["sentence"] == "猫はネズミを追いかけた。_はお腹が空いていたからだ。"


def test_xnli_reads_the_release_tsv_by_language_and_skips_unlabelled_rows():
    docs, _ = B.load_xnli(FIX / "xnli", "en")
    assert [d["label"] for d in docs] == [0, 2, 1]
    assert docs[0] == {"premise": "The cat sleeps on the warm mat.", "hypothesis": "A cat is sleeping.", "label": 0}
    assert len(B.load_xnli(FIX / "xnli", "zh")[0]) == 3
    with pytest.raises(B.MissingData, match="XNLI-1.0.zip"):
        B.load_xnli(FIX / "nowhere", "en")


def test_pawsx_reads_x_final_tsv_with_quotes_kept():
    docs, _ = B.load_pawsx(FIX / "pawsx", "en")
    assert docs[2]["sentence1"] == 'She wrote "Home" in 2001 .' and [d["label"] for d in docs] == [1, 0, 1]
    assert len(B.load_pawsx(FIX / "pawsx", "zh", "dev")[0]) == 2


def test_tydiqa_reads_squad_json_and_takes_the_language_from_the_id():
    en, files = B.load_squad_json(FIX / "tydiqa" / "tydiqa-goldp-v1.1-dev.json", "en")
    assert [d["answers"] for d in en] == [["Paris"], ["1889", "in 1889"]]
    assert len(B.load_squad_json(FIX / "tydiqa", "ko")[0]) == 1                # a folder of files works too
    it = B.tydiqa_item(en[0], "en")
    assert it["prompt"].endswith("\nQuestion: Where is the Eiffel Tower?\nAnswer:") and it["answer"] == " Paris"
    ar = B.tydiqa_item(B.load_squad_json(FIX / "tydiqa", "ar")[0][0], "ar")
    assert ar["prompt"].startswith("المقطع: ") and ar["prompt"].endswith("الإجابة:")


def test_mtg_reads_line_aligned_src_tgt():
    docs, files = B.load_mtg(FIX / "mtg", "story", "en")
    assert len(docs) == 2 and docs[1]["tgt"] == "Ann got her keys back." and len(files) == 2
    it = B.mtg_item(B.load_mtg(FIX / "mtg", "summ", "zh")[0][0], "summ")
    assert it["prompt"].startswith("Document: 今天上午") and it["prompt"].endswith("\nSummary:")
    with pytest.raises(B.MissingData, match="zide05/MTG"):
        B.load_mtg(FIX / "mtg", "story", "zh")


def test_wmt20_reads_sacrebleu_files_and_release_sgml():
    pool, docs, _ = B.load_wmt20(FIX / "wmt20", "en", "de")
    assert pool == [] and docs[2] == {"src": "Prices rose by 3% in March.", "ref": "Die Preise stiegen im März um 3 %."}
    _, docs, _ = B.load_wmt20(FIX / "wmt20", "de", "en")                      # sgm/newstest2020-deen-*.sgm
    assert docs[1] == {"src": "Wir gehen auf den Markt.", "ref": "We are going to the market & fair."}
    it = B.translation_item(docs[0], "de", "en")
    assert it["prompt"] == "German: Das Wetter ist heute schön.\nEnglish:" and it["answer"] == " The weather is nice today."
    with pytest.raises(B.MissingData, match="newstest2020-jaen"):
        B.load_wmt20(FIX / "wmt20", "ja", "en")


WMT_DE = ["Das Wetter ist heute schön.", "Wir gehen auf den Markt.", "Die Preise stiegen im März um 3 %."]
WMT_EN = ["The weather is nice today.", "We are going to the market.", "Prices rose by 3% in March."]


def _sgm(path, lines, kind):
    path.parent.mkdir(parents=True, exist_ok=True)
    segs = "".join(f'<seg id="{i}">{x}</seg>\n' for i, x in enumerate(lines, 1))
    path.write_text(f'<{kind} setid="newstest2020" srclang="any">\n<doc sysid="ref" docid="d" genre="news" '
                    f'origlang="de">\n{segs}</doc>\n</{kind}>\n', encoding="utf-8")


def _plain(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(x + "\n" for x in lines), encoding="utf-8")


WMT20_LAYOUTS = {   # name: how to lay out de->en (German source WMT_DE, English reference WMT_EN) under a folder
    "sacrebleu 2.x extracted": lambda d: (_plain(d / "wmt20.de-en.src", WMT_DE), _plain(d / "wmt20.de-en.ref", WMT_EN)),
    "sacrebleu 1.x extracted": lambda d: (_plain(d / "wmt20.de-en.de", WMT_DE), _plain(d / "wmt20.de-en.en", WMT_EN)),
    "sacrebleu raw/ (tgz unpacked)": lambda d: (_sgm(d / "raw/sgm/newstest2020-deen-src.de.sgm", WMT_DE, "srcset"),
                                                _sgm(d / "raw/sgm/newstest2020-deen-ref.en.sgm", WMT_EN, "refset")),
    "official sgm/": lambda d: (_sgm(d / "sgm/newstest2020-deen-src.de.sgm", WMT_DE, "srcset"),
                                _sgm(d / "sgm/newstest2020-deen-ref.en.sgm", WMT_EN, "refset")),
    "official, flat": lambda d: (_sgm(d / "newstest2020-deen-src.de.sgm", WMT_DE, "srcset"),
                                 _sgm(d / "newstest2020-deen-ref.en.sgm", WMT_EN, "refset")),
    "OPUS-MT-testsets, 3-letter": lambda d: (_plain(d / "deu-eng/newstest2020.deu", WMT_DE),
                                             _plain(d / "deu-eng/newstest2020.eng", WMT_EN)),
    "OPUS-MT-testsets, 2-letter": lambda d: (_plain(d / "de-en/newstest2020.de", WMT_DE),
                                             _plain(d / "de-en/newstest2020.en", WMT_EN)),
    "OPUS-MT-testsets, direction in the name": lambda d: (_plain(d / "testsets/de-en/newstest2020-deen.de", WMT_DE),
                                                          _plain(d / "testsets/de-en/newstest2020-deen.en", WMT_EN)),
}


@pytest.mark.parametrize("layout", list(WMT20_LAYOUTS))
def test_wmt20_reads_the_layouts_people_have(tmp_path, layout):
    WMT20_LAYOUTS[layout](tmp_path)
    pool, docs, files = B.load_wmt20(tmp_path, "de", "en")
    assert pool == [] and docs == [{"src": d, "ref": e} for d, e in zip(WMT_DE, WMT_EN)] and len(files) == 2
    with pytest.raises(B.MissingData, match="WMT20 en-de: none of"):        # the other direction is another test
        B.load_wmt20(tmp_path, "en", "de")                                  # set: never read backwards


def test_wmt20_finds_sacrebleus_cache_from_above_and_says_where_to_get_it(tmp_path):
    WMT20_LAYOUTS["sacrebleu 2.x extracted"](tmp_path / "wmt20")
    # --wmt20_dir=~/.sacrebleu (one folder above the cache) works too
    assert B.load_wmt20(tmp_path, "de", "en")[1][0] == {"src": WMT_DE[0], "ref": WMT_EN[0]}
    _plain(tmp_path / "wmt20" / "wmt20.en-de.src", WMT_EN)
    _plain(tmp_path / "wmt20" / "wmt20.en-de.ref", WMT_DE[:2])
    with pytest.raises(ValueError, match="3 lines.*2: they must be line-aligned"):
        B.load_wmt20(tmp_path, "en", "de")
    with pytest.raises(B.MissingData, match="sacrebleu -t wmt20"):
        B.load_wmt20(tmp_path / "nowhere", "de", "en")


def test_data_hash_changes_with_content(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x")
    h = B.data_hash([a])
    assert h == B.data_hash([a, a]) and len(h) == 16
    a.write_text("y")
    assert B.data_hash([a]) != h


# ----------------------------------------------------------------------------- the bundled data (data/eval)

def test_bundled_xcopa_and_xwinograd_are_complete():
    for lang in ("id", "it", "th", "tr", "vi", "zh"):
        assert len(B.load_xcopa(EVAL / "xcopa", lang)[0]) == 500 and len(B.load_xcopa(EVAL / "xcopa", lang, "val")[0]) == 100
    # every row converts (the Hugging Face copy lm-eval-harness reads has these counts, except zh: 504 there)
    counts = {lang: len(B.load_xwinograd(EVAL / "xwinograd" / "dataset.tsv", lang)[0])
              for lang in ("en", "fr", "ja", "pt", "ru", "zh")}
    assert counts == {"en": 2325, "fr": 83, "ja": 959, "pt": 263, "ru": 315, "zh": 16}
    docs, _ = B.load_xwinograd(EVAL / "xwinograd" / "dataset.tsv", "en")
    assert docs[0]["sentence"] == "The city councilmen refused the demonstrators a permit because _ feared violence."
    assert all(d["sentence"].count("_") >= 1 for d in docs)


def test_bundled_translation_slices_are_aligned():
    lines = {p.stem: p.read_text(encoding="utf-8").splitlines() for p in (EVAL / "ntrex").glob("*.txt")}
    assert len(lines) == 18 and {len(v) for v in lines.values()} == {100}
    pool, docs, _ = B.load_ntrex(EVAL / "ntrex", "en", "de")
    assert len(pool) == 10 and len(docs) == 90 and docs[0]["src"] == lines["en"][10]
    pool, docs, _ = B.load_tatoeba(EVAL / "tatoeba", "th", "en")
    assert len(pool) == 10 and len(docs) == 90 and all(d["src"] and d["ref"] for d in docs)
    readme = (EVAL / "README.md").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in readme and (EVAL / "LICENSES" / "NTREX__LICENSE.md").exists()
    from common import LANG_NAMES
    assert json.loads(json.dumps(LANG_NAMES))["th"] == "Thai" and B.LANG_NAMES is LANG_NAMES   # one table
