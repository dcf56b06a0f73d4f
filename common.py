"""Small shared facts and mechanics that several files need, each defined once (the bottom of the import graph:
this file imports nothing of ours).

  - PolyLM's 18 languages (paper §3) and what we know about them: names, which are written without spaces;
  - atomic file writes (a temporary file, fsynced, renamed: a reader sees the old file or the new one, never half);
  - reading a JSON-lines log (metrics.jsonl) and making a matplotlib figure without a display (Agg backend).
"""
import json
import os
import tempfile
from pathlib import Path

LANGS = "zh en es de fr pt ru it ar ja ko th vi id pl tr nl he".split()     # PolyLM's 18, in the paper's order
LANG_NAMES = {"zh": "Chinese", "en": "English", "es": "Spanish", "de": "German", "fr": "French", "pt": "Portuguese",
              "ru": "Russian", "it": "Italian", "ar": "Arabic", "ja": "Japanese", "ko": "Korean", "th": "Thai",
              "vi": "Vietnamese", "id": "Indonesian", "pl": "Polish", "tr": "Turkish", "nl": "Dutch", "he": "Hebrew"}
# Written without spaces between words, so lengths, shingles and overlaps are counted in characters. Korean is NOT in
# this set: it puts spaces between eojeol (word units), like the Latin-script languages.
SPACELESS = frozenset({"zh", "ja", "th"})


def _new_file_mode():
    """The mode open() gives a new file: 0o666 minus the umask (mkstemp's 0o600 would hide a run's files from the
    other users of a shared cluster)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


NEW_FILE_MODE = _new_file_mode()


def temp_sibling(path):
    """(fd, name) of a new, unique temporary sibling of path (pid + random: two processes never share one), with the
    mode a plainly created file would have; rename it into place when it is complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp{os.getpid()}-")
    os.fchmod(fd, NEW_FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path, data):
    """Write data to path through a unique temporary sibling, fsynced, then renamed into place."""
    path = Path(path)
    fd, tmp = temp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=1):
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False))


def read_jsonl(path, what="a JSON-lines file"):
    """The records of a JSON-lines file; a line that is not JSON is an error naming the file and the line (a line
    cut short by a kill at the very end is skipped: an append-only log can end that way)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: expected {what}")
    out, lines = [], path.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):
                break
            raise ValueError(f"{path}:{n}: not a JSON record; fix or delete that line") from None
    return out


def pyplot():
    """matplotlib.pyplot with the Agg backend (PNG files, no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
