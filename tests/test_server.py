"""server.py end to end on 127.0.0.1 (raw HTTP, plus the official openai client when it is installed): the OpenAI
wire format, streaming, errors, keep-alive and shutdown; batched serving (concurrent greedy requests give exactly
their serial output, a full queue gets 429, a client that leaves has its rows dropped); completions echo + logprobs
driven exactly as lm-evaluation-harness's local-completions model drives them, checked against evaluate.py's scorer;
bad input answered with one 400, never a 500."""
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import chat_template
import engine
import server as chat_server
from model import PolyLM
from tasks import scoring as S
from test_chat import HI, eng, run_dir  # noqa: F401 - the shared tiny run dir and its engine (fixtures)

KEY = "test-key"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")     # conftest.py: tiny models run fastest on one thread


def server_cfg(**kw):
    base = dict(api_key=KEY, port=0, max_body_bytes=4096, request_timeout=1.0, verbose=False, max_batch=4,
                max_tokens_cap=32, max_tokens=16)
    return chat_server.ServerConfig(**{**base, **kw})


def start(eng, cfg):
    server = chat_server.Server(eng, cfg)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def server(eng):
    srv, thread = start(eng, server_cfg())
    try:
        yield srv
    finally:
        srv.close()
        thread.join(5)
        assert not thread.is_alive()


def call(server, method, path, body=None, key=KEY, raw=None, conn=None):
    """(status, parsed JSON or raw text) of one request on 127.0.0.1."""
    c = conn or http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    text = r.read().decode()
    if conn is None:
        c.close()
    return r.status, (json.loads(text) if r.getheader("Content-Type", "").startswith("application/json") else text)


def sse(text):
    """The data payloads of a server-sent-events body."""
    return [e[len("data: "):] for e in text.split("\n\n") if e.startswith("data: ")]



# ----------------------------------------------------------------------------- the OpenAI API

def test_models_and_api_key(server, eng):
    status, body = call(server, "GET", "/v1/models")
    assert status == 200 and body["object"] == "list" and body["data"][0]["id"] == eng.name
    assert body["data"][0]["max_model_len"] == eng.block                 # the context, as vLLM reports it
    for key in ("wrong", None):
        status, body = call(server, "GET", "/v1/models", key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = call(server, "POST", "/v1/chat/completions", {"messages": HI}, key="wrong")
    assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}


def test_chat_completion(server, eng):
    status, body = call(server, "POST", "/v1/chat/completions",
                        {"model": "anything", "messages": HI, "max_tokens": 8, "temperature": 0})
    assert status == 200 and body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    prompt = chat_template.encode_messages(eng.enc, HI)
    texts, reasons, (p, c) = eng.complete([prompt], 8, temperature=0)
    assert choice["message"]["content"] == texts[0] and choice["finish_reason"] == reasons[0]
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": c, "total_tokens": len(prompt) + c}


def test_chat_streaming_gives_the_same_text(server):
    req = {"messages": HI, "max_tokens": 8, "temperature": 0}
    _, full = call(server, "POST", "/v1/chat/completions", req)
    status, text = call(server, "POST", "/v1/chat/completions",
                        {**req, "stream": True, "stream_options": {"include_usage": True}})
    events = sse(text)
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == full["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == [full["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == full["usage"]


def test_completions_batch_n_stream_and_stop(server):
    one = lambda p: call(server, "POST", "/v1/completions",                       # noqa: E731
                         {"prompt": p, "max_tokens": 10, "temperature": 0})[1]["choices"][0]["text"]
    alone = [one("The cat"), one("A")]
    status, body = call(server, "POST", "/v1/completions",
                        {"prompt": ["The cat", "A"], "n": 2, "max_tokens": 10, "temperature": 0})
    assert status == 200 and body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == [alone[0], alone[0], alone[1], alone[1]]   # batching is exact
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    status, text = call(server, "POST", "/v1/completions",
                        {"prompt": "The cat", "max_tokens": 10, "temperature": 0, "stream": True})
    events = sse(text)
    assert events[-1] == "[DONE]" and "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == alone[0]
    full = alone[0]
    stop = full[3:5]
    status, body = call(server, "POST", "/v1/completions",
                        {"prompt": "The cat", "max_tokens": 10, "temperature": 0, "stop": [stop]})
    assert body["choices"][0] == {"index": 0, "text": full[:full.find(stop)], "logprobs": None,
                                  "finish_reason": "stop"}


def test_max_tokens_is_capped_and_seed_is_reproducible(server):
    req = {"prompt": "x", "max_tokens": 10_000, "temperature": 1.0, "seed": 7}
    status, a = call(server, "POST", "/v1/completions", req)
    assert status == 200 and a["usage"]["completion_tokens"] <= 32               # max_tokens_cap
    assert a["choices"][0]["text"] == call(server, "POST", "/v1/completions", req)[1]["choices"][0]["text"]


@pytest.mark.parametrize("body, status, param, code", [
    (b'{"messages": [', 400, None, "invalid_json"),
    (b"\xff\xfe", 400, None, "invalid_json"),
    (b"[1, 2]", 400, None, None),
    (json.dumps({"messages": HI, "temperature": "hot"}).encode(), 400, "temperature", None),
    (json.dumps({"messages": HI, "max_tokens": True}).encode(), 400, "max_tokens", None),
    (json.dumps({"messages": HI, "stop": [1]}).encode(), 400, "stop", None),
    (json.dumps({"messages": HI, "no_such_field": 1}).encode(), 400, "no_such_field", None),
    (json.dumps({"messages": "hi"}).encode(), 400, "messages", None),
    (json.dumps({"messages": [{"role": "user"}]}).encode(), 400, "messages[0].content", None),
    (json.dumps({"max_tokens": 5}).encode(), 400, "messages", None),
    (json.dumps({"messages": HI, "n": 9}).encode(), 400, "n", None),
    (json.dumps({"messages": HI, "logprobs": True}).encode(), 400, "logprobs", None),
    (json.dumps({"messages": [{"role": "user", "content": "y" * 100}]}).encode(), 400, "messages",
     "context_length_exceeded"),
    (json.dumps({"messages": [{"role": "user", "content": "y" * 5000}]}).encode(), 413, None, "request_too_large"),
])
def test_bad_requests_get_openai_errors_and_the_server_lives_on(server, body, status, param, code):
    got, err = call(server, "POST", "/v1/chat/completions", raw=body)
    assert got == status and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["param"] == param and err["error"]["code"] == code and err["error"]["message"]
    assert call(server, "GET", "/health")[0] == 200


def test_unknown_route_and_prompt_forms(server):
    assert call(server, "POST", "/v1/embeddings", {"input": "x"})[0] == 404
    assert call(server, "GET", "/nope")[0] == 404
    status, body = call(server, "POST", "/v1/completions", {"prompt": [72, 105], "max_tokens": 2})
    assert status == 200 and body["usage"]["prompt_tokens"] == 2
    assert call(server, "POST", "/v1/completions", {"prompt": [999999]})[1]["error"]["param"] == "prompt"


def test_keep_alive_concurrency_and_a_silent_client(server):
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    for _ in range(2):                                        # two requests on one connection
        assert call(server, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 2}, conn=conn)[0] == 200
    conn.close()
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        call(server, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 4})[0])) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [200, 200, 200]                          # served together, none lost
    with socket.create_connection(server.server_address[:2], timeout=5) as s:   # promises 100 bytes, sends 5
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                  b"\r\nContent-Length: 100\r\n\r\n{\"pr")
        t = time.time()
        while s.recv(4096):                                    # the server gives up after request_timeout
            pass
        assert time.time() - t < 4


def test_server_shuts_down_cleanly_with_open_connections(eng):
    srv, thread = start(eng, server_cfg())
    conn = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
    assert call(srv, "GET", "/v1/models", conn=conn)[0] == 200  # leaves a keep-alive connection open
    t = time.time()
    srv.close()
    thread.join(5)
    assert not thread.is_alive() and time.time() - t < 3
    with pytest.raises(OSError):
        socket.create_connection(srv.server_address[:2], timeout=2).close()
    conn.close()


def test_official_openai_client(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=20)
    assert [m.id for m in client.models.list()] == [server.engine.name]
    r = client.chat.completions.create(model="polylm", messages=HI, max_tokens=6, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 1
    stream = client.chat.completions.create(model="polylm", messages=HI, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
    c = client.completions.create(model="polylm", prompt="The cat", max_tokens=5, temperature=0, n=2)
    assert len(c.choices) == 2 and c.choices[0].text == c.choices[1].text
    s = client.completions.create(model="polylm", prompt="The cat", max_tokens=5, temperature=0, stream=True)
    assert "".join(x.choices[0].text for x in s) == c.choices[0].text
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="polylm", messages=HI, temperature=5)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()


# ----------------------------------------------------------------------------- batched serving

def _lined_up(eng, bodies, srv):
    """Send the requests from threads while the engine holds admission, so that they all start together;
    returns (status, body) in order."""
    out = [None] * len(bodies)

    def one(i, path, body):
        out[i] = call(srv, "POST", path, body)
    threads = [threading.Thread(target=one, args=(i, p, b)) for i, (p, b) in enumerate(bodies)]
    with eng.hold():
        for t in threads:
            t.start()
        deadline = time.time() + 20
        while eng.waiting() < len(bodies) and time.time() < deadline:
            time.sleep(0.01)
        assert eng.waiting() == len(bodies)
    for t in threads:
        t.join(30)
    return out


def _text(path, stream, body):
    """The generated text (and finish reasons) of a response, streamed or not."""
    if not stream:
        return [c["message"]["content"] if "message" in c else c["text"] for c in body["choices"]], \
            [c["finish_reason"] for c in body["choices"]]
    chunks = [json.loads(e) for e in sse(body)[:-1]]
    texts, reasons = {}, {}
    for c in chunks:
        for ch in c["choices"]:
            texts[ch["index"]] = texts.get(ch["index"], "") + (ch.get("text") or ch.get("delta", {}).get("content", ""))
            if ch["finish_reason"]:
                reasons[ch["index"]] = ch["finish_reason"]
    return [texts[i] for i in sorted(texts)], [reasons[i] for i in sorted(reasons)]


def test_concurrent_greedy_requests_give_exactly_their_serial_output(eng):
    srv, thread = start(eng, server_cfg(max_batch_rows=16, max_tokens_cap=64))
    try:
        prompts = ["The cat", "A", "xyz abc def ghi jkl mno", "Hello there, how", "é", "1 2 3 4 5 6 7", "q", "Zz"]
        bodies = []
        for i, p in enumerate(prompts):
            stream = i % 2 == 1
            if i % 3 == 0:
                path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": p}]}
            else:
                path, body = "/v1/completions", {"prompt": p}
            body.update(max_tokens=[30, 5, 12, 40, 1, 22, 17, 9][i], temperature=0, stream=stream)
            if i == 2:
                body["n"] = 2
            bodies.append((path, body))
        serial = [call(srv, "POST", p, b) for p, b in bodies]
        eng.stats["peak_rows"] = 0
        together = _lined_up(eng, bodies, srv)
        assert eng.stats["peak_rows"] == 9                             # all 8 requests (9 rows) in one batch
        for (path, body), a, b in zip(bodies, serial, together):
            assert a[0] == b[0] == 200
            assert _text(path, body["stream"], a[1]) == _text(path, body["stream"], b[1])
        assert any(r == ["length"] for _, r in (_text(p, b["stream"], s[1]) for (p, b), s in zip(bodies, serial)))
    finally:
        srv.close()
        thread.join(5)


def test_one_request_at_a_time_when_max_batch_rows_is_1(eng):
    srv, thread = start(eng, server_cfg(max_batch_rows=1))
    try:
        eng.stats["peak_rows"] = 0
        bodies = [("/v1/completions", {"prompt": p, "max_tokens": 6, "temperature": 0}) for p in "abcd"]
        assert [s for s, _ in _lined_up(eng, bodies, srv)] == [200] * 4
        assert eng.stats["peak_rows"] == 1
        status, body = call(srv, "POST", "/v1/completions", {"prompt": ["a", "b"], "n": 2, "max_tokens": 3})
        assert status == 200 and len(body["choices"]) == 4 and eng.stats["peak_rows"] == 4   # one request, one batch
    finally:
        srv.close()
        thread.join(5)


def test_a_full_queue_gets_429_with_retry_after(eng):
    srv, thread = start(eng, server_cfg(max_queue=2))
    try:
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            call(srv, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 2})[0])) for _ in range(2)]
        with eng.hold():
            for t in threads:
                t.start()
            while eng.waiting() < 2:
                time.sleep(0.01)
            c = http.client.HTTPConnection(*srv.server_address[:2], timeout=10)
            c.request("POST", "/v1/completions", body=json.dumps({"prompt": "a"}),
                      headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
            r = c.getresponse()
            err = json.loads(r.read())
            c.close()
            assert r.status == 429 and int(r.getheader("Retry-After")) >= 1
            assert err["error"]["code"] == "rate_limit_exceeded" and "max_queue=2" in err["error"]["message"]
        for t in threads:
            t.join(20)
        assert results == [200, 200]                                   # those that waited are served
    finally:
        srv.close()
        thread.join(5)
        eng.configure(max_queue=64)


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_has_its_rows_dropped(eng, stream, monkeypatch):
    hidden = eng.model.hidden

    def slow_hidden(*a, **kw):                                         # ~40 ms a step: the request outlives its client
        time.sleep(0.04)
        return hidden(*a, **kw)
    monkeypatch.setattr(eng.model, "hidden", slow_hidden)
    srv, thread = start(eng, server_cfg(max_tokens_cap=60))
    try:
        before, steps = eng.stats["cancelled"], eng.stats["steps"]
        s = socket.create_connection(srv.server_address[:2], timeout=10)
        body = json.dumps({"prompt": "a", "max_tokens": 60, "temperature": 0, "stream": stream}).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
                  b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        if stream:
            assert s.recv(100).startswith(b"HTTP/1.1 200")               # generation has started
        else:
            while eng.stats["steps"] < steps + 3:
                time.sleep(0.01)
        s.close()
        deadline = time.time() + 10
        while eng.stats["cancelled"] == before and time.time() < deadline:
            time.sleep(0.02)
        assert eng.stats["cancelled"] == before + 1
        assert eng.stats["steps"] - steps < 55                          # dropped long before its 60 tokens
        monkeypatch.undo()
        assert call(srv, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 2})[0] == 200
    finally:
        srv.close()
        thread.join(5)


# ----------------------------------------------------------------------------- echo + logprobs (lm-evaluation-harness)

XCOPA_LIKE = [  # (premise + connective, [choice 1, choice 2]) as lm-eval's xcopa template builds them (short:
    # the test model's context is 64 byte tokens)
    ("The tap ran, so", [" it filled.", " it broke."]),
    ("Ayam bertelur, karena", [" lapar.", " sehat."]),
    ("Lei urlò, quindi ", ["pianse.", "rise."]),        # a trailing space moves to the continuation
    ("ฝนตก เพราะ", [" ร้อน", " เย็น"]),
]


def _lm_eval_request(srv, prompts, max_tokens):
    """The body lm-eval 0.4 local-completions sends for loglikelihood (tokenized_requests=True)."""
    status, body = call(srv, "POST", "/v1/completions", {
        "model": "polylm", "prompt": prompts, "temperature": 0, "max_tokens": max_tokens, "logprobs": 1,
        "seed": 1234, "echo": True})
    assert status == 200, body
    return sorted(body["choices"], key=lambda c: c["index"])


def test_lm_eval_loglikelihood_over_http_equals_evaluate_scorer(server, eng):
    enc, model = eng.enc, eng.model
    pairs = [[S.encode_pair(enc, ctx, c) for c in choices] for ctx, choices in XCOPA_LIKE]
    flat = [p for q in pairs for p in q]
    naive = S.loglik_naive(model, flat, model.cfg.block_size)
    batched = S.loglik_batched(model, pairs, model.cfg.block_size)
    assert naive == pytest.approx(batched, abs=1e-4)
    for max_tokens in (1, 0):                                            # lm-eval versions send either
        got, greedy = [], []
        for q in pairs:
            choices = _lm_eval_request(server, [ctx + cont for ctx, cont in q], max_tokens)
            for (ctx, cont), ch in zip(q, choices):
                lp = ch["logprobs"]
                assert len(lp["tokens"]) == len(ctx) + len(cont) + max_tokens
                assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
                end = -1 if max_tokens else None                         # lm-eval: token_logprobs[ctxlen:-1]
                got.append(sum(lp["token_logprobs"][len(ctx):end]))
                greedy.append(all(t == max(top.values()) for t, top in
                                  zip(lp["token_logprobs"][len(ctx):end], lp["top_logprobs"][len(ctx):end])))
        assert got == pytest.approx(naive, abs=1e-4)
        with torch.no_grad():                                            # is_greedy: the continuation is the argmax
            want = [bool((model(torch.tensor([ctx + cont]))[0, len(ctx) - 1:-1].argmax(-1) ==
                          torch.tensor(cont)).all()) for ctx, cont in flat]
        assert greedy == want


def test_echo_and_logprobs_of_a_text_prompt(server, eng):
    enc = eng.enc
    status, body = call(server, "POST", "/v1/completions",
                        {"prompt": "né ab", "echo": True, "logprobs": 3, "max_tokens": 0})
    ch = body["choices"][0]
    lp = ch["logprobs"]
    assert status == 200 and ch["text"] == "né ab" and ch["finish_reason"] == "length"
    assert lp["tokens"] == ["n", "bytes:\\xc3", "bytes:\\xa9", " ", "a", "b"]   # byte tokens, OpenAI's spelling
    assert lp["text_offset"] == [0, 1, 1, 2, 3, 4]
    assert all(len(t) == 3 and sorted(t.values(), reverse=True) == list(t.values()) for t in lp["top_logprobs"][1:])
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 0, "total_tokens": 6}
    # generated tokens: greedy picks the top alternative; the echoed text is the prompt + the completion
    status, body = call(server, "POST", "/v1/completions",
                        {"prompt": "ab", "echo": True, "logprobs": 2, "max_tokens": 5, "temperature": 0})
    plain = call(server, "POST", "/v1/completions", {"prompt": "ab", "max_tokens": 5, "temperature": 0})[1]
    ch = body["choices"][0]
    assert ch["text"] == "ab" + plain["choices"][0]["text"]
    new = len(ch["logprobs"]["tokens"]) - 2
    assert new == body["usage"]["completion_tokens"] >= 1
    for t, v, top in zip(ch["logprobs"]["tokens"][2:], ch["logprobs"]["token_logprobs"][2:],
                         ch["logprobs"]["top_logprobs"][2:]):
        assert max(top.values()) == v and (t in top or t.startswith("bytes:") or t.startswith("<|"))
    status, body = call(server, "POST", "/v1/completions",               # sampled: ignore_eos keeps it 3 tokens
                        {"prompt": "ab", "logprobs": 1, "max_tokens": 3, "ignore_eos": True})
    lp = body["choices"][0]["logprobs"]                                  # without echo: the new tokens only
    assert len(lp["tokens"]) == 3 and lp["token_logprobs"][0] is not None and lp["text_offset"][0] == 0


# ----------------------------------------------------------------------------- one 400 per bad input, never a 500

@pytest.mark.parametrize("body, param", [
    ({"prompt": "a", "seed": 2 ** 80}, "seed"),
    ({"prompt": "a", "seed": 2 ** 64}, "seed"),
    ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "a", "echo": True, "stream": True}, "stream"),
    ({"prompt": "a", "logprobs": 21}, "logprobs"),
    ({"prompt": "a", "logprobs": True}, "logprobs"),
    ({"prompt": "a", "echo": "yes"}, "echo"),
    ({"prompt": [[1, 2], []]}, "prompt"),
    ({"prompt": "y" * 64, "max_tokens": 1}, "prompt"),
    ({"messages": HI, "max_tokens": 0}, "max_tokens"),
])
def test_bad_values_get_one_400_naming_the_field(server, body, param):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    status, err = call(server, "POST", path, body)
    assert status == 400 and err["error"]["param"] == param and err["error"]["message"]


def test_a_seed_torch_accepts_works_and_deep_json_is_a_400(eng):
    srv, thread = start(eng, server_cfg(max_body_bytes=1 << 20))
    try:
        for seed in (2 ** 64 - 1, -2 ** 63):
            assert call(srv, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 2, "seed": seed})[0] == 200
        deep = b'{"prompt": "a", "stop": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        for raw in (deep, b"[" * 100_000, b'{"messages": ' + b"[" * 900 + b"]" * 900 + b"}"):
            status, err = call(srv, "POST", "/v1/chat/completions", raw=raw)
            assert status == 400 and err["error"]["type"] == "invalid_request_error", err
        assert call(srv, "GET", "/health")[0] == 200
    finally:
        srv.close()
        thread.join(5)


# ----------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("argv", [["chat.py", "--serve"], ["server.py"]])
def test_serving_from_the_command_line(run_dir, argv, tmp_path):
    """python chat.py --ckpt RUN --serve --port=0 (and python server.py ...) serve, and stop cleanly on SIGTERM."""
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, *argv, f"--ckpt={run_dir}", "--port=0", "--device=cpu",
                                 "--threads=1", "--verbose=False"], cwd=ROOT, stderr=err)
    try:
        deadline = time.time() + 60
        while "serving" not in log.read_text() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        url = log.read_text().split("base_url='")[1].split("'")[0]
        host, port = url.split("//")[1].split("/")[0].split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        c.request("POST", "/v1/completions", body=json.dumps({"prompt": "a", "max_tokens": 3}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["usage"]["completion_tokens"] >= 1
        c.close()
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_ignore_eos_runs_to_max_tokens(eng):
    """vLLM's extension, for benchmarks: special tokens do not end the reply. The model here always says
    <|endoftext|> (its last LayerNorm outputs that token's embedding, scaled up, whatever the input)."""
    eot = eng.enc.eot_token
    model = PolyLM(eng.model.cfg)
    with torch.no_grad():
        model.wte.weight[eot] *= 10
        model.ln_f.weight.zero_()
        model.ln_f.bias.copy_(model.wte.weight[eot])
    says_eot = engine.Engine(model, eng.enc)
    srv, thread = start(says_eot, server_cfg())
    try:
        body = {"prompt": "a", "max_tokens": 5, "temperature": 0}
        status, plain = call(srv, "POST", "/v1/completions", body)
        assert status == 200 and plain["usage"]["completion_tokens"] == 1
        assert plain["choices"][0]["finish_reason"] == "stop"
        status, body = call(srv, "POST", "/v1/completions", {**body, "ignore_eos": True})
        assert status == 200 and body["usage"]["completion_tokens"] == 5
        assert body["choices"][0]["finish_reason"] == "length"
    finally:
        srv.close()
        thread.join(5)
        says_eot.close()
