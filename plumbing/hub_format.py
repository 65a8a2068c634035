"""transformers' GPT-2 format, written: a GPT2LMHeadModel folder as the hub's repos hold one
(config.json, model.safetensors, GPT-2's tokenizer files)."""
import functools
import hashlib
import json

import torch

from plumbing.cli import InputError
from plumbing.formats import BYTE_CHARS, write_safetensors

EOT = 50256  # <|endoftext|>: GPT-2's bos, eos, and the pad token of this project's batches
# vocab.json and merges.txt as the hub's GPT-2 repos hold them: OpenAI's encoder.json and
# vocab.bpe, byte for byte
VOCAB_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"


# ---------------------------------------------------------------------------------------------
# Written: GPTModel's weights under the hub's names, config.json, the tokenizer's files

def hub_tensors(model):
    """(GPTModel's weights under the names and layouts of transformers' GPT2Model, out_head's
    own): load_gpt2.gpt2_state_dict's reverse. nn.Linear keeps its weight as (out, in), Conv1D as
    (in, out): transposed; W_query, W_key and W_value side by side in c_attn (no qkv bias: 0)."""
    left = {name: t.detach().cpu().float() for name, t in model.state_dict().items()}
    C = model.cfg["emb_dim"]

    def take(name, zeros=None):  # zeros: the size of a bias that may be absent
        return left.pop(name) if zeros is None or name in left else torch.zeros(zeros)
    try:
        hub = {"wte.weight": take("tok_emb.weight"), "wpe.weight": take("pos_emb.weight")}
        for b in range(model.cfg["n_layers"]):
            ours, h = f"trf_blocks.{b}.", f"h.{b}."
            qkv = [f"{ours}att.{W}." for W in ("W_query", "W_key", "W_value")]
            hub[h + "attn.c_attn.weight"] = torch.cat([take(p + "weight") for p in qkv]).t()
            hub[h + "attn.c_attn.bias"] = torch.cat([take(p + "bias", C) for p in qkv])  # (3C,)
            for theirs, mine in (("attn.c_proj", "att.out_proj"), ("mlp.c_fc", "ff.layers.0"),
                                 ("mlp.c_proj", "ff.layers.2")):
                hub[f"{h}{theirs}.weight"] = take(f"{ours}{mine}.weight").t()  # (in, out)
                hub[f"{h}{theirs}.bias"] = take(f"{ours}{mine}.bias")
            for theirs, mine in (("ln_1", "norm1"), ("ln_2", "norm2")):
                hub[f"{h}{theirs}.weight"] = take(f"{ours}{mine}.scale")
                hub[f"{h}{theirs}.bias"] = take(f"{ours}{mine}.shift")
        hub["ln_f.weight"], hub["ln_f.bias"] = take("final_norm.scale"), take("final_norm.shift")
    except KeyError as e:
        raise InputError(f"the model has no tensor {e}, which GPT-2's format needs (an unmerged "
                         "LoRA layer, or a fork?)") from None
    head = {name: left.pop(name) for name in list(left) if name.startswith("out_head.")}
    if left:
        raise InputError(f"the model's {sorted(left)[0]!r} has no place in GPT-2's format (an "
                         "unmerged LoRA layer, or a fork?)")
    return {f"transformer.{name}": t.contiguous() for name, t in hub.items()}, head


def hub_config(cfg, architecture, **more):
    """config.json as transformers writes GPT-2's: its names of cfg's sizes, GPT-2's constants."""
    return {"architectures": [architecture], "model_type": "gpt2", "vocab_size": cfg["vocab_size"],
            "n_positions": cfg["context_length"], "n_embd": cfg["emb_dim"],
            "n_layer": cfg["n_layers"], "n_head": cfg["n_heads"], "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "bos_token_id": EOT, "eos_token_id": EOT, **more}


def merged_pair(ranks, token):
    """The two tokens whose merge made token: byte-pair merging its bytes with the merges ranked
    below its own stops at them (minbpe's recover_merges)."""
    parts, rank = [bytes([b]) for b in token], ranks[token]
    while len(parts) > 2:
        best, i = min((ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
        if best >= rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


@functools.lru_cache(maxsize=2)  # recovering the merges takes seconds: once a process
def tokenizer_files(tokenizer):
    """{vocab.json, merges.txt: their bytes} of GPT-2's tiktoken encoding, as the hub's repos hold
    them: each token's bytes as printable characters (BYTE_CHARS), with its rank; the merges in
    rank order, each recovered from the ranks (merged_pair). Each checked by its SHA-256."""
    def checked(name, data, sha256):
        if hashlib.sha256(data).hexdigest() != sha256:
            raise InputError(f"the tokenizer's {name} would not be GPT-2's; use GPT-2's tokenizer "
                             "(load_gpt2.get_tokenizer)")
        return data
    try:
        tokens = [tokenizer.decode_single_token_bytes(rank) for rank in range(EOT)]
    except (KeyError, ValueError):  # fewer tokens
        tokens = []
    text = lambda token: "".join(BYTE_CHARS[b] for b in token)
    vocab = {text(t): rank for rank, t in enumerate(tokens)} | {"<|endoftext|>": EOT}
    vocab_json = checked("vocab.json", json.dumps(vocab).encode(), VOCAB_SHA256)  # first: cheap
    ranks = {t: rank for rank, t in enumerate(tokens)}
    merges = ["#version: 0.2"] + [" ".join(map(text, merged_pair(ranks, t))) for t in tokens[256:]]
    return {"vocab.json": vocab_json,
            "merges.txt": checked("merges.txt", "\n".join(merges).encode() + b"\n", MERGES_SHA256)}


def write_folder(folder, tensors, config, tokenizer_config, tokenizer):
    """model.safetensors, config.json and the tokenizer's files into folder."""
    files = tokenizer_files(tokenizer)  # first: it may refuse the tokenizer
    for name, data in {"config.json": config, "tokenizer_config.json": tokenizer_config}.items():
        files[name] = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
    for name, data in files.items():
        (folder / name).write_bytes(data)


def write_language_model(folder, model, tokenizer):
    """A GPT2LMHeadModel into folder, which exists (the caller stages and publishes it):
    model.safetensors (out_head tied to wte is not stored, as in the hub's repos), config.json,
    and GPT-2's tokenizer files. transformers' AutoModelForCausalLM and load_gpt2 open it."""
    tensors, head = hub_tensors(model)
    cfg, weight = model.cfg, head.pop("out_head.weight", None)
    if head or weight is None or tuple(weight.shape) != (cfg["vocab_size"], cfg["emb_dim"]):
        raise InputError("the model's out_head is not a language model's (a Linear from emb_dim "
                         "to vocab_size, without bias), which GPT2LMHeadModel's lm_head is")
    tied = torch.equal(weight, tensors["transformer.wte.weight"])
    if not tied:
        tensors["lm_head.weight"] = weight
    write_folder(folder, tensors, hub_config(cfg, "GPT2LMHeadModel", tie_word_embeddings=tied),
                 {"model_max_length": cfg["context_length"]}, tokenizer)
