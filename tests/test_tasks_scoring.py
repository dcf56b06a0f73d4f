"""Scoring parity: the batched, prefix-sharing log-likelihood equals the naive one-sequence-at-a-time computation;
token boundaries follow lm-evaluation-harness; greedy generation stops at a newline."""
import numpy as np
import pytest
import torch

from model import PolyLM, preset
from tasks import benchmarks as B
from tasks import scoring as S


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: one thread is fastest (conftest.py)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return PolyLM(preset("toy", n_layer=2, n_embd=32, n_head=2, block_size=128, vocab_size=257)).eval()


def test_encode_pair_moves_trailing_space_to_the_continuation(byte_enc):
    ctx, cont = S.encode_pair(byte_enc, "Question: 2+2? ", "4")
    assert byte_enc.decode(ctx) == "Question: 2+2?" and byte_enc.decode(cont) == " 4"
    ctx, cont = S.encode_pair(byte_enc, "", "whole sentence")            # empty context -> <|endoftext|>
    assert ctx == [byte_enc.eot_token] and byte_enc.decode(cont) == "whole sentence"


def test_pack_question_shares_the_prefix_and_keeps_positions():
    reqs = [([1, 2, 3], [4, 5]), ([1, 2, 3], [6]), ([1, 2, 7], [8])]
    tokens, positions, parent, targets = S.pack_question(reqs, block_size=16)
    # prefix [1, 2] once, then branch inputs: [3, 4] (choice 0), [3] (choice 1), [7] (choice 2)
    assert tokens == [1, 2, 3, 4, 3, 7] and positions == [0, 1, 2, 3, 2, 2] and parent == [-1, -1, 0, 0, 1, 2]
    assert targets == [[(2, 4), (3, 5)], [(4, 6)], [(5, 8)]]
    mask = S._tree_mask(parent)
    assert mask[3].tolist() == [True, True, True, True, False, False]       # choice 0 never sees choice 1 or 2
    assert mask[5].tolist() == [True, True, False, False, False, True]


def _questions(enc):
    """Requests shaped like the real tasks: shared context (XCOPA/XNLI), multiple input (XWinograd),
    empty context (PAWS-X), few-shot prefix, and one question too long for the context window."""
    qs = []
    docs = [{"premise": f"The man number {i} turned on the faucet.", "choice1": "The toilet filled with water.",
             "choice2": "Water flowed from the spout.", "question": "effect", "label": i % 2} for i in range(6)]
    for d in docs:
        it = B.xcopa_item(d, "it")
        qs.append([S.encode_pair(enc, c, x) for c, x in zip(it["contexts"], it["continuations"])])
    it = B.xnli_item({"premise": "A cat sleeps", "hypothesis": "An animal rests", "label": 0}, "en")
    qs.append([S.encode_pair(enc, "Ex, right? Yes, ex\n\n" + c, x) for c, x in zip(it["contexts"], it["continuations"])])
    it = B.xwinograd_item({"sentence": "The ball broke the table because _ was steel.", "option1": "the ball",
                           "option2": "the table", "answer": "1"}, "en")
    qs.append([S.encode_pair(enc, c, x) for c, x in zip(it["contexts"], it["continuations"])])
    it = B.pawsx_item({"sentence1": "He won in 1998", "sentence2": "in 1998 he won", "label": 1}, "en")
    qs.append([S.encode_pair(enc, c, x) for c, x in zip(it["contexts"], it["continuations"])])
    qs.append([S.encode_pair(enc, "x" * 150, " yes"), S.encode_pair(enc, "x" * 150, " no")])   # > block_size
    return qs


@pytest.mark.parametrize("tree", [True, False])
def test_batched_loglik_equals_naive_one_sequence_at_a_time(tiny, byte_enc, tree):
    qs = _questions(byte_enc)
    flat = [r for q in qs for r in q]
    naive = S.loglik_naive(tiny, flat, block_size=128)
    batched = S.loglik_batched(tiny, qs, block_size=128, batch_tokens=600, tree=tree)
    np.testing.assert_allclose(batched, naive, rtol=1e-5, atol=2e-4)
    # and the naive one is what its name says: sum of log-softmax over the continuation tokens
    ctx, cont = flat[0]
    full = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(tiny(full[:, :-1])[0], -1)
    by_hand = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
    assert naive[0] == pytest.approx(by_hand, abs=1e-4)


def test_one_row_per_question_when_it_fits(byte_enc):
    qs = _questions(byte_enc)
    assert S.count_rows(qs, 128, tree=True) == len(qs) - 1 + 2          # the too-long question needs 2 rows
    assert S.count_rows(qs, 128, tree=False) == sum(len(q) for q in qs)


def test_one_forward_per_batch_through_the_models_own_hidden(tiny, byte_enc, monkeypatch):
    """No extra check pass and no second copy of the blocks: the tree rows are the model's hidden(idx, pos,
    attn_mask) with per-row positions and a (B, 1, T, T) mask, one call per batch."""
    calls = []
    real = tiny.hidden

    def counting(idx, pos=None, attn_mask=None, kv_cache=None):
        calls.append((tuple(idx.shape), pos is not None, None if attn_mask is None else tuple(attn_mask.shape)))
        return real(idx, pos, attn_mask, kv_cache)

    monkeypatch.setattr(tiny, "hidden", counting)
    monkeypatch.setattr(tiny, "forward", lambda *a, **k: pytest.fail("the scorer must not run a full forward"))
    qs = _questions(byte_enc)[:-1]                      # the questions that pack into one row each
    S.loglik_batched(tiny, qs, block_size=128, batch_tokens=10 ** 6, tree=True)
    (shape, has_pos, mask_shape), = calls                # all rows fit one batch: exactly one call
    assert shape == (len(qs), shape[1]) and has_pos and mask_shape == (len(qs), 1, shape[1], shape[1])
    calls.clear()
    S.loglik_batched(tiny, qs, block_size=128, batch_tokens=10 ** 6, tree=False)
    assert len(calls) == 1 and calls[0][1:] == (False, None)     # plain causal rows: the default (fast) path


def test_choice_metrics_length_normalisation():
    m = S.choice_metrics([-10.0, -12.0], gold=1, choice_lens=[5, 20])     # per char: -2.0 vs -0.6
    assert m["acc"] == 0.0 and m["acc_norm"] == 1.0


def test_greedy_generation_stops_at_newline(tiny, byte_enc, monkeypatch):
    stop = S.newline_stop_ids(byte_enc)
    assert ord("\n") in stop and byte_enc.eot_token in stop and ord("a") not in stop
    seen = []

    def fake_generate(prompts, max_new_tokens, temperature=1.0, stop_ids=(), **kw):
        assert temperature == 0 and stop_ids is stop
        seen.append([len(p) for p in prompts])
        return [p + byte_enc.encode_ordinary(" Paris\nQuestion: x") for p in prompts]

    monkeypatch.setattr(tiny, "generate", fake_generate)
    texts = S.generate_greedy(tiny, byte_enc, ["z" * 200 + "Answer:", "Q: a\nA:", "Q: bb\nA:"], 8, stop, batch_size=2)
    assert texts == ["Paris"] * 3
    assert seen == [[7, 8], [128 - 8]]              # shortest prompts batched first; the long one cut from the left


def test_batched_greedy_generation_equals_one_prompt_at_a_time(tiny, byte_enc):
    stop = S.newline_stop_ids(byte_enc)
    prompts = ["English: Hello\nGerman:", "Q: what is two plus two, in words?\nA:", "短い", "x" * 150]
    together = S.generate_greedy(tiny, byte_enc, prompts, [6, 3, 5, 4], stop, batch_size=4)
    alone = [S.generate_greedy(tiny, byte_enc, [p], n, stop)[0] for p, n in zip(prompts, [6, 3, 5, 4])]
    assert together == alone


def test_a_row_never_exceeds_the_context_window():
    reqs = [([1] * 40, [2] * 20), ([1] * 40, [3] * 20), ([1] * 40, [4] * 20)]
    assert S.pack_question(reqs, block_size=100) is not None                  # prefix 40 + 3 branches of 19 = 97 tokens
    assert S.pack_question(reqs, block_size=90) is None                       # each choice fits, the row would not
