# The laptop toy run (identical to train.py's defaults): ~5M parameters, 8K vocab, 2 CPU cores, a few minutes.
preset = "toy"
vocab_size = 8192
block_size = 256
batch_size = 4           # 600 steps x 4 rows beat 150 x 16 (the same tokens): `python ablate.py lr`, docs/EXPERIMENTS.md
max_iters = 600
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 60
eval_interval = 200
out_dir = "out/toy"
