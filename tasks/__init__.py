"""The benchmark suite behind evaluate.py (PolyLM paper §5): benchmarks.py (loaders for each benchmark's official
file format, prompt templates), scoring.py (batched log-likelihood with a shared context, greedy generation),
metrics.py (EM/F1, ROUGE, BLEU/chrF that work for every script; the one script-aware ROUGE tokenizer and LCS, which
selfinstruct.py uses too) and bpb.py (bits per byte, shared with train.py). Nothing here imports evaluate.py; the
scoring-speed benchmark is bench/bench_scoring.py."""
