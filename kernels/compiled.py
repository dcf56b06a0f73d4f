"""torch.compile with a safe fallback; model.PolyLM.compile_blocks uses it to compile each Transformer block.

What is fused and why: in eager PyTorch every elementwise op reads its inputs from memory and writes its output back.
`gelu(x @ W1 + b1)` in the MLP is a GEMM plus memory passes over the (N, 4d) activation; `ln(x + residual)` writes
the new residual stream and reads it straight back. torch.compile (Inductor) compiles a whole block into GEMM calls
plus a few generated kernels, one per group of elementwise ops (bias + GeLU, residual add + LayerNorm, the attention
reshapes), so the activation makes one trip through memory instead of two or three. Compiling per block (as
torchtitan does) rather than the whole model keeps compile time flat in depth (identical blocks share the code) and
leaves the loss to kernels/cross_entropy.py, which PolyLM's 256,000-token vocabulary (PolyLM §2/§4) needs more: its
logits are 2 GB per 2,048-token sequence and the fused loss never builds them. Measured lever by lever against
nanoGPT in docs/BENCHMARKS.md (`python bench/bench_step.py`).

`maybe_compile(fn_or_module, enabled)` applies torch.compile when it can, and otherwise (torch without compile,
Windows, Apple MPS, GPUs older than Volta that Triton does not support, or any error during the first compiled call)
logs a warning and runs eager, so `--compile=True` never stops a run.
"""
import functools
import logging
import sys

import torch

log = logging.getLogger(__name__)


def compile_unsupported_reason(device=None):
    """Why torch.compile should not be tried here (a string), or None if it may work."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile (needs >= 2.0)"
    if sys.platform == "win32":
        return "torch.compile's Inductor backend is not reliably available on Windows"
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "mps":
        return "torch.compile is not supported on Apple MPS"
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        if major < 7:
            return f"GPU compute capability {major}.{minor} < 7.0: Triton (Inductor's GPU backend) needs Volta or newer"
    return None


def _with_fallback(compiled, eager, name):
    """Call `compiled`; if its first call raises (a compile error), warn once and use `eager` from then on."""
    state = {"ok": False, "failed": False}

    @functools.wraps(eager)
    def call(*args, **kwargs):
        if state["failed"]:
            return eager(*args, **kwargs)
        if state["ok"]:
            return compiled(*args, **kwargs)
        try:
            out = compiled(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure means: run eager
            log.warning("torch.compile of %s failed (%s: %s); running eager", name, type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
            state["failed"] = True
            return eager(*args, **kwargs)
        state["ok"] = True
        return out

    return call


def maybe_compile(fn_or_module, enabled=True, device=None, **compile_kwargs):
    """torch.compile `fn_or_module` if `enabled` and supported, else return it unchanged (with a logged warning).

    An nn.Module is compiled in place (`module.compile()`), so it stays the same object and its state_dict keys do
    not gain the `_orig_mod.` prefix; a function gets a compiled wrapper. Either way, a failure during the first
    compiled call falls back to eager.
    """
    if not enabled:
        return fn_or_module
    if device is None and isinstance(fn_or_module, torch.nn.Module):
        p = next(fn_or_module.parameters(), None)
        device = p.device if p is not None else None
    name = getattr(fn_or_module, "__name__", type(fn_or_module).__name__)
    reason = compile_unsupported_reason(device)
    if reason:
        log.warning("not compiling %s: %s; running eager", name, reason)
        return fn_or_module
    try:
        if isinstance(fn_or_module, torch.nn.Module):
            module = fn_or_module
            if not hasattr(module, "compile"):  # very old torch 2.x: the wrapper module (state_dict has _orig_mod.)
                return torch.compile(module, **compile_kwargs)
            module.compile(**compile_kwargs)  # sets module._compiled_call_impl, used by module.__call__
            module._compiled_call_impl = _with_fallback(module._compiled_call_impl, module._call_impl, name)
            return module
        return _with_fallback(torch.compile(fn_or_module, **compile_kwargs), fn_or_module, name)
    except Exception as e:  # noqa: BLE001
        log.warning("torch.compile of %s failed (%s); running eager", name, e)
        return fn_or_module
