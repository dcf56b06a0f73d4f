"""Multilingual self-instruct: a teacher model writes instruction data in 11 languages (PolyLM §6, MultiAlpaca).

PolyLM's MultiAlpaca (132,701 instruction/input/output records in ar de es fr id ja ko pt ru th vi) was made by
running self-instruct (Wang et al. 2022, as in Stanford Alpaca) on ChatGPT, per language. This file is that loop,
for any OpenAI-compatible chat-completions endpoint (ChatGPT-style APIs, vLLM, or our own `chat.py --serve`):

    python selfinstruct.py --translate-seeds --langs ja,ko --teacher-url https://api.example.com/v1 --model m
    #   -> data/instruct/seeds/{ja,ko}.jsonl: review and edit them, then
    python selfinstruct.py --langs ar,de,ja --per-lang 1000 --teacher-url https://api.example.com/v1 --model m \\
        --out out/selfinstruct/multialpaca.jsonl            # API key: env OPENAI_API_KEY (--api-key-env names it)
    python sft.py --data=out/selfinstruct/multialpaca.jsonl    # train on it

(`--per-lang` and `--per_lang` are the same setting; `--help` lists them all.) Top to bottom:
  1. seeds per language: the 175 English self-instruct seeds translated by the teacher (`--translate-seeds`, cached
     in data/instruct/seeds/<lang>.jsonl for a human to review before generation; nothing is re-asked that is
     cached) plus real MultiAlpaca records where bundled (data/instruct/multialpaca/<lang>.jsonl). A language with
     neither falls back to the English seeds as demonstrations (the prompt still asks for the target language);
  2. prompt: k demonstrations sampled from the language's pool (seeds mixed with tasks generated so far, as in
     self-instruct) in a numbered Instruction/Input/Output format, asking for `new_tasks` more in the language;
  3. teacher: a bounded pool of threads sends the prompts over HTTP, with timeouts, retries with exponential
     backoff and jitter on 429/5xx/timeouts (Retry-After honoured), a request/token budget and a rate limit;
  4. parse the numbered list (selfinstruct_text.parse_tasks): malformed tasks are counted and dropped;
  5. filter, each rejection counted by reason: length (words, scaled per script), first character, blacklist
     (images, files, audio, ... per language), language of instruction and output (lid.py), exact duplicates,
     and ROUGE-L >= 0.7 against the language's pool (script-aware tokens, pruned exact search: selfinstruct_text);
  6. keep: the record is appended to the output JSONL (instruction, input, output, lang + provenance), flushed and
     fsynced, and joins the pool. A restart reads the file back and continues to the per-language targets, so an
     interrupted run loses at most its in-flight requests;
  7. report: a per-language table (requests, generated, kept, rejected by reason; also <out>.summary.md), the
     cumulative counters (<out>.stats.json) and a plot of instruction lengths and leading words (<out>.png).

Failing loudly: a teacher whose context cannot hold the prompts (read from GET /models where the server reports it,
e.g. vLLM's max_model_len, else from the first HTTP 400 that says the context is exceeded) stops the run at once
with one line naming the context, the prompt's size and the fix; a run in which every request failed exits with
an error (code 2) naming the last failure. Input files are checked record by record: a bad byte, line or field is
one error naming the file and the line.
"""
import dataclasses
import json
import math
import os
import random
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import lid
from common import LANG_NAMES, LANGS, atomic_write_json, atomic_write_text, pyplot, read_jsonl
from config import run_cli
from selfinstruct_teacher import (BudgetExhausted, Teacher, TeacherError, WorkerPool, context_exceeded,
                                  context_length, public_url)
from selfinstruct_text import (blacklisted, bad_start, dedup_key, format_task, head_word, length_unit, parse_tasks,
                               RougeIndex, tokens, words)


@dataclasses.dataclass
class SelfInstructConfig:
    langs: str = "ar,de,es,fr,id,ja,ko,pt,ru,th,vi"   # target languages, comma-separated (MultiAlpaca's 11)
    per_lang: int = 100                 # records to keep per language (MultiAlpaca has 9.5K-14.7K)
    out: str = "out/selfinstruct/multialpaca.jsonl"  # append-only output; a rerun resumes it
    teacher_url: str = "http://127.0.0.1:8000/v1"  # OpenAI-compatible base URL (POST <url>/chat/completions)
    model: str = ""                     # model name to request ('' = the first of GET <url>/models)
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key (never logged or written)
    # seeds
    translate_seeds: bool = False       # translate the English seeds into each language (cache for review), then exit
    seeds_dir: str = "data/instruct/seeds"  # translated-seed cache, one <lang>.jsonl per language
    english_seeds: str = "data/instruct/seed_tasks.jsonl"  # the 175 self-instruct seed tasks
    multialpaca_dir: str = "data/instruct/multialpaca"  # real MultiAlpaca records, <lang>.jsonl, used as seeds
    real_seeds: int = 100               # MultiAlpaca records per language used as seeds (the first N; 0 = none)
    translate_batch: int = 5            # seeds per translation request
    # prompting
    num_demos: int = 3                  # demonstrations per prompt
    generated_demos: int = 1            # of which up to this many are tasks generated earlier (the rest are seeds)
    new_tasks: int = 10                 # new tasks asked for per request
    temperature: float = 1.0            # teacher sampling temperature
    top_p: float = 1.0                  # teacher nucleus sampling
    max_tokens: int = 3072              # longest teacher reply in tokens
    seed: int = 0                       # seed of demonstration sampling (and of the teacher's, sent as `seed`)
    # teacher client
    concurrency: int = 4                # requests in flight at once (a bounded thread pool)
    timeout: float = 120.0              # seconds per HTTP attempt
    max_retries: int = 6                # retries of one request on 429 / 5xx / timeouts / dropped connections
    backoff_base: float = 1.0           # first retry waits about this long (seconds), doubling each time, jittered
    backoff_max: float = 60.0           # longest wait between retries (also caps Retry-After)
    rate_limit: float = 0.0             # most HTTP attempts per second (0 = unlimited)
    max_requests: int = 10000           # budget: HTTP attempts in this run, retries included (0 = unlimited)
    max_total_tokens: int = 0           # budget: teacher tokens (prompt + completion) in this run (0 = unlimited)
    patience: int = 30                  # give up a language when this many requests in a row kept nothing
    # filters
    rouge_threshold: float = 0.7        # reject an instruction this similar (ROUGE-L F1) to one in its language's pool
    lang_check: str = "instruction,output"  # fields that lid.py must find in the target language ('' = no check)
    lid_min_words: float = 3.0          # texts shorter than this (in English-word equivalents) skip the language check
    min_instr_words: float = 3.0        # shortest instruction (English-word equivalents: characters / 1.7 in ja, ...)
    max_instr_words: float = 150.0      # longest instruction
    max_input_words: float = 300.0      # longest input
    max_output_words: float = 500.0     # longest output
    # report
    plot: bool = True                   # draw <out>.png (instruction lengths and leading words per language)
    verbose: bool = True                # one log line per teacher reply


# Each language's name for itself. The prompt names the target language as "Japanese (日本語)": the English name
# (common.LANG_NAMES) for the instructions around it, the endonym so that the teacher also sees the script and the
# standard variety it is to write in ("Chinese (中文)" in simplified characters, "Portuguese (português)").
ENDONYMS = {"ar": "العربية", "de": "Deutsch", "es": "español", "fr": "français", "id": "Bahasa Indonesia",
            "ja": "日本語", "ko": "한국어", "pt": "português", "ru": "русский", "th": "ไทย", "vi": "Tiếng Việt",
            "zh": "中文", "it": "italiano", "nl": "Nederlands", "pl": "polski", "tr": "Türkçe", "he": "עברית"}
REASONS = ("malformed", "too_short", "too_long", "bad_start", "blacklist", "wrong_lang", "duplicate", "similar",
           "surplus")


def language_name(lang):
    """The prompt's name of a language: "Japanese (日本語)", "English"."""
    return f"{LANG_NAMES[lang]} ({ENDONYMS[lang]})" if lang in ENDONYMS else LANG_NAMES[lang]


# ----------------------------------------------------------------------------- 1. seeds (and every input file)

def read_records(path, what):
    """[(line number, record)] of a JSONL input (seeds, MultiAlpaca records, this run's own output); [] when the
    file does not exist. Parsing is common.read_jsonl's; an input is held to more: invalid UTF-8 is an error (not a
    silent U+FFFD), so is a last line that is not JSON (read_jsonl forgives it in a log), and every record must be
    a JSON object. Each error names the file and the line."""
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise ValueError(f"{path} is a directory; expected {what} (a .jsonl file)")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 (byte 0x{raw[e.start]:02x}); save {what} as UTF-8") from None
    numbers = [n for n, line in enumerate(raw.decode("utf-8").splitlines(), 1) if line.strip()]
    records = read_jsonl(path, what)
    if len(records) < len(numbers):                 # read_jsonl skipped a bad last line
        raise ValueError(f"{path}:{numbers[-1]}: not a JSON record; fix or delete that line")
    for n, rec in zip(numbers, records):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{n}: a {type(rec).__name__}, not a JSON object; each line of {what} is one "
                             f"object")
    return list(zip(numbers, records))


def check_fields(path, n, rec, need=("instruction", "output"), optional=("input", "lang", "id")):
    """A record's text fields: `need` present strings (non-empty), `optional` strings or null when present."""
    for key in need:
        if not isinstance(rec.get(key), str) or not rec[key].strip():
            raise ValueError(f"{path}:{n}: `{key}` must be a non-empty string, got {_shown(rec.get(key))}")
    for key in optional:
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise ValueError(f"{path}:{n}: `{key}` must be a string, got {_shown(rec[key])}")
    return rec


def _shown(v):
    return "nothing" if v is None else f"{json.dumps(v, ensure_ascii=False)[:40]} ({type(v).__name__})"


def repair_torn_tail(path, log=print):
    """An append-only JSONL file this program writes (the output, the seed cache) can end in a line cut short by a
    kill: cut it off, so the next record does not join it. A complete last line without its newline gets one."""
    path = Path(path)
    if not path.is_file():
        return
    raw = path.read_bytes()
    if not raw or raw.endswith(b"\n"):
        return
    last = raw[raw.rfind(b"\n") + 1:]
    try:
        json.loads(last)
        with open(path, "ab") as f:
            f.write(b"\n")
    except ValueError:
        with open(path, "r+b") as f:
            f.truncate(len(raw) - len(last))
        log(f"{path}: cut off a torn last line (a run killed mid-write): {last[:60]!r}")


def english_seeds(path):
    """The self-instruct seed tasks (seed_tasks.jsonl: {"id", "instruction", "instances": [{"input", "output"}]})
    as flat records (their first instance)."""
    out = []
    for n, r in read_records(path, "self-instruct seed tasks"):
        inst = r.get("instances")
        if not isinstance(inst, list) or not inst or not isinstance(inst[0], dict):
            raise ValueError(f"{path}:{n}: `instances` must be a list of {{\"input\", \"output\"}} objects, got "
                             f"{_shown(inst)}")
        check_fields(path, n, r, need=("instruction",), optional=("id",))
        check_fields(path, n, inst[0], need=("output",), optional=("input",))
        out.append({"id": r.get("id") or f"seed_task_{n}", "instruction": r["instruction"],
                    "input": inst[0].get("input") or "", "output": inst[0]["output"], "lang": "en"})
    if not out:
        raise FileNotFoundError(f"{path}: no English seed tasks; pass --english_seeds=data/instruct/seed_tasks.jsonl")
    return out


def load_seeds(cfg, lang, log=print):
    """Seeds of a language: its reviewed translations (seeds_dir/<lang>.jsonl, minus lines marked "skip": true) and
    the first real_seeds MultiAlpaca records; the English seeds if it has neither."""
    cache, multi = Path(cfg.seeds_dir) / f"{lang}.jsonl", Path(cfg.multialpaca_dir) / f"{lang}.jsonl"
    seeds = []
    for n, r in read_records(cache, "translated seeds"):
        if not r.get("skip"):
            check_fields(cache, n, r)
            seeds.append({**r, "input": r.get("input") or "", "lang": lang})
    real = read_records(multi, "MultiAlpaca records")[:cfg.real_seeds] if cfg.real_seeds else []
    for i, (n, r) in enumerate(real):
        check_fields(multi, n, r)
        seeds.append({"id": f"multialpaca-{lang}-{i}", "instruction": r["instruction"], "input": r.get("input") or "",
                      "output": r["output"], "lang": lang})
    if not seeds:
        log(f"[{lang}] no seeds in {cfg.seeds_dir}/{lang}.jsonl or {cfg.multialpaca_dir}/{lang}.jsonl: "
            f"using the English seeds as demonstrations (run --translate-seeds for better ones)")
        seeds = english_seeds(cfg.english_seeds)
    return seeds


# ----------------------------------------------------------------------------- 2. prompts

PROMPT = """You are asked to come up with {n} new, diverse task instructions written in {language}. They will be \
given to a language model, and its answers will teach it to follow instructions in {language}.

Requirements:
1. Write every instruction, input and output in {language}. Only code, formulas, names and the text a task works \
on (for example a sentence to translate) may be in another language.
2. Vary the verbs and the kinds of task: open questions, classification, editing, rewriting, extraction, \
reasoning, brainstorming, advice, and so on; mix questions and imperatives.
3. A text-only model must be able to do the task: nothing that needs images, audio, video, files, drawing, \
browsing or actions in the world.
4. An instruction is 1 to 2 sentences long.
5. Give an input only when the task needs one: a concrete, realistic example of at most 100 words, no \
placeholders. Otherwise write <noinput>.
6. The output is a good answer to the instruction and input, at most 100 words long.
7. Make the tasks different from the examples and from each other.

Use exactly this format, with a line "###" between tasks:
N. Instruction: ...
N. Input:
...
N. Output:
...

Examples:
{demos}
###
Now write tasks {first} to {last} in {language}."""

TRANSLATE_PROMPT = """Translate these {n} tasks from English into {language}, for an instruction dataset in \
{language}. Translate the instruction, the input and the output naturally, keeping their meaning. Leave code, \
formulas, names and any text the task works on (for example a sentence to be translated or corrected) unchanged \
where translating it would break the task; adapt tasks about the English language itself to {language}. Keep the \
numbers and exactly this format, with a line "###" between tasks:
N. Instruction: ...
N. Input:
...
N. Output:
...

{tasks}"""


def demo_block(demos):
    return "\n###\n".join(format_task(i, d["instruction"], d["input"], d["output"]) for i, d in enumerate(demos, 1))


def build_prompt(lang, demos, n):
    return PROMPT.format(n=n, language=language_name(lang), demos=demo_block(demos), first=len(demos) + 1,
                         last=len(demos) + n)


# ----------------------------------------------------------------------------- 3. the teacher (selfinstruct_teacher.py)

class RunFailed(ValueError):
    """The teacher cannot do this run (its context is too small for the prompts, or every request failed): one line
    naming why and the fix; the CLI exits with code 2."""


def make_teacher(cfg, log=print):
    """The teacher client with its model (--model, or the first that GET /models lists) and, where GET /models
    reports it, its context in tokens (teacher.context; None when unknown)."""
    t = Teacher(cfg.teacher_url, cfg.model, os.environ.get(cfg.api_key_env, ""), cfg.timeout, cfg.max_retries,
                cfg.backoff_base, cfg.backoff_max, cfg.rate_limit, cfg.max_requests, cfg.max_total_tokens,
                seed=cfg.seed, log=log)
    try:            # with --model given, the listing only tells the context: one try, no retries
        listing = t.model_list(max_retries=0 if t.model else None)
    except TeacherError as e:
        if not t.model:                               # a clean CLI error, not a traceback
            raise ValueError(f"cannot list the teacher's models ({e}); is it running? Check --teacher-url, or pass "
                             f"--model") from None
        listing = []                                  # no GET /models: a too-small context shows in the first 400
    if not t.model:
        if not listing:
            raise ValueError(f"{public_url(t.base)}/models lists no model: pass --model")
        t.model = listing[0]["id"]
    entry = next((m for m in listing if m["id"] == t.model), None)
    t.context = context_length(entry) if entry else None
    if t.context:
        log(f"teacher {t.model}: context {t.context:,} tokens (GET /models)")
    return t


def min_prompt_tokens(prompt):
    """A lower bound on a prompt's tokens under any tokenizer that splits at spaces before merging (GPT-2/tiktoken
    byte-level BPE, SentencePiece with whitespace splitting, byte tokenizers): one token per space-separated chunk.
    The chat template adds more."""
    return len(prompt.split())


def context_failure(teacher, prompt, fix, max_tokens, ctx=None, prompt_tokens=None):
    """The one line that stops a run whose requests do not fit the teacher's context: the context, the prompt's
    size (the server's count, else the lower bound) and the fix. A prompt that fits but leaves too little room for
    max_tokens (OpenAI and vLLM refuse prompt + max_tokens > context) asks for a smaller --max_tokens instead."""
    ctx = ctx or teacher.context
    where = f"teacher {teacher.model} at {public_url(teacher.base)}"
    if ctx and prompt_tokens and prompt_tokens < ctx:
        return RunFailed(f"{where} holds {ctx:,} tokens: a prompt of {prompt_tokens:,} tokens leaves "
                         f"{ctx - prompt_tokens:,} for the reply, and --max_tokens={max_tokens} asks for more: use "
                         f"--max_tokens={ctx - prompt_tokens} or less, or a teacher with a longer context")
    size = f"{prompt_tokens:,} tokens" if prompt_tokens else f"at least {min_prompt_tokens(prompt):,} tokens"
    return RunFailed(f"{where} holds " + (f"{ctx:,} tokens" if ctx else "fewer tokens than a prompt")
                     + f", but a prompt has {size} ({len(prompt):,} characters) and every request would fail: {fix}, "
                     f"or use a teacher with a longer context")


# ----------------------------------------------------------------------------- 4. a language's pool and the filters

class LangPool:
    """Everything known in one language: seeds and kept tasks (for demonstrations), their ROUGE index and
    duplicate keys, the count kept toward the target and the counters."""

    def __init__(self, lang, target, seeds):
        self.lang, self.target, self.seeds, self.generated = lang, target, seeds, []
        self.index, self.ids, self.keys = RougeIndex(), [], set()
        self.kept = self.inflight = self.idle = self.next_id = 0
        self.stats = Counter()
        for s in seeds:
            self._remember(s)

    def _remember(self, rec):
        self.keys.add(dedup_key(rec["instruction"], rec.get("input") or ""))
        toks = tokens(rec["instruction"])
        if toks:
            self.index.add(toks)
            self.ids.append(rec.get("id"))

    def add(self, rec):
        self._remember(rec)
        self.generated.append(rec)
        self.kept += 1
        m = re.fullmatch(rf"{self.lang}-(\d+)", str(rec.get("id")))
        self.next_id = max(self.next_id, int(m.group(1)) + 1 if m else 0)

    def demos(self, rng, k, k_generated):
        mine = rng.sample(self.generated, min(k_generated, len(self.generated)))
        out = mine + rng.sample(self.seeds, min(k - len(mine), len(self.seeds)))
        rng.shuffle(out)
        return out


def cheap_reason(task, lang, cfg):
    """The first failed cheap filter of a parsed task (lengths, first character, blacklist), or None."""
    n = words(task["instruction"], lang)
    if n < cfg.min_instr_words or not task["output"].strip():
        return "too_short"
    if (n > cfg.max_instr_words or words(task["input"], lang) > cfg.max_input_words
            or words(task["output"], lang) > cfg.max_output_words):
        return "too_long"
    if bad_start(task["instruction"]):
        return "bad_start"
    if blacklisted(task["instruction"], lang):
        return "blacklist"
    return None


def wrong_language(tasks, lang, cfg):
    """For each task: True when a checked field (long enough to judge) is not identified as `lang` by lid.py."""
    fields = [f for f in cfg.lang_check.split(",") if f]
    texts = [(i, t[f]) for i, t in enumerate(tasks) for f in fields if words(t[f], lang) >= cfg.lid_min_words]
    bad = [False] * len(tasks)
    for (i, _), code in zip(texts, lid.identify([t for _, t in texts]) if texts else []):
        bad[i] |= code != lang
    return bad


def filter_reply(pool, reply, finish_reason, cfg, provenance):
    """Parse a reply and run the filters. Returns (records to keep, Counter of this reply: generated, kept and the
    rejections by reason). Kept records join the pool at once, so later tasks of the reply are checked against
    them too."""
    tasks, malformed = parse_tasks(reply, truncated=finish_reason == "length")
    c = Counter(generated=len(tasks) + malformed, malformed=malformed)
    survivors = []
    for t in tasks:
        reason = cheap_reason(t, pool.lang, cfg)
        if reason:
            c[reason] += 1
        else:
            survivors.append(t)
    wrong = wrong_language(survivors, pool.lang, cfg) if cfg.lang_check else [False] * len(survivors)
    keep = []
    for t, bad in zip(survivors, wrong):
        if pool.kept >= pool.target:
            c["surplus"] += 1
            continue
        if bad:
            c["wrong_lang"] += 1
            continue
        if dedup_key(t["instruction"], t["input"]) in pool.keys:
            c["duplicate"] += 1
            continue
        score, j = pool.index.best(tokens(t["instruction"]), stop_at=cfg.rouge_threshold)
        if score >= cfg.rouge_threshold:
            c["similar"] += 1
            continue
        rec = {"id": f"{pool.lang}-{pool.next_id:06d}", "instruction": t["instruction"], "input": t["input"],
               "output": t["output"], "lang": pool.lang, **provenance, "rouge_l_max": round(score, 4),
               "most_similar": pool.ids[j] if j >= 0 else None}
        pool.add(rec)
        keep.append(rec)
    c["kept"] = len(keep)
    return keep, c


# ----------------------------------------------------------------------------- 5. the loop

class JsonlWriter:
    """Append-only JSONL: every record is flushed and fsynced before the next, so a crash loses none written."""

    def __init__(self, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")

    def write(self, rec):
        self.f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self):
        self.f.close()


def parse_langs(text):
    langs = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in langs if x not in LANGS]
    if not langs or unknown:
        raise ValueError(f"--langs: unknown language code(s) {unknown or text!r}; choose from {' '.join(LANGS)}")
    return list(dict.fromkeys(langs))


def check_out_path(out, key="out"):
    """An output file that can be written: not a directory, and its folder exists or can be made (it is made)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--{key}={out} is a directory; give a file in it, e.g. --{key}={out / 'multialpaca.jsonl'}")
    folder = out.parent
    above = folder
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise ValueError(f"--{key}={out}: {above} is a file, so the folder {folder} cannot be made; choose another "
                         f"--{key}")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ValueError(f"--{key}={out}: {above} is not writable; choose another --{key}")
    folder.mkdir(parents=True, exist_ok=True)
    return out


def check_config(cfg):
    if cfg.per_lang < 1 or cfg.num_demos < 1 or cfg.new_tasks < 1 or cfg.concurrency < 1:
        raise ValueError("per_lang, num_demos, new_tasks and concurrency must be >= 1")
    for key in ("max_tokens", "patience", "translate_batch"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} must be >= 1")
    for key in ("generated_demos", "real_seeds", "max_retries", "max_requests", "max_total_tokens", "rate_limit"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key}={getattr(cfg, key)} must be >= 0")
    if cfg.timeout <= 0:
        raise ValueError(f"timeout={cfg.timeout} must be > 0 (seconds)")
    if not 0 < cfg.rouge_threshold <= 1:
        raise ValueError(f"rouge_threshold={cfg.rouge_threshold}: choose a value in (0, 1]")
    bad = set(f for f in cfg.lang_check.split(",") if f) - {"instruction", "input", "output"}
    if bad:
        raise ValueError(f"lang_check: unknown field(s) {sorted(bad)}; choose from instruction,input,output")


def read_stats(path):
    """<out>.stats.json of earlier runs ({} when there is none)."""
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict) or not isinstance(saved.get("langs", {}), dict):
        raise ValueError(f"{path} is not the counters this program writes; delete it to start the counts afresh")
    return saved


def read_output(out, log=print):
    """The records an earlier run wrote to out (a torn last line cut off first), checked like any input."""
    repair_torn_tail(out, log)
    recs = []
    for n, r in read_records(out, "this program's output"):
        check_fields(out, n, r)
        if not isinstance(r.get("lang"), str):
            raise ValueError(f"{out}:{n}: `lang` must be a language code, got {_shown(r.get('lang'))}")
        recs.append(r)
    return recs


def generate(cfg, teacher=None, log=print):
    """Run the self-instruct loop until every language has cfg.per_lang records in cfg.out (or the budget, or a
    language's patience, runs out). Returns {lang: Counter} (cumulative over runs, as in <out>.stats.json).
    Raises RunFailed (after writing the report) when the teacher's context cannot hold a prompt, or when every
    request of this run failed."""
    check_config(cfg)
    langs = parse_langs(cfg.langs)
    out = check_out_path(cfg.out)
    stats_path = Path(f"{cfg.out}.stats.json")
    saved = read_stats(stats_path)
    old = read_output(out, log)
    pools = {}
    for lang in langs:
        pools[lang] = p = LangPool(lang, cfg.per_lang, load_seeds(cfg, lang, log))
        p.stats.update(saved.get("langs", {}).get(lang, {}))
        for rec in old:
            if rec["lang"] == lang:
                p.add(rec)
        p.stats["kept"] = p.kept                    # the file is the truth (stats may lag a killed run by a reply)
    resumed = sum(p.kept for p in pools.values())
    if resumed:
        log(f"resuming {out}: {resumed} records already there ("
            + ", ".join(f"{lg} {p.kept}/{p.target}" for lg, p in pools.items()) + ")")
    teacher = teacher or make_teacher(cfg, log)
    rng = random.Random(f"{cfg.seed}-{len(old)}")  # a resumed run does not replay the first run's prompts
    n_req = saved.get("last_request_id", 0)
    prov = {"source": "selfinstruct", "teacher": teacher.model, "teacher_url": public_url(teacher.base)}
    fix = (f"use fewer demonstrations (--num_demos={cfg.num_demos - 1}; now {cfg.num_demos})" if cfg.num_demos > 1
           else "the prompt with a single demonstration is already too long for it")

    def ask(job):
        return teacher.chat(job["prompt"], cfg.max_tokens, cfg.temperature, cfg.top_p, job["seed"])

    def save_stats():
        atomic_write_json(stats_path, {"last_request_id": n_req, "langs": {lg: dict(p.stats) for lg, p in
                                                                            pools.items()}})

    def next_lang():
        """The language furthest from its target that may take another request in flight."""
        open_ = [p for p in pools.values() if p.kept < p.target and p.idle < cfg.patience
                 and p.inflight < max(1, math.ceil((p.target - p.kept) / cfg.new_tasks))]
        return min(open_, key=lambda p: (p.inflight, p.kept / p.target), default=None)

    workers, writer = WorkerPool(ask, cfg.concurrency), JsonlWriter(out)
    stopping, fatal, t0, inflight = None, None, time.time(), 0
    sent = failed = 0                                 # this run's requests that reached the teacher, and failed
    last_error = None
    old_handler = None
    if threading.current_thread() is threading.main_thread():     # `kill PID` stops as cleanly as Ctrl-C
        old_handler = signal.signal(signal.SIGTERM, lambda *_: _raise(KeyboardInterrupt()))
    try:
        while True:
            while stopping is None and inflight < cfg.concurrency and (pool := next_lang()) is not None:
                demos = pool.demos(rng, cfg.num_demos, cfg.generated_demos)
                prompt = build_prompt(pool.lang, demos, cfg.new_tasks)
                if teacher.context and min_prompt_tokens(prompt) >= teacher.context:
                    fatal = context_failure(teacher, prompt, fix, cfg.max_tokens)
                    stopping = str(fatal)
                    break
                n_req += 1
                workers.submit({"lang": pool.lang, "request": n_req, "demos": [d.get("id") for d in demos],
                                "prompt": prompt, "seed": rng.randrange(2 ** 31)})
                pool.inflight += 1
                inflight += 1
                pool.stats["requests"] += 1
                pool.stats["asked"] += cfg.new_tasks
            if inflight == 0:
                break
            item = workers.next()
            if item is None:
                continue
            job, result, err = item
            pool = pools[job["lang"]]
            pool.inflight -= 1
            inflight -= 1
            if err is not None:
                if isinstance(err, BudgetExhausted):          # never sent: not a request
                    stopping = stopping or str(err)
                    pool.stats["requests"] -= 1
                    pool.stats["asked"] -= cfg.new_tasks
                    continue
                if not isinstance(err, TeacherError):
                    raise err                                 # a bug, not the teacher
                sent, failed, last_error = sent + 1, failed + 1, err
                pool.stats["failed"] += 1
                too_long = context_exceeded(err)
                if too_long is not None:                      # every other prompt is as long: stop now
                    if fatal is None:
                        fatal = context_failure(teacher, job["prompt"], fix, cfg.max_tokens, *too_long)
                        stopping = str(fatal)
                        teacher.cancel.set()
                    continue
                log(f"[{pool.lang}] request {job['request']} failed: {err}")
                keep = []
            else:
                sent += 1
                meta = {**prov, "request": job["request"], "demos": job["demos"],
                        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                keep, c = filter_reply(pool, *result, cfg, meta)
                for rec in keep:
                    writer.write(rec)
                pool.stats.update(c)
                pool.stats["empty_replies"] += c["generated"] == 0
                if cfg.verbose:
                    rej = ", ".join(f"{r} {c[r]}" for r in REASONS if c[r])
                    log(f"[{pool.lang}] request {job['request']}: {c['generated']} tasks, kept {c['kept']}"
                        + (f" (rejected: {rej})" if rej else "") + f"; {pool.lang} {pool.kept}/{pool.target}")
            pool.idle = 0 if keep else pool.idle + 1
            if pool.idle == cfg.patience:
                log(f"[{pool.lang}] giving up: {cfg.patience} requests in a row kept nothing")
            save_stats()
    except KeyboardInterrupt:
        stopping = f"interrupted ({inflight} requests in flight are lost; rerun to resume)"
        teacher.cancel.set()                          # the daemon threads stop retrying
    finally:
        writer.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        save_stats()
    if stopping and fatal is None:
        log(f"stopped: {stopping}")
    log(f"{time.time() - t0:.1f}s, {teacher.attempts} HTTP attempts ({teacher.retries} retries), "
        f"{teacher.prompt_tokens + teacher.completion_tokens} teacher tokens")
    stats = {lg: p.stats for lg, p in pools.items()}
    table = summary_table(stats, cfg.per_lang)
    log(table)
    atomic_write_text(f"{cfg.out}.summary.md", table + "\n")
    if cfg.plot:
        plot_records(read_output(out, log), langs, f"{cfg.out}.png")
    if fatal is None and sent and failed == sent:
        fatal = RunFailed(f"all {sent} requests of this run failed, nothing was generated; the last error: "
                          f"{last_error}")
    if fatal is not None:
        fatal.stats = stats
        raise fatal
    return stats


def _raise(exc):
    raise exc


# ----------------------------------------------------------------------------- 6. seed translation

def translate_seeds(cfg, teacher=None, log=print):
    """Translate the English seeds into each language, translate_batch per request, appending to
    seeds_dir/<lang>.jsonl (ids already there are skipped, so reruns only fill gaps). Translations whose instruction
    lid.py does not place in the language are not cached. Returns {lang: number cached}. Raises RunFailed when the
    teacher's context cannot hold a prompt or every request failed."""
    check_config(cfg)
    langs = parse_langs(cfg.langs)
    seeds = english_seeds(cfg.english_seeds)
    caches = {lang: check_out_path(Path(cfg.seeds_dir) / f"{lang}.jsonl", "seeds_dir") for lang in langs}
    jobs = []
    for lang, cache in caches.items():
        repair_torn_tail(cache, log)
        have = {r.get("id") for _, r in read_records(cache, "translated seeds")}
        todo = [s for s in seeds if s["id"] not in have]
        jobs += [(lang, todo[i:i + cfg.translate_batch]) for i in range(0, len(todo), cfg.translate_batch)]
    teacher = teacher or make_teacher(cfg, log)
    fix = (f"translate fewer seeds per request (--translate_batch={cfg.translate_batch // 2}; now "
           f"{cfg.translate_batch})" if cfg.translate_batch > 1 else "one seed per request is already too long for it")

    def prompt_of(job):
        lang, batch = job
        block = "\n###\n".join(format_task(i, s["instruction"], s["input"], s["output"]) for i, s in
                                enumerate(batch, 1))
        return TRANSLATE_PROMPT.format(n=len(batch), language=language_name(lang), tasks=block)

    def ask(job):
        return teacher.chat(prompt_of(job), cfg.max_tokens, temperature=0.0, top_p=1.0)

    workers, writers = WorkerPool(ask, cfg.concurrency), {}
    counts, pending = Counter(), list(jobs)
    inflight, stopping, fatal, sent, failed, last_error = 0, None, None, 0, 0, None
    try:
        while pending or inflight:
            while pending and inflight < cfg.concurrency:
                if teacher.context and min_prompt_tokens(prompt_of(pending[0])) >= teacher.context:
                    fatal, pending = context_failure(teacher, prompt_of(pending[0]), fix, cfg.max_tokens), []
                    break
                workers.submit(pending.pop(0))
                inflight += 1
            if not inflight:
                break
            item = workers.next()
            if item is None:
                continue
            job, result, err = item
            lang, batch = job
            inflight -= 1
            if err is not None:
                if isinstance(err, BudgetExhausted):
                    stopping, pending = str(err), []
                    continue
                if not isinstance(err, TeacherError):
                    raise err                                 # a bug, not the teacher
                sent, failed, last_error = sent + 1, failed + 1, err
                too_long = context_exceeded(err)
                if too_long is not None:
                    if fatal is None:
                        fatal, pending = context_failure(teacher, prompt_of(job), fix, cfg.max_tokens, *too_long), []
                        teacher.cancel.set()
                else:
                    log(f"[{lang}] translation request failed: {err}")
                continue
            sent += 1
            tasks, _ = parse_tasks(result[0], truncated=result[1] == "length")
            by_n = {t["n"]: t for t in tasks if t["n"] is not None and 1 <= t["n"] <= len(batch)}
            ok = [(batch[n - 1], t) for n, t in sorted(by_n.items())]
            codes = lid.identify([t["instruction"] for _, t in ok]) if ok else []
            w = writers.get(lang) or writers.setdefault(lang, JsonlWriter(caches[lang]))
            for (seed, t), code in zip(ok, codes):
                if code != lang and cfg.lang_check:
                    counts[f"{lang}_wrong_lang"] += 1
                    continue
                w.write({"id": seed["id"], "instruction": t["instruction"], "input": t["input"], "output": t["output"],
                         "lang": lang, "en_instruction": seed["instruction"], "source": "translated",
                         "teacher": teacher.model, "reviewed": False})
                counts[lang] += 1
    except KeyboardInterrupt:
        stopping = "interrupted"
        teacher.cancel.set()
    finally:
        for w in writers.values():
            w.close()
    if stopping:
        log(f"stopped: {stopping}; rerun to translate the rest")
    for lang, cache in caches.items():
        n = len(read_records(cache, "translated seeds"))
        log(f"[{lang}] {counts[lang]} seeds translated now ({counts[f'{lang}_wrong_lang']} not in {lang}); "
            f"{n}/{len(seeds)} in {cache}: review them before generating")
    if fatal is None and sent and failed == sent:
        fatal = RunFailed(f"all {sent} translation requests failed; the last error: {last_error}")
    if fatal is not None:
        raise fatal
    return {lang: counts[lang] for lang in langs}


# ----------------------------------------------------------------------------- 7. report

def summary_table(stats, target):
    """Markdown table: per language the target, requests (failed ones; replies without a single task), tasks
    asked/generated/kept, rejections by reason."""
    cols = ["requests", "failed", "empty_replies", "asked", "generated", "kept", *REASONS]
    lines = ["| lang | target | " + " | ".join(cols) + " | kept/generated |",
             "|---|" + "---:|" * (len(cols) + 2)]
    total = Counter()
    for lang, c in stats.items():
        total.update({k: c[k] for k in cols})
        lines.append(f"| {lang} | {target} | " + " | ".join(str(c[k]) for k in cols)
                     + f" | {c['kept'] / max(c['generated'], 1):.0%} |")
    lines.append(f"| all | {target * len(stats)} | " + " | ".join(str(total[k]) for k in cols)
                 + f" | {total['kept'] / max(total['generated'], 1):.0%} |")
    return "\n".join(lines)


def plot_records(records, langs, path):
    """Per language: a histogram of instruction lengths (tokens: characters in zh/ja/th, syllables in ko, words
    elsewhere) and the 10 most frequent leading words (selfinstruct_text.head_word)."""
    import warnings
    plt = pyplot()
    from matplotlib import font_manager
    have = {f.name for f in font_manager.fontManager.ttflist}     # fall back to CJK/Thai fonts where installed
    plt.rcParams["font.family"] = [f for f in ("DejaVu Sans", "Noto Sans CJK JP", "Noto Sans Thai",
                                               "Noto Sans Arabic") if f in have] or ["sans-serif"]
    fig, axes = plt.subplots(len(langs), 2, figsize=(10, 2.2 * len(langs)), squeeze=False)
    for row, lang in zip(axes, langs):
        recs = [r for r in records if r.get("lang") == lang]
        row[0].hist([len(tokens(r["instruction"])) for r in recs] or [0], bins=30, color="tab:blue")
        row[0].set_ylabel(f"{lang} (n={len(recs)})")
        row[0].set_xlabel(f"instruction length ({length_unit(lang)})", fontsize=8)
        top = Counter(head_word(r["instruction"], lang) for r in recs).most_common(10)[::-1]
        row[1].barh([w for w, _ in top], [n for _, n in top], color="tab:orange")
        row[1].set_xlabel("leading word (last in ja/ko)", fontsize=8)
        row[1].tick_params(labelsize=7)
    fig.tight_layout()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # glyphs missing from the installed fonts
        fig.savefig(path, dpi=80)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI

def run(cfg: SelfInstructConfig):
    return translate_seeds(cfg) if cfg.translate_seeds else generate(cfg)


def main(argv=None):
    return run_cli(run, SelfInstructConfig, argv, prog="selfinstruct.py")


if __name__ == "__main__":
    main()
