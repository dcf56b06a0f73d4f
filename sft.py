"""Supervised instruction tuning: a pre-trained PolyLM -> a chat model (PolyLM paper §6, PolyLM-MultiAlpaca).

PolyLM-MultiAlpaca is the pre-trained model fine-tuned on MultiAlpaca (self-instructed tasks in 11 languages) plus
English Alpaca. This file does that for any run dir:

    python sft.py --init_from=out/toy --out_dir=out/toy-sft                     # the bundled toy SFT set
    python sft.py --init_from=out/toy --data=a.jsonl,b.jsonl --max_iters=300    # your own Alpaca-format JSONL
    python chat.py --ckpt out/toy-sft                                           # talk to it

Top to bottom:
  1. records: Alpaca/MultiAlpaca JSONL (`instruction`, optional `input`, `output`, optional `lang`; self-instruct
     seed files with `instances` too). Missing fields, empty outputs and over-long examples are counted and skipped;
  2. each record is rendered with PolyLM's chat template (defined once, in chat.py, so training and inference cannot
     drift apart) and tokenized; labels are -100 (ignored) on the template and the prompt, so the loss is only on the
     response and its closing <|endoftext|>;
  3. batches: examples of similar length are batched together and right-padded (length bucketing). Each example
     has a row of its own, so no example can attend to another, and positions start at 0 as at inference. (Packing
     several examples into one row would need a block-diagonal mask and position resets; at these lengths bucketing
     wastes little and keeps the model code unchanged.) Optionally every language is sampled equally often;
  4. the loop, optimizer, schedule, checkpoints, distributed wrapping and metrics are train.py's, imported not copied;
     the loss goes through the fused cross-entropy of kernels/ with ignore_index=-100;
  5. held-out instruction loss per language at every eval, and a few greedy generations per language at the end.
The output is a run dir like train.py's, so chat.py, evaluate.py and export.py take it as it is.
"""
import dataclasses
import glob
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import bpe
import data
import chat
from config import run_cli
from model import latest_checkpoint, load_model
from train import (load_training_state, lr_at, make_optimizer, run_distributed, save_checkpoint, setup_run, wrap_model,
                   write_metrics)

IGNORE = -100


@dataclasses.dataclass
class SFTConfig:
    init_from: str = "out/toy"          # pre-trained run dir (train.py output) to start from
    data: str = "data/instruct/multialpaca/*.jsonl,data/instruct/seed_tasks.jsonl"  # JSONL files/globs, comma-separated
    out_dir: str = "out/toy-sft"        # the new run dir
    max_len: int = 0                    # longest example in tokens (0 = the model's context); longer ones are skipped
    val_frac: float = 0.05              # share of records held out for the per-language instruction loss
    balance_langs: bool = False         # sample every language equally often (else: in proportion to its records)
    max_iters: int = 200                # optimizer steps
    batch_size: int = 16                # examples per micro-batch
    grad_accum: int = 1                 # micro-batches per step
    learning_rate: float = 5e-4         # peak LR (fine-tuning a big model wants ~2e-5)
    min_lr: float = 5e-5                # final LR of the cosine decay
    warmup_iters: int = 10              # linear warmup steps
    weight_decay: float = 0.0           # AdamW weight decay
    beta1: float = 0.9                  # AdamW beta1
    beta2: float = 0.95                 # AdamW beta2
    grad_clip: float = 1.0              # global grad-norm clip (0 = off)
    eval_interval: int = 100            # held-out loss + checkpoint every N steps
    log_interval: int = 10              # steps between metrics records
    keep_ckpts: int = 2                 # newest checkpoints kept
    consolidate: bool = True            # FSDP: also write a single-file model.pt with each checkpoint
    samples: int = 2                    # greedy generations printed per language at the end
    resume: str = "never"               # never | auto (continue the newest checkpoint in out_dir)
    stop_at_step: int = 0               # end this invocation after this step, checkpointed
    device: str = "auto"                # auto | cpu | cuda
    dtype: str = "auto"                 # auto | float32 | bfloat16
    parallel: str = "ddp"               # with torchrun: ddp | fsdp
    activation_checkpointing: bool = False  # recompute activations in backward
    compile: str = "auto"               # torch.compile each block: auto (on for CUDA, off for CPU) | True | False
    seed: int = 1337                    # shuffling and init seed


# ----------------------------------------------------------------------------- records -> token examples

def read_records(patterns):
    """(records, counts of skipped records by reason). Each record: instruction, input, output, lang."""
    files = [f for p in patterns.split(",") if p.strip() for f in sorted(glob.glob(p.strip()))]
    if not files:
        raise FileNotFoundError(f"data={patterns!r} matches no file; give Alpaca-format JSONL paths or globs")
    records, skipped = [], {}
    for path in files:
        stem = Path(path).stem
        default_lang = stem if stem in data.LANGS else "en" if "seed_tasks" in stem else "und"
        for n, line in enumerate(open(path, encoding="utf-8"), 1):
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                skipped["bad JSON"] = skipped.get("bad JSON", 0) + 1
                continue
            if isinstance(r, dict) and "instances" in r and r.get("instances"):       # a self-instruct seed task
                r = {"instruction": r.get("instruction"), **r["instances"][0]}
            if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
                skipped["no instruction"] = skipped.get("no instruction", 0) + 1
                continue
            if not isinstance(r.get("output"), str) or not r["output"].strip():
                skipped["empty output"] = skipped.get("empty output", 0) + 1
                continue
            records.append({"instruction": r["instruction"].strip(), "input": (r.get("input") or "").strip(),
                            "output": r["output"].strip(), "lang": r.get("lang") or default_lang})
    return records, skipped


def encode_example(enc, rec):
    """(ids, labels): the template and prompt are labelled IGNORE, the response and <|endoftext|> are learned.
    chat.encode_example encodes the record's text as plain text, so a record cannot inject template tokens."""
    p, r = chat.encode_example(enc, rec["instruction"], rec["input"], rec["output"])
    return p + r, [IGNORE] * len(p) + r


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
    prompt_ids, _ = chat.encode_example(enc, instruction, input_text, "")
    ids = torch.tensor([prompt_ids[-(model.cfg.block_size // 2):]], device=device)
    out = model.generate(ids, max_new_tokens, temperature=0, stop_ids=(enc.eot_token,))
    return enc.decode([t for t in out[0, ids.size(1):].tolist() if t != enc.eot_token])


# ----------------------------------------------------------------------------- the run

def sft(cfg: SFTConfig):
    return run_distributed(_sft, cfg)


def _sft(cfg, d):
    init, out = Path(cfg.init_from), Path(cfg.out_dir)
    if latest_checkpoint(init) is None:
        raise FileNotFoundError(f"init_from={cfg.init_from!r} holds no checkpoint; pre-train first (python train.py)")
    log, device, dtype, autocast = setup_run(cfg, d)
    enc = bpe.load(init / "tokenizer")
    init_cfg = json.loads((init / "config.json").read_text())
    model = load_model(init, device).train()
    max_len = cfg.max_len or model.cfg.block_size
    if max_len > model.cfg.block_size:
        raise ValueError(f"max_len={max_len} exceeds the model's context ({model.cfg.block_size})")

    # 1-2. records -> examples, held-out split by instruction text
    records, skipped = read_records(cfg.data)
    train_ex, train_langs, val_ex = [], [], {}
    for rec in records:
        ids, labels = encode_example(enc, rec)
        if len(ids) > max_len:
            skipped["longer than max_len"] = skipped.get("longer than max_len", 0) + 1
            continue
        if data.is_val(rec["instruction"], cfg.val_frac):
            val_ex.setdefault(rec["lang"], []).append((ids, labels))
        else:
            train_ex.append((ids, labels))
            train_langs.append(rec["lang"])
    if not train_ex:
        raise ValueError(f"no usable training records in {cfg.data!r} (skipped: {skipped})")
    counts = {lang: train_langs.count(lang) for lang in sorted(set(train_langs))}
    log(f"sft data: {len(train_ex)} train / {sum(map(len, val_ex.values()))} held-out examples; per language "
        f"{counts}; skipped {skipped or 'none'}")

    # 3-4. train.py's machinery
    wrapped = wrap_model(model, cfg, d, device, dtype)
    optimizer = make_optimizer(model, cfg, device)
    pad_id = enc.encode_single_token("<|pad|>")
    sampler = ExampleSampler(train_ex, train_langs, cfg.batch_size, pad_id, cfg.seed, cfg.balance_langs,
                             d.rank, d.world_size)
    resume_from = latest_checkpoint(out) if cfg.resume == "auto" else None
    if d.main:
        if resume_from is None:
            shutil.rmtree(out / "ckpt", ignore_errors=True)
            (out / "metrics.jsonl").unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(out / "tokenizer", ignore_errors=True)
        shutil.copytree(init / "tokenizer", out / "tokenizer")
        (out / "config.json").write_text(json.dumps({**init_cfg, "sft": dataclasses.asdict(cfg),
                                                     "init_from": str(init)}, indent=1))
    step = load_training_state(resume_from, wrapped, optimizer, sampler, d) if resume_from else 0
    metrics = out / "metrics.jsonl"

    def run_eval(step):
        res = instruction_loss(model, val_ex, pad_id, device, autocast)
        if d.main:
            write_metrics(metrics, {"step": step, "val_loss": res})
        log(f"step {step}: held-out instruction loss " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()))
        return res

    model.train()
    bar = tqdm(total=cfg.max_iters, initial=step, desc="sft", unit="step", dynamic_ncols=True, disable=not d.main)
    t_last, losses, ntok = time.time(), [], 0
    end = min(cfg.max_iters, cfg.stop_at_step or cfg.max_iters)
    while step < end:
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        for _ in range(cfg.grad_accum):
            x, y = sampler.next_batch()
            ntok += int((y != IGNORE).sum())
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            with autocast:
                loss = wrapped(x, y, ignore_index=IGNORE) / cfg.grad_accum
            loss.backward()
            losses.append(loss.item() * cfg.grad_accum)
        norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")))
        if math.isfinite(norm):
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if step % cfg.log_interval == 0 or step == end:
            rec = {"step": step, "loss": float(np.mean(losses)), "lr": lr, "grad_norm": norm,
                   "response_tok_per_s": ntok / (time.time() - t_last)}
            if d.main:
                write_metrics(metrics, rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.1e}")
            t_last, losses, ntok = time.time(), [], 0
        if step % cfg.eval_interval == 0 or step == end:
            run_eval(step)
            save_checkpoint(out, step, wrapped, optimizer, sampler, d, cfg)
    bar.close()
    if step < cfg.max_iters:
        log(f"stopped at step {step} of {cfg.max_iters} (stop_at_step); continue with --resume=auto")
        return step

    # 5. a few answers per language, from held-out instructions
    if cfg.samples and d.main and d.world_size == 1:
        held = {lang: [r for r in records if r["lang"] == lang and data.is_val(r["instruction"], cfg.val_frac)]
                for lang in counts}
        print("\ngreedy answers to held-out instructions:")
        for lang, recs in held.items():
            for r in recs[:cfg.samples]:
                ans = greedy_answer(model, enc, r["instruction"], r["input"], device=device).replace("\n", " ⏎ ")
                print(f"  [{lang}] {r['instruction'][:60]!r}\n        -> {ans[:120]}")
    if d.main:
        print(f"\nrun dir: {out}/ — talk to it: python chat.py --ckpt {out}")
    return step


def main(argv=None):
    return run_cli(sft, SFTConfig, argv, prog="sft.py")


if __name__ == "__main__":
    main()
