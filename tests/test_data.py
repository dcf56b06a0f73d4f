"""The data pipeline (pipeline.py, data.py): units of work, the stages, resuming, the cached small-data path that
train.py uses, the command line, and what happens with bad settings."""
import dataclasses
import gzip
import json
import lzma
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import corpus
import data
import pipeline
import workunits
import shards
from corpus import DataError
from pipeline import ROOT, DataConfig

H = "ab" * 32


def cfg(**kw):
    return dataclasses.replace(DataConfig(), **{"workers": 1, "nodes": 1, "node_rank": 0, **kw})


def quiet(*_):
    pass


def test_prepare_writes_shards_manifest_and_reuses_cache(tiny_data_dir, tmp_path, byte_enc):
    out, logs = tmp_path / "shards", []
    m = pipeline.prepare(tiny_data_dir, byte_enc, H, out, 0.1, log=logs.append)
    assert set(m["sources"]) == {"en", "th", "zh", "bi.en-th"}
    assert m["sources"]["bi.en-th"]["kind"] == "bilingual" and m["sources"]["bi.en-th"]["lang"] == "th"
    train = shards.load_shards(out, m, "train")
    en = train["en"]
    assert len(en) == m["sources"]["en"]["train"]["tokens"]
    eot = byte_enc.eot_token
    docs = bytes(t for t in en[:].tolist() if t != eot).decode()      # byte tokens -> text, EOTs dropped
    assert "English sentence number" in docs
    assert int((en[:] == eot).sum()) == m["sources"]["en"]["train"]["docs"]
    assert shards.load_manifest(out, H) == m
    pipeline.prepare(tiny_data_dir, byte_enc, H, out, 0.1, log=logs.append)
    assert "reusing" in logs[-1]
    pipeline.prepare(tiny_data_dir, byte_enc, H, out, 0.2, log=logs.append)   # a changed split redoes it
    assert "wrote" in logs[-1]
    f = tiny_data_dir / "mono" / "zh.txt"                              # same size and mtime, other content:
    st = f.stat()                                                       # the sampled content hash notices
    f.write_text(f.read_text().replace("第1个", "第9个"))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    pipeline.prepare(tiny_data_dir, byte_enc, H, out, 0.2, log=logs.append)
    assert "wrote" in logs[-1]


def test_data_dir_errors_are_clear(tmp_path, tiny_data_dir, byte_enc):
    with pytest.raises(DataError, match="mono/"):
        pipeline.discover_sources(tmp_path)
    (tiny_data_dir / "mono" / "en.val.jsonl").write_text('{"text": "x"}\n')   # data.py output copied into mono/
    with pytest.raises(DataError, match="--shards"):
        pipeline.discover_sources(tiny_data_dir)
    (tiny_data_dir / "mono" / "en.val.jsonl").unlink()
    (tiny_data_dir / "mono" / "english.txt").write_text("x\n")
    with pytest.raises(DataError, match="english.txt: the file name must be one of the 18"):
        pipeline.discover_sources(tiny_data_dir)


def test_empty_language_files_are_skipped_the_same_way_whatever_their_name(tiny_data_dir, tmp_path, byte_enc):
    for lang in ("ar", "fr"):                                          # before and after the others in order
        (tiny_data_dir / "mono" / f"{lang}.txt").write_text("")
    logs = []
    m = pipeline.prepare(tiny_data_dir, byte_enc, H, tmp_path / "s", 0.1, log=logs.append)
    assert set(m["sources"]) == {"en", "th", "zh", "bi.en-th"}
    assert sum("no documents" in line for line in logs) == 2


# ----------------------------------------------------------------------------- units of work

def test_byte_range_units_cover_every_line_once(tmp_path):
    lines = [f"line {i} " + "x" * (i % 37 + 1) for i in range(500)]
    (tmp_path / "big.txt").write_text("\n".join(lines) + "\n")
    units, _ = workunits.plan_units([tmp_path], chunk_bytes=1000)
    assert len(units) > 10
    got = [t for u in units for t, _ in corpus.read_records(u.path, start=u.start, end=u.end)]
    assert got == lines


@pytest.mark.parametrize("suffix", [".txt", ".txt.gz", ".txt.xz", ".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("txt_docs", ["line", "blank"])
def test_units_read_every_document_once_and_compressed_files_are_one_unit(tmp_path, suffix, txt_docs):
    """Big plain files are cut at document boundaries (line starts, after blank lines for blank-separated .txt);
    a compressed file is one unit (seeking inside it would decompress everything before the cut, for every unit)."""
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
    units, _ = workunits.plan_units([path], chunk_bytes=1000, txt_docs=txt_docs)
    assert (len(units) == 1) == suffix.endswith((".gz", ".xz"))
    assert units[0].start == 0 and units[-1].end is None
    got = [t for u in units for t, _ in corpus.read_records(u.path, txt_docs, u.start, u.end)]
    assert got == [t for t, _ in corpus.read_records(path, txt_docs)] == docs


def test_chunking_and_workers_do_not_change_the_output(tmp_path, byte_enc):
    """One unit per file or many 1 KB units, 1 or 2 workers: the same shards, byte for byte."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "de.txt").write_text("\n\n".join(_sample_lines("de", 200, 20)) + "\n")
    (inp / "en.txt").write_text("\n\n".join(_sample_lines("en", 200, 20)) + "\n")
    c = cfg(val_frac=0.2, txt_docs="blank", stages="tokenize")
    units, _ = workunits.plan_units([inp], txt_docs="blank")
    whole = pipeline.run_pipeline(units, tmp_path / "a", byte_enc, H, c, log=quiet)
    units, _ = workunits.plan_units([inp], chunk_bytes=1000, txt_docs="blank")
    assert len(units) > 20
    chunked = pipeline.run_pipeline(units, tmp_path / "b", byte_enc, H, dataclasses.replace(c, workers=2), log=quiet)
    assert whole["sources"] == chunked["sources"] and whole["sources"]["en"]["train"]["docs"] > 100
    for e in whole["sources"].values():
        for s in ("train", "val"):
            assert (tmp_path / "a" / e[s]["file"]).read_bytes() == (tmp_path / "b" / e[s]["file"]).read_bytes()


def _sample_lines(lang, n, min_chars):
    lines = (ROOT / "data" / "sample" / "mono" / f"{lang}.txt").read_text().splitlines()
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
    units, _ = workunits.plan_units([inp])
    m = pipeline.run_pipeline(units, tmp_path / "out", byte_enc, H, cfg(val_frac=0.2), log=quiet)
    assert set(m["sources"]) == {"en", "de", "zh"} and m["dtype"] == "uint16"
    st = m["stats"]["by_lang"]
    assert st["en"]["removed:dedup_exact"] == 1 and st["en"]["removed:dedup_near"] == 1
    for lang, n in (("en", 60), ("de", 40), ("zh", 40)):               # clean sentences: (almost) all kept
        assert n - 2 <= st[lang]["kept_docs"] <= n
    assert st["other"]["removed:lid_other"] == 2                        # digits only, Greek
    en = np.concatenate([shards.read_shard(tmp_path / "out" / m["sources"]["en"][s]["file"], H)[:]
                         for s in ("train", "val")])
    assert int((en == byte_enc.eot_token).sum()) == st["en"]["kept_docs"]
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["by_lang"] == st
    assert not list((tmp_path / "out").glob(".work-*"))                 # intermediate files removed when done
    logs = []
    pipeline.run_pipeline(units, tmp_path / "out", byte_enc, H, cfg(val_frac=0.2), log=logs.append)
    assert "reusing" in logs[-1]


def test_resume_after_a_killed_run_gives_the_same_shards(tmp_path, byte_enc, monkeypatch):
    inp = _mixed_inputs(tmp_path / "in")
    units, _ = workunits.plan_units([inp])
    c = cfg(val_frac=0.2)
    ref = pipeline.run_pipeline(units, tmp_path / "ref", byte_enc, H, c, log=quiet)

    real, calls = workunits.run_unit, []

    def dies_in_the_tokenize_phase(task):
        if task[0] == "tokenize":
            calls.append(task)
            if len(calls) == 2:
                raise KeyboardInterrupt                                  # "killed" after one unit was tokenized
        return real(task)
    monkeypatch.setattr(workunits, "run_unit", dies_in_the_tokenize_phase)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(units, tmp_path / "out", byte_enc, H, c, log=quiet)
    assert not (tmp_path / "out" / "manifest.json").exists()
    for p in (tmp_path / "out").rglob("*.bin"):                          # whatever is there is whole
        shards.read_shard(p)
    monkeypatch.setattr(workunits, "run_unit", real)
    logs = []
    m = pipeline.run_pipeline(units, tmp_path / "out", byte_enc, H, c, log=logs.append)
    assert any("already done" in s and not s.startswith("data: 2 units of work, 0") for s in logs)
    assert m == ref
    for e in ref["sources"].values():
        for s in ("train", "val"):
            assert (tmp_path / "out" / e[s]["file"]).read_bytes() == (tmp_path / "ref" / e[s]["file"]).read_bytes()


def test_a_marker_whose_files_are_missing_or_short_is_redone(tmp_path, byte_enc):
    inp = _mixed_inputs(tmp_path / "in")
    units, _ = workunits.plan_units([inp])
    c = cfg(val_frac=0.2, keep_work=True)
    ref = pipeline.run_pipeline(units, tmp_path / "out", byte_enc, H, c, log=quiet)
    (tmp_path / "out" / "manifest.json").unlink()
    work = next((tmp_path / "out").glob(".work-*"))
    victim = next((work / "units").glob("*.docs.jsonl"))
    victim.write_text("")                                               # a unit that says "done" over an empty file
    shutil_rm = next((work / "parts").glob("*.bin"))
    shutil_rm.unlink()
    m = pipeline.run_pipeline(units, tmp_path / "out", byte_enc, H, c, log=quiet)
    assert m == ref


def test_prepare_with_filter_stages_keeps_almost_all_of_clean_text(tiny_data_dir, tmp_path, byte_enc):
    m = pipeline.prepare(tiny_data_dir, byte_enc, H, tmp_path / "s", 0.1, log=quiet, stages=("lid", "rules"))
    assert m["stages"] == ["lid", "rules", "tokenize"]
    kept = {k: e["train"]["docs"] + e["val"]["docs"] for k, e in m["sources"].items()}
    assert kept == {"en": 400, "th": 200, "zh": 300, "bi.en-th": 200}
    # the tiny data's Thai lines are one template ("ประโยคภาษาไทยที่ {i}"): near-duplicates of each other
    m = pipeline.prepare(tiny_data_dir, byte_enc, H, tmp_path / "s", 0.1, log=quiet, stages=("dedup",))
    assert m["stats"]["by_lang"]["th"]["removed:dedup_near"] > 150


def test_hq_subsets_become_flagged_sources_the_curriculum_can_weight(tiny_data_dir, tmp_path, byte_enc):
    from curriculum import Mixer, make_schedule
    (tiny_data_dir / "hq").mkdir()
    (tiny_data_dir / "hq" / "th.txt").write_text("".join(f"ข้อความคุณภาพสูง {i}\n" for i in range(300)))
    m = pipeline.prepare(tiny_data_dir, byte_enc, H, tmp_path / "shards", 0.1, log=quiet)
    e = m["sources"]["hq.th"]
    assert (e["lang"], e["kind"], e.get("hq")) == ("th", "mono", True) and not m["sources"]["th"].get("hq")
    (st,) = make_schedule("x", m, stages=[{"frac": 1, "non_en": 0.5, "hq": 0.2}])
    assert st.weights["hq.th"] == 0.2 and abs(st.weights["en"] - 0.5) < 1e-9
    mixer = Mixer(shards.load_shards(tmp_path / "shards", m, "train"), [st], total_rows=100, block_size=8)
    assert mixer.next_batch(100)[2].count("hq.th") == 20


# ----------------------------------------------------------------------------- the command line

def test_cli_filters_to_text_without_a_tokenizer(tmp_path, capsys):
    inp = _mixed_inputs(tmp_path / "in")
    data.main(["--input", str(inp / "web1.txt"), str(inp / "web2.jsonl"), "--out", str(tmp_path / "o"),
               "--stages", "lid,rules,dedup", "--workers", "1"])
    rows = [json.loads(x) for x in (tmp_path / "o" / "de.train.jsonl").read_text().splitlines()]
    assert rows and all(r["lang"] == "de" for r in rows)
    assert "lang" in capsys.readouterr().out                            # the stats table was printed


@pytest.mark.parametrize("args,message", [
    (["--stages=lid,tokenise"], "unknown stage(s) tokenise"),
    (["--phase=everything"], "phase='everything'"),
    (["--bands=7"], "not a multiple of bands=7"),
    (["--val_frac=1.5"], "val_frac=1.5 must be in"),
    (["--nodes=2", "--node_rank=2"], "node_rank=2 with nodes=2"),
    (["--nodes=2", "--node_rank=0"], "run the phases one after the other"),
    (["--input=/nonexistent/x"], "not found"),
])
def test_bad_settings_are_one_line_and_touch_nothing(tmp_path, capsys, args, message, byte_enc):
    inp = _mixed_inputs(tmp_path / "in")
    out = tmp_path / "out"
    base = [f"--input={inp}", f"--out={out}", "--stages=lid,rules,dedup"]
    with pytest.raises(SystemExit) as e:
        data.main(base + args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_output_that_is_a_file_or_a_users_folder_is_refused(tmp_path, capsys):
    inp = _mixed_inputs(tmp_path / "in")
    (tmp_path / "file").write_text("mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for out, message in ((tmp_path / "file", "is a file"), (tmp_path / "mine", "not a data.py output")):
        with pytest.raises(SystemExit):
            data.main([f"--input={inp}", f"--out={out}", "--stages=lid", "--workers=1"])
        assert message in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_unknown_format_in_an_input_dir_is_an_error_naming_it(tmp_path, capsys):
    inp = _mixed_inputs(tmp_path / "in")
    (inp / "README.md").write_text("# a corpus")                      # not data: skipped and counted
    (inp / "part.bz2").write_bytes(b"BZh9")
    with pytest.raises(SystemExit):
        data.main([f"--input={inp}", f"--out={tmp_path / 'o'}", "--stages=lid", "--workers=1"])
    assert "part.bz2: unknown format (accepted: .txt .jsonl" in capsys.readouterr().err


def test_kill_9_of_the_driver_alone_then_rerun_gives_the_same_bytes(tmp_path, byte_enc):
    """The driver is killed while its worker processes live on and keep writing; the rerun waits for them (unit
    locks), never trusts a marker over missing files, and ends with the same output as an unbroken run."""
    inp = tmp_path / "in"
    inp.mkdir()
    for i in range(6):
        (inp / f"part{i}.txt").write_text("\n".join(_sample_lines(["en", "de", "zh"][i % 3], 60, 20)) + "\n")
    import bpe
    bpe.save(tmp_path / "tok", {bytes([i]): i for i in range(256)})
    args = [sys.executable, str(ROOT / "data.py"), f"--input={inp}", f"--tokenizer={tmp_path / 'tok'}",
            "--stages=lid,rules,dedup,tokenize", "--workers=2", "--val_frac=0.2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(args + [f"--out={tmp_path / 'ref'}"], env=env, check=True, capture_output=True, timeout=300)
    p = subprocess.Popen(args + [f"--out={tmp_path / 'out'}"], env={**env, "POLYLM_UNIT_DELAY": "0.7"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list((tmp_path / "out").glob(".work-*/units/*.json")):
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)                                      # the driver only: its workers go on
    p.wait()
    r = subprocess.run(args + [f"--out={tmp_path / 'out'}"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == ref
    for e in ref["sources"].values():
        for s in ("train", "val"):
            assert (tmp_path / "out" / e[s]["file"]).read_bytes() == (tmp_path / "ref" / e[s]["file"]).read_bytes()
