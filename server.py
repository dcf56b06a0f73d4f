"""An OpenAI-compatible HTTP server for a trained PolyLM (PolyLM paper, arXiv 2307.06018, §6: the chat model as a
teacher for selfinstruct.py, for any OpenAI client, and for lm-evaluation-harness over HTTP).

    python server.py --ckpt out/toy-sft [--port=8000] [--max_batch_rows=16]     # or: python chat.py --ckpt R --serve
    python server.py --help                                                        # every setting

It speaks the wire format of the official `openai` client (base_url="http://127.0.0.1:8000/v1"):
POST /v1/chat/completions, POST /v1/completions (both also as `stream: true` server-sent events), GET /v1/models and
GET /health. Prompts are built with chat_template.py, the template sft.py trains with.

  - Batching: every handler thread submits its request to engine.py's Engine, whose one scheduler thread decodes all
    running requests together (continuous batching, up to max_batch_rows rows) and streams each row to its own
    handler. Greedy output is the same as serving one request at a time (max_batch_rows=1 is exactly that).
  - Log-likelihoods (lm-evaluation-harness `local-completions`): /v1/completions takes `echo: true`, `logprobs: k`
    and `max_tokens: 0` (score only), prompts as text or token ids, and answers OpenAI's legacy
    `logprobs: {tokens, token_logprobs, top_logprobs, text_offset}` over the echoed prompt and the new tokens (the
    first prompt token has null logprob and null top_logprobs; text_offset is in characters of the choice's text;
    log-probs are float32, of the model's distribution before any sampling setting is applied).
  - Safety: binds 127.0.0.1 unless told otherwise, optional Bearer key (--api_key or env POLYLM_API_KEY), bodies over
    max_body_bytes get 413, more than max_queue waiting requests get 429 with Retry-After, max_tokens is capped by
    max_tokens_cap and by the room left in the context, a client that disconnects has its rows dropped, and bad input
    (malformed or too deeply nested JSON, unknown fields, wrong types, out-of-range seeds, over-long prompts) gets
    HTTP 400 with an OpenAI-style {"error": {...}} object, never a 500.
"""

import codecs
import dataclasses
import hmac
import http.server
import json
import math
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from urllib.parse import urlsplit

import torch

import runtime
from config import ConfigError, run_cli
from chat_template import RequestError, encode_messages
from engine import MAX_LOGPROBS, SEED_RANGE, Engine, QueueFull


@dataclasses.dataclass
class ServerConfig:
    ckpt: str = "out/toy-sft"           # run dir to serve (train.py or sft.py output)
    device: str = "auto"                # cpu | cuda | cuda:N (auto = cuda when available)
    dtype: str = "auto"                 # float32 | bfloat16 (auto = bfloat16 on CUDA, float32 on CPU)
    threads: int = 0                    # CPU threads for torch (0 = torch's default)
    host: str = "127.0.0.1"             # address to bind (anything but loopback exposes the model: set api_key)
    port: int = 8000                    # TCP port (0 = any free port)
    api_key: str = ""                   # required Bearer token ('' = env POLYLM_API_KEY, or no key if unset)
    model_name: str = ""                # model id the API reports ('' = the run dir's name)
    max_tokens: int = 256               # a request's max_tokens when it sends none
    max_tokens_cap: int = 1024          # upper bound on a request's max_tokens
    max_body_bytes: int = 1 << 20       # largest request body accepted (larger: HTTP 413)
    max_batch: int = 8                  # most sequences one request may generate (n x number of prompts)
    max_batch_rows: int = 16            # most sequences decoded together, all requests (1 = one request at a time)
    max_queue: int = 64                 # most requests waiting for the model (one more: HTTP 429 + Retry-After)
    request_timeout: float = 30.0       # seconds a client may stay silent while sending a request
    queue_timeout: float = 300.0        # seconds a request may wait for the model before HTTP 503
    verbose: bool = True                # log one line per HTTP request to stderr


def check_config(cfg: ServerConfig):
    """One clear line (ConfigError) for a bad setting, before any model is loaded."""
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port={cfg.port}: choose 0..65535 (0 = any free port)")
    for key in ("max_tokens", "max_tokens_cap", "max_body_bytes", "max_batch", "max_batch_rows", "max_queue"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)}: must be >= 1")
    for key in ("request_timeout", "queue_timeout"):
        if not getattr(cfg, key) > 0:
            raise ConfigError(f"{key}={getattr(cfg, key)}: must be > 0 seconds")
    if cfg.threads < 0:
        raise ConfigError(f"threads={cfg.threads}: must be >= 0 (0 = torch's default)")
    runtime.choose(cfg.device, cfg.dtype)


# ----------------------------------------------------------------------------- requests

# The fields each endpoint accepts: name -> (check of a non-null value, what the error says it must be). Anything
# else is rejected like OpenAI does ("Unrecognized request argument"); features this server lacks (tools,
# logit_bias, chat logprobs, ...) are accepted only with the value that turns them off. top_k, repetition_penalty
# and ignore_eos are extensions (the openai client sends them with extra_body=).

def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_or_list(v):
    return isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))


COMMON = {
    "model": (lambda v: isinstance(v, str), "a string"),
    "max_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "temperature": (lambda v: _is_num(v) and 0 <= v <= 2, "a number between 0 and 2"),
    "top_p": (lambda v: _is_num(v) and 0 <= v <= 1, "a number between 0 and 1"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "n": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "stream": (lambda v: isinstance(v, bool), "a boolean"),
    "stream_options": (lambda v: isinstance(v, dict) and isinstance(v.get("include_usage", False), bool),
                       'an object like {"include_usage": true}'),
    "stop": (lambda v: _is_str_or_list(v) and (isinstance(v, str) or len(v) <= 4), "a string or up to 4 strings"),
    "seed": (lambda v: _is_int(v) and SEED_RANGE[0] <= v <= SEED_RANGE[1], "an integer in [-2**63, 2**64 - 1]"),
    "presence_penalty": (lambda v: _is_num(v) and -2 <= v <= 2, "a number between -2 and 2"),
    "frequency_penalty": (lambda v: _is_num(v) and -2 <= v <= 2, "a number between -2 and 2"),
    "repetition_penalty": (lambda v: _is_num(v) and 0 < v <= 10, "a number in (0, 10]"),
    "user": (lambda v: isinstance(v, str), "a string"),
    "logit_bias": (lambda v: isinstance(v, dict) and not v, "empty (logit_bias is not supported)"),
    "ignore_eos": (lambda v: isinstance(v, bool), "a boolean"),     # vLLM's extension: run to max_tokens
}
CHAT_FIELDS = {**COMMON,
               "messages": (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of messages"),
               "max_completion_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
               "logprobs": (lambda v: v is False, "false (chat logprobs are not supported; use /v1/completions)"),
               "top_logprobs": (lambda v: v == 0, "0 (chat logprobs are not supported; use /v1/completions)"),
               "response_format": (lambda v: v == {"type": "text"}, '{"type": "text"} (the only format supported)'),
               "tools": (lambda v: v == [], "empty (tools are not supported)"),
               "tool_choice": (lambda v: v == "none", '"none" (tools are not supported)'),
               "parallel_tool_calls": (lambda v: isinstance(v, bool), "a boolean"),
               "store": (lambda v: isinstance(v, bool), "a boolean"),
               "metadata": (lambda v: isinstance(v, dict), "an object")}
COMPLETION_FIELDS = {**COMMON,
                     "prompt": (lambda v: isinstance(v, str) or (isinstance(v, list) and len(v) > 0), "a string, "
                                "a list of strings, a list of token ids or a list of token-id lists"),
                     "max_tokens": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 only with echo)"),
                     "logprobs": (lambda v: _is_int(v) and 0 <= v <= MAX_LOGPROBS,
                                  f"an integer between 0 and {MAX_LOGPROBS}"),
                     "echo": (lambda v: isinstance(v, bool), "a boolean"),
                     "suffix": (lambda v: v == "", "null (suffix is not supported)"),
                     "best_of": (lambda v: v == 1, "1 (best_of is not supported)")}


@dataclasses.dataclass
class Job:
    """A validated request."""
    kind: str                    # "chat" or "completion"
    prompts: list                # token-id lists
    n: int
    max_tokens: int              # 0 only for an echoed completion (score the prompt)
    stop: list
    stream: bool
    include_usage: bool
    sampling: dict               # temperature, top_p, top_k, penalties, seed
    logprobs: object = None      # None, or the number of alternatives per position (completions)
    echo: bool = False           # completions: the choice text and logprobs start with the prompt


def _check_fields(body, fields):
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    for key, value in body.items():
        if key not in fields:
            raise RequestError(f"Unrecognized request argument supplied: {key}", key)
        check, want = fields[key]
        if value is not None and not check(value):
            raise RequestError(f"'{key}' must be {want}; got {json.dumps(value)[:80]}", key)


def _completion_prompts(prompt, enc, vocab):
    """The four prompt forms of /v1/completions -> token-id lists (an empty text starts from <|endoftext|>)."""
    def ids_ok(p):
        return isinstance(p, list) and p and all(_is_int(t) and 0 <= t < vocab for t in p)
    if isinstance(prompt, str):
        prompts = [prompt]
    elif all(isinstance(p, str) for p in prompt):
        prompts = prompt
    elif ids_ok(prompt):
        return [prompt]
    elif all(ids_ok(p) for p in prompt):
        return prompt
    else:
        raise RequestError(f"'prompt' must be a string, a list of strings, or token ids in [0, {vocab})", "prompt")
    return [enc.encode_ordinary(p) or [enc.eot_token] for p in prompts]


def parse_request(kind, body, engine, cfg):
    """A JSON body -> a Job, or RequestError (HTTP 400) saying which field is wrong and why."""
    _check_fields(body, CHAT_FIELDS if kind == "chat" else COMPLETION_FIELDS)
    get = lambda k, d=None: d if body.get(k) is None else body[k]   # noqa: E731 - null means "default"
    if kind == "chat":
        if body.get("messages") is None:
            raise RequestError("'messages' is required", "messages")
        prompts = [encode_messages(engine.enc, body["messages"])]
        if not prompts[0]:
            raise RequestError("the messages hold no text to answer", "messages")
    else:
        if body.get("prompt") is None:
            raise RequestError("'prompt' is required", "prompt")
        prompts = _completion_prompts(body["prompt"], engine.enc, engine.vocab)
    n = get("n", 1)
    if n * len(prompts) > cfg.max_batch:
        raise RequestError(f"n x prompts = {n * len(prompts)} sequences; this server allows {cfg.max_batch}", "n")
    echo, logprobs, stream = get("echo", False), get("logprobs"), get("stream", False)
    want = get("max_completion_tokens", get("max_tokens", cfg.max_tokens))
    if want == 0 and not echo:
        raise RequestError("'max_tokens' is 0: nothing to do (0 is for scoring a prompt, with echo: true)",
                           "max_tokens")
    if stream and (echo or logprobs is not None):
        raise RequestError("echo and logprobs are not supported with stream: true", "stream")
    longest = max(len(p) for p in prompts)
    if longest > engine.block or (longest == engine.block and want > 0):
        raise RequestError(f"This model's maximum context length is {engine.block} tokens, and the prompt has "
                           f"{longest}; shorten it to leave room for the reply",
                           "messages" if kind == "chat" else "prompt", "context_length_exceeded")
    stop = get("stop", [])
    sampling = dict(temperature=get("temperature", 1.0), top_p=get("top_p", 1.0), top_k=get("top_k", 0),
                    repetition_penalty=get("repetition_penalty", 1.0), presence_penalty=get("presence_penalty", 0.0),
                    frequency_penalty=get("frequency_penalty", 0.0), seed=get("seed"),
                    ignore_eos=get("ignore_eos", False))
    max_tokens = 0 if want == 0 else max(1, min(want, cfg.max_tokens_cap, engine.block - longest))
    return Job(kind, prompts, n, max_tokens, [stop] if isinstance(stop, str) else stop, stream,
               bool(get("stream_options", {}).get("include_usage")), sampling, logprobs, echo)


def error_body(message, type_="invalid_request_error", param=None, code=None):
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def token_str(enc, t):
    """A token as OpenAI's logprobs show it: its text, or 'bytes:\\xNN...' when it is not whole UTF-8."""
    b = enc.decode_single_token_bytes(t)
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{c:02x}" for c in b)


def logprobs_object(enc, entries):
    """OpenAI's legacy completions `logprobs` from the engine's [(token, logprob | None, alternatives | None)]:
    text_offset counts characters of the choice's text from its start."""
    dec = codecs.getincrementaldecoder("utf-8")("replace")
    offsets, at = [], 0
    for t, _, _ in entries:
        offsets.append(at)
        at += len(dec.decode(enc.decode_single_token_bytes(t)))
    return {"tokens": [token_str(enc, t) for t, _, _ in entries],
            "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [None if alts is None else {token_str(enc, a): v for a, v in alts}
                             for _, _, alts in entries],
            "text_offset": offsets}


# ----------------------------------------------------------------------------- HTTP

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"          # keep-alive; streams use chunked transfer encoding
    server_version = "polylm-chat/1"

    # -- plumbing
    def setup(self):
        self.timeout = self.server.cfg.request_timeout
        super().setup()

    def log_message(self, fmt, *args):
        if self.server.cfg.verbose:
            sys.stderr.write(f"{self.address_string()} - {fmt % args}\n")

    def _send_json(self, status, obj, close=False, headers=()):
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status, message, type_="invalid_request_error", param=None, code=None, close=False,
               headers=()):
        self._send_json(status, error_body(message, type_, param, code), close=close, headers=headers)

    def _authorized(self):
        key = self.server.api_key
        if not key:
            return True
        auth = self.headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if hmac.compare_digest(given.encode(), key.encode()):
            return True
        self._error(401, "Incorrect API key provided: send 'Authorization: Bearer <key>' with the server's key",
                    code="invalid_api_key", close=not self._drain())
        return False

    def _length(self):
        """The body length from Content-Length, or None after answering 4xx."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._error(411, "chunked request bodies are not supported: send Content-Length", close=True)
            return None
        raw = self.headers.get("Content-Length")
        try:
            n = int(raw) if raw is not None else 0
            if n < 0:
                raise ValueError
        except ValueError:
            self._error(400, f"bad Content-Length {raw!r}", close=True)
            return None
        return n

    def _drain(self):
        """Read and drop a body we will not use (if small), so the connection can stay open. True when done."""
        n = self._length_quiet()
        if n is None or n > self.server.cfg.max_body_bytes:
            return False
        try:
            self.rfile.read(n)
            return True
        except OSError:
            return False

    def _length_quiet(self):
        try:
            n = int(self.headers.get("Content-Length", "0"))
            return n if n >= 0 and "chunked" not in self.headers.get("Transfer-Encoding", "").lower() else None
        except ValueError:
            return None

    def _read_json(self):
        n = self._length()
        if n is None:
            return None
        if n > self.server.cfg.max_body_bytes:
            self._error(413, f"request body of {n} bytes is over this server's limit of "
                             f"{self.server.cfg.max_body_bytes}", code="request_too_large", close=True)
            return None
        try:
            raw = self.rfile.read(n)
        except OSError:                       # timeout or reset while the client sends
            self.close_connection = True
            return None
        if len(raw) < n:
            self.close_connection = True
            return None
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self._error(400, f"the request body is not valid JSON: {e}", code="invalid_json")
        except RecursionError:
            self._error(400, "the request body is nested too deeply", code="invalid_json")
        return None

    def _client_gone(self):
        """True when the client closed its connection (readable with nothing to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # -- routes
    def do_GET(self):
        try:
            path = urlsplit(self.path).path.rstrip("/")
            if not self._authorized():
                return
            model = {"id": self.server.engine.name, "object": "model", "created": self.server.started,
                     "owned_by": "polylm", "max_model_len": self.server.engine.block}   # the context, as vLLM reports it
            if path == "/v1/models":
                self._send_json(200, {"object": "list", "data": [model]})
            elif path == f"/v1/models/{self.server.engine.name}":
                self._send_json(200, model)
            elif path in ("", "/health"):
                self._send_json(200, {"status": "ok", "model": self.server.engine.name})
            else:
                self._error(404, f"no route GET {path}", code="not_found")
        except OSError:
            self.close_connection = True

    def do_POST(self):
        try:
            self._post()
        except OSError:
            self.close_connection = True
        except Exception as e:                # a bug must not kill the server or hang the client
            traceback.print_exc()
            try:
                self._error(500, f"internal error: {type(e).__name__}: {e}", "server_error", close=True)
            except OSError:
                self.close_connection = True

    def _post(self):
        path = urlsplit(self.path).path.rstrip("/")
        kind = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}.get(path)
        if kind is None:
            self._error(404, f"no route POST {path}", code="not_found", close=not self._drain())
            return
        if not self._authorized():
            return
        body = self._read_json()
        if body is None:
            return
        engine = self.server.engine
        try:
            job = parse_request(kind, body, engine, self.server.cfg)
            req = engine.submit(job.prompts, job.max_tokens, stop=job.stop, n=job.n, logprobs=job.logprobs,
                                echo=job.echo, stream=job.stream, cancel=self.server.cancel, **job.sampling)
        except QueueFull as e:
            self._error(429, str(e), "rate_limit_error", code=e.code, headers=[("Retry-After", str(e.retry_after))])
            return
        except RequestError as e:
            self._error(e.status, str(e), param=e.param, code=e.code)
            return
        except RecursionError:
            self._error(400, "the request body is nested too deeply", code="invalid_json")
            return
        except ValueError as e:               # e.g. a tokenizer without the template tokens
            self._error(400, str(e))
            return
        try:
            if not self._wait_admitted(req):
                return
            (self._stream if job.stream else self._complete)(job, req)
        finally:
            req.cancel.set()                  # a no-op when it finished; else its rows are dropped

    def _wait_admitted(self, req):
        """Wait until the scheduler runs the request: False (after answering 503, or with nobody left to answer)
        when the queue_timeout passes, the server stops or the client leaves."""
        deadline = time.monotonic() + self.server.cfg.queue_timeout
        while not req.admitted.wait(0.2):
            if self._client_gone():
                self.close_connection = True
                return False
            if self.server.cancel.is_set() or time.monotonic() > deadline or req.done.is_set():
                self._error(503, "the model is busy (or the server is stopping); try again later", "server_error",
                            code="server_busy")
                return False
        return True

    def _head(self, job):
        return {"id": ("chatcmpl-" if job.kind == "chat" else "cmpl-") + uuid.uuid4().hex, "created": int(time.time()),
                "model": self.server.engine.name, "system_fingerprint": None}

    def _complete(self, job, req):
        while not req.done.wait(0.2):         # a client that leaves stops its generation
            if self._client_gone():
                self.close_connection = True
                return
        if req.error:
            self._error(500, f"generation failed: {req.error}", "server_error", close=True)
            return
        r, enc, head = req.result, self.server.engine.enc, self._head(job)
        if job.kind == "chat":
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": f} for i, (t, f) in enumerate(zip(r.texts, r.reasons))]
            obj = {**head, "object": "chat.completion", "choices": choices}
        else:
            choices = []
            for i, (t, f) in enumerate(zip(r.texts, r.reasons)):
                prompt = job.prompts[i // job.n]
                text = (enc.decode(prompt) if job.echo else "") + t
                lp = None
                if job.logprobs is not None:      # a final <|endoftext|> stays, as in vLLM: lm-eval's
                    lp = logprobs_object(enc, r.logprobs[i])   # token_logprobs[ctxlen:-1] drops exactly one token
                choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": f})
            obj = {**head, "object": "text_completion", "choices": choices}
        obj["usage"] = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
                        "total_tokens": r.prompt_tokens + r.completion_tokens}
        self._send_json(200, obj)

    def _stream(self, job, req):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        head = self._head(job)
        chat = job.kind == "chat"
        obj = "chat.completion.chunk" if chat else "text_completion"

        def send(payload):
            data = b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))

        def chunk(i, text=None, finish=None, role=False):
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
                choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
            return {**head, "object": obj, "choices": [choice]}

        try:
            if chat:
                for i in range(len(job.prompts) * job.n):
                    send(chunk(i, role=True))
            for ev in req.iter_events():
                if ev[0] == "text":
                    send(chunk(ev[1], text=ev[2]))
                elif ev[0] == "end":
                    send(chunk(ev[1], finish=ev[2]))
                elif job.include_usage:
                    p, c = ev[1:]
                    send({**head, "object": obj, "choices": [],
                          "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})
        except OSError:                      # the client went away: _post cancels the request (its rows leave)
            self.close_connection = True
            return
        except Exception as e:               # headers are out: report in the stream, then end it
            traceback.print_exc()
            send(error_body(f"internal error: {type(e).__name__}: {e}", "server_error"))
            self.close_connection = True
        self.wfile.write(b"%X\r\n%s\r\n" % (len(b"data: [DONE]\n\n"), b"data: [DONE]\n\n"))
        self.wfile.write(b"0\r\n\r\n")


class Server(http.server.ThreadingHTTPServer):
    """ThreadingHTTPServer that remembers its open connections, so close() ends them (and the handler threads,
    which it then joins) instead of leaving keep-alive connections and generations running. It sets the engine's
    max_batch_rows and max_queue from its config."""
    daemon_threads = False
    request_queue_size = 128               # listen backlog: many clients may connect at once (the default is 5)

    def __init__(self, engine, cfg):
        self.engine, self.cfg = engine, cfg
        engine.configure(cfg.max_batch_rows, cfg.max_queue)
        self.api_key = cfg.api_key or os.environ.get("POLYLM_API_KEY", "")
        self.started = int(time.time())
        self.cancel = threading.Event()       # set by close(): running requests end at their next step
        self._serving = False
        self._conns, self._conns_lock = set(), threading.Lock()
        super().__init__((cfg.host, cfg.port), Handler)

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def serve_forever(self, poll_interval=0.5):
        self._serving = True
        super().serve_forever(poll_interval)

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close(self):
        """Stop serving (call from another thread than serve_forever), end open connections, join handlers."""
        self.cancel.set()
        if self._serving:
            self.shutdown()
        with self._conns_lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()


def _raise(exc):
    raise exc


def serve(engine, cfg):
    """Serve until Ctrl-C (or SIGTERM)."""
    server = Server(engine, cfg)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and not server.api_key:
        print(f"warning: serving on {cfg.host} without an API key: anyone who can reach this port can use the model",
              file=sys.stderr)
    print(f"serving {engine.name} on {server.url} (OpenAI API: base_url={server.url!r}); "
          f"{cfg.max_batch_rows} rows per batch; Ctrl-C stops", file=sys.stderr)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    if threading.current_thread() is threading.main_thread():   # `kill PID` shuts down as cleanly as Ctrl-C
        signal.signal(signal.SIGTERM, lambda *_: _raise(KeyboardInterrupt))
        signal.signal(signal.SIGINT, lambda *_: _raise(KeyboardInterrupt))
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        print("\nshutting down", file=sys.stderr)
    finally:
        server.close()
        engine.close()


def run(cfg: ServerConfig):
    check_config(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    engine = Engine.load(cfg.ckpt, cfg.device, cfg.dtype, cfg.model_name, max_batch_rows=cfg.max_batch_rows,
                         max_queue=cfg.max_queue)
    return serve(engine, cfg)


def main(argv=None):
    return run_cli(run, ServerConfig, argv, prog="server.py")


if __name__ == "__main__":
    main()
