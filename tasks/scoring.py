"""How a language model answers benchmark questions (PolyLM paper §5): log-likelihood scoring and greedy generation.

Log-likelihood multiple choice (XNLI, XCOPA, PAWS-X, XWinograd), as lm-evaluation-harness does it: every choice is a
request (context, continuation); its score is sum log p(continuation tokens | context). Token boundaries follow the
harness exactly (`encode_pair`, from lm_eval/api/model.py TemplateLM): spaces at the end of the context move to the
continuation, the continuation's tokens are those of tokenize(context + continuation) after tokenize(context), an
empty context becomes the end-of-text token, and a too-long request is cut from the left to block_size + 1 tokens.

The naive way runs one forward pass per choice and recomputes the shared context every time. `loglik_batched`
computes the same numbers with far less work:

  1. Shared prefix. The choices of one question share a long token prefix (the question; for XWinograd the sentence
     up to the blank; for PAWS-X the first sentence). It is put once at the start of a row, followed by each choice's
     remaining tokens ("branches"):
                 row:  [ shared prefix | branch 1 | branch 2 | branch 3 ]
        position ids:    0 ... L-1       L ...      L ...      L ...
     A branch token attends to the prefix and to the earlier tokens of its own branch only (a tree-shaped attention
     mask), and gets the position it would have had in its own sequence, so it sees exactly what it would see in the
     naive computation: one forward per question, the prefix computed once.
  2. Batches. Rows of many questions, sorted by length, go through the model together (right-padded; padding is
     masked out).
  3. Only the needed logits. The LM head (n_embd x vocab, the biggest matmul at a 256K vocabulary) is applied only at
     the positions that predict a continuation token, not at every position, through kernels.linear_cross_entropy
     (chunked: the full logits are never materialised).

The tree rows go through the model's own `hidden(idx, pos, attn_mask)` (model.py: position ids per row, and an
explicit boolean mask (B, 1, T, T), True = may attend; the same arguments its left-padded batched generation uses),
so there is no second implementation of the blocks here to drift from model.py: tests/test_tasks_scoring.py checks
that the tree, the rows and the naive scorer give the same numbers.

Imports go one way: tasks/ never imports evaluate.py (bench/bench_scoring.py, a benchmark, may).
"""
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from kernels import linear_cross_entropy


# ----------------------------------------------------------------------------- requests

def encode_pair(enc, context, continuation):
    """(context tokens, continuation tokens) exactly as lm-evaluation-harness TemplateLM._encode_pair / loglikelihood."""
    if context == "":
        return [enc.eot_token], enc.encode_ordinary(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = enc.encode_ordinary(context + continuation)
    ctx = enc.encode_ordinary(context)
    return ctx, whole[len(ctx):]


def _truncate(ctx, cont, block_size):
    """The harness's left truncation: keep the last block_size + 1 tokens of context + continuation."""
    full = (ctx + cont)[-(block_size + 1):]
    n_cont = min(len(cont), len(full) - 1)
    return full, n_cont


# ----------------------------------------------------------------------------- the naive reference

@torch.no_grad()
def loglik_naive(model, requests, block_size, device="cpu", autocast=None):
    """One forward pass per request, the whole sequence, log-softmax over the full vocab: the reference."""
    out = []
    for ctx, cont in requests:
        full, n = _truncate(ctx, cont, block_size)
        x = torch.tensor([full[:-1]], device=device)
        with autocast or nullcontext():
            logits = model(x)[0]
        logp = F.log_softmax(logits.float(), dim=-1)[-n:] if n else logits.new_zeros((0, logits.size(-1)))
        tgt = torch.tensor(full[len(full) - n:], device=device)
        out.append(logp.gather(1, tgt[:, None]).sum().item())
    return out


# ----------------------------------------------------------------------------- the batched, prefix-sharing way

def _common_prefix(seqs):
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = seqs[0][i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


def pack_question(requests, block_size):
    """One row for the choices of one question (the tree layout above), or None when it cannot be packed.

    Returns (tokens, positions, parent, targets): parent[j] = -1 for a prefix token, else the branch id;
    targets = for each request, a list of (row index of the predicting position, target token)."""
    fulls = [c + x for c, x in requests]
    if any(len(f) - 1 > block_size for f in fulls) or any(len(c) == 0 for c, _ in requests):
        return None
    L = _common_prefix(fulls)
    if L + sum(max(0, len(f) - 1 - L) for f in fulls) > block_size:   # the row itself must fit the context
        return None
    tokens, positions, parent = list(fulls[0][:L]), list(range(L)), [-1] * L
    targets = []
    for b, ((ctx, cont), full) in enumerate(zip(requests, fulls)):
        start = len(tokens)
        branch = full[L:len(full) - 1]                  # the inputs after the prefix (the last token is only a target)
        tokens += branch
        positions += range(L, L + len(branch))
        parent += [b] * len(branch)
        where = lambda t: t if t < L else start + (t - L)   # noqa: E731 - row index of input position t
        targets.append([(where(t - 1), full[t]) for t in range(len(ctx), len(full))])
    return tokens, positions, parent, targets


def _tree_mask(parent):
    """Attention mask (T, T), True = may attend: causal, and a branch token sees only the prefix and its own branch."""
    p = torch.tensor(parent)
    causal = torch.ones(len(p), len(p), dtype=torch.bool).tril()
    same = (p[:, None] == p[None, :]) | (p[None, :] == -1)
    return causal & same


def _rows(requests_by_question, block_size, tree):
    """Rows to run: (tokens, positions, parent, [(request index, targets)]), one per question when it packs."""
    rows, k = [], 0
    for reqs in requests_by_question:
        packed = pack_question(reqs, block_size) if tree and len(reqs) > 1 else None
        if packed is not None:
            tokens, positions, parent, targets = packed
            rows.append((tokens, positions, parent, [(k + i, t) for i, t in enumerate(targets)]))
        else:
            for i, (ctx, cont) in enumerate(reqs):
                full, n = _truncate(ctx, cont, block_size)
                T = len(full) - 1
                rows.append((full[:-1], list(range(T)), [-1] * T,
                             [(k + i, [(T - n + j, full[T - n + j + 1]) for j in range(n)])]))
        k += len(reqs)
    return rows, k


@torch.no_grad()
def loglik_batched(model, requests_by_question, block_size, device="cpu", autocast=None, batch_tokens=8192,
                   tree=True, progress=None):
    """Sum log p(continuation | context) for every request of every question, in the flat order of the requests.

    requests_by_question: [[(ctx_tokens, cont_tokens), ...] per question]. batch_tokens bounds B x T per forward."""
    rows, n_req = _rows(requests_by_question, block_size, tree)
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r][0]))   # longest first: little padding per batch
    out = np.zeros(n_req)
    i = 0
    while i < len(order):
        T = len(rows[order[i]][0])
        batch = [rows[r] for r in order[i:i + max(1, batch_tokens // T)]]
        i += len(batch)
        idx = torch.zeros(len(batch), T, dtype=torch.long)
        pos = torch.zeros(len(batch), T, dtype=torch.long)
        sel_b, sel_t, tgt, req = [], [], [], []
        for b, (tokens, positions, parent, targets) in enumerate(batch):
            idx[b, :len(tokens)], pos[b, :len(tokens)] = torch.tensor(tokens), torch.tensor(positions)
            for r, tl in targets:
                for t, y in tl:
                    sel_b.append(b), sel_t.append(t), tgt.append(y), req.append(r)
        with autocast or nullcontext():
            if any(p >= 0 for row in batch for p in row[2]):          # some row shares a prefix: tree mask
                mask = torch.eye(T, dtype=torch.bool).repeat(len(batch), 1, 1)   # padding attends to itself only
                for b, row in enumerate(batch):
                    mask[b, :len(row[0]), :len(row[0])] = _tree_mask(row[2])
                h = model.hidden(idx.to(device), pos=pos.to(device), attn_mask=mask[:, None].to(device))
            else:                                    # plain causal rows: the model's own (faster) forward; right
                h = model.hidden(idx.to(device))     # padding never changes a causal model's earlier positions
            h = h[torch.tensor(sel_b, device=device), torch.tensor(sel_t, device=device)]   # only needed positions
            # -log p(target) through the project's fused LM-head + cross-entropy (never builds all logits: at a
            # 256K vocab, 8K positions x 256K x 4 bytes would be 8 GB)
            nll = linear_cross_entropy(h, model.wte.weight, torch.tensor(tgt, device=device), reduction="none")
        ll = -nll.float().cpu().numpy()
        np.add.at(out, np.array(req, dtype=np.int64), ll)
        if progress is not None:
            progress.update(len(batch))
    return out.tolist()


def count_rows(requests_by_question, block_size, tree=True):
    return len(_rows(requests_by_question, block_size, tree)[0])


# ----------------------------------------------------------------------------- multiple-choice accuracy

def choice_metrics(lls, gold, choice_lens):
    """acc (argmax of summed log-likelihood) and acc_norm (argmax of log-likelihood per character of the choice
    string, lm-evaluation-harness's length normalisation), each 0/1."""
    lls = np.asarray(lls)
    pred = int(np.argmax(lls))
    pred_norm = int(np.argmax(lls / np.asarray(choice_lens, dtype=np.float64)))
    return {"acc": float(pred == gold), "acc_norm": float(pred_norm == gold), "pred": pred}


# ----------------------------------------------------------------------------- greedy generation

def newline_stop_ids(enc):
    """Token ids that contain a newline (generation stops there) plus the special tokens (end-of-text, ...)."""
    ids = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    for i in range(enc.n_vocab):
        try:
            if b"\n" in enc.decode_single_token_bytes(i):
                ids.add(i)
        except KeyError:
            continue
    return frozenset(ids)


@torch.no_grad()
def generate_greedy(model, enc, prompts, max_new_tokens, stop_ids, device="cpu", autocast=None, batch_size=16,
                    progress=None):
    """Greedy continuations of text prompts, each cut at its first newline, in the order given.

    max_new_tokens: one number or one per prompt. Each prompt is cut from the left so that prompt + answer fit the
    context. Prompts of similar length run together as one left-padded batch through model.generate (with its KV
    cache); a row gives the same tokens as it would alone, and stops at its first newline or special token."""
    block = model.cfg.block_size
    if isinstance(max_new_tokens, int):
        max_new_tokens = [max_new_tokens] * len(prompts)
    limits = [max(1, min(n, block // 2)) for n in max_new_tokens]
    ids = [enc.encode_ordinary(p)[-(block - n):] for p, n in zip(prompts, limits)]
    specials = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    texts = [""] * len(ids)
    for k in range(0, len(order), batch_size):
        group = order[k:k + batch_size]
        with autocast or nullcontext():
            outs = model.generate([ids[i] for i in group], max(limits[i] for i in group), temperature=0,
                                  stop_ids=stop_ids)
        for i, out in zip(group, outs):
            new = [t for t in out[len(ids[i]):][:limits[i]] if t not in specials]
            texts[i] = enc.decode(new).split("\n")[0].strip()
        if progress is not None:
            progress.update(len(group))
    return texts
