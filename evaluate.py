"""Evaluation of PolyLM checkpoints: the paper's multilingual benchmark (PolyLM paper §5 "Evaluation", its table of
benchmarks), plus per-language bits-per-byte.

    python evaluate.py --ckpt out/toy                          # bits-per-byte per language (the default task)
    python evaluate.py --ckpt out/toy --tasks all              # the whole suite that has data (bundled + configured)
    python evaluate.py --ckpt out/toy --tasks xcopa,xwinograd --langs zh,ja --limit 100 --shots 0
    python evaluate.py --ckpt out/toy --tasks xnli --xnli_dir ~/data/XNLI-1.0

Writes RUN_DIR/results.json (scores per task and language, with the config, checkpoint and tokenizer hashes and a
hash of each task's data), RUN_DIR/results.md (the tables printed at the end), RUN_DIR/eval_<family>.png (a bar
chart per task family) and RUN_DIR/eval_outputs/ (every generated answer). See docs/EVALUATION.md.

| task      | family        | what                                                     | chance  | data            |
|-----------|---------------|----------------------------------------------------------|---------|-----------------|
| bpb       | lm            | bits per UTF-8 byte of held-out text (tokenizer-fair)    | uniform | run's val shards|
| xnli      | understanding | NLI, 3-way log-likelihood choice (harness template)      | 33.3%   | --xnli_dir      |
| xcopa     | understanding | causal commonsense, 2-way choice (harness template)      | 50%     | bundled         |
| pawsx     | understanding | paraphrase, 2-way choice (harness template)              | 50%     | --pawsx_dir     |
| xwinograd | understanding | Winograd schemas, partial scoring (harness template)     | 50%     | bundled         |
| tydiqa    | qa            | TyDiQA-GoldP, greedy answer, SQuAD EM/F1                 | ~0      | --tydiqa_path   |
| mtg       | generation    | story/title/question generation, summarization, ROUGE    | ~0      | --mtg_dir       |
| ntrex     | translation   | NTREX-128 slice, en<->17 languages, BLEU/chrF (sacrebleu)| ~0      | bundled         |
| tatoeba   | translation   | Tatoeba slice, en<->17 languages, BLEU/chrF              | ~0      | bundled         |
| wmt20     | translation   | newstest2020, en<->de ja pl ru zh, BLEU/chrF             | ~0      | --wmt20_dir     |

Bits-per-byte (bpb) is the language-modelling score that compares models with *different tokenizers* fairly: a
model's total negative log-likelihood of a text, in bits, divided by the text's length in UTF-8 bytes. Per-token loss
would flatter a tokenizer with long tokens; per-byte loss does not.

    bpb = sum over predicted tokens of -log2 p(token | context)  /  sum of their UTF-8 bytes

Conventions: held-out text is read as one token stream (documents separated by <|endoftext|>, which counts as one
byte, like the newline that separates lines in the raw files), cut into non-overlapping windows of block_size; every
token except the very first is predicted once.

The multiple-choice tasks use lm-evaluation-harness's templates and token boundaries and are scored by
tasks/scoring.py, which shares each question's context between its choices (one forward per question, batched).

Machine: runtime.choose, the one device/dtype policy of train.py, sft.py and chat.py: `--device=auto` is the GPU
where there is one, else the CPU; `--dtype=auto` is bf16 on CUDA and on CPUs that compute bf16 natively
(AVX512-BF16/AMX), fp32 elsewhere (an AVX2-only CPU would emulate bf16 ~40x slower). Bad input stops before any work
with one line and exit code 2: a --limit < 0 or --shots < -1, an unknown --langs code, a --ckpt that is not a run
dir, --device=cuda without CUDA, a run dir whose tokenizer/ is not the one it was trained with.

Imports go one way: evaluate.py imports tasks/ (loaders, scorers, metrics, bpb); nothing in tasks/ imports it.
"""
import dataclasses
import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import bpe
import pipeline
import runtime
import shards
from common import LANGS, atomic_write_json, atomic_write_text, pyplot
from config import run_cli
from model import latest_checkpoint, load_model, load_tokenizer
from tasks import benchmarks as B
from tasks.bpb import bits_per_byte, format_table, token_byte_lengths
from tasks import metrics as M
from tasks import scoring as S

REPO = Path(__file__).resolve().parent


# ============================================================================= bits per byte (tasks/bpb.py)

def heldout_streams(data_dir, val_frac, enc, langs=LANGS):
    """Token streams of the held-out (val) documents of each language's monolingual text in a data_dir."""
    streams = {}
    for name, (lang, kind, path) in pipeline.discover_sources(data_dir).items():
        if kind == "mono" and lang in langs and name == lang:          # not the hq.<lang> subsets
            _, val = pipeline.split_documents(kind, path, val_frac)
            streams[lang] = shards.tokenize_documents(enc, val)
    return streams


def run_val_streams(run, run_cfg, enc, tok_hash, data_dir=""):
    """The validation streams bits-per-byte is measured on: data_dir's val split when given, else the val shards
    the run trained with (config.json "shards": what train.py evaluated), else the run's data_dir re-tokenized."""
    shard_dir = run_cfg.get("shards")
    if not data_dir and shard_dir and (Path(shard_dir) / "manifest.json").exists():
        m = shards.load_manifest(shard_dir, tok_hash)
        return {name: s for name, s in shards.load_shards(shard_dir, m, "val").items()
                if m["sources"][name]["kind"] == "mono" and not m["sources"][name].get("hq") and len(s) > 1}
    train_cfg = run_cfg["train"]
    if not (data_dir or train_cfg.get("data_dir")) or (not data_dir and train_cfg.get("shards")):
        raise FileNotFoundError(f"{run}: its shards ({shard_dir}) are gone; pass --data_dir=DIR with raw text to "
                                f"measure bits per byte on")
    return heldout_streams(data_dir or train_cfg["data_dir"], train_cfg["val_frac"], enc)


# ============================================================================= settings

@dataclasses.dataclass
class EvalConfig:
    ckpt: str = "out/toy"           # run dir written by train.py / sft.py
    tasks: str = "bpb"              # comma list of tasks/groups: all | understanding | xcopa,xnli,... (docs/EVALUATION.md)
    langs: str = ""                 # comma list of languages to keep ('' = every language a task has)
    limit: int = 0                  # at most this many examples per task and language (0 = all; not comparable then)
    shots: int = -1                 # few-shot examples per prompt (-1 = task default: 0 for choice tasks, 1 otherwise)
    directions: str = "both"        # translation directions: both | en-x | x-en
    mtg_tasks: str = "story,title,qg,summ"  # MTG sub-tasks to run
    max_new_tokens: int = 0         # cap on generated tokens per answer (0 = per-task default)
    seed: int = 1234                # few-shot sampling seed (lm-eval-harness's default)
    scorer: str = "tree"            # log-likelihood scorer: tree (shared context, batched) | rows (batched) | naive
    batch_tokens: int = 8192        # tokens per forward pass of the batched scorer
    gen_batch: int = 16             # prompts per batched greedy generation (left-padded, KV cache)
    # data (the bundled sets need nothing; the others point at the official files)
    eval_dir: str = ""              # bundled eval data: xcopa/ xwinograd/ ntrex/ tatoeba/ ('' = the repo's data/eval)
    xnli_dir: str = ""              # XNLI-1.0 folder with xnli.dev.tsv / xnli.test.tsv
    xnli_split: str = "dev"         # XNLI split to score (dev, as lm-eval-harness; or test)
    pawsx_dir: str = ""             # PAWS-X x-final folder with <lang>/test_2k.tsv
    tydiqa_path: str = ""           # tydiqa-goldp-v1.1-dev.json (or a folder of per-language SQuAD-format files)
    mtg_dir: str = ""               # MTG data laid out as <task>/<lang>/test.src + test.tgt
    wmt20_dir: str = ""             # sacrebleu's ~/.sacrebleu/wmt20 or the unpacked WMT20 test set
    # bits per byte
    data_dir: str = ""              # held-out text: data_dir/mono/<lang>.txt val split ('' = the run's own val shards)
    max_tokens: int = 0             # evaluate at most this many tokens per language (0 = all)
    batch_size: int = 8             # windows per forward pass
    device: str = "auto"            # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N (runtime.choose)
    dtype: str = "auto"             # auto (bf16 on CUDA / native-bf16 CPUs, else fp32) | float32 | bfloat16 (autocast)
    threads: int = 0                # torch CPU threads (0 = torch's default; 1 is fastest for tiny models on a busy CPU)
    plots: bool = True              # write a bar chart PNG per task family


# name: (family, main metric, chance level, default shots)
TASKS = {
    "bpb": ("lm", "val_bpb", None, 0),
    "xnli": ("understanding", "acc", 1 / 3, 0), "xcopa": ("understanding", "acc", 0.5, 0),
    "pawsx": ("understanding", "acc", 0.5, 0), "xwinograd": ("understanding", "acc", 0.5, 0),
    "tydiqa": ("qa", "f1", 0.0, 1), "mtg": ("generation", "rougeL", 0.0, 1),
    "ntrex": ("translation", "bleu", 0.0, 1), "tatoeba": ("translation", "bleu", 0.0, 1),
    "wmt20": ("translation", "bleu", 0.0, 1)}
GROUPS = {"all": list(TASKS), "understanding": ["xnli", "xcopa", "pawsx", "xwinograd"], "qa": ["tydiqa"],
          "generation": ["mtg"], "translation": ["ntrex", "tatoeba", "wmt20"]}
TASK_LANGS = {  # PolyLM's languages in each benchmark (translation: the non-English side of en<->xx)
    "bpb": " ".join(LANGS),
    "xnli": "ar de en es fr ru th tr vi zh", "xcopa": "id it th tr vi zh", "pawsx": "de en es fr ja ko zh",
    "xwinograd": "en fr ja pt ru zh", "tydiqa": "ar en id ko ru", "mtg": "en de fr es zh",
    "ntrex": " ".join(l for l in LANGS if l != "en"), "tatoeba": " ".join(l for l in LANGS if l != "en"),
    "wmt20": "de ja pl ru zh"}
NEEDS = {"xnli": "xnli_dir", "pawsx": "pawsx_dir", "tydiqa": "tydiqa_path", "mtg": "mtg_dir", "wmt20": "wmt20_dir"}
TEMPLATES = {"xnli": "lm-eval-harness lm_eval/tasks/xnli/utils.py", "xcopa": "lm-eval-harness lm_eval/tasks/xcopa/utils.py",
             "pawsx": "lm-eval-harness lm_eval/tasks/paws-x v1 (PR #2434)",
             "xwinograd": "lm-eval-harness lm_eval/tasks/xwinograd/utils.py (partial scoring)",
             "tydiqa": "open-instruct eval/tydiqa/run_eval.py", "mtg": "evaluate.py (Field: text)",
             "ntrex": "evaluate.py (Lang: text)", "tatoeba": "evaluate.py (Lang: text)", "wmt20": "evaluate.py (Lang: text)"}


def check_eval_config(cfg):
    """Settings that cannot work, as one clear error before anything is loaded."""
    if cfg.scorer not in ("tree", "rows", "naive"):
        raise ValueError(f"scorer={cfg.scorer!r}: choose tree, rows or naive")
    if cfg.directions not in ("both", "en-x", "x-en"):
        raise ValueError(f"directions={cfg.directions!r}: choose both, en-x or x-en")
    if cfg.xnli_split not in ("dev", "test"):
        raise ValueError(f"xnli_split={cfg.xnli_split!r}: choose dev or test")
    if cfg.limit < 0:
        raise ValueError(f"limit={cfg.limit} must be >= 0 (examples to keep per task and language; 0 = all)")
    if cfg.shots < -1:
        raise ValueError(f"shots={cfg.shots} must be >= -1 (few-shot examples per prompt; -1 = the task's default)")
    for key in ("batch_tokens", "gen_batch", "batch_size"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} must be >= 1")
    for key in ("max_new_tokens", "max_tokens", "threads"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key}={getattr(cfg, key)} must be >= 0")
    unknown = [l for l in split_list(cfg.langs) if l not in LANGS]
    if unknown:
        raise ValueError(f"langs: unknown language code(s) {', '.join(unknown)}; PolyLM's are {' '.join(LANGS)}")
    bad = [t for t in split_list(cfg.mtg_tasks) if t not in B.MTG_TASKS]
    if bad:
        raise ValueError(f"mtg_tasks: unknown {', '.join(bad)}; choose from {', '.join(B.MTG_TASKS)}")


def split_list(text):
    return [x.strip() for x in text.split(",") if x.strip()]


def resolve_tasks(spec, cfg, log=print):
    """Task names from a comma list of tasks/groups. Groups skip tasks whose data is not configured, or that have
    none of --langs (with a note); naming such a task explicitly is an error that says what is missing."""
    names, explicit = [], set()
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        if part in GROUPS:
            names += GROUPS[part]
        elif part in TASKS:
            names.append(part)
            explicit.add(part)
        else:
            raise ValueError(f"unknown task {part!r}; choose from {', '.join(list(TASKS) + list(GROUPS))}")
    out = []
    for t in dict.fromkeys(names):
        if t in NEEDS and not getattr(cfg, NEEDS[t]):
            if t in explicit:
                raise ValueError(f"task {t} needs --{NEEDS[t]}=PATH: its data is not bundled "
                                 f"(docs/EVALUATION.md says where to get it)")
            log(f"skipping {t}: its data is not bundled; pass --{NEEDS[t]}=... (docs/EVALUATION.md says where to get it)")
            continue
        if not task_langs(t, cfg):
            if t in explicit:
                raise ValueError(f"task {t} has none of --langs={cfg.langs}; its languages: {TASK_LANGS[t]}")
            log(f"skipping {t}: none of --langs={cfg.langs} (it has {TASK_LANGS[t]})")
            continue
        out.append(t)
    return out


def task_langs(task, cfg):
    """The task's languages, in its order, that --langs keeps (all when --langs is empty)."""
    langs = TASK_LANGS[task].split()
    want = split_list(cfg.langs)
    return [l for l in langs if l in want] if want else langs


def sample_shots(pool, k, rnd, exclude=None):
    """lm-eval-harness's ContextSampler: rnd.sample(pool, k), one more when the pool is the eval set itself, and the
    doc being evaluated removed."""
    if k <= 0 or not pool:
        return []
    picked = rnd.sample(pool, min(len(pool), k + (exclude is not None)))
    return [d for d in picked if d is not exclude][:k]


# ============================================================================= multiple choice (log-likelihood)

def load_mc(task, cfg, lang):
    """(eval docs, few-shot pool, pool is the eval set?, files read, split) for a multiple-choice task."""
    root = Path(cfg.eval_dir or REPO / "data" / "eval")
    if task == "xcopa":
        docs, f1 = B.load_xcopa(root / "xcopa", lang, "test")
        pool, f2 = B.load_xcopa(root / "xcopa", lang, "val")
        return docs, pool, False, f1 + f2, "test"
    if task == "xwinograd":
        docs, f = B.load_xwinograd(root / "xwinograd" / "dataset.tsv", lang)
        return docs, docs, True, f, "test"
    if task == "xnli":
        docs, f = B.load_xnli(cfg.xnli_dir, lang, cfg.xnli_split)
        return docs, docs, True, f, cfg.xnli_split
    if task == "pawsx":
        docs, f1 = B.load_pawsx(cfg.pawsx_dir, lang, "test")
        pool, f2 = ([], []) if cfg.shots <= 0 else B.load_pawsx(cfg.pawsx_dir, lang, "dev")
        return docs, pool, False, f1 + f2, "test"
    raise ValueError(task)


ITEM = {"xcopa": B.xcopa_item, "xnli": B.xnli_item, "pawsx": B.pawsx_item, "xwinograd": B.xwinograd_item}


def mc_requests(task, enc, docs, pool, pool_is_eval, shots, seed, lang):
    """Items and their token requests, with lm-eval-harness's few-shot format (examples joined by a blank line)."""
    rnd = random.Random(seed)
    items, requests = [], []
    for doc in docs:
        item = ITEM[task](doc, lang)
        ex = sample_shots(pool, shots, rnd, doc if pool_is_eval else None)
        prefix = "".join(ITEM[task](e, lang)["example"] + "\n\n" for e in ex)
        items.append(item)
        requests.append([S.encode_pair(enc, prefix + c, x) for c, x in zip(item["contexts"], item["continuations"])])
    return items, requests


def model_device(model):
    """Where the scorers put their tensors: where the model's weights are."""
    return next(model.parameters()).device


def score_requests(model, requests, cfg, autocast=None, desc=""):
    """Log-likelihoods of all requests (flat order) with the configured scorer (tasks/scoring.py)."""
    block = model.cfg.block_size
    if cfg.scorer == "naive":
        flat = [r for q in requests for r in q]
        return S.loglik_naive(model, tqdm(flat, desc=desc, leave=False), block, model_device(model), autocast)
    tree = cfg.scorer == "tree"
    with tqdm(total=S.count_rows(requests, block, tree), desc=desc, leave=False, unit="row") as bar:
        return S.loglik_batched(model, requests, block, model_device(model), autocast, cfg.batch_tokens, tree, bar)


def run_multiple_choice(task, model, enc, cfg, lang, shots, autocast=None):
    docs, pool, pool_is_eval, files, split = load_mc(task, cfg, lang)
    docs = docs[:cfg.limit] if cfg.limit else docs
    items, requests = mc_requests(task, enc, docs, pool, pool_is_eval, shots, cfg.seed, lang)
    lls = score_requests(model, requests, cfg, autocast, desc=f"{task} {lang}")
    k, accs = 0, []
    for item, reqs in zip(items, requests):
        accs.append(S.choice_metrics(lls[k:k + len(reqs)], item["gold"], item["choice_lens"]))
        k += len(reqs)
    res = {"acc": M.mean(a["acc"] for a in accs), "acc_norm": M.mean(a["acc_norm"] for a in accs), "n": len(accs)}
    return res, files, split


# ============================================================================= generation (greedy)

def gen_prompt(item, shots, header=""):
    return header + "".join(s["prompt"] + s["answer"] + "\n\n" for s in shots) + item["prompt"]


def run_generations(model, enc, cfg, items, shot_items, max_new, stop_ids, desc, autocast=None, pool_is_eval=False):
    """Greedy answers for items, each with `shots` few-shot examples sampled from shot_items (batched generation)."""
    rnd = random.Random(cfg.seed)
    prompts = [gen_prompt(it, sample_shots(shot_items, it["shots"], rnd, it if pool_is_eval else None),
                          it.get("header", "")) for it in items]
    limits = [cfg.max_new_tokens or it.get("max_new") or max_new for it in items]
    with tqdm(total=len(prompts), desc=desc, leave=False) as bar:
        return S.generate_greedy(model, enc, prompts, limits, stop_ids, model_device(model), autocast, cfg.gen_batch,
                                 bar)


def save_outputs(run, name, items, outs):
    d = run / "eval_outputs"
    d.mkdir(exist_ok=True)
    atomic_write_text(d / f"{name.replace('/', '_')}.jsonl", "".join(
        json.dumps({"prompt": it["prompt"][-300:], "refs": it["refs"], "output": o}, ensure_ascii=False) + "\n"
        for it, o in zip(items, outs)))


def run_tydiqa(model, enc, cfg, lang, shots, stop_ids, run, autocast=None):
    docs, files = B.load_squad_json(cfg.tydiqa_path, lang)
    items = [dict(B.tydiqa_item(d, lang), shots=shots, header=B.tydiqa_header(lang)) for d in docs]
    evals = items[:cfg.limit] if cfg.limit else items
    outs = run_generations(model, enc, cfg, evals, items, 50, stop_ids, f"tydiqa {lang}", autocast, pool_is_eval=True)
    save_outputs(run, f"tydiqa.{lang}", evals, outs)
    scores = [M.qa_scores(o, it["refs"], lang) for o, it in zip(outs, evals)]
    return {"em": 100 * M.mean(s[0] for s in scores), "f1": 100 * M.mean(s[1] for s in scores), "n": len(evals)}, files


def run_mtg(model, enc, cfg, sub, lang, shots, stop_ids, run, autocast=None):
    docs, files = B.load_mtg(cfg.mtg_dir, sub, lang)
    items = [dict(B.mtg_item(d, sub), shots=shots) for d in docs]
    evals = items[:cfg.limit] if cfg.limit else items
    outs = run_generations(model, enc, cfg, evals, items, B.MTG_TASKS[sub][2], stop_ids, f"mtg {sub} {lang}",
                           autocast, pool_is_eval=True)
    save_outputs(run, f"mtg.{sub}.{lang}", evals, outs)
    scores = [M.rouge(o, it["refs"][0]) for o, it in zip(outs, evals)]
    res = {k: 100 * M.mean(s[k] for s in scores) for k in ("rouge1", "rouge2", "rougeL")}
    return dict(res, n=len(evals)), files, outs


def run_translation(task, model, enc, cfg, src, tgt, shots, stop_ids, run, autocast=None):
    root = Path(cfg.eval_dir or REPO / "data" / "eval")
    if task == "wmt20":
        pool, docs, files = B.load_wmt20(Path(cfg.wmt20_dir).expanduser(), src, tgt)
    else:
        pool, docs, files = (B.load_ntrex if task == "ntrex" else B.load_tatoeba)(root / task, src, tgt)
    evals = docs[:cfg.limit] if cfg.limit else docs
    items = [dict(B.translation_item(d, src, tgt), shots=shots,
                  max_new=2 * len(enc.encode_ordinary(d["src"])) + 16) for d in evals]
    pool_items = [dict(B.translation_item(d, src, tgt), shots=0) for d in (pool or evals)]
    outs = run_generations(model, enc, cfg, items, pool_items if pool else items, 128, stop_ids,
                           f"{task} {src}-{tgt}", autocast, pool_is_eval=not pool)
    save_outputs(run, f"{task}.{src}-{tgt}", items, outs)
    res = M.bleu_chrf(outs, [it["refs"][0] for it in items], tgt)
    return dict(res, n=len(items)), files


def translation_pairs(task, cfg):
    pairs = []
    for xx in task_langs(task, cfg):
        if cfg.directions in ("both", "en-x"):
            pairs.append(("en", xx))
        if cfg.directions in ("both", "x-en"):
            pairs.append((xx, "en"))
    return pairs


# ============================================================================= the report

def fmt(metric, v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}" if metric == "val_bpb" else f"{v:.1f}"


def chance_text(task, entry):
    """The chance level as printed: accuracy of guessing, ≈0 for generation, the uniform model's bits per byte."""
    if task == "bpb":
        u = [r["uniform_bpb"] for r in entry.get("results", {}).values() if "uniform_bpb" in r]
        return f"{M.mean(u):.3f} (uniform)" if u else "uniform"
    c = entry.get("chance")
    return "≈0" if not c else f"{100 * c:.1f}"


def format_suite(results):
    """Markdown: a summary row per task (mean over languages next to the chance level), then per-language tables."""
    lines = ["| task | family | metric | mean | chance | languages | examples |", "|---|---|---|---:|---:|---:|---:|"]
    for task, e in results.items():
        if task not in TASKS or "results" not in e:
            continue
        metric = e.get("metric", TASKS[task][1])
        vals = [r[metric] for r in e["results"].values() if metric in r]
        n = sum(r.get("n", r.get("tokens", 0)) for r in e["results"].values())
        lines.append(f"| {task} | {TASKS[task][0]} | {metric} | {fmt(metric, M.mean(vals))} | {chance_text(task, e)} "
                     f"| {len(vals)} | {n:,} |")
    for task, e in results.items():
        if task not in TASKS or task == "bpb" or "results" not in e:
            continue
        keys = sorted({k for r in e["results"].values() for k in r if k not in ("n", "note") and
                       not k.endswith("signature")})
        lines += ["", f"**{task}** ({e.get('template', '')}; {e.get('shots', 0)}-shot; chance "
                  f"{chance_text(task, e)})", "",
                  "| " + " | ".join([{"translation": "pair", "generation": "task/lang"}.get(TASKS[task][0], "lang")]
                                    + keys + ["n"]) + " |",
                  "|---|" + "---:|" * (len(keys) + 1)]
        for lang, r in e["results"].items():
            lines.append("| " + " | ".join([lang] + [fmt(k, r.get(k)) for k in keys] + [str(r.get("n", ""))]) + " |")
    return "\n".join(lines)


PLOT_METRICS = {"lm": ["val_bpb", "uniform_bpb"], "understanding": ["acc", "acc_norm"], "qa": ["em", "f1"],
                "generation": ["rouge1", "rouge2", "rougeL"], "translation": ["bleu", "chrf"]}


def plot_families(results, out_dir):
    """eval_<family>.png: for each task of the family, grouped bars per language (its metrics), chance dashed."""
    plt = pyplot()
    written = []
    for family, metrics in PLOT_METRICS.items():
        tasks = [t for t in TASKS if TASKS[t][0] == family and t in results and results[t].get("results")]
        if not tasks:
            continue
        fig, axes = plt.subplots(len(tasks), 1, figsize=(11, 3.2 * len(tasks)), squeeze=False)
        for ax, t in zip(axes[:, 0], tasks):
            keys = list(results[t]["results"])
            width = 0.8 / len(metrics)
            top = 1.0
            for j, m in enumerate(metrics):
                vals = [results[t]["results"][k].get(m, float("nan")) for k in keys]
                ax.bar(np.arange(len(keys)) + (j - (len(metrics) - 1) / 2) * width, vals, width, label=m)
                top = max([top] + [v for v in vals if v == v])
            ax.set_xticks(range(len(keys)), keys, rotation=90 if len(keys) > 12 else 0, fontsize=7)
            chance = results[t].get("chance")
            if chance:
                ax.axhline(100 * chance, color="gray", ls="--", label=f"chance {100 * chance:.0f}")
            ax.set_ylim(0, top * 1.15)
            ax.set(title=f"{t} ({results[t].get('shots', 0)}-shot)")
            ax.legend(fontsize=7, loc="upper right", ncol=len(metrics) + 1)
        fig.tight_layout()
        path = Path(out_dir) / f"eval_{family}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def file_sha256(path, n=16):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def write_results(run, new):
    """Merge new task entries into RUN_DIR/results.json (atomic), so running one task keeps the others."""
    out = run / "results.json"
    try:
        results = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {}
    except ValueError:
        raise ValueError(f"{out} is not JSON; move it away (the tasks in it are then measured afresh)") from None
    results.update(new)
    atomic_write_json(out, results)
    return results, out


# ============================================================================= the run

def main(argv=None):
    return run_cli(evaluate_run, EvalConfig, argv, prog="evaluate.py")


def check_run_dir(path):
    """--ckpt must be a run dir (config.json, tokenizer/, ckpt/): one line saying what it is instead."""
    run = Path(path)
    if not run.exists():
        raise FileNotFoundError(f"--ckpt={run} not found: give a run dir written by train.py or sft.py")
    if not run.is_dir():
        raise NotADirectoryError(f"--ckpt={run} is a file: give the run dir (config.json, tokenizer/, ckpt/)")
    if (run / "model.pt").exists() or (run / "state.json").exists():
        raise ValueError(f"--ckpt={run} is a checkpoint inside a run: give its run dir, --ckpt={run.parent.parent}")
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"--ckpt={run} is not a run dir: it has no config.json (train.py or sft.py writes "
                                f"one, next to tokenizer/ and ckpt/)")
    return run


def evaluate_run(cfg: EvalConfig):
    check_eval_config(cfg)
    run = check_run_dir(cfg.ckpt)
    device, dtype, why = runtime.choose(cfg.device, cfg.dtype)       # one line for cuda without CUDA, bad names
    names = resolve_tasks(cfg.tasks, cfg, log=tqdm.write)
    if not names:
        raise ValueError(f"--tasks={cfg.tasks}: none of these tasks has data; see docs/EVALUATION.md")
    enc = load_tokenizer(run)                    # checked against the hash config.json recorded
    tok_hash = bpe.tokenizer_hash(run / "tokenizer")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = latest_checkpoint(run, warn=tqdm.write)
    if ckpt is None:
        raise FileNotFoundError(f"{run}/ckpt/ holds no complete checkpoint; train first (python train.py)")
    model = load_model(run, device, checkpoint=ckpt)
    tqdm.write(f"{run}: {ckpt.name} on {device}, {str(dtype).removeprefix('torch.')} ({why})")
    ac = runtime.autocast(device, dtype)
    stamp = {"checkpoint": {"path": str(ckpt), "model_sha256": file_sha256(ckpt / "model.pt")},
             "tokenizer_hash": tok_hash, "config": dataclasses.asdict(cfg),
             "runtime": {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "why": why},
             "time": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__}
    stop_ids = S.newline_stop_ids(enc) if any(TASKS[t][0] in ("qa", "generation", "translation") for t in names) else None
    new = {}
    for task in tqdm(names, desc="tasks", unit="task"):
        t0 = time.time()
        family, metric, chance, default_shots = TASKS[task]
        shots = default_shots if cfg.shots < 0 else cfg.shots
        entry = {"family": family, "metric": metric, "chance": chance, "shots": shots, "limit": cfg.limit,
                 "template": TEMPLATES.get(task, ""), **stamp}
        files, res, skipped = [], {}, []

        def attempt(key, fn, *args):
            """Run one language/pair; a missing data file skips it (noted), unless nothing of the task runs."""
            try:
                out = fn(*args)
            except B.MissingData as e:
                skipped.append(f"{key}: {e}")
                tqdm.write(f"skipping {task} {key}: {e}")
                return None
            files.extend(out[1])
            res[key] = out[0]
            return out

        if task == "bpb":
            streams = run_val_streams(run, json.loads((run / "config.json").read_text()), enc, tok_hash, cfg.data_dir)
            if cfg.langs:                                   # the mono sources are named by their language
                streams = {k: v for k, v in streams.items() if k in split_list(cfg.langs)}
            res = bits_per_byte(model, streams, token_byte_lengths(enc), model.cfg.block_size, cfg.batch_size,
                                device, ac, max_tokens=cfg.max_tokens or None, progress=True)
            for r in res.values():
                r["uniform_bpb"] = math.log2(enc.n_vocab) * r["tokens"] / r["bytes"]
            entry.update(max_tokens=cfg.max_tokens, shots=0)
            tqdm.write(format_table(res))
        elif family == "understanding":
            for lang in task_langs(task, cfg):
                out = attempt(lang, run_multiple_choice, task, model, enc, cfg, lang, shots, ac)
                if out:
                    res[lang]["acc"] *= 100
                    res[lang]["acc_norm"] *= 100
                    entry["split"] = out[2]
            entry["scorer"] = cfg.scorer
        elif task == "tydiqa":
            for lang in task_langs(task, cfg):
                attempt(lang, run_tydiqa, model, enc, cfg, lang, shots, stop_ids, run, ac)
        elif task == "mtg":
            for sub in split_list(cfg.mtg_tasks):
                submission = {}
                for lang in task_langs(task, cfg):
                    out = attempt(f"{sub}/{lang}", run_mtg, model, enc, cfg, sub, lang, shots, stop_ids, run, ac)
                    if out:
                        submission[lang] = out[2]
                if submission:                       # MTG's submission format: {"en": [outputs], ...}
                    atomic_write_json(run / "eval_outputs" / f"{B.MTG_TASKS[sub][3]}-polylm.json", submission)
        else:                                                            # translation
            for src, tgt in translation_pairs(task, cfg):
                attempt(f"{src}-{tgt}", run_translation, task, model, enc, cfg, src, tgt, shots, stop_ids, run,
                        ac)
        if not res:
            raise B.MissingData(f"task {task}: no data found for any language. " + (skipped[0] if skipped else ""))
        if skipped:
            entry["skipped"] = skipped
        entry["results"] = res
        entry["mean"] = {metric: M.mean(r[metric] for r in res.values() if metric in r)}
        if files:
            entry["data_hash"] = B.data_hash(files)
        entry["time_s"] = round(time.time() - t0, 1)
        new[task] = entry
        write_results(run, new)                      # after every task: a crash keeps what is done
    results, out = write_results(run, new)
    shown = {t: results[t] for t in TASKS if t in results}
    table = format_suite(shown)
    atomic_write_text(run / "results.md", table + "\n")
    print(table)
    if cfg.plots:
        plot_families(shown, run)
    print(f"wrote {out}, {run / 'results.md'}" + (", eval_<family>.png" if cfg.plots else ""))
    return new


if __name__ == "__main__":
    main()
