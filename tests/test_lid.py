"""lid.py: the shipped model's accuracy on held-out sentences of the 18, its rejection of held-out sentences of 73
other languages (FLORES-200 test split, shipped as data/lid/flores_other_test.tsv.gz), "other", the CLI,
train/calibrate/save/load."""
import numpy as np
import pytest

import data
import lid

SAMPLE = lid.Path(__file__).resolve().parents[1] / "data" / "sample" / "mono"


@pytest.fixture(scope="module")
def model():
    return lid.LanguageIdentifier.load()


def test_shipped_model_is_small_and_covers_the_18_languages(model):
    assert lid.MODEL_PATH.stat().st_size < 2_000_000
    # PolyLM's 18, in the paper's order (data.py used to re-export them as data.LANGS; it is being rewritten)
    assert model.langs == lid.LANGS == "zh en es de fr pt ru it ar ja ko th vi id pl tr nl he".split()


def test_heldout_accuracy_at_least_99_mean_and_97_each(model):
    # the held-out slice (content hash < HOLDOUT) was never used in training (lid.py docstring: Train)
    acc, confusion = lid.evaluate(model, lid.read_corpus(SAMPLE, heldout=True))
    print({k: round(v, 4) for k, v in acc.items()}, confusion)
    assert np.mean(list(acc.values())) >= 0.99
    assert min(acc.values()) >= 0.97, acc


def test_scripts_and_other(model):
    texts = ["The weather is lovely today, isn't it?", "今天天气很好，我们去公园吧。", "今日はとても良い天気ですね。",
             "오늘 날씨가 정말 좋네요.", "วันนี้อากาศดีมาก", "Сегодня прекрасная погода.", "Καλημέρα σε όλους",
             "12345 !!! ---", "", "नमस्ते दुनिया", "Hôm nay trời đẹp quá.", "Bugün hava çok güzel."]
    assert model.predict(texts) == ["en", "zh", "ja", "ko", "th", "ru", "other", "other", "other", "other", "vi", "tr"]


def test_close_pairs_on_ordinary_sentences(model):
    texts = ["Eu não sei o que fazer com a minha vida agora.", "Yo no sé qué hacer con mi vida ahora.",
             "Non so cosa fare della mia vita adesso.", "Ik weet niet wat ik nu met mijn leven moet doen.",
             "Ich weiß nicht, was ich jetzt mit meinem Leben anfangen soll.",
             "Saya tidak tahu apa yang harus saya lakukan dengan hidup saya sekarang."]
    assert model.predict(texts) == ["pt", "es", "it", "nl", "de", "id"]


def test_train_save_load_roundtrip(tmp_path):
    corpus = {"en": ["the cat sat on the mat", "where is the house"] * 20,
              "de": ["die Katze sitzt auf der Matte", "wo ist das Haus"] * 20}
    m = lid.train(corpus, top_k=200)
    m.save(tmp_path / "m.npz")
    m2 = lid.LanguageIdentifier.load(tmp_path / "m.npz")
    texts = ["the house is where the cat is", "das Haus ist wo die Katze ist"]
    assert m.predict(texts) == m2.predict(texts) == ["en", "de"]


def test_cli_prints_one_code_per_line(tmp_path, capsys):
    f = tmp_path / "x.txt"
    f.write_text("Good morning, how are you doing today?\n\nBonjour, comment allez-vous aujourd'hui ?\n")
    data.main(["--lid", str(f)])
    assert capsys.readouterr().out.split("\n")[:3] == ["en", "other", "fr"]


def test_hash_index_lookup():
    keys = np.array([5, 17, 2**63 + 1, 123456789], dtype=np.uint64)
    idx = lid.HashIndex(keys)
    assert idx.lookup(np.array([17, 5, 99, 2**63 + 1], dtype=np.uint64)).tolist() == [1, 0, -1, 2]


def test_rejects_heldout_sentences_of_other_languages(model):
    # FLORES-200 lines with index % 10 == 0: never used in training or calibration (lid.flores_split)
    lines = lid.read_other(lid.OTHER_TEST, "test")
    assert len(lines) == 73 and all(len(v) >= 100 for v in lines.values())
    rej, accepted = lid.rejection(model, lines)
    overall = sum(rej[c] * len(v) for c, v in lines.items()) / sum(len(v) for v in lines.values())
    print({k: round(v, 3) for k, v in rej.items()}, accepted)
    assert overall >= 0.97
    assert all(r >= 0.90 for c, r in rej.items() if c != "zsm"), rej
    assert rej["zsm"] >= 0.3        # Malay, the hardest: py3langid (97 languages) rejects it more, but takes 15% of id


def test_shipped_other_slice_is_the_flores_test_split():
    with lid.gzip.open(lid.OTHER_TEST, "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    assert {lid.flores_split(int(i)) for _, i, _ in rows} == {"test"}
    assert lid.read_other(lid.OTHER_TEST, "train") == {}
    assert lid.OTHER_TEST.stat().st_size < 1_500_000


def test_neighbour_languages_are_other(model):
    texts = ["Я не знаю, що мені тепер робити зі своїм життям.",          # Ukrainian (not ru)
             "No sé què fer amb la meva vida ara mateix.",                    # Catalan (not es)
             "من نمی‌دانم اکنون با زندگی‌ام چه کار کنم.",                     # Persian (not ar)
             "Ek weet nie wat ek nou met my lewe moet doen nie.",             # Afrikaans (not nl)
             "Beliau berkata bahawa kerajaan akan membina lebih banyak hospital tahun hadapan.",   # Malay (not id)
             "Dia mengatakan bahwa pemerintah akan membangun lebih banyak rumah sakit tahun depan."]  # Indonesian
    assert model.predict(texts) == ["other"] * 5 + ["id"]


def test_indonesian_malay_discriminator_learnt_real_spelling_differences(model):
    # learnt from data (id: data/sample-style text; zsm: FLORES), not hand-listed: Malay forms weigh towards zsm
    w = model.discriminators["id"].weights
    for malay, indonesian in (("bahawa", "bahwa"), ("kerana", "karena"), ("haiwan", "hewan"), ("bahagian", "bagian")):
        assert w[malay] > 0 > w[indonesian], (malay, w.get(malay), indonesian, w.get(indonesian))


def test_train_with_other_languages_calibrate_save_load(tmp_path):
    corpus = {"en": ["the cat sat on the mat", "where is the house", "this is my house"] * 20,
              "de": ["die Katze sitzt auf der Matte", "wo ist das Haus", "das ist mein Haus"] * 20}
    others = {"afr": ["die kat sit op die mat", "waar is die huis", "dit is my huis"] * 20,
              "ell": ["η γάτα κάθεται στο χαλί"] * 20}                       # Greek: a script no target uses
    m = lid.train(corpus, top_k=200, others=others, other_top_k=100)
    assert (m.langs, m.others, m.other_scripts) == (["en", "de"], ["afr"], ["latin"])   # Greek needs no class
    texts = ["the house is where the cat is", "das Haus ist wo die Katze ist", "waar is die kat", "η γάτα"]
    assert m.predict(texts) == ["en", "de", "other", "other"]
    rejected = lid.calibrate(m, {"en": ["where is the cat", "the mat is my house"], "de": ["wo ist die Katze"]})
    assert rejected == {"en": 0.0, "de": 0.0} and m.margin >= 0
    m.save(tmp_path / "m.npz")
    m2 = lid.LanguageIdentifier.load(tmp_path / "m.npz")
    assert (m2.others, m2.margin) == (m.others, m.margin)
    assert m2.predict(texts) == m.predict(texts)


def test_cli_help_train_eval_and_bad_paths(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        lid.main(["--help"])
    assert e.value.code == 0 and "--train" in capsys.readouterr().out
    for args in (["--eval=/nonexistent/mono"], [f"--label={tmp_path / 'missing.txt'}"],
                 [f"--eval={SAMPLE}", "--other=/nonexistent/flores"],
                 [f"--eval={SAMPLE}", f"--model={tmp_path}/m.npz"], ["--top_k=many"]):
        with pytest.raises(SystemExit) as e:
            lid.main(args)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, (args, err)
    f = tmp_path / "x.txt"
    f.write_text("Good morning, how are you doing today?\nBon dia, com estàs avui?\n")
    lid.main([str(f)])                                                   # the old form: python lid.py FILE
    assert capsys.readouterr().out.split() == ["en", "other"]
