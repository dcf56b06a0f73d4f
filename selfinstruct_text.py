"""Text side of selfinstruct.py (PolyLM §6, MultiAlpaca): fast ROUGE-L against a growing pool, the numbered-task
parser and the per-language filters. Pure functions and small classes, no I/O, no network.

Why not the original self-instruct code: it drops every instruction whose first character is not ASCII, and its
ROUGE scorer (rouge_score's default tokenizer) keeps only [a-z0-9], so a Japanese, Thai or Russian instruction has
no tokens at all, scores 0 against everything and is never recognised as a near-duplicate. Here:

  tokens(text)   tasks/metrics.rouge_tokens, the repo's one script-aware tokenizer (NFKC, lower-case, Arabic
                 harakat removed; Han, kana, Thai, Lao, Khmer, Myanmar one grapheme cluster per token, Hangul one
                 syllable per token, every other run of letters and digits one word). So "この文章を要約して" and
                 "Resume este texto" both score. ROUGE-L and its bit-parallel LCS are tasks/metrics.py's too.
  RougeIndex     a per-language pool. A query first bounds every entry at once with numpy (LCS <= the multiset
                 overlap of the two token bags, so F1 <= 2 overlap / (|a| + |b|)) and runs the exact LCS only on
                 entries whose bound can still beat the best score found (branch and bound): exact maximum, a few
                 ms on a pool of 15K (bench/bench_selfinstruct.py; docs/BENCHMARKS.md, selfinstruct section).
  parse_tasks    numbered `N. Instruction: / N. Input: / N. Output:` lists, tolerant of preambles, markdown bold,
                 full-width digits, localised labels and `###` separators; malformed tasks are counted, never raised.
  Filters        length limits in words (scaled per script: characters for CJK/Thai), a blacklist of things a text
                 model cannot do (images, files, audio, ...) per language, first-character check that knows
                 Spanish "¿" and Japanese 「, and exact duplicates by normalised (instruction, input).
"""
import unicodedata
from array import array
from collections import Counter

import numpy as np
import regex

from common import SPACELESS
from tasks.metrics import lcs_len, lcs_masks, normalize
from tasks.metrics import rouge_tokens as tokens

# tokens() per English word, measured on data/sample/parallel (total tokens in the language / in English): length
# limits are set in English words and scaled by this, so "3 to 150 words" means the same amount of text everywhere
UNITS_PER_WORD = {"ar": 0.72, "de": 0.94, "es": 0.98, "fr": 1.14, "id": 0.87, "ja": 1.71, "ko": 1.84, "pt": 0.98,
                  "ru": 0.79, "th": 3.1, "vi": 1.27, "zh": 1.38}


def words(text, lang):
    """Length in English-word equivalents: tokens() divided by the language's UNITS_PER_WORD."""
    return len(tokens(text)) / UNITS_PER_WORD.get(lang, 1.0)


def length_unit(lang):
    """What one token of tokens() is in a language: characters (zh ja th), syllables (ko), words (the others)."""
    return "characters" if lang in SPACELESS else "syllables" if lang == "ko" else "words"


# ----------------------------------------------------------------------------- ROUGE-L against a pool

class RougeIndex:
    """A growing pool of token sequences with `best(tokens) -> (max ROUGE-L F1, index)`, exact, pruned by numpy
    bag-of-tokens bounds. An inverted index (token id -> entries holding it, and how often; growable int32 arrays
    that numpy reads without copying) makes a bound cost the postings of the query's tokens, not the whole pool."""

    def __init__(self):
        self.vocab, self.seqs, self.lens = {}, [], array("i")
        self.post_entry, self.post_count = [], []    # per token id: array("i") of entries, of counts in them

    def __len__(self):
        return len(self.seqs)

    def add(self, toks):
        ids = [self.vocab.setdefault(t, len(self.vocab)) for t in toks]
        while len(self.post_entry) < len(self.vocab):
            self.post_entry.append(array("i"))
            self.post_count.append(array("i"))
        for t, c in Counter(ids).items():
            self.post_entry[t].append(len(self.seqs))
            self.post_count[t].append(c)
        self.lens.append(len(ids))
        self.seqs.append(ids)

    def bounds(self, toks):
        """Upper bound of ROUGE-L F1 against every entry: 2 * multiset overlap / (|a| + |b|)."""
        n = len(self.seqs)
        mine = Counter(self.vocab[t] for t in toks if t in self.vocab)
        if not mine:
            return np.zeros(n)
        entries = np.concatenate([np.frombuffer(self.post_entry[t], np.int32) for t in mine])
        counts = np.concatenate([np.minimum(np.frombuffer(self.post_count[t], np.int32), c) for t, c in mine.items()])
        overlap = np.bincount(entries, weights=counts, minlength=n)
        return 2 * overlap / (np.frombuffer(self.lens, np.int32) + len(toks))

    def best(self, toks, stop_at=None):
        """(max ROUGE-L F1 over the pool, its index; (0.0, -1) for an empty pool). Exact: entries are checked in
        order of falling bound until the bound cannot beat the best found (or the best reaches `stop_at`)."""
        if not toks or not self.seqs:
            return 0.0, -1
        b = self.bounds(toks)
        ids = [self.vocab.get(t, -1 - i) for i, t in enumerate(toks)]   # unknown tokens match nothing
        masks = lcs_masks(ids)
        best, arg = 0.0, -1
        cand = np.flatnonzero(b > 0)
        while len(cand):                           # the 64 highest bounds at a time: no full sort of the pool
            top = cand[np.argpartition(-b[cand], 64)[:64]] if len(cand) > 64 else cand
            top = top[np.argsort(-b[top], kind="stable")]
            for j in top.tolist():
                if b[j] <= best:
                    return best, arg
                seq = self.seqs[j]
                f = 2 * lcs_len(ids, seq, masks) / (len(ids) + len(seq))
                if f > best:
                    best, arg = f, j
                    if stop_at is not None and best >= stop_at:
                        return best, arg
            cand = np.setdiff1d(cand[b[cand] > best], top, assume_unique=True)
        return best, arg


# ----------------------------------------------------------------------------- parsing numbered task lists

# field labels the parser accepts: English (what the prompt asks for) and what a teacher may write instead
LABELS = {
    "instruction": "instruction|instructions|task|instrucción|instruccion|instrução|instrucao|consigne|anweisung|"
                   "aufgabe|instruksi|perintah|tugas|инструкция|задание|задача|تعليمات|التعليمات|تعليمة|مهمة|"
                   "指示|命令|タスク|지시|지시사항|명령|คำสั่ง|hướng dẫn|chỉ dẫn|nhiệm vụ",
    "input": "input|entrada|entrée|entree|eingabe|masukan|ввод|входные данные|вход|المدخلات|مدخلات|الإدخال|"
             "入力|입력|อินพุต|ข้อมูลนำเข้า|đầu vào",
    "output": "output|salida|saída|saida|sortie|ausgabe|keluaran|вывод|выходные данные|выход|ответ|المخرجات|"
              "مخرجات|الإخراج|出力|출력|เอาต์พุต|ผลลัพธ์|đầu ra",
}
_FIELD = {w: f for f, ws in LABELS.items() for w in ws.split("|")}
_LABEL_LINE = regex.compile(
    r"^[ \t>#*_-]*(?:(?:task|tarea|tâche|aufgabe|задание|タスク)?[ \t]*([0-9０-９]{1,3})[ \t]*[.):．）：][ \t]*)?[*_]*[ \t]*"
    r"(" + "|".join(sorted(_FIELD, key=len, reverse=True)) + r")[ \t]*[*_]*[ \t]*[:：][*_]*[ \t]*(.*)$",
    regex.IGNORECASE | regex.MULTILINE)
_SEPARATOR = regex.compile(r"^[ \t]*(?:#{3,}|-{3,}|={3,}|\*{3,})[ \t]*$", regex.MULTILINE)
NO_INPUT = {"", "<noinput>", "<no input>", "noinput", "no input", "none", "n/a", "na", "-", "—", "(none)", "なし",
            "無し", "없음", "ไม่มี", "無", "无", "нет", "لا يوجد", "không có", "tidak ada", "ninguna", "ninguno",
            "nenhuma", "nenhum", "aucune", "aucun", "keine", "<sin entrada>", "<vacío>", "<空>"}
_QUOTES = [('"', '"'), ("“", "”"), ("「", "」"), ("『", "』"), ("«", "»"), ("'", "'")]


def clean_field(text):
    """Trim whitespace, markdown bold and one layer of quotes wrapping the whole field."""
    t = text.strip().strip("*_").strip()
    for a, b in _QUOTES:
        if len(t) >= 2 and t.startswith(a) and t.endswith(b) and a not in t[1:-1] and b not in t[1:-1]:
            t = t[1:-1].strip()
    return t


def parse_tasks(reply, truncated=False):
    """Numbered tasks in a teacher reply -> (tasks, malformed). The text of the fields is kept as written (labels
    and numbers may be full-width). Each task: {"n", "instruction", "input", "output"}
    (n = its number or None). A task lacking an instruction or output is counted as malformed; with truncated=True
    (finish_reason "length") the last task may be cut off and is counted as malformed too. Never raises."""
    if not isinstance(reply, str) or not reply.strip():
        return [], 0
    text = _SEPARATOR.sub("\x00", reply.replace("\r\n", "\n"))            # hard task boundaries
    tasks, cur, field, buf = [], None, None, []

    def flush_field():
        if cur is not None and field is not None:
            cur[field] = "\n".join(buf)

    for line in text.split("\n"):
        m = _LABEL_LINE.match(line) if "\x00" not in line else None
        if m:
            f = _FIELD[m.group(2).lower()]
            flush_field()
            if f == "instruction" or cur is None or f in cur:          # a new task starts
                if cur is not None:
                    tasks.append(cur)
                cur = {"n": int(m.group(1)) if m.group(1) else None}
            field, buf = f, [m.group(3)]
        elif "\x00" in line:
            flush_field()
            field = None
        elif field is not None:
            buf.append(line)
    flush_field()
    if cur is not None:
        tasks.append(cur)
    good, malformed = [], 0
    for i, t in enumerate(tasks):
        ins, out = clean_field(t.get("instruction", "")), clean_field(t.get("output", ""))
        if not ins or not out or (truncated and i == len(tasks) - 1):
            malformed += 1
            continue
        inp = clean_field(t.get("input", ""))
        good.append({"n": t["n"], "instruction": ins, "input": "" if inp.lower() in NO_INPUT else inp, "output": out})
    return good, malformed


def format_task(n, instruction, input="", output=None):
    """One task in the numbered format the prompt shows and parse_tasks reads (output=None: leave it open)."""
    s = f"{n}. Instruction: {instruction}\n{n}. Input:\n{input or '<noinput>'}\n{n}. Output:"
    return s if output is None else f"{s}\n{output}"


# ----------------------------------------------------------------------------- filters

# What a text-only model cannot do (Alpaca's English list, per language). "stem*" matches words starting with stem,
# other entries match whole words (phrases allowed); Han, kana, Thai and Hangul entries match anywhere.
BLACKLIST = {
    "en": "image images graph graphs picture pictures file files map maps draw plot go|to video audio music "
          "flowchart diagram",
    "ar": "صورة صور الصور رسم|بياني خريط* ملف* ارسم فيديو* صوت* موسيق* مخطط*",
    "de": "bild bilder bildes bildern grafik* foto fotos fotografie* datei* landkarte* karte karten zeichne* "
          "zeichnung* video* audio* musik* diagramm* flussdiagramm* plotte*",
    "es": "imagen* imágen* gráfic* foto fotos fotografía* archivo* mapa mapas dibuj* vídeo* video* audio* música* "
          "diagrama*",
    "fr": "image images graphique* photo photos photographie* fichier* carte cartes dessin* dessine* vidéo* video* "
          "audio* musique* diagramme* organigramme*",
    "id": "gambar grafik* foto fotografi file berkas peta video* audio* musik* diagram* lukis* bagan*",
    "ja": "画像 写真 グラフ 図表 図解 図を描 図を作 絵を イラスト ファイル 地図 描い 描け 描く 動画 ビデオ 音声 音楽 "
          "フローチャート ダイアグラム",
    "ko": "이미지 사진 그림 그래프 파일 그려 그리기 그리세요 동영상 비디오 오디오 음성 음악 다이어그램 순서도 도표",
    "pt": "imagem* imagens* gráfico* foto fotos fotografia* arquivo* ficheiro* mapa mapas desenh* vídeo* video* "
          "áudio* audio* música* diagrama* fluxograma*",
    "ru": "изображени* картин* график* фото фотографи* файл* карта карты карту карте картой нарис* рисун* видео* "
          "аудио* музык* диаграмм*",
    "th": "รูปภาพ ภาพถ่าย กราฟ ไฟล์ แผนที่ วาด วิดีโอ ดนตรี แผนภาพ แผนผัง ผังงาน",
    "vi": "hình|ảnh bức|ảnh tấm|ảnh bức|tranh biểu|đồ tệp tập|tin bản|đồ vẽ video âm|thanh âm|nhạc bản|nhạc sơ|đồ",
    "zh": "图片 图像 照片 图表 文件 地图 画 视频 音频 音乐 流程图",
}
_AR_PROCLITIC = "(?:وال|بال|فال|كال|لل|ال|و|ف|ب|ل|ك)?"


_SUBWORD_SCRIPT = regex.compile(r"[\p{Han}\p{Hiragana}\p{Katakana}\p{Thai}\p{Hangul}]")


def _blacklist_regex(lang):
    """One regex for a language's entries. Entries in Han, kana or Thai (no spaces to anchor on) and in Hangul (an
    eojeol glues particles to the noun: 그림을) match anywhere; other entries match whole words or, with "*",
    words starting with them."""
    entries = [e.replace("|", " ") for e in BLACKLIST.get(lang, "").split()]
    if not entries:
        return None
    alts = []
    for e in entries:
        stem = regex.escape(normalize(e.rstrip("*"))).replace(r"\ ", r"\s+")
        if _SUBWORD_SCRIPT.search(e):
            alts.append(stem)
        else:
            alts.append(r"(?<![\p{L}\p{M}])" + (_AR_PROCLITIC if lang == "ar" else "") + stem
                        + (r"[\p{L}\p{M}]*" if e.endswith("*") else r"(?![\p{L}\p{M}])"))
    return regex.compile("|".join(alts))


_BLACKLIST_RE = {lang: _blacklist_regex(lang) for lang in BLACKLIST}


def blacklisted(text, lang):
    """The first blacklisted word of `text` for lang (or English), else None."""
    t = normalize(text)
    for lg in (lang, "en"):
        m = _BLACKLIST_RE.get(lg) and _BLACKLIST_RE[lg].search(t)
        if m:
            return m.group(0)
    return None


_OK_FIRST = set("¿¡\"'“‘«「『(（[【")


def bad_start(text):
    """Instructions start with a letter, digit or opening quote/bracket (any script), not with other punctuation."""
    c = text[:1]
    return not c or not (unicodedata.category(c)[0] in "LN" or c in _OK_FIRST)


def dedup_key(instruction, input=""):
    """Exact-duplicate key: the token sequences, so case, spacing, punctuation and width do not matter."""
    return " ".join(tokens(instruction)) + "\x00" + " ".join(tokens(input))


def head_word(text, lang):
    """The task's leading verb, cheaply: the first word (ko: the last word, verb-final; ja: the last 4 characters
    before closing punctuation; th: the first 3 characters). Only for the summary histogram."""
    t = regex.sub(r"[\p{P}\p{S}\s]+$", "", normalize(text))
    if lang == "ja":
        return regex.sub(r"(して)?(ください|下さい|なさい)$", "", t)[-4:] or t[-4:]
    if lang == "ko":
        return (t.split() or [""])[-1]
    toks = tokens(t)
    return "".join(toks[:3]) if lang == "th" else (toks[0] if toks else "")
