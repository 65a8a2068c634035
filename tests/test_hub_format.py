"""plumbing/hub_format.py: transformers' GPT-2 format, checked against the real transformers
(pip install transformers; the tests that need it skip without it)."""
import contextlib
import copy
import hashlib
import importlib.util
import io
import json
import unittest

import tiktoken
import torch

import load_gpt2
import lora
import model as gpt
from plumbing import cli, hub_format

from helpers import ENCODER_JSON, TestCase, tiny_gpt2_folder, tmpdir, tokenizer

NO_TRANSFORMERS = "transformers is not installed: pip install transformers to compare with it"
needs_transformers = unittest.skipIf(importlib.util.find_spec("transformers") is None,
                                     NO_TRANSFORMERS)
TEXTS = ["Free entry! Win £1,000 now", "ok", "  two spaces,\nthen a new line\t and a tab",
         "See you at dinner tonight? Let me know :)", "日本語のテキスト, émojis 🙂 and 12345.67",
         "A longer text " * 9 + "that ends here."]


def quietly(load, *args, **kwargs):
    """A transformers call without its progress bars and notes on the console."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return load(*args, **kwargs)


class TestLanguageModel(TestCase):
    """write_language_model: a folder that transformers' AutoModelForCausalLM and load_gpt2 both
    open with the model's logits, and GPT-2's tokenizer files as the hub's repos hold them."""

    def setUp(self):
        self.tok, self.dir = tokenizer(), tmpdir(self)
        with contextlib.redirect_stderr(io.StringIO()):  # random weights: an "untrained" warning
            self.model = load_gpt2.load_gpt2(tiny_gpt2_folder(self.dir / "tiny", T=80))
        self.ids = [torch.tensor([self.tok.encode_ordinary(text)]) for text in TEXTS]

    def another(self):
        return copy.deepcopy(self.model)

    def written(self, model, name="lm", tokenizer=None):
        folder = self.dir / name
        folder.mkdir()
        hub_format.write_language_model(folder, model, tokenizer or self.tok)
        return folder

    @needs_transformers
    def test_transformers_and_load_gpt2_open_it_with_the_same_logits(self):
        from transformers import AutoModelForCausalLM
        untied = self.another()
        untied.out_head.weight.data.normal_(std=0.3)
        no_qkv_bias = gpt.GPTModel({**self.model.cfg, "qkv_bias": False}).eval()  # the book's
        no_qkv_bias.out_head.weight = no_qkv_bias.tok_emb.weight  # tied, as the book ties them
        for name, model in (("tied", self.model), ("untied", untied), ("no-qkv-bias", no_qkv_bias)):
            with self.subTest(name):
                folder = self.written(model, name)
                config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
                self.assertEqual((config["architectures"], config["model_type"], config["n_embd"],
                                  config["n_positions"], config["bos_token_id"],
                                  config["eos_token_id"], config["tie_word_embeddings"]),
                                 (["GPT2LMHeadModel"], "gpt2", 16, 80, 50256, 50256,
                                  name != "untied"))
                theirs = quietly(AutoModelForCausalLM.from_pretrained, folder).eval()
                with contextlib.redirect_stderr(io.StringIO()):
                    again = load_gpt2.load_gpt2(folder)
                for ids in self.ids:
                    with torch.no_grad():
                        logits = model(ids)
                        self.assertLess((theirs(ids).logits - logits).abs().max(), 1e-5)
                        self.assertLess((again(ids) - logits).abs().max(), 1e-5)
        tensors = load_gpt2.read_safetensors(self.dir / "tied" / "model.safetensors")[0]
        self.assertNotIn("lm_head.weight", tensors)  # tied: the hub's repos do not store it
        self.assertIn("lm_head.weight", load_gpt2.read_safetensors(
            self.dir / "untied" / "model.safetensors")[0])

    @needs_transformers
    def test_the_tokenizer_files_are_gpt2s_byte_for_byte(self):
        from transformers import AutoTokenizer
        files = hub_format.tokenizer_files(self.tok)
        self.assertEqual(hashlib.sha256(files["merges.txt"]).hexdigest(), hub_format.MERGES_SHA256)
        bpe = ENCODER_JSON.with_name(hashlib.sha1(  # tiktoken's name for its vocab.bpe
            b"https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
        ).hexdigest())
        if bpe.exists():  # OpenAI's own files: what the hub's merges.txt and vocab.json copy
            self.assertEqual(files["merges.txt"], bpe.read_bytes())
            self.assertEqual(files["vocab.json"], ENCODER_JSON.read_bytes())
        theirs = quietly(AutoTokenizer.from_pretrained, self.written(self.model))
        for text in TEXTS:
            self.assertEqual(theirs(text)["input_ids"], self.tok.encode_ordinary(text), text)

    def test_what_gpt2s_format_has_no_place_for_is_refused(self):
        ranks = dict(self.tok._mergeable_ranks)
        ranks[b" the"], ranks[b" a"] = ranks[b" a"], ranks[b" the"]  # another tokenizer's ranks
        other = tiktoken.Encoding("other", pat_str=self.tok._pat_str, mergeable_ranks=ranks,
                                  special_tokens={"<|endoftext|>": 50256})
        with self.assertRaisesRegex(cli.InputError, "the tokenizer's vocab.json would not be "
                                                    "GPT-2's"):
            self.written(self.model, tokenizer=other)
        self.assertEqual(list((self.dir / "lm").iterdir()), [])  # nothing written
        (self.dir / "lm").rmdir()
        with_lora, biased = self.another(), self.another()
        lora.replace_linear_with_lora(with_lora.trf_blocks, rank=2, alpha=2)
        biased.out_head = torch.nn.Linear(16, 50257)
        for model, message in ((with_lora, "no tensor 'trf_blocks.0.att.W_query.weight'"),
                               (biased, "out_head is not a language model's")):
            with self.subTest(message), self.assertRaisesRegex(cli.InputError, message):
                self.written(model)
            self.assertEqual(list((self.dir / "lm").iterdir()), [])
            (self.dir / "lm").rmdir()
