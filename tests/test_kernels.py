"""Tests for kernels/: chunked fused linear + cross-entropy vs the reference, the impl selector, compile helpers.

All shapes are tiny (the 256K-vocab shapes live in `python bench/bench_kernels.py`). bf16 matmuls are very slow on CPUs
without native bf16, so the bf16 tests use a handful of rows.
"""
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kernels import choose_impl, default_chunk_size, linear_cross_entropy, linear_cross_entropy_reference
from kernels.compiled import compile_unsupported_reason, maybe_compile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, D, V = 37, 16, 101  # N = 37 rows: prime, so chunk sizes 5 and 8 never divide it


def make(n=N, d=D, v=V, dtype=torch.float32, bias=False, ignore_every=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=g) * 0.5).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=g) * 0.1).to(dtype).requires_grad_() if bias else None
    t = torch.randint(0, v, (n,), generator=g)
    if ignore_every:
        t[::ignore_every] = -100
    return x, w, b, t


def loss_and_grads(impl, x, w, b, t, reduction="mean", grad_out=None, **kw):
    for p in (x, w, b):
        if p is not None:
            p.grad = None
    loss = linear_cross_entropy(x, w, t, bias=b, impl=impl, reduction=reduction, **kw)
    if grad_out is None:
        grad_out = torch.linspace(-1, 2, loss.numel()).reshape(loss.shape) if reduction == "none" else 0.37
    (loss * grad_out).sum().backward()
    return [loss.detach()] + [None if p is None or p.grad is None else p.grad.clone() for p in (x, w, b)]


def assert_all_close(a, b, rtol=1e-5, atol=1e-6):
    for u, v in zip(a, b):
        assert (u is None) == (v is None)
        if u is not None:
            torch.testing.assert_close(u, v, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------------------------------------------
# chunked vs reference

@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_size", [5, 8, 64])  # odd, not dividing N, and larger than N
def test_chunked_matches_reference(reduction, bias, chunk_size):
    x, w, b, t = make(bias=bias)
    ref = loss_and_grads("reference", x, w, b, t, reduction)
    out = loss_and_grads("chunked", x, w, b, t, reduction, chunk_size=chunk_size)
    assert_all_close(out, ref)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_z_loss(reduction):
    x, w, b, t = make(bias=True)
    ref = loss_and_grads("reference", x, w, b, t, reduction, z_loss=1e-2)
    out = loss_and_grads("chunked", x, w, b, t, reduction, z_loss=1e-2, chunk_size=6)
    assert_all_close(out, ref)
    plain = linear_cross_entropy_reference(x, w, t, reduction="sum")
    lse = torch.logsumexp(x @ w.T, dim=-1)[t != -100]
    torch.testing.assert_close(linear_cross_entropy_reference(x, w, t, reduction="sum", z_loss=1e-2),
                               plain + 1e-2 * (lse ** 2).sum())


def test_reference_is_f_cross_entropy():
    x, w, b, t = make(bias=True)
    want = F.cross_entropy(F.linear(x, w, b), t, ignore_index=-100)
    torch.testing.assert_close(linear_cross_entropy(x, w, t, bias=b, impl="reference"), want)
    torch.testing.assert_close(linear_cross_entropy(x, w, t, bias=b, impl="chunked", chunk_size=4), want)


def test_ignore_index_positions_are_zero_in_none():
    x, w, _, t = make()
    for impl in ("reference", "chunked"):
        per_tok = linear_cross_entropy(x, w, t, impl=impl, reduction="none", chunk_size=4)
        assert per_tok.shape == t.shape
        assert (per_tok[t == -100] == 0).all() and (per_tok[t != -100] > 0).all()


@pytest.mark.parametrize("impl", ["reference", "chunked"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored(impl, reduction):
    x, w, b, t = make(bias=True)
    t[:] = -100
    loss, gx, gw, gb = loss_and_grads(impl, x, w, b, t, reduction, chunk_size=8)
    assert torch.all(loss == 0)
    for g in (gx, gw, gb):
        assert torch.isfinite(g).all() and (g == 0).all()


def test_custom_ignore_index():
    x, w, _, t = make(ignore_every=0)
    t[::4] = 0  # ignore token id 0 instead of -100
    ref = loss_and_grads("reference", x, w, None, t, ignore_index=0)
    out = loss_and_grads("chunked", x, w, None, t, ignore_index=0, chunk_size=5)
    assert_all_close(out, ref)
    torch.testing.assert_close(ref[0], F.cross_entropy(x @ w.T, t, ignore_index=0).detach())


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_3d_input(reduction):
    B, T = 3, 7
    x, w, _, t = make(n=B * T)
    x3 = x.detach().reshape(B, T, D).requires_grad_()
    t3 = t.reshape(B, T)
    ref = loss_and_grads("reference", x, w, None, t, reduction,
                         grad_out=None if reduction == "mean" else torch.linspace(-1, 2, B * T))
    out = loss_and_grads("chunked", x3, w, None, t3, reduction, chunk_size=5,
                         grad_out=None if reduction == "mean" else torch.linspace(-1, 2, B * T).reshape(B, T))
    assert out[0].shape == (() if reduction == "mean" else (B, T))
    assert out[1].shape == (B, T, D)
    assert_all_close([out[0].reshape(ref[0].shape), out[1].reshape(N if False else B * T, D), out[2]], ref[:3])


def test_grad_output_scaling_and_single_backward():
    """Backward scales the forward's gradients in place (e.g. loss / grad_accum_steps); a second backward is refused."""
    x, w, b, t = make(bias=True)
    ref = loss_and_grads("reference", x, w, b, t, grad_out=0.25)
    out = loss_and_grads("chunked", x, w, b, t, grad_out=0.25, chunk_size=8)
    assert_all_close(out, ref)
    loss = linear_cross_entropy(x, w, t, impl="chunked", chunk_size=8)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="only once"):
        loss.backward()


def test_tied_embedding_like_the_model():
    """The model's call: linear_cross_entropy(h, wte.weight, targets) with wte also used as the input embedding."""
    torch.manual_seed(0)
    grads = []
    for impl in ("reference", "chunked"):
        torch.manual_seed(0)
        wte = torch.nn.Embedding(V, D)
        idx, targets = torch.randint(0, V, (2, 9)), torch.randint(0, V, (2, 9))
        h = torch.tanh(wte(idx))  # (B, T, d) stand-in for the transformer
        linear_cross_entropy(h, wte.weight, targets, ignore_index=-100, impl=impl, chunk_size=4).backward()
        grads.append(wte.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_only_some_inputs_need_grad():
    x, w, b, t = make(bias=True)
    w.requires_grad_(False)
    b.requires_grad_(False)
    ref = loss_and_grads("reference", x, w, b, t)
    out = loss_and_grads("chunked", x, w, b, t, chunk_size=8)
    assert out[2] is None and out[3] is None
    assert_all_close(out[:2], ref[:2])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_no_grad_eval_path(reduction):
    x, w, b, t = make(bias=True)
    with torch.no_grad():
        ref = linear_cross_entropy(x, w, t, bias=b, impl="reference", reduction=reduction, z_loss=1e-3)
        out = linear_cross_entropy(x, w, t, bias=b, impl="chunked", reduction=reduction, z_loss=1e-3, chunk_size=5)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref)


def test_bf16_inputs():
    x, w, b, t = make(n=10, d=16, v=64, dtype=torch.bfloat16, bias=True)
    ref = loss_and_grads("reference", x, w, b, t)
    out = loss_and_grads("chunked", x, w, b, t, chunk_size=3)
    assert out[0].dtype == torch.float32 and out[1].dtype == out[2].dtype == out[3].dtype == torch.bfloat16
    assert_all_close(out, ref, rtol=2e-2, atol=2e-2)
    # and close to the fp32 answer
    xf, wf, bf = (p.detach().float().requires_grad_() for p in (x, w, b))
    f32 = loss_and_grads("reference", xf, wf, bf, t)
    torch.testing.assert_close(out[0], f32[0], rtol=2e-2, atol=2e-2)


def test_autocast_bf16_keeps_fp32_params():
    x, w, b, t = make(n=10, d=16, v=64, bias=True)
    ref = loss_and_grads("reference", x, w, b, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_and_grads("chunked", x, w, b, t, chunk_size=4)
    assert out[0].dtype == out[2].dtype == torch.float32  # fp32 master weights get fp32 grads
    assert_all_close(out, ref, rtol=3e-2, atol=3e-2)


# ----------------------------------------------------------------------------------------------------------------
# selector and argument checks

def test_impl_selector():
    small_x, small_w = torch.empty(64, 8, device="meta"), torch.empty(1000, 8, device="meta")
    big_x, big_w = torch.empty(2, 1024, 8, device="meta"), torch.empty(256000, 8, device="meta")
    assert choose_impl(small_x, small_w) == "reference"
    assert choose_impl(big_x, big_w) == "chunked"
    assert choose_impl(small_x, small_w, "chunked") == "chunked"
    assert choose_impl(big_x, big_w, "reference") == "reference"
    with pytest.raises(ValueError, match="impl"):
        choose_impl(small_x, small_w, "fast")
    x, w, _, t = make()
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(x, w, t, reduction="avg")
    # auto on a small CPU problem is the reference, bit for bit
    torch.testing.assert_close(linear_cross_entropy(x, w, t), linear_cross_entropy(x, w, t, impl="reference"),
                               rtol=0, atol=0)


def test_default_chunk_size():
    assert default_chunk_size(2048, 256000) == 256  # ~256 MiB of fp32 logits per chunk, multiple of 64 rows
    assert default_chunk_size(2048, 32000) == 2048
    assert default_chunk_size(10, 256000) == 10  # never more rows than there are
    assert default_chunk_size(4096, 10_000_000) >= 16  # a minimum, even for absurd vocabularies


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device in this environment (CPU-only torch)")
@pytest.mark.parametrize("impl", ["chunked", "triton"])
def test_cuda_matches_reference(impl):
    if impl == "triton":
        pytest.importorskip("triton", reason="triton not installed")
    x, w, b, t = (None if p is None else p.detach().cuda().requires_grad_(p.requires_grad) for p in make(bias=True))
    t = t.detach()
    assert choose_impl(x, w) == "chunked"
    ref = loss_and_grads("reference", x, w, b, t, "mean")
    out = loss_and_grads(impl, x, w, b, t, "mean", chunk_size=8)
    assert_all_close(out, ref, rtol=1e-4, atol=1e-5)


def test_triton_kernel_in_interpreter():
    """The Triton step, run by Triton's CPU interpreter (the only check it gets without a GPU)."""
    pytest.importorskip("triton", reason="triton not installed (the kernel is optional; CUDA installs ship it)")
    code = (
        "import torch\n"
        "from tests.test_kernels import make, loss_and_grads, assert_all_close\n"
        "for red in ('mean', 'none'):\n"
        "    x, w, b, t = make(bias=True)\n"
        "    ref = loss_and_grads('reference', x, w, b, t, red, z_loss=1e-2)\n"
        "    out = loss_and_grads('triton', x, w, b, t, red, z_loss=1e-2, chunk_size=8)\n"
        "    assert_all_close(out, ref)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


# ----------------------------------------------------------------------------------------------------------------
# compile helpers and the compiled blocks

def test_maybe_compile_fallbacks(caplog):
    f = lambda a: a * 2  # noqa: E731
    assert maybe_compile(f, enabled=False) is f
    assert compile_unsupported_reason("mps")
    with caplog.at_level(logging.WARNING, logger="kernels.compiled"):
        g = maybe_compile(f, enabled=True, backend="no_such_backend")  # compile error -> eager, with a warning
        assert g(torch.ones(2)).tolist() == [2.0, 2.0]
    assert any("eager" in r.message for r in caplog.records)


def test_compiled_blocks_match_eager():
    """One real torch.compile (Inductor on CPU, ~15 s the first time): train.py --compile=True's per-block compile
    gives the eager model's loss and gradients."""
    from model import PolyLM, preset
    torch.manual_seed(0)
    eager = PolyLM(preset("toy", n_layer=2, n_head=2, n_embd=32, vocab_size=64, block_size=16))
    compiled = PolyLM(eager.cfg)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks()
    assert all(b._compiled_call_impl is not None for b in compiled.h)
    x, y = torch.randint(0, 64, (3, 16)), torch.randint(0, 64, (3, 16))
    for m in (eager, compiled):
        m(x, y).backward()
    torch.testing.assert_close(compiled(x, y), eager(x, y))
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
