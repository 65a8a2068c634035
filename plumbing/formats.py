"""GPT-2's files, read and written by hand: safetensors, OpenAI's TensorFlow checkpoint,
config.json and the byte-pair vocabulary.

Any of them may come from anyone, so every read is bounded before it starts and every name,
shape, byte range and checksum is checked: a damaged file is one error naming it, never a wrong
model or an endless read. Nothing is ever unpickled.
"""
import functools
import hashlib
import itertools
import json
import math
import os
import re

import numpy as np
import tiktoken
import torch

from plumbing.cli import InputError
from plumbing.files import atomic_write, read_small


CONFIG_BYTES, VOCAB_BYTES = 1_000_000, 10_000_000  # the most a config.json, a vocab.json may have


# ---------------------------------------------------------------------------------------------
# safetensors. Its dtypes -> (numpy type to read the bytes as, torch type they hold): numpy has
# no bfloat16, so those bytes are read as int16 and reinterpreted (same bits) by torch.
DTYPES = {"F32": (np.float32, torch.float32), "F16": (np.float16, torch.float16),
          "BF16": (np.int16, torch.bfloat16)}


def read_safetensors(path, in_memory=False):
    """({name: tensor}, {key: text}) from a .safetensors file: an 8-byte little-endian header
    length N, N bytes of JSON ({name: {dtype, shape, data_offsets}}, and "__metadata__", a map of
    strings), then the raw little-endian data. The tensors are views of a memory map, so even
    gpt2-xl is never read into RAM twice; in_memory, of a copy in memory that no change to the
    file reaches (a server's weights). Every entry is checked before anything is used."""
    def damaged(why):
        return InputError(f"{path} is damaged or not a safetensors file ({why}); if it was "
                          "downloaded, delete it and download it again")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > min(size - 8, 100_000_000):  # the format caps headers at 100 MB
            raise damaged(f"the header claims {n} bytes but the file has {size}")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):
            raise damaged("the header is not JSON") from None
        data_size = size - 8 - n
        if in_memory and f.readinto(data := np.empty(data_size, np.uint8)) != data_size:
            raise damaged("it was cut while it was read")  # a change: the SHA-256 tells
    if not isinstance(header, dict) or len(header) > 100_000:  # GPT-2 xl has 580 tensors
        raise damaged("the header is not a JSON object of at most 100,000 tensors")
    metadata = header.pop("__metadata__", {})
    if not (isinstance(metadata, dict) and all(type(v) is str for v in metadata.values())):
        raise damaged("its __metadata__ is not a map of strings")
    if not in_memory:  # copy-on-write: writable views (torch wants those) never touch the file
        data = np.memmap(path, np.uint8, "c", 8 + n) if data_size else np.empty(0, np.uint8)
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
    others = {key: value for key, value in metadata.items() if key != "sha256"}
    if "sha256" in metadata and fingerprint(header, others, [data]) != metadata["sha256"]:
        raise damaged("it does not match the SHA-256 its header holds")  # ours hold one
    return tensors, metadata


def fingerprint(entries, metadata, blobs):
    """The SHA-256 write_safetensors stores: of the header (the tensors' entries and the rest
    of the metadata, as sorted JSON) and of the data, so that a changed byte anywhere shows."""
    digest = hashlib.sha256(json.dumps({**entries, "__metadata__": metadata},
                                       sort_keys=True).encode("utf-8"))
    for blob in blobs:
        digest.update(blob)
    return digest.hexdigest()


def write_safetensors(path, tensors, metadata):
    """The reverse: {name: tensor} and {key: text} into path, as the format defines it (the
    header padded with spaces so the data starts 8-byte aligned), through a temporary file.
    The metadata gains sha256 (fingerprint), which read_safetensors checks: a file changed
    anywhere, header or data, is refused."""
    raw = {name: t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
           for name, t in tensors.items()}  # views of the tensors' bytes, no copies
    names, header, offset = {dtype: name for name, (_, dtype) in DTYPES.items()}, {}, 0
    for name, t in tensors.items():
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw[name])]}
        offset += len(raw[name])
    header["__metadata__"] = {**metadata,
                              "sha256": fingerprint(header, metadata, raw.values())}
    head = json.dumps(header).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for array in raw.values():
            f.write(array)


# ---------------------------------------------------------------------------------------------
# OpenAI's TensorFlow checkpoint. Its dtype numbers -> (numpy type to read, torch type they hold)
TF_DTYPES = {1: (np.float32, torch.float32), 19: (np.float16, torch.float16),
             14: (np.int16, torch.bfloat16)}


def read_tf_checkpoint(folder, expected):
    """{Hugging Face name: tensor} from OpenAI's TensorFlow checkpoint in folder, without
    TensorFlow: model.ckpt.index is a LevelDB table of protobuf entries (each tensor's dtype, shape,
    byte range in the data file, CRC-32C), all checked; the renamed tensors are first checked by
    expected(tensors as meta tensors, shapes without data), before any CRC."""
    index, data_file = folder / "model.ckpt.index", folder / "model.ckpt.data-00000-of-00001"
    try:
        pairs = list(itertools.islice(table_entries(np.frombuffer(
            read_small(index, 10_000_000), np.uint8)), 10_002))  # GPT-2 xl has 580 tensors
        entries = dict(pairs)
        if len(pairs) > 10_001 or len(entries) < len(pairs) or b"" not in entries:
            raise ValueError("not one header and at most 10,000 differently named tensors")
        header = protobuf(entries.pop(b""))
        if header.get(1, [1]) != [1] or header.get(2, [0]) != [0]:
            raise ValueError("the tensors are in several files or big-endian")
        size = data_file.stat().st_size
        data = np.memmap(data_file, np.uint8, "c") if size else np.empty(0, np.uint8)
        tensors, ranges = {}, []
        for key, value in entries.items():
            name, entry = key.decode("utf-8"), protobuf(value)
            shape = [protobuf(dim).get(1, [0])[0] for dim in protobuf(entry.get(2, [b""])[0])
                     .get(2, [])]
            (offset,), (nbytes,) = entry.get(4, [0]), entry.get(5, [0])
            if entry.get(1, [0])[0] not in TF_DTYPES or entry.get(3, [0]) != [0] or 7 in entry \
                    or len(shape) > 8 or not all(0 <= d <= 2**31 for d in shape):
                raise ValueError(f"tensor {name!r} is not a whole float tensor of this file")
            np_type, torch_type = TF_DTYPES[entry[1][0]]
            if nbytes != math.prod(shape) * np.dtype(np_type).itemsize or offset + nbytes > size:
                raise ValueError(f"tensor {name!r} claims bytes {offset}..{offset + nbytes} of "
                                 f"{data_file} ({size})")
            array = data[offset:offset + nbytes].view(np_type).reshape(shape)
            tensor = torch.from_numpy(array).view(torch_type)
            if hub_name(name) in tensors:  # model/wte and model/wte/w, say
                raise ValueError(f"two tensors are both {hub_name(name)!r}")
            # OpenAI's Conv1D weights carry a leading 1: (1, in, out) is Hugging Face's (in, out)
            tensors[hub_name(name)] = tensor[0] if len(shape) == 3 and shape[0] == 1 else tensor
            ranges.append((offset, offset + nbytes, entry.get(6, [0])[0], name))
        for (_, end, *_), (begin, *_) in zip(sorted(ranges), sorted(ranges)[1:]):
            if begin < end:
                raise ValueError(f"two tensors share bytes {begin}..{end} of {data_file}")
        expected({name: torch.empty(t.shape, dtype=t.dtype, device="meta")
                  for name, t in tensors.items()})
        for begin, end, crc, name in ranges:  # last: the costly check, on a sound structure
            if unmask(crc) != crc32c(data[begin:end]):
                raise ValueError(f"tensor {name!r} fails its CRC-32C checksum in {data_file}")
    except (ValueError, KeyError, IndexError, TypeError, OSError) as e:
        raise InputError(f"{index} is damaged or not OpenAI's TensorFlow checkpoint ({e}); if it "
                         "was downloaded, delete the folder's files and download them again"
                         ) from None
    except MemoryError as e:
        raise InputError(f"out of memory while reading {data_file} ({e}); free some, or use a "
                         "smaller model") from None
    return tensors


def hub_name(name):
    """OpenAI's tensor name -> Hugging Face's: model/h0/attn/c_attn/w -> h.0.attn.c_attn.weight,
    model/ln_f/g -> ln_f.weight, model/wte -> wte.weight (gpt2_state_dict maps those)."""
    *path, leaf = re.sub(r"^model/h(\d+)/", r"h.\1/", name).removeprefix("model/").split("/")
    return ".".join([*path, {"w": "weight", "g": "weight", "b": "bias"}.get(leaf, leaf)]) \
        if path else f"{leaf}.weight"


def table_entries(table):
    """(key, value) pairs of a LevelDB-format table: a 48-byte footer ends in a magic number and
    points at the index block, whose entries point at the data blocks; each block is followed
    by its type (0: uncompressed) and a masked CRC-32C of both."""
    footer = table[-48:].tobytes()
    if len(footer) < 48 or footer[-8:] != (0xdb4775248b80fb57).to_bytes(8, "little"):
        raise ValueError("no table footer")
    _, i = varint(footer, varint(footer, 0)[1])  # the meta-index block: not used
    offset, i = varint(footer, i)
    end = 0  # data blocks follow each other: none is read twice
    for n, (_, handle) in enumerate(block_entries(block(table, offset, varint(footer, i)[0]))):
        offset, i = varint(handle, 0)
        if n == 10_000 or offset < end:
            raise ValueError("over 10,000 blocks, or blocks that overlap")
        size = varint(handle, i)[0]
        end = offset + size
        yield from block_entries(block(table, offset, size))


def block(table, offset, size):
    if offset + size + 5 > len(table) or table[offset + size] != 0 or unmask(int.from_bytes(
            table[offset + size + 1:offset + size + 5], "little")) != crc32c(
                table[offset:offset + size + 1]):
        raise ValueError(f"the block at byte {offset} is cut off, compressed or fails its CRC")
    return table[offset:offset + size].tobytes()


def block_entries(block):
    """(key, value) pairs of a block: each key shares a prefix with the one before it."""
    n = int.from_bytes(block[-4:], "little")  # restart points, then their number: not needed
    end, key, i = len(block) - 4 - 4 * n, b"", 0
    while i < end:
        shared, i = varint(block, i)
        unshared, i = varint(block, i)
        size, i = varint(block, i)
        key, i = key[:shared] + block[i:i + unshared], i + unshared
        value, i = block[i:i + size], i + size
        if i > end:
            raise ValueError("a block entry runs past its block")
        yield key, value


def protobuf(message):
    """{field number: [values]} of a protobuf message: varints as ints, length-delimited
    fields as bytes, fixed 32/64-bit fields as ints."""
    fields, i = {}, 0
    while i < len(message):
        key, i = varint(message, i)
        kind, size = key & 7, {1: 8, 5: 4}.get(key & 7, 0)
        if kind == 0:
            value, i = varint(message, i)
        elif kind == 2:
            size, i = varint(message, i)
            value, i = message[i:i + size], i + size
        elif size:
            value, i = int.from_bytes(message[i:i + size], "little"), i + size
        else:
            raise ValueError(f"protobuf wire type {kind}")
        if i > len(message):
            raise ValueError("a protobuf field runs past its message")
        fields.setdefault(key >> 3, []).append(value)
    return fields


def varint(buf, i):
    """(value, next position) of the base-128 number at buf[i] (protobuf's and LevelDB's)."""
    value = 0
    for shift in range(0, 70, 7):
        value |= (buf[i] & 0x7F) << shift
        i += 1
        if buf[i - 1] < 0x80:
            return value, i
    raise ValueError("a number longer than 64 bits")


def unmask(crc):  # LevelDB stores CRCs rotated and offset ("masked")
    crc = (crc - 0xA282EAD8) % 2**32
    return ((crc >> 17) | (crc << 15)) % 2**32


# CRC-32C, the checksum TensorFlow keeps for every tensor and every index block.
CRC = [np.arange(256, dtype=np.uint32)]
for _ in range(8):  # the table for one byte (polynomial 0x82F63B78, reflected) ...
    CRC[0] = np.where(CRC[0] & 1, (CRC[0] >> 1) ^ np.uint32(0x82F63B78), CRC[0] >> 1)
for _ in range(3):  # ... and the tables that take 4 bytes a step
    CRC.append((CRC[-1] >> 8) ^ CRC[0][CRC[-1] & 255])
CRC_TABLE = CRC[0].tolist()


def crc32c(data, piece=1 << 24):
    """CRC-32C of a uint8 array, with numpy, a piece of 16 MB at a time (so a tensor of any size
    costs one 16 MB copy). A piece is cut into K slices whose CRCs advance side by side, 4 bytes
    a step; then neighbours are joined, CRC(a + b) = Z(CRC(a)) ^ CRC(b), where Z, appending
    len(b) zero bytes, is a linear map on the 32-bit register (zero_bytes); pieces are joined the
    same way. Zero bytes in front change nothing; the initial register 0xFFFFFFFF is added last."""
    n = len(data)
    if n < 4096:  # a few bytes: one at a time, in Python, costs less than numpy's setup
        c = 0xFFFFFFFF
        for byte in data.tobytes():
            c = CRC_TABLE[(c ^ byte) & 255] ^ (c >> 8)
        return c ^ 0xFFFFFFFF
    crc = np.zeros(1, np.uint32)  # of the pieces so far
    for at in range(0, n, piece):
        part = data[at:at + piece]
        K = 1 << min(14, max(0, (len(part) // 64).bit_length() - 1))  # slices: 2**k, 64+ bytes
        L = -(-len(part) // K)  # bytes a slice, rounded up to a multiple of 4
        L += -L % 4
        if len(part) < K * L:  # padded with zeros in front (a whole piece needs none)
            part = np.concatenate([np.zeros(K * L - len(part), np.uint8), part])
        c = np.zeros(K, np.uint32)
        for word in np.ascontiguousarray(part.view("<u4").reshape(K, L // 4).T):  # (K,) a step
            c ^= word
            c = CRC[3][c & 255] ^ CRC[2][(c >> 8) & 255] ^ CRC[1][(c >> 16) & 255] ^ CRC[0][c >> 24]
        z = zero_bytes(L)
        while len(c) > 1:
            c, z = linear(z, c[0::2]) ^ c[1::2], linear(z, z)
        crc = linear(zero_bytes(min(piece, n - at)), crc) ^ c
    return int(crc[0] ^ linear(zero_bytes(n), np.array([0xFFFFFFFF], np.uint32))[0]) ^ 0xFFFFFFFF


@functools.lru_cache(maxsize=None)  # tensors of one shape share it
def zero_bytes(n):
    """The linear map (the images of the 32 bits) that n zero bytes apply to the register."""
    bits = np.uint32(1) << np.arange(32, dtype=np.uint32)
    step, z = CRC[0][bits & 255] ^ (bits >> 8), bits  # one zero byte; none
    while n:  # by squaring
        z = linear(step, z) if n & 1 else z
        step, n = linear(step, step), n >> 1
    return z


def linear(images, v):
    """The linear map on 32-bit words with images (the image of each bit), applied to v."""
    out = np.zeros_like(v)
    for j in range(32):
        out ^= images[j] * ((v >> np.uint32(j)) & np.uint32(1))
    return out


# ---------------------------------------------------------------------------------------------
# config.json (and OpenAI's hparams.json): the sizes GPTModel takes; the keys that would change
# the math, each with the values GPTModel computes; the keys that change nothing computed here.
SIZES = {"vocab_size": "vocab_size", "n_vocab": "vocab_size", "n_positions": "context_length",
         "n_ctx": "context_length", "n_embd": "emb_dim", "n_layer": "n_layers",
         "n_head": "n_heads"}
SAME_MATH = {"activation_function": ("gelu_new", "gelu_pytorch_tanh"), "model_type": ("gpt2",),
             "layer_norm_epsilon": (1e-5,), "scale_attn_weights": (True,),
             "scale_attn_by_inverse_layer_idx": (False,), "add_cross_attention": (False,),
             "n_inner": (None,)}  # or 4 x n_embd
HARMLESS = {  # dropout (training only; fine-tuning sets its own), ids, bookkeeping, other heads
    "attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_activation", "summary_first_dropout",
    "summary_proj_to_labels", "summary_type", "summary_use_proj", "bos_token_id",
    "eos_token_id", "pad_token_id", "architectures", "initializer_range", "transformers_version",
    "torch_dtype", "dtype", "use_cache", "task_specific_params", "_name_or_path", "id2label",
    "label2id", "_num_labels", "output_past", "gradient_checkpointing", "n_special",
    "predict_special_tokens", "attn_implementation", "_attn_implementation",
    "reorder_and_upcast_attn",  # float16 rounding only; GPTModel computes in float32
    "problem_type", "finetuning_task",  # a classifier's (plumbing/hub_format.py checks them)
    "tie_word_embeddings"}  # lm_head.weight is read when the file holds it


def check_config(cfg):
    """Raise ValueError unless cfg describes a model GPTModel can build here: every size a
    positive integer in a sane range, and its float32 weights within this machine's memory
    (a cfg read from a file is untrusted: refused before anything is allocated)."""
    if not isinstance(cfg, dict):
        raise ValueError(f"a config is a dict, not {type(cfg).__name__}")
    limits = {"vocab_size": 10**6, "context_length": 10**6, "emb_dim": 2**16, "n_layers": 1000,
              "n_heads": 2**16}
    for key, high in limits.items():
        if type(cfg.get(key)) is not int or not 1 <= cfg[key] <= high:  # type(): True is no int
            raise ValueError(f"{key} must be an integer from 1 to {high:,}, not {cfg.get(key)!r}")
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise ValueError(f"emb_dim {cfg['emb_dim']} is not divisible by n_heads {cfg['n_heads']}")
    rate = cfg.get("drop_rate")
    if type(rate) not in (int, float) or not 0 <= rate < 1:
        raise ValueError(f"drop_rate must be a number from 0 to below 1, not {rate!r}")
    if type(cfg.get("qkv_bias")) is not bool:
        raise ValueError(f"qkv_bias must be true or false, not {cfg.get('qkv_bias')!r}")
    C = cfg["emb_dim"]
    n_params = (2 * cfg["vocab_size"] + cfg["context_length"]) * C + cfg["n_layers"] * 12 * C * C
    try:  # Linux and macOS; Windows has no sysconf, and the allocator's error stays
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = float("inf")
    if n_params > 10**10:
        raise ValueError(f"the sizes describe {n_params:.2g} parameters; GPT-2's largest has "
                         "1.6e+09")
    if 4 * n_params > memory:
        raise ValueError(f"the sizes describe {n_params:.2g} parameters, {4 * n_params / 1e9:.0f} "
                         f"GB of float32 weights: more than this machine's {memory / 1e9:.0f} GB")


def read_config(path):
    """cfg from Hugging Face's config.json or OpenAI's hparams.json. A key that would make the
    file's model compute something GPTModel does not is refused, and so is an unknown key."""
    try:
        hf = json.loads(read_small(path, CONFIG_BYTES))
        if not isinstance(hf, dict):
            raise ValueError("not a JSON object")
        for key, value in hf.items():
            if key in SAME_MATH and value not in SAME_MATH[key] and not (
                    key == "n_inner" and value == 4 * hf.get("n_embd", 0)):
                raise ValueError(f"{key} {value!r} changes the model's math; GPTModel computes "
                                 f"{key} {SAME_MATH[key][0]!r} only")
            if key not in SAME_MATH and key not in SIZES and key not in HARMLESS:
                raise ValueError(f"unknown key {key!r}: if it does not change the math, add it to "
                                 "HARMLESS in plumbing/formats.py")
        sizes = {ours: hf[key] for key, ours in reversed(SIZES.items()) if key in hf}
        cfg = {"drop_rate": 0.0, "qkv_bias": True, **sizes}  # n_positions over n_ctx, ...
        check_config(cfg)  # before anything is allocated from these numbers
        return cfg
    except (ValueError, TypeError, RecursionError) as e:
        raise InputError(f"{path} is not a usable GPT-2 config ({e})") from None


def read_tokenizer_config(path):
    """(model_max_length or None, "start" or "end") of transformers' tokenizer_config.json: the
    most tokens its tokenizer keeps when asked to truncate (1e30 and the like: None, no limit),
    and which end of a text it keeps (truncation_side "right" cuts the end: the start is kept)."""
    try:
        tok = json.loads(read_small(path, CONFIG_BYTES))
        length, side = tok.get("model_max_length"), tok.get("truncation_side", "right")
        if side not in ("right", "left"):
            raise ValueError(f"truncation_side {side!r} is neither right nor left")
        if tok.get("add_prefix_space") is True:  # GPT-2's tokenizer here never does
            raise ValueError("its tokenizer adds a space before every text (add_prefix_space)")
        return (length if type(length) is int and 1 <= length < 2**31 else None,
                "start" if side == "right" else "end")
    except (ValueError, AttributeError, TypeError, RecursionError) as e:
        raise InputError(f"{path} is not a usable tokenizer_config.json ({e})") from None


# ---------------------------------------------------------------------------------------------
# encoder.json and vocab.json, GPT-2's byte-pair vocabulary, for when tiktoken cannot get it:
# OpenAI's pattern, and the SHA-256 of its 50,256 tokens in rank order (rank, length, bytes).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_RANKS_SHA256 = "3688d51d64f4f960692ec9745abe1ddb9699fb637fe608cceaf8917b0653b79b"


def encoding_from(path):
    """tiktoken's GPT-2 encoding, built from an encoder.json or vocab.json file, or from the
    vocabulary in a tokenizer.json (the tokenizers library's, which transformers reads first)."""
    try:
        raw = read_small(path, VOCAB_BYTES)
        tok = json.loads(raw)
        if isinstance(tok, dict) and isinstance(tok.get("model"), dict):  # a tokenizer.json
            if (tok.get("pre_tokenizer") or {}).get("add_prefix_space") is True:
                raise ValueError("it adds a space before every text (add_prefix_space)")
            raw = json.dumps(tok["model"]["vocab"]).encode()
        return gpt2_encoding(raw)
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as e:
        raise InputError(f"{path} is not GPT-2's vocabulary ({e})") from None


# GPT-2's bytes_to_unicode: encoder.json and merges.txt write each byte of a token as a printable
# character, itself where it is one (but the space), else chr(256 + n) for the n-th of the others.
PRINTABLE = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
BYTE_CHARS = {b: chr(b) for b in PRINTABLE} | {
    b: chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in PRINTABLE)}


@functools.lru_cache(maxsize=4)  # the same bytes, read again by each run in one process
def gpt2_encoding(raw):
    """The encoding of an encoder.json's bytes. Their tokens are bytes written as printable
    characters (BYTE_CHARS): undone here."""
    byte = {c: b for b, c in BYTE_CHARS.items()}
    vocab = json.loads(raw)
    ranks = {bytes(byte[c] for c in token): rank for token, rank in vocab.items()
             if token != "<|endoftext|>"}
    digest = hashlib.sha256(b"".join(r.to_bytes(4, "little") + len(t).to_bytes(2, "little")
                                     + t for t, r in sorted(ranks.items(), key=lambda x: x[1])))
    if digest.hexdigest() != GPT2_RANKS_SHA256 or vocab.get("<|endoftext|>") != 50256:
        raise ValueError("its tokens differ: this project reads every text with GPT-2's, so "
                         "this model would read garbage")
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
