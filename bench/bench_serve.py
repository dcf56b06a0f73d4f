"""Aggregate tokens/s of the OpenAI-compatible server under concurrent clients: batched serving vs one request at a
time (PolyLM paper §6, the chat model served to many clients, e.g. selfinstruct.py's parallel teacher calls).

    python bench/bench_serve.py --ckpt /tmp/toyrun              # a run dir (train.py / sft.py output)
    python bench/bench_serve.py                                 # no run dir: a random toy-preset model
    python bench/bench_serve.py --clients=1,4,8,16 --new_tokens=64 --rounds=3 --server_threads=1

Two server.py processes serve the same model: `batched` (--max_batch_rows=batch_rows, continuous batching) and
`one at a time` (--max_batch_rows=1: each request alone, what the server did before batching). For every number of
clients C, C threads each send `requests` greedy /v1/completions of exactly new_tokens tokens (ignore_eos: a toy
model would often stop after a token or two; each client its own prompt)
and wait for the answers; aggregate tokens/s = completion tokens of all answers / wall time of the round. Rounds are
interleaved (C=1 batched, C=1 one-at-a-time, C=4 batched, ...) so that the noise of a shared machine hits both alike;
the table shows the median of `rounds` rounds. The servers run in their own processes, so the client threads never
compete with the scheduler for the GIL. Greedy answers must be the same from both servers: the script checks it.
The model without a run dir: the toy preset (4 layers, d=256, 256-token context), random weights, and a synthetic
8,192-token vocabulary (the 256 bytes, 7,932 byte pairs and the 4 specials), written to a temporary run dir.
"""
import dataclasses
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch                                                                              # noqa: E402

import bpe                                                                                # noqa: E402
from config import ConfigError, cpu_name, run_cli                                        # noqa: E402
from model import PolyLM, latest_checkpoint, preset                                      # noqa: E402


@dataclasses.dataclass
class BenchServeConfig:
    ckpt: str = ""                      # run dir to serve ('' = a random toy-preset model in a temporary run dir)
    clients: str = "1,4,8,16"           # numbers of concurrent clients to measure, comma-separated
    new_tokens: int = 64                # max_tokens of every request (greedy)
    requests: int = 2                   # requests each client sends, one after the other, per round
    rounds: int = 3                     # interleaved rounds per setting (the median is reported)
    batch_rows: int = 16                # --max_batch_rows of the batched server
    server_threads: int = 1             # --threads of each server process (0 = torch's default)
    device: str = "cpu"                 # --device of the servers


PROMPTS = ["The history of the city", "Once upon a time", "In a small village", "The weather today",
           "Scientists have found", "My favourite food is", "The train left the", "A good book should",
           "Il était une fois", "Había una vez", "Es war einmal", "从前有一座山", "昔々あるところに", "กาลครั้งหนึ่ง",
           "Ngày xửa ngày xưa", "Bir zamanlar"]


def toy_run_dir(path):
    """A run dir with the toy preset (random weights) and a synthetic 8,192-token byte-pair vocabulary."""
    cfg = preset("toy")
    n_pairs = cfg.vocab_size - 256 - len(bpe.SPECIAL_TOKENS)
    ranks = {bytes([i]): i for i in range(256)}
    common = b" etaoinsrhldcumfpgwybvkxjqz"
    pairs = [bytes([a, b]) for a in common for b in common] + [bytes([a, b]) for a in range(256) for b in range(256)]
    for p in pairs:
        if len(ranks) == 256 + n_pairs:
            break
        ranks.setdefault(p, len(ranks))
    bpe.save(Path(path) / "tokenizer", ranks)
    torch.manual_seed(0)
    step = Path(path) / "ckpt" / "step_000001"
    step.mkdir(parents=True)
    torch.save(PolyLM(cfg).state_dict(), step / "model.pt")
    (step / "state.json").write_text(json.dumps({"step": 1}))          # a complete checkpoint (model.py checks)
    (Path(path) / "ckpt" / "latest").write_text("step_000001")
    (Path(path) / "config.json").write_text(json.dumps({"model": dataclasses.asdict(cfg)}))
    return path


def start_server(ckpt, rows, cfg, log):
    """A server.py process on a free port: (process, port)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), f"--ckpt={ckpt}", "--port=0", f"--max_batch_rows={rows}",
         f"--threads={cfg.server_threads}", f"--device={cfg.device}", "--verbose=False",
         f"--max_tokens_cap={cfg.new_tokens}", "--max_queue=256"],
        stderr=open(log, "w"), cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline:
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", Path(log).read_text())
        if m:
            return proc, int(m.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"server.py exited: {Path(log).read_text()[-500:]}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server.py did not start within 120 s")


def complete(port, prompt, n_tokens):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", body=json.dumps({"prompt": prompt, "max_tokens": n_tokens,
                                                          "temperature": 0, "ignore_eos": True}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    body = json.loads(r.read())
    c.close()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {body}")
    return body["choices"][0]["text"], body["usage"]["completion_tokens"]


def measure(port, n_clients, cfg):
    """(aggregate tokens/s, {prompt: text}) of n_clients threads each sending cfg.requests requests."""
    tokens, texts, errors = [0] * n_clients, {}, []

    def client(i):
        prompt = PROMPTS[i % len(PROMPTS)] + f" ({i})"
        try:
            for _ in range(cfg.requests):
                text, n = complete(port, prompt, cfg.new_tokens)
                tokens[i] += n
                texts[prompt] = text
        except Exception as e:                     # reported after the round
            errors.append(e)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed, e.g. {errors[0]}")
    return sum(tokens) / wall, texts, sum(tokens) / (n_clients * cfg.requests)


def run(cfg: BenchServeConfig):
    try:
        clients = [int(c) for c in re.split(r"[,\s()\[\]]+", cfg.clients) if c]   # "1,4" may arrive as "(1, 4)"
    except ValueError:
        raise ConfigError(f"clients={cfg.clients!r}: write numbers separated by commas, e.g. 1,4,8,16") from None
    if min(clients) < 1 or min(cfg.new_tokens, cfg.requests, cfg.rounds, cfg.batch_rows) < 1:
        raise ConfigError("clients, new_tokens, requests, rounds and batch_rows must all be >= 1")
    tmp = tempfile.TemporaryDirectory()
    if cfg.ckpt:
        if latest_checkpoint(cfg.ckpt) is None:
            raise FileNotFoundError(f"{cfg.ckpt}: no checkpoint (train.py writes one), or pass no --ckpt")
        ckpt, what = cfg.ckpt, f"run dir {cfg.ckpt}"
    else:
        ckpt = toy_run_dir(Path(tmp.name) / "toy")
        what = "toy preset, random weights, synthetic 8,192-token vocabulary (no --ckpt)"
    servers = {}
    try:
        for name, rows in (("batched", cfg.batch_rows), ("one at a time", 1)):
            servers[name] = start_server(ckpt, rows, cfg, Path(tmp.name) / f"{rows}.log")
        for _, port in servers.values():                      # warm-up (first-call allocations)
            complete(port, PROMPTS[0], 8)
        rates = {(name, c): [] for name in servers for c in clients}
        outputs, lengths = {}, {}
        for r in range(cfg.rounds):
            for c in clients:
                for name, (_, port) in servers.items():
                    rate, texts, mean_len = measure(port, c, cfg)
                    rates[name, c].append(rate)
                    lengths[c] = mean_len
                    outputs.setdefault(c, {}).setdefault(name, texts)
            print(f"round {r + 1}/{cfg.rounds} done", file=sys.stderr)
    except Exception:
        for log in Path(tmp.name).glob("*.log"):
            print(f"--- {log.name}:\n{log.read_text()[-2000:]}", file=sys.stderr)
        raise
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
        tmp.cleanup()
    same = all(o["batched"] == o["one at a time"] for o in outputs.values())
    print(f"model: {what}")
    print(f"device: {cfg.device} ({cpu_name() if cfg.device == 'cpu' else cfg.device}), torch {torch.__version__}, "
          f"{cfg.server_threads or 'default'} thread(s) per server process")
    print(f"greedy /v1/completions, max_tokens {cfg.new_tokens}, {cfg.requests} requests per client, batched = "
          f"--max_batch_rows={cfg.batch_rows}; median of {cfg.rounds} interleaved rounds")
    print("| clients | one at a time (tokens/s) | batched (tokens/s) | speed-up | tokens per answer |\n"
          "|---:|---:|---:|---:|---:|")
    for c in clients:
        one, bat = statistics.median(rates["one at a time", c]), statistics.median(rates["batched", c])
        print(f"| {c} | {one:,.0f} | {bat:,.0f} | {bat / one:.2f}x | {lengths[c]:.1f} |")
    print(f"identical greedy answers from both servers: {same}")
    return rates


def main(argv=None):
    return run_cli(run, BenchServeConfig, argv, prog="bench/bench_serve.py")


if __name__ == "__main__":
    main()
