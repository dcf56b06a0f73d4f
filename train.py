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
The loop's mechanics and settings (optimiser, checkpoints, devices, processes) live in runtime.py, shared with
sft.py; this file holds what is particular to pre-training.

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
import corpus
import pipeline
import runtime
import shards
from common import LANGS, atomic_write_json, pyplot, read_jsonl
from config import run_cli
from curriculum import Mixer, make_schedule, preset_stages, plot_mixture
from model import PRESETS, PolyLM, load_model, load_tokenizer, preset
from runtime import RunConfig
from tasks.bpb import bits_per_byte, format_table, token_byte_lengths


@dataclasses.dataclass
class TrainConfig(RunConfig):
    # the toy's optimisation, chosen by `python ablate.py lr` (docs/EXPERIMENTS.md): 600 steps of 4 x 256 tokens
    # beat 150 steps of 16 x 256 (the same 614K tokens) by ~0.15 bpb in the same ~3 minutes on 2 cores
    max_iters: int = 600                # optimizer steps
    batch_size: int = 4                 # rows per micro-batch per process
    warmup_iters: int = 60              # linear warmup steps
    eval_interval: int = 200            # evaluate + checkpoint every N steps (and at the end)
    # model
    preset: str = "toy"                 # model preset: toy | polylm-1.7b | polylm-13b (model.py)
    n_layer: int = 0                    # override the preset's layers (0 = keep)
    n_head: int = 0                     # override the preset's heads (0 = keep)
    n_embd: int = 0                     # override the preset's width (0 = keep)
    block_size: int = 256               # context length in tokens (PolyLM: 2048)
    dropout: float = 0.0                # dropout (PolyLM: none)
    init_from: str = ""                 # start from this run dir's weights, model shape and tokenizer (e.g. export.py --import)
    # data and tokenizer
    data_dir: str = "data/sample"       # raw text: mono/<lang>.txt and parallel/en-<xx>.tsv (tokenized into cache/)
    shards: str = ""                    # train from this data.py output dir (manifest + shards) instead of data_dir
    tokenizer_dir: str = ""             # a bpe.py tokenizer dir ('' = the shards' own, or one trained on data_dir)
    vocab_size: int = 8192              # vocab when training the tokenizer (PolyLM: 256,000)
    val_frac: float = 0.05              # share of documents held out for validation (by content hash)
    curriculum: str = "polylm"          # language schedule: polylm (two stages) | stage1 | none (natural) | uniform
    stage2_frac: float = 0.2            # share of training tokens in curriculum stage 2 (polylm)
    curriculum_stages: list = dataclasses.field(default_factory=list)  # explicit stage specs (curriculum.py), overrides
    curriculum_ramp: float = 0.0        # share of training tokens over which stages blend linearly (0 = hard switch)
    repeat_warn: int = 8                # warn when a source is repeated this many epochs
    # evaluation and the end of the run (the loop's settings: runtime.RunConfig)
    out_dir: str = "out/toy"            # run dir
    eval_tokens: int = 2048             # validation tokens per language at each eval (0 = all)
    val_data: str = ""                  # validation text: <lang>.txt files, one document per line ('' = the shards' val
                                        # split); data/eval/ntrex_val = the same 1,000 sentences in all 18 languages
    samples: bool = True                # print samples from multilingual prompts at the end
    # one-shot tools (do this and exit)
    plot: str = ""                      # redraw loss.png (and mixture.png) of this run dir
    consolidate_ckpt: str = ""          # write model.pt for this sharded checkpoint dir (ckpt/step_X)


PROMPTS = {"en": "The history of", "zh": "今天的天气", "ar": "في يوم من الأيام", "ru": "Сегодня в Москве",
           "th": "ประเทศไทย", "es": "El gobierno"}


def check_settings(cfg):
    """Pre-training settings that cannot work: one clear error before anything is read or written."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"preset={cfg.preset!r}: choose one of {', '.join(PRESETS)}")
    if not cfg.curriculum_stages:
        preset_stages(cfg.curriculum, 0.5)                             # an unknown name raises here
    if not 0 < cfg.stage2_frac < 1 or not 0 <= cfg.curriculum_ramp <= 1:
        raise ValueError(f"stage2_frac={cfg.stage2_frac} must be in (0, 1), curriculum_ramp in [0, 1]")
    if not 0 <= cfg.val_frac < 1 or not 0 <= cfg.dropout < 1:
        raise ValueError(f"val_frac={cfg.val_frac} and dropout={cfg.dropout} must be in [0, 1)")
    for key in ("n_layer", "n_head", "n_embd", "eval_tokens"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"{key}={getattr(cfg, key)} must be >= 0")
    if cfg.block_size < 2:
        raise ValueError(f"block_size={cfg.block_size} must be >= 2")
    mcfg = preset(cfg.preset, **{k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd") if getattr(cfg, k)})
    if mcfg.n_embd % mcfg.n_head:
        raise ValueError(f"n_embd={mcfg.n_embd} is not a multiple of n_head={mcfg.n_head}")
    if cfg.vocab_size < 300 and not (cfg.tokenizer_dir or cfg.shards or cfg.init_from):
        raise ValueError(f"vocab_size={cfg.vocab_size}: a BPE needs at least 256 byte tokens + 4 specials + merges "
                         f"(>= 300)")
    for key in ("init_from", "shards", "tokenizer_dir", "val_data"):
        if getattr(cfg, key) and not Path(getattr(cfg, key)).is_dir():
            raise FileNotFoundError(f"{key}={getattr(cfg, key)!r} is not a directory")
    if not (cfg.shards or cfg.init_from or Path(cfg.data_dir, "mono").is_dir()):
        raise FileNotFoundError(f"data_dir={cfg.data_dir!r} has no mono/ folder; give data_dir (mono/<lang>.txt) or "
                                f"--shards=DIR (a data.py output)")


# ----------------------------------------------------------------------------- steps of a run

def prepare_tokenizer(cfg, log):
    """The tokenizer dir of a run: init_from's, tokenizer_dir, the shards dir's copy (--shards), or one trained
    (once, cached in cache/) on data_dir/mono/*.txt."""
    if cfg.init_from and not cfg.tokenizer_dir:
        load_tokenizer(cfg.init_from)                                  # checked against init_from's config.json
        return Path(cfg.init_from) / "tokenizer"
    if cfg.shards and not cfg.tokenizer_dir:
        tok_dir = Path(cfg.shards) / "tokenizer"
        if not (tok_dir / "tokenizer.json").exists():
            raise FileNotFoundError(f"{tok_dir} not found: give --tokenizer_dir=DIR, the tokenizer data.py "
                                    f"tokenized {cfg.shards} with")
        return tok_dir
    tok_dir = Path(cfg.tokenizer_dir or f"cache/tokenizer-{cfg.vocab_size}-{Path(cfg.data_dir).name}")
    if not (tok_dir / "tokenizer.json").exists():
        if cfg.tokenizer_dir:
            raise FileNotFoundError(f"tokenizer_dir={cfg.tokenizer_dir!r} has no tokenizer.json; "
                                    f"train one with `python bpe.py --input ... --out DIR` or leave it empty")
        files = sorted(str(p) for p in Path(cfg.data_dir).glob("mono/*.txt"))
        if not files:
            raise FileNotFoundError(f"no {cfg.data_dir}/mono/*.txt to train a tokenizer on; set data_dir")
        log(f"tokenizer: training a {cfg.vocab_size}-token BPE on {len(files)} files of {cfg.data_dir}/mono -> {tok_dir}")
        t = time.time()
        bpe.train_from_files(files, cfg.vocab_size, str(tok_dir))
        log(f"tokenizer: trained in {time.time() - t:.1f}s")
    else:
        log(f"tokenizer: reusing {tok_dir}")
    return tok_dir


def prepare_shards(cfg, enc, tok_hash, tok_dir, log):
    """The shards directory to train from: --shards as it is (no re-tokenizing), or data_dir tokenized once into
    cache/shards-<tokenizer>-<data_dir>/ by the same pipeline data.py runs (so both paths train the same way)."""
    if cfg.shards:
        return Path(cfg.shards)
    shard_dir = Path("cache") / f"shards-{tok_hash[:12]}-{Path(cfg.data_dir).name}"
    pipeline.prepare(cfg.data_dir, enc, tok_hash, shard_dir, cfg.val_frac, log=log, tokenizer_dir=tok_dir, workers=0)
    return shard_dir


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


def val_streams(cfg, shard_dir, manifest, enc):
    """Validation token streams per language: val_data's <lang>.txt files tokenized now (a fixed, multi-parallel
    set makes languages and runs comparable), or the shards' monolingual val split (not the hq.<lang> subsets)."""
    if cfg.val_data:
        files = {p.name.split(".")[0]: p for p in sorted(Path(cfg.val_data).glob("*.txt"))}
        files = {lang: p for lang, p in files.items() if lang in LANGS}
        if not files:
            raise FileNotFoundError(f"val_data={cfg.val_data!r} holds no <lang>.txt files of the 18 languages")
        return {lang: shards.tokenize_documents(enc, corpus.read_documents(p)) for lang, p in files.items()}
    src = manifest["sources"]
    return {name: v for name, v in shards.load_shards(shard_dir, manifest, "val").items()
            if src[name]["kind"] == "mono" and not src[name].get("hq") and len(v) > 1}


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
