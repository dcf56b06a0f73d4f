"""corpus.py: every input format a real corpus comes in, bad records counted by reason, and the language a path
declares under the big corpora's naming conventions."""
import gzip
import json
import lzma
from collections import Counter

import pytest

import corpus
from corpus import DataError


def write(path, text, comp=None):
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if comp == "gz":
        raw = gzip.compress(raw)
    elif comp == "xz":
        raw = lzma.compress(raw)
    elif comp == "zst":
        import zstandard
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    return path


def test_txt_jsonl_gz_xz_zst_and_bad_utf8(tmp_path):
    write(tmp_path / "a.txt", b"one\n\n  two  \nbad \xff byte\n")
    assert list(corpus.read_documents(tmp_path / "a.txt")) == ["one", "two", "bad \ufffd byte"]
    write(tmp_path / "b.jsonl", '{"text": "x y"}\n{"text": "z", "lang": "en"}\n')
    assert list(corpus.read_documents(tmp_path / "b.jsonl")) == ["x y", "z"]
    for comp in ("gz", "xz", "zst"):
        write(tmp_path / f"c.txt.{comp}", "compressed line\nsecond\n", comp)
        assert list(corpus.read_documents(tmp_path / f"c.txt.{comp}")) == ["compressed line", "second"]
    (tmp_path / "p.txt").write_text("para one\nline two\n\n\npara two\n")
    assert list(corpus.read_records(tmp_path / "p.txt", "blank")) == [("para one\nline two", None), ("para two", None)]


def test_oscar_content_field_mc4_json_gz_and_text_field(tmp_path):
    oscar = write(tmp_path / "en_meta_part_1.jsonl.zst", "".join(json.dumps(
        {"content": f"doc {i}", "warc_headers": {}, "metadata": {"identification": {"label": "en"}}}) + "\n"
        for i in range(3)), "zst")
    assert [t for t, _ in corpus.read_records(oscar)] == ["doc 0", "doc 1", "doc 2"]
    got = list(corpus.read_records(oscar, lang_field="metadata.identification.label"))
    assert got[0] == ("doc 0", "en")
    mc4 = write(tmp_path / "c4-ja.tfrecord-00000-of-01024.json.gz", json.dumps(
        {"text": "日本語の文", "timestamp": "2020", "url": "u"}) + "\n", "gz")
    assert corpus.file_format(mc4) == ("jsonl", "gz")
    assert list(corpus.read_records(mc4)) == [("日本語の文", None)]      # the text, not the raw JSON line
    body = write(tmp_path / "b.jsonl", '{"body": {"t": "nested"}}\n')
    assert list(corpus.read_records(body, text_field="body.t")) == [("nested", None)]


def test_parquet_streamed_by_row_group_with_label(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    table = pa.table({"id": list(range(10)), "text": [f"row {i}" if i != 3 else None for i in range(10)],
                      "language": ["de"] * 5 + ["uk"] * 5})
    path = tmp_path / "deu_Latn" / "000_00000.parquet"
    path.parent.mkdir()
    pq.write_table(table, path, row_group_size=3)
    assert corpus.parquet_row_groups(path)[0] == 4
    stats = Counter()
    assert [t for t, _ in corpus.read_records(path, start=1, end=3, stats=stats)] == ["row 4", "row 5", "row 6",
                                                                                        "row 7", "row 8"]
    assert stats == {"bad_record:null_text": 1}
    labels = [lang for _, lang in corpus.read_records(path, lang_field="language", stats=Counter())]
    assert labels == ["de"] * 4 + ["other"] * 5
    with pytest.raises(DataError, match="no 'body' column; it has id, text, language"):
        list(corpus.read_records(path, text_field="body"))


def test_bad_records_are_counted_by_reason_or_named_with_file_and_line(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"text": "x", "lang": "de"}\nnot json\n"a string"\n{"body": 1}\n'
                                       b'{"text": 5}\n{"text": null}\n{"text": "y \xff"}\n')
    stats = Counter()
    assert list(corpus.read_records(path, stats=stats)) == [("x", None), ("y \ufffd", None)]
    assert stats == {"bad_record:not_json": 1, "bad_record:not_object": 1, "bad_record:no_text_field": 1,
                     "bad_record:text_not_string": 1, "bad_record:null_text": 1, "bad_utf8_lines": 1}
    with pytest.raises(DataError, match=r"a\.jsonl:2: expected a JSON object"):
        list(corpus.read_records(path))
    arr = write(tmp_path / "arr.json", '[{"text": "a"}, {"text": "b"}]\n')
    with pytest.raises(DataError, match="a JSON array, not JSON lines"):
        list(corpus.read_records(arr, stats=Counter()))


def test_unknown_formats_are_errors_that_name_the_file_and_the_formats(tmp_path):
    for name in ("x.bz2", "x.csv", "x.parquet.gz", "notes"):
        with pytest.raises(DataError, match=name.replace(".", r"\.") + r": .*(accepted: \.txt|parquet compresses)"):
            corpus.file_format(tmp_path / name)
    assert not corpus.is_data_file("README.md") and not corpus.is_data_file(".gitattributes")
    assert corpus.is_data_file("000_00000.parquet")
    with pytest.raises(DataError, match="en-<xx>.tsv"):
        corpus.tsv_lang(tmp_path / "pairs.tsv")


@pytest.mark.parametrize("path,lang,skip", [
    ("mono/de.txt", "de", None), ("de.jsonl.zst", "de", None), ("web/raw/part-0.jsonl", None, None),
    ("data/deu_Latn/train/000_00000.parquet", "de", None), ("data/cmn_Hani/train/000_00000.parquet", "zh", None),
    ("data/rus_Cyrl/test/000_00000.parquet", "ru", None), ("data/ukr_Cyrl/train/000_00000.parquet", "other", "other_lang"),
    ("data/rus_Latn/train/0.parquet", "other", "other_lang"), ("data/deu_Latn_removed/train/0.parquet", "de", "removed"),
    ("c4-ja.tfrecord-00000-of-01024.json.gz", "ja", None), ("c4-iw-validation.tfrecord-00000-of-00004.json.gz", "he", None),
    ("c4-ja-Latn.tfrecord-00000-of-00001.json.gz", "other", "other_lang"), ("c4-fa.tfrecord-00000-of-00100.json.gz", "other", "other_lang"),
    ("th/th_part_00000.parquet", "th", None), ("ca/ca_part_00003.parquet", "other", "other_lang"),
    ("en_meta/en_meta_part_1.jsonl.zst", "en", None), ("fil_meta/fil_meta_part_1.jsonl.zst", "other", "other_lang"),
    ("data/id/id_clean_0000.jsonl.gz", "id", None), ("data/id/id_noisy_0000.jsonl.gz", "id", "noisy"),
    ("data/ms/ms_clean_0000.jsonl.gz", "other", "other_lang"), ("uk/news.txt", "other", "other_lang"),
])
def test_language_from_the_path_with_the_big_corpora_conventions(tmp_path, path, lang, skip):
    root = tmp_path / "corpus"
    f = root / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("x\n")
    assert corpus.lang_from_path(f, root) == (lang, skip)


def test_only_the_path_below_the_named_input_declares_a_language(tmp_path):
    root = tmp_path / "it" / "corpus"                                   # "it" above the input: not Italian
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.txt").write_text("x\n")
    assert corpus.lang_from_path(root / "a" / "x.txt", root) == (None, None)
    de = tmp_path / "deu_Latn"                                          # the named input itself declares it
    (de / "train").mkdir(parents=True)
    (de / "train" / "0.parquet").write_text("")
    assert corpus.lang_from_path(de / "train" / "0.parquet", de) == ("de", None)


def test_normalize_lang():
    assert [corpus.normalize_lang(c) for c in ("de", "deu", "deu_Latn", "pt-BR", "zh_Hans", "cmn_Hani", "iw",
                                               "arb_Arab", "jpn_Jpan", "kor_Hang")] == \
        ["de", "de", "de", "pt", "zh", "zh", "he", "ar", "ja", "ko"]
    assert [corpus.normalize_lang(c) for c in ("uk", "cat_Latn", "ja-Latn", "zsm_Latn", "raw", "data", "web")] == \
        ["other", "other", "other", "other", None, None, None]
