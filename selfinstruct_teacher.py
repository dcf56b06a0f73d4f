"""The teacher side of selfinstruct.py (PolyLM §6, MultiAlpaca): an OpenAI-compatible chat-completions client over
the standard library's urllib, and a bounded pool of worker threads.

  Teacher      POST <base>/chat/completions (GET <base>/models), JSON in and out. Transient failures (HTTP 408, 409,
               429, 500, 502, 503, 504, timeouts, refused or dropped connections, torn bodies) are retried up to
               max_retries times after base * 2^k seconds (capped at backoff_max) times a jitter in [0.5, 1], or
               the server's Retry-After if longer. Other 4xx fail at once, as a TeacherError that keeps the HTTP
               status and the OpenAI error code. Every HTTP attempt is charged to a request budget and waits for its
               slot under a rate limit (attempts/second), both shared by all threads; usage tokens are counted
               against a token budget. The API key is only ever put in the Authorization header: errors, logs and
               repr() never show it, and URLs are shown without user:pass@.
  context      how many tokens the teacher holds (prompt + reply): `context_length(model entry)` reads it from
               GET /models where the server reports it (vLLM: `max_model_len`; OpenRouter-style: `context_length`),
               and `context_exceeded(error)` recognises the 400 a server sends when a prompt does not fit (code
               `context_length_exceeded`, as OpenAI and our server.py send, or vLLM's "maximum context length"
               message) and reads the context and the prompt's size from its message where it says them.
  WorkerPool   n daemon threads running fn(job); the caller submits at most n jobs and collects results with a
               timeout, so Ctrl-C is seen at once and an interrupted run exits without waiting for its requests.
"""
import http.client
import json
import queue
import random
import re
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit


class TeacherError(RuntimeError):
    """A request that failed for good (a 4xx other than 429, or retries used up). status: the HTTP status (None when
    it never got one); code: the OpenAI-style error code of the body ({"error": {"code"}}), if any; detail: the
    error message of the body."""

    def __init__(self, text, status=None, code=None, detail=""):
        super().__init__(text)
        self.status, self.code, self.detail = status, code, detail


class BudgetExhausted(TeacherError):
    """The request or token budget is spent: no more requests in this run."""


RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


def public_url(url):
    """The URL without user:password@ (for logs and provenance)."""
    p = urlsplit(url)
    return urlunsplit(p._replace(netloc=p.hostname + (f":{p.port}" if p.port else ""))) if p.hostname else url


class Teacher:
    """An OpenAI-compatible chat-completions client: retries with exponential backoff and jitter, Retry-After, a
    request/token budget and a rate limit shared by all threads. The API key stays in this object's memory: it goes
    only into the Authorization header, never into a log line, an error or a file."""

    def __init__(self, url, model="", api_key="", timeout=120.0, max_retries=6, backoff_base=1.0, backoff_max=60.0,
                 rate_limit=0.0, max_requests=0, max_total_tokens=0, seed=0, sleep=time.sleep, log=print):
        url = url.rstrip("/")
        self.base = url[:-len("/chat/completions")] if url.endswith("/chat/completions") else url
        self.model, self._key = model, api_key
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff_base, self.backoff_max, self.rate_limit = backoff_base, backoff_max, rate_limit
        self.max_requests, self.max_total_tokens = max_requests, max_total_tokens
        self.sleep, self.log, self.rng = sleep, log, random.Random(seed)
        self.lock = threading.Lock()
        self.attempts = self.retries = self.prompt_tokens = self.completion_tokens = 0
        self._next_slot = 0.0
        self.cancel = threading.Event()         # set on shutdown: no new attempts, no more waiting
        self.context = None                     # tokens the model holds, where GET /models says (make_teacher)

    def __repr__(self):
        return f"Teacher({public_url(self.base)!r}, model={self.model!r})"

    def _redact(self, text):
        return text.replace(self._key, "<api key>") if self._key else text

    def _start_attempt(self, charge=True):
        """Charge one attempt to the budget (unless charge=False) and wait for its rate-limit slot."""
        with self.lock:
            if self.cancel.is_set():
                raise BudgetExhausted("the run is stopping")
            if charge and self.max_requests and self.attempts >= self.max_requests:
                raise BudgetExhausted(f"request budget spent ({self.attempts} HTTP attempts, max_requests)")
            if self.max_total_tokens and self.prompt_tokens + self.completion_tokens >= self.max_total_tokens:
                raise BudgetExhausted(f"token budget spent ({self.prompt_tokens + self.completion_tokens} tokens)")
            self.attempts += charge
            now = time.monotonic()
            slot = max(now, self._next_slot)
            if self.rate_limit > 0:
                self._next_slot = slot + 1.0 / self.rate_limit
        if slot > now:
            self.sleep(slot - now)

    def backoff(self, attempt, retry_after=None):
        """Seconds before retry number `attempt` (0-based): base * 2^attempt, capped, times a jitter in [0.5, 1]
        (so parallel clients spread out); at least Retry-After when the server sent one (also capped)."""
        with self.lock:
            jitter = 0.5 + 0.5 * self.rng.random()
        delay = min(self.backoff_max, self.backoff_base * 2 ** attempt) * jitter
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    def request(self, method, path, body=None, charge=True, max_retries=None):
        """JSON in, JSON out, retrying transient failures; charge=False: not counted in the request budget;
        max_retries: this request's own limit (default: the client's)."""
        max_retries = self.max_retries if max_retries is None else max_retries
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = None
        for attempt in range(max_retries + 1):
            if attempt:
                with self.lock:
                    self.retries += 1
                self.sleep(self.backoff(attempt - 1, last[1]))
                if self.cancel.is_set():
                    raise BudgetExhausted("the run is stopping")
            try:
                self._start_attempt(charge)
            except BudgetExhausted as e:
                if attempt == 0 or self.cancel.is_set():
                    raise
                raise TeacherError(f"{e} while retrying (last: {last[0]})") from None   # sent, so it failed
            req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.loads(r.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                msg, code = _error_message(e)
                msg = self._redact(msg)                            # a server may echo the key it was sent
                if e.code not in RETRY_STATUS:
                    raise TeacherError(f"HTTP {e.code} from {public_url(self.base)}{path}: {msg}", e.code, code,
                                       msg) from None
                last = (f"HTTP {e.code}: {msg}", _retry_after(e.headers.get("Retry-After")))
            except (OSError, ValueError, http.client.HTTPException) as e:   # timeouts, refused/reset connections,
                last = (self._redact(f"{type(e).__name__}: {e}"), None)      # torn or non-JSON bodies
            if attempt < max_retries:
                self.log(f"teacher: {last[0]}; retry {attempt + 1} of {max_retries}")
        raise TeacherError(f"{public_url(self.base)}{path}: gave up after {max_retries + 1} attempts "
                           f"(last: {last[0]})")

    def model_list(self, max_retries=None):
        """The entries of GET /models (dicts with at least "id"); not charged to the request budget."""
        data = self.request("GET", "/models", charge=False, max_retries=max_retries).get("data", [])
        return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def models(self):
        return [m["id"] for m in self.model_list()]

    def chat(self, prompt, max_tokens, temperature=1.0, top_p=1.0, seed=None):
        """(reply text, finish_reason) of one user message; usage is added to the token counters."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": temperature, "top_p": top_p}
        if seed is not None:
            body["seed"] = seed
        r = self.request("POST", "/chat/completions", body)
        usage = r.get("usage") or {}
        with self.lock:
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)
        try:
            choice = r["choices"][0]
            return choice["message"]["content"] or "", choice.get("finish_reason")
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"reply without choices[0].message.content: {json.dumps(r)[:200]}") from None


def _error_message(e):
    """(message, code) of an HTTP error: error.message and error.code of an OpenAI-style body ({"error": {...}}, or
    the same fields at the top level, as older vLLM sends them), else the HTTP reason."""
    try:
        body = json.loads(e.read().decode("utf-8", "replace"))
        err = body["error"] if isinstance(body.get("error"), dict) else body
        code = err.get("code")
        return str(err["message"])[:300], (str(code) if code is not None else None)
    except Exception:                             # not an OpenAI-style error body
        return (e.reason if isinstance(e.reason, str) else str(e.code)), None


def _retry_after(value):
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None                                # absent, or an HTTP date (rare): use the backoff



# ----------------------------------------------------------------------------- the teacher's context

CONTEXT_KEYS = ("max_model_len", "context_length")     # vLLM; OpenRouter and other OpenAI-compatible servers
_CONTEXT = re.compile(r"context (?:length|window)", re.I)
_SAYS_CONTEXT = re.compile(r"maximum context length is (\d+)", re.I)
_SAYS_PROMPT = re.compile(r"(\d+) in the messages|prompt has (\d+)|request has (\d+) input tokens|"
                          r"messages resulted in (\d+) tokens", re.I)


def context_length(entry):
    """The context (tokens) a GET /models entry reports, or None when it reports none."""
    for key in CONTEXT_KEYS:
        v = entry.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def context_exceeded(err):
    """For a TeacherError that says the request does not fit the model's context: (context, prompt tokens), each
    None where the message does not say it; for any other error: None. Recognised: HTTP 400 with the code
    `context_length_exceeded` (OpenAI, our server.py) or a message about the context length (vLLM)."""
    if not isinstance(err, TeacherError) or err.status != 400:
        return None
    if err.code != "context_length_exceeded" and not _CONTEXT.search(err.detail):
        return None
    ctx, prompt = _SAYS_CONTEXT.search(err.detail), _SAYS_PROMPT.search(err.detail)
    return (int(ctx.group(1)) if ctx else None,
            int(next(g for g in prompt.groups() if g)) if prompt else None)


# ----------------------------------------------------------------------------- the worker pool

class WorkerPool:
    """A bounded pool of daemon threads: submit(job) runs fn(job) on one of them; results() yields (job, result,
    exception) as they finish. Daemon threads let an interrupted run exit at once, leaving in-flight requests."""

    def __init__(self, fn, n):
        self.jobs, self.done, self.fn = queue.Queue(), queue.Queue(), fn
        for _ in range(n):
            threading.Thread(target=self._work, daemon=True).start()

    def _work(self):
        while True:
            job = self.jobs.get()
            try:
                self.done.put((job, self.fn(job), None))
            except Exception as e:                # reported to the main thread, which decides
                self.done.put((job, None, e))

    def submit(self, job):
        self.jobs.put(job)

    def next(self, timeout=0.5):
        """The next finished (job, result, exception), or None after `timeout` (so Ctrl-C is seen promptly)."""
        try:
            return self.done.get(timeout=timeout)
        except queue.Empty:
            return None
