"""Probes, as a careless user would try them: every entry point answers --help; every bad setting (unknown key,
wrong type, out of range, a file where a directory belongs, a device that is not there) is ONE line on stderr and
exit code 2 — never a traceback — and nothing is written; a failing run leaves a user's files where they were.
(kill -9 probes live with the code they kill: tests/test_data.py, tests/test_distributed.py.)"""
import runpy
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["train.py", "sft.py", "data.py", "bpe.py", "lid.py", "evaluate.py", "chat.py", "server.py",
                "export.py", "selfinstruct.py", "plan.py", "curriculum.py", "ablate.py"] + \
    sorted(f"bench/{p.name}" for p in (ROOT / "bench").glob("*.py"))


def run_main(script, argv, monkeypatch):
    """Run an entry point in this process as `python script argv...`; its exit code (0 if it returned)."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *argv])
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


@pytest.mark.parametrize("script", [s for s in ENTRY_POINTS if (ROOT / s).exists()])
def test_every_entry_point_answers_help(script, capsys, monkeypatch):
    assert run_main(script, ["--help"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python") and "settings (default: meaning)" in out


def one_line_error(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Warning", "warnings.warn"))]
    return lines


def bad_cases(tmp):
    a_file = tmp / "a_file"
    a_file.write_text("not a directory")
    cuda = [] if torch.cuda.is_available() else [("train.py", ["--device=cuda"], "no CUDA device")]
    return cuda + [
        ("train.py", ["--max_iter=3"], "unknown config key 'max_iter'"),
        ("train.py", ["--max_iters=abc"], "must be int"),
        ("train.py", ["--max_iters=-1"], "max_iters=-1 must be >= 1"),
        ("train.py", ["--grad_accum=0"], "grad_accum=0 must be >= 1"),
        ("train.py", ["--eval_interval=0"], "eval_interval=0 must be >= 1"),
        ("train.py", ["--preset=bogus"], "preset='bogus'"),
        ("train.py", ["--curriculum=bogus"], "unknown curriculum 'bogus'"),
        ("train.py", ["--n_head=3"], "not a multiple of n_head=3"),
        ("train.py", [f"--out_dir={a_file}"], "is a file"),
        ("train.py", [f"--shards={a_file}"], "is not a directory"),
        ("train.py", [f"--val_data={tmp}"], "holds no <lang>.txt files"),
        ("sft.py", ["--eval_interval=0"], "eval_interval=0 must be >= 1"),
        ("sft.py", ["--learning_rate=-1"], "learning_rate=-1.0"),
        ("sft.py", [f"--init_from={tmp / 'none'}"], "holds no checkpoint"),
        ("data.py", ["--stages=lid,tokenise"], "unknown stage(s) tokenise"),
        ("data.py", [f"--input={tmp}", f"--out={a_file}", "--stages=lid"], "is a file"),
        ("data.py", [f"--lid={tmp}"], "Is a directory"),
        ("data.py", ["--workers=-2"], "workers=-2"),
        ("bpe.py", ["--max_bytes=0", f"--input={a_file}", f"--out={tmp / 'tok'}"], "max_bytes"),
        ("bpe.py", [f"--input={a_file}", f"--out={a_file}"], "a_file"),
        ("lid.py", [f"--label={tmp / 'missing.txt'}"], "missing.txt"),
        ("chat.py", ["--top_k=-3"], "top_k=-3"),
        ("chat.py", ["--repetition_penalty=0"], "repetition_penalty=0"),
        ("server.py", ["--port=70000"], "port=70000"),
        ("export.py", ["--dtype=int8", f"--out={tmp / 'hf'}"], "dtype='int8'"),
        ("export.py", [f"--ckpt={tmp}", f"--out={a_file}"], "a_file"),
        ("plan.py", ["--gpus=0"], "gpus=0 must be >= 1"),
        ("plan.py", ["--gpus=-4"], "gpus=-4 must be >= 1"),
        ("plan.py", ["--mfu=0"], "mfu=0.0 must be in (0, 1]"),
        ("plan.py", ["--gpu=V100"], "gpu='V100'"),
        ("curriculum.py", [f"--plot={tmp / 'no-run'}"], "not found"),
        ("evaluate.py", ["--limit=-1"], "limit=-1"),
        ("evaluate.py", ["--shots=-2"], "shots=-2"),
        ("evaluate.py", [f"--ckpt={a_file}"], "a_file"),
        ("selfinstruct.py", [f"--out={tmp}"], "directory"),
    ]


def test_bad_settings_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    probe = tmp_path / "probe"
    probe.mkdir()
    failures = []
    for script, argv, message in bad_cases(probe):
        before = sorted(p.name for p in tmp_path.rglob("*"))
        code = run_main(script, argv, monkeypatch)
        lines = one_line_error(capsys)
        ok = code == 2 and len(lines) == 1 and lines[0].startswith("error") and message in lines[0] and \
            "Traceback" not in lines[0] and sorted(p.name for p in tmp_path.rglob("*")) == before
        if not ok:
            failures.append((script, argv, code, lines[:3]))
    assert not failures, failures


def test_a_failing_run_leaves_a_users_files_in_place(tmp_path, capsys, monkeypatch, tiny_data_dir):
    """Point each tool with an output at a folder holding a user's file, with a setting that fails late enough to
    pass the argument parser: the folder must come out exactly as it went in."""
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    cases = [("train.py", [f"--data_dir={tiny_data_dir}", f"--out_dir={mine}", "--vocab_size=300", "--max_iters=2"]),
             ("sft.py", [f"--init_from={tmp_path / 'none'}", f"--out_dir={mine}"]),
             ("data.py", [f"--input={tiny_data_dir / 'mono'}", f"--out={mine}", "--stages=lid"]),
             ("bpe.py", [f"--input={tiny_data_dir / 'mono' / 'en.txt'}", f"--out={mine}", "--vocab_size=300"]),
             ("export.py", [f"--ckpt={tmp_path / 'none'}", f"--out={mine}"])]
    for script, argv in cases:
        code = run_main(script, argv, monkeypatch)
        assert code == 2, (script, capsys.readouterr())
        capsys.readouterr()
        assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"], script
        assert (mine / "thesis.txt").read_text() == "years of work"
