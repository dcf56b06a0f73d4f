"""data.py: reading raw text, the deterministic split, the shard format and the cached prepare step."""
import gzip
import json

import numpy as np
import pytest

import data


def test_read_documents_txt_jsonl_gz_and_bad_utf8(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"one\n\n  two  \nbad \xff byte\n")
    assert list(data.read_documents(tmp_path / "a.txt")) == ["one", "two", "bad \ufffd byte"]
    (tmp_path / "b.jsonl").write_text('{"text": "x y"}\n{"text": "z", "lang": "en"}\n')
    assert list(data.read_documents(tmp_path / "b.jsonl")) == ["x y", "z"]
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("gz line\n")
    assert list(data.read_documents(tmp_path / "c.txt.gz")) == ["gz line"]


def test_jsonl_without_text_field_names_file_and_line(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{"body": "no"}\n')
    with pytest.raises(data.DataError, match=r"b\.jsonl:2.*'text'"):
        list(data.read_documents(tmp_path / "b.jsonl"))


def test_split_is_deterministic_by_content_and_keeps_pair_directions_together(tiny_data_dir):
    tr1, va1 = data.split_documents("mono", tiny_data_dir / "mono" / "en.txt", 0.1)
    tr2, va2 = data.split_documents("mono", tiny_data_dir / "mono" / "en.txt", 0.1)
    assert (tr1, va1) == (tr2, va2) and 10 < len(va1) < 80 and len(tr1) + len(va1) == 400
    assert all(data.is_val(d, 0.1) for d in va1)
    tr, va = data.split_documents("bilingual", tiny_data_dir / "parallel" / "en-th.tsv", 0.2)
    for docs in (tr, va):
        for d in docs:
            a, b = d.split("\n")
            assert f"{b}\n{a}" in docs


def test_val_mask_is_is_val_and_splits_evenly():
    docs = (data.ROOT / "data" / "sample" / "mono" / "de.txt").read_text().splitlines()
    mask = data.val_mask(docs, 0.1)
    assert mask == [data.is_val(d, 0.1) for d in docs]
    assert 0.09 < np.mean(mask) < 0.11                                  # binomial sigma over 2,380 lines: 0.006


def test_shard_roundtrip_uint16_and_uint32(tmp_path):
    toks = np.array([0, 5, 65535, 7])
    data.write_shard(tmp_path / "a.bin", toks, "ab" * 32, vocab_size=65536)
    got = data.read_shard(tmp_path / "a.bin", "ab" * 32)
    assert got.dtype == np.uint16 and got.tolist() == toks.tolist()
    big = np.array([0, 255_999, 70_000])
    data.write_shard(tmp_path / "b.bin", big, "cd" * 32, vocab_size=256_000)
    got = data.read_shard(tmp_path / "b.bin")
    assert got.dtype == np.uint32 and got.tolist() == big.tolist()
    assert [p.name for p in tmp_path.iterdir()] == sorted(["a.bin", "b.bin"]) or len(list(tmp_path.iterdir())) == 2


def test_reading_with_another_tokenizer_is_an_error(tmp_path):
    data.write_shard(tmp_path / "a.bin", np.arange(10), "ab" * 32, vocab_size=100)
    with pytest.raises(data.DataError, match="re-tokenize"):
        data.read_shard(tmp_path / "a.bin", "ff" * 32)


def test_truncated_or_foreign_shard_is_an_error(tmp_path):
    data.write_shard(tmp_path / "a.bin", np.arange(10), "ab" * 32, vocab_size=100)
    raw = (tmp_path / "a.bin").read_bytes()
    (tmp_path / "a.bin").write_bytes(raw[:-4])
    with pytest.raises(data.DataError, match="truncated"):
        data.read_shard(tmp_path / "a.bin")
    (tmp_path / "c.bin").write_bytes(b"x" * 100)
    with pytest.raises(data.DataError, match="not a version-1"):
        data.read_shard(tmp_path / "c.bin")


def test_token_id_beyond_vocab_refused(tmp_path):
    with pytest.raises(data.DataError, match="vocab_size"):
        data.write_shard(tmp_path / "a.bin", np.array([1, 300]), "ab" * 32, vocab_size=257)


def test_prepare_writes_shards_manifest_and_reuses_cache(tiny_data_dir, tmp_path, byte_enc):
    out, logs = tmp_path / "shards", []
    m = data.prepare(tiny_data_dir, byte_enc, "ab" * 32, out, 0.1, log=logs.append)
    assert set(m["sources"]) == {"en", "th", "zh", "bi.en-th"}
    assert m["sources"]["bi.en-th"]["kind"] == "bilingual" and m["sources"]["bi.en-th"]["lang"] == "th"
    train = data.load_shards(out, m, "train")
    en = train["en"]
    assert len(en) == m["sources"]["en"]["train"]["tokens"]
    eot = byte_enc.eot_token
    docs = bytes(t for t in en.tolist() if t != eot).decode()    # byte tokens -> text, EOTs dropped
    assert "English sentence number" in docs
    assert int((np.asarray(en) == eot).sum()) == m["sources"]["en"]["train"]["docs"]
    assert json.loads((out / "manifest.json").read_text()) == m
    data.prepare(tiny_data_dir, byte_enc, "ab" * 32, out, 0.1, log=logs.append)
    assert "reusing" in logs[-1]
    data.prepare(tiny_data_dir, byte_enc, "ab" * 32, out, 0.2, log=logs.append)   # a changed split redoes it
    assert "wrote" in logs[-1]


def test_missing_mono_dir_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="mono/"):
        data.discover_sources(tmp_path)


# ----------------------------------------------------------------------------- readers, the streaming pipeline

import gzip  # noqa: E402
import lzma  # noqa: E402

import pipeline  # noqa: E402


def test_read_records_formats_and_counts_bad_input(tmp_path):
    from collections import Counter
    (tmp_path / "p.txt").write_text("para one\nline two\n\n\npara two\n")
    assert list(data.read_records(tmp_path / "p.txt", "blank")) == [("para one\nline two", None), ("para two", None)]
    (tmp_path / "a.jsonl").write_bytes(b'{"text": "x", "lang": "de"}\nnot json\n{"text": "y \xff", "lang": "xx"}\n')
    stats = Counter()
    got = list(data.read_records(tmp_path / "a.jsonl", stats=stats, strict=False))
    assert got == [("x", "de"), ("y \ufffd", None)] and stats == {"bad_json_lines": 1, "bad_utf8_lines": 1}
    with lzma.open(tmp_path / "c.txt.xz", "wt", encoding="utf-8") as f:
        f.write("xz line\n")
    assert list(data.read_documents(tmp_path / "c.txt.xz")) == ["xz line"]


def test_byte_range_units_cover_every_line_once(tmp_path):
    lines = [f"line {i} " + "x" * (i % 37 + 1) for i in range(500)]
    (tmp_path / "big.txt").write_text("\n".join(lines) + "\n")
    units = pipeline.plan_units([tmp_path], chunk_bytes=1000)
    assert len(units) > 10
    got = [t for u in units for t, _ in data.read_records(u.path, start=u.start, end=u.end)]
    assert got == lines


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz", ".txt.xz", ".jsonl.gz"])
@pytest.mark.parametrize("txt_docs", ["line", "blank"])
def test_chunked_units_read_every_document_once(tmp_path, suffix, txt_docs):
    """Big files are cut at document boundaries: line starts, after blank lines for blank-separated .txt, and
    decompressed offsets for .gz/.xz; reading the units one after the other gives the whole file's documents."""
    docs = [" ".join(f"w{i}x{j}" for j in range(i % 23 + 1)) for i in range(400)]
    if txt_docs == "blank" and ".txt" in suffix:                        # paragraphs of 1-3 lines, 1-2 blank lines
        docs = ["\n".join([d] * (i % 3 + 1)) for i, d in enumerate(docs)]
        text = "".join(d + "\n" + "\n" * (i % 2 + 1) for i, d in enumerate(docs))
    elif ".jsonl" in suffix:
        text = "".join(json.dumps({"text": d}) + "\n" for d in docs)
    else:
        text = "".join(d + "\n" for d in docs)
    path = tmp_path / f"big{suffix}"
    opener = gzip.open if suffix.endswith(".gz") else lzma.open if suffix.endswith(".xz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.write(text)
    units = pipeline.plan_units([path], chunk_bytes=1000, txt_docs=txt_docs)
    assert len(units) > 10 and units[0].start == 0 and units[-1].end is None
    got = [t for u in units for t, _ in data.read_records(u.path, txt_docs, u.start, u.end)]
    assert got == [t for t, _ in data.read_records(path, txt_docs)] == docs


def test_chunking_does_not_change_the_output(tmp_path, byte_enc):
    """One unit per file or many 1 KB units: the same shards, byte for byte (documents keep their order)."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "de.txt").write_text("\n\n".join(_sample_lines("de", 200, 20)) + "\n")
    with gzip.open(inp / "en.txt.gz", "wt", encoding="utf-8") as f:
        f.write("\n\n".join(_sample_lines("en", 200, 20)) + "\n")
    quiet = dict(val_frac=0.2, log=lambda s: None, options=pipeline.Options(txt_docs="blank"), stages=("tokenize",))
    whole = pipeline.run_pipeline(pipeline.plan_units([inp], txt_docs="blank"), tmp_path / "a", byte_enc, "ab" * 32,
                                  workers=1, **quiet)
    units = pipeline.plan_units([inp], chunk_bytes=1000, txt_docs="blank")
    assert len(units) > 20
    chunked = pipeline.run_pipeline(units, tmp_path / "b", byte_enc, "ab" * 32, workers=2, **quiet)
    assert whole["sources"] == chunked["sources"] and whole["sources"]["en"]["train"]["docs"] > 100
    for e in whole["sources"].values():
        for s in ("train", "val"):
            assert (tmp_path / "a" / e[s]["file"]).read_bytes() == (tmp_path / "b" / e[s]["file"]).read_bytes()


def _sample_lines(lang, n, min_chars):
    lines = (data.ROOT / "data" / "sample" / "mono" / f"{lang}.txt").read_text().splitlines()
    return [x for x in lines if len(x) >= min_chars][:n]


def _mixed_inputs(d):
    """A web-like input dir: undeclared languages, junk, exact and near duplicates."""
    d.mkdir()
    en, de, zh = _sample_lines("en", 60, 60), _sample_lines("de", 40, 60), _sample_lines("zh", 40, 30)
    junk = ["$$$ 123 456 789 000 $$$", "Καλημέρα σε όλους τους φίλους μας", "ok"]
    (d / "web1.txt").write_text("\n".join(en[:30] + de[:20] + zh[:20] + junk) + "\n")
    words = en[5].split()
    near = " ".join(words[:-1] + ["(changed)", words[-1]])              # one word inserted at the end
    (d / "web2.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in en[30:] + de[20:] + zh[20:] +
                                          [en[3].upper(), near]))
    return d


def test_pipeline_end_to_end_on_mixed_input(tmp_path, byte_enc):
    inp = _mixed_inputs(tmp_path / "in")
    units = pipeline.plan_units([inp])
    m = pipeline.run_pipeline(units, tmp_path / "out", byte_enc, "ab" * 32, workers=1, val_frac=0.2, log=lambda s: None)
    assert set(m["sources"]) == {"en", "de", "zh"} and m["dtype"] == "uint16"
    st = m["stats"]["by_lang"]
    assert st["en"]["removed:dedup_exact"] == 1 and st["en"]["removed:dedup_near"] == 1
    print({k: dict(v) for k, v in st.items()})
    for lang, n in (("en", 60), ("de", 40), ("zh", 40)):               # clean sentences: (almost) all kept
        assert n - 2 <= st[lang]["kept_docs"] <= n
    assert st["other"]["removed:lid_other"] == 2                        # digits only, Greek
    en = np.concatenate([data.read_shard(tmp_path / "out" / m["sources"]["en"][s]["file"], "ab" * 32)
                         for s in ("train", "val")])
    assert int((en == byte_enc.eot_token).sum()) == st["en"]["kept_docs"]
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["by_lang"] == st
    assert not list((tmp_path / "out").glob(".work-*"))                 # intermediate files removed when done
    logs = []
    pipeline.run_pipeline(units, tmp_path / "out", byte_enc, "ab" * 32, workers=1, val_frac=0.2, log=logs.append)
    assert "reusing" in logs[-1]


def test_resume_after_a_killed_run_gives_the_same_shards(tmp_path, byte_enc, monkeypatch):
    inp = _mixed_inputs(tmp_path / "in")
    units = pipeline.plan_units([inp])
    quiet = dict(workers=1, val_frac=0.2, log=lambda s: None)
    ref = pipeline.run_pipeline(units, tmp_path / "ref", byte_enc, "ab" * 32, **quiet)

    real, calls = pipeline.run_unit, []

    def dies_in_the_tokenize_phase(task):
        if task[0] == "tokenize":
            calls.append(task)
            if len(calls) == 2:
                raise KeyboardInterrupt                                  # "killed" after one unit was tokenized
        return real(task)
    monkeypatch.setattr(pipeline, "run_unit", dies_in_the_tokenize_phase)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(units, tmp_path / "out", byte_enc, "ab" * 32, **quiet)
    assert not (tmp_path / "out" / "manifest.json").exists()
    for p in (tmp_path / "out").rglob("*.bin"):                          # whatever is there is whole
        data.read_shard(p)
    monkeypatch.setattr(pipeline, "run_unit", real)
    logs = []
    m = pipeline.run_pipeline(units, tmp_path / "out", byte_enc, "ab" * 32, **{**quiet, "log": logs.append})
    assert any("already done" in s and not s.startswith("data: 2 units of work, 0") for s in logs)
    assert m["sources"] == ref["sources"]
    for e in ref["sources"].values():
        for s in ("train", "val"):
            assert (tmp_path / "out" / e[s]["file"]).read_bytes() == (tmp_path / "ref" / e[s]["file"]).read_bytes()


def test_a_shard_being_written_never_looks_complete(tmp_path):
    w = data.ShardWriter(tmp_path / "a.bin", "ab" * 32, 100)
    w.write(np.arange(10))
    assert not (tmp_path / "a.bin").exists()
    with pytest.raises(data.DataError):
        data.read_shard(w.tmp)                                           # zero header: not a shard
    w.close()
    assert data.read_shard(tmp_path / "a.bin").tolist() == list(range(10))


def test_prepare_with_filter_stages_keeps_almost_all_of_clean_text(tiny_data_dir, tmp_path, byte_enc):
    m = data.prepare(tiny_data_dir, byte_enc, "ab" * 32, tmp_path / "s", 0.1, log=lambda s: None,
                     stages=("lid", "rules"))
    assert m["stages"] == ["lid", "rules", "tokenize"]
    kept = {k: e["train"]["docs"] + e["val"]["docs"] for k, e in m["sources"].items()}
    assert kept == {"en": 400, "th": 200, "zh": 300, "bi.en-th": 200}
    # the tiny data's Thai lines are one template ("ประโยคภาษาไทยที่ {i}"): near-duplicates of each other
    m = data.prepare(tiny_data_dir, byte_enc, "ab" * 32, tmp_path / "s", 0.1, log=lambda s: None,
                     stages=("dedup",))
    assert m["stats"]["by_lang"]["th"]["removed:dedup_near"] > 150


def test_cli_filters_to_text_without_a_tokenizer(tmp_path, capsys):
    inp = _mixed_inputs(tmp_path / "in")
    data.main(["--input", str(inp / "web1.txt"), str(inp / "web2.jsonl"), "--out", str(tmp_path / "o"),
               "--stages", "lid,rules,dedup", "--workers", "1"])
    rows = [json.loads(x) for x in (tmp_path / "o" / "de.train.jsonl").read_text().splitlines()]
    assert rows and all(r["lang"] == "de" for r in rows)
    assert "lang" in capsys.readouterr().out                            # the stats table was printed


def test_hq_subsets_become_flagged_sources_the_curriculum_can_weight(tiny_data_dir, tmp_path, byte_enc):
    from curriculum import Mixer, make_schedule
    (tiny_data_dir / "hq").mkdir()
    (tiny_data_dir / "hq" / "th.txt").write_text("".join(f"ข้อความคุณภาพสูง {i}\n" for i in range(300)))
    m = data.prepare(tiny_data_dir, byte_enc, "ab" * 32, tmp_path / "shards", 0.1, log=lambda *_: None)
    e = m["sources"]["hq.th"]
    assert (e["lang"], e["kind"], e.get("hq")) == ("th", "mono", True) and not m["sources"]["th"].get("hq")
    (st,) = make_schedule("x", m, stages=[{"frac": 1, "non_en": 0.5, "hq": 0.2}])
    assert st.weights["hq.th"] == 0.2 and abs(st.weights["en"] - 0.5) < 1e-9
    mixer = Mixer(data.load_shards(tmp_path / "shards", m, "train"), [st], total_rows=100, block_size=8)
    assert mixer.next_batch(100)[2].count("hq.th") == 20
