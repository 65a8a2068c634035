"""model.py: GPT-2's forward pass, its sizes, the KV cache, chapter 3's attention."""
import json
import math
import unittest.mock

import torch

import generate as gen
import load_gpt2
import model as gpt

from helpers import FIXTURE, TestCase


class TestModel(TestCase):
    def test_named_configs_and_aliases(self):
        sizes = {"gpt2": (768, 12, 12), "355M": (1024, 24, 16), "gpt2-large": (1280, 36, 20),
                 "gpt2-xl (1558M)": (1600, 48, 25)}
        for name, (C, L, H) in sizes.items():
            cfg = gpt.get_config(name)
            self.assertEqual((cfg["emb_dim"], cfg["n_layers"], cfg["n_heads"]), (C, L, H))
            self.assertEqual((cfg["vocab_size"], cfg["context_length"]), (50257, 1024))
        with self.assertRaises(ValueError) as e:
            gpt.get_config("gpt3")
        self.assertIn("gpt2-medium", str(e.exception))

    def test_matches_transformers_fixture(self):
        # Logits and greedy continuation computed by Hugging Face transformers (see
        # tests/fixtures/make_gpt2_tiny.py); transformers is not needed to run this.
        expected = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
        model = load_gpt2.load_gpt2(FIXTURE)
        prompt = torch.tensor([expected["prompt"]])
        with torch.no_grad():
            logits = model(prompt)[0]
        self.assertLessEqual((logits - torch.tensor(expected["logits"])).abs().max().item(), 1e-4)
        for use_cache in (True, False):
            out = gen.generate(model, prompt, 20, temperature=0.0, use_cache=use_cache)
            self.assertEqual(out[0, prompt.size(1):].tolist(), expected["greedy"])

    def test_gelu_is_the_tanh_approximation(self):
        x = torch.linspace(-4, 4, 101)
        ff = gpt.FeedForward(gpt.get_config("gpt2", emb_dim=4))
        tanh_gelu = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
        self.assertLess((ff.layers[1](x) - tanh_gelu).abs().max().item(), 1e-6)

    def test_context_length_overflow_is_a_clear_error(self):
        model = gpt.GPTModel(gpt.get_config("gpt2", emb_dim=8, n_heads=2, n_layers=1,
                                            context_length=8, vocab_size=10))
        with self.assertRaisesRegex(ValueError, "context length of 8"):
            model(torch.zeros(1, 9, dtype=torch.long))

    def test_kv_cache_gives_the_same_logits_as_a_full_pass(self):
        torch.manual_seed(0)
        model = gpt.GPTModel(gpt.get_config("gpt2", emb_dim=32, n_heads=4, n_layers=2,
                                            context_length=32, vocab_size=50)).eval()
        idx = torch.randint(0, 50, (2, 20))
        with torch.no_grad():
            full = model(idx)
            cache = model.new_cache()
            parts = [model(idx[:, :7], cache), model(idx[:, 7:12], cache)]
            parts += [model(idx[:, t:t + 1], cache) for t in range(12, 20)]
        self.assertLess((torch.cat(parts, dim=1) - full).abs().max().item(), 1e-5)

    def test_attention_is_chapter_3_attention(self):
        # The formula computed step by step here, and model.py's own step-by-step path
        # (fused=False), against the fused call, with and without the KV cache.
        torch.manual_seed(0)
        att = gpt.MultiHeadAttention(32, 32, 16, 0.0, num_heads=4, qkv_bias=True).eval()
        x = torch.randn(2, 7, 32)
        B, T, C, nh, hs = 2, 7, 32, 4, 8
        q, k, v = (W(x).view(B, T, nh, hs).transpose(1, 2)
                   for W in (att.W_query, att.W_key, att.W_value))
        attn_scores = q @ k.transpose(2, 3)  # (B, nh, T, T)
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        attn_scores.masked_fill_(mask, -torch.inf)
        attn_weights = torch.softmax(attn_scores / hs ** 0.5, dim=-1)
        expected = att.out_proj((attn_weights @ v).transpose(1, 2).reshape(B, T, C))
        model = gpt.GPTModel(gpt.get_config("gpt2", emb_dim=32, n_heads=4, n_layers=2,
                                            context_length=16, vocab_size=50)).eval()
        idx = torch.randint(0, 50, (2, 12))
        with torch.no_grad():
            self.assertLess((att(x) - expected).abs().max().item(), 1e-5)
            fused, cache = model(idx), model.new_cache()
            fused_cached = torch.cat([model(idx[:, :5], cache), model(idx[:, 5:], cache)], 1)
            with unittest.mock.patch.object(gpt.MultiHeadAttention, "fused", False):
                self.assertLess((att(x) - expected).abs().max().item(), 1e-5)
                self.assertLess((model(idx) - fused).abs().max().item(), 1e-5)
                cache = model.new_cache()
                cached = torch.cat([model(idx[:, :5], cache), model(idx[:, 5:], cache)], 1)
                self.assertLess((cached - fused_cached).abs().max().item(), 1e-5)
