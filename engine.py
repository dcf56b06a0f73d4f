"""The generation engine behind the terminal chat and the OpenAI-compatible server (PolyLM paper, arXiv 2307.06018,
§6: PolyLM-MultiAlpaca as a chat model and as the teacher of self-instruct). Prompts are built with chat_template.py,
the template sft.py trains with.

Invariants
  - The Engine owns the model in ONE scheduler thread. Requests that arrive together share forward passes
    (continuous batching): at every decode step the scheduler admits waiting requests (up to max_batch_rows rows),
    prefills them, lets them join the running rows in a KV cache held in its own tensors (each row with its own
    length, positions and attention mask), samples one token for every row, streams each row's text to its own
    consumer and retires finished or cancelled rows. A request's rows are admitted together; a request with more
    rows than max_batch_rows runs alone. max_batch_rows=1 is the old one-generation-at-a-time engine.
  - Greedy tokens do not depend on what else is in the batch (tests/test_server.py checks 8 concurrent requests
    against serial ones); a seeded request samples with its own torch.Generator, so it is reproducible.
  - Log-probabilities (completions `logprobs`/`echo`, for lm-evaluation-harness) are float32 log-softmax of the same
    forward pass that generation uses: the prefill for the prompt tokens, the decode steps for the new tokens.

    from engine import Engine
    from chat_template import encode_messages
    eng = Engine.load("out/toy-sft")                       # a run dir of train.py / sft.py
    texts, reasons, usage = eng.complete([encode_messages(eng.enc, [{"role": "user", "content": "Hi"}])], 32)
    for ev in eng.stream([ids], 32, temperature=0.7): ...  # ("text", row, piece), ("end", row, reason), ...
"""
import atexit
import codecs
import contextlib
import dataclasses
import queue
import secrets
import threading
import traceback
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F

import runtime
from chat_template import RequestError
from model import load_model, load_tokenizer, sample_next

# ----------------------------------------------------------------------------- 1. streamed text

class TextStream:
    """Token ids of one sequence -> text pieces safe to show now. Bytes of a character split over tokens wait for
    the rest; text that could be the beginning of a stop string waits until it cannot; the text ends before the
    first stop string."""

    def __init__(self, enc, stop=()):
        self.enc, self.stop = enc, [s for s in stop if s]
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.text, self.sent, self.stopped = "", 0, False

    def push(self, token):
        self.text += self.decoder.decode(self.enc.decode_single_token_bytes(token))
        return self._release(final=False)

    def finish(self):
        if not self.stopped:
            self.text += self.decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, final):
        if self.stopped:
            return ""
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            self.stopped, end = True, min(hits)
        elif final:
            end = len(self.text)
        else:   # hold back the longest tail that begins some stop string
            hold = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
            end = len(self.text) - hold
        out, self.sent = self.text[self.sent:max(end, self.sent)], max(end, self.sent)
        return out


# ----------------------------------------------------------------------------- 2. requests and their rows

SEED_RANGE = (-(1 << 63), (1 << 64) - 1)    # what torch.Generator.manual_seed accepts
MAX_LOGPROBS = 20                            # most alternatives per position (vLLM's limit; OpenAI's is 5)
LOGPROB_CHUNK = 256                          # prompt positions per LM-head matmul when scoring (bounds memory)


class QueueFull(RequestError):
    """Too many requests wait for the model: HTTP 429 (the client should retry after retry_after seconds)."""

    def __init__(self, message, retry_after=1):
        super().__init__(message, None, "rate_limit_exceeded", status=429)
        self.retry_after = retry_after


@dataclasses.dataclass
class Result:
    """A finished request, rows in order (row = prompt index * n + k)."""
    texts: list                 # generated text per row (stop strings cut out)
    reasons: list               # "stop" | "length" per row
    prompt_tokens: int          # sum of the prompts' lengths (each prompt once, whatever n)
    completion_tokens: int      # new tokens of all rows (a stop token counts)
    tokens: list                # new token ids per row (a final special stop token included)
    logprobs: list              # per row (with logprobs): [(token, logprob | None, [(alt, logprob), ...] | None)]
                                # over the echoed prompt (when echo) then the new tokens; else None per row


@dataclasses.dataclass(eq=False)
class Request:
    """One submitted generation: len(prompts) x n rows sampled with one set of settings. The scheduler fills it;
    the submitter reads events (stream=True) or waits for `done` and reads `result`."""
    prompts: list               # token-id lists
    n: int                      # rows per prompt
    max_tokens: int             # new tokens per row (0: none, e.g. to score an echoed prompt)
    stop: tuple                 # stop strings (cut out of the text)
    sampling: dict              # temperature, top_k, top_p, repetition_penalty, presence/frequency_penalty
    generator: torch.Generator  # this request's sampling randomness (a seed makes it reproducible)
    logprobs: object            # None, or k >= 0: log-prob of every token and its k most likely alternatives
    echo: bool                  # the log-probs also cover the prompt
    stream: bool                # push ("text", row, piece) / ("end", row, reason) events while generating
    external_cancel: object     # an extra threading.Event that cancels it (e.g. the server's shutdown), or None
    ignore_eos: bool = False    # special tokens do not end a row (it runs to max_tokens; for benchmarks)
    cancel: threading.Event = dataclasses.field(default_factory=threading.Event)     # set: drop my rows
    admitted: threading.Event = dataclasses.field(default_factory=threading.Event)   # set: my rows are running
    done: threading.Event = dataclasses.field(default_factory=threading.Event)       # set: result (or error) ready
    events: queue.SimpleQueue = dataclasses.field(default_factory=queue.SimpleQueue)
    result: Result = None       # set when done
    error: str = None           # set when the engine failed (or dropped) it
    rows: list = None           # its _Rows, once admitted
    rows_left: int = 0          # of them not finished

    @property
    def n_rows(self):
        return len(self.prompts) * self.n

    def cancelled(self):
        return self.cancel.is_set() or (self.external_cancel is not None and self.external_cancel.is_set())

    def iter_events(self, poll=None):
        """The events of a streaming request until ("usage", prompt_tokens, completion_tokens), the last one.
        poll() (called every 0.2 s while waiting) may raise to stop waiting. An engine error raises RuntimeError."""
        while True:
            try:
                ev = self.events.get(timeout=0.2)
            except queue.Empty:
                if poll is not None:
                    poll()
                continue
            if ev[0] == "error":
                raise RuntimeError(ev[1])
            yield ev
            if ev[0] == "usage":
                return


class _Row:
    """One sequence of the running batch."""
    __slots__ = ("req", "index", "tokens", "length", "new", "text", "out", "reason", "seen", "counts", "logprobs")

    def __init__(self, req, index, prompt, enc):
        self.req, self.index, self.tokens = req, index, list(prompt)
        self.length = 0             # tokens whose keys/values are in the cache
        self.new = []               # generated token ids
        self.text = TextStream(enc, req.stop)
        self.reason = None          # "stop" | "length" once finished
        self.seen = self.counts = None   # penalty state (V,) when the request uses penalties
        self.logprobs = [] if req.logprobs is not None else None
        self.out = ""               # the text given out so far


# ----------------------------------------------------------------------------- 3. the KV cache of the batch

class _SlotLayer:
    """model.py's LayerKV interface (append(k, v) -> the keys and values to attend to) over the batch's buffers."""

    def __init__(self, cache, i):
        self.cache, self.i = cache, i

    def append(self, k, v):
        return self.cache.write(self.i, k, v)


class BatchCache:
    """Keys and values of every running row, one buffer (rows, n_head, width, head_dim) per layer, zero-initialised
    (masked slots hold finite numbers, never NaN). Row r of the batch lives in slot r, its tokens in columns
    0 .. length_r - 1 (right-padded: rows of different lengths need no shifting when a row joins or grows).

    model.hidden(..., kv_cache=this) runs in one of two modes set just before the call:
      prefill(start, n)  n new rows (right-padded prompts, T columns) are written to slots start..start+n-1,
                         columns 0..T-1, and attend among themselves;
      decode(lens, W)    one token per running row r (slots 0..m-1) is written at column lens[r]; every row attends
                         to columns 0..W-1 of its slot (the caller's mask hides each row's columns > lens[r])."""

    def __init__(self, n_layer, block_size):
        self.block = block_size
        self.k, self.v = [None] * n_layer, [None] * n_layer
        self.layers = [_SlotLayer(self, i) for i in range(n_layer)]
        self.rows = self.width = 0          # capacity wanted for the next call
        self.length = 0                     # what model.hidden reads as "tokens already cached"
        self.mode = None

    def reserve(self, rows, width):
        """Make room for `rows` slots and `width` columns (grown by doubling, width at most block_size)."""
        if rows > self.rows:
            self.rows = max(rows, 2 * self.rows)
        if width > self.width:
            self.width = min(self.block, max(width, 2 * self.width))

    def prefill(self, start, n):
        self.mode, self.length = ("prefill", start, n), 0

    def decode(self, lens, width):
        self.mode, self.length = ("decode", lens, width), width - 1

    def _buffers(self, i, like):
        k = self.k[i]
        if k is None or k.size(0) < self.rows or k.size(2) < self.width:
            B, H, T, D = (0, like.size(1), 0, like.size(3)) if k is None else k.shape
            nk, nv = like.new_zeros(self.rows, H, self.width, D), like.new_zeros(self.rows, H, self.width, D)
            if k is not None:
                nk[:B, :, :T], nv[:B, :, :T] = k, self.v[i]
            self.k[i], self.v[i] = nk, nv
        return self.k[i], self.v[i]

    def write(self, i, k, v):
        K, V = self._buffers(i, k)
        if self.mode[0] == "prefill":
            _, start, n = self.mode
            K[start:start + n, :, :k.size(2)], V[start:start + n, :, :k.size(2)] = k, v
            return k, v
        _, lens, width = self.mode
        m = k.size(0)
        slots = torch.arange(m, device=k.device)
        K[slots, :, lens], V[slots, :, lens] = k[:, :, 0], v[:, :, 0]
        return K[:m, :, :width], V[:m, :, :width]

    def keep(self, slots, width):
        """Compact the batch after rows left: slots (a list, in order) move to 0..len(slots)-1 (columns < width)."""
        if not slots or slots == list(range(len(slots))):
            return
        idx = torch.tensor(slots, device=self.k[0].device if self.k[0] is not None else "cpu")
        for buf in (self.k, self.v):
            for i, b in enumerate(buf):
                if b is not None:
                    b[:len(slots), :, :width] = b[idx, :, :width]


# ----------------------------------------------------------------------------- 4. the engine: a scheduler over one model

_ENGINES = weakref.WeakSet()      # open engines, closed at exit: a scheduler thread killed inside a torch call
                                  # at interpreter shutdown aborts the process ("terminate called ...")


@atexit.register
def _close_engines():
    for e in list(_ENGINES):
        e.close()


class Engine:
    """A model and its tokenizer turning prompts into streamed text. One scheduler thread owns the model and runs
    the requests of every caller together, step by step (continuous batching, see the module docstring)."""

    def __init__(self, model, enc, name="polylm", max_batch_rows=16, max_queue=64):
        if enc.n_vocab != model.cfg.vocab_size:
            raise ValueError(f"tokenizer has {enc.n_vocab} tokens but the model {model.cfg.vocab_size}: "
                             f"the run dir's tokenizer/ does not belong to its checkpoint")
        self.model, self.enc, self.name = model.eval(), enc, name
        self.block, self.vocab = model.cfg.block_size, model.cfg.vocab_size
        self.device = model.wte.weight.device
        self.stop_ids = tuple(sorted(enc.encode_single_token(t) for t in enc.special_tokens_set))
        self.stop_set = frozenset(self.stop_ids)   # generation ends at any special token
        self.configure(max_batch_rows, max_queue)
        self.num_threads = None     # torch threads of the scheduler (None: those of the thread that first submits)
        # what happened: requests submitted, prefill forwards, decode steps, most rows in one step, requests
        # whose rows were dropped (cancelled: their consumer left)
        self.stats = {"requests": 0, "prefills": 0, "steps": 0, "peak_rows": 0, "cancelled": 0}
        self._waiting, self._cv, self._held = [], threading.Condition(), 0
        self._thread, self._closing = None, False
        self._rows, self._logits = [], None
        self._cache = BatchCache(model.cfg.n_layer, self.block)

    @classmethod
    def load(cls, run_dir, device="auto", dtype="auto", name="", **kw):
        """The model and tokenizer of a run dir (train.py / sft.py output)."""
        device, dtype, _ = runtime.choose(device, dtype)                # the one policy train.py uses too
        enc = load_tokenizer(run_dir)                                    # hash-checked against config.json
        model = load_model(run_dir, device=device).to(dtype)
        return cls(model, enc, name or Path(run_dir).resolve().name, **kw)

    def configure(self, max_batch_rows=None, max_queue=None):
        """max_batch_rows: most rows decoded together (1 = one request at a time); max_queue: most requests waiting
        to be admitted (one more gets QueueFull, HTTP 429)."""
        if max_batch_rows is not None:
            if not isinstance(max_batch_rows, int) or max_batch_rows < 1:
                raise ValueError(f"max_batch_rows={max_batch_rows!r}: must be an integer >= 1")
            self.max_batch_rows = max_batch_rows
        if max_queue is not None:
            if not isinstance(max_queue, int) or max_queue < 1:
                raise ValueError(f"max_queue={max_queue!r}: must be an integer >= 1")
            self.max_queue = max_queue

    @contextlib.contextmanager
    def hold(self):
        """While inside, no waiting request is admitted (running rows go on): lets callers (tests, benchmarks) line
        requests up so that they start together."""
        with self._cv:
            self._held += 1
        try:
            yield self
        finally:
            with self._cv:
                self._held -= 1
                self._cv.notify_all()

    def waiting(self):
        """Number of requests not yet admitted."""
        with self._cv:
            return len(self._waiting)

    # -- submitting

    def submit(self, prompts, max_tokens, stop=(), n=1, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
               presence_penalty=0.0, frequency_penalty=0.0, seed=None, logprobs=None, echo=False, stream=True,
               cancel=None, ignore_eos=False):
        """Queue a request: each prompt (a token-id list) n times; returns its Request at once.

        max_tokens is lowered so that the longest prompt + reply fit the context; 0 generates nothing (to score a
        prompt: echo=True, logprobs=k). Stops at the tokenizer's special tokens (unless ignore_eos, vLLM's extension
        for benchmarks that want exactly max_tokens tokens) and at the stop strings (cut out of the text). Raises RequestError for bad arguments and QueueFull when max_queue requests already wait."""
        prompts = [list(p) for p in prompts]
        if not prompts or not all(p and all(isinstance(t, int) and 0 <= t < self.vocab for t in p) for p in prompts):
            raise RequestError(f"every prompt must be a non-empty list of token ids in [0, {self.vocab})", "prompt")
        if not isinstance(n, int) or n < 1:
            raise RequestError(f"n={n!r}: must be an integer >= 1", "n")
        longest = max(len(p) for p in prompts)
        if longest > self.block or (longest == self.block and max_tokens > 0):
            raise RequestError(f"the prompt has {longest} tokens; this model's context is {self.block} tokens",
                               "prompt", "context_length_exceeded")
        if not isinstance(max_tokens, int) or max_tokens < 0:
            raise RequestError(f"max_tokens={max_tokens!r}: must be an integer >= 0", "max_tokens")
        if max_tokens > 0:
            max_tokens = max(1, min(max_tokens, self.block - longest))
        if seed is not None and not (isinstance(seed, int) and SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
            raise RequestError(f"'seed' must be an integer in [-2**63, 2**64 - 1]; got {seed!r}", "seed")
        if logprobs is not None and not (isinstance(logprobs, int) and 0 <= logprobs <= MAX_LOGPROBS):
            raise RequestError(f"'logprobs' must be an integer in [0, {MAX_LOGPROBS}]; got {logprobs!r}", "logprobs")
        gen = torch.Generator(device=self.device).manual_seed(secrets.randbits(62) if seed is None else seed)
        sampling = dict(temperature=float(temperature), top_k=int(top_k or 0), top_p=float(top_p),
                        repetition_penalty=float(repetition_penalty), presence_penalty=float(presence_penalty),
                        frequency_penalty=float(frequency_penalty))
        req = Request(prompts, n, max_tokens, tuple(s for s in stop if s), sampling, gen, logprobs, bool(echo),
                      bool(stream), cancel, bool(ignore_eos))
        with self._cv:
            if self._closing:
                raise RuntimeError("the engine is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting for the model (max_queue="
                                f"{self.max_queue}); retry shortly")
            if self.num_threads is None:
                self.num_threads = torch.get_num_threads()
            self._waiting.append(req)
            self.stats["requests"] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="polylm-scheduler", daemon=True)
                self._thread.start()
                _ENGINES.add(self)
            self._cv.notify_all()
        return req

    def stream(self, prompts, max_tokens, **kw):
        """submit(), then yield its events: ("text", row, piece), ("end", row, "stop" | "length") for every row
        (row = prompt index * n + k), and last ("usage", prompt_tokens, completion_tokens). Closing the generator
        early cancels the request."""
        req = self.submit(prompts, max_tokens, stream=True, **kw)
        try:
            yield from req.iter_events()
        finally:
            req.cancel.set()

    def generate(self, prompts, max_tokens, **kw):
        """submit() and wait: the request's Result (RuntimeError if the engine failed it)."""
        req = self.submit(prompts, max_tokens, stream=False, **kw)
        try:
            req.done.wait()
        finally:
            req.cancel.set()
        if req.error:
            raise RuntimeError(req.error)
        return req.result

    def complete(self, prompts, max_tokens, **kw):
        """Non-streaming stream(): (texts, finish_reasons, (prompt_tokens, completion_tokens))."""
        r = self.generate(prompts, max_tokens, **kw)
        return r.texts, r.reasons, (r.prompt_tokens, r.completion_tokens)

    def close(self):
        """Stop the scheduler; requests still waiting or running fail with 'the engine is closed'."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    # -- the scheduler thread

    def _loop(self):
        while True:
            with self._cv:
                while not self._closing and not self._rows and (self._held or not self._waiting):
                    self._cv.wait()
                if self._closing:
                    self._fail({r.req for r in self._rows} | set(self._waiting), "the engine is closed")
                    self._waiting.clear()
                    return
                new = self._admit()
            if self.num_threads and torch.get_num_threads() != self.num_threads:
                torch.set_num_threads(self.num_threads)
            try:
                with torch.inference_mode():     # no autograd bookkeeping: less overhead per op
                    if new:
                        self._prefill(new)
                    self._step()
                    if self._rows:
                        self._decode()
            except Exception as e:             # a bug or out of memory: fail these requests, keep serving
                traceback.print_exc()
                self._fail({r.req for r in self._rows} | set(new), f"{type(e).__name__}: {e}")
                self._rows, self._logits = [], None
                self._cache = BatchCache(self.model.cfg.n_layer, self.block)

    def _admit(self):
        """Waiting requests that join now (FIFO): as long as the rows fit max_batch_rows; into an empty batch the
        first one always fits. Cancelled waiting requests are dropped. Call with self._cv held."""
        new, rows = [], len(self._rows)
        while self._waiting and not self._held:
            req = self._waiting[0]
            if req.cancelled():
                self._waiting.pop(0)
                self._fail([req], "cancelled")
                continue
            if rows and rows + req.n_rows > self.max_batch_rows:
                break
            self._waiting.pop(0)
            new.append(req)
            rows += req.n_rows
        return new

    def _fail(self, reqs, message):
        for req in reqs:
            if not req.done.is_set():
                req.error = message
                req.events.put(("error", message))
                req.done.set()

    def _prefill(self, reqs):
        """Run the prompts of newly admitted requests (right-padded, one forward) into slots after the running
        rows; their next-token logits join self._logits. Echoed prompts are scored from the same hidden states."""
        rows = [_Row(req, i * req.n + k, p, self.enc) for req in reqs for i, p in enumerate(req.prompts)
                for k in range(req.n)]
        for req in reqs:
            req.rows_left, req.rows = req.n_rows, [r for r in rows if r.req is req]
            req.admitted.set()
        m, k = len(self._rows), len(rows)
        lens = torch.tensor([len(r.tokens) for r in rows])
        T = int(lens.max())
        ids = torch.full((k, T), self.enc.eot_token, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, :len(r.tokens)] = torch.tensor(r.tokens)
        cols = torch.arange(T)
        am = (torch.ones(T, T, dtype=torch.bool).tril()[None] & (cols[None, :] < lens[:, None])[:, None, :])[:, None]
        self._cache.reserve(m + k, T)
        self._cache.prefill(m, k)
        dev = self.device
        h = self.model.hidden(ids.to(dev), cols.expand(k, T).to(dev), am.to(dev), self._cache)
        last = h[torch.arange(k, device=dev), (lens - 1).to(dev)]
        logits = F.linear(last, self.model.wte.weight).float()
        for j, r in enumerate(rows):
            r.length = len(r.tokens)
            if r.logprobs is not None and r.req.echo:
                r.logprobs += self._score(h[j, :r.length - 1], r.tokens, r.req.logprobs)
        self._rows += rows
        self._logits = logits if self._logits is None or not m else torch.cat([self._logits, logits])
        self.stats["prefills"] += 1

    def _score(self, h, tokens, k):
        """[(token, logprob, top-k alternatives)] of a prompt from its hidden states h (len(tokens) - 1, C): the
        first token has no logprob (None)."""
        out = [(tokens[0], None, None)]
        for s in range(0, h.size(0), LOGPROB_CHUNK):
            lp = F.log_softmax(F.linear(h[s:s + LOGPROB_CHUNK], self.model.wte.weight).float(), -1)
            out += self._pick(lp, tokens[s + 1:s + 1 + lp.size(0)], k)
        return out

    def _pick(self, lp, targets, k):
        """Log-probs lp (n, V) -> [(target, its logprob, [(alternative, logprob)] of the k most likely)]."""
        tl = lp.gather(1, torch.tensor(targets, device=lp.device)[:, None])[:, 0].tolist()
        if not k:
            return [(t, l, []) for t, l in zip(targets, tl)]
        top = lp.topk(min(k, lp.size(1)), -1)
        return [(t, l, list(zip(i, v))) for t, l, i, v in zip(targets, tl, top.indices.tolist(), top.values.tolist())]

    def _step(self):
        """One new token for every running row from self._logits; finished and cancelled rows leave."""
        rows, L = self._rows, self._logits
        self.stats["steps"] += 1
        self.stats["peak_rows"] = max(self.stats["peak_rows"], len(rows))
        groups = {}
        for i, r in enumerate(rows):
            groups.setdefault(r.req, []).append(i)
        toks, greedy = [None] * len(rows), None
        for req, idx in groups.items():
            if req.cancelled():
                self.stats["cancelled"] += 1
                continue
            if req.max_tokens == 0:
                continue
            s = req.sampling
            if s["temperature"] <= 0 and s["repetition_penalty"] == 1.0 and not s["presence_penalty"] \
                    and not s["frequency_penalty"]:
                if greedy is None:
                    greedy = L.argmax(-1).tolist()
                picked = [greedy[i] for i in idx]
            else:
                picked = self._sample(req, [rows[i] for i in idx], L[torch.tensor(idx, device=L.device)])
            for i, t in zip(idx, picked):
                toks[i] = t
            if req.logprobs is not None:
                lp = F.log_softmax(L[torch.tensor(idx, device=L.device)], -1)
                for i, entry in zip(idx, self._pick(lp, picked, req.logprobs)):
                    rows[i].logprobs.append(entry)
        for r, t in zip(rows, toks):
            if t is None:                        # cancelled, or nothing to generate
                self._end(r, piece=r.text.finish())
                continue
            r.new.append(t)
            r.tokens.append(t)
            if t in self.stop_set and not r.req.ignore_eos:
                self._end(r, "stop", r.text.finish())
                continue
            piece = r.text.push(t)
            if r.text.stopped or len(r.new) >= r.req.max_tokens:
                self._end(r, piece=piece + r.text.finish())
            elif piece:
                self._emit(r, piece)
        keep = [i for i, r in enumerate(rows) if r.reason is None]
        if len(keep) < len(rows):
            self._rows = [rows[i] for i in keep]
            self._logits = L[torch.tensor(keep, dtype=torch.long, device=L.device)] if keep else None
            self._cache.keep(keep, max((rows[i].length for i in keep), default=0))
        for req in groups:
            if req.rows_left == 0 and not req.done.is_set():
                self._finish(req)

    def _sample(self, req, rows, logits):
        """model.sample_next for one request's rows (its settings, penalties and generator) -> token ids."""
        s = req.sampling
        if s["repetition_penalty"] != 1.0 and rows[0].seen is None:
            for r in rows:
                r.seen = torch.zeros(self.vocab, dtype=torch.bool, device=logits.device)
                r.seen[torch.tensor(r.tokens, device=logits.device)] = True
        if (s["presence_penalty"] or s["frequency_penalty"]) and rows[0].counts is None:
            for r in rows:
                r.counts = torch.zeros(self.vocab, device=logits.device)
        seen = torch.stack([r.seen for r in rows]) if rows[0].seen is not None else None
        counts = torch.stack([r.counts for r in rows]) if rows[0].counts is not None else None
        tok = sample_next(logits, s["temperature"], s["top_k"] or None, s["top_p"], s["repetition_penalty"], seen,
                          s["presence_penalty"], s["frequency_penalty"], counts, req.generator).tolist()
        for r, t in zip(rows, tok):
            if r.seen is not None:
                r.seen[t] = True
            if r.counts is not None:
                r.counts[t] += 1
        return tok

    def _emit(self, row, piece):
        row.out += piece
        if row.req.stream:
            row.req.events.put(("text", row.index, piece))

    def _end(self, row, reason=None, piece=""):
        if piece:
            self._emit(row, piece)
        row.reason = reason or ("stop" if row.text.stopped else "length")
        row.req.rows_left -= 1
        if row.req.stream:
            row.req.events.put(("end", row.index, row.reason))

    def _finish(self, req):
        rows = sorted(req.rows, key=lambda r: r.index)
        req.result = Result([r.out for r in rows], [r.reason for r in rows],
                            sum(len(p) for p in req.prompts), sum(len(r.new) for r in rows),
                            [r.new for r in rows], [r.logprobs for r in rows])
        if req.stream:
            req.events.put(("usage", req.result.prompt_tokens, req.result.completion_tokens))
        req.done.set()

    def _decode(self):
        """One forward for every running row: its last token at its own position, attending to its own columns."""
        rows, dev = self._rows, self.device
        lens = torch.tensor([r.length for r in rows])
        W = int(lens.max()) + 1
        self._cache.reserve(len(rows), W)
        am = (torch.arange(W)[None, :] <= lens[:, None])[:, None, None, :]
        lens = lens.to(dev)
        self._cache.decode(lens, W)
        toks = torch.tensor([[r.tokens[-1]] for r in rows], device=dev)
        h = self.model.hidden(toks, lens[:, None], am.to(dev), self._cache)[:, -1]
        self._logits = F.linear(h, self.model.wte.weight).float()
        for r in rows:
            r.length += 1
