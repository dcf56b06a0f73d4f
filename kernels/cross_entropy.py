"""Fused linear + cross-entropy: the language-model loss without ever holding the full (N, V) logits.

Why this file exists (PolyLM, arXiv 2307.06018, §2 and §4)
------------------------------------------------------------
PolyLM uses a 256,000-token vocabulary so that 18 languages share one tokenizer. The last layer of the model is
`logits = x @ wte.weight.T` with x of shape (N, d) and the tied embedding wte.weight of shape (V, d). With N = 2,048
tokens (one sequence) and V = 256,000:

    logits                                   2,048 x 256,000 x 4 bytes = 2.1 GB   (fp32)
    their log_softmax, saved for backward                                2.1 GB
    d loss / d log_softmax, d loss / d logits                        2 x 2.1 GB

so a plain `F.cross_entropy(F.linear(x, W), targets)` peaks at 8.4 GB per sequence just for the loss (measured: 7.8
GiB beyond x and W, docs/BENCHMARKS.md (kernels section)). Nothing downstream needs those logits: the loss is one number per
token, and the gradient wrt logits is only used to form the gradients wrt x and W.

What is fused
-------------
`linear_cross_entropy` walks over the N rows in chunks of `chunk_size` rows. For each chunk it computes

    z    = x_c @ W.T (+ b)                  (chunk, V) logits, fp32
    lse  = log(sum_j exp(z_j))              row log-sum-exp (max-shifted for stability)
    loss = lse - z[target] (+ z_loss * lse^2)
    g    = d loss / d z = softmax(z) - onehot(target)   (times (1 + 2 z_loss lse) on the softmax part)
    dx_c = g @ W,   dW += g.T @ x_c,   db += g.sum(0)

all in the *forward* pass (as Liger-Kernel and Cut-Cross-Entropy do), then drops z and g. Peak extra memory is one
(chunk, V) fp32 buffer instead of several (N, V) ones; the matmul work is the same 3 GEMMs as the naive version, so it
costs about the same time. Backward only multiplies the stored gradients by grad_output (a scalar for "mean"/"sum").
For reduction="none" (per-token losses, e.g. bits-per-byte evaluation) grad_output is a vector, so the forward keeps
only lse (N floats) and the backward recomputes each chunk's logits: one extra GEMM, only when you backprop per-token
losses, which training never does.

Three implementations behind one selector (`impl=`):
    "reference" plain F.linear + F.cross_entropy in fp32: the definition (and as fast at toy shapes);
    "chunked"   the chunked autograd.Function below (CPU and CUDA; on CUDA its per-chunk elementwise step is compiled
                with torch.compile into one kernel, in the spirit of Liger-Kernel);
    "triton"    a small Triton kernel for the per-chunk step (kernels/triton_ce.py, UNTESTED ON GPU in this session);
    "auto"      chunked on CUDA or when N * V is large, reference otherwise.
"""
import functools

import torch
import torch.nn.functional as F

# impl="auto" uses the chunked path on CPU once N * V exceeds this many logits. Measured with `python bench/bench_kernels.py
# --threshold` (docs/BENCHMARKS.md (kernels section), d=256): from 2^22 logits up the chunked version is faster (0.5-0.8x the
# reference's time), at 2^18-2^20 the two are tied within noise. Below 2^20 logits (4 MB) memory is no concern, so
# "auto" keeps the plain reference there (it also supports retain_graph and double backward).
AUTO_CHUNK_THRESHOLD = 2 ** 20
# Default chunk: about this many bytes of fp32 logits per chunk, rounded down to a multiple of 64 rows (BLAS kernels
# handle the GEMM's chunk dimension in blocks; an odd 131 rows ran the logits GEMM 1.5x slower than 128 at d=2048).
# At V = 256,000 that is 256 rows, 262 MB. Chosen from `python bench/bench_kernels.py --sweep` (docs/BENCHMARKS.md (kernels section)):
# every chunk re-reads W twice and read-modify-writes the (V, d) weight gradient, so small chunks are slow on CPU
# (32 rows / 33 MB cost ~1.8x the CPU time of 256 rows at d=512); 262 MB is still ~4% of the naive loss's ~6 GB.
TARGET_CHUNK_BYTES = 256 * 2 ** 20
MIN_CHUNK_ROWS = 16


IMPLS = ("auto", "reference", "chunked", "triton")
REDUCTIONS = ("mean", "sum", "none")


def default_chunk_size(n_rows, vocab_size, target_bytes=TARGET_CHUNK_BYTES):
    """Rows per chunk so that one chunk of fp32 logits is about `target_bytes` (a multiple of 64 rows if >= 64)."""
    rows = max(MIN_CHUNK_ROWS, target_bytes // (4 * vocab_size))
    if rows >= 64:
        rows -= rows % 64
    return int(min(rows, max(n_rows, 1)))


# ----------------------------------------------------------------------------------------------------------------
# Reference: the definition. Materializes the (N, V) logits.

def linear_cross_entropy_reference(x, weight, targets, bias=None, ignore_index=-100, reduction="mean", z_loss=0.0):
    """F.linear + F.cross_entropy, computed in fp32. Same contract as `linear_cross_entropy`."""
    shape = targets.shape
    x, targets = x.reshape(-1, x.shape[-1]), targets.reshape(-1)
    logits = F.linear(x, weight, bias).float()  # (N, V): the 2 GB tensor at PolyLM scale
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")  # 0 at ignored positions
    mask = targets != ignore_index
    if z_loss:
        # PaLM's auxiliary loss z_loss * log(Z)^2 keeps the softmax normalizer near 1 (log Z near 0).
        loss = loss + z_loss * torch.logsumexp(logits, dim=-1).pow(2) * mask
    return _reduce(loss, mask, reduction, shape)


def _reduce(loss, mask, reduction, shape):
    if reduction == "none":
        return loss.reshape(shape)
    if reduction == "sum":
        return loss.sum()
    # "mean" over the non-ignored tokens; an all-ignored batch gives 0 (and zero grads), not 0/0 = nan.
    return loss.sum() / mask.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------------------------
# The per-chunk step: logits -> (loss, lse) and, in place, logits -> d loss / d logits.

def _chunk_loss_and_grad(z, targets, row_weight, ignore_index, z_loss, lse=None):
    """Turn a (c, V) fp32 logits buffer `z` IN PLACE into row_weight * d loss_i / d z_i; return (loss, lse) per row.

    loss_i = lse_i - z_i[t_i] + z_loss * lse_i^2 (0 where t_i == ignore_index), lse_i = log sum_j exp(z_ij).
    d loss_i / d z_ij = p_ij * (1 + 2 z_loss lse_i) - [j == t_i],   with p = softmax(z_i) = exp(z_ij - lse_i).
    row_weight folds in the reduction (1/n_valid for "mean", 1 for "sum", grad_output_i for "none") and the mask.
    If `lse` is given (the reduction="none" backward) it is reused instead of recomputed and no loss is returned.
    """
    mask = targets != ignore_index
    t = targets.masked_fill(~mask, 0).unsqueeze(1)  # safe gather index at ignored rows (their weight is 0 below)
    row_weight = row_weight * mask  # ignored rows: constant 0 loss, so 0 gradient
    loss = None
    if lse is None:
        m = z.amax(dim=1, keepdim=True)  # subtract the row max so exp never overflows
        z.sub_(m)
        z_t = z.gather(1, t).squeeze(1)  # z[target] - max
        z.exp_()  # unnormalized probabilities exp(z - max)
        s = z.sum(dim=1)
        log_s = s.log()
        lse = m.squeeze(1) + log_s
        loss = (log_s - z_t) + (z_loss * lse * lse if z_loss else 0.0)
        loss = loss * mask
        scale = row_weight / s  # softmax = exp(z - max) / s
    else:
        z.sub_(lse.unsqueeze(1)).exp_()  # already normalized: p = exp(z - lse)
        scale = row_weight
    if z_loss:
        scale = scale * (1.0 + 2.0 * z_loss * lse)
    z.mul_(scale.unsqueeze(1))  # w_i * p_ij * (1 + 2 z_loss lse_i)
    z.scatter_add_(1, t, -row_weight.unsqueeze(1))  # - w_i * onehot(t_i)
    return loss, lse


def _chunk_step(device_type, impl):
    """The per-chunk step: the Triton kernel for impl="triton"; compiled into one kernel on CUDA; eager elsewhere."""
    if impl == "triton":
        from kernels.triton_ce import triton_chunk_step
        return triton_chunk_step
    if device_type == "cuda":
        return _compiled_step()
    return _chunk_loss_and_grad


@functools.cache
def _compiled_step():
    from kernels.compiled import maybe_compile
    return maybe_compile(_chunk_loss_and_grad, enabled=True, dynamic=True)  # dynamic: the last chunk is shorter


def _chunk_logits(x_c, w, bias, out):
    """(c, V) fp32 logits of one chunk, written into the reusable flat buffer `out` (no allocation per chunk).

    On CPU they are computed transposed, as W @ x_c.T into a (V, c) buffer, and returned as a (c, V) view: with tens
    to hundreds of rows per chunk MKL runs this GEMM about twice as fast as x_c @ W.T on our CPU (measured), and the
    elementwise code does not care about the layout. On CUDA, plain row-major (c, V) keeps each row contiguous.
    """
    c, V = x_c.shape[0], w.shape[0]
    transposed = not w.is_cuda
    out = out[: V * c].view(V, c) if transposed else out[: V * c].view(c, V)  # contiguous, also for a short chunk
    a, b = (w, x_c.t()) if transposed else (x_c, w.t())
    if w.dtype == torch.float32:
        torch.mm(a, b, out=out)
    else:  # bf16/fp16 matmul (fp32 accumulation inside the GEMM), upcast to fp32 for the softmax
        out.copy_(torch.mm(a, b))
    z = out.t() if transposed else out
    if bias is not None:
        z.add_(bias)
    return z


def _accumulate_grads(g, x_c, w, grad_x_c, grad_w, grad_b):
    """dx_c = g @ W, dW += g.T @ x_c, db += sum_rows g; all accumulated in fp32."""
    gc = g if w.dtype == torch.float32 else g.to(w.dtype)
    if grad_x_c is not None:
        if w.dtype == torch.float32:
            torch.mm(gc, w, out=grad_x_c)
        else:
            grad_x_c.copy_(torch.mm(gc, w))
    if grad_w is not None:
        if w.dtype == torch.float32:
            grad_w.addmm_(gc.t(), x_c)  # one GEMM with beta=1: C += A @ B, no (V, d) temporary
        else:
            grad_w.add_(torch.mm(gc.t(), x_c))
    if grad_b is not None:
        grad_b.add_(g.sum(0))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Chunked fused linear + cross-entropy. Inputs are already 2-D: x (N, d), targets (N,)."""

    @staticmethod
    def forward(ctx, x, weight, bias, targets, ignore_index, reduction, chunk_size, z_loss, compute_dtype, step_impl):
        # Our own precision policy: matmuls in compute_dtype (bf16 under autocast), softmax and grads in fp32.
        with torch.autocast(x.device.type, enabled=False):
            N, V = x.shape[0], weight.shape[0]
            w = weight.to(compute_dtype)  # a no-op for fp32; one cast copy under autocast, as F.linear makes
            xc = x.to(compute_dtype)
            b = None if bias is None else bias.float()
            step = _chunk_step(x.device.type, step_impl)
            mask = targets != ignore_index
            losses = torch.empty(N, dtype=torch.float32, device=x.device)
            buf = torch.empty(V * min(chunk_size, N), dtype=torch.float32, device=x.device)

            if reduction == "none":
                # Only the per-row lse is kept; backward recomputes logits with the (per-token) grad_output.
                lse = torch.empty(N, dtype=torch.float32, device=x.device)
                ones = torch.ones(N, dtype=torch.float32, device=x.device)
                for s in range(0, N, chunk_size):
                    e = min(s + chunk_size, N)
                    z = _chunk_logits(xc[s:e], w, b, buf)
                    losses[s:e], lse[s:e] = step(z, targets[s:e], ones[s:e], ignore_index, z_loss)
                ctx.save_for_backward(x, weight, bias, targets, lse)
                ctx.meta = (ignore_index, chunk_size, z_loss, compute_dtype, step_impl)
                return losses

            # "mean"/"sum": the loss is a scalar, so grad_output is a scalar and we can form the final gradients now.
            n_valid = mask.sum().clamp(min=1)
            row_weight = mask.float() / n_valid if reduction == "mean" else mask.float()
            need_x, need_w, need_b = ctx.needs_input_grad[:3]
            grad_x = torch.empty(N, x.shape[1], dtype=torch.float32, device=x.device) if need_x else None
            grad_w = torch.zeros(V, x.shape[1], dtype=torch.float32, device=x.device) if need_w else None
            grad_b = torch.zeros(V, dtype=torch.float32, device=x.device) if need_b else None
            for s in range(0, N, chunk_size):
                e = min(s + chunk_size, N)
                z = _chunk_logits(xc[s:e], w, b, buf)
                losses[s:e], _ = step(z, targets[s:e], row_weight[s:e], ignore_index, z_loss)  # z is now g
                _accumulate_grads(z, xc[s:e], w, None if grad_x is None else grad_x[s:e], grad_w, grad_b)
            del buf
            loss = losses.sum()
            if reduction == "mean":
                loss = loss / n_valid
            # Stored on ctx (not save_for_backward: they are outputs of this op, not inputs) in the final dtypes.
            ctx.grads = [None if g is None else g.to(p.dtype) for g, p in ((grad_x, x), (grad_w, weight), (grad_b, bias))]
            return loss

    @staticmethod
    def backward(ctx, grad_output):
        if hasattr(ctx, "grads"):  # "mean"/"sum": scale the gradients computed in forward by the scalar grad_output
            if ctx.grads is None:
                raise RuntimeError("linear_cross_entropy (chunked): backward can run only once per forward "
                                   "(its gradients are scaled in place); use impl='reference' with retain_graph.")
            grads, ctx.grads = ctx.grads, None  # drop ctx's reference so autograd can adopt the buffers as .grad
            if not bool(grad_output == 1):  # 1 in plain training; e.g. 1/grad_accum_steps otherwise
                for g in grads:
                    if g is not None:
                        g.mul_(grad_output.to(g.dtype))  # in place: no second (V, d) buffer
            gx, gw, gb = grads
            return gx, gw, gb, None, None, None, None, None, None, None
        return _ChunkedLinearCrossEntropy._backward_none(ctx, grad_output)

    @staticmethod
    def _backward_none(ctx, grad_output):
        """reduction="none": recompute each chunk's logits, form g with per-row weights grad_output_i."""
        x, weight, bias, targets, lse = ctx.saved_tensors
        ignore_index, chunk_size, z_loss, compute_dtype, step_impl = ctx.meta
        with torch.autocast(x.device.type, enabled=False):
            N, V = x.shape[0], weight.shape[0]
            w, xc = weight.to(compute_dtype), x.to(compute_dtype)
            b = None if bias is None else bias.float()
            step = _chunk_step(x.device.type, step_impl)
            need_x, need_w, need_b = ctx.needs_input_grad[:3]
            grad_x = torch.empty(N, x.shape[1], dtype=torch.float32, device=x.device) if need_x else None
            grad_w = torch.zeros(V, x.shape[1], dtype=torch.float32, device=x.device) if need_w else None
            grad_b = torch.zeros(V, dtype=torch.float32, device=x.device) if need_b else None
            go = grad_output.float().reshape(-1)
            buf = torch.empty(V * min(chunk_size, N), dtype=torch.float32, device=x.device)
            for s in range(0, N, chunk_size):
                e = min(s + chunk_size, N)
                z = _chunk_logits(xc[s:e], w, b, buf)
                step(z, targets[s:e], go[s:e], ignore_index, z_loss, lse=lse[s:e])
                _accumulate_grads(z, xc[s:e], w, None if grad_x is None else grad_x[s:e], grad_w, grad_b)
            del buf
        cast = lambda g, t: None if g is None else g.to(t.dtype)
        return cast(grad_x, x), cast(grad_w, weight), cast(grad_b, bias), None, None, None, None, None, None, None


def _chunked_no_grad(x, weight, bias, targets, ignore_index, chunk_size, z_loss, compute_dtype, step_impl):
    """Loss only (evaluation, torch.no_grad): the same chunk loop without any gradient work."""
    N, V = x.shape[0], weight.shape[0]
    w, xc = weight.to(compute_dtype), x.to(compute_dtype)
    b = None if bias is None else bias.float()
    step = _chunk_step(x.device.type, step_impl)
    ones = torch.ones(N, dtype=torch.float32, device=x.device)
    losses = torch.empty(N, dtype=torch.float32, device=x.device)
    buf = torch.empty(V * min(chunk_size, N), dtype=torch.float32, device=x.device)
    for s in range(0, N, chunk_size):
        e = min(s + chunk_size, N)
        z = _chunk_logits(xc[s:e], w, b, buf)
        # (the step also turns z into a gradient we then drop: a few cheap elementwise passes)
        losses[s:e], _ = step(z, targets[s:e], ones[s:e], ignore_index, z_loss)
    return losses


def linear_cross_entropy_chunked(x, weight, targets, bias=None, ignore_index=-100, reduction="mean",
                                 chunk_size=None, z_loss=0.0, step_impl="chunked"):
    """Chunked fused version (never materializes (N, V)). Same contract as `linear_cross_entropy`.

    step_impl: "chunked" (PyTorch ops for the per-chunk softmax/gradient; compiled on CUDA) or "triton".
    """
    shape = targets.shape
    x2, t = x.reshape(-1, x.shape[-1]), targets.reshape(-1)
    if t.numel() != x2.shape[0]:
        raise ValueError(f"targets has {t.numel()} elements but x has {x2.shape[0]} rows")
    chunk_size = int(chunk_size or default_chunk_size(x2.shape[0], weight.shape[0]))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dev = x2.device.type
    if torch.is_autocast_enabled(dev):  # autocast would run F.linear in bf16/fp16: do the same for our GEMMs
        compute_dtype = torch.get_autocast_dtype(dev)
    else:
        compute_dtype = torch.promote_types(x2.dtype, weight.dtype)
    needs_grad = torch.is_grad_enabled() and any(
        a is not None and a.requires_grad for a in (x2, weight, bias))
    if x2.shape[0] == 0:  # empty batch: keep the graph connected, return the usual empty reductions
        return linear_cross_entropy_reference(x, weight, targets, bias, ignore_index, reduction, z_loss)
    if not needs_grad:
        losses = _chunked_no_grad(x2, weight, bias, t, ignore_index, chunk_size, z_loss, compute_dtype, step_impl)
        return _reduce(losses, t != ignore_index, reduction, shape)
    out = _ChunkedLinearCrossEntropy.apply(x2, weight, bias, t, ignore_index, reduction, chunk_size, float(z_loss),
                                           compute_dtype, step_impl)
    return out.reshape(shape) if reduction == "none" else out


# ----------------------------------------------------------------------------------------------------------------
# The selector.

def choose_impl(x, weight, impl="auto"):
    """Which implementation `impl` resolves to for these inputs ("reference", "chunked" or "triton")."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if x.is_cuda:
        return "chunked"  # the compiled-chunked path; "triton" is opt-in until it has been run on a GPU
    n_rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return "chunked" if n_rows * weight.shape[0] > AUTO_CHUNK_THRESHOLD else "reference"


def linear_cross_entropy(x, weight, targets, bias=None, ignore_index=-100, impl="auto", reduction="mean",
                         chunk_size=None, z_loss=0.0):
    """Cross-entropy of `x @ weight.T (+ bias)` against `targets`, without materializing the logits if it can.

    x: (N, d) or (B, T, d) hidden states; weight: (V, d), usually the tied embedding wte.weight; targets: (N,) or
    (B, T) int64; bias: optional (V,). ignore_index: targets equal to it (e.g. SFT prompt tokens) contribute 0 loss
    and 0 gradient. reduction: "mean" over non-ignored targets (0, with zero gradient, if all are ignored), "sum", or
    "none" (per-token losses shaped like targets, 0 at ignored positions). z_loss: weight of PaLM's z_loss * lse^2.
    impl: "auto" | "reference" | "chunked" | "triton". chunk_size: rows per chunk (default: ~256 MiB of logits).
    The loss is returned in fp32 whatever the input dtype (bf16 inputs: matmuls in bf16, softmax/sums in fp32).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    which = choose_impl(x, weight, impl)
    if which == "reference":
        return linear_cross_entropy_reference(x, weight, targets, bias, ignore_index, reduction, z_loss)
    if which == "triton":
        return linear_cross_entropy_chunked(x, weight, targets, bias, ignore_index, reduction, chunk_size, z_loss,
                                            step_impl="triton")
    return linear_cross_entropy_chunked(x, weight, targets, bias, ignore_index, reduction, chunk_size, z_loss)
