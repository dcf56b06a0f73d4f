"""The real data path end to end: a small web corpus in the shapes people download (FineWeb-2 parquet, OSCAR
.jsonl.zst with `content`, mC4 .json.gz, a CC-100-style .txt.xz), with planted non-target text, exact and near
duplicates and bad records -> data.py as one process and as 3 machines (separate processes, phase by phase, as a
SLURM job array runs them) -> identical shards and manifest -> torchrun with 2 processes trains from them."""
import gzip
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "mono"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def lines(lang, n, skip=0):
    return [x for x in (SAMPLE / f"{lang}.txt").read_text().splitlines() if len(x) > 30][skip:skip + n]


def build_corpus(root):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    zstd = pytest.importorskip("zstandard")
    de, en, ja, th = lines("de", 120), lines("en", 120), lines("ja", 80), lines("th", 60)
    greek = ["Η Ελλάδα είναι μια χώρα στη νοτιοανατολική Ευρώπη με μακρά ιστορία.",
             "Σήμερα ο καιρός είναι πολύ καλός και πηγαίνουμε στη θάλασσα."]
    hindi = ["भारत दक्षिण एशिया में स्थित एक विशाल देश है जिसकी संस्कृति बहुत पुरानी है।"]
    neighbours = [                                                     # the neighbour languages LID must reject
        "Київ є столицею та найбільшим містом України, розташованим на річці Дніпро.",        # Ukrainian, not ru
        "Barcelona és la capital de Catalunya i una de les ciutats més visitades d'Europa.",   # Catalan, not es
        "Afrikaans is een van die amptelike tale van Suid-Afrika en word deur miljoene gepraat.",  # Afrikaans, not nl
    ]
    fw = root / "fineweb2" / "data" / "deu_Latn" / "train"             # FineWeb-2: <iso639-3>_<Script>/train/*.parquet
    fw.mkdir(parents=True)
    rows = de[:100] + greek + neighbours + [de[7], None]              # planted: Greek, neighbours, a copy, a null
    pq.write_table(pa.table({"text": rows, "id": [str(i) for i in range(len(rows))]}), fw / "000_00000.parquet",
                   row_group_size=16)
    uk = root / "fineweb2" / "data" / "ukr_Cyrl" / "train"              # outside the 18: skipped unread
    uk.mkdir(parents=True)
    pq.write_table(pa.table({"text": ["Київ є столицею України."] * 3}), uk / "000_00000.parquet")
    oscar = root / "oscar" / "en_meta"                                  # OSCAR 23.01: text in `content`, zstd
    oscar.mkdir(parents=True)
    words = en[3].split()
    near = " ".join(words[:-1] + ["indeed", words[-1]])                 # a near duplicate of en[3]
    recs = [{"content": t, "warc_headers": {"warc-type": "conversion"},
             "metadata": {"identification": {"label": "en", "prob": 0.9}}} for t in en[:100] + [near, en[10]]]
    body = "".join(json.dumps(r) + "\n" for r in recs) + "not json at all\n" + json.dumps({"url": "no text"}) + "\n"
    (oscar / "en_meta_part_1.jsonl.zst").write_bytes(zstd.ZstdCompressor().compress(body.encode()))
    mc4 = root / "mc4"                                                  # mC4: JSON lines in .json.gz, c4-<lang>.*
    mc4.mkdir()
    with gzip.open(mc4 / "c4-ja.tfrecord-00000-of-00002.json.gz", "wt", encoding="utf-8") as f:
        for t in ja + hindi:
            f.write(json.dumps({"text": t, "timestamp": "2020-01-01", "url": "https://x"}, ensure_ascii=False) + "\n")
    with gzip.open(mc4 / "c4-fa.tfrecord-00000-of-00002.json.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "این یک جمله فارسی است."}, ensure_ascii=False) + "\n")
    with lzma.open(root / "th.txt.xz", "wt", encoding="utf-8") as f:    # CC-100 style: <lang>.txt.xz
        f.write("\n".join(th + [th[5]]) + "\n")
    (root / "README.md").write_text("# a downloaded corpus\n")          # not data: skipped
    return root


def data_py(*args, check=True):
    r = subprocess.run([sys.executable, str(ROOT / "data.py"), *args], env=ENV, capture_output=True, text=True,
                       timeout=600)
    if check:
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import bpe
    w = tmp_path_factory.mktemp("nodes")
    corpus_dir = build_corpus(w / "corpus")
    bpe.save(w / "tok", {bytes([i]): i for i in range(256)})           # a byte-level tokenizer: no training needed
    common = [f"--input={corpus_dir}", f"--tokenizer={w / 'tok'}", "--stages=lid,rules,quality,dedup,tokenize",
              "--val_frac=0.1", "--chunk_mb=0.002"]                     # 2 KB units: parquet and .txt get several
    r = data_py(*common, f"--out={w / 'one'}", "--workers=1")
    for phase in ("units", "dedup", "tokenize"):                        # 3 "machines", each one process at a time
        procs = [subprocess.Popen([sys.executable, str(ROOT / "data.py"), *common, f"--out={w / 'three'}",
                                   f"--phase={phase}", "--workers=1"],
                                  env={**ENV, "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_ID": str(i),
                                       "SLURM_ARRAY_TASK_MIN": "0"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for i in range(3)]
        for p in procs:
            out, _ = p.communicate(timeout=600)
            assert p.returncode == 0, out[-3000:]
    data_py(*common, f"--out={w / 'three'}", "--phase=finish")
    return w, r.stdout


def test_one_process_and_three_machines_write_identical_shards_and_manifest(built):
    w, _ = built
    m = json.loads((w / "one" / "manifest.json").read_text())
    assert (w / "one" / "manifest.json").read_bytes() == (w / "three" / "manifest.json").read_bytes()
    for e in m["sources"].values():
        for s in ("train", "val"):
            assert (w / "one" / e[s]["file"]).read_bytes() == (w / "three" / e[s]["file"]).read_bytes()
    assert set(m["sources"]) == {"de", "en", "ja", "th"}
    assert (w / "one" / "tokenizer" / "tokenizer.json").exists()      # train.py --shards needs nothing else


def test_what_was_dropped_and_why(built):
    w, stdout = built
    m = json.loads((w / "one" / "manifest.json").read_text())
    by, counts = m["stats"]["by_lang"], m["stats"]["counts"]
    assert by["de"]["removed:lid_other"] == 5                           # Greek, uk, ca, af inside the German parquet
    assert by["ja"]["removed:lid_other"] == 1                           # Hindi inside the Japanese mC4 file
    assert by["de"]["removed:dedup_exact"] == 1 and by["th"]["removed:dedup_exact"] == 1
    assert by["en"]["removed:dedup_exact"] == 1 and by["en"]["removed:dedup_near"] == 1
    assert counts["bad_record:null_text"] == 1 and counts["bad_record:not_json"] == 1
    assert counts["bad_record:no_text_field"] == 1
    assert counts["skipped_files:other_lang"] == 2 and counts["skipped_files:not_data"] == 1   # ukr_Cyrl, c4-fa
    assert "not read: " in stdout and "other_lang" in stdout
    for lang, n in (("de", 100), ("en", 101), ("ja", 80), ("th", 60)):
        assert n - 3 <= by[lang]["kept_docs"] <= n, (lang, by[lang])
    r = data_py(f"--verify={w / 'one'}")
    assert "every block matches its CRC" in r.stdout


def test_torchrun_trains_from_the_shards_directory(built, tmp_path):
    w, _ = built
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), f"--shards={w / 'one'}", f"--out_dir={tmp_path / 'run'}", "--n_layer=1",
           "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2", "--max_iters=4", "--warmup_iters=1",
           "--eval_interval=4", "--eval_tokens=64", "--log_interval=1", "--samples=False", "--dtype=float32",
           "--curriculum=none"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs if "loss" in x] == [1, 2, 3, 4]
    assert set(next(x for x in recs if "val_bpb" in x)["val_bpb"]) == {"de", "en", "ja", "th"}
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["shards"] == str(w / "one") and not (tmp_path / "cache").exists()   # nothing re-tokenized


def test_shards_made_with_another_tokenizer_are_refused(built, tmp_path):
    import bpe
    w, _ = built
    bpe.save(tmp_path / "tok2", {bytes([i]): i for i in range(256)}, special_tokens=["<|endoftext|>"])
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), f"--shards={w / 'one'}",
                        f"--tokenizer_dir={tmp_path / 'tok2'}", f"--out_dir={tmp_path / 'run'}", "--max_iters=1"],
                       env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "was tokenized with tokenizer" in r.stderr and "Traceback" not in r.stderr
