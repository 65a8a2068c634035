"""OpenAI's pretrained GPT-2 in model.GPTModel, with torch and numpy alone.

The weights come from Hugging Face as model.safetensors (the Conv1D layout of OpenAI's
TensorFlow code). We read that format by hand, map each tensor to its place in GPTModel,
and check every name and shape on the way, so a damaged file is an error, never a wrong model.
"""
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import tiktoken
import torch

from utils import CACHE_DIR, InputError, atomic_write, download
from model import ALIASES, BASE_CONFIG, GPT_CONFIGS, GPTModel, check_config, get_config, model_name

URL = "https://huggingface.co/openai-community/{repo}/resolve/main/model.safetensors"
REPOS = {"gpt2-small (124M)": "gpt2", "gpt2-medium (355M)": "gpt2-medium",
         "gpt2-large (774M)": "gpt2-large", "gpt2-xl (1558M)": "gpt2-xl"}
# safetensors dtype -> (numpy type to read the bytes as, torch type they hold). numpy has no
# bfloat16, so those bytes are read as int16 and reinterpreted (same bits) by torch.
DTYPES = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
          "BF16": (np.int16, torch.bfloat16)}


def pick_device(name=None):
    """The device to run on: name if given, else CUDA, then Apple's MPS, else the CPU."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else \
            "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        if torch.device(name).type not in ("cpu", "cuda", "mps"):
            raise RuntimeError("not a device to compute on")
        torch.empty(0, device=name)  # fails for absent hardware
    except (RuntimeError, AssertionError) as e:
        raise InputError(f"device {name!r} is not usable here ({str(e).splitlines()[0]}); "
                         "try cpu") from None
    return name


def get_tokenizer(model=None):
    """GPT-2's byte-pair encoding, from tiktoken (downloaded once, then cached)."""
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # tiktoken reports a missing network in several ways
        raise InputError(f"could not load the GPT-2 vocabulary ({e.__class__.__name__}): tiktoken "
                         "downloads it on first use; connect once, or copy its cache files to a "
                         "folder and set TIKTOKEN_CACHE_DIR to it") from None


def read_safetensors(path):
    """({name: tensor}, {key: text}) from a .safetensors file: an 8-byte little-endian header
    length N, N bytes of JSON ({name: {dtype, shape, data_offsets}}, and "__metadata__", a map of
    strings), then the raw little-endian data. The tensors are views of a memory map, so even
    gpt2-xl is never read into RAM twice. Every entry is checked before anything is mapped."""
    def damaged(why):
        return InputError(f"{path} is damaged or not a safetensors file ({why}); if it was "
                          "downloaded, delete it and download it again")
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > min(size - 8, 100_000_000):  # the format caps headers at 100 MB
            raise damaged(f"the header claims {n} bytes but the file has {size}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):
            raise damaged("the header is not JSON") from None
    if not isinstance(header, dict) or len(header) > 100_000:  # GPT-2 xl has 580 tensors
        raise damaged("the header is not a JSON object of at most 100,000 tensors")
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(type(v) is str for v in metadata.values())):
        raise damaged("its __metadata__ is not a map of strings")
    data_size = size - 8 - n
    # Copy-on-write map: writable views (torch wants those) that never touch the file.
    data = np.memmap(path, np.uint8, mode="c", offset=8 + n) if data_size else np.empty(0, np.uint8)
    def sizes(xs, least, most, high):  # type(): neither true nor 32.9 is a size
        return type(xs) is list and least <= len(xs) <= most and all(
            type(x) is int and 0 <= x <= high for x in xs)

    tensors, ranges = {}, []
    for name, info in header.items():
        info = info if isinstance(info, dict) else {}
        if not (str(info.get("dtype")) in DTYPES and sizes(info.get("shape"), 0, 8, 2**31)
                and sizes(info.get("data_offsets"), 2, 2, data_size)):
            raise damaged(f"tensor {name!r} has an unsupported dtype or a malformed entry; "
                          f"supported dtypes: {', '.join(DTYPES)}")
        shape, offsets = info["shape"], info["data_offsets"]
        np_type, torch_type = DTYPES[info["dtype"]]
        (begin, end), nbytes = offsets, math.prod(shape) * np.dtype(np_type).itemsize
        if begin > end or end - begin != nbytes:
            raise damaged(f"tensor {name!r} claims bytes {begin}..{end} of {data_size}")
        array = data[begin:end].view(np_type).reshape(shape)
        tensors[name] = torch.from_numpy(array).view(torch_type)
        ranges.append((begin, end))
    # The byte ranges must tile the data exactly: a gap or an overlap means a damaged file.
    covered = 0
    for begin, end in sorted(ranges):
        if begin != covered:
            raise damaged(f"bytes {min(begin, covered)}..{max(begin, covered)} are not one "
                          "tensor's")
        covered = end
    if covered != data_size:
        raise damaged(f"{data_size - covered} bytes at the end belong to no tensor")
    if "data_sha256" in metadata and hashlib.sha256(data).hexdigest() != metadata["data_sha256"]:
        raise damaged("its data does not match the SHA-256 its header holds")  # ours hold one
    return tensors, metadata


def write_safetensors(path, tensors, metadata):
    """The reverse: {name: tensor} and {key: text} into path, as the format defines it (the
    header padded with spaces so the data starts 8-byte aligned), through a temporary file.
    The metadata gains data_sha256, which read_safetensors checks: a damaged file is refused."""
    raw = {name: t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
           for name, t in tensors.items()}  # views of the tensors' bytes, no copies
    names, digest = {dtype: name for name, (_, dtype) in DTYPES.items()}, hashlib.sha256()
    header, offset = {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw[name])]}
        offset += len(raw[name])
        digest.update(raw[name])
    header["__metadata__"] = {**metadata, "data_sha256": digest.hexdigest()}
    head = json.dumps(header).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for array in raw.values():
            f.write(array)


def read_small(path, limit):
    """The text of a regular file of at most limit bytes: never a device, a pipe or a huge file
    (a symlink to /dev/zero would otherwise read forever)."""
    if not path.is_file() or path.stat().st_size > limit:
        raise ValueError(f"not a regular file of at most {limit:,} bytes")
    return path.read_text(encoding="utf-8")


def check_finite(model, where, why="the file is damaged or from a diverged training run"):
    """Weights that are NaN or infinite would compute garbage: refuse them."""
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            raise InputError(f"{where}: tensor {name} holds NaN or infinite values; {why}")
    return model


def config_from_folder(folder, tensors):
    """cfg for a local checkpoint: from Hugging Face's config.json when present, otherwise
    from the tensor shapes (the head count then comes from the released size that matches)."""
    config_file = folder / "config.json"
    if config_file.exists():
        try:
            hf = json.loads(read_small(config_file, 1_000_000))
            cfg = {**BASE_CONFIG, "vocab_size": hf["vocab_size"], "emb_dim": hf["n_embd"],
                   "context_length": hf.get("n_positions", hf.get("n_ctx")),
                   "n_layers": hf["n_layer"], "n_heads": hf["n_head"]}
            check_config(cfg)  # before anything is allocated from these numbers
            return cfg
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            why = f"no {e} field" if isinstance(e, KeyError) else str(e)
            raise InputError(f"{config_file} is not a usable GPT-2 config.json ({why})") from None
    names = {k.removeprefix("transformer."): v.shape for k, v in tensors.items()}
    n_layers = len({k.split(".")[1] for k in names if k.startswith("h.")})
    emb_dim = names["wte.weight"][1] if "wte.weight" in names else None
    for name, sizes in GPT_CONFIGS.items():
        if (sizes["emb_dim"], sizes["n_layers"]) == (emb_dim, n_layers):
            return get_config(name)
    raise InputError(f"{folder} has no config.json and its tensors match no released GPT-2 "
                     "size; add Hugging Face's config.json beside model.safetensors")


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
        return torch.empty(x.shape, dtype=dtype).copy_(x)  # our own contiguous copy

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


def load_gpt2(name_or_dir="gpt2-small", dtype=torch.float32, cache_dir=CACHE_DIR, pretrained=True):
    """A GPTModel in eval mode with OpenAI's weights; its cfg is model.cfg.

    name_or_dir: a size name ("gpt2", "gpt2-medium", "774M", ...), downloaded once into
    cache_dir/<repo>/model.safetensors and reused offline afterwards; or a folder holding
    model.safetensors (and optionally Hugging Face's config.json). Size names come first: a
    folder that happens to be called "gpt2" needs "./gpt2".
    pretrained=False: random weights of that size (GPT-2's initialisation), nothing downloaded.
    """
    folder = Path(name_or_dir)
    if str(name_or_dir) in ALIASES:
        name = model_name(str(name_or_dir))
        if not pretrained:
            return GPTModel(get_config(name)).to(dtype).eval()
        path = Path(cache_dir) / REPOS[name] / "model.safetensors"
        if not path.exists():
            download(URL.format(repo=REPOS[name]), path, hint=(
                "; or go on offline: --init random trains from scratch, --model FOLDER reads "
                "model.safetensors from FOLDER"))
        (tensors, _), cfg = read_safetensors(path), get_config(name)
    elif folder.is_dir():
        path = folder / "model.safetensors"
        if not path.is_file():
            raise InputError(f"{folder} holds no model.safetensors")
        tensors, _ = read_safetensors(path)
        cfg = config_from_folder(folder, tensors)
        if not pretrained:
            return GPTModel(cfg).to(dtype).eval()
    else:
        try:
            model_name(str(name_or_dir))  # not a size: its error lists the sizes
        except ValueError as e:
            raise InputError(f"{e}, or a folder with model.safetensors") from None
    with torch.device("meta"):  # no memory and no random init for weights about to be replaced
        model = GPTModel(cfg)
    model.load_state_dict(gpt2_state_dict(tensors, cfg, path, dtype), assign=True)
    return check_finite(model, path).eval()
