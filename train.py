"""Pre-train PolyLM (PolyLM paper §4 "Pre-training"), from a laptop toy run to the 1.7B/13B recipes on 32 A100s.

    python train.py                                  # the toy run: tokenizer -> shards -> train -> samples -> bpb table
    python train.py config/polylm_1_7b.py            # a preset recipe
    python train.py --max_iters=50 --curriculum=none # any setting, nanoGPT style (python train.py --help lists them)
    python train.py --shards=shards/                 # train on a data.py output directory (your own corpus)
    torchrun --standalone --nproc_per_node=8 train.py config/polylm_13b.py --shards=... --parallel=fsdp
    python plan.py config/polylm_13b.py              # memory per GPU and days to 640B tokens, without allocating

What one run does, top to bottom (`pretrain`):
  1. settings: every setting and the out_dir are checked before anything is written; a fresh run refuses an out_dir
     that holds a run (--resume=auto continues it, --overwrite=True replaces it once the new run has checkpointed);
  2. tokenizer: the shards' own (--shards), tokenizer_dir, init_from's, or a byte-level BPE (digits split one by
     one) that bpe.py trains on data_dir/mono/*.txt, cached in cache/;
  3. data: --shards as it is, or data_dir tokenized once by the data pipeline into cache/shards-<tokenizer>-<data>/;
  4. the model (a preset, or init_from's weights), wrapped for DDP/FSDP2 by runtime.py, and AdamW;
  5. the two-stage language curriculum (curriculum.py) fills every batch, each rank reading its own rows;
  6. the loop: runtime.optimizer_step (AdamW(0.9, 0.95), wd 1e-4, clip 1.0, warmup then cosine to 10% of the peak
     LR — PolyLM: 6e-5 -> 6e-6 for 13B —, bf16 where the hardware has it; a non-finite step is skipped, max_bad_steps
     in a row roll back to the last checkpoint); every eval_interval the per-language validation bits per byte and
     an atomic checkpoint;
  7. at the end: samples from prompts in several scripts, the per-language table and a loss-curve PNG.
The run's settings (TrainConfig), its checks, tokenizer, shards and validation text live in pretraining.py (shared
with ablate.py, which runs this script once per experiment run); the loop's mechanics and settings (optimiser,
checkpoints, devices, processes) in runtime.py, shared with sft.py; this file is the run itself.

The run dir (out_dir) is self-contained: config.json, tokenizer/, ckpt/step_XXXXXX/ (+ ckpt/latest), metrics.jsonl,
loss.png. `python train.py --plot=RUN_DIR` redraws the plot; `--consolidate_ckpt=RUN_DIR/ckpt/step_X` turns a sharded
(FSDP) checkpoint into the single model.pt that chat.py, evaluate.py and export.py read.
"""
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import bpe
import runtime
import shards
from common import atomic_write_json, pyplot, read_jsonl
from config import run_cli
from curriculum import Mixer, make_schedule, plot_mixture
from model import PolyLM, load_model, preset
from pretraining import TrainConfig, check_settings, prepare_shards, prepare_tokenizer, val_streams
from tasks.bpb import bits_per_byte, format_table, token_byte_lengths


PROMPTS = {"en": "The history of", "zh": "今天的天气", "ar": "في يوم من الأيام", "ru": "Сегодня в Москве",
           "th": "ประเทศไทย", "es": "El gobierno"}


# ----------------------------------------------------------------------------- steps of a run

def tokenizer_and_data(cfg, s):
    """(tokenizer dir, encoding, hash, shards dir, manifest); rank 0 builds what is not cached, the others wait."""
    tok_dir = prepare_tokenizer(cfg, s.log) if s.d.main else None
    runtime.barrier(s.d)
    tok_dir = tok_dir or prepare_tokenizer(cfg, lambda m: None)
    enc, tok_hash = bpe.load(tok_dir), bpe.tokenizer_hash(tok_dir)
    shard_dir = prepare_shards(cfg, enc, tok_hash, tok_dir, s.log) if s.d.main else None
    runtime.barrier(s.d)
    shard_dir = shard_dir or prepare_shards(cfg, enc, tok_hash, tok_dir, lambda m: None)
    manifest = shards.load_manifest(shard_dir, tok_hash)
    s.log(f"data: {shard_dir} ({manifest['total_tokens']:,} tokens, {len(manifest['sources'])} sources)")
    return tok_dir, enc, tok_hash, shard_dir, manifest


def build_model(cfg, enc, s):
    """The model on its device: a preset (with overrides), or init_from's weights and shape."""
    overrides = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd") if getattr(cfg, k)}
    mcfg = preset(cfg.preset, **overrides, block_size=cfg.block_size, vocab_size=enc.n_vocab, dropout=cfg.dropout)
    init = None
    if cfg.init_from:                                 # continue from another run's weights: its shape wins
        init = load_model(cfg.init_from)
        if init.cfg.block_size < cfg.block_size:
            raise ValueError(f"block_size={cfg.block_size} exceeds init_from's context ({init.cfg.block_size})")
        mcfg = dataclasses.replace(init.cfg, dropout=cfg.dropout)
        s.log(f"init_from: weights of {cfg.init_from} ({mcfg.n_layer}L/{mcfg.n_embd}d), fresh optimizer and data order")
    model = PolyLM(mcfg).to(s.device)
    if init is not None:
        model.load_state_dict(init.state_dict())
    return model


def build_mixer(cfg, s, manifest, shard_dir):
    stages = make_schedule(cfg.curriculum, manifest, cfg.stage2_frac, cfg.curriculum_stages or None)
    total_rows = cfg.max_iters * cfg.batch_size * cfg.grad_accum * s.d.world_size
    mixer = Mixer(shards.load_shards(shard_dir, manifest, "train"), stages, total_rows, cfg.block_size,
                  rank=s.d.rank, world_size=s.d.world_size, ramp_rows=round(cfg.curriculum_ramp * total_rows),
                  repeat_warn=cfg.repeat_warn, log=s.log, seed=cfg.seed)
    return stages, mixer


def write_run_dir(cfg, s, tok_dir, tok_hash, model, shard_dir, mixer):
    """config.json and the tokenizer copy (rank 0), once the run has its model and (if resuming) its state."""
    out = Path(cfg.out_dir)
    if s.d.main:
        runtime.install_tokenizer(tok_dir, out)
        atomic_write_json(out / "config.json", {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model.cfg),
                                                "tokenizer_hash": tok_hash, "shards": str(shard_dir),
                                                "data_start": mixer.start, "world_size": s.d.world_size})
    runtime.barrier(s.d)


# ----------------------------------------------------------------------------- the run

def pretrain(cfg, d):
    # 1. settings and out_dir: checked first, on every rank; nothing is written yet
    s = runtime.start(cfg, d)
    resume_from = runtime.check_out_dir(cfg, cfg.init_from)
    check_settings(cfg)
    # 2-3. tokenizer and token shards (cached outside out_dir)
    tok_dir, enc, tok_hash, shard_dir, manifest = tokenizer_and_data(cfg, s)
    # 4-5. model, optimizer, curriculum
    model = build_model(cfg, enc, s)
    wrapped = runtime.wrap_model(model, cfg, s)
    optimizer = runtime.make_optimizer(model, cfg, s.device)
    stages, mixer = build_mixer(cfg, s, manifest, shard_dir)
    streams = val_streams(cfg, shard_dir, manifest, enc)
    # only now, with everything checked, is out_dir touched
    step = runtime.resume_or_start(resume_from, wrapped, optimizer, mixer, cfg, s)
    write_run_dir(cfg, s, tok_dir, tok_hash, model, shard_dir, mixer)
    metrics = runtime.Metrics(cfg.out_dir, d, cfg.log, dataclasses.asdict(cfg))
    res = train_loop(cfg, s, model, wrapped, optimizer, mixer, stages, enc, streams, step, metrics)
    metrics.close()
    return res


def train_loop(cfg, s, model, wrapped, optimizer, mixer, stages, enc, streams, step, metrics):
    """6-7: the steps, evaluation and checkpoints, then what a person wants to see at the end."""
    out, d = Path(cfg.out_dir), s.d
    byte_lens = token_byte_lengths(enc)
    tokens_per_step = cfg.batch_size * cfg.grad_accum * d.world_size * cfg.block_size
    flops_per_token = model.flops_per_token(cfg.block_size)
    peak = runtime.peak_flops(s.device, s.dtype)
    peak = peak * d.world_size if peak else None
    mcfg = model.cfg
    s.log(f"model: {cfg.preset} {mcfg.n_layer}L/{mcfg.n_embd}d/{mcfg.n_head}h, {model.num_params():,} parameters, "
          f"vocab {mcfg.vocab_size:,}; {tokens_per_step:,} tokens/step, {cfg.max_iters} steps"
          + (f", {cfg.parallel} over {d.world_size} processes" if d.world_size > 1 else ""))
    s.log("curriculum: " + " then ".join(f"{st.name} for {st.frac:.0%} of tokens" for st in stages))

    def run_eval(step):
        with runtime.full_params(wrapped):
            res = bits_per_byte(model, streams, byte_lens, cfg.block_size, cfg.batch_size, s.device, s.autocast,
                                max_tokens=cfg.eval_tokens or None)
        metrics.write({"step": step, "val_loss": {k: v["val_loss"] for k, v in res.items()},
                       "val_bpb": {k: v["val_bpb"] for k, v in res.items()}})
        s.log(f"step {step}: val bpb mean {np.mean([v['val_bpb'] for v in res.values()]):.3f} over {len(res)} "
              f"languages")
        return res

    model.train()
    stage = stages[mixer.stage_index()].name
    s.log(f"curriculum: {stage}")
    bad = runtime.BadSteps(cfg.max_bad_steps)
    t_last, mix, losses, res, fresh = time.time(), {}, [], None, step == 0
    target_last = dict(mixer.target)
    end = min(cfg.max_iters, cfg.stop_at_step or cfg.max_iters)
    bar = tqdm(total=cfg.max_iters, initial=step, desc="train", unit="step", dynamic_ncols=True, disable=not d.main)
    while step < end:
        micro = []
        for _ in range(cfg.grad_accum):
            x, y, names = mixer.next_batch(cfg.batch_size)
            micro.append((x, y))
            for n in names:
                mix[n] = mix.get(n, 0) + 1
        lr = runtime.lr_at(step, cfg)
        r = runtime.optimizer_step(wrapped, model, optimizer, micro, lr, s, cfg.grad_clip)
        step += 1
        bad.after(r, step, out, wrapped, optimizer, mixer, s, metrics)
        if r.applied:
            losses.append(r.loss)
        bar.update(1)
        new_stage = stages[mixer.stage_index()].name
        if new_stage != stage:
            stage = new_stage
            s.log(f"step {step}: curriculum switches to {stage}")
            metrics.write({"step": step, "event": "stage", "stage": stage})
        if (step % cfg.log_interval == 0 or step == end) and losses:
            dt = time.time() - t_last
            tps = len(losses) * tokens_per_step / dt
            total = sum(mix.values())                                                    # this rank's rows
            global_rows = sum(mixer.target.values()) - sum(target_last.values())      # all ranks' rows
            rec = {"step": step, "loss": float(np.mean(losses)), "lr": lr, "grad_norm": r.grad_norm,
                   "tok_per_s": tps, "mfu": tps * flops_per_token / peak if peak else None,
                   "stage": stages[mixer.stage_index(mixer.rows_done - 1)].name, "skipped": bad.skipped,
                   "mix": {k: v / total for k, v in sorted(mix.items())},
                   "target": {k: (v - target_last[k]) / global_rows for k, v in sorted(mixer.target.items())},
                   "epochs": {k: v for k, v in mixer.epoch.items() if v}}
            metrics.write(rec)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.1e}", tok_s=f"{tps:,.0f}")
            t_last, mix, losses, target_last = time.time(), {}, [], dict(mixer.target)
        if step % cfg.eval_interval == 0 or step == end:
            res = run_eval(step)
            runtime.save_checkpoint(out, step, wrapped, optimizer, mixer, d, cfg)
            if fresh:
                runtime.release_replaced(cfg, d)
                fresh = False
            t_last = time.time()
    bar.close()
    if step < cfg.max_iters:
        s.log(f"stopped at step {step} of {cfg.max_iters} (stop_at_step); continue with --resume=auto")
        return res
    if res is None:            # resumed a finished run: nothing was trained, evaluate once for the table
        res = run_eval(step)
    if cfg.samples:
        s.log("\nsamples (temperature 0.8, top-k 50):")
        g = torch.Generator(device=s.device).manual_seed(cfg.seed)
        for lang, prompt in PROMPTS.items():
            ids = torch.tensor([enc.encode_ordinary(prompt)], device=s.device)
            with s.autocast, runtime.full_params(wrapped):
                outp = model.generate(ids, 40, temperature=0.8, top_k=50, stop_ids=(enc.eot_token,), generator=g)
            text = enc.decode([t for t in outp[0].tolist() if t != enc.eot_token]).replace("\n", " ⏎ ")
            s.log(f"  [{lang}] {text}")
    if d.main:
        print(f"\nper-language validation after {step} steps ({cfg.eval_tokens or 'all'} tokens per language):")
        print(format_table(res))
        plot_run(out)
        print(f"\nrun dir: {out}/ (config.json, tokenizer/, ckpt/, metrics.jsonl, loss.png)")
    return res


def plot_run(out_dir):
    """loss.png: training loss and per-language validation bpb against steps."""
    plt = pyplot()
    recs = read_jsonl(Path(out_dir) / "metrics.jsonl", "metrics.jsonl of a run dir written by train.py")
    train_recs = [r for r in recs if r.get("loss") is not None]
    evals = [r for r in recs if "val_bpb" in r]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.5))
    a1.plot([r["step"] for r in train_recs], [r["loss"] for r in train_recs], label="train loss")
    for r in recs:
        if r.get("event") in ("stage", "rollback"):
            a1.axvline(r["step"], color="gray" if r["event"] == "stage" else "red", ls="--",
                       label=f"→ {r['stage']}" if r["event"] == "stage" else "rollback")
    a1.set(xlabel="step", ylabel="cross-entropy (nats/token)", title="training loss")
    a1.legend()
    if evals:
        steps = [r["step"] for r in evals]
        colors = plt.get_cmap("tab20").colors
        for i, lang in enumerate(evals[-1]["val_bpb"]):
            a2.plot(steps, [r["val_bpb"].get(lang, float("nan")) for r in evals], marker=".", label=lang, lw=1,
                    color=colors[i % 20], ls="-" if i < 10 else "--")
        a2.set(xlabel="step", ylabel="bits per byte", title="validation bpb per language")
        a2.legend(ncol=3, fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "loss.png", dpi=110)
    plt.close(fig)


def train(cfg: TrainConfig):
    if cfg.plot:
        plot_run(cfg.plot)
        plot_mixture(cfg.plot)
        return print(f"wrote {cfg.plot}/loss.png and {cfg.plot}/mixture.png")
    if cfg.consolidate_ckpt:
        return print(f"wrote {runtime.consolidate_checkpoint(cfg.consolidate_ckpt)}")
    return runtime.run_distributed(pretrain, cfg)


def main(argv=None):
    return run_cli(train, TrainConfig, argv, prog="train.py")


if __name__ == "__main__":
    main()
