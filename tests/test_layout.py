"""The import structure README.md ("How the code is laid out") describes, checked from the code itself: every file
imports only from its own floor or below, there are no circles, and no entry point is used as a library (except
chat.py -> server.py, the hand-over of `chat.py --serve`, and bench/ timing the functions of evaluate.py and
selfinstruct.py)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {
    1: ["common", "config"],
    2: ["model", "kernels", "bpe", "chat_template", "lid", "corpus", "shards", "curriculum", "tasks"],
    3: ["runtime", "pretraining", "pipeline", "workunits", "engine", "filters", "selfinstruct_text", "selfinstruct_teacher",
        "experiment_report", "experiment_runs"],
    4: ["train", "sft", "data", "evaluate", "chat", "server", "export", "selfinstruct", "plan", "ablate", "bench"],
}
FLOOR = {m: f for f, ms in FLOORS.items() for m in ms}
# chat.py --serve hands over to server.py; a benchmark measures the functions of the entry point it is about
ENTRY_IMPORTS_ALLOWED = {("chat", "server"), ("bench", "evaluate"), ("bench", "selfinstruct")}


def module_of(path):
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path):
    """Our modules a file imports (top-level names)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        out |= {n.split(".")[0] for n in names if n.split(".")[0] in FLOOR}
    return out


def graph():
    files = [p for p in ROOT.glob("*.py")] + [p for d in ("kernels", "tasks", "bench") for p in (ROOT / d).glob("*.py")]
    g = {}
    for p in files:
        m = module_of(p)
        g.setdefault(m, set()).update(imports(p) - {m})
    return g


def test_every_file_has_a_floor():
    assert set(graph()) <= set(FLOOR), set(graph()) - set(FLOOR)


def test_imports_never_run_back_up_and_entry_points_are_not_libraries():
    bad = [(m, d) for m, deps in graph().items() for d in deps
           if FLOOR[d] > FLOOR[m] or (FLOOR[d] == 4 and (m, d) not in ENTRY_IMPORTS_ALLOWED)]
    assert not bad, bad


def test_no_import_circles():
    g = graph()

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for d in g.get(todo.pop(), ()):
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        return seen
    assert not [m for m in g if m in reach(m)]
