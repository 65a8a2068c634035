"""plumbing/formats.py: safetensors, the TensorFlow checkpoint, config.json, damaged files."""
import json
import os
import re
import shutil
import time
import tracemalloc
import unittest.mock
from pathlib import Path

import numpy as np

import load_gpt2
from plumbing import cli, formats

from helpers import (TF_FIXTURE, TestCase, encoder_json, tmpdir, random_hf_arrays,
                     write_checkpoint, Sources)


def varint(n):
    out = b""
    while True:
        out += bytes([n & 0x7F | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def tf_entry(offset, size, dtype=1, shape=(1,), crc=0):
    """A BundleEntryProto (TensorFlow's index value for one tensor), written by hand."""
    dims = b"".join(b"\x12" + varint(len(d)) + d for d in (b"\x08" + varint(x) for x in shape))
    return (b"\x08" + varint(dtype) + b"\x12" + varint(len(dims)) + dims + b"\x20"
            + varint(offset) + b"\x28" + varint(size) + b"\x35" + crc.to_bytes(4, "little"))


def write_tf_index(path, entries, handles=1):
    """A LevelDB-format table of entries {key: value}, in key order: one data block, its index
    block (with handles entries pointing at it), the footer; each block with its type and
    masked CRC-32C. An independent writer."""
    def block(pairs):
        body = b"".join(varint(0) + varint(len(k)) + varint(len(v)) + k + v for k, v in pairs)
        body += (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # one restart point, at 0
        crc = formats.crc32c(np.frombuffer(body + b"\x00", np.uint8))
        masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32
        return body + b"\x00" + masked.to_bytes(4, "little")
    data = block(sorted(entries.items()))
    handle = varint(0) + varint(len(data) - 5)
    index = block([(max(entries) + i.to_bytes(2, "big"), handle) for i in range(handles)])
    footer = varint(0) + varint(0) + varint(len(data)) + varint(len(index) - 5)
    footer += bytes(40 - len(footer)) + (0xdb4775248b80fb57).to_bytes(8, "little")
    Path(path).write_bytes(data + index + footer)


class TestFormats(TestCase):
    def test_damaged_files_are_clear_errors(self):
        arrays = random_hf_arrays()
        good = write_checkpoint(tmpdir(self) / "good", arrays, 4) / "model.safetensors"
        raw = good.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + n])
        cases = {
            "truncated": raw[:-100],
            "empty": b"",
            "header length beyond the file": (10 ** 9).to_bytes(8, "little") + raw[8:],
            "header not JSON": raw[:8] + b"{" * n + raw[8 + n:],
            "overlapping tensors": None,
        }
        shifted = dict(header)  # the second tensor starts 4 bytes inside the first one
        first, second = sorted(shifted, key=lambda k: shifted[k]["data_offsets"][0])[:2]
        begin, end = shifted[second]["data_offsets"]
        shifted[second] = dict(shifted[second], data_offsets=[begin - 4, end - 4])
        head = json.dumps(shifted).encode()
        cases["overlapping tensors"] = len(head).to_bytes(8, "little") + head + raw[8 + n:]
        for what, content in cases.items():
            with self.subTest(what):
                folder = tmpdir(self)
                (folder / "model.safetensors").write_bytes(content)
                (folder / "config.json").write_bytes((good.parent / "config.json").read_bytes())
                with self.assertRaises(cli.InputError) as e:
                    load_gpt2.load_gpt2(folder)
                self.assertIn(str(folder / "model.safetensors"), str(e.exception))
                self.assertIn("delete it and download it again", str(e.exception))

    def test_bad_config_json_is_a_clear_error(self):
        folder = write_checkpoint(tmpdir(self), random_hf_arrays(), 4)
        good = {"vocab_size": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 16}
        cases = {"vocab_size must be an integer from 1 to 1,000,000, not None": {"n_embd": 32},
                 "not divisible by n_heads 5": dict(good, n_head=5),
                 "n_layers must be an integer from 1 to 1,000, not True": dict(good, n_layer=True),
                 "emb_dim must be an integer from 1 to 65,536, not 32.0": dict(good, n_embd=32.0),
                 "vocab_size must be an integer from 1 to 1,000,000, not -64":
                     dict(good, vocab_size=-64),
                 "parameters; GPT-2's largest": dict(good, n_embd=65536, n_layer=1000, n_head=1)}
        for message, config in cases.items():
            with self.subTest(message):
                (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
                for pretrained in (True, False):  # checked before anything is allocated
                    with self.assertRaisesRegex(cli.InputError,
                                                "config.json is not a usable GPT-2 config "
                                                f".*{re.escape(message)}"):
                        load_gpt2.load_gpt2(folder, pretrained=pretrained)
        (folder / "config.json").unlink()
        (folder / "config.json").symlink_to(os.devnull)  # a device: never read
        with self.assertRaisesRegex(cli.InputError, "not a regular file of at most 1,000,000"):
            load_gpt2.load_gpt2(folder)

    def test_transformers_tokenizer_files_are_read_and_checked(self):
        folder, vocab = tmpdir(self), json.loads(encoder_json())
        pre = {"type": "ByteLevel", "add_prefix_space": False}
        (folder / "tokenizer.json").write_text(json.dumps(
            {"version": "1.0", "pre_tokenizer": pre, "model": {"type": "BPE", "vocab": vocab}}))
        self.assertEqual(formats.encoding_from(folder / "tokenizer.json").encode("hi there"),
                         [5303, 612])
        (folder / "tokenizer.json").write_text(json.dumps(
            {"pre_tokenizer": {**pre, "add_prefix_space": True}, "model": {"vocab": vocab}}))
        with self.assertRaisesRegex(cli.InputError, "tokenizer.json is not GPT-2's vocabulary "
                                    r"\(it adds a space before every text"):
            formats.encoding_from(folder / "tokenizer.json")
        path = folder / "tokenizer_config.json"
        for config, expected in (({}, (None, "start")), ({"model_max_length": int(1e30)},
                                                         (None, "start")),
                                 ({"model_max_length": 128, "truncation_side": "left"},
                                  (128, "end")), ({"model_max_length": 1.5}, (None, "start"))):
            path.write_text(json.dumps(config))
            self.assertEqual(formats.read_tokenizer_config(path), expected)
        for config, message in (([], "'list' object has no attribute"),
                                ({"truncation_side": "middle"}, "'middle' is neither"),
                                ({"add_prefix_space": True}, "adds a space before every text")):
            path.write_text(json.dumps(config))
            with self.assertRaisesRegex(cli.InputError, "tokenizer_config.json is not a usable "
                                        f"tokenizer_config.json .*{message}"):
                formats.read_tokenizer_config(path)

    def test_weights_beyond_this_machines_memory_are_refused_before_allocating(self):
        folder = tmpdir(self)
        folder = write_checkpoint(folder / "huge", random_hf_arrays(), 4)
        (folder / "config.json").write_text(json.dumps({
            "vocab_size": 50257, "n_positions": 1024, "n_embd": 8192, "n_layer": 11,
            "n_head": 64}))
        page, pages = os.sysconf("SC_PAGE_SIZE"), 8 * 2**30 // os.sysconf("SC_PAGE_SIZE")
        with unittest.mock.patch.object(formats.os, "sysconf",
                                        lambda name: page if name == "SC_PAGE_SIZE" else pages), \
                self.assertRaisesRegex(cli.InputError, "9.7e\\+09 parameters, 39 GB of float32 "
                                       "weights: more than this machine's 9 GB"):
            load_gpt2.load_gpt2(folder, pretrained=False)


class TestTensorFlowCheckpoint(Sources):
    def test_the_books_tensorflow_folder_is_the_same_model_without_tensorflow(self):
        book = self.dir / "gpt2" / "124M"  # as gpt_download.py leaves it
        shutil.copytree(TF_FIXTURE, book)
        self.assert_fixture(load_gpt2.load_gpt2(book), book / "model.ckpt.index")
        data_file = book / "model.ckpt.data-00000-of-00001"
        raw = data_file.read_bytes()
        index = (book / "model.ckpt.index").read_bytes()
        cases = {"fails its CRC-32C checksum": (raw[:5000] + b"\x01" + raw[5001:], index),
                 "claims bytes": (raw[:-4], index),
                 "fails its CRC": (raw, index[:100] + bytes([index[100] ^ 1]) + index[101:]),
                 "no table footer": (raw, index[:-1]),
                 "holds neither model.safetensors nor OpenAI's": (raw, None)}
        for message, (data_bytes, index_bytes) in cases.items():
            with self.subTest(message):
                data_file.write_bytes(data_bytes)
                (book / "model.ckpt.index").unlink(missing_ok=True)
                if index_bytes is None:
                    (book / "model.ckpt.index").mkdir()
                else:
                    (book / "model.ckpt.index").write_bytes(index_bytes)
                with self.assertRaises(cli.InputError) as e:
                    load_gpt2.load_gpt2(book)
                self.assertIn(message, str(e.exception))
                self.assertIn(str(book), str(e.exception))
                if index_bytes is None:
                    (book / "model.ckpt.index").rmdir()

    def test_crafted_tensorflow_tables_are_refused_in_bounded_time(self):
        entries = dict(formats.table_entries(np.frombuffer(
            (TF_FIXTURE / "model.ckpt.index").read_bytes(), np.uint8)))
        book = self.dir / "book"
        shutil.copytree(TF_FIXTURE, book)
        write_tf_index(book / "model.ckpt.index", entries)  # our writer, checked on the real
        self.assert_fixture(load_gpt2.load_gpt2(book), book / "model.ckpt.index")
        cases = {"two tensors are both 'wte.weight'":
                     {**entries, b"model/wte/w": entries[b"model/wte"]},
                 "at most 10,000 differently named tensors":
                     {**entries, **{f"model/x{i:05}".encode(): tf_entry(0, 0)
                                    for i in range(10_001)}},
                 "is not a whole float tensor": {**entries, b"model/wpe": tf_entry(0, 4, 7)},
                 "claims bytes": {**entries, b"model/wpe": tf_entry(10**12, 4)}}
        cases["blocks that overlap"] = entries  # the same block twice, 2,000 times: refused
        for message, crafted in cases.items():
            with self.subTest(message):
                write_tf_index(book / "model.ckpt.index", crafted,
                               2000 if crafted is entries else 1)
                start = time.time()
                with self.assertRaisesRegex(cli.InputError, re.escape(message)):
                    load_gpt2.load_gpt2(book)
                self.assertLess(time.time() - start, 10)

    def test_a_tensor_no_gpt2_has_costs_nothing_and_no_crc_copies_its_data(self):
        book, real = self.dir / "book", formats.crc32c
        shutil.copytree(TF_FIXTURE, book)
        entries = dict(formats.table_entries(np.frombuffer(
            (TF_FIXTURE / "model.ckpt.index").read_bytes(), np.uint8)))
        data_file = book / "model.ckpt.data-00000-of-00001"
        size = data_file.stat().st_size
        with open(data_file, "r+b") as f:
            f.truncate(size + 2**26)  # 64 MB more, sparse: a tensor no GPT-2 has
        write_tf_index(book / "model.ckpt.index",
                       {**entries, b"model/extra": tf_entry(size, 2**26, shape=(2**24,))})
        with unittest.mock.patch.object(formats, "crc32c", wraps=real) as crc, \
                self.assertRaisesRegex(cli.InputError, "unexpected tensor 'extra.weight'"):
            load_gpt2.load_gpt2(book)
        self.assertLess(max(len(call.args[0]) for call in crc.call_args_list), 2**20)  # blocks
        data = np.random.default_rng(0).integers(0, 256, 2**25 + 13, np.uint8)
        tracemalloc.start()
        try:
            whole = formats.crc32c(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 40 * 2**20)  # copies of 16 MB pieces, not two of the 32 MB
        self.assertEqual(whole, formats.crc32c(data, piece=2**30))  # pieces join exactly
        reference = 0xFFFFFFFF  # an independent CRC-32C, a bit at a time
        for byte in data[:5000].tobytes():
            reference ^= byte
            for _ in range(8):
                reference = (reference >> 1) ^ (0x82F63B78 if reference & 1 else 0)
        self.assertEqual(formats.crc32c(data[:5000], piece=1024), reference ^ 0xFFFFFFFF)

        def out_of_memory(data):  # what a memory limit does to a large tensor's CRC
            if len(data) > 10_000:
                raise MemoryError("Unable to allocate 1.00 GiB for an array")
            return real(data)
        write_tf_index(book / "model.ckpt.index", entries)
        with unittest.mock.patch.object(formats, "crc32c", out_of_memory), \
                self.assertRaisesRegex(cli.InputError, "out of memory while reading "
                                       f"{re.escape(str(data_file))}") as e:
            load_gpt2.load_gpt2(book)
        self.assertNotIn("batch-size", str(e.exception))

    def test_config_keys_that_change_the_math_are_refused(self):
        folder = write_checkpoint(self.dir / "ckpt", random_hf_arrays(), 4)
        good = json.loads((folder / "config.json").read_text())
        load_gpt2.load_gpt2(folder)
        cases = {"activation_function 'relu' changes the model's math":
                     {"activation_function": "relu"},
                 "layer_norm_epsilon 0.1 changes": {"layer_norm_epsilon": 0.1},
                 "scale_attn_weights False changes": {"scale_attn_weights": False},
                 "scale_attn_by_inverse_layer_idx True changes":
                     {"scale_attn_by_inverse_layer_idx": True},
                 "n_inner 100 changes": {"n_inner": 100},
                 "unknown key 'rotary_dim': if it does not change the math, add it to HARMLESS":
                     {"rotary_dim": 8}}
        for message, change in cases.items():
            with self.subTest(message):
                (folder / "config.json").write_text(json.dumps({**good, **change}))
                with self.assertRaisesRegex(cli.InputError, re.escape(message)):
                    load_gpt2.load_gpt2(folder)
        (folder / "config.json").write_text(json.dumps({**good, "n_inner": 128,
                                                        "activation_function": "gelu_pytorch_tanh",
                                                        "resid_pdrop": 0.1}))
        load_gpt2.load_gpt2(folder)  # 4 x n_embd, the same tanh GELU, dropout: the same math
