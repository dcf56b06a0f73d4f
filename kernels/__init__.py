"""kernels/: fused and compiled ops for PolyLM, each with a reference version, a fast version and a selector.

PolyLM (arXiv 2307.06018, §2/§4) has a 256,000-token vocabulary, which makes the output layer the memory problem:
2,048 tokens x 256K x 4 bytes = 2 GB of logits per sequence, and as much again for their gradient. See
kernels/cross_entropy.py for the fused linear + cross-entropy that never builds them, kernels/compiled.py for
torch.compile with fallbacks (model.PolyLM.compile_blocks uses it), `python bench/bench_kernels.py` for the loss measurements
and `bench/bench_step.py` for the training step against nanoGPT.
"""
from kernels.cross_entropy import (
    choose_impl,
    default_chunk_size,
    linear_cross_entropy,
    linear_cross_entropy_chunked,
    linear_cross_entropy_reference,
)

__all__ = [
    "linear_cross_entropy", "linear_cross_entropy_reference", "linear_cross_entropy_chunked", "choose_impl",
    "default_chunk_size",
]
