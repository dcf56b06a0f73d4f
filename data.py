"""PolyLM's data pipeline on the command line: raw multilingual text -> filtered, de-duplicated, tokenized shards.

PolyLM paper §3 ("Pre-training data"): the 640B-token corpus (web, books, code, parallel text) goes through
language identification, rule-based filtering, a model-based quality filter and MinHash-LSH de-duplication (about
28% of the text is removed), and is then tokenized with the 256K BPE tokenizer. This is the entry point; the code
reads top to bottom in this order:

    corpus.py    reading the inputs: .txt .jsonl .json .tsv .parquet (+ .gz .xz .zst), text/label fields, the
                 language a path declares (FineWeb-2 deu_Latn/, mC4 c4-ja.*, CulturaX, OSCAR, MADLAD, <lang>.txt)
    lid.py       language identification for the 18 languages, with "other" for everything else
    filters.py   rule filters (Gopher/C4), the quality model (CCNet-style), MinHash-LSH de-duplication
    workunits.py units of work (a file, a byte range, row groups) and what a worker does with one, crash-safely
    pipeline.py  the phases (units -> dedup -> tokenize -> finish) on one machine or N, resuming, DataConfig
    shards.py    the output: token shards with CRC-checked blocks, manifest.json, the train/val split

One machine (all phases, one worker process per core):
    python data.py --input web/,books.jsonl.zst --tokenizer TOK_DIR --out shards/
    python data.py --input fineweb2/data/deu_Latn,culturax/th --stages=lid,rules,dedup,tokenize ...
N machines (SLURM job arrays; scripts/data_pipeline.sbatch chains the phases with dependencies):
    python data.py ... --phase=units    --nodes=N --node_rank=i     # defaults: SLURM_ARRAY_TASK_COUNT / _ID
    python data.py ... --phase=dedup    --nodes=N --node_rank=i     # one task per LSH band
    python data.py ... --phase=tokenize --nodes=N --node_rank=i
    python data.py ... --phase=finish                              # once: joins parts, writes the manifest
Then train on it:  python train.py --shards=shards/   (the tokenizer is copied into shards/tokenizer/)
Also:
    python data.py --lid FILE          # one language code (or "other") per input line
    python data.py --verify DIR        # check every block of every shard of DIR against its CRC
    python data.py --help              # every setting with its default

The output is the same bytes whatever the number of machines and workers, and a killed run resumes where it
stopped (see pipeline.py). Each stage's kept/removed counts per language are printed as a table at the end.
"""
import sys

import corpus
import lid
import pipeline
import workunits
import shards
from config import run_cli
from pipeline import DataConfig


def print_lid(path):
    with corpus.open_text(path) as f:
        texts = [line.rstrip("\n") for line in f]
    for code in lid.identify(texts):
        print(code)


def verify(shard_dir):
    """Every shard of a shards directory, every block against its CRC, and the manifest's token counts."""
    m = shards.load_manifest(shard_dir)
    n = 0
    for split in ("train", "val"):
        for name, s in shards.load_shards(shard_dir, m, split).items():
            n += s.verify()
    print(f"{shard_dir}: {len(m['sources'])} sources, {n:,} tokens, every block matches its CRC")
    return n


def run(cfg: DataConfig):
    if cfg.lid:
        return print_lid(cfg.lid)
    if cfg.verify:
        return verify(cfg.verify)
    pipeline.check_config(cfg)
    if not cfg.input or not cfg.out:
        raise corpus.DataError("give --input FILES_OR_DIRS and --out DIR (and --tokenizer DIR for the tokenize stage);"
                               " or --lid FILE, or --verify DIR")
    stages = pipeline.parse_stages(cfg.stages)
    pipeline.check_out_dir(cfg.out)
    enc = tok_hash = None
    if "tokenize" in stages:
        if not cfg.tokenizer:
            raise corpus.DataError("the tokenize stage needs --tokenizer DIR (a bpe.py tokenizer); or leave it out of "
                                   "--stages to write filtered text (<lang>.<split>.jsonl)")
        import bpe
        enc, tok_hash = bpe.load(cfg.tokenizer), bpe.tokenizer_hash(cfg.tokenizer)
    units, skipped = workunits.plan_units([p for p in cfg.input.split(",") if p], int(cfg.chunk_mb * 2**20), cfg.txt_docs,
                                         cfg.include_noisy)
    if skipped:
        by = {}
        for _, reason, size in skipped:
            by[reason] = (by.get(reason, (0, 0))[0] + 1, by.get(reason, (0, 0))[1] + size)
        print("data: not read: " + ", ".join(f"{n:,} files ({b / 1e6:,.1f} MB) {r}" for r, (n, b) in by.items()))
    m = pipeline.run_pipeline(units, cfg.out, enc, tok_hash, cfg, tokenizer_dir=cfg.tokenizer or None,
                              skipped=skipped)
    if m is not None:
        print(f"data: {len(m['sources'])} sources, {m['total_tokens']:,} tokens in {cfg.out} (manifest.json, "
              f"stats.json)")
    return m


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--input" in argv:                                              # --input a b c -> --input=a,b,c
        i = argv.index("--input")
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            j += 1
        argv[i:j] = ["--input=" + ",".join(argv[i + 1:j])]
    return run_cli(run, DataConfig, argv, prog="data.py")


if __name__ == "__main__":
    main()
