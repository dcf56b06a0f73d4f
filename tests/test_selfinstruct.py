"""selfinstruct.py: the exact ROUGE-L index (the metric itself is tests/test_tasks_metrics.py's), the task parser on
teacher-style replies built from real MultiAlpaca records, the filters and their reasons, the HTTP client
(retry/backoff, timeouts, budget, rate limit, key hygiene, the teacher's context), the whole loop against chat.py's
server with a tiny model, resume after a kill, seed translation, and one clear error per bad input: input files,
--out, a teacher whose context cannot hold the prompts, a run in which every request failed."""
import dataclasses
import http.server
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

import selfinstruct as si
import selfinstruct_text as st
from selfinstruct_teacher import BudgetExhausted, Teacher, TeacherError, context_exceeded, context_length
from tasks import metrics as M

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-0123456789-secret"


def multialpaca(lang):
    return [json.loads(x) for x in open(ROOT / "data" / "instruct" / "multialpaca" / f"{lang}.jsonl", encoding="utf-8")]


def cfg_for(tmp_path, **kw):
    base = dict(out=str(tmp_path / "out.jsonl"), seeds_dir=str(tmp_path / "seeds"), teacher_url="http://127.0.0.1:1/v1",
                model="fake", english_seeds=str(ROOT / "data/instruct/seed_tasks.jsonl"),
                multialpaca_dir=str(ROOT / "data/instruct/multialpaca"), plot=False, verbose=False,
                backoff_base=0.001, backoff_max=0.01, timeout=10.0)
    return si.SelfInstructConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- an OpenAI-style fake teacher

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self._send(200, {}, {"object": "list", "data": [{"id": "fake-teacher", "object": "model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with self.server.lock:
            self.server.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            n = len(self.server.seen)
        status, headers, payload = self.server.respond(body, n)
        self._send(status, headers, payload)

    def _send(self, status, headers, payload):
        data = (payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)).encode()
        try:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:                                   # the client gave up (timeout test)
            pass

    def log_message(self, *a):
        pass


@contextmanager
def fake_teacher(respond):
    """An OpenAI-compatible server on 127.0.0.1: respond(body, n) -> (status, headers, JSON or raw text)."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.respond, srv.seen, srv.lock, srv.daemon_threads = respond, [], threading.Lock(), True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()
        srv.server_close()


def completion(text, finish="stop"):
    return 200, {}, {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150}}


def reply_from(records, first=4):
    """A teacher-style reply: numbered tasks in the prompt's format, ### between them, a chatty preamble."""
    return "Here are the new tasks:\n\n" + "\n###\n".join(
        st.format_task(first + i, r["instruction"], r.get("input") or "", r["output"]) for i, r in enumerate(records))


# ----------------------------------------------------------------------------- tokens and ROUGE-L

def test_rouge_index_is_exact_against_brute_force():
    rng = random.Random(1)
    texts = [r["instruction"] for lang in ("es", "ja", "pt") for r in multialpaca(lang)[:200]]
    index = st.RougeIndex()
    pool = [st.tokens(t) for t in texts]
    for toks in pool:
        index.add(toks)
    for _ in range(60):
        q = list(rng.choice(pool))
        for _ in range(rng.randrange(4)):                     # mutate: drop / insert / replace tokens
            if q:
                q[rng.randrange(len(q))] = rng.choice(["x", "y", "の", "de"])
        brute = max(M.rouge_l(q, p) for p in pool)
        best, j = index.best(q)
        assert best == pytest.approx(brute) and M.rouge_l(q, pool[j]) == pytest.approx(brute)
        early, _ = index.best(q, stop_at=0.7)                 # stops at the first >= 0.7, so same side of 0.7
        assert (early >= 0.7) == (brute >= 0.7)
    assert st.RougeIndex().best(["a"]) == (0.0, -1)
    q = [str(i) for i in range(12)]               # 150 anagrams (bound 1.0, low LCS) hide a near copy (bound 0.92)
    perms = [rng.sample(q, len(q)) for _ in range(150)] + [q[:-1] + ["z"]]
    index = st.RougeIndex()
    for p in perms:
        index.add(p)
    assert index.best(q) == (pytest.approx(max(M.rouge_l(q, p) for p in perms)), 150) and index.best(q)[0] > 0.9


def test_lengths_are_counted_per_script():
    assert st.words("Escribe un poema sobre el mar", "es") == pytest.approx(6 / 0.98)
    assert st.words("この文章を要約してください", "ja") == pytest.approx(13 / 1.71)
    assert st.words("日本", "ja") < 3 <= st.words("日本の首都は", "ja")


# ----------------------------------------------------------------------------- the parser

@pytest.mark.parametrize("lang", ["es", "ja", "pt"])
def test_parser_recovers_real_records_from_teacher_style_replies(lang):
    recs = multialpaca(lang)[:100]
    recs = [r for r in recs if "\n" in r["output"]][:3] + [r for r in recs if r.get("input")][:3] + recs[:2]
    want = [(st.clean_field(r["instruction"]), st.clean_field(r.get("input") or ""), st.clean_field(r["output"]))
            for r in recs]
    got, bad = st.parse_tasks(reply_from(recs))
    assert bad == 0 and [(t["instruction"], t["input"], t["output"]) for t in got] == want
    assert [t["n"] for t in got] == list(range(4, 4 + len(recs)))
    # the same tasks in other dress: markdown bold, localised labels, full-width numbers, blank lines for ###
    labels = {"es": ("Instrucción", "Entrada", "Salida"), "ja": ("指示", "入力", "出力"),
              "pt": ("Instrução", "Entrada", "Saída")}[lang]
    num = (lambda i: "０１２３４５６７８９"[i] if i < 10 else str(i)) if lang == "ja" else str
    dressed = "Claro, aquí tienes:\n\n" + "\n\n".join(
        f"**{num(i)}. {labels[0]}:** {r['instruction']}\n{num(i)}. {labels[1]}:\n{r.get('input') or '<noinput>'}\n"
        f"{num(i)}. {labels[2]}:\n{r['output']}" for i, r in enumerate(recs, 1))
    got, bad = st.parse_tasks(dressed)
    assert bad == 0 and [(t["instruction"], t["input"], t["output"]) for t in got] == want


def test_parser_keeps_numbered_lists_inside_outputs_and_cleans_fields():
    rec = multialpaca("ja")[83]                                  # output "1. 7 rings\n2. thank u, next\n..."
    got, bad = st.parse_tasks(reply_from([rec, multialpaca("ja")[0]]))
    assert bad == 0 and got[0]["output"] == rec["output"].strip() and len(got) == 2
    assert st.clean_field(' "¿Qué hora es?" ') == "¿Qué hora es?" and st.clean_field("「東京」") == "東京"
    assert st.clean_field('"a" y "b"') == '"a" y "b"'            # quotes inside: not one wrapping pair


def test_malformed_replies_are_counted_never_raised():
    es = multialpaca("es")
    good = st.format_task(1, es[0]["instruction"], "", es[0]["output"])
    cases = {
        "": (0, 0), "no tasks here, sorry": (0, 0), '{"instruction": "x"}': (0, 0),
        "1. Instruction: no output\n1. Input:\n<noinput>": (0, 1),
        "1. Output: no instruction": (0, 1),
        "1. Instruction: \n1. Output: empty instruction": (0, 1),
        good + "\n###\n2. Instruction: cut off\n2. Input:\n2. Output:\nhalf a sen": (2, 0),   # looks whole
    }
    for text, (n_ok, n_bad) in cases.items():
        got, bad = st.parse_tasks(text)
        assert (len(got), bad) == (n_ok, n_bad), text
    got, bad = st.parse_tasks(good + "\n###\n2. Instruction: x y z\n2. Output:\nhalf a sen", truncated=True)
    assert (len(got), bad) == (1, 1)                              # finish_reason "length": the last one is cut
    assert st.parse_tasks(None) == ([], 0)
    rng = random.Random(0)
    bits = ["1.", "Instruction:", "Input:", "Output:", "###", "\n", "指示：", "**", "：", "<noinput>", "x", "\x00",
            "١", "\ufeff", "9999.", " "]
    for _ in range(300):                                          # fuzz: never an exception
        got, bad = st.parse_tasks("".join(rng.choice(bits) for _ in range(rng.randrange(40))))
        assert bad >= 0 and all(t["instruction"] and t["output"] for t in got)


# ----------------------------------------------------------------------------- filters

def test_blacklist_is_per_language_without_false_friends():
    hits = {("ja", "この画像を説明してください"): "画像", ("de", "Beschreibe das Bild"): "bild",
            ("ar", "صف الصورة التالية"): "الصورة", ("ru", "Опишите картинку"): "картинку",
            ("es", "Dibuja un gato"): "dibuja", ("th", "วาดรูปแมว"): "วาด", ("vi", "Hãy vẽ một con mèo"): "vẽ",
            ("ko", "고양이 그림을 설명하세요"): "그림", ("fr", "Décrivez cette image."): "image"}
    for (lang, text), word in hits.items():
        assert st.blacklisted(text, lang) == word, (lang, text)
    for lang, text in [("ja", "意図を説明してください"), ("de", "Bildung ist wichtig"), ("fr", "Imaginez un monde"),
                       ("id", "Petani menanam padi"), ("es", "Explica la fotosíntesis"),
                       ("ru", "Приготовьте картофель"), ("vi", "Chiến tranh ảnh hưởng đến kinh tế")]:
        assert st.blacklisted(text, lang) is None, (lang, text)
    assert st.bad_start("¿Qué es?") is False and st.bad_start("「東京」とは") is False and st.bad_start("- item")


def test_filter_reply_counts_every_reason(tmp_path):
    cfg = cfg_for(tmp_path, real_seeds=100)
    es, pt = multialpaca("es"), multialpaca("pt")
    pool = si.LangPool("es", 100, si.load_seeds(cfg, "es"))
    seed = es[5]
    near = dict(seed, instruction=seed["instruction"].rstrip(".") + " ahora.")
    tasks = [es[200], es[201],                                     # two new tasks: kept
             dict(seed),                                           # a seed again: duplicate
             near,                                                 # a seed plus a word: similar
             {"instruction": "Describe la imagen adjunta en tres oraciones.", "input": "", "output": "No puedo."},
             {"instruction": "Hola", "input": "", "output": "Hola."},
             {"instruction": "- Enumera tres frutas tropicales de América.", "input": "", "output": "Mango."},
             pt[300],                                              # Portuguese: wrong language
             ]
    reply = reply_from(tasks) + "\n###\n12. Instruction: sin salida"
    assert si.lid.identify([pt[300]["instruction"]]) == ["pt"]
    keep, c = si.filter_reply(pool, reply, "stop", cfg, {"source": "selfinstruct", "request": 7})
    assert c == Counter(generated=9, kept=2, duplicate=1, similar=1, blacklist=1, too_short=1, bad_start=1,
                        wrong_lang=1, malformed=1)
    assert [k["instruction"] for k in keep] == [es[200]["instruction"], es[201]["instruction"]]
    assert keep[0]["id"] == "es-000000" and keep[1]["id"] == "es-000001" and keep[0]["request"] == 7
    assert keep[0]["lang"] == "es" and 0 <= keep[0]["rouge_l_max"] < 0.7 and keep[0]["most_similar"]
    _, c = si.filter_reply(pool, reply_from([es[200]]), "stop", cfg, {})   # now in the pool
    assert c["duplicate"] == 1 and pool.kept == 2
    full = si.LangPool("es", 1, [])
    _, c = si.filter_reply(full, reply_from(es[300:303]), "stop", cfg, {})
    assert c["kept"] == 1 and c["surplus"] == 2


# ----------------------------------------------------------------------------- the HTTP client

def test_retry_with_backoff_on_429_then_5xx_then_200():
    script = {1: (429, {"Retry-After": "7"}, {"error": {"message": "slow down"}}),
              2: (503, {}, "<html>busy</html>")}
    with fake_teacher(lambda body, n: script.get(n) or completion("hello")) as (srv, url):
        delays, logs = [], []
        t = Teacher(url, "m", KEY, backoff_base=0.5, backoff_max=30, sleep=delays.append, log=logs.append, seed=3)
        assert t.chat("hi", 10) == ("hello", "stop")
        assert t.attempts == 3 and t.retries == 2 and t.prompt_tokens == 100 and t.completion_tokens == 50
        assert delays[0] == 7.0                                     # Retry-After wins over 0.5 x jitter
        assert 0.5 <= delays[1] <= 1.0                              # base * 2^1 * jitter in [0.5, 1]
        assert all(s["auth"] == f"Bearer {KEY}" for s in srv.seen) and srv.seen[0]["path"] == "/v1/chat/completions"
        assert "slow down" in logs[0] and not any(KEY in line for line in logs) and KEY not in repr(t)
    t = Teacher("http://u:pw@127.0.0.1:9/v1", "m", KEY, sleep=lambda s: None, backoff_max=8, seed=0)
    grows = [t.backoff(k) for k in range(6)]
    assert all(0.5 * min(8, 2 ** k) <= d <= min(8, 2 ** k) for k, d in enumerate(grows)) and "pw" not in repr(t)


def test_client_errors_fail_at_once_and_retries_give_up():
    with fake_teacher(lambda body, n: (400, {}, {"error": {"message": "context too long"}})) as (srv, url):
        t = Teacher(url, "m", KEY, sleep=lambda s: None)
        with pytest.raises(TeacherError, match="HTTP 400.*context too long") as e:
            t.chat("hi", 10)
        assert t.attempts == 1 and KEY not in str(e.value)
    echo = lambda body, n: (401, {}, {"error": {"message": f"Incorrect API key provided: {KEY}"}})   # noqa: E731
    with fake_teacher(echo) as (srv, url):
        with pytest.raises(TeacherError, match="HTTP 401") as e:
            Teacher(url, "m", KEY).chat("hi", 10)
        assert KEY not in str(e.value) and "<api key>" in str(e.value)
    with fake_teacher(lambda body, n: (500, {}, "oops")) as (srv, url):
        t = Teacher(url, "m", KEY, max_retries=3, sleep=lambda s: None, log=lambda s: None)
        with pytest.raises(TeacherError, match="gave up after 4 attempts"):
            t.chat("hi", 10)
        assert len(srv.seen) == 4
    t = Teacher("http://127.0.0.1:1/v1", "m", max_retries=1, sleep=lambda s: None, log=lambda s: None)
    with pytest.raises(TeacherError, match="gave up after 2"):    # connection refused: retried, then given up
        t.chat("hi", 10)


def test_timeouts_are_retried():
    def slow_first(body, n):
        if n == 1:
            time.sleep(0.6)
        return completion("late but fine")
    with fake_teacher(slow_first) as (srv, url):
        t = Teacher(url, "m", timeout=0.2, sleep=lambda s: None, log=lambda s: None)
        assert t.chat("hi", 10)[0] == "late but fine" and t.retries == 1


def test_budget_and_rate_limit():
    with fake_teacher(lambda body, n: completion("ok")) as (srv, url):
        t = Teacher(url, "m", max_requests=2, sleep=lambda s: None)
        t.chat("a", 1), t.chat("b", 1)
        with pytest.raises(BudgetExhausted):
            t.chat("c", 1)
        assert len(srv.seen) == 2
        t = Teacher(url, "m", max_total_tokens=200, sleep=lambda s: None)
        t.chat("a", 1), t.chat("b", 1)                                  # 150 + 150 tokens
        with pytest.raises(BudgetExhausted, match="token budget"):
            t.chat("c", 1)
        slept = []
        t = Teacher(url, "m", rate_limit=4.0, sleep=slept.append)
        for _ in range(5):
            t.chat("x", 1)
        # 5 attempts at 4/s start 0.25 s apart; the fake sleep does not pass time, so attempt k waits k x 0.25 s
        assert slept == pytest.approx([0.25, 0.5, 0.75, 1.0], abs=0.05)
        assert srv.seen[-1]["body"]["model"] == "m" and srv.seen[-1]["body"]["messages"][0]["content"] == "x"


# ----------------------------------------------------------------------------- the whole loop

@contextmanager
def serve_tiny(root, block_size):
    """chat.py --serve in-process on 127.0.0.1 with a random tiny model (byte tokenizer, block_size tokens)."""
    torch = pytest.importorskip("torch")
    import bpe
    import engine
    import server as chat_server
    from model import PolyLM, preset
    run = root / "run"
    bpe.save(run / "tokenizer", {bytes([i]): i for i in range(256)})
    mcfg = preset("toy", n_layer=1, n_head=2, n_embd=32, block_size=block_size, vocab_size=260)
    torch.manual_seed(0)
    (run / "ckpt" / "step_000001").mkdir(parents=True)
    torch.save(PolyLM(mcfg).state_dict(), run / "ckpt" / "step_000001" / "model.pt")
    (run / "ckpt" / "step_000001" / "state.json").write_text(json.dumps({"step": 1}))    # a complete checkpoint
    (run / "ckpt" / "latest").write_text("step_000001")
    (run / "config.json").write_text(json.dumps({"model": dataclasses.asdict(mcfg)}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    server = chat_server.Server(engine.Engine.load(run, device="cpu"),
                                chat_server.ServerConfig(port=0, api_key=KEY, verbose=False, max_tokens_cap=64))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(5)
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """chat.py --serve with a 4096-token context: room for the prompts."""
    with serve_tiny(tmp_path_factory.mktemp("teacher"), 4096) as server:
        yield server


def test_whole_loop_against_chat_server_then_resume(tiny_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("SI_TEST_KEY", KEY)
    cfg = cfg_for(tmp_path, langs="es,ja", per_lang=5, teacher_url=tiny_teacher.url, model="",
                  api_key_env="SI_TEST_KEY",
                  num_demos=1, new_tasks=2, max_tokens=24, concurrency=2, max_requests=6, lang_check="",
                  min_instr_words=0, plot=True, verbose=True)
    logs = []
    stats = si.generate(cfg, log=logs.append)
    assert sum(c["requests"] for c in stats.values()) == 6 and set(stats) == {"es", "ja"}
    assert any("stopped: request budget spent" in line for line in logs)
    for c in stats.values():              # every reply was parsed and every task counted once
        assert c["generated"] == c["kept"] + sum(c[r] for r in si.REASONS) and c["failed"] == 0
        assert c["empty_replies"] + (c["generated"] > 0) >= 1 and c["asked"] == 2 * c["requests"]
    for suffix in (".stats.json", ".summary.md", ".png"):
        assert Path(cfg.out + suffix).exists()
    assert "| es | 5 |" in Path(cfg.out + ".summary.md").read_text()
    stats = si.generate(dataclasses.replace(cfg, max_requests=4), log=logs.append)   # a second run resumes
    assert sum(c["requests"] for c in stats.values()) == 10
    saved = json.loads(Path(cfg.out + ".stats.json").read_text())
    assert saved["last_request_id"] >= 10 and sum(v["requests"] for v in saved["langs"].values()) == 10
    for path in (cfg.out, cfg.out + ".stats.json", cfg.out + ".summary.md"):
        assert KEY not in Path(path).read_text()
    assert not any(KEY in line for line in logs)


def test_a_teacher_that_keeps_failing_is_given_up_and_the_run_fails(tmp_path, capsys):
    with fake_teacher(lambda body, n: (400, {}, {"error": {"message": "no such model"}})) as (srv, url):
        logs = []
        with pytest.raises(si.RunFailed, match="all 6 requests of this run failed.*no such model") as e:
            si.generate(cfg_for(tmp_path, langs="es,pt", teacher_url=url, patience=3, concurrency=1),
                        log=logs.append)
        stats = e.value.stats
        assert Path(tmp_path / "out.jsonl.summary.md").exists()            # the report is written all the same
        with pytest.raises(SystemExit) as ex:                               # the CLI: exit 2, one line, no traceback
            si.main(["--langs=es", f"--teacher_url={url}", "--model=m", f"--out={tmp_path / 'cli.jsonl'}",
                     "--patience=2", "--concurrency=1", "--plot=False", "--verbose=False",
                     f"--seeds_dir={tmp_path / 'seeds'}", "--backoff_base=0.001"])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: all 2 requests of this run failed") and "Traceback" not in "".join(err)
    assert [(c["requests"], c["failed"], c["kept"]) for c in stats.values()] == [(3, 3, 0), (3, 3, 0)]
    assert sum("giving up" in line for line in logs) == 2 and any("no such model" in line for line in logs)


def scripted_multialpaca(delay=0.0):
    """A teacher that answers with real MultiAlpaca records (from #100 on, 5 per reply) in the asked language."""
    cursor, lock = Counter(), threading.Lock()
    data = {"es": multialpaca("es")[100:], "pt": multialpaca("pt")[100:]}
    names = {"Spanish": "es", "Portuguese": "pt"}

    def respond(body, n):
        lang = names[re.search(r"written in (\w+)", body["messages"][0]["content"]).group(1)]
        with lock:
            i = cursor[lang]
            cursor[lang] += 5
        time.sleep(delay)
        return completion(reply_from(data[lang][i % 400:i % 400 + 5]))
    return respond


def test_resume_after_kill_has_no_duplicates(tmp_path):
    out = tmp_path / "out.jsonl"
    with fake_teacher(scripted_multialpaca(delay=0.15)) as (srv, url):
        env = {**os.environ, "OPENAI_API_KEY": KEY}
        proc = subprocess.Popen([sys.executable, str(ROOT / "selfinstruct.py"), "--langs", "es,pt", "--per-lang", "30",
                                 "--teacher-url", url, "--model", "fake", "--out", str(out), "--new-tasks", "5",
                                 "--concurrency", "2", "--plot", "False", "--seeds-dir", str(tmp_path / "seeds")],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 30
        while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 10):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate(timeout=10)[0]
        killed = out.read_text().count("\n")
        assert proc.returncode == -signal.SIGKILL and 10 <= killed < 60, output
        with open(out, "a", encoding="utf-8") as f:                 # as if killed in the middle of a write
            f.write('{"instruction": "TORN-LINE-MARKER')
    with fake_teacher(scripted_multialpaca()) as (srv, url):        # a new teacher replays the same records first
        cfg = cfg_for(tmp_path, langs="es,pt", per_lang=30, teacher_url=url, out=str(out), new_tasks=5, concurrency=2)
        stats = si.generate(cfg, log=lambda s: None)
    recs = si.read_jsonl(out)
    assert Counter(r["lang"] for r in recs) == {"es": 30, "pt": 30}
    keys = [st.dedup_key(r["instruction"], r["input"]) for r in recs]
    assert len(set(keys)) == len(keys) and len({r["id"] for r in recs}) == len(recs)
    assert out.read_text().endswith("}\n") and "TORN-LINE-MARKER" not in out.read_text()
    assert stats["es"]["duplicate"] + stats["pt"]["duplicate"] > 0   # the replayed records were recognised
    assert KEY not in out.read_text() and KEY not in output


def test_translate_seeds_caches_for_review_then_serves_as_seeds(tmp_path):
    seeds = [json.loads(x) for x in open(ROOT / "data/instruct/seed_tasks.jsonl", encoding="utf-8")][:7]
    (tmp_path / "en.jsonl").write_text("".join(json.dumps(s) + "\n" for s in seeds))
    es = multialpaca("es")

    def translate(body, n):                     # "translates" batch k into es records, keeping the numbers
        k = len(re.findall(r"^\d+\. Instruction:", body["messages"][0]["content"], re.M))
        return completion(reply_from(es[10 * n:10 * n + k], first=1))
    with fake_teacher(translate) as (srv, url):
        cfg = cfg_for(tmp_path, langs="es", teacher_url=url, english_seeds=str(tmp_path / "en.jsonl"),
                      translate_batch=3, real_seeds=0)
        assert si.translate_seeds(cfg, log=lambda s: None) == {"es": 7} and len(srv.seen) == 3
        cached = si.read_jsonl(tmp_path / "seeds" / "es.jsonl")
        assert sorted(r["id"] for r in cached) == sorted(s["id"] for s in seeds) and not cached[0]["reviewed"]
        en = {s["id"]: s["instruction"] for s in seeds}
        assert all(r["en_instruction"] == en[r["id"]] and r["lang"] == "es" for r in cached)
        assert si.translate_seeds(cfg, log=lambda s: None) == {"es": 0} and len(srv.seen) == 3   # all cached
    assert sorted(s["id"] for s in si.load_seeds(cfg, "es")) == sorted(s["id"] for s in seeds)
    assert len(si.load_seeds(dataclasses.replace(cfg, real_seeds=5), "es")) == 12
    assert si.load_seeds(dataclasses.replace(cfg, real_seeds=0), "de", log=lambda s: None)[0]["lang"] == "en"


def test_cli_accepts_dashes_and_checks_settings(monkeypatch):
    monkeypatch.setattr(si, "run", lambda cfg: cfg)
    cfg = si.main(["--langs", "ja,ko", "--per-lang", "7", "--teacher-url=http://127.0.0.1:9/v1", "--translate-seeds"])
    assert (cfg.langs, cfg.per_lang, cfg.teacher_url, cfg.translate_seeds) == ("ja,ko", 7, "http://127.0.0.1:9/v1",
                                                                              True)
    with pytest.raises(ValueError, match="unknown language"):
        si.parse_langs("ja,xx")
    with pytest.raises(ValueError, match="lang_check"):
        si.check_config(si.SelfInstructConfig(lang_check="instruction,answer"))


# ----------------------------------------------------------------------------- the teacher's context

def test_context_errors_are_recognised_in_each_servers_words():
    def err(status, msg, code=None):
        return TeacherError(f"HTTP {status}: {msg}", status, code, msg)
    ours = err(400, "This model's maximum context length is 256 tokens, and the prompt has 2345; shorten it to leave "
                    "room for the reply", "context_length_exceeded")
    assert context_exceeded(ours) == (256, 2345)
    vllm = err(400, "This model's maximum context length is 4096 tokens. However, you requested 5120 tokens (2048 in "
                    "the messages, 3072 in the completion). Please reduce the length of the messages or completion.")
    assert context_exceeded(vllm) == (4096, 2048)
    vllm_new = err(400, "This model's maximum context length is 2048 tokens. However, your request has 3000 input "
                        "tokens. Please reduce the length of the input messages.")
    assert context_exceeded(vllm_new) == (2048, 3000)
    openai = err(400, "Please shorten the input.", "context_length_exceeded")
    assert context_exceeded(openai) == (None, None)
    assert context_exceeded(err(400, "no such model")) is None
    assert context_exceeded(err(500, "maximum context length is 5 tokens")) is None      # a 500 is not that
    assert context_exceeded(RuntimeError("x")) is None
    assert context_length({"id": "m", "max_model_len": 4096}) == 4096                   # vLLM
    assert context_length({"id": "m", "context_length": 8192}) == 8192                  # OpenRouter-style
    assert context_length({"id": "m", "owned_by": "polylm"}) is None                    # a server that does not say


@pytest.mark.parametrize("learnt_from", ["GET /models", "the first 400"])
def test_context_too_small_for_the_prompts_stops_at_once_against_our_server(tmp_path, capsys, monkeypatch,
                                                                             learnt_from):
    """The toy server's context (256 tokens) cannot hold a prompt (1-3K tokens): one line and exit 2, where it used
    to end with exit 0, 0 records and no word why. server.py may report its context in GET /models (max_model_len,
    as vLLM does) or not: both ways end the same."""
    monkeypatch.setenv("SI_TEST_KEY", KEY)
    if learnt_from == "the first 400":                    # a server whose GET /models does not say
        monkeypatch.setattr(si, "context_length", lambda entry: None)
    with serve_tiny(tmp_path / "teacher", 256) as server:
        reported = [m.get("max_model_len") for m in Teacher(server.url, "", KEY).model_list()] == [256]
        with pytest.raises(SystemExit) as ex:
            si.main(["--langs=es,ja", "--per_lang=5", f"--teacher_url={server.url}", "--api_key_env=SI_TEST_KEY",
                     f"--out={tmp_path / 'out.jsonl'}", f"--seeds_dir={tmp_path / 'seeds'}", "--concurrency=2",
                     "--plot=False", "--num_demos=2"])
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    line = err[0]
    assert line.startswith("error: teacher ") and "holds 256 tokens" in line and "but a prompt has " in line
    assert re.search(r"a prompt has (at least )?[\d,]+ tokens \([\d,]+ characters\)", line)
    assert "--num_demos=1" in line and "longer context" in line and KEY not in line
    assert Path(tmp_path / "out.jsonl").read_text() == ""                 # nothing kept, nothing invented
    saved = json.loads(Path(tmp_path / "out.jsonl.stats.json").read_text())
    failed = sum(v.get("failed", 0) for v in saved["langs"].values())
    if learnt_from == "GET /models" and reported:                 # known before the first request: none is sent
        assert failed == 0 and "a prompt has at least " in line
    else:                                                         # the requests in flight, then the server's count
        assert 1 <= failed <= 2 and re.search(r"a prompt has [\d,]+ tokens", line)


def test_context_reported_by_models_stops_before_any_request(tmp_path):
    def respond(body, n):
        return completion("never asked")

    class Models(_Handler):                                   # a vLLM-style listing with max_model_len
        def do_GET(self):
            self._send(200, {}, {"object": "list", "data": [{"id": "m", "object": "model", "max_model_len": 300}]})

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Models)
    srv.respond, srv.seen, srv.lock, srv.daemon_threads = respond, [], threading.Lock(), True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
        logs = []
        with pytest.raises(si.RunFailed, match=r"holds 300 tokens, but a prompt has at least [\d,]+ tokens") as e:
            si.generate(cfg_for(tmp_path, langs="es", teacher_url=url, model=""), log=logs.append)
        assert srv.seen == [] and "--num_demos=2" in str(e.value)              # not one POST was sent
        assert any("context 300 tokens (GET /models)" in line for line in logs)
        roomy = si.make_teacher(cfg_for(tmp_path, teacher_url=url, model="m"))
        assert roomy.model == "m" and roomy.context == 300
        assert si.make_teacher(cfg_for(tmp_path, teacher_url=url, model="other")).context is None
    finally:
        srv.shutdown()
        srv.server_close()


def test_vllm_style_context_error_stops_the_run_after_one_request(tmp_path):
    msg = ("This model's maximum context length is 2048 tokens. However, you requested 5120 tokens (2048 in the "
           "messages, 3072 in the completion). Please reduce the length of the messages or completion.")
    with fake_teacher(lambda body, n: (400, {}, {"object": "error", "message": msg, "type": "BadRequestError",
                                                  "code": 400, "error": {"message": msg, "code": None}})) as (srv, url):
        with pytest.raises(si.RunFailed, match="holds 2,048 tokens, but a prompt has 2,048 tokens"):
            si.generate(cfg_for(tmp_path, langs="es,pt", teacher_url=url, concurrency=1), log=lambda s: None)
    assert len(srv.seen) == 1
    msg = msg.replace("2048 tokens.", "4096 tokens.")           # the prompt fits; prompt + max_tokens does not
    with fake_teacher(lambda body, n: (400, {}, {"error": {"message": msg, "code": None}})) as (srv, url):
        with pytest.raises(si.RunFailed, match=r"holds 4,096 tokens: a prompt of 2,048 tokens leaves 2,048 for the "
                                               r"reply, and --max_tokens=3072 asks for more: use --max_tokens=2048"):
            si.generate(cfg_for(tmp_path, out=str(tmp_path / "b.jsonl"), langs="es", teacher_url=url, concurrency=1),
                        log=lambda s: None)


# ----------------------------------------------------------------------------- bad input: one line naming file and line

def test_bad_input_files_name_the_file_and_the_line(tmp_path):
    seeds = tmp_path / "seed_tasks.jsonl"
    good = {"id": "seed_task_0", "instruction": "Say hi.", "instances": [{"input": "", "output": "Hi."}]}
    cases = {
        b"\xff\n": r"seed_tasks.jsonl:2: not UTF-8 \(byte 0xff\)",
        b"[1, 2]\n": r"seed_tasks.jsonl:2: a list, not a JSON object",
        b'{"id": "x", "instruction": "Do.", "instances": "none"}\n': r"seed_tasks.jsonl:2: `instances` must be a list",
        b'{"id": "x", "instruction": "Do.", "instances": [{"input": 3, "output": "y"}]}\n':
            r"seed_tasks.jsonl:2: `input` must be a string, got 3 \(int\)",
        b'{"id": "x", "instruction": "Do.", "instances": [{"inp\n': r"seed_tasks.jsonl:2: not a JSON record",
    }
    for bad, message in cases.items():
        seeds.write_bytes(json.dumps(good).encode() + b"\n" + bad)
        with pytest.raises(ValueError, match=message):
            si.english_seeds(seeds)
    cfg = cfg_for(tmp_path, real_seeds=0)
    (tmp_path / "seeds").mkdir()
    (tmp_path / "seeds" / "es.jsonl").write_text('{"instruction": "Saluda.", "output": "Hola.", "lang": 7}\n')
    with pytest.raises(ValueError, match=r"es.jsonl:1: `lang` must be a string, got 7 \(int\)"):
        si.load_seeds(cfg, "es")
    out = tmp_path / "out.jsonl"                                  # a resumed output is checked the same way
    out.write_text('{"id": "es-000000", "instruction": "Saluda.", "input": ["x"], "output": "Hola.", "lang": "es"}\n'
                   '{"id": "es-000001", "instruction": "Saluda')    # and a torn last line is cut off, not an error
    with pytest.raises(ValueError, match=r"out.jsonl:1: `input` must be a string"):
        si.generate(dataclasses.replace(cfg, seeds_dir=str(tmp_path / "none")), log=lambda s: None)
    assert out.read_text().endswith("}\n")
    out.write_text('{"id": "es-000000", "instruction": "Saluda.", "output": "Hola."}\n')
    with pytest.raises(ValueError, match=r"out.jsonl:1: `lang` must be a language code, got nothing"):
        si.generate(dataclasses.replace(cfg, seeds_dir=str(tmp_path / "none")), log=lambda s: None)
    # a hand-edited seed file whose last (complete) line has no newline loses nothing when the cache is appended to
    cache = tmp_path / "seeds" / "pt.jsonl"
    cache.write_text('{"id": "a", "instruction": "Diga oi.", "output": "Oi."}')
    si.repair_torn_tail(cache, log=lambda s: None)
    assert cache.read_text() == '{"id": "a", "instruction": "Diga oi.", "output": "Oi."}\n'


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_bytes(b'{"instruction": "ok", "output": "ok"}\n\xe9\n')
    (tmp_path / "afile").write_text("x")
    for args, message in [
            ([f"--out={tmp_path}"], f"--out={tmp_path} is a directory"),
            ([f"--out={tmp_path / 'afile' / 'x.jsonl'}"], "is a file, so the folder"),
            ([f"--english_seeds={tmp_path / 'bad.jsonl'}", "--translate_seeds"], "bad.jsonl:2: not UTF-8"),
            (["--langs=es,xx"], "unknown language code(s) ['xx']"),
            (["--max_tokens=0"], "max_tokens=0 must be >= 1")]:
        with pytest.raises(SystemExit) as ex:                  # later arguments win: the case's own come last
            si.main(["--teacher_url=http://127.0.0.1:1/v1", "--model=m", "--plot=False",
                     f"--seeds_dir={tmp_path / 'seeds'}", f"--out={tmp_path / 'o' / 'out.jsonl'}"] + args)
        err = capsys.readouterr().err.strip().splitlines()
        assert ex.value.code == 2 and len(err) == 1 and message in err[0], (args, err)
    missing = tmp_path / "new" / "folder" / "out.jsonl"              # a missing folder is made
    assert si.check_out_path(missing) == missing and missing.parent.is_dir()
    with pytest.raises(SystemExit) as ex:
        si.main(["--help"])
    assert ex.value.code == 0 and "--num_demos" in capsys.readouterr().out


def test_prompt_names_the_language_in_english_and_in_itself():
    from common import LANG_NAMES
    demos = [{"instruction": "Di hola.", "input": "", "output": "Hola."}]
    assert "written in Japanese (日本語)." in si.build_prompt("ja", demos, 3)
    assert "written in English." in si.build_prompt("en", demos, 3)
    assert set(si.ENDONYMS) <= set(LANG_NAMES) and si.language_name("zh") == "Chinese (中文)"
