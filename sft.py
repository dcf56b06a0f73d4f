"""Supervised instruction tuning: a pre-trained PolyLM -> a chat model (PolyLM paper §6, PolyLM-MultiAlpaca).

PolyLM-MultiAlpaca is the pre-trained model fine-tuned on MultiAlpaca (self-instructed tasks in 11 languages) plus
English Alpaca. This file does that for any run dir:

    python sft.py --init_from=out/toy --out_dir=out/toy-sft                     # the bundled toy SFT set
    python sft.py --init_from=out/toy --data=a.jsonl,b.jsonl --max_iters=300    # your own JSONL (Alpaca or messages)
    torchrun --standalone --nproc_per_node=8 sft.py --init_from=... --parallel=fsdp
    python chat.py --ckpt out/toy-sft                                           # talk to it

Top to bottom:
  1. records: JSONL files (or folders of them) of Alpaca/MultiAlpaca records (`instruction`, optional `input`,
     `output`, optional `lang`; self-instruct seed files with `instances` too) or multi-turn conversations in
     OpenAI form (`messages`: system/user/assistant turns). Bad lines, missing fields, empty outputs and over-long
     examples are counted and skipped (the first of each kind is named with its file and line);
  2. each record is rendered with PolyLM's chat template (defined once, in chat_template.py, so training and inference
     cannot drift apart) and tokenized; labels are -100 (ignored) on the template, the prompt and every user/system
     turn, so the loss is only on what the assistant says, each reply with its closing <|endoftext|>;
  3. batches: examples of similar length are batched together and right-padded (length bucketing). Each example
     has a row of its own, so no example can attend to another, and positions start at 0 as at inference. (Packing
     several examples into one row would need a block-diagonal mask and position resets; at these lengths bucketing
     wastes little and keeps the model code unchanged.) Optionally every language is sampled equally often;
  4. the loop is runtime.py's, the same as pre-training's: gradient sync on the last micro-batch only, the loss
     normalised by the global number of response tokens (so 1 process == DDP == FSDP2), the FSDP-correct clip norm,
     non-finite skip and rollback, crash-safe checkpoints and bitwise resume;
  5. held-out instruction loss per language at every eval, and a few greedy generations per language at the end.
The output is a run dir like train.py's, so chat.py, evaluate.py and export.py take it as it is.
"""
import dataclasses
import glob
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import chat_template
import runtime
import shards
from common import LANGS, atomic_write_json
from config import run_cli
from model import latest_checkpoint, load_model, load_tokenizer
from runtime import RunConfig

IGNORE = chat_template.IGNORE


@dataclasses.dataclass
class SFTConfig(RunConfig):
    init_from: str = "out/toy"          # pre-trained run dir (train.py output) to start from
    data: str = "data/instruct/multialpaca/*.jsonl,data/instruct/seed_tasks.jsonl"  # JSONL files/globs/dirs, comma-separated
    out_dir: str = "out/toy-sft"        # the new run dir
    max_len: int = 0                    # longest example in tokens (0 = the model's context); longer ones are skipped
    val_frac: float = 0.05              # share of records held out for the per-language instruction loss
    balance_langs: bool = False         # sample every language equally often (else: in proportion to its records)
    max_iters: int = 200                # optimizer steps
    learning_rate: float = 5e-4         # peak LR (fine-tuning a big model wants ~2e-5)
    min_lr: float = 5e-5                # final LR of the cosine decay
    warmup_iters: int = 10              # linear warmup steps
    weight_decay: float = 0.0           # AdamW weight decay
    eval_interval: int = 100            # held-out loss + checkpoint every N steps
    samples: int = 2                    # greedy generations printed per language at the end


# ----------------------------------------------------------------------------- records -> token examples

def data_files(patterns):
    """The JSONL files of a comma list of files, globs and directories (a directory: its *.jsonl)."""
    files = []
    for p in (x.strip() for x in patterns.split(",")):
        if not p:
            continue
        if Path(p).is_dir():
            found = sorted(str(f) for f in Path(p).glob("*.jsonl"))
            if not found:
                raise FileNotFoundError(f"data={p!r} is a directory without *.jsonl files")
            files += found
        else:
            files += sorted(f for f in glob.glob(p) if Path(f).is_file())
    if not files:
        raise FileNotFoundError(f"data={patterns!r} matches no file; give JSONL paths, globs or directories")
    return files


def _record(r, default_lang):
    """One JSON value -> a record {"messages" | "instruction", "input", "output", "lang"}, or the reason it is not."""
    if not isinstance(r, dict):
        return None, "not an object"
    if "messages" in r:
        msgs = r["messages"]
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            return None, "bad messages"
        if not msgs[-1].get("role") == "assistant" or not str(msgs[-1].get("content") or "").strip():
            return None, "empty output"
        lang = r.get("lang")
        return {"messages": msgs, "lang": lang if isinstance(lang, str) and lang else default_lang}, None
    inst = r.get("instances")
    if inst is not None:                                               # a self-instruct seed task
        if not isinstance(inst, list) or not inst or not isinstance(inst[0], dict):
            return None, "bad instances"
        r = {"instruction": r.get("instruction"), **inst[0], "lang": r.get("lang")}
    if not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
        return None, "no instruction"
    if not isinstance(r.get("output"), str) or not r["output"].strip():
        return None, "empty output"
    if r.get("input") is not None and not isinstance(r.get("input"), str):
        return None, "input not a string"
    lang = r.get("lang")
    if lang is not None and not isinstance(lang, str):
        return None, "lang not a string"
    return {"instruction": r["instruction"].strip(), "input": (r.get("input") or "").strip(),
            "output": r["output"].strip(), "lang": lang or default_lang}, None


def read_sft_records(patterns):
    """(records, counts of skipped records by reason). A record: {instruction, input, output, lang} or
    {messages, lang}. skipped["first"] names the file and line of the first skipped record of each reason."""
    records, skipped, first = [], {}, {}
    for path in data_files(patterns):
        stem = Path(path).stem
        default_lang = stem if stem in LANGS else "en" if "seed_tasks" in stem else "und"
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec, why = _record(json.loads(raw.decode("utf-8")), default_lang)
                except UnicodeDecodeError:
                    rec, why = None, "bad UTF-8"
                except json.JSONDecodeError:
                    rec, why = None, "bad JSON"
                if why:
                    skipped[why] = skipped.get(why, 0) + 1
                    first.setdefault(why, f"{path}:{n}")
                else:
                    records.append(rec)
    if first:
        skipped = {**skipped, "first": first}
    return records, skipped


def encode_record(enc, rec):
    """(ids, labels): everything the assistant says is learned (each reply and its <|endoftext|>), the template
    and the prompt / user / system turns are IGNORE. Text is encoded as plain text, so a record cannot inject
    template tokens (chat_template.encode_example / encode_conversation)."""
    if "messages" in rec:
        return chat_template.encode_conversation(enc, rec["messages"])
    p, r = chat_template.encode_example(enc, rec["instruction"], rec["input"], rec["output"])
    return p + r, [IGNORE] * len(p) + r



def record_key(rec):
    """The text the held-out split is decided on (its first user turn for a conversation)."""
    if "messages" in rec:
        return next((str(m.get("content")) for m in rec["messages"] if m.get("role") == "user"), "")
    return rec["instruction"]


class ExampleSampler:
    """Deterministic, resumable order of examples; batches of similar length, right-padded.

    Each epoch is a seeded permutation (balance_langs: round-robin over per-language permutations, so every
    language comes equally often). Windows of 32 batches are sorted by length and cut into batches; the batches of a
    window are then shuffled. State: (epoch, position) — resuming continues exactly."""

    def __init__(self, examples, langs, batch_size, pad_id, seed, balance=False, rank=0, world_size=1):
        self.examples, self.langs, self.B, self.pad = examples, langs, batch_size, pad_id
        self.seed, self.balance, self.rank, self.world = seed, balance, rank, world_size
        self.epoch, self.pos = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch):
        rng = np.random.default_rng([self.seed, epoch])
        if not self.balance:
            order = rng.permutation(len(self.examples))
        else:
            by_lang = {}
            for i, lang in enumerate(self.langs):
                by_lang.setdefault(lang, []).append(i)
            per = [rng.permutation(v) for _, v in sorted(by_lang.items())]
            n = max(len(p) for p in per)           # small languages repeat within the epoch
            order = np.array([p[k % len(p)] for k in range(n) for p in per])
        window = self.B * self.world * 32
        out = []
        for w in range(0, len(order), window):
            chunk = sorted(order[w:w + window], key=lambda i: len(self.examples[i][0]))
            batches = [chunk[b:b + self.B * self.world] for b in range(0, len(chunk), self.B * self.world)]
            for k in rng.permutation(len(batches)):
                out.extend(batches[k])
        return out

    def next_batch(self):
        """(x, y) int64 arrays of this rank: (batch_size, longest - 1)."""
        picked = []
        for _ in range(self.B * self.world):
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            picked.append(self._order[self.pos])
            self.pos += 1
        mine = picked[self.rank::self.world]
        T = max(len(self.examples[i][0]) for i in mine)
        x = np.full((len(mine), T), self.pad, dtype=np.int64)
        y = np.full((len(mine), T), IGNORE, dtype=np.int64)
        for row, i in enumerate(mine):
            ids, labels = self.examples[i]
            x[row, :len(ids)], y[row, :len(ids)] = ids, labels
        return x[:, :-1], y[:, 1:]               # predict token t+1 from tokens <= t

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s):
        self.epoch, self.pos = s["epoch"], s["pos"]
        self._order = self._epoch_order(self.epoch)


@torch.no_grad()
def instruction_loss(model, examples_by_lang, pad_id, device, autocast, batch_size=16):
    """Mean response-token loss per language on held-out examples."""
    model.eval()
    out = {}
    for lang, exs in sorted(examples_by_lang.items()):
        nats, n = 0.0, 0
        for b in range(0, len(exs), batch_size):
            batch = exs[b:b + batch_size]
            T = max(len(e[0]) for e in batch)
            x = torch.full((len(batch), T), pad_id, dtype=torch.long)
            y = torch.full((len(batch), T), IGNORE, dtype=torch.long)
            for i, (ids, labels) in enumerate(batch):
                x[i, :len(ids)], y[i, :len(ids)] = torch.tensor(ids), torch.tensor(labels)
            x, y = x[:, :-1].to(device), y[:, 1:].to(device)
            with autocast:
                nats += model.token_nll(x, y).float().sum().item()
            n += int((y != IGNORE).sum())
        out[lang] = nats / max(n, 1)
    model.train()
    return out


def greedy_answer(model, enc, instruction, input_text="", max_new_tokens=48, device="cpu"):
    prompt_ids, _ = chat_template.encode_example(enc, instruction, input_text, "")
    ids = torch.tensor([prompt_ids[-(model.cfg.block_size // 2):]], device=device)
    out = model.generate(ids, max_new_tokens, temperature=0, stop_ids=(enc.eot_token,))
    return enc.decode([t for t in out[0, ids.size(1):].tolist() if t != enc.eot_token])


# ----------------------------------------------------------------------------- the run

def sft(cfg: SFTConfig):
    return runtime.run_distributed(finetune, cfg)


def check_settings(cfg):
    if not 0 <= cfg.val_frac < 1:
        raise ValueError(f"val_frac={cfg.val_frac} must be in [0, 1)")
    if cfg.max_len < 0 or cfg.samples < 0:
        raise ValueError("max_len and samples must be >= 0")
    if latest_checkpoint(cfg.init_from) is None:
        raise FileNotFoundError(f"init_from={cfg.init_from!r} holds no checkpoint; pre-train first (python train.py)")


def examples(cfg, enc, max_len, log):
    """Records -> (train examples, their languages, held-out examples by language, records, counts)."""
    records, skipped = read_sft_records(cfg.data)
    train_ex, train_langs, val_ex = [], [], {}
    for rec in records:
        ids, labels = encode_record(enc, rec)
        if len(ids) > max_len:
            skipped["longer than max_len"] = skipped.get("longer than max_len", 0) + 1
            continue
        if shards.is_val(record_key(rec), cfg.val_frac):
            val_ex.setdefault(rec["lang"], []).append((ids, labels))
        else:
            train_ex.append((ids, labels))
            train_langs.append(rec["lang"])
    if not train_ex:
        raise ValueError(f"no usable training records in {cfg.data!r} (skipped: {skipped})")
    counts = {lang: train_langs.count(lang) for lang in sorted(set(train_langs))}
    log(f"sft data: {len(train_ex)} train / {sum(map(len, val_ex.values()))} held-out examples; per language "
        f"{counts}; skipped {skipped or 'none'}")
    return train_ex, train_langs, val_ex, records, counts


def finetune(cfg, d):
    # 1. settings and out_dir first, on every rank: nothing is written before they pass
    s = runtime.start(cfg, d)
    check_settings(cfg)
    init, out = Path(cfg.init_from), Path(cfg.out_dir)
    resume_from = runtime.check_out_dir(cfg, cfg.init_from)
    enc = load_tokenizer(init)
    init_cfg = json.loads((init / "config.json").read_text())
    model = load_model(init, s.device).train()
    max_len = cfg.max_len or model.cfg.block_size
    if max_len > model.cfg.block_size:
        raise ValueError(f"max_len={max_len} exceeds the model's context ({model.cfg.block_size})")
    # 2-3. records -> examples -> a sampler; 4. runtime's model wrapping and optimizer
    train_ex, train_langs, val_ex, records, counts = examples(cfg, enc, max_len, s.log)
    wrapped = runtime.wrap_model(model, cfg, s)
    optimizer = runtime.make_optimizer(model, cfg, s.device)
    pad_id = enc.encode_single_token("<|pad|>")
    sampler = ExampleSampler(train_ex, train_langs, cfg.batch_size, pad_id, cfg.seed, cfg.balance_langs,
                             d.rank, d.world_size)
    step = runtime.resume_or_start(resume_from, wrapped, optimizer, sampler, cfg, s)
    if d.main:
        runtime.install_tokenizer(init / "tokenizer", out)
        atomic_write_json(out / "config.json", {**init_cfg, "sft": dataclasses.asdict(cfg), "init_from": str(init)})
    runtime.barrier(d)
    metrics = runtime.Metrics(out, d, cfg.log, dataclasses.asdict(cfg))

    def run_eval(step):
        with runtime.full_params(wrapped):
            res = instruction_loss(model, val_ex, pad_id, s.device, s.autocast)
        metrics.write({"step": step, "val_loss": res})
        s.log(f"step {step}: held-out instruction loss " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()))
        return res

    model.train()
    bad = runtime.BadSteps(cfg.max_bad_steps)
    bar = tqdm(total=cfg.max_iters, initial=step, desc="sft", unit="step", dynamic_ncols=True, disable=not d.main)
    t_last, losses, ntok, fresh = time.time(), [], 0, step == 0
    end = min(cfg.max_iters, cfg.stop_at_step or cfg.max_iters)
    while step < end:
        micro = [sampler.next_batch() for _ in range(cfg.grad_accum)]
        lr = runtime.lr_at(step, cfg)
        r = runtime.optimizer_step(wrapped, model, optimizer, micro, lr, s, cfg.grad_clip, ignore_index=IGNORE)
        step += 1
        bad.after(r, step, out, wrapped, optimizer, sampler, s, metrics)
        if r.applied:
            losses.append(r.loss)
        ntok += r.tokens
        bar.update(1)
        if (step % cfg.log_interval == 0 or step == end) and losses:
            rec = {"step": step, "loss": float(np.mean(losses)), "lr": lr, "grad_norm": r.grad_norm,
                   "response_tok_per_s": ntok / (time.time() - t_last), "skipped": bad.skipped}
            metrics.write(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.1e}")
            t_last, losses, ntok = time.time(), [], 0
        if step % cfg.eval_interval == 0 or step == end:
            run_eval(step)
            runtime.save_checkpoint(out, step, wrapped, optimizer, sampler, d, cfg)
            if fresh:
                runtime.release_replaced(cfg, d)
                fresh = False
    bar.close()
    metrics.close()
    if step < cfg.max_iters:
        s.log(f"stopped at step {step} of {cfg.max_iters} (stop_at_step); continue with --resume=auto")
        return step

    # 5. a few answers per language, from held-out instructions
    if cfg.samples and d.main and d.world_size == 1:
        held = {lang: [r for r in records if r["lang"] == lang and "instruction" in r
                       and shards.is_val(r["instruction"], cfg.val_frac)] for lang in counts}
        print("\ngreedy answers to held-out instructions:")
        for lang, recs in held.items():
            for r in recs[:cfg.samples]:
                ans = greedy_answer(model, enc, r["instruction"], r["input"], device=s.device).replace("\n", " ⏎ ")
                print(f"  [{lang}] {r['instruction'][:60]!r}\n        -> {ans[:120]}")
    if d.main:
        print(f"\nrun dir: {out}/ — talk to it: python chat.py --ckpt {out}")
    return step


def main(argv=None):
    return run_cli(sft, SFTConfig, argv, prog="sft.py")


if __name__ == "__main__":
    main()
