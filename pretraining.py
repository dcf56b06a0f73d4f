"""What a pre-training run is made of (PolyLM paper §4 "Pre-training"): its settings and their checks, its tokenizer,
its token shards and its validation text. train.py runs one run from these; ablate.py resolves, checks and prepares
the settings of many before it runs train.py on each, and scores finished runs on the same validation streams.

    TrainConfig         every setting of `python train.py` (`python train.py --help` lists them with these comments);
                        the loop's own (optimiser, checkpoints, devices, processes) are runtime.RunConfig's
    check_settings      settings that cannot work: one clear error before anything is read or written
    prepare_tokenizer   the run's tokenizer dir: init_from's, tokenizer_dir, the shards' copy, or one bpe.py trains
    prepare_shards      the token shards: --shards as it is, or data_dir tokenized once by the data pipeline
    val_streams         validation token streams per language: val_data's files, or the shards' val split

Invariant: nothing here writes into a run dir; the tokenizer and the shards are built into cache/ (keyed by the
tokenizer's hash and the data dir) at most once, and reused after.
"""
import dataclasses
import itertools
import time
from pathlib import Path

import bpe
import corpus
import pipeline
import shards
from common import LANGS
from curriculum import preset_stages
from model import PRESETS, load_tokenizer, preset
from runtime import RunConfig


# ----------------------------------------------------------------------------- the settings

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
    if cfg.val_data and not any(p.name.split(".")[0] in LANGS for p in Path(cfg.val_data).glob("*.txt")):
        raise FileNotFoundError(f"val_data={cfg.val_data!r} holds no <lang>.txt files of the 18 languages "
                                f"(one document per line, e.g. data/eval/ntrex_val)")
    if not (cfg.shards or cfg.init_from or Path(cfg.data_dir, "mono").is_dir()):
        raise FileNotFoundError(f"data_dir={cfg.data_dir!r} has no mono/ folder; give data_dir (mono/<lang>.txt) or "
                                f"--shards=DIR (a data.py output)")



# ----------------------------------------------------------------------------- the inputs of a run

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


def val_streams(cfg, shard_dir, manifest, enc, max_docs=None):
    """Validation token streams per language: val_data's <lang>.txt files tokenized now (a fixed, multi-parallel
    set makes languages and runs comparable; max_docs: only each file's first documents), or the shards'
    monolingual val split (not the hq.<lang> subsets)."""
    if cfg.val_data:
        files = {p.name.split(".")[0]: p for p in sorted(Path(cfg.val_data).glob("*.txt"))}
        files = {lang: p for lang, p in files.items() if lang in LANGS}
        if not files:
            raise FileNotFoundError(f"val_data={cfg.val_data!r} holds no <lang>.txt files of the 18 languages")
        return {lang: shards.tokenize_documents(enc, itertools.islice(corpus.read_documents(p), max_docs))
                for lang, p in files.items()}
    src = manifest["sources"]
    return {name: v for name, v in shards.load_shards(shard_dir, manifest, "val").items()
            if src[name]["kind"] == "mono" and not src[name].get("hq") and len(v) > 1}
