"""The benchmarks of PolyLM's evaluation (PolyLM paper §5, its table of benchmarks): loaders for each benchmark's
official file format, and the prompt templates.

| family        | benchmark      | how it is scored                          | template follows                           |
|---------------|----------------|-------------------------------------------|--------------------------------------------|
| understanding | XNLI           | log-likelihood of 3 choices, acc          | lm-eval-harness lm_eval/tasks/xnli         |
| understanding | XCOPA          | log-likelihood of 2 choices, acc          | lm-eval-harness lm_eval/tasks/xcopa        |
| understanding | PAWS-X         | log-likelihood of 2 choices, acc          | lm-eval-harness lm_eval/tasks/paws-x (v1)  |
| understanding | XWinograd      | partial scoring (2 contexts), acc         | lm-eval-harness lm_eval/tasks/xwinograd    |
| qa            | TyDiQA-GoldP   | greedy answer, SQuAD EM / F1              | open-instruct eval/tydiqa/run_eval.py      |
| generation    | MTG            | greedy output, ROUGE-1/2/L                | ours (plain "Field: text" k-shot)          |
| translation   | WMT20, NTREX, Tatoeba | greedy, stop at newline, BLEU / chrF | ours ("English: ... / German: ..." k-shot) |

A doc is a dict straight from the data file. Multiple-choice docs become an item {contexts, continuations, gold,
choice_lens, example}; generation docs become {prompt, answer, refs}, where `example` / `answer` is what the doc
looks like as a solved few-shot example.
"""
import csv
import hashlib
import html
import json
import re
from pathlib import Path

from common import LANG_NAMES, read_jsonl

csv.field_size_limit(1 << 30)


class MissingData(FileNotFoundError):
    """A benchmark file is not where the config says: the message says where to get it."""


def _need(path, what, where):
    path = Path(path)
    if not path.exists():
        raise MissingData(f"{what}: {path} not found. {where}")
    return path


def data_hash(paths):
    """sha256 over the bytes of the files a task read (sorted by path), first 16 hex digits."""
    h = hashlib.sha256()
    for p in sorted(set(map(str, paths))):
        h.update(Path(p).name.encode())
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def _tsv(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


# ============================================================================= XCOPA
# Official format (github.com/cambridgeltl/xcopa, data/<lang>/{val,test}.<lang>.jsonl):
# {"premise", "choice1", "choice2", "question": "cause"|"effect", "label": 0|1, "idx", "changed"}
# Template: lm_eval/tasks/xcopa/utils.py: premise without its final punctuation + " " + connective; the choices with
# their first letter lower-cased; target delimiter " ". Eval split test, few-shot examples from val.

XCOPA_CONNECTIVES = {  # (cause, effect), lm_eval/tasks/xcopa/utils.py
    "et": ("sest", "seetõttu"), "ht": ("poukisa", "donk sa"), "it": ("perché", "quindi"), "id": ("karena", "maka"),
    "qu": ("imataq", "chaymi"), "sw": ("kwa sababu", "kwa hiyo"), "zh": ("因为", "所以"), "ta": ("காரணமாக", "எனவே"),
    "th": ("เพราะ", "ดังนั้น"), "tr": ("çünkü", "bu yüzden"), "vi": ("bởi vì", "vì vậy")}


def load_xcopa(root, lang, split="test"):
    path = _need(Path(root) / lang / f"{'val' if split == 'val' else 'test'}.{lang}.jsonl", f"XCOPA {lang}",
                 "XCOPA is bundled in data/eval/xcopa (id it th tr vi zh); the others: github.com/cambridgeltl/xcopa")
    return read_jsonl(path, f"XCOPA {lang} ({path.name})"), [path]


def xcopa_item(doc, lang):
    cause, effect = XCOPA_CONNECTIVES[lang]
    ctx = doc["premise"].strip()[:-1] + " " + (cause if doc["question"] == "cause" else effect)
    choices = [c[0].lower() + c[1:] for c in (doc["choice1"], doc["choice2"])]
    return _mc(ctx, choices, int(doc["label"]), " ")


def _mc(context, choices, gold, delim):
    """A multiple-choice item with one shared context (lm-eval-harness output_type: multiple_choice)."""
    return {"contexts": [context] * len(choices), "continuations": [delim + c for c in choices], "gold": gold,
            "choice_lens": [len(c) for c in choices], "example": context + delim + choices[gold]}


# ============================================================================= XNLI
# Official format (XNLI-1.0.zip: xnli.dev.tsv, xnli.test.tsv; dl.fbaipublicfiles.com/XNLI/XNLI-1.0.zip): one TSV for all
# languages with a header; we use the columns language, gold_label (entailment|neutral|contradiction), sentence1,
# sentence2. Template: lm_eval/tasks/xnli/utils.py: "premise, right?" + " " + "Yes, hypothesis" | "Also, ..." |
# "No, ...", words per language. The harness scores the *validation* split (xnli_common_yaml has no test_split), so
# split=dev is the default here too.

XNLI_WORDS = {  # (question word, entailment, neutral, contradiction), lm_eval/tasks/xnli/utils.py
    "ar": ("صحيح", "نعم", "لذا", "رقم"), "bg": ("правилно", "да", "така", "не"),
    "de": ("richtig", "Ja", "Auch", "Nein"), "el": ("σωστός", "Ναί", "Έτσι", "όχι"),
    "en": ("right", "Yes", "Also", "No"), "es": ("correcto", "Sí", "Asi que", "No"),
    "fr": ("correct", "Oui", "Aussi", "Non"), "hi": ("सही", "हाँ", "इसलिए", "नहीं"),
    "ru": ("правильно", "Да", "Так", "Нет"), "sw": ("sahihi", "Ndiyo", "Hivyo", "Hapana"),
    "th": ("ถูกต้อง", "ใช่", "ดังนั้น", "ไม่"), "tr": ("doğru", "Evet", "Böylece", "Hayır"),
    "ur": ("صحیح", "جی ہاں", "اس لئے", "نہیں"), "vi": ("đúng", "Vâng", "Vì vậy", "Không"),
    "zh": ("正确", "是的", "所以", "不是的")}
XNLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}


def load_xnli(root, lang, split="dev"):
    path = _need(Path(root) / f"xnli.{split}.tsv", "XNLI",
                 "Download XNLI-1.0.zip from https://dl.fbaipublicfiles.com/XNLI/XNLI-1.0.zip, unzip, and pass "
                 "--xnli_dir=.../XNLI-1.0 (the folder with xnli.dev.tsv and xnli.test.tsv)")
    docs = [{"premise": r["sentence1"], "hypothesis": r["sentence2"], "label": XNLI_LABELS[r["gold_label"]]}
            for r in _tsv(path) if r["language"] == lang and r["gold_label"] in XNLI_LABELS]
    return docs, [path]


def xnli_item(doc, lang):
    q, *answers = XNLI_WORDS[lang]
    return _mc(f"{doc['premise']}, {q}?", [f"{a}, {doc['hypothesis']}" for a in answers], doc["label"], " ")


# ============================================================================= PAWS-X
# Official format (x-final/<lang>/{test_2k,dev_2k}.tsv from
# storage.googleapis.com/paws/pawsx/x-final.tar.gz): header id, sentence1, sentence2, label (1 = paraphrase).
# Template: lm_eval/tasks/paws-x, version 1 (harness PR #2434, Nov 2024, fixed the choice order, which was reversed
# before, and French "No" -> "Non"): empty context; choices "s1, right? No, s2" and "s1, right? Yes, s2" (gold =
# label); target delimiter "". With an empty context the harness scores the whole string after <|endoftext|>.

PAWSX_WORDS = {  # (question word, yes, no), lm_eval/tasks/paws-x/_generate_config.py after PR #2434
    "de": ("richtig", "Ja", "Nein"), "en": ("right", "Yes", "No"), "es": ("verdad", "Sí", "No"),
    "fr": ("n'est-ce pas", "Oui", "Non"), "ja": ("ですね", "はい", "いいえ"), "ko": ("맞죠", "예", "아니요"),
    "zh": ("对吧", "是", "不是")}


def load_pawsx(root, lang, split="test"):
    name = {"test": "test_2k.tsv", "dev": "dev_2k.tsv"}[split]
    path = _need(Path(root) / lang / name, f"PAWS-X {lang}",
                 "Download https://storage.googleapis.com/paws/pawsx/x-final.tar.gz, untar, and pass "
                 "--pawsx_dir=.../x-final (folders de en es fr ja ko zh)")
    docs = [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": int(r["label"])}
            for r in _tsv(path) if r["sentence1"] and r["sentence2"] and r["label"] in ("0", "1")]
    return docs, [path]


def pawsx_item(doc, lang):
    q, yes, no = PAWSX_WORDS[lang]
    s1, s2 = doc["sentence1"], doc["sentence2"]
    return _mc("", [f"{s1}, {q}? {no}, {s2}", f"{s1}, {q}? {yes}, {s2}"], doc["label"], "")


# ============================================================================= XWinograd
# Official format (github.com/yandex-research/crosslingual_winograd, dataset.tsv): 7 tab-separated columns, no header:
# lang (jp = Japanese), source, English schema or "?", raw text, JSON NLTK tokens, JSON pronoun
# [text, [tok_start, tok_end], tokens], JSON candidates [[text, [start, end], tokens, is_correct], x2].
# lm-eval-harness reads the Hugging Face copy Muennighoff/xwinograd, where the pronoun is replaced by "_" and the two
# candidates are option1/option2; we derive the same from dataset.tsv (`xwinograd_doc`). Template:
# lm_eval/tasks/xwinograd/utils.py, "partial evaluation": the contexts are sentence[:blank] + option (one per
# option), the continuation is the rest of the sentence after the blank (shared), target delimiter " ".
# Note: the HF copy's zh subset has 504 rows from a different source; dataset.tsv has 16 zh rows.

XWINO_CODES = {"ja": "jp"}
_QUOTES = {"``": ['"', "“", "«", "„", "``"], "''": ['"', "”", "»", "“", "''"]}


def _token_spans(raw, tokens):
    """Character span of each NLTK token in the raw text (NLTK writes quotes as `` and '')."""
    spans, i = [], 0
    for t in tokens:
        best = None
        for form in _QUOTES.get(t, [t]):
            j = raw.find(form, i)
            if j >= 0 and (best is None or j < best[0]):
                best = (j, j + len(form))
        if best is None:
            return None
        spans.append(best)
        i = best[1]
    return spans


def xwinograd_doc(row):
    """A dataset.tsv row -> {"sentence" with "_" for the pronoun, "option1", "option2", "answer": "1"|"2"}."""
    lang, _, _, raw, tokens, pronoun, cands = row[:7]
    tokens, pronoun, cands = json.loads(tokens), json.loads(pronoun), json.loads(cands)
    spans = _token_spans(raw, tokens)
    s, e = pronoun[1]
    if spans is not None:
        a, b = spans[s][0], spans[e - 1][1]
    else:                                   # fall back to the pronoun's first occurrence in the raw text
        a = raw.find(pronoun[0])
        if a < 0:
            return None
        b = a + len(pronoun[0])
    answer = [c[3] for c in cands].index(True) + 1
    return {"sentence": raw[:a] + "_" + raw[b:], "option1": cands[0][0], "option2": cands[1][0],
            "answer": str(answer)}


def load_xwinograd(path, lang, split="test"):
    path = _need(path, "XWinograd", "It is bundled as data/eval/xwinograd/dataset.tsv; upstream: "
                 "github.com/yandex-research/crosslingual_winograd")
    code = XWINO_CODES.get(lang, lang)
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = line.rstrip("\n").split("\t")
            if row[0] == code:
                doc = xwinograd_doc(row)
                if doc is not None:
                    docs.append(doc)
    return docs, [path]


def xwinograd_item(doc, lang):
    i = doc["sentence"].index("_")
    target = doc["sentence"][i + 1:].strip()
    contexts = [doc["sentence"][:i] + doc["option1"], doc["sentence"][:i] + doc["option2"]]
    gold = int(doc["answer"]) - 1
    return {"contexts": contexts, "continuations": [" " + target] * 2, "gold": gold,
            "choice_lens": [len(c) for c in contexts], "example": contexts[gold] + " " + target}


# ============================================================================= TyDiQA-GoldP
# Official format (storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-dev.json, or the per-language files of
# tydiqa-goldp-v1.1-dev.tgz): SQuAD 1.1 JSON {"data": [{"paragraphs": [{"context", "qas": [{"id", "question",
# "answers": [{"text", "answer_start"}]}]}]}]}; the language is the id's prefix ("arabic-...").
# Template: open-instruct eval/tydiqa/run_eval.py (instruction + "Passage:/Question:/Answer:" in the language),
# one-shot by default. GoldP has no Japanese or Thai; the character-level F1 for zh/ja/th applies to other SQuAD-format
# sets (e.g. XQuAD, MLQA) read with the same loader.

TYDIQA_LANGS = {"arabic": "ar", "bengali": "bn", "english": "en", "finnish": "fi", "indonesian": "id",
                "japanese": "ja", "korean": "ko", "russian": "ru", "swahili": "sw", "telugu": "te", "thai": "th"}
TYDIQA_TEMPLATES = {  # open-instruct eval/tydiqa/run_eval.py: (instruction, passage, question, answer)
    "en": ("Answer the following question based on the information in the given passage.", "Passage:", "Question:",
           "Answer:"),
    "ar": ("أجب على السؤال التالي بناءً على المعلومات في المقطع المعطى.", "المقطع:", "السؤال:", "الإجابة:"),
    "bn": ("প্রদত্ত অধ্যায়ের তথ্যের উপর ভিত্তি করে নিম্নলিখিত প্রশ্নের উত্তর দিন।", "অধ্যায়:", "প্রশ্ন:", "উত্তর:"),
    "fi": ("Vastaa seuraavaan kysymykseen annetun kappaleen tiedon perusteella.", "Kappale:", "Kysymys:", "Vastaus:"),
    "id": ("Jawab pertanyaan berikut berdasarkan informasi di bagian yang diberikan.", "Bagian:", "Pertanyaan:",
           "Jawaban:"),
    "ko": ("주어진 문단의 정보에 기반하여 다음 질문에 답하십시오.", "문단:", "질문:", "답변:"),
    "ru": ("Ответьте на следующий вопрос на основе информации в данном отрывке.", "Отрывок:", "Вопрос:", "Ответ:"),
    "sw": ("Jibu swali lifuatalo kulingana na habari kwenye kifungu kilichotolewa.", "Kifungu:", "Swali:", "Jibu:")}


def load_squad_json(path, lang):
    """SQuAD-1.1-format QA for one language: a single file (language from the id prefix) or a folder of files."""
    path = _need(path, "TyDiQA-GoldP",
                 "Download https://storage.googleapis.com/tydiqa/v1.1/tydiqa-goldp-v1.1-dev.json and pass "
                 "--tydiqa_path=.../tydiqa-goldp-v1.1-dev.json (or the folder of per-language files)")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    docs = []
    for f in files:
        for article in json.loads(f.read_text(encoding="utf-8"))["data"]:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    code = TYDIQA_LANGS.get(qa["id"].split("-")[0], qa["id"].split("-")[0])
                    if code == lang:
                        docs.append({"id": qa["id"], "context": para["context"], "question": qa["question"],
                                     "answers": [a["text"] for a in qa["answers"]]})
    return docs, files


def tydiqa_item(doc, lang):
    _, p, q, a = TYDIQA_TEMPLATES.get(lang, TYDIQA_TEMPLATES["en"])
    return {"prompt": f"{p} {doc['context']}\n{q} {doc['question']}\n{a}", "answer": " " + doc["answers"][0],
            "refs": doc["answers"]}


def tydiqa_header(lang):
    return TYDIQA_TEMPLATES.get(lang, TYDIQA_TEMPLATES["en"])[0] + "\n\n"


# ============================================================================= MTG
# MTG (Chen et al., NAACL 2022 Findings; github.com/zide05/MTG) is distributed from a Google Drive folder whose file
# layout we could not check from here. The loader reads a plain, common layout: <mtg_dir>/<task>/<lang>/test.src and
# test.tgt, line-aligned (one example per line; tasks story | title | qg | summ, languages en de fr es zh). Convert
# the release to it if it differs. Outputs are also written in MTG's submission format ({"en": [outputs], ...} in
# "<SG|TG|QG|Summ>-polylm.json", as asked on mtg-benchmark.netlify.app) so the organisers' scorer can be used.

MTG_TASKS = {  # task: (input label, output label, max new tokens, submission prefix)
    "story": ("Story", "Ending", 64, "SG"), "title": ("Article", "Title", 32, "TG"),
    "qg": ("Passage and answer", "Question", 48, "QG"), "summ": ("Document", "Summary", 96, "Summ")}


def load_mtg(root, task, lang, split="test"):
    d = Path(root) / task / lang
    where = ("Get MTG from github.com/zide05/MTG (Google Drive link) and lay it out as "
             "<mtg_dir>/<story|title|qg|summ>/<lang>/test.src + test.tgt")
    src, tgt = _need(d / f"{split}.src", f"MTG {task}/{lang}", where), _need(d / f"{split}.tgt", f"MTG {task}/{lang}",
                                                                            where)
    s, t = src.read_text(encoding="utf-8").splitlines(), tgt.read_text(encoding="utf-8").splitlines()
    if len(s) != len(t):
        raise ValueError(f"{src} has {len(s)} lines but {tgt} has {len(t)}: they must be line-aligned")
    return [{"src": a, "tgt": b} for a, b in zip(s, t)], [src, tgt]


def mtg_item(doc, task):
    inp, out, _, _ = MTG_TASKS[task]
    return {"prompt": f"{inp}: {doc['src']}\n{out}:", "answer": " " + doc["tgt"], "refs": [doc["tgt"]]}


# ============================================================================= translation: WMT20, NTREX, Tatoeba
# - WMT20 (newstest2020; not bundled), --wmt20_dir in any of the layouts people have it in (wmt20_files):
#     sacrebleu's cache, ~/.sacrebleu/wmt20/ (sacrebleu 2.x, dataset/fake_sgml.py + base.py): the tarball unpacked
#       in raw/ (raw/sgm/newstest2020-deen-src.de.sgm + -ref.en.sgm, every pair) and the pairs asked for so far
#       extracted as plain lines, wmt20.de-en.src + wmt20.de-en.ref (sacrebleu 1.x named them wmt20.de-en.de +
#       wmt20.de-en.en);
#     the official release, data.statmt.org/wmt20/translation-task/test.tgz unpacked: sgm/newstest2020-deen-src.de.sgm
#       + sgm/newstest2020-deen-ref.en.sgm (also read from the folder itself, from txt/, and as .txt);
#     OPUS-MT-testsets (github.com/Helsinki-NLP/OPUS-MT-testsets, testsets/): one folder per language pair, 3- or
#       2-letter codes, line-aligned files: eng-deu/newstest2020.eng + newstest2020.deu (the folder names the
#       direction), or de-en/newstest2020-deen.de + .en (the file names it; the folder may be either order).
#   newstest2020 has a different source text per direction (de-en is German-original news, en-de English-original),
#   so a pair is only read from files of its own direction.
# - NTREX-128 (bundled slice, data/eval/ntrex/<lang>.txt, line-aligned across languages): the last 110 lines of each
#   file; the first 10 are the few-shot pool, the last 100 the test set.
# - Tatoeba (bundled slice, data/eval/tatoeba/en-<xx>.tsv, English<TAB>X): 110 pairs per language that are not in
#   the training sample; first 10 = few-shot pool, last 100 = test.

N_SHOT_POOL = 10
ISO3 = {"zh": "zho", "en": "eng", "es": "spa", "de": "deu", "fr": "fra", "pt": "por", "ru": "rus", "it": "ita",
        "ar": "ara", "ja": "jpn", "ko": "kor", "th": "tha", "vi": "vie", "id": "ind", "pl": "pol", "tr": "tur",
        "nl": "nld", "he": "heb"}                 # ISO 639-3 codes of PolyLM's languages (OPUS-MT-testsets folders)
WMT20_WHERE = ("Run `sacrebleu -t wmt20 -l en-de --echo src > /dev/null` (it caches every pair in ~/.sacrebleu/wmt20) "
               "and pass --wmt20_dir=~/.sacrebleu/wmt20; or unpack https://data.statmt.org/wmt20/translation-task/"
               "test.tgz, or clone github.com/Helsinki-NLP/OPUS-MT-testsets, and pass that folder")


def _read_sgm(path):
    segs = re.findall(r"<seg[^>]*>(.*?)</seg>", Path(path).read_text(encoding="utf-8"))
    return [html.unescape(s).strip() for s in segs]


def _read_lines(path):
    return _read_sgm(path) if str(path).endswith(".sgm") else Path(path).read_text(encoding="utf-8").splitlines()


def wmt20_files(root, src, tgt):
    """Candidate (source file, reference file) pairs of newstest2020 src->tgt under root, in the order tried."""
    root = Path(root)
    pair, tag = f"{src}-{tgt}", f"{src}{tgt}"
    out = []
    for base in (root, root / "wmt20"):                          # the cache itself, or ~/.sacrebleu above it
        out += [(base / f"wmt20.{pair}.src", base / f"wmt20.{pair}.ref"),            # sacrebleu 2.x, extracted
                (base / f"wmt20.{pair}.{src}", base / f"wmt20.{pair}.{tgt}")]         # sacrebleu 1.x, extracted
        for sub in ("raw/sgm/", "sgm/", "", "txt/", "raw/txt/"):                     # raw/: sacrebleu's unpacked tgz
            for ext in ("sgm", "txt"):
                out.append((base / f"{sub}newstest2020-{tag}-src.{src}.{ext}",
                            base / f"{sub}newstest2020-{tag}-ref.{tgt}.{ext}"))
    for base in (root, root / "testsets"):                       # OPUS-MT-testsets
        for s, t in ((ISO3.get(src, src), ISO3.get(tgt, tgt)), (src, tgt)):
            out.append((base / f"{s}-{t}" / f"newstest2020.{s}", base / f"{s}-{t}" / f"newstest2020.{t}"))
            for folder in (f"{s}-{t}", f"{t}-{s}"):
                out.append((base / folder / f"newstest2020-{tag}.{s}", base / folder / f"newstest2020-{tag}.{t}"))
    return out


def load_wmt20(root, src, tgt):
    """(few-shot pool = [], docs [{"src", "ref"}], files read) of newstest2020 src->tgt in any layout of
    wmt20_files; MissingData when root holds none of them for this pair."""
    root = _need(root, "WMT20", WMT20_WHERE)
    pair = f"{src}-{tgt}"
    for s, r in wmt20_files(root, src, tgt):
        if s.is_file() and r.is_file():
            a, b = _read_lines(s), _read_lines(r)
            if len(a) != len(b):
                raise ValueError(f"WMT20 {pair}: {s} has {len(a)} lines, {r} has {len(b)}: they must be line-aligned")
            docs = [{"src": x, "ref": y} for x, y in zip(a, b)]
            return [], docs, [s, r]          # no few-shot pool of its own: shots come from the test set itself
    raise MissingData(f"WMT20 {pair}: none of wmt20.{pair}.src/.ref, newstest2020-{src}{tgt}-src.{src}.sgm/.txt "
                      f"(also in sgm/, txt/, raw/sgm/) or {ISO3.get(src, src)}-{ISO3.get(tgt, tgt)}/newstest2020."
                      f"{ISO3.get(src, src)} in {root}. {WMT20_WHERE}")


def load_ntrex(root, src, tgt):
    where = "NTREX is bundled in data/eval/ntrex; upstream: github.com/MicrosoftTranslator/NTREX"
    ps, pt = _need(Path(root) / f"{src}.txt", f"NTREX {src}", where), _need(Path(root) / f"{tgt}.txt", f"NTREX {tgt}",
                                                                           where)
    a, b = ps.read_text(encoding="utf-8").splitlines(), pt.read_text(encoding="utf-8").splitlines()
    docs = [{"src": x, "ref": y} for x, y in zip(a, b)]
    return docs[:N_SHOT_POOL], docs[N_SHOT_POOL:], [ps, pt]


def load_tatoeba(root, src, tgt):
    xx = tgt if src == "en" else src
    path = _need(Path(root) / f"en-{xx}.tsv", f"Tatoeba en-{xx}", "A slice is bundled in data/eval/tatoeba; "
                 "upstream: github.com/Helsinki-NLP/Tatoeba-Challenge (test v2021-08-07)")
    pairs = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line]
    docs = [{"src": en if src == "en" else x, "ref": x if src == "en" else en} for en, x in pairs]
    return docs[:N_SHOT_POOL], docs[N_SHOT_POOL:], [path]


def translation_item(doc, src, tgt):
    return {"prompt": f"{LANG_NAMES[src]}: {doc['src']}\n{LANG_NAMES[tgt]}:", "answer": " " + doc["ref"],
            "refs": [doc["ref"]]}
