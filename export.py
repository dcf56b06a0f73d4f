"""Release a PolyLM checkpoint as a plain Hugging Face GPT-2 model, and bring one back (PolyLM paper, arXiv 2307.06018).

PolyLM's own released checkpoints needed `trust_remote_code`, and users reported failing tokenizer conversions and
evaluation runs. Our architecture *is* GPT-2's (pre-LN, GeLU, learned positions, biases everywhere, tied embeddings),
so a run dir maps one-to-one onto `GPT2LMHeadModel` and a byte-level BPE `tokenizer.json` that every tool loads
without remote code (transformers, vLLM, lm-evaluation-harness, llama.cpp's converter, ...), with the chat template of
PolyLM-MultiAlpaca (§6) in tokenizer_config.json, so `apply_chat_template` / `vllm serve` prompt like chat.py:

    python export.py --ckpt out/toy-sft --out out/toy-hf                      # run dir -> HF dir (model.pt or FSDP dcp/)
    python export.py --ckpt out/big --out hf/big --dtype=bfloat16 --max_shard_size=5GB   # sharded bf16 safetensors
    python export.py --import out/toy-hf --out out/toy-back                    # HF GPT-2 dir -> run dir (sft.py --init_from)

What maps to what (tests/test_export.py checks logits within 1e-4 and token ids on all 18 languages):
  - weights: the names are GPT-2's already (nanoGPT kept them); HF prefixes `transformer.` and stores the four
    projections as Conv1D, weight (in, out), so our nn.Linear weights (out, in) are transposed. c_attn's output is
    q|k|v in both. The LM head is the token embedding in both (no bias), so it is written once. Above max_shard_size
    the weights are split HF's way: model-0000k-of-0000n.safetensors + model.safetensors.index.json (weight_map,
    metadata.total_size). Written one shard at a time from a memory-mapped model.pt (or per-shard reads of an FSDP
    dcp/): memory holds one converted shard (<= max_shard_size, or one bigger tensor), not a copy of the model.
  - activation: model.py calls F.gelu, the exact erf GeLU; in HF that is "gelu". GPT-2's own default, "gelu_new", is
    the tanh approximation (up to 5e-4 off per activation): the test shows it would miss the 1e-4 bar.
  - LayerNorm eps 1e-5 (torch's default, ours), scale 1/sqrt(head_dim) (scale_attn_weights), positions = block_size.
  - tokenizer: tiktoken ranks -> HF BPE merges. For every token of rank r > 255, every split into two tokens (l, r')
    becomes a merge, ordered by r, then l, then r' (the standard tiktoken -> HF conversion), so HF's "lowest merge
    first" replays tiktoken's "lowest-rank merged bytes first". Pre-tokenizer: Split(our regex, isolated) then
    ByteLevel(no regex); `ignore_merges` mirrors tiktoken's "a whole pre-token that is a token stays whole".
    The only construct where the two can differ: one pre-token whose cheapest merge can be made at two places with
    *different* splits of the same token (tiktoken takes the leftmost, HF the split listed first). It occurs in none
    of the 117K distinct pre-tokens of data/sample, nor for any of the 1.1M Unicode code points
    (docs/BENCHMARKS.md (export section)); `export` re-checks a probe set and refuses to write a tokenizer that disagrees.
  - chat: tokenizer_config.json's chat_template is chat_template.chat_template_jinja(), generated from the one template
    definition (chat_template.py), so apply_chat_template(..., tokenize=False) == chat_template.format_prompt(messages).
  - special tokens in text. Our own code encodes every text with encode_ordinary (a typed "<|user|>" stays text).
    HF has one switch for both directions, `split_special_tokens`, and transformers 5.23 applies it to the rendered
    chat too: True keeps literal marker text as text in tok(text), but then apply_chat_template also spells the
    template's own markers as text, even with sanitize_control_tokens=True (and so would an engine that renders the
    template to a string and tokenizes it with the tokenizer's defaults, as vLLM's chat endpoint does; not tested
    here). No static setting gives both, so the export writes split_special_tokens=False (the markers work
    everywhere), and the exact equivalents of our encoders are two call options, both tested:
        tok(text, split_special_tokens=True)                          == enc.encode_ordinary(text)
        tok.apply_chat_template(msgs, sanitize_control_tokens=True)   == chat_template.encode_messages(enc, msgs)
    --split_special_tokens=True writes the other default (text-only use: scoring, classification).
  - output safety: --out is built under a temporary name and renamed into place (bpe.output_dir); an existing --out
    is replaced only if export.py wrote it (or --import, for a run dir it imported), else refused unless
    --overwrite=True, and the old one is deleted only once the new one is complete.
"""
import dataclasses
import json
import os
import re
import sys
import warnings
from pathlib import Path

import torch

import bpe
import chat_template
from config import run_cli
from model import ModelConfig, PolyLM, latest_checkpoint, load_tokenizer

CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")  # HF: (in, out)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""  # ByteLevel(use_regex)
TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh", "gelu_python_tanh")
DTYPES = ("float32", "bfloat16", "float16")
PROBES = [  # edge cases the export re-checks besides the training text (emoji, digits, mixed scripts, whitespace)
    "Hello, world! It's 2023-07-12, 3.14159 ≈ π; ٣٤٥ ๓๔๕ ²³ ①② 〇",
    "👍🏽 👨‍👩‍👧 🇹🇭🇯🇵 emoji🙂text   \t\n\n\r\n  trailing  ",
    "iPhone手机 ราคา 35,900 บาท, カタカナーとひらがな, 한국어 텍스트, العربية مع تشكيل: مُحَمَّد",
    "Привет мир Γειά σου שָׁלוֹם हिन्दी Tiếng Việt İstanbul ıi ß ﬁ e\u0301 \u00a0\u3000\u200b\ufeff",
    "aaaaaaaaaa ---------- ========== !!!!!!!!!! 哈哈哈哈哈哈哈哈 ๆๆๆๆๆ 0000000000 \x00\x7f",
    "<|endoftext|>special<|pad|> tokens <|user|>hi<|assistant|>",
]
EXPORT_FILES = {"config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
IMPORT_FILES = {"config.json", "tokenizer", "ckpt"}


@dataclasses.dataclass
class ExportConfig:
    ckpt: str = "out/toy"           # run dir to export (train.py / sft.py output)
    out: str = ""                   # output dir: the HF model (export) or the run dir (import)
    import_from: str = ""           # HF GPT-2 dir to import instead (also spelled --import DIR)
    checkpoint: str = ""            # export this checkpoint dir (ckpt/step_X) instead of the newest
    dtype: str = "float32"          # weights dtype in the safetensors: float32 | bfloat16 | float16
    max_shard_size: str = "5GB"     # bigger weights are split into model-0000k-of-0000n.safetensors + index (5GB = 5e9 bytes, 5GiB = 5*2**30)
    split_special_tokens: bool = False  # tokenizer_config.json default; True: tok(text) keeps "<|user|>" as text, but chat templates then lose their markers
    overwrite: bool = False         # replace --out even if export.py did not write it (deleted only once the new one is complete)
    verify: bool = True             # re-tokenize probe texts with the written tokenizer.json (needs `tokenizers`)


def parse_size(size):
    """Bytes of a size like HF's max_shard_size: an int, or "5GB" (10**9), "5GiB" (2**30), "200MB", "64KiB", "100"."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", str(size), re.I)
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"max_shard_size={size!r}: write a positive size like 5GB, 500MB, 2GiB or a number of bytes")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index(m.group(2).upper() or " "))


def _names(d):
    return {p.name for p in Path(d).iterdir()}


def _json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_export_dir(d):
    """True if `d` holds only files export() writes, and its config.json carries export's "polylm" provenance."""
    names = _names(d)
    return all(n in EXPORT_FILES or SHARD_NAME.fullmatch(n) for n in names) and \
        "polylm" in (_json(Path(d) / "config.json") or {})


def is_import_dir(d):
    """True if `d` is a run dir import_hf() wrote: config.json (with "imported_from"), tokenizer/, ckpt/ only."""
    return _names(d) <= IMPORT_FILES and "imported_from" in (_json(Path(d) / "config.json") or {})


def _check_not_inside(out, src, what):
    """Refuse an --out that is the source or contains it: replacing it would delete what is being read."""
    out_r, src_r = Path(out).resolve(), Path(src).resolve()
    if out_r == src_r or out_r in src_r.parents:
        raise ValueError(f"--out {out} is, or contains, the {what} {src}; choose an output directory outside it")


# ----------------------------------------------------------------------------- weights: ours <-> HF GPT-2

def model_shapes(cfg: ModelConfig):
    """{name: meta tensor} of PolyLM(cfg)'s state dict: names, shapes, dtypes, no memory."""
    with torch.device("meta"):
        return PolyLM(cfg).state_dict()


def check_weights(shapes, cfg: ModelConfig, where):
    """Raise ValueError unless `shapes` ({name: shape}) are exactly PolyLM(cfg)'s keys and shapes."""
    want = {k: tuple(v.shape) for k, v in model_shapes(cfg).items()}
    got = {k: tuple(v) for k, v in shapes.items()}
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    wrong = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    if missing or extra or wrong:
        parts = [f"missing {missing[:3]}" * bool(missing), f"unexpected {extra[:3]}" * bool(extra),
                 ", ".join(f"{k} is {got[k]}, not {want[k]}" for k in wrong[:3])]
        raise ValueError(f"{where} does not fit the model config ({'; '.join(p for p in parts if p)}): a checkpoint "
                         f"of another model, or a broken run dir")


def read_checkpoint(path, cfg: ModelConfig, keys=None):
    """Model tensors of a checkpoint dir (all, or only `keys`): model.pt memory-mapped (a tensor's bytes are read when
    it is used), or the sharded FSDP checkpoint (dcp/) read in one process, only the requested keys."""
    path = Path(path)
    if (path / "model.pt").exists():
        try:
            sd = torch.load(path / "model.pt", map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:                                   # an old (non-zip) torch.save file cannot be mapped
            sd = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
        return sd if keys is None else {k: sd[k] for k in keys}
    if (path / "dcp").is_dir():
        import torch.distributed.checkpoint as dcp
        shapes = model_shapes(cfg)
        sd = {"model": {k: torch.empty(shapes[k].shape, dtype=shapes[k].dtype) for k in (keys or shapes)}}
        with warnings.catch_warnings():                            # "assuming ... a single process": yes, we are
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(sd, checkpoint_id=path / "dcp", no_dist=True)  # reads only these model keys, not the optimizer
        return sd["model"]
    raise FileNotFoundError(f"{path} has neither model.pt nor dcp/: not a checkpoint written by train.py")


def checkpoint_shapes(path, cfg: ModelConfig):
    """{name: shape} of a checkpoint's model tensors, without reading them (model.pt mapped, dcp/ metadata)."""
    path = Path(path)
    if not (path / "model.pt").exists() and (path / "dcp").is_dir():
        from torch.distributed.checkpoint import FileSystemReader
        meta = FileSystemReader(str(path / "dcp")).read_metadata().state_dict_metadata
        return {k[len("model."):]: tuple(m.size) for k, m in meta.items() if k.startswith("model.")
                and hasattr(m, "size")}
    return {k: tuple(v.shape) for k, v in read_checkpoint(path, cfg).items()}


def _contiguous(v, dtype):
    """v as a contiguous tensor of `dtype`: v itself when it already is one, else ONE copy (cast and layout)."""
    if v.dtype == dtype and v.is_contiguous():
        return v
    return torch.empty(v.shape, dtype=dtype).copy_(v)


def _to_hf_tensor(k, v, dtype=None):
    """One of our tensors as HF stores it: Conv1D weights transposed, cast to dtype (default: as it is)."""
    return _contiguous(v.t() if k.endswith(CONV1D) else v, dtype or v.dtype)


def to_hf(sd, dtype=None):
    """Our state dict -> GPT2LMHeadModel's (no lm_head: it is tied to transformer.wte), optionally cast."""
    return {"transformer." + k: _to_hf_tensor(k, v, dtype) for k, v in sd.items()}


def from_hf(sd):
    """A GPT2LMHeadModel / GPT2Model state dict -> ours, float32. sd: a dict, or (name, tensor) pairs read one at a
    time (iter_hf_weights), so only the float32 result is held. Drops the old causal-mask buffers; checks that the
    head is tied."""
    out, head = {}, None
    for k, v in (sd.items() if isinstance(sd, dict) else sd):
        k = k.removeprefix("transformer.")
        if k == "lm_head.weight":
            head = v
        elif not k.endswith((".attn.bias", ".attn.masked_bias")):
            out[k] = _contiguous(v.t() if k.endswith(CONV1D) else v, torch.float32)
    if head is not None and ("wte.weight" not in out or not torch.equal(head.float(), out["wte.weight"])):
        raise ValueError("lm_head.weight differs from transformer.wte.weight: PolyLM ties input and output "
                         "embeddings, so an untied GPT-2 variant cannot be imported")
    return out


def plan_shards(sizes, max_bytes):
    """Split names (in order) into shards of at most max_bytes ({name: bytes}); a bigger tensor gets one alone."""
    shards, room = [], 0
    for k, n in sizes.items():
        if not shards or n > room:
            shards.append([])
            room = max_bytes
        shards[-1].append(k)
        room -= n
    return shards


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_weights(out, ckpt, cfg: ModelConfig, dtype, max_bytes):
    """Write the checkpoint's weights into dir `out` as HF safetensors, one shard at a time; returns the file names.

    One file (model.safetensors) when it fits in max_bytes, else model-0000k-of-0000n.safetensors and
    model.safetensors.index.json ({"metadata": {"total_size": bytes}, "weight_map": {name: file}}), HF's layout."""
    from safetensors.torch import save_file
    dt = getattr(torch, dtype)
    sizes = {k: v.numel() * torch.empty((), dtype=dt).element_size() for k, v in model_shapes(cfg).items()}
    shards = plan_shards(sizes, max_bytes)
    n = len(shards)
    files = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for keys, name in zip(shards, files):
        tensors = to_hf(read_checkpoint(ckpt, cfg, keys), dt)
        save_file(tensors, out / name, metadata={"format": "pt"})
        os.chmod(out / name, 0o666 & ~_umask())              # safetensors writes 0600; readable like the rest
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors                                           # free this shard before converting the next
    if n > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return files


def hf_config(mcfg: ModelConfig, specials, provenance, dtype="float32"):
    eot, pad = specials.get("<|endoftext|>"), specials.get("<|pad|>")
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": mcfg.vocab_size,
            "n_positions": mcfg.block_size, "n_embd": mcfg.n_embd, "n_layer": mcfg.n_layer, "n_head": mcfg.n_head,
            "n_inner": None, "activation_function": "gelu", "layer_norm_epsilon": 1e-5,
            "resid_pdrop": mcfg.dropout, "embd_pdrop": mcfg.dropout, "attn_pdrop": mcfg.dropout,
            "initializer_range": mcfg.init_std, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False, "tie_word_embeddings": True, "use_cache": True,
            "bos_token_id": eot, "eos_token_id": eot, "pad_token_id": pad, "dtype": dtype, "polylm": provenance}


def check_gpt2_config(c):
    """Refuse what our architecture cannot represent; warn about what only changes the numbers slightly."""
    if c.get("model_type") != "gpt2":
        raise ValueError(f"model_type={c.get('model_type')!r}: only GPT-2-format checkpoints (model_type gpt2) map "
                         f"onto PolyLM")
    bad = {"n_inner": c.get("n_inner") not in (None, 4 * c["n_embd"]),
           "scale_attn_weights": not c.get("scale_attn_weights", True),
           "scale_attn_by_inverse_layer_idx": c.get("scale_attn_by_inverse_layer_idx", False),
           "add_cross_attention": c.get("add_cross_attention", False),
           "tie_word_embeddings": not c.get("tie_word_embeddings", True)}
    if any(bad.values()):
        raise ValueError(f"unsupported GPT-2 variant ({', '.join(k for k, v in bad.items() if v)}): PolyLM has a "
                         f"4x MLP, 1/sqrt(head_dim) attention scaling, no cross-attention and tied embeddings")
    act = c.get("activation_function", "gelu_new")
    if act in TANH_GELUS:
        warnings.warn(f"activation_function={act!r} is the tanh approximation of GeLU; PolyLM computes the exact erf "
                      f"GeLU, so logits differ slightly (<= 5e-4 per activation) until training adapts", stacklevel=2)
    elif act != "gelu":
        raise ValueError(f"activation_function={act!r}: PolyLM's MLP uses GeLU (gelu, or its tanh approximations)")
    if abs(c.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        warnings.warn(f"layer_norm_epsilon={c['layer_norm_epsilon']}: PolyLM's LayerNorms use 1e-5", stacklevel=2)


def iter_hf_weights(hf_dir):
    """(name, tensor) of model.safetensors, its shards (model.safetensors.index.json) or pytorch_model.bin, one at a
    time: safetensors are read tensor by tensor, pytorch_model.bin is memory-mapped."""
    from safetensors import safe_open
    d = Path(hf_dir)
    if (d / "model.safetensors").exists():
        files = [d / "model.safetensors"]
    elif (d / "model.safetensors.index.json").exists():
        index = _json(d / "model.safetensors.index.json")
        if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
            raise ValueError(f"{d}/model.safetensors.index.json is not a safetensors index (no weight_map)")
        files = [d / f for f in sorted(set(index["weight_map"].values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"{d} lacks shard(s) {', '.join(missing[:3])} named in model.safetensors.index."
                                    f"json; copy the whole directory again")
    elif (d / "pytorch_model.bin").exists():
        yield from torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True).items()
        return
    else:
        raise FileNotFoundError(f"{d} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    for f in files:
        with safe_open(f, framework="pt") as fh:
            for k in fh.keys():
                yield k, fh.get_tensor(k)


def read_hf_weights(hf_dir):
    """All tensors of an HF dir as one dict (iter_hf_weights)."""
    return dict(iter_hf_weights(hf_dir))


# ----------------------------------------------------------------------------- tokenizer: tiktoken ranks <-> HF BPE

def byte_to_unicode():
    """GPT-2's byte -> printable character table (HF ByteLevel): printable Latin-1 bytes map to themselves."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


def hf_tokenizer_json(ranks, pattern, specials):
    """The tokenizer.json (HF `tokenizers` format) of a tiktoken byte-level BPE: same ids, same pieces."""
    b2u = byte_to_unicode()
    s = lambda b: "".join(b2u[x] for x in b)     # noqa: E731
    merges = []
    for tok, r in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        merges += [[s(a), s(b)] for a, b in sorted(splits, key=lambda p: (ranks[p[0]], ranks[p[1]]))]
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for t, i in sorted(specials.items(), key=lambda kv: kv[1])]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                      "vocab": {s(t): r for t, r in ranks.items()}, "merges": merges}}


def ranks_from_hf(tok):
    """tokenizer.json (byte-level BPE) -> (ranks, pattern, specials), the inputs of bpe.save. Ids become ranks."""
    m, pre = tok["model"], tok.get("pre_tokenizer") or {}
    if m.get("type") != "BPE":
        raise ValueError(f"tokenizer.json model is {m.get('type')!r}: only byte-level BPE tokenizers can be imported")
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    split = [p for p in steps if p.get("type") == "Split" and "Regex" in p.get("pattern", {})]
    byte_level = [p for p in steps if p.get("type") == "ByteLevel"]
    if not byte_level:
        raise ValueError("tokenizer.json has no ByteLevel pre-tokenizer: not a byte-level BPE (GPT-2 style) tokenizer")
    pattern = split[0]["pattern"]["Regex"] if split else GPT2_PATTERN if byte_level[0].get("use_regex", True) else None
    if pattern is None or byte_level[0].get("add_prefix_space"):
        raise ValueError("tokenizer.json pre-tokenizer is not Split(regex)+ByteLevel or ByteLevel(use_regex): "
                         "cannot express it as a tiktoken pattern")
    u2b = {u: b for b, u in byte_to_unicode().items()}
    ranks = {bytes(u2b[c] for c in piece): i for piece, i in m["vocab"].items()}
    specials = {t["content"]: t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)) or sorted(specials.values()) != list(range(n, n + len(specials))):
        raise ValueError("token ids must be 0..n-1 for the BPE pieces followed by the special tokens (as tiktoken)")
    return ranks, pattern, specials


def check_tokenizer(tok_json, enc, texts):
    """Texts whose ids differ between a tokenizer.json and a tiktoken.Encoding (special tokens allowed in both)."""
    from tokenizers import Tokenizer
    hf = Tokenizer.from_file(str(tok_json))
    got = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    return [t for t, ids in zip(texts, got) if ids != enc.encode(t, allowed_special="all")]


def probe_texts(data_dir, per_lang=200):
    """PROBES plus the first lines of every data_dir/mono/<lang>.txt there is (the languages the run trained on)."""
    texts = list(PROBES)
    for f in sorted(Path(data_dir).glob("mono/*.txt")) if data_dir else []:
        with open(f, encoding="utf-8", errors="replace") as fh:
            texts += [line for _, line in zip(range(per_lang), fh)]
    return texts


# ----------------------------------------------------------------------------- the chat template and tokenizer_config

def tokenizer_files(specials, block_size, split_special_tokens=False):
    """(tokenizer_config.json, special_tokens_map.json) contents: PreTrainedTokenizerFast over tokenizer.json, the
    chat template generated by chat_template.py, and the split_special_tokens default (see the top of the file)."""
    names = {"bos_token": chat_template.EOT, "eos_token": chat_template.EOT, "unk_token": chat_template.EOT, "pad_token": "<|pad|>"}
    names = {k: v for k, v in names.items() if v in specials}
    extra = [t for t in specials if t not in names.values()]
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "additional_special_tokens": extra,
              "model_max_length": block_size, "add_bos_token": False, "add_eos_token": False,
              "clean_up_tokenization_spaces": False, "split_special_tokens": split_special_tokens,
              "chat_template": chat_template.chat_template_jinja()}
    return config, {**names, "additional_special_tokens": extra}


# ----------------------------------------------------------------------------- the two directions

def export(run_dir, out_dir, checkpoint=None, dtype="float32", verify=True, *, max_shard_size="5GB",
           split_special_tokens=False, overwrite=False):
    """Run dir -> HF GPT-2 dir: config.json, model.safetensors (or shards + index), generation_config.json,
    tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json.

    Every input is checked before anything is written; the dir is built under a temporary name and renamed into
    place (bpe.output_dir: an existing out_dir is replaced only if export wrote it, or with overwrite=True)."""
    run, out = Path(run_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose {', '.join(DTYPES)}")
    shard_bytes = parse_size(max_shard_size)
    _check_not_inside(out, run, "run dir")
    bpe.check_output_dir(out, is_export_dir, overwrite, "directory export.py wrote")
    if not (run / "config.json").exists():
        raise FileNotFoundError(f"{run}/config.json not found: --ckpt must be a run dir written by train.py or sft.py")
    run_cfg = json.loads((run / "config.json").read_text())
    mcfg = ModelConfig(**run_cfg["model"])
    ckpt = Path(checkpoint) if checkpoint else latest_checkpoint(run)
    if ckpt is None:
        raise FileNotFoundError(f"{run}/ckpt/ holds no complete checkpoint; train first (python train.py)")
    check_weights(checkpoint_shapes(ckpt, mcfg), mcfg, ckpt)   # a key or shape mismatch fails here, not in HF
    info = bpe.read_info(run / "tokenizer")
    enc = load_tokenizer(run)                                  # the run's own tokenizer (hash checked)
    ranks, specials = bpe.read_ranks(run / "tokenizer" / "tokenizer.tiktoken"), info["special_tokens"]
    if enc.n_vocab != mcfg.vocab_size:
        raise ValueError(f"tokenizer has {enc.n_vocab} tokens but the model {mcfg.vocab_size}: the run dir is broken")
    state = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").exists() else {}
    provenance = {"run_config": run_cfg, "checkpoint": str(ckpt), "step": state.get("step"),
                  "tokenizer_hash": info["hash"], "tokenizer_pattern": info["pattern"]}
    eot, pad = specials.get(chat_template.EOT), specials.get("<|pad|>")
    gen = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": pad, "do_sample": True, "temperature": 0.8,
           "top_k": 50, "max_length": mcfg.block_size}          # train.py's sample settings
    tok_config, special_map = tokenizer_files(specials, mcfg.block_size, split_special_tokens)
    with bpe.output_dir(out, is_export_dir, overwrite, "directory export.py wrote") as tmp:
        (tmp / "tokenizer.json").write_text(json.dumps(hf_tokenizer_json(ranks, info["pattern"], specials),
                                                       ensure_ascii=False), encoding="utf-8")
        if verify:                                            # before the weights: a bad tokenizer fails fast
            try:
                bad = check_tokenizer(tmp / "tokenizer.json", enc,
                                      probe_texts(run_cfg.get("train", {}).get("data_dir")))
            except ImportError:
                bad = None
                print("export: `tokenizers` is not installed; tokenizer.json not re-checked", file=sys.stderr)
            if bad:
                raise ValueError(f"the HF tokenizer disagrees with tiktoken on {len(bad)} probe text(s), e.g. "
                                 f"{bad[0][:60]!r}: the pattern uses a construct Oniguruma reads differently (e.g. "
                                 f"a possessive {{n,m}}+); nothing was written to {out}")
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1, ensure_ascii=False))
        (tmp / "special_tokens_map.json").write_text(json.dumps(special_map, indent=1))
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=1))
        write_weights(tmp, ckpt, mcfg, dtype, shard_bytes)
        (tmp / "config.json").write_text(json.dumps(hf_config(mcfg, specials, provenance, dtype), indent=1,
                                                    ensure_ascii=False))
    return out


def import_hf(hf_dir, out_dir, *, overwrite=False):
    """HF GPT-2 dir -> run dir (config.json, tokenizer/, ckpt/step_X/model.pt): evaluate.py, chat.py and
    sft.py --init_from read it like a train.py run. Built under a temporary name and renamed into place; an
    existing out_dir is replaced only if import_hf wrote it (or with overwrite=True)."""
    src, out = Path(hf_dir), Path(out_dir)
    if not (src / "config.json").exists():
        raise FileNotFoundError(f"{src}/config.json not found: --import needs a Hugging Face model directory")
    c = json.loads((src / "config.json").read_text())
    check_gpt2_config(c)
    if not (src / "tokenizer.json").exists():
        raise FileNotFoundError(f"{src}/tokenizer.json not found: save the tokenizer with a fast tokenizer first "
                                f"(AutoTokenizer.from_pretrained(dir).save_pretrained(dir))")
    _check_not_inside(out, src, "HF dir")
    bpe.check_output_dir(out, is_import_dir, overwrite, "run dir export.py --import wrote")
    ranks, pattern, specials = ranks_from_hf(json.loads((src / "tokenizer.json").read_text(encoding="utf-8")))
    mcfg = ModelConfig(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], block_size=c["n_positions"],
                       vocab_size=c["vocab_size"], dropout=c.get("resid_pdrop", 0.0),
                       init_std=c.get("initializer_range", ModelConfig.init_std))
    if len(ranks) + len(specials) != mcfg.vocab_size:
        raise ValueError(f"the tokenizer has {len(ranks) + len(specials)} tokens but vocab_size={mcfg.vocab_size}; "
                         f"PolyLM needs them equal (no padded vocabulary)")
    sd = from_hf(iter_hf_weights(src))                    # one tensor read at a time; holds the float32 result
    check_weights({k: v.shape for k, v in sd.items()}, mcfg, src)   # strict: every weight, nothing left over
    prov = c.get("polylm") or {}
    train_cfg = (prov.get("run_config") or {}).get("train") or {"data_dir": "data/sample", "val_frac": 0.05}
    step = prov.get("step") or 0
    with bpe.output_dir(out, is_import_dir, overwrite, "run dir export.py --import wrote") as tmp:
        digest = bpe.save(tmp / "tokenizer", ranks, list(specials), pattern, meta={"imported_from": str(src)})
        ck = tmp / "ckpt" / f"step_{step:06d}"
        ck.mkdir(parents=True)
        torch.save(sd, ck / "model.pt")
        (ck / "state.json").write_text(json.dumps({"step": step, "world_size": 1, "ranks": [],
                                                   "imported_from": str(src)}))
        (tmp / "ckpt" / "latest").write_text(ck.name)
        (tmp / "config.json").write_text(json.dumps({"train": train_cfg, "model": dataclasses.asdict(mcfg),
                                                     "tokenizer_hash": digest, "imported_from": str(src)}, indent=1))
        try:                                              # ids as ranks only replay HF's merges if ids follow them
            bad = check_tokenizer(src / "tokenizer.json", bpe.load(tmp / "tokenizer"), PROBES)
        except ImportError:
            bad = []
    if bad:
        warnings.warn(f"tiktoken with ids as ranks tokenizes {len(bad)} probe text(s) unlike {src}/tokenizer.json "
                      f"(e.g. {bad[0][:40]!r}): its token ids do not follow its merge order", stacklevel=2)
    if prov.get("tokenizer_hash") and prov["tokenizer_hash"] != digest:
        warnings.warn(f"the imported tokenizer's hash {digest[:12]} differs from the exported run's "
                      f"{prov['tokenizer_hash'][:12]}: tokenizer.json was edited after export", stacklevel=2)
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    argv = ["--import_from" + a[len("--import"):] if a == "--import" or a.startswith("--import=") else a
            for a in argv]                                   # `--import DIR` reads better than --import_from=DIR

    def run(cfg):
        if not cfg.out:
            raise ValueError("--out is required: the HF dir to write (export) or the run dir to write (--import)")
        if cfg.import_from:
            out = import_hf(cfg.import_from, cfg.out, overwrite=cfg.overwrite)
            print(f"imported {cfg.import_from} -> {out}/ (evaluate.py --ckpt {out}; sft.py --init_from={out})")
        else:
            out = export(cfg.ckpt, cfg.out, cfg.checkpoint or None, cfg.dtype, cfg.verify,
                         max_shard_size=cfg.max_shard_size, split_special_tokens=cfg.split_special_tokens,
                         overwrite=cfg.overwrite)
            print(f"exported {cfg.ckpt} -> {out}/ (AutoModelForCausalLM / AutoTokenizer.from_pretrained({str(out)!r}); "
                  f"vllm serve {out})")
    run_cli(run, ExportConfig, argv, prog="export.py")


if __name__ == "__main__":
    main()
