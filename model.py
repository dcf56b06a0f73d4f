"""The PolyLM architecture (PolyLM paper, arXiv 2307.06018, §2.3 "Model", Table 1).

PolyLM is a decoder-only Transformer in the GPT-2 mould, trained with Megatron-LM:
  - pre-LayerNorm blocks (LayerNorm *before* attention and MLP, plus a final LayerNorm), with biases everywhere,
  - GeLU MLP of width 4 x d_model,
  - learned absolute position embeddings (context 2,048),
  - input and output embeddings tied (the LM head is the token-embedding matrix),
  - a 256,000-token vocabulary (bpe.py), which makes the embedding ~30% of the 1.7B model,
  - normal init with std 0.006 (Table 1); as in Megatron-LM, the two output projections of each block (attention out,
    MLP down) use std 0.006 / sqrt(2 * n_layer) so the residual stream does not grow with depth.

Presets: `polylm-1.7b` (24 layers, d=2048, 16 heads) and `polylm-13b` (40 layers, d=5120, 40 heads) reproduce the
paper's parameter counts exactly (`python model.py` prints them, computed on the meta device, no memory used);
`toy` is the laptop model used by `python train.py`.

The loss goes through `kernels.linear_cross_entropy`, which at a 256K vocabulary never materialises the full logits.

Generation (`generate`, `generate_stream`; used by chat.py, sft.py, evaluate.py) keeps a KV cache: each layer's keys
and values (KVCache, one LayerKV per layer, passed through `hidden` down to attention), so a new token costs one
position, not the whole prefix. It samples with temperature, top-k, top-p, repetition/presence/frequency penalties and
a seed, stops on token ids or strings, and batches prompts of different lengths by left padding (positions and masks
per row, so a row in a batch gives exactly the tokens it gives alone). Speed: docs/BENCHMARKS.md (generate section).
"""
import dataclasses
import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from kernels import linear_cross_entropy
from kernels.compiled import maybe_compile


@dataclasses.dataclass
class ModelConfig:
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 256        # context length (learned positions exist only up to here)
    vocab_size: int = 8192       # must equal the tokenizer's n_vocab
    dropout: float = 0.0
    init_std: float = 0.006      # PolyLM Table 1


PRESETS = {
    "toy": dict(n_layer=4, n_head=4, n_embd=256, block_size=256, vocab_size=8192),
    "polylm-1.7b": dict(n_layer=24, n_head=16, n_embd=2048, block_size=2048, vocab_size=256_000),
    "polylm-13b": dict(n_layer=40, n_head=40, n_embd=5120, block_size=2048, vocab_size=256_000),
}


def preset(name, **overrides):
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)   # q, k, v in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, kv=None, attn_mask=None):
        """kv: this layer's LayerKV during generation (keys/values of earlier tokens, extended here); attn_mask:
        (B or 1, 1, T, S) bool, True = may attend. Without either: plain causal self-attention over x."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if kv is not None:
            k, v = kv.append(k, v)       # keys/values of every token so far: (B, n_head, past + T, head_dim)
        # SDPA picks flash / memory-efficient attention on CUDA and a fused kernel on CPU. One new token with a cache
        # may see everything cached, so it needs no mask at all.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and T > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))   # exact (erf) GeLU, as Megatron-LM


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x, kv=None, attn_mask=None):
        x = x + self.attn(self.ln_1(x), kv, attn_mask)   # pre-LN: normalise the branch input, add to the raw residual
        return x + self.mlp(self.ln_2(x))


class PolyLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)     # token embeddings == LM head (tied)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)     # learned absolute positions
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.activation_checkpointing = False   # train.py sets it (activation_checkpointing=True)
        self.apply(self._init_weights)
        out_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=out_std)

    def _init_weights(self, m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=self.cfg.init_std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def hidden(self, idx, pos=None, attn_mask=None, kv_cache=None):
        """Token ids (B, T) -> final hidden states (B, T, n_embd), after the last LayerNorm.

        Generation also passes pos: position ids (B, T) (left-padded rows count from their first real token; default
        0..T-1, after the cached tokens when there is a cache), attn_mask: (B, 1, T, past + T) bool, True = may attend
        (default causal), and kv_cache: a KVCache that this call extends with the keys and values of idx."""
        T = idx.size(1)
        past = kv_cache.length if kv_cache is not None else 0
        if past + T > self.cfg.block_size:
            raise ValueError(f"sequence length {past + T} exceeds the model's context block_size={self.cfg.block_size}")
        if pos is None:
            pos = torch.arange(past, past + T, device=idx.device)
        if attn_mask is None and past and T > 1:     # new tokens see every cached one, and each other causally
            attn_mask = torch.ones(T, past + T, dtype=torch.bool, device=idx.device).tril(past)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.h):
            kv = kv_cache.layers[i] if kv_cache is not None else None
            if self.activation_checkpointing and self.training:
                # keep only each block's input; recompute its inside during backward (less memory, ~30% more time)
                x = torch.utils.checkpoint.checkpoint(block, x, kv, attn_mask, use_reentrant=False)
            else:
                x = block(x, kv, attn_mask)
        return self.ln_f(x)

    def compile_blocks(self):
        """torch.compile each Transformer block in place (train.py --compile=True), as torchtitan does.

        Inside a block Inductor fuses what eager PyTorch runs as separate memory passes: the c_fc bias + GeLU, the
        residual add + the next LayerNorm, the q/k/v split and transposes. Blocks are identical, so the compiled code
        is generated once and reused by every layer (compile time does not grow with depth). The embedding and the
        loss stay eager: the loss is kernels.linear_cross_entropy, already fused by hand. Where compile is not
        available (see kernels.compiled.maybe_compile) the blocks stay eager, with a logged warning."""
        for block in self.h:
            maybe_compile(block)
        return self

    def forward(self, idx, targets=None, ignore_index=-100, kernel="auto", reduction="mean"):
        """Without targets: logits (B, T, vocab). With targets: the cross-entropy over the non-ignored targets, their
        mean or (reduction="sum") their sum (logits never built)."""
        x = self.hidden(idx)
        if targets is None:
            return F.linear(x, self.wte.weight)
        return linear_cross_entropy(x, self.wte.weight, targets, ignore_index=ignore_index, impl=kernel,
                                    reduction=reduction)

    def token_nll(self, idx, targets, ignore_index=-100):
        """Per-token negative log-likelihood in nats (B, T); 0 where targets == ignore_index."""
        x = self.hidden(idx)
        return linear_cross_entropy(x, self.wte.weight, targets, ignore_index=ignore_index, reduction="none")

    def num_params(self, non_embedding=False):
        n = sum(p.numel() for p in self.parameters())   # the tied head is counted once, as in the paper
        return n - self.wpe.weight.numel() - self.wte.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len=None):
        """Training FLOPs per token (forward + backward), the PaLM/nanoGPT estimate:
            6 * N                      every weight is used in one multiply-add forward (2 FLOPs) and two backward (4);
                                       N excludes the position table (a lookup, no matmul) but includes the tied
                                       embedding because the LM head multiplies by it,
          + 12 * n_layer * T * d       attention scores Q.K^T and weights.V: 2 matmuls x 2 FLOPs x 3 (fwd+bwd),
                                       with T the sequence length (full T, not the causal half, as is customary).
        """
        T = seq_len or self.cfg.block_size
        n = self.num_params() - self.wpe.weight.numel()
        return 6 * n + 12 * self.cfg.n_layer * T * self.cfg.n_embd

    def optimizer_groups(self, weight_decay):
        """Weight decay on matrices (attention, MLP, token and position embeddings), as Megatron-LM does;
        none on biases and LayerNorm gains, which only shift or scale and gain nothing from shrinking."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ------------------------------------------------------------------------- generation (chat.py, sft.py, evaluate)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                 stop_ids=(), stop_strings=(), decode=None, seed=None, generator=None, attention_mask=None,
                 pad_id=None, use_cache=True, presence_penalty=0.0, frequency_penalty=0.0):
        """Continue token sequences; the options are described in generate_stream.

        idx a (B, T) tensor -> a (B, T + n) tensor: the input, then n <= max_new_tokens new columns (fewer when every
        row stopped). A row keeps its stop token and is filled with pad_id after it.
        idx a list of token-id lists of any lengths -> a list of lists, each prompt + its new tokens (stop token kept,
        no filler); the prompts run as one left-padded batch."""
        as_lists = not torch.is_tensor(idx)
        pad = _pad_id(pad_id, stop_ids)
        if as_lists:
            lengths = [len(p) for p in idx]
            idx, attention_mask = left_pad(idx, pad, device=self.wte.weight.device)
        B, T = idx.shape
        n_new = torch.zeros(B, dtype=torch.long, device=idx.device)
        running = torch.ones(B, dtype=torch.bool, device=idx.device)
        cols = []
        for tok, done in self.generate_stream(
                idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                repetition_penalty=repetition_penalty, stop_ids=stop_ids, stop_strings=stop_strings, decode=decode,
                seed=seed, generator=generator, attention_mask=attention_mask, pad_id=pad, use_cache=use_cache,
                presence_penalty=presence_penalty, frequency_penalty=frequency_penalty):
            cols.append(tok)
            n_new += running
            running = ~done
        out = torch.cat([idx, torch.stack(cols, 1)], 1) if cols else idx
        if not as_lists:
            return out
        return [row[T - n:T + int(k)].tolist() for row, n, k in zip(out, lengths, n_new)]

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0,
                        stop_ids=(), stop_strings=(), decode=None, seed=None, generator=None, attention_mask=None,
                        pad_id=None, use_cache=True, presence_penalty=0.0, frequency_penalty=0.0):
        """Yield (tokens (B,), done (B,) bool) once per new position: the streaming form of generate.

        idx: prompt ids (B, T). attention_mask (B, T), 1 = token, 0 = padding, allows LEFT-padded rows: positions
        then count from each row's first real token and padding is never attended to, so a row gives the same
        tokens as it would alone. A prompt longer than the context keeps its last block_size tokens.
        The next token comes from the float32 logits of the last position, changed in this order:
          repetition_penalty   CTRL / Hugging Face: a token already in the row (prompt or new) has its logit divided
                               by it when positive, multiplied when negative (1.0 = off);
          presence_penalty,    OpenAI: minus presence_penalty for each token generated at least once, minus
          frequency_penalty    frequency_penalty x the times it was generated (0 = off);
          temperature          logits / temperature; <= 0 means greedy (argmax; top_k and top_p then do nothing);
          top_k                keep the k most likely tokens (None or 0 = all);
          top_p                nucleus: keep the fewest most likely tokens whose probabilities sum to >= top_p;
          seed, generator      a torch.Generator makes sampling reproducible (seed builds one; generator wins).
        Stopping: a row is done after sampling a token of stop_ids (that token is yielded) or once its new text
        contains one of stop_strings (checked on decode(ids) of its last tokens; decode, e.g. enc.decode, is then
        required). Done rows yield pad_id (default stop_ids[0], else 0); the stream ends when all rows are done or
        after max_new_tokens. Cutting the text at a stop string is the caller's business (chat.py does it).
        use_cache: keep each layer's keys and values (KVCache), so a step runs one token through the model instead
        of the whole prefix; the tokens are the same as with use_cache=False (tests/test_generate.py). Positions are
        learned and absolute, so once prompt + new tokens pass block_size the window must slide and every step
        recomputes the last block_size tokens, exactly as without a cache."""
        B, T = idx.shape
        if max_new_tokens <= 0 or B == 0:
            return
        dev, V, block = idx.device, self.cfg.vocab_size, self.cfg.block_size
        stop_ids = tuple(int(s) for s in stop_ids)
        pad = _pad_id(pad_id, stop_ids)
        stop_strings = tuple(s for s in stop_strings if s)
        if stop_strings and decode is None:
            raise ValueError("stop_strings need decode= (a function from token ids to text, e.g. enc.decode)")
        mask = None
        if attention_mask is not None:
            mask = attention_mask.to(dev).bool()
            if mask.shape != idx.shape:
                raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, idx {tuple(idx.shape)}: they must match")
            if (mask[:, 1:] < mask[:, :-1]).any() or not mask[:, -1].all():
                raise ValueError("attention_mask must be left padding: in every row 0s, then at least one 1")
            if mask.all():
                mask = None                      # no padding: the plain (faster) path
        if generator is None and seed is not None:
            generator = torch.Generator(device=dev).manual_seed(int(seed))
        seen = counts = None
        if repetition_penalty != 1.0:           # which tokens each row holds (padding excluded)
            real = mask if mask is not None else torch.ones_like(idx, dtype=torch.bool)
            seen = torch.zeros(B, V, device=dev).scatter_add_(1, idx, real.float()) > 0
        if presence_penalty or frequency_penalty:
            counts = torch.zeros(B, V, device=dev)
        stop_t = torch.tensor(stop_ids, dtype=torch.long, device=dev) if stop_ids else None
        tail = max((len(s.encode("utf-8")) for s in stop_strings), default=0)   # a token holds >= 1 byte
        new_ids = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool, device=dev)

        cache = KVCache(self.cfg.n_layer, min(block, min(T, block) + max_new_tokens - 1)) if use_cache else None
        logits = self._window_logits(idx, mask, cache)           # the prompt (prefills the cache)
        ids = idx
        for step in range(max_new_tokens):
            tok = sample_next(logits, temperature, top_k, top_p, repetition_penalty, seen, presence_penalty,
                              frequency_penalty, counts, generator)
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            finished = torch.isin(tok, stop_t) & ~done if stop_t is not None else torch.zeros_like(done)
            if stop_strings:
                for b, t in enumerate(tok.tolist()):
                    if not done[b]:
                        new_ids[b].append(t)
                        text = decode(new_ids[b][-tail:])
                        if any(s in text for s in stop_strings):
                            finished[b] = True
            if seen is not None:
                seen[torch.arange(B, device=dev), tok] = True
            if counts is not None:
                counts[torch.arange(B, device=dev), tok] += (~done).float()
            done = done | finished
            yield tok, done
            if done.all() or step == max_new_tokens - 1:
                return
            ids = torch.cat([ids, tok[:, None]], 1)
            if mask is not None:
                mask = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=dev)], 1)
            if cache is not None and cache.length < cache.max_len:
                pos = am = None                  # one token that may see the whole cache (no padding)
                if mask is not None:             # its position = real tokens before it; padding stays invisible
                    window = mask[:, -(cache.length + 1):]
                    pos, am = window.sum(1, keepdim=True) - 1, window[:, None, None, :]
                logits = F.linear(self.hidden(tok[:, None], pos, am, cache)[:, -1], self.wte.weight).float()
            else:                                # no cache, or past the context: recompute the last block_size
                cache = None
                logits = self._window_logits(ids, mask)

    def _window_logits(self, ids, mask=None, cache=None):
        """Next-token logits (B, V) after the last block_size tokens of ids (and fills cache with them)."""
        ids = ids[:, -self.cfg.block_size:]
        pos = am = None
        if mask is not None:
            mask = mask[:, -self.cfg.block_size:]
            T = ids.size(1)
            pos = (mask.cumsum(1) - 1).clamp(min=0)
            causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
            # padding sees only itself (a softmax row must not be empty) and nobody sees padding
            am = ((causal & mask[:, None, :]) | torch.eye(T, dtype=torch.bool, device=ids.device))[:, None]
        return F.linear(self.hidden(ids, pos, am, cache)[:, -1], self.wte.weight).float()


def _pad_id(pad_id, stop_ids):
    return int(pad_id) if pad_id is not None else (int(next(iter(stop_ids))) if len(stop_ids) else 0)


def left_pad(seqs, pad_id=0, device="cpu"):
    """Token-id lists of any lengths -> (ids (B, T_max), attention_mask (B, T_max)), padded on the left."""
    if not len(seqs) or any(len(s) == 0 for s in seqs):
        raise ValueError("every prompt needs at least one token")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, T - len(s):] = 1
    return ids.to(device), mask.to(device)


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, repetition_penalty=1.0, seen=None,
                presence_penalty=0.0, frequency_penalty=0.0, counts=None, generator=None):
    """One token per row (B,) from logits (B, V); the options are those of PolyLM.generate_stream."""
    logits = logits.float()
    if seen is not None and repetition_penalty != 1.0:
        logits = torch.where(seen, torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty),
                             logits)
    if counts is not None:
        logits = logits - frequency_penalty * counts - presence_penalty * (counts > 0).float()
    if temperature is None or temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(int(top_k), logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = F.softmax(sorted_logits, -1)
        outside = probs.cumsum(-1) - probs >= top_p          # the nucleus was already full before this token
        outside[:, 0] = False                                # always keep the most likely token
        logits = logits.scatter(1, order, sorted_logits.masked_fill(outside, -float("inf")))
    return torch.multinomial(F.softmax(logits, -1), 1, generator=generator).squeeze(1)


class LayerKV:
    """One layer's cache: keys and values (B, n_head, max_len, head_dim), the first `length` positions filled."""

    def __init__(self, max_len):
        self.max_len, self.length, self.k, self.v = max_len, 0, None, None

    def append(self, k, v):
        """Store the keys/values (B, n_head, T, head_dim) of T new tokens; return those of every token so far."""
        end = self.length + k.size(2)
        if end > self.max_len:
            raise ValueError(f"the KV cache holds {self.max_len} positions, {end} are needed")
        if self.k is None:     # allocated on first use, in the dtype attention produces (bf16 under autocast)
            B, H, _, D = k.shape
            self.k, self.v = k.new_empty(B, H, self.max_len, D), v.new_empty(B, H, self.max_len, D)
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """Keys and values of the tokens seen so far, one LayerKV per layer; model.hidden(..., kv_cache=) extends it."""

    def __init__(self, n_layer, max_len):
        self.max_len = max_len
        self.layers = [LayerKV(max_len) for _ in range(n_layer)]

    @property
    def length(self):
        return self.layers[0].length


# ----------------------------------------------------------------------------- reading a run directory
# A run dir (train.py writes it) holds config.json {"model": {...}, "train": {...}, "tokenizer_hash": ...},
# tokenizer/ and ckpt/step_XXXXXX/{model.pt, optim.pt | dcp/, state.json}, with ckpt/latest naming the newest one.
# state.json lists every file of its checkpoint with its size and CRC-32 (runtime.save_checkpoint), so a truncated or
# damaged checkpoint is found before torch.load trips over it, and the previous one is used instead.

class CheckpointError(ValueError):
    """A checkpoint or run dir that cannot be used: the message names it and says what to do."""


def verify_checkpoint(path, full=True):
    """Raise CheckpointError unless every file state.json lists is there with its size (and, if full, its CRC-32).
    Checkpoints written before state.json listed files pass on their state.json alone, weights-only ones (model.pt
    without state.json, as export.py --import writes) on their model.pt."""
    import zlib
    path = Path(path)
    if not (path / "state.json").exists() and (path / "model.pt").is_file():
        return {}                           # a weights-only checkpoint (export.py --import, hand-made): nothing to check
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: no readable state.json ({e.__class__.__name__})") from None
    for name, meta in state.get("files", {}).items():
        f = path / name
        if not f.is_file() or f.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"{f}: missing or of the wrong size (a truncated checkpoint)")
        if full:
            crc = 0
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    crc = zlib.crc32(chunk, crc)
            if crc != meta["crc32"]:
                raise CheckpointError(f"{f}: CRC-32 mismatch (damaged checkpoint)")
    if "files" not in state and not ((path / "model.pt").exists() or (path / "dcp").is_dir()):
        raise CheckpointError(f"{path}: no model.pt and no dcp/")
    return state


def latest_checkpoint(run_dir, verify=True, warn=None):
    """Path of the newest checkpoint of a run dir that is complete (and, with verify, whose files match their
    CRC-32s), or None. A damaged newest checkpoint is reported through warn(message) and an older one is used."""
    ckpt = Path(run_dir) / "ckpt"
    if not ckpt.is_dir():
        return None
    named = ckpt / "latest"
    cands = sorted((p for p in ckpt.glob("step_*") if p.is_dir()), reverse=True)
    if named.exists():
        first = ckpt / named.read_text().strip()
        cands = [first] + [p for p in cands if p != first]
    for path in cands:
        try:
            verify_checkpoint(path, full=verify)
            return path
        except CheckpointError as e:
            (warn or (lambda m: warnings.warn(m, stacklevel=3)))(f"{e}; using an older checkpoint")
    return None


def run_model_config(run_dir):
    """The ModelConfig of a run dir (config.json), or a one-line error."""
    cfg_path = Path(run_dir) / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} not found: --ckpt must be a run dir written by train.py or sft.py")
    try:
        return ModelConfig(**json.loads(cfg_path.read_text())["model"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{cfg_path} is not a train.py config ({e.__class__.__name__}: {e})") from None


def load_model(run_dir, device="cpu", checkpoint=None):
    """The trained model of a run dir (newest good checkpoint unless one is given), in eval mode."""
    run_dir = Path(run_dir)
    cfg = run_model_config(run_dir)
    path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"{run_dir}/ckpt/ holds no complete checkpoint; train first (python train.py)")
    if checkpoint:
        verify_checkpoint(path)
    if not (path / "model.pt").exists():
        raise CheckpointError(f"{path} is a sharded FSDP checkpoint without model.pt; write one with "
                              f"`python train.py --consolidate_ckpt={path}`")
    model = PolyLM(cfg)
    try:
        model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}/model.pt cannot be loaded ({str(e).splitlines()[0][:160]})") from None
    return model.to(device).eval()


def load_tokenizer(run_dir):
    """The run dir's tokenizer (bpe.load), checked against the tokenizer hash its config.json recorded: a run dir
    holding another tokenizer of the same size would otherwise give garbage text without an error."""
    import bpe
    run_dir = Path(run_dir)
    tok_dir = run_dir / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        raise FileNotFoundError(f"{tok_dir}/tokenizer.json not found: --ckpt must be a complete run dir")
    want = json.loads((run_dir / "config.json").read_text()).get("tokenizer_hash")
    have = bpe.tokenizer_hash(tok_dir)
    if want and have != want:
        raise CheckpointError(f"{tok_dir} is tokenizer {have[:12]}…, but {run_dir} was trained with {want[:12]}…: put "
                              f"the run's own tokenizer back in {tok_dir}")
    return bpe.load(tok_dir)


def count_params(cfg: ModelConfig) -> int:
    """Parameter count of a config without allocating memory (meta device)."""
    with torch.device("meta"):
        return PolyLM(cfg).num_params()


def main(argv=None):
    print(f"{'preset':<12} {'layers':>6} {'d_model':>7} {'heads':>5} {'ctx':>5} {'vocab':>8} {'parameters':>15}")
    for name in PRESETS:
        cfg = preset(name)
        print(f"{name:<12} {cfg.n_layer:>6} {cfg.n_embd:>7} {cfg.n_head:>5} {cfg.block_size:>5} "
              f"{cfg.vocab_size:>8} {count_params(cfg):>15,}")


if __name__ == "__main__":
    main()
