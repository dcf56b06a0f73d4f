"""evaluate.py: bits-per-byte counts every byte exactly once and matches a hand computation; the whole suite from
official-format files; one device/dtype policy (runtime.choose); one clear line (exit 2) per bad input; imports go
one way (tasks/ never imports evaluate.py)."""
import math

import numpy as np
import torch

import evaluate
import runtime
from model import PolyLM, preset


def test_token_byte_lengths_count_utf8_bytes_and_specials_as_one(byte_enc):
    lens = evaluate.token_byte_lengths(byte_enc)
    assert lens.shape == (257,) and (lens[:256] == 1).all() and lens[256] == 1


def test_bpb_equals_total_nll_over_total_bytes(byte_enc):
    torch.manual_seed(0)
    m = PolyLM(preset("toy", n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=257)).eval()
    docs = ["héllo wörld", "ไทย 123", "中文"]
    stream = np.array([t for d in docs for t in (*byte_enc.encode_ordinary(d), byte_enc.eot_token)])
    res = evaluate.bits_per_byte(m, {"x": stream}, evaluate.token_byte_lengths(byte_enc), block_size=8, batch_size=3)
    r = res["x"]
    assert r["tokens"] == len(stream) - 1
    assert r["bytes"] == sum(len(d.encode()) + 1 for d in docs) - 1        # every byte but the first token's
    # the same number by brute force: one token at a time with its full (windowed) context
    nats = 0.0
    with torch.no_grad():
        for w in range(0, len(stream) - 1, 8):
            x = torch.tensor(stream[w:min(w + 8, len(stream) - 1)])[None]
            y = torch.tensor(stream[w + 1:w + 1 + x.size(1)])
            nats += torch.nn.functional.cross_entropy(m(x)[0], y, reduction="sum").item()
    assert math.isclose(r["val_loss"], nats / r["tokens"], rel_tol=1e-5)
    assert math.isclose(r["val_bpb"], nats / math.log(2) / r["bytes"], rel_tol=1e-5)


def test_table_has_a_row_per_language_and_the_mean():
    res = {"en": {"val_loss": 2.0, "val_bpb": 1.0, "tokens": 10, "bytes": 40},
           "th": {"val_loss": 3.0, "val_bpb": 2.0, "tokens": 10, "bytes": 30}}
    t = evaluate.format_table(res)
    assert "| en | 2.000 | 1.000 | 10 | 4.00 |" in t and "| **mean** | 2.500 | 1.500 |" in t


# ----------------------------------------------------------------------------- the benchmark suite, end to end

import dataclasses  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIX = Path(__file__).resolve().parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: one thread is fastest (conftest.py)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run dir as train.py writes it, built by hand: byte-level tokenizer, a random 1-layer model, tiny text."""
    import bpe
    d = tmp_path_factory.mktemp("run")
    text = tmp_path_factory.mktemp("text")
    (text / "mono").mkdir()
    (text / "mono" / "en.txt").write_text("".join(f"Line {i} of English text.\n" for i in range(60)))
    (text / "mono" / "zh.txt").write_text("".join(f"第{i}行中文。\n" for i in range(60)))
    bpe.save(d / "tokenizer", {bytes([i]): i for i in range(256)})
    enc = bpe.load(d / "tokenizer")
    cfg = preset("toy", n_layer=1, n_head=2, n_embd=32, block_size=96, vocab_size=enc.n_vocab)
    torch.manual_seed(0)
    (d / "ckpt" / "step_000001").mkdir(parents=True)
    torch.save(PolyLM(cfg).state_dict(), d / "ckpt" / "step_000001" / "model.pt")
    (d / "ckpt" / "step_000001" / "state.json").write_text(json.dumps({"step": 1}))    # a complete checkpoint
    (d / "ckpt" / "latest").write_text("step_000001")
    (d / "config.json").write_text(json.dumps({"model": dataclasses.asdict(cfg), "tokenizer_hash": bpe.tokenizer_hash(
        d / "tokenizer"), "train": {"data_dir": str(text), "val_frac": 0.2}}))
    return d


def test_suite_runs_every_task_from_official_format_files(run_dir):
    evaluate.main(["--ckpt", str(run_dir), "--tasks", "all", "--limit", "2", "--langs", "en,zh,de",
                   "--max_new_tokens", "4", "--max_tokens", "300", "--xnli_dir", str(FIX / "xnli"),
                   "--pawsx_dir", str(FIX / "pawsx"), "--tydiqa_path", str(FIX / "tydiqa" / "tydiqa-goldp-v1.1-dev.json"),
                   "--mtg_dir", str(FIX / "mtg"), "--wmt20_dir", str(FIX / "wmt20")])
    res = json.loads((run_dir / "results.json").read_text())
    assert set(evaluate.TASKS) <= set(res)
    assert set(res["xnli"]["results"]) == {"en", "zh", "de"} and res["xnli"]["chance"] == pytest.approx(1 / 3)
    assert set(res["xcopa"]["results"]) == {"zh"} and res["xcopa"]["results"]["zh"]["n"] == 2
    assert set(res["pawsx"]["results"]) == {"en", "zh"} and "de" in res["pawsx"]["skipped"][0]
    assert set(res["wmt20"]["results"]) == {"en-de", "de-en"}
    assert set(res["ntrex"]["results"]) == {"en-zh", "zh-en", "en-de", "de-en"}
    assert set(res["mtg"]["results"]) == {"story/en", "summ/zh", "title/de"}
    for task in evaluate.TASKS:
        e = res[task]
        assert e["tokenizer_hash"] and len(e["checkpoint"]["model_sha256"]) == 16 and e["config"]["limit"] == 2
        assert task == "bpb" or len(e["data_hash"]) == 16
    assert 0 <= res["xnli"]["results"]["en"]["acc"] <= 100 and "acc_norm" in res["xnli"]["results"]["en"]
    assert "bleu_signature" in res["ntrex"]["results"]["en-zh"] and "tok:zh" in res["ntrex"]["results"]["en-zh"][
        "bleu_signature"]
    assert {"em", "f1"} <= set(res["tydiqa"]["results"]["en"]) and "rougeL" in res["mtg"]["results"]["summ/zh"]
    md = (run_dir / "results.md").read_text()
    assert "| xcopa | understanding | acc |" in md and "| 50.0 |" in md and "| 33.3 |" in md
    for fam in ("lm", "understanding", "qa", "generation", "translation"):
        assert (run_dir / f"eval_{fam}.png").exists()
    sub = json.loads((run_dir / "eval_outputs" / "SG-polylm.json").read_text())     # MTG's submission format
    assert list(sub) == ["en"] and len(sub["en"]) == 2


def test_batched_and_naive_scorers_agree_through_the_cli(run_dir):
    accs = {}
    for scorer in ("tree", "naive"):
        out = evaluate.main(["--ckpt", str(run_dir), "--tasks", "xcopa,xwinograd", "--limit", "4", "--langs", "zh,en",
                             "--scorer", scorer, "--plots", "False"])
        accs[scorer] = {t: out[t]["results"] for t in out}
    assert accs["tree"] == accs["naive"]


def test_task_selection_and_errors(run_dir):
    cfg = evaluate.EvalConfig()
    assert evaluate.resolve_tasks("bpb", cfg) == ["bpb"] and cfg.tasks == "bpb"       # the default stays bpb
    notes = []
    assert evaluate.resolve_tasks("all", cfg, log=notes.append) == ["bpb", "xcopa", "xwinograd", "ntrex", "tatoeba"]
    assert any("--xnli_dir" in n for n in notes)
    with pytest.raises(ValueError, match="needs --xnli_dir"):
        evaluate.resolve_tasks("xnli", cfg)
    with pytest.raises(ValueError, match="unknown task 'xcopa2'"):
        evaluate.resolve_tasks("xcopa2", cfg)
    with pytest.raises(SystemExit):
        evaluate.main(["--ckpt", str(run_dir), "--tasks", "xnli"])
    with pytest.raises(ValueError, match="task xcopa has none of --langs=en"):        # XCOPA has no English
        evaluate.resolve_tasks("xcopa", dataclasses.replace(cfg, langs="en"))
    notes = []
    assert evaluate.resolve_tasks("understanding", dataclasses.replace(cfg, langs="en"), notes.append) == ["xwinograd"]
    assert any("skipping xcopa: none of --langs=en" in n for n in notes)
    assert evaluate.task_langs("xwinograd", dataclasses.replace(cfg, langs="zh, ja")) == ["ja", "zh"]   # task order


def test_device_and_dtype_follow_the_one_runtime_policy(run_dir):
    cfg = evaluate.EvalConfig()
    assert (cfg.device, cfg.dtype) == ("auto", "auto")                      # as train.py and chat.py
    out = evaluate.main(["--ckpt", str(run_dir), "--tasks", "xcopa", "--langs", "zh", "--limit", "2",
                         "--plots", "False"])
    device, dtype, why = runtime.choose("auto", "auto")
    assert out["xcopa"]["runtime"] == {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "why": why}
    if device.type == "cpu" and not runtime.cpu_has_native_bf16():          # e.g. an AVX2-only CPU: fp32, as before
        assert out["xcopa"]["runtime"]["dtype"] == "float32"


def _one_error_line(capsys, argv):
    with pytest.raises(SystemExit) as e:
        evaluate.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    return err[0]


def test_bad_input_is_one_line_and_exit_code_2(run_dir, tmp_path, capsys):
    before = (run_dir / "results.json").read_bytes() if (run_dir / "results.json").exists() else None
    base = ["--ckpt", str(run_dir), "--tasks", "xcopa", "--plots", "False"]
    assert "limit=-1" in _one_error_line(capsys, base + ["--limit=-1"])      # used to drop the last example
    assert "shots=-2" in _one_error_line(capsys, base + ["--shots=-2"])
    assert "unknown language code(s) xx" in _one_error_line(capsys, base + ["--langs=zh,xx"])
    assert "not found" in _one_error_line(capsys, ["--ckpt", str(tmp_path / "nope")])
    (tmp_path / "afile").write_text("x")
    assert "is a file" in _one_error_line(capsys, ["--ckpt", str(tmp_path / "afile")])
    assert "no config.json" in _one_error_line(capsys, ["--ckpt", str(tmp_path)])
    step = run_dir / "ckpt" / "step_000001"
    assert f"give its run dir, --ckpt={run_dir}" in _one_error_line(capsys, ["--ckpt", str(step)])
    if not torch.cuda.is_available():
        assert "no CUDA device" in _one_error_line(capsys, base + ["--device=cuda"])
    assert "dtype='float16'" in _one_error_line(capsys, base + ["--dtype=float16"])
    # a run dir whose tokenizer/ is not the one it was trained with (same size, other merges)
    import bpe
    import shutil
    other = tmp_path / "other_tok"
    shutil.copytree(run_dir, other)
    bpe.save(other / "tokenizer", {bytes([i]): (i + 1) % 256 for i in range(256)})
    assert "tokenizer" in _one_error_line(capsys, ["--ckpt", str(other), "--tasks", "xcopa"])
    after = (run_dir / "results.json").read_bytes() if (run_dir / "results.json").exists() else None
    assert after == before                                                   # nothing was written


def test_every_entry_point_answers_help(capsys):
    import importlib.util
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--help"])
    assert e.value.code == 0 and "--wmt20_dir" in capsys.readouterr().out
    spec = importlib.util.spec_from_file_location("bench_scoring", ROOT / "bench" / "bench_scoring.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with pytest.raises(SystemExit) as e:
        bench.main(["--help"])
    assert e.value.code == 0 and "--batch_tokens" in capsys.readouterr().out


def test_scoring_benchmark_runs_and_checks_agreement(run_dir, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_scoring", ROOT / "bench" / "bench_scoring.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    med = bench.main(["--ckpt", str(run_dir), "--tasks", "xcopa", "--langs", "zh", "--limit", "3", "--runs", "1",
                      "--dtype", "float32"])
    assert set(med) == {"naive", "rows", "tree"} and "| tree |" in capsys.readouterr().out


def test_tasks_never_import_evaluate():
    import ast
    for path in sorted((ROOT / "tasks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "evaluate" for n in names), f"{path.name} imports evaluate"
    assert not (ROOT / "tasks" / "bench.py").exists()                       # it lives in bench/bench_scoring.py
