"""OpenAI's pretrained GPT-2 in model.GPTModel, with torch, tiktoken and numpy alone: the weights
mapped onto the model by one checked table (gpt2_state_dict), and the tokenizer.

Where the files come from is plumbing/download.py's job, how they are parsed plumbing/formats.py's:
a folder (Hugging Face's model.safetensors, or the book's gpt2/124M), a size or a hub repo.
"""
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import torch

from model import ALIASES, GPTModel, get_config
from plumbing.cli import InputError
from plumbing.download import checkpoint_folder, first_that_works, vocab_file
from plumbing.formats import encoding_from, read_config, read_safetensors, read_tf_checkpoint
from plumbing.weights import check_finite, infer_config, untrained


def load_gpt2(name_or_dir="gpt2-small", dtype=torch.float32, pretrained=True):
    """A GPTModel in eval mode with OpenAI's weights (pretrained=False: GPT-2's initialisation);
    model.source says where they came from, model.untrained whether they are random or look it.
    name_or_dir: a size ("gpt2", "774M", ...; a folder called "gpt2" needs "./gpt2"), a Hugging
    Face repo ORG/NAME, or a folder (model.safetensors with an optional config.json, or OpenAI's
    TensorFlow checkpoint), found or downloaded once."""
    if str(name_or_dir) in ALIASES and not pretrained:  # nothing to read
        cfg, tensors, path = get_config(str(name_or_dir)), {}, None
    else:
        folder = checkpoint_folder(name_or_dir, pretrained)
        for vocab in (folder / "encoder.json", folder / "vocab.json", folder / "tokenizer.json"):
            if vocab.is_file():  # texts are tokenized with GPT-2's: a model of another is refused
                encoding_from(vocab)
        path = folder / "model.safetensors"
        if not path.is_file() and (folder / "model.ckpt.index").is_file():
            path, cfg = folder / "model.ckpt.index", read_config(folder / "hparams.json")
            tensors = read_tf_checkpoint(folder, lambda meta: gpt2_state_dict(
                meta, cfg, path)) if pretrained else {}  # names and shapes first, then CRCs
        elif (folder / "config.json").exists():
            cfg = read_config(folder / "config.json")
            tensors = read_safetensors(path)[0] if pretrained else {}
        else:
            tensors = read_safetensors(path)[0]
            cfg = infer_config(folder, tensors)
    if not pretrained:
        model = GPTModel(cfg).to(dtype)
        model.source = model.untrained = "random weights"
        return model.eval()
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = GPTModel(cfg)
    model.load_state_dict(gpt2_state_dict(tensors, cfg, path, dtype), assign=True)
    model.source = str(path)
    warning = untrained(check_finite(model, path).eval())
    if warning:
        print(f"warning: {path} {warning}", file=sys.stderr)
    model.untrained = warning and "weights that look untrained"  # what the results rest on
    return model


def gpt2_state_dict(tensors, cfg, path, dtype=torch.float32):
    """Map Hugging Face GPT-2 tensor names onto GPTModel's state_dict, checking every shape
    (the textbook's load_weights_into_gpt, for the safetensors names)."""
    # Accept both key styles ("transformer.h.0..." and "h.0..."); drop the causal-mask buffers
    # that older checkpoints store (attention builds its own mask).
    kept = [k for k in tensors if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    left = {k.removeprefix("transformer."): tensors[k] for k in kept}
    if len(left) < len(kept):  # both "h.0..." and "transformer.h.0...": which one is meant?
        twice = next(k for k in kept if "transformer." + k in tensors)
        raise InputError(f"{path}: tensor {twice!r} is there twice, also as 'transformer.{twice}'")

    def take(key, *shape, transpose=False):
        if key not in left:
            raise InputError(f"{path}: tensor {key!r} is missing")
        x = left.pop(key)
        if tuple(x.shape) != shape:
            raise InputError(f"{path}: tensor {key!r} has shape {tuple(x.shape)}, expected {shape}")
        x = x.t() if transpose else x
        return torch.empty(x.shape, dtype=dtype, device=x.device).copy_(x)  # our own copy

    C, V = cfg["emb_dim"], cfg["vocab_size"]
    sd = {"tok_emb.weight": take("wte.weight", V, C),
          "pos_emb.weight": take("wpe.weight", cfg["context_length"], C)}
    # The released checkpoint ties the output layer to wte; an untied one brings lm_head.
    sd["out_head.weight"] = take("lm_head.weight", V, C) if "lm_head.weight" in left \
        else sd["tok_emb.weight"].clone()
    for b in range(cfg["n_layers"]):
        h, ours = f"h.{b}.", f"trf_blocks.{b}."
        # OpenAI's Conv1D stores weights as (in, out); nn.Linear wants (out, in), hence .t().
        # c_attn holds query, key and value side by side: split it into the three projections.
        qkv_w = take(h + "attn.c_attn.weight", C, 3 * C, transpose=True).chunk(3)  # 3 x (C, C)
        qkv_b = take(h + "attn.c_attn.bias", 3 * C).chunk(3)
        for i, W in enumerate(("W_query", "W_key", "W_value")):
            sd[f"{ours}att.{W}.weight"] = qkv_w[i].contiguous()
            sd[f"{ours}att.{W}.bias"] = qkv_b[i].contiguous()
        sd[ours + "att.out_proj.weight"] = take(h + "attn.c_proj.weight", C, C, transpose=True)
        sd[ours + "att.out_proj.bias"] = take(h + "attn.c_proj.bias", C)
        sd[ours + "ff.layers.0.weight"] = take(h + "mlp.c_fc.weight", C, 4 * C, transpose=True)
        sd[ours + "ff.layers.0.bias"] = take(h + "mlp.c_fc.bias", 4 * C)
        sd[ours + "ff.layers.2.weight"] = take(h + "mlp.c_proj.weight", 4 * C, C, transpose=True)
        sd[ours + "ff.layers.2.bias"] = take(h + "mlp.c_proj.bias", C)
        for norm, ln in (("norm1", "ln_1"), ("norm2", "ln_2")):
            sd[f"{ours}{norm}.scale"] = take(f"{h}{ln}.weight", C)
            sd[f"{ours}{norm}.shift"] = take(f"{h}{ln}.bias", C)
    sd["final_norm.scale"] = take("ln_f.weight", C)
    sd["final_norm.shift"] = take("ln_f.bias", C)
    if left:
        raise InputError(f"{path}: unexpected tensor {sorted(left)[0]!r} (is this a GPT-2 "
                         "checkpoint of the size asked for?)")
    return sd


# tiktoken's name for its cached copy of OpenAI's encoder.json: the SHA-1 of its URL
TIKTOKEN_ENCODER = hashlib.sha1(b"https://openaipublic.blob.core.windows.net/gpt-2/encodings/"
                                b"main/encoder.json").hexdigest()


def get_tokenizer(model=None):
    """GPT-2's byte-pair encoding, built from an encoder.json (or vocab.json) checked token by
    token against GPT-2's (formats.encoding_from): tiktoken's cached copy (TIKTOKEN_CACHE_DIR,
    else its folder in the temp dir), else the one where model's weights are or come from, else
    GPT-2's own from the hub or OpenAI. tiktoken itself never reads or downloads a file here:
    its cache may be a folder anyone can write to, and its download has no bound."""
    folder = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get(
        "DATA_GYM_CACHE_DIR", str(Path(tempfile.gettempdir()) / "data-gym-cache")))
    cached = Path(folder) / TIKTOKEN_ENCODER if folder else None
    tries = [lambda: encoding_from(cached)] if cached and cached.exists() else []
    tries += [lambda name=name: encoding_from(vocab_file(name))  # the sizes share GPT-2's
              for name in ([] if model is None or str(model) in ALIASES else [model]) + ["gpt2"]]
    return first_that_works(tries, "GPT-2's vocabulary", "set TIKTOKEN_CACHE_DIR to tiktoken's "
                            "cached GPT-2 files, or HF_ENDPOINT to a mirror")
