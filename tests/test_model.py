"""The PolyLM architecture: exact paper parameter counts, tied embeddings, init, causality, loss."""
import math

import pytest
import torch

from model import PolyLM, count_params, preset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_paper_parameter_counts_exact():
    assert count_params(preset("polylm-1.7b")) == 1_737_084_928
    assert count_params(preset("polylm-13b")) == 13_906_790_400


def tiny(**kw):
    torch.manual_seed(0)
    return PolyLM(preset("toy", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=64, **kw))


def test_embeddings_are_tied_and_init_std_is_0_006():
    m = PolyLM(preset("toy", vocab_size=4096))
    assert m.wte.weight.data_ptr() == m.state_dict()["wte.weight"].data_ptr()
    assert not any("lm_head" in n for n, _ in m.named_parameters())
    assert abs(m.wte.weight.std().item() - 0.006) < 3e-4
    assert abs(m.h[0].mlp.c_fc.weight.std().item() - 0.006) < 3e-4
    assert abs(m.h[0].mlp.c_proj.weight.std().item() - 0.006 / math.sqrt(2 * 4)) < 3e-4
    assert m.h[0].attn.c_attn.bias.abs().sum() == 0


def test_initial_loss_is_log_vocab():
    m = tiny()
    x = torch.randint(0, 64, (4, 16))
    t = torch.randint(0, 64, (4, 16))
    assert abs(m(x, t).item() - math.log(64)) < 0.05


def test_causal_future_tokens_do_not_change_past_logits():
    m = tiny().eval()
    x = torch.randint(0, 64, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 64
    assert torch.allclose(m(x)[0, :10], m(y)[0, :10], atol=1e-6)
    assert not torch.allclose(m(x)[0, 10:], m(y)[0, 10:])


def test_loss_equals_mean_of_token_nll_and_reference_cross_entropy():
    m = tiny().eval()
    x, t = torch.randint(0, 64, (3, 16)), torch.randint(0, 64, (3, 16))
    t[0, :5] = -100
    ref = torch.nn.functional.cross_entropy(m(x).view(-1, 64), t.view(-1), ignore_index=-100)
    assert torch.allclose(m(x, t), ref, atol=1e-5)
    nll = m.token_nll(x, t)
    assert nll.shape == (3, 16) and (nll[0, :5] == 0).all()
    assert torch.allclose(nll.sum() / (t != -100).sum(), ref, atol=1e-5)


def test_kernel_backends_give_the_same_loss_and_gradients():
    """model(x, y, kernel=...): the plain reference loss and the fused chunked one (odd chunk sizes: test_kernels)."""
    m = tiny()
    x, t = torch.randint(0, 64, (3, 16)), torch.randint(0, 64, (3, 16))
    t[1, 3:9] = -100
    out = {}
    for kernel in ("reference", "chunked"):
        m.zero_grad()
        loss = m(x, t, kernel=kernel)
        loss.backward()
        out[kernel] = (loss.detach(), [p.grad.clone() for p in m.parameters()])
    torch.testing.assert_close(out["chunked"][0], out["reference"][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(out["chunked"][1], out["reference"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_weight_decay_only_on_matrices():
    m = tiny()
    decay, no_decay = m.optimizer_groups(1e-4)
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))


def test_too_long_input_is_a_clear_error():
    with pytest.raises(ValueError, match="block_size=16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_greedy_generation_is_deterministic_and_stops():
    m = tiny()
    x = torch.tensor([[1, 2, 3]])
    a, b = m.generate(x, 5, temperature=0), m.generate(x, 5, temperature=0)
    assert a.shape == (1, 8) and torch.equal(a, b)
    first = a[0, 3].item()
    assert m.generate(x, 5, temperature=0, stop_ids=(first,)).shape == (1, 4)
