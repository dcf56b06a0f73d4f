"""Talk to a trained PolyLM in the terminal (PolyLM paper, arXiv 2307.06018, §6: PolyLM-MultiAlpaca, the chat model).

    python chat.py --ckpt out/toy-sft                          # terminal chat: streaming, /reset, /temp 0.7, /help
    python chat.py --ckpt out/toy-sft --serve [--port=8000]    # the OpenAI-compatible server: hands every other
                                                               # argument to server.py (python server.py --help)

The conversation is prompted with PolyLM's chat template, defined once in chat_template.py (the one sft.py trains with):
<|user|>\\n{message}\\n<|assistant|>\\n{reply}<|endoftext|>, markers as special tokens and every typed text encoded
as plain text, so typing "<|assistant|>" cannot inject a marker. The history is trimmed to the context window (oldest
exchanges first, then the start of an over-long message), and the reply streams as it is generated (engine.Engine).
Settings are checked before the model is loaded: a bad one gives one `error: ...` line and exit code 2.

Imports go one way: chat.py -> server.py -> engine.py -> chat_template.py (and chat.py -> engine.py).
"""
import dataclasses
import sys

import torch

import server
import runtime
from config import ConfigError, run_cli
from chat_template import encode_messages
from engine import SEED_RANGE, Engine


@dataclasses.dataclass
class ChatConfig:
    ckpt: str = "out/toy-sft"           # run dir to talk to (train.py or sft.py output)
    device: str = "auto"                # cpu | cuda | cuda:N (auto = cuda when available)
    dtype: str = "auto"                 # float32 | bfloat16 (auto = bf16 on CUDA and native-bf16 CPUs: runtime.py)
    threads: int = 0                    # CPU threads for torch (0 = torch's default; 1 is often fastest for toys)
    # sampling (each can be changed during the chat: /help)
    temperature: float = 0.7            # 0 = greedy
    top_k: int = 0                      # keep only the k most likely tokens (0 = off)
    top_p: float = 0.9                  # nucleus sampling: keep the most likely tokens up to this mass (1.0 = off)
    repetition_penalty: float = 1.1     # > 1 discourages tokens already in the conversation (1.0 = off)
    max_new_tokens: int = 256           # longest reply in tokens
    seed: int = -1                      # sampling seed for reproducible chats (-1 = random)
    system: str = ""                    # optional system text, put before the first user message
    serve: bool = False                 # run the OpenAI-compatible HTTP server instead (settings: server.py --help)


# what each sampling setting accepts: key -> (check, what it must be); used for the CLI and the /commands
SAMPLING_RULES = {
    "temperature": (lambda v: v >= 0, ">= 0 (0 = greedy)"),
    "top_k": (lambda v: v >= 0, ">= 0 (0 = off)"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"),
    "repetition_penalty": (lambda v: v > 0, "> 0 (1 = off)"),
    "max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "seed": (lambda v: v == -1 or 0 <= v <= SEED_RANGE[1], "-1 (random) or an integer in [0, 2**64 - 1]"),
}


def check_config(cfg: ChatConfig):
    """One clear line (ConfigError) for a bad setting, before any model is loaded."""
    for key, (ok, want) in SAMPLING_RULES.items():
        if not ok(getattr(cfg, key)):
            raise ConfigError(f"{key}={getattr(cfg, key)!r}: must be {want}")
    for key in ("threads",):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key}={getattr(cfg, key)}: must be >= 0")
    runtime.choose(cfg.device, cfg.dtype)


# ----------------------------------------------------------------------------- 1. the terminal chat

HELP = """commands:
  /reset           forget the conversation          /temp 0.7      temperature (0 = greedy)
  /top_p 0.9       nucleus sampling (1 = off)       /top_k 40      top-k sampling (0 = off)
  /rep 1.1         repetition penalty (1 = off)     /max 128       longest reply in tokens
  /seed 42         reproducible sampling (-1 = random)
  /system TEXT     set the system text ("/system" alone clears it)
  /settings        show the settings                /help          this text
  /quit            leave (Ctrl-D works too)"""

COMMANDS = {"/temp": ("temperature", float), "/top_p": ("top_p", float), "/top_k": ("top_k", int),
            "/rep": ("repetition_penalty", float), "/max": ("max_new_tokens", int), "/seed": ("seed", int)}


def fit_history(engine, history, system, max_new_tokens):
    """Token ids of the conversation, trimmed to the context window: the oldest exchanges are dropped (in place,
    from `history`) and a single over-long message is cut from its start, leaving room for the reply.
    Returns (ids, number of messages dropped)."""
    budget = engine.block - max(1, min(max_new_tokens, engine.block // 2))
    def encode():
        msgs = ([{"role": "system", "content": system}] if system else []) + history
        return encode_messages(engine.enc, msgs)
    ids, dropped = encode(), 0
    while len(ids) > budget and len(history) > 1:
        history.pop(0)
        dropped += 1
        while history and history[0]["role"] != "user":
            history.pop(0)
            dropped += 1
        ids = encode()
    for _ in range(8):              # re-tokenizing a cut text can shift a token or two: a few rounds at most
        if len(ids) <= budget or not history:
            break
        text_ids = engine.enc.encode_ordinary(history[-1]["content"])
        keep = max(1, len(text_ids) - (len(ids) - budget))
        history[-1] = {**history[-1], "content": engine.enc.decode(text_ids[-keep:])}
        ids = encode()
    if len(ids) > budget:
        raise ValueError(f"the system text alone needs {len(ids)} tokens; the context leaves {budget}")
    return ids, dropped


def chat_loop(engine, cfg, read=input, write=None):
    """The terminal chat: read a line, stream the reply. read(prompt) -> str (raises EOFError at the end)."""
    write = write or (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    s = {k: getattr(cfg, k) for k in ("temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens",
                                       "seed", "system")}
    history = []
    write(f"PolyLM chat: {engine.name} ({engine.model.num_params():,} parameters, context {engine.block} tokens). "
          f"/help for commands, Ctrl-D to quit.\n")
    while True:
        try:
            line = read("\nyou> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return history
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            arg = arg.strip()
            if cmd in ("/quit", "/exit"):
                return history
            elif cmd == "/reset":
                history.clear()
                write("(conversation cleared)\n")
            elif cmd == "/help":
                write(HELP + "\n")
            elif cmd == "/settings":
                write(" ".join(f"{k}={v!r}" for k, v in s.items()) + "\n")
            elif cmd == "/system":
                s["system"] = arg
                write(f"(system text {'set' if arg else 'cleared'})\n")
            elif cmd in COMMANDS:
                key, typ = COMMANDS[cmd]
                ok, want = SAMPLING_RULES[key]
                try:
                    value = typ(arg)
                    if not ok(value):
                        raise ValueError
                    s[key] = value
                    write(f"({key} = {s[key]})\n")
                except ValueError:
                    write(f"usage: {cmd} <{typ.__name__} {want}>, e.g. {cmd} {typ(getattr(cfg, key))}\n")
            else:
                write(f"unknown command {cmd}; /help lists them\n")
            continue
        history.append({"role": "user", "content": line})
        try:
            ids, dropped = fit_history(engine, history, s["system"], s["max_new_tokens"])
        except ValueError as e:
            history.pop()
            write(f"({e})\n")
            continue
        if dropped:
            write(f"(dropped the {dropped} oldest messages to fit the {engine.block}-token context)\n")
        write("bot> ")
        reply = ""
        try:
            for ev in engine.stream([ids], max(1, s["max_new_tokens"]), temperature=s["temperature"],
                                    top_k=s["top_k"], top_p=s["top_p"], repetition_penalty=s["repetition_penalty"],
                                    seed=None if s["seed"] < 0 else s["seed"]):
                if ev[0] == "text":
                    reply += ev[2]
                    write(ev[2])
                elif ev[0] == "end" and ev[2] == "length":
                    write(" [max tokens]")
        except KeyboardInterrupt:
            write(" [interrupted]")
        write("\n")
        history.append({"role": "assistant", "content": reply})


# ----------------------------------------------------------------------------- CLI

def run(cfg: ChatConfig):
    check_config(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    engine = Engine.load(cfg.ckpt, cfg.device, cfg.dtype)
    try:
        import readline  # noqa: F401 - arrow keys and history for input()
    except ImportError:
        pass
    try:
        return chat_loop(engine, cfg)
    finally:
        engine.close()


TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def split_serve(argv):
    """(serve?, the other arguments): --serve / --serve=True hands the rest to server.py. A server setting
    without --serve is a mistake worth one clear line."""
    serve, rest = False, []
    for a in argv:
        key, eq, value = a.partition("=")
        if key in ("--serve", "-serve"):
            if eq and value.lower() not in TRUE + FALSE:
                raise ConfigError(f"argument {a!r}: --serve is a flag (--serve or --serve=False)")
            serve = not eq or value.lower() in TRUE
        else:
            rest.append(a)
    if not serve:
        chat_keys = {f.name for f in dataclasses.fields(ChatConfig)}
        for a in rest:
            key = a[2:].partition("=")[0].replace("-", "_") if a.startswith("--") else ""
            if key not in chat_keys and key in {f.name for f in dataclasses.fields(server.ServerConfig)}:
                raise ConfigError(f"--{key} is a server setting: add --serve (python chat.py --serve --{key}=...; "
                                  f"python server.py --help lists them)")
    return serve, rest


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        serve, rest = split_serve(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    if serve:
        return server.main(rest)
    return run_cli(run, ChatConfig, rest, prog="chat.py")


if __name__ == "__main__":
    main()
