"""Reading raw corpora as people download them: the input end of PolyLM's data pipeline (PolyLM paper §3,
"Pre-training data": web text such as mC4/CC-100-style dumps, books, parallel text, in 18 languages).

What this file answers, for every input file: which format is it, which documents does it hold, and which language
does its path declare? Nothing here filters or tokenizes (pipeline.py does that); everything streams.

Formats (the last suffixes of the file name; anything else is an error that names the file and this list):
    .txt              one document per non-empty line, or per blank-line separated block (txt_docs="blank")
    .jsonl / .json    JSON lines, one object per line (mC4's `.json.gz` files are JSON lines too); the text is the
                      `text` field, else `content` (OSCAR 23.01), or `text_field`; `lang_field` reads a label
    .parquet          (FineWeb-2, CulturaX, MADLAD as parquet, ...) read one row group at a time with pyarrow, only
                      the text (and label) columns, never the whole file in memory
    en-<xx>.tsv       parallel pairs `English<TAB>Other`, used as bilingual documents in both directions
  each optionally compressed: .gz, .xz, .zst (zstandard). Bad UTF-8 is replaced (U+FFFD) and counted.

Language from the path (`lang_from_path`), nearest part first, with the conventions of the big corpora:
    <lang>.txt, <lang>.jsonl.gz, ...        the file's stem                    (our data_dir/mono/<lang>.txt)
    .../<lang>/...                          a directory                         (data/de/part-00.jsonl)
    .../deu_Latn/train/000_00000.parquet    FineWeb-2 <iso639-3>_<Script>     (cmn_Hani -> zh, rus_Cyrl -> ru)
    c4-ja.tfrecord-00000-of-01024.json.gz   mC4 (c4-iw -> he; romanized c4-ja-Latn -> other)
    en_part_00000.parquet                   CulturaX
    en_meta/en_meta_part_1.jsonl.zst        OSCAR 23.01 (text field `content`)
    data/de/de_clean_0000.jsonl.gz          MADLAD-400 (`*_noisy_*` files are skipped unless include_noisy)
  A recognised code outside the 18 (uk, cat_Latn, c4-fa, ...) makes the file "other": it is skipped and counted,
  never read. A code must be in a known shape (ISO 639-1, or 639-3 with a script, or one of the file-name patterns
  above), so ordinary directory names such as `raw/` or `web/` declare nothing; only the parts of the path below the
  input directory the user named (and that directory itself) are looked at, never /home/... above it.

Bad records are counted by reason (`bad_record:not_json`, `:not_object`, `:no_text_field`, `:text_not_string`,
`:null_text`) in the stats; a unit of work in which every record is bad is an error naming the file and the field.
"""
import gzip
import io
import json
import lzma
import re
from pathlib import Path

from common import LANGS

FORMATS = (".txt", ".jsonl", ".json", ".tsv", ".parquet")
COMPRESSIONS = (".gz", ".xz", ".zst")
ACCEPTED = "accepted: .txt .jsonl .json .tsv .parquet, optionally compressed .gz .xz .zst"
# files that live next to data in downloaded corpora (Hugging Face snapshots, tarballs) and are not data
NOT_DATA = re.compile(r"^(\.|_|readme|license|licence|copying|notice|changelog)|\.(md|yaml|yml|py|sh|lock|sha256|"
                      r"md5|crc|html|pdf|png|jpe?g|gitattributes)$", re.I)


class DataError(ValueError):
    """Bad input data or a shard/tokenizer mismatch: the message names the file and the fix."""


# ----------------------------------------------------------------------------- formats and compression

def file_format(path):
    """(format, compression) of a file from its suffixes, e.g. ("jsonl", "zst"); DataError for anything else."""
    name = Path(path).name.lower()
    comp = next((c[1:] for c in COMPRESSIONS if name.endswith(c)), None)
    base = name[: -len(comp) - 1] if comp else name
    fmt = next((f[1:] for f in FORMATS if base.endswith(f)), None)
    if fmt is None and ".tfrecord" in base and base.endswith(".json"):
        fmt = "jsonl"
    if fmt is None:
        raise DataError(f"{path}: unknown format ({ACCEPTED})")
    if fmt == "parquet" and comp:
        raise DataError(f"{path}: a compressed parquet file; parquet compresses its own pages, give the .parquet")
    return ("jsonl" if fmt == "json" else fmt), comp


def open_binary(path):
    """A binary reader of a (possibly .gz/.xz/.zst compressed) file; offsets are those of the decompressed stream."""
    path = str(path)
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".xz"):
        return lzma.open(path, "rb")
    if path.endswith(".zst"):
        import zstandard
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True),
                                 buffer_size=1 << 20)
    return open(path, "rb")


def open_text(path):
    """A text reader of a (possibly compressed) file; bad UTF-8 is replaced (U+FFFD), never a crash."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", errors="replace")


def lines(path, start=0, end=None, stats=None, block=4 << 20):
    """Decoded lines (without the newline) of a file, or of the byte range [start, end) of a plain file: a line belongs
    to the range it starts in. Read in blocks of whole lines and decoded a block at a time (5x faster than line by line
    on short lines); bad UTF-8 is replaced by U+FFFD and counted in stats["bad_utf8_lines"]."""
    with open_binary(path) as f:
        if start > 0:
            f.seek(start - 1)
            f.readline()                                               # skip the line that began before start
        left = None if end is None else end - f.tell()
        while left is None or left > 0:
            buf = f.read(block if left is None else min(block, left))
            if not buf:
                return
            if not buf.endswith(b"\n"):
                buf += f.readline()                                    # finish the last line (it began in range)
            if left is not None:
                left -= len(buf)
            try:
                out = buf.decode("utf-8").split("\n")
            except UnicodeDecodeError:                                 # rare: decode line by line to count them
                out = []
                for raw in buf.split(b"\n"):
                    try:
                        out.append(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        if stats is not None:
                            stats["bad_utf8_lines"] += 1
                        out.append(raw.decode("utf-8", errors="replace"))
            if out[-1] == "":
                out.pop()                                              # after the final newline
            yield from out


# ----------------------------------------------------------------------------- records

def _field(rec, path):
    """rec["a"]["b"] for path "a.b"; KeyError when absent."""
    for key in path.split("."):
        if not isinstance(rec, dict) or key not in rec:
            raise KeyError(path)
        rec = rec[key]
    return rec


def _text_of(rec, text_field):
    """(text or None, bad reason or None) of one JSON record: `text`, else `content`, unless text_field is given."""
    if not isinstance(rec, dict):
        return None, "not_object"
    try:
        text = _field(rec, text_field) if text_field else rec["text"] if "text" in rec else rec["content"]
    except KeyError:
        return None, "no_text_field"
    if text is None:
        return None, "null_text"
    if not isinstance(text, str):
        return None, "text_not_string"
    return text, None


def _label(rec, lang_field):
    if not lang_field:
        return None
    try:
        value = _field(rec, lang_field)
    except KeyError:
        return None
    return normalize_lang(value) if isinstance(value, str) else None


def read_records(path, txt_docs="line", start=0, end=None, stats=None, text_field="", lang_field=""):
    """Yield (text, lang or None) of a file or of a unit of it: bytes [start, end) of a plain .txt/.jsonl, or row
    groups [start, end) of a .parquet. lang: the record's label (lang_field), one of LANGS or "other".

    Bad records are counted in stats["bad_record:<reason>"] (stats: a Counter, or None to raise DataError at the
    first one, naming the file and line). Empty documents are skipped. A .tsv yields each pair in both directions,
    "en\\nxx" and "xx\\nen", with lang = xx.
    """
    fmt, _ = file_format(path)
    name = Path(path).name
    if fmt == "parquet":
        yield from _parquet_records(path, start, end, stats, text_field, lang_field)
    elif fmt == "jsonl":
        for n, line in enumerate(lines(path, start, end, stats), 1):
            if not line.strip():
                continue
            if n == 1 and start == 0 and line.lstrip().startswith("["):
                raise DataError(f"{path}: a JSON array, not JSON lines (one object per line); convert it, e.g. "
                                f"`jq -c '.[]' {name} > {Path(name).stem}.jsonl`")
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec, why = None, "not_json"
            else:
                text, why = _text_of(rec, text_field)
            if why:
                if stats is None:
                    field = text_field or "'text' (or 'content')"
                    raise DataError(f"{path}:{n}: expected a JSON object with a {field} field ({why})")
                stats["bad_record:" + why] += 1
                continue
            text = text.strip()
            if text:
                yield text, _label(rec, lang_field)
    elif fmt == "tsv":
        lang = tsv_lang(path)
        for line in lines(path, start, end, stats):
            parts = line.rstrip("\r").split("\t")
            if len(parts) == 2 and parts[0].strip() and parts[1].strip():
                en, other = parts[0].strip(), parts[1].strip()
                yield f"{en}\n{other}", lang
                yield f"{other}\n{en}", lang
            elif line.strip() and stats is not None:
                stats["bad_record:not_a_pair"] += 1
    elif txt_docs == "blank":
        block = []
        for line in lines(path, start, end, stats):
            if line.strip():
                block.append(line.strip())
            elif block:
                yield "\n".join(block), None
                block = []
        if block:
            yield "\n".join(block), None
    else:
        for line in lines(path, start, end, stats):
            line = line.strip()
            if line:
                yield line, None


def _parquet_records(path, start, end, stats, text_field, lang_field, batch_rows=4096):
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    text_col = (text_field or ("text" if "text" in names else "content")).split(".")[0]
    if text_col not in names:
        raise DataError(f"{path}: no {text_field or 'text (or content)'!r} column; it has {', '.join(names)}: "
                        f"set --text_field")
    lang_col = lang_field.split(".")[0] if lang_field else None
    if lang_col and lang_col not in names:
        raise DataError(f"{path}: no {lang_field!r} column for --lang_field; it has {', '.join(names)}")
    groups = list(range(start, pf.num_row_groups if end is None else end))
    if not groups:
        return
    cols = [text_col] + ([lang_col] if lang_col and lang_col != text_col else [])
    for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=cols):
        texts = batch.column(text_col).to_pylist()
        labels = batch.column(lang_col).to_pylist() if lang_col else [None] * len(texts)
        for text, label in zip(texts, labels):
            if "." in (text_field or ""):
                text, why = _text_of({text_col: text}, text_field)
            else:
                why = None if isinstance(text, str) else "null_text" if text is None else "text_not_string"
            if why:
                if stats is None:
                    raise DataError(f"{path}: a row without text in column {text_col!r} ({why})")
                stats["bad_record:" + why] += 1
                continue
            text = text.strip()
            if text:
                yield text, _label({lang_col: label}, lang_field) if lang_col else None


def parquet_row_groups(path):
    """(number of row groups, uncompressed bytes of each) from the footer only."""
    import pyarrow.parquet as pq
    md = pq.ParquetFile(path).metadata
    return md.num_row_groups, [md.row_group(i).total_byte_size for i in range(md.num_row_groups)]


def read_documents(path):
    """Yield documents (texts) of a file: one per non-empty line of a .txt, the text of each JSON line, ..."""
    for text, _ in read_records(path):
        yield text


# ----------------------------------------------------------------------------- language codes and path conventions

# ISO 639-1, the two-letter codes (all 183 of them + the retired iw that mC4 still uses for Hebrew): a directory or file
# stem that is one of these declares a language.
ISO639_1 = set("""aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv
dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu
ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne
ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv
sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu iw""".split())
ALIASES = {"iw": "he"}                 # mC4 still writes Hebrew as iw
# ISO 639-3 (and 639-2/B) codes of the 18, as FineWeb-2, FLORES, MADLAD and OSCAR spell them
ISO639_3 = {"zh": "zho chi cmn", "en": "eng", "es": "spa", "de": "deu ger", "fr": "fra fre", "pt": "por",
            "ru": "rus", "it": "ita", "ar": "ara arb", "ja": "jpn", "ko": "kor", "th": "tha", "vi": "vie",
            "id": "ind", "pl": "pol", "tr": "tur", "nl": "nld dut", "he": "heb"}
TO_18 = {code: lang for lang, codes in ISO639_3.items() for code in codes.split()}
# the script each of the 18 is written in (a code with another script, e.g. romanized ja-Latn, is "other")
SCRIPTS = {"zh": {"hani", "hans", "hant"}, "ja": {"jpan", "hira", "kana", "hani"}, "ko": {"hang", "kore"},
           "ru": {"cyrl"}, "ar": {"arab"}, "he": {"hebr"}, "th": {"thai"}}
_CODE = re.compile(r"^([a-z]{2,3})(?:[_-]([a-z]{4}))?(?:[_-]([a-z]{2}|\d{3}))?$", re.I)


def normalize_lang(code):
    """A language code in any common spelling -> one of the 18 (LANGS), "other" (a real code outside the 18), or
    None (not a language code). 'de', 'deu', 'deu_Latn', 'pt-BR', 'zh_Hans', 'cmn_Hani', 'iw' -> he;
    'uk', 'cat_Latn', 'ja-Latn' (romanized) -> "other"; 'raw', 'data' -> None."""
    m = _CODE.match(code.strip())
    if not m:
        return None
    base, script = m.group(1).lower(), (m.group(2) or "").lower()
    base = ALIASES.get(base, base)
    lang = base if base in LANGS else TO_18.get(base)
    if lang is None:
        known = base in ISO639_1 or (len(base) == 3 and script)        # 639-3 codes only with a script suffix
        return "other" if known else None
    if script and script not in SCRIPTS.get(lang, {"latn"}):
        return "other"
    return lang


# file-name patterns of the big corpora (the code they hold is a language even when we do not know it: "other")
_NAME_PATTERNS = [
    re.compile(r"^c4-([a-z]{2,3}(?:-latn)?)(?:-validation)?\.tfrecord", re.I),    # mC4
    re.compile(r"^([a-z]{2,3}(?:_[a-z]{4})?)_meta(?:_part_\d+)?\.", re.I),         # OSCAR 23.01
    re.compile(r"^([a-z]{2,3}(?:_[a-z]{4})?)_part_\d+\.", re.I),                   # CulturaX
    re.compile(r"^([a-z]{2,3}(?:_[a-z]{4})?)_(?:clean|noisy)_\d+\.", re.I),        # MADLAD-400
]
_OSCAR_DIR = re.compile(r"^([a-z]{2,3})_meta$", re.I)
_NOISY = re.compile(r"_noisy_\d+\.")


def lang_from_path(path, root=None):
    """(lang, skip): the language a path declares — one of LANGS, "other" or None — and why the file is not to be
    read at all: "other_lang", "noisy" (MADLAD-400's noisy split), "removed" (FineWeb-2's `*_removed` folders: text
    its own filters dropped), or None. root: the input directory the user named; only the parts of the path from
    root down are looked at (the file name first, then its directories, nearest first); without root, the file name
    and its parent directory."""
    p = Path(path)
    if root is not None:
        parts = list(reversed(p.relative_to(root).parts)) + [Path(root).resolve().name]
    else:
        parts = [p.name] + ([p.parent.name] if p.parent.name else [])
    name = parts[0]
    skip = "noisy" if _NOISY.search(name) else "removed" if any(d.endswith("_removed") for d in parts[1:]) else None
    lang = None
    for pat in _NAME_PATTERNS:
        m = pat.match(name)
        if m:
            lang = normalize_lang(m.group(1)) or "other"
            break
    else:
        for i, part in enumerate([name.split(".")[0]] + parts[1:]):
            m = _OSCAR_DIR.match(part) if i else None
            lang = (normalize_lang(m.group(1)) or "other") if m else normalize_lang(part.removesuffix("_removed"))
            if lang:
                break
    return lang, skip or ("other_lang" if lang == "other" else None)


def tsv_lang(path):
    """xx of a parallel file en-<xx>.tsv[.gz]; DataError for any other name."""
    stem = Path(path).name.split(".")[0]
    m = re.match(r"^en-([a-z]{2,3})$", stem)
    lang = normalize_lang(m.group(1)) if m else None
    if not lang:
        raise DataError(f"{path}: a .tsv must be parallel text named en-<xx>.tsv (English<TAB>other per line)")
    return lang


def is_data_file(path):
    """False for the files that come with corpora but are not data (README.md, .gitattributes, LICENSE, ...)."""
    return not NOT_DATA.search(Path(path).name)
