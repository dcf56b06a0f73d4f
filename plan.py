"""Plan a PolyLM pre-training run before paying for it (PolyLM paper §4: 13B on 32 A100s, 640B tokens).

    python plan.py config/polylm_13b.py                      # 32 x A100-80GB, FSDP, MFU 40%
    python plan.py config/polylm_1_7b.py --gpus=8 --gpu_mem_gb=40 --mfu=0.35

Nothing is allocated: parameter counts come from the meta device, the rest is arithmetic written out below, so a
reader sees *why* 13B needs sharding on 32 A100s (its AdamW state alone is 222 GB).

Memory per GPU under FSDP (full sharding over N GPUs, bf16 compute, fp32 master weights):
  parameters     4 bytes x P / N      fp32 shards (FSDP2 keeps the master copy sharded)
  gradients      4 bytes x P / N      reduced in fp32, kept sharded
  AdamW state    8 bytes x P / N      exp_avg + exp_avg_sq in fp32
  gathered       2 bytes x (root + 2 blocks)  the bf16 all-gathered parameters in use: the root module (token and
                                      position embeddings, final LayerNorm) for the whole step, plus the current and
                                      the prefetched block
  activations    per layer 34 x s x b x d bytes (bf16, flash attention, Korthikanti et al. 2022), or with
                 activation checkpointing 2 x s x b x d per layer plus one layer's 34 x s x b x d
  logits         ~0 with the fused chunked cross-entropy (kernels/); 6 x s x b x V bytes with naive F.cross_entropy
                 (bf16 logits + fp32 softmax/grad)
Without sharding (DDP) every GPU holds all of parameters + gradients + AdamW: 16 bytes x P.

Time: tokens/s = N x peak x MFU / (training FLOPs per token, model.flops_per_token), days = tokens / (tokens/s) / 86400.
"""
import dataclasses

from config import run_cli
from model import PRESETS, PolyLM, preset
from runtime import GPU_PEAK_FLOPS

GiB = 2**30


@dataclasses.dataclass
class PlanConfig:
    # the run (the same keys as train.py's, so `python plan.py config/x.py` reads train.py's config files)
    preset: str = "toy"                 # model preset: toy | polylm-1.7b | polylm-13b
    n_layer: int = 0                    # override the preset's layers (0 = keep)
    n_head: int = 0                     # override the preset's heads (0 = keep)
    n_embd: int = 0                     # override the preset's width (0 = keep)
    block_size: int = 256               # context length in tokens
    vocab_size: int = 8192              # vocabulary size
    batch_size: int = 16                # sequences per micro-batch per GPU
    grad_accum: int = 1                 # micro-batches per optimizer step
    # the machine and the budget
    gpus: int = 32                      # number of GPUs (PolyLM-13B: 32 A100)
    gpu: str = "A100"                   # GPU kind for the peak FLOP/s table: A100 | H100 | H200
    gpu_mem_gb: float = 80.0            # memory per GPU in GB
    mfu: float = 0.4                    # assumed model FLOPs utilisation
    tokens: float = 640e9               # training tokens (PolyLM: 640B)
    fused_ce: bool = True               # chunked linear + cross-entropy (no full logits)


def check(cfg):
    if cfg.preset not in PRESETS:
        raise ValueError(f"preset={cfg.preset!r}: choose one of {', '.join(PRESETS)}")
    if cfg.gpu not in GPU_PEAK_FLOPS:
        raise ValueError(f"gpu={cfg.gpu!r}: no peak FLOP/s for it; choose one of {', '.join(GPU_PEAK_FLOPS)}")
    for key in ("gpus", "batch_size", "grad_accum", "block_size", "vocab_size"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key}={getattr(cfg, key)} must be >= 1")
    if not 0 < cfg.mfu <= 1 or cfg.gpu_mem_gb <= 0 or cfg.tokens <= 0:
        raise ValueError(f"mfu={cfg.mfu} must be in (0, 1]; gpu_mem_gb and tokens must be > 0")


def plan(cfg: PlanConfig):
    import torch
    check(cfg)
    overrides = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd") if getattr(cfg, k)}
    mcfg = preset(cfg.preset, **overrides, block_size=cfg.block_size, vocab_size=cfg.vocab_size)
    with torch.device("meta"):
        model = PolyLM(mcfg)
    P = model.num_params()
    root = mcfg.vocab_size * mcfg.n_embd + mcfg.block_size * mcfg.n_embd + 2 * mcfg.n_embd
    block = (P - root) // mcfg.n_layer
    s, b, d, L, V, N = cfg.block_size, cfg.batch_size, mcfg.n_embd, mcfg.n_layer, mcfg.vocab_size, cfg.gpus
    act_full = 34 * s * b * d * L
    act_ckpt = 2 * s * b * d * L + 34 * s * b * d
    logits = 0 if cfg.fused_ce else 6 * s * b * V
    shard = {"parameters (fp32 shard)": 4 * P / N, "gradients (fp32 shard)": 4 * P / N,
             "AdamW state (fp32 shard)": 8 * P / N, "gathered bf16 params": 2 * (root + 2 * block)}
    flops = model.flops_per_token(s)
    peak = GPU_PEAK_FLOPS[cfg.gpu]
    tok_s = N * peak * cfg.mfu / flops
    global_batch = cfg.batch_size * cfg.grad_accum * N * s

    lines = [f"# plan: {cfg.preset} on {N} x {cfg.gpu}-{cfg.gpu_mem_gb:g}GB, micro-batch {b} x {s} tokens",
             f"parameters: {P:,} (embedding {mcfg.vocab_size * mcfg.n_embd:,} = "
             f"{mcfg.vocab_size * mcfg.n_embd / P:.0%}), {L} blocks of {block:,}",
             f"global batch: {cfg.batch_size} x {cfg.grad_accum} accum x {N} GPUs x {s} = {global_batch:,} tokens",
             "", "| memory per GPU (GiB) | FSDP | FSDP + act. ckpt | DDP (no sharding) |", "|---|---:|---:|---:|"]
    for k, v in shard.items():
        ddp = {"parameters (fp32 shard)": 4 * P, "gradients (fp32 shard)": 4 * P, "AdamW state (fp32 shard)": 8 * P,
               "gathered bf16 params": 2 * P}[k]
        lines.append(f"| {k} | {v / GiB:.1f} | {v / GiB:.1f} | {ddp / GiB:.1f} |")
    lines.append(f"| activations | {act_full / GiB:.1f} | {act_ckpt / GiB:.1f} | {act_full / GiB:.1f} |")
    lines.append(f"| logits ({'fused CE' if cfg.fused_ce else 'naive CE'}) | {logits / GiB:.1f} | {logits / GiB:.1f} | "
                 f"{logits / GiB:.1f} |")
    tot_fsdp = sum(shard.values()) + act_full + logits
    tot_ckpt = sum(shard.values()) + act_ckpt + logits
    tot_ddp = 18 * P + act_full + logits
    fits = lambda x: "fits" if x / GiB < 0.9 * cfg.gpu_mem_gb else "does NOT fit"  # noqa: E731
    lines.append(f"| **total** | **{tot_fsdp / GiB:.1f}** ({fits(tot_fsdp)}) | **{tot_ckpt / GiB:.1f}** "
                 f"({fits(tot_ckpt)}) | **{tot_ddp / GiB:.1f}** ({fits(tot_ddp)}) |")
    lines += ["", f"training FLOPs per token: {flops / 1e9:.1f} GFLOP (6N + 12·L·T·d)",
              f"throughput at {cfg.mfu:.0%} MFU of {peak / 1e12:.0f} TFLOP/s bf16 peak: {tok_s:,.0f} tokens/s "
              f"({tok_s / N:,.0f} per GPU)",
              f"time for {cfg.tokens / 1e9:,.0f}B tokens: {cfg.tokens / tok_s / 86400:.1f} days "
              f"({cfg.tokens / global_batch:,.0f} steps)"]
    print("\n".join(lines))
    return {"params": P, "fsdp_gib": tot_fsdp / GiB, "fsdp_ckpt_gib": tot_ckpt / GiB, "ddp_gib": tot_ddp / GiB,
            "tokens_per_s": tok_s, "days": cfg.tokens / tok_s / 86400}


def main(argv=None):
    return run_cli(plan, PlanConfig, argv, prog="plan.py", other_file_keys=True)


if __name__ == "__main__":
    main()
