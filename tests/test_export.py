"""export.py: a run dir is a plain GPT2LMHeadModel + tokenizer.json (same logits, same token ids), and back.

Issue 13: PolyLM's own release needed trust_remote_code and its users hit failing tokenizer conversions. Here the
exported dir loads with AutoModelForCausalLM / AutoTokenizer (offline, no remote code), the logits agree within 1e-4
in several scripts, and the HF tokenizer gives tiktoken's ids on every line of all 18 bundled languages.
"""
import dataclasses
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch

import bpe
import export
import train
from model import PolyLM, load_model

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
try:
    import transformers
except ImportError:                                           # the HF-side checks need it; the rest do not
    transformers = None
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers (test-only dependency) is not installed")

ROOT = Path(__file__).resolve().parents[1]
MONO = ROOT / "data" / "sample" / "mono"
TEXTS = {"en": "The history of the city begins in 1203, when 42 families settled by the river.",
         "zh": "今天的天气很好，我们去公园散步吧。", "ja": "東京は日本の首都で、カタカナとひらがなも使います。",
         "th": "ประเทศไทยมีประชากรประมาณ 70 ล้านคน", "ar": "في يوم من الأيام ذهب الولد إلى المدرسة.",
         "ru": "Сегодня в Москве идёт снег.", "ko": "한국어 문장을 시험합니다.", "he": "שלום עולם",
         "mix": "iPhone手机 costs ฿35,900 👍🏽 (ok?)"}


def _cfg(data_dir, out_dir, tok_dir):
    return train.TrainConfig(data_dir=str(data_dir), out_dir=str(out_dir), tokenizer_dir=str(tok_dir), n_layer=2,
                             n_head=2, n_embd=64, block_size=64, batch_size=4, max_iters=6, warmup_iters=2,
                             learning_rate=3e-3, min_lr=3e-4, eval_interval=6, eval_tokens=64, log_interval=3,
                             samples=False, dtype="float32")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An 18-language tokenizer (trained on data/sample/mono) and a 6-step 2-layer run dir that uses it."""
    work = tmp_path_factory.mktemp("export")
    old = os.getcwd()
    os.chdir(work)                                            # train.py's cache/ goes here
    try:
        tok = work / "tok"
        bpe.train_from_files(sorted(MONO.glob("*.txt")), 1024, tok, max_bytes=300_000, processes=1, verbose=False)
        (work / "data" / "mono").mkdir(parents=True)
        for f in sorted(MONO.glob("*.txt")):                  # 60 lines of each language to train on
            with open(f, encoding="utf-8") as fh:
                (work / "data" / "mono" / f.name).write_text("".join(l for _, l in zip(range(60), fh)))
        train.train(_cfg(work / "data", work / "run", tok))
    finally:
        os.chdir(old)
    hf = export.export(work / "run", work / "hf")
    return work, work / "run", hf


def _hf(hf_dir, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(hf_dir, **kw).eval()


@needs_hf
def test_export_writes_a_plain_gpt2_that_gives_our_logits(run):
    _, run_dir, hf_dir = run
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json"):
        assert (hf_dir / name).exists(), name
    c = json.loads((hf_dir / "config.json").read_text())
    assert c["architectures"] == ["GPT2LMHeadModel"] and c["activation_function"] == "gelu" and "auto_map" not in c
    ours, hf = load_model(run_dir), _hf(hf_dir)
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert type(hf).__name__ == "GPT2LMHeadModel"
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()           # tied, as ours
    enc = bpe.load(run_dir / "tokenizer")
    worst = 0.0
    for lang, text in TEXTS.items():
        ids = tok(text)["input_ids"]
        assert ids == enc.encode(text), lang
        x = torch.tensor([ids])
        with torch.no_grad():
            worst = max(worst, (ours(x) - hf(x).logits).abs().max().item())
    assert worst < 1e-4, worst
    x = torch.tensor([enc.encode(TEXTS["en"])[:8]])                                        # greedy decoding agrees
    g_ours = ours.generate(x, 12, temperature=0, stop_ids=[enc.eot_token])        # HF stops at its eos_token_id
    g_hf = hf.generate(x, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(x))
    assert g_ours.tolist() == g_hf.tolist()


@needs_hf
def test_exact_erf_gelu_is_the_right_activation(run):
    """"gelu" (erf) matches; GPT-2's default "gelu_new" (tanh) would not, once activations are O(1) (weights of
    std 0.3 instead of PolyLM's 0.006: the tiny trained model's pre-activations are too small to tell them apart)."""
    _, run_dir, hf_dir = run
    torch.manual_seed(0)
    ours = PolyLM(dataclasses.replace(load_model(run_dir).cfg, init_std=0.3)).eval()
    sd = export.to_hf(ours.state_dict())
    x = torch.tensor([bpe.load(run_dir / "tokenizer").encode(TEXTS["en"] + TEXTS["ru"])[:64]])
    diffs = {}
    for act in ("gelu", "gelu_new"):
        hf = transformers.GPT2LMHeadModel(transformers.AutoConfig.from_pretrained(hf_dir, activation_function=act))
        hf.load_state_dict(sd, strict=False)
        with torch.no_grad():
            diffs[act] = (ours(x) - hf.eval()(x).logits).abs().max().item()
    assert diffs["gelu"] < 1e-4 < diffs["gelu_new"], diffs


@needs_hf
def test_hf_tokenizer_ids_equal_tiktoken_on_all_18_languages(run):
    _, run_dir, hf_dir = run
    enc = bpe.load(run_dir / "tokenizer")
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    files = sorted(MONO.glob("*.txt"))
    assert len(files) == 18
    for f in files:
        text = f.read_text(encoding="utf-8")
        lines = text.splitlines(keepends=True)                # each line alone, in Rust (what tok(lines) runs)
        got = [e.ids for e in tok.backend_tokenizer.encode_batch(lines, add_special_tokens=False)]
        bad = [l for l, ids in zip(lines, got) if ids != enc.encode_ordinary(l)]
        assert not bad, (f.stem, len(bad), bad[0][:80])
        assert tok(text)["input_ids"] == enc.encode_ordinary(text), f.stem                # the whole file at once
    for t in export.PROBES:                                   # emoji, digits, mixed scripts, whitespace, specials
        ids = tok(t)["input_ids"]
        assert ids == enc.encode(t, allowed_special="all"), t
        assert tok.decode(ids) == enc.decode(ids) == t
    for i in range(enc.n_vocab):                              # single tokens (partial UTF-8 too) decode alike
        assert tok.decode([i]) == enc.decode([i]), i
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token_id == enc.encode("<|pad|>", allowed_special="all")[0]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_fsdp_sharded_checkpoint_exports_the_same_weights(run, tmp_path):
    """A DCP checkpoint (train.py --parallel=fsdp --consolidate=False: dcp/, no model.pt) exports like model.pt."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    _, run_dir, hf_dir = run
    sharded = tmp_path / "run"
    shutil.copytree(run_dir, sharded)
    ck = sharded / "ckpt" / (sharded / "ckpt" / "latest").read_text().strip()
    sd = torch.load(ck / "model.pt", weights_only=True)
    dcp.save({"model": sd, "optim": {"state": {"wte.weight": {"exp_avg": torch.ones(3)}}}},
             checkpoint_id=ck / "dcp", no_dist=True)          # the key layout train.save_checkpoint writes
    (ck / "model.pt").unlink()
    (ck / "optim.pt").unlink()
    out = export.export(sharded, tmp_path / "hf")
    a, b = load_file(out / "model.safetensors"), load_file(hf_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_import_round_trip_gives_back_the_run(run, tmp_path):
    _, run_dir, hf_dir = run
    export.main(["--import", str(hf_dir), "--out", str(tmp_path / "back")])
    back, orig = load_model(tmp_path / "back"), load_model(run_dir)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), orig.state_dict().values()))
    assert back.cfg == orig.cfg
    assert bpe.tokenizer_hash(tmp_path / "back" / "tokenizer") == bpe.tokenizer_hash(run_dir / "tokenizer")
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["train"]["max_iters"] == 6                    # the run's own config travelled in config.json
    assert (tmp_path / "back" / "ckpt" / "latest").read_text() == "step_000006"


@needs_hf
def test_import_a_foreign_gpt2_checkpoint(tmp_path):
    """A GPT-2 the user made with transformers + tokenizers (GPT-2's own regex, its own byte order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    text = [l for f in ("en", "de", "ru", "zh") for l in (MONO / f"{f}.txt").read_text().splitlines()[:150]]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tk.train_from_iterator(text, trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, show_progress=False))
    tk.add_special_tokens(["<|endoftext|>"])
    src = tmp_path / "gpt2"
    cfg = transformers.GPT2Config(vocab_size=tk.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                  activation_function="gelu", bos_token_id=tk.token_to_id("<|endoftext|>"))
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(src)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk).save_pretrained(src)
    out = export.import_hf(src, tmp_path / "run")
    ours, enc = load_model(out), bpe.load(out / "tokenizer")
    for t in [*TEXTS.values(), *text[::37]]:
        ids = enc.encode(t)
        assert ids == tk.encode(t).ids, t
        x = torch.tensor([ids[:64]])
        with torch.no_grad():
            assert (ours(x) - hf(x).logits).abs().max().item() < 1e-4
    c = json.loads((src / "config.json").read_text())
    with pytest.warns(UserWarning, match="tanh approximation"):
        export.check_gpt2_config({**c, "activation_function": "gelu_new"})        # OpenAI's GPT-2: imported, warned


def test_clear_errors(run, tmp_path):
    _, run_dir, hf_dir = run
    with pytest.raises(SystemExit) as e:
        export.main(["--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    bad = tmp_path / "bad"
    shutil.copytree(hf_dir, bad)
    c = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**c, "n_inner": 3 * c["n_embd"]}))
    with pytest.raises(ValueError, match="n_inner"):
        export.import_hf(bad, tmp_path / "y")
    sd = {"transformer.wte.weight": torch.ones(2, 2), "lm_head.weight": torch.zeros(2, 2)}
    with pytest.raises(ValueError, match="ties"):
        export.from_hf(sd)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export.check_gpt2_config(c)                           # our own export: no warning


@needs_hf
def test_lm_eval_harness_scores_xcopa_like_evaluate_py(run, tmp_path, monkeypatch):
    """lm-eval (offline, the bundled jsonl via scripts/lm_eval_tasks) on the exported model == our scoring."""
    pytest.importorskip("lm_eval", reason="lm-eval is optional (heavy install); see docs/BENCHMARKS.md (export section)")
    pytest.importorskip("accelerate", reason="lm-eval's hf model needs accelerate")
    if not (ROOT / "data" / "eval" / "xcopa" / "it" / "test.it.jsonl").exists():
        pytest.skip("data/eval/xcopa is not bundled in this checkout")
    import lm_eval
    from lm_eval.tasks import TaskManager
    import evaluate
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    monkeypatch.chdir(ROOT)                                   # the task YAML's data_files are repo-relative
    _, run_dir, hf_dir = run
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32", device="cpu",
                                  tasks=["xcopa_local_it"], limit=12, batch_size=8, log_samples=True,
                                  task_manager=TaskManager(include_path=str(ROOT / "scripts" / "lm_eval_tasks")))
    rows = sorted(res["samples"]["xcopa_local_it"], key=lambda r: r["doc_id"])
    sys.path.insert(0, str(ROOT / "scripts" / "lm_eval_tasks"))
    import compare
    cfg = compare.CompareConfig(ckpt=str(run_dir), samples="")
    r = compare.compare_lang(load_model(run_dir), bpe.load(run_dir / "tokenizer"), cfg, "it", rows)
    assert r["n"] == 12 and r["prompt_diff"] == 0 and r["max_dll"] < 1e-3 and not r["flips"], r
    ours, _, _ = evaluate.run_multiple_choice("xcopa", load_model(run_dir), bpe.load(run_dir / "tokenizer"),
                                              evaluate.EvalConfig(ckpt=str(run_dir), limit=12), "it", 0)
    assert ours["acc"] == pytest.approx(res["results"]["xcopa_local_it"]["acc,none"])
