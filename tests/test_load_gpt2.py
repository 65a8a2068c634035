"""load_gpt2.py: GPT-2's weights mapped exactly, the tokenizer."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import unittest.mock

import numpy as np
import torch

import load_gpt2
from plumbing import cli

from helpers import (ROOT, TF_FIXTURE, TIKTOKEN_NAME, TestCase, encoder_json, tokenizer, tmpdir,
                     write_safetensors, as_stored, random_hf_arrays, numpy_gpt2, write_checkpoint,
                     Sources)


class TestLoadGPT2(TestCase):
    def test_checkpoint_variants_load_exactly(self):
        arrays = random_hf_arrays()
        ids = [3, 17, 42, 5, 63, 0, 9]
        variants = [("F32", "transformer.", ()),
                    ("F32", "", ("h.0.attn.bias", "h.1.attn.masked_bias")),
                    ("F16", "", ("lm_head.weight",)),
                    ("BF16", "transformer.", ("transformer.h.0.attn.bias",))]
        for dtype, prefix, buffers in variants:
            with self.subTest(dtype=dtype, prefix=prefix, buffers=buffers):
                folder = write_checkpoint(tmpdir(self) / "ckpt", arrays, 4, dtype, prefix, buffers)
                model = load_gpt2.load_gpt2(folder)
                self.assertFalse(model.training)
                self.assertEqual(model.tok_emb.weight.dtype, torch.float32)
                stored = {k: as_stored(v, dtype) for k, v in arrays.items()}
                expected = numpy_gpt2(stored, ids, n_head=4)
                with torch.no_grad():
                    logits = model(torch.tensor([ids]))[0].double().numpy()
                self.assertLess(np.abs(logits - expected).max(), 1e-4)

    def test_missing_wrong_shape_and_unknown_tensors_name_the_key(self):
        arrays = random_hf_arrays()
        missing = {k: v for k, v in arrays.items() if k != "h.1.mlp.c_fc.bias"}
        wrong = dict(arrays, **{"h.0.attn.c_proj.weight": np.zeros((32, 31), np.float32)})
        extra = dict(arrays, **{"h.0.attn.rotary": np.zeros(3, np.float32)})
        for bad, key in ((missing, "h.1.mlp.c_fc.bias"), (wrong, "h.0.attn.c_proj.weight"),
                         (extra, "h.0.attn.rotary")):
            with self.subTest(key):
                folder = write_checkpoint(tmpdir(self), bad, 4)
                with self.assertRaisesRegex(cli.InputError,
                                            f"{re.escape(str(folder))}.*{re.escape(key)}"):
                    load_gpt2.load_gpt2(folder)

    def test_unknown_model_name_lists_the_valid_ones(self):
        for pretrained in (True, False):
            with self.assertRaisesRegex(cli.InputError,
                                        "unknown model 'gpt-5'.*gpt2-xl.*or a folder"):
                load_gpt2.load_gpt2("gpt-5", pretrained=pretrained)

    def test_tokenizer_ids(self):
        tok = tokenizer()
        self.assertEqual(tok.encode("Do you have time"), [5211, 345, 423, 640])
        self.assertEqual(tok.encode("Every effort moves you"), [6109, 3626, 6100, 345])

    def test_both_key_styles_at_once_is_an_error_not_a_choice(self):
        folder = tmpdir(self)
        arrays = random_hf_arrays()
        folder = write_checkpoint(folder / "twice", arrays, 4)
        named = {f"transformer.{k}": v for k, v in arrays.items()}
        named["h.0.ln_1.weight"] = arrays["h.0.ln_1.weight"]
        write_safetensors(folder / "model.safetensors", named)
        with self.assertRaisesRegex(cli.InputError, "tensor 'h.0.ln_1.weight' is there twice"):
            load_gpt2.load_gpt2(folder)


class TestTokenizerAndDevice(Sources):
    def test_the_vocabulary_comes_from_the_weights_when_tiktoken_cannot(self):
        real, folder = tokenizer(), self.dir / "book"
        shutil.copytree(TF_FIXTURE, folder)
        (folder / "encoder.json").write_bytes(encoder_json())
        env = {"TIKTOKEN_CACHE_DIR": str(self.dir / "empty"), "HF_HUB_OFFLINE": "1"}
        text = "Every effort moves you <|endoftext|> naïve café 😀\n\n  spaces"
        with unittest.mock.patch.dict(os.environ, env):
            tok = load_gpt2.get_tokenizer(folder)
            self.assertEqual(tok.encode_ordinary(text), real.encode_ordinary(text))
            self.assertEqual((tok.n_vocab, tok.eot_token), (50257, 50256))
            vocab = json.loads(encoder_json())
            vocab["Ġthe"], vocab["Ġa"] = vocab["Ġa"], vocab["Ġthe"]  # two ranks swapped
            (folder / "encoder.json").write_text(json.dumps(vocab), encoding="utf-8")
            with self.assertRaisesRegex(cli.InputError, "book/encoder.json is not GPT-2's "
                                                          "vocabulary"):
                load_gpt2.get_tokenizer(folder)
        (folder / "encoder.json").write_bytes(encoder_json())
        tiktoken_cache = self.dir / "tiktoken"  # tiktoken's file, but damaged
        tiktoken_cache.mkdir()
        (tiktoken_cache / TIKTOKEN_NAME).write_bytes(b"{}")
        for cache in ("", str(tiktoken_cache)):  # "": tiktoken keeps no cache, it downloads
            with self.subTest(cache=cache), unittest.mock.patch.dict(
                    os.environ, {**env, "TIKTOKEN_CACHE_DIR": cache}), unittest.mock.patch(
                    "tiktoken.get_encoding", side_effect=AssertionError("tiktoken reads")):
                self.assertEqual(load_gpt2.get_tokenizer(folder).n_vocab, 50257)  # offline
        hub = self.hub({("openai-community/gpt2", "vocab.json"): encoder_json()})
        with unittest.mock.patch.dict(os.environ, {**env, "HF_HUB_OFFLINE": ""}), \
                unittest.mock.patch("tiktoken.get_encoding",
                                    side_effect=AssertionError("tiktoken downloads")):
            self.assertEqual(load_gpt2.get_tokenizer("gpt2").encode_ordinary(text),
                             real.encode_ordinary(text))
        self.assertEqual([r[1] for r in hub.requests if r[0] == "GET"],
                         ["/openai-community/gpt2/resolve/main/vocab.json"])

    @unittest.skipIf(sys.platform == "win32", "FIFOs are POSIX")
    def test_files_planted_in_tiktokens_shared_cache_are_never_opened(self):
        planted = self.dir / "data-gym-cache"  # tiktoken's folder in /tmp, as another user left it
        planted.mkdir()
        bpe = hashlib.sha1(b"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
                           b"vocab.bpe").hexdigest()
        os.mkfifo(planted / bpe)  # reading it waits forever
        (planted / TIKTOKEN_NAME).symlink_to("/dev/zero")  # reading it never ends
        folder = self.dir / "book"
        shutil.copytree(TF_FIXTURE, folder)
        (folder / "encoder.json").write_bytes(encoder_json())
        code = "import load_gpt2, sys; print(load_gpt2.get_tokenizer(sys.argv[1]).n_vocab)"
        result = subprocess.run([sys.executable, "-c", code, folder], cwd=ROOT, text=True,
                                capture_output=True, timeout=30,
                                env={**os.environ, "TIKTOKEN_CACHE_DIR": str(planted)})
        self.assertEqual(result.stdout.strip(), "50257", result.stderr)
