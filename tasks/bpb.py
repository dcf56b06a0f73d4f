"""Bits per byte: the language-modelling score that compares models with different tokenizers fairly (PolyLM paper
§5 reports per-language perplexity-style results; per-token loss would flatter a tokenizer with long tokens, per-byte
loss does not). train.py measures it at every evaluation, evaluate.py's `bpb` task on a finished run.

    bpb = sum over predicted tokens of -log2 p(token | context)  /  sum of their UTF-8 bytes

Conventions: held-out text is read as one token stream (documents separated by <|endoftext|>, which counts as one
byte, like the newline that separates lines in the raw files), cut into non-overlapping windows of block_size; every
token except the very first is predicted once.
"""
import math
from contextlib import nullcontext

import numpy as np
import torch
from tqdm import tqdm

from common import LANGS


def token_byte_lengths(enc):
    """UTF-8 length of every token id; special tokens count as one byte (a separator)."""
    lens = np.ones(enc.n_vocab, dtype=np.int64)
    specials = set(enc.special_tokens_set)
    for i in range(enc.n_vocab):
        try:
            b = enc.decode_single_token_bytes(i)
        except KeyError:          # an id with no token (never produced by the encoder)
            continue
        if b.decode("utf-8", "replace") not in specials:
            lens[i] = len(b)
    return lens


@torch.no_grad()
def bits_per_byte(model, streams, byte_lens, block_size, batch_size=8, device="cpu", autocast=None,
                  max_tokens=None, progress=False):
    """{name: {"val_loss": nats/token, "val_bpb": bits/byte, "tokens", "bytes"}} for token streams {name: array}."""
    was_training = model.training
    model.eval()
    results = {}
    for name, stream in tqdm(streams.items(), desc="bpb", disable=not progress, leave=False):
        t = np.asarray(stream[: (max_tokens + 1) if max_tokens else None], dtype=np.int64)
        n = len(t) - 1                                   # number of predicted tokens
        if n <= 0:
            continue
        nwin = math.ceil(n / block_size)
        x = np.zeros((nwin, block_size), dtype=np.int64)
        y = np.full((nwin, block_size), -100, dtype=np.int64)
        for w in range(nwin):
            a, b = w * block_size, min((w + 1) * block_size, n)
            x[w, : b - a], y[w, : b - a] = t[a:b], t[a + 1:b + 1]
        nats = 0.0
        for i in range(0, nwin, batch_size):
            xb = torch.from_numpy(x[i:i + batch_size]).to(device)
            yb = torch.from_numpy(y[i:i + batch_size]).to(device)
            with autocast or nullcontext():
                nats += model.token_nll(xb, yb).float().sum().item()
        nbytes = int(byte_lens[t[1:]].sum())
        results[name] = {"val_loss": nats / n, "val_bpb": nats / math.log(2) / nbytes, "tokens": n, "bytes": nbytes}
    model.train(was_training)
    return results


def format_table(results, langs=LANGS):
    """A per-language Markdown table of val loss and bpb, with the mean over languages."""
    rows = ["| lang | val loss (nats/token) | val bpb | tokens | bytes/token |", "|---|---:|---:|---:|---:|"]
    for lang in langs:
        if lang in results:
            r = results[lang]
            rows.append(f"| {lang} | {r['val_loss']:.3f} | {r['val_bpb']:.3f} | {r['tokens']:,} | "
                        f"{r['bytes'] / r['tokens']:.2f} |")
    shown = [results[l] for l in langs if l in results]
    if shown:
        rows.append(f"| **mean** | {np.mean([r['val_loss'] for r in shown]):.3f} | "
                    f"{np.mean([r['val_bpb'] for r in shown]):.3f} | | |")
    return "\n".join(rows)
