"""generate.py: sampling, the KV cache, the command line."""
import torch

import generate as gen
import load_gpt2
import model as gpt

from helpers import (TestCase, tokenizer, tmpdir, random_hf_arrays, write_checkpoint,
                     tiny_gpt2_folder, run_cli, Trains)


class TestGenerate(TestCase):
    def setUp(self):
        torch.manual_seed(0)
        cfg = gpt.get_config("gpt2", emb_dim=32, n_heads=4, n_layers=2, context_length=16,
                             vocab_size=40)
        self.model = gpt.GPTModel(cfg).eval()
        with torch.no_grad():  # sharper logits than GPT-2's small init, so greedy is not all ties
            self.model.out_head.weight.mul_(30)
        self.prompt = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])

    def test_cached_and_uncached_greedy_agree_across_a_window_slide(self):
        cached = gen.generate(self.model, self.prompt, 20, temperature=0.0)  # 30 > context 16
        plain = gen.generate(self.model, self.prompt, 20, temperature=0.0, use_cache=False)
        self.assertEqual(cached.shape, (1, 30))
        self.assertEqual(cached.tolist(), plain.tolist())
        self.assertGreater(len(set(cached[0, 10:].tolist())), 2)

    def test_top_k_1_is_greedy_and_seeds_repeat(self):
        greedy = gen.generate(self.model, self.prompt, 8, temperature=0.0)
        top1 = gen.generate(self.model, self.prompt, 8, temperature=1.0, top_k=1)
        tiny_p = gen.generate(self.model, self.prompt, 8, temperature=1.0, top_p=1e-9)
        self.assertEqual(greedy.tolist(), top1.tolist())
        self.assertEqual(greedy.tolist(), tiny_p.tolist())
        sample = lambda seed: gen.generate(self.model, self.prompt, 8, temperature=2.0, top_k=1000,
                                           generator=torch.Generator().manual_seed(seed)).tolist()
        self.assertEqual(sample(1), sample(1))
        self.assertNotEqual(sample(1), sample(2))

    def test_top_p_keeps_the_smallest_set_reaching_p(self):
        logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
        picks = {gen.sample_next(logits, top_p=0.8,
                                 generator=torch.Generator().manual_seed(s)).item()
                 for s in range(200)}
        self.assertEqual(picks, {0, 1})  # 0.5 + 0.3 reaches 0.8: tokens 2 and 3 are cut

    def test_eos_stops_early(self):
        first = gen.generate(self.model, self.prompt, 5, temperature=0.0)[0, 10].item()
        out = gen.generate(self.model, self.prompt, 5, temperature=0.0, eos_id=first)
        self.assertEqual(out.shape, (1, 11))

    def test_a_tiny_temperature_is_greedy_not_an_error(self):
        logits = torch.tensor([[1.0, 3.0, 2.0]])
        for temperature in (1e-30, 1e-320):
            self.assertEqual(gen.sample_next(logits, temperature=temperature).item(), 1)

    def test_sampling_is_stable_in_half_precision(self):
        logits = torch.tensor([[60000.0, -60000.0, 0.0, 65000.0]], dtype=torch.float16)
        token = gen.sample_next(logits, temperature=0.5, generator=torch.Generator().manual_seed(0))
        self.assertEqual(token.item(), 3)
        self.assertEqual(gen.sample_next(logits, top_k=10_000).shape, (1, 1))  # clamped

    def test_invalid_settings_are_errors(self):
        for bad in ({"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": 0}):
            with self.subTest(**bad), self.assertRaises(ValueError):
                gen.generate(self.model, self.prompt, 3, **bad)
        with self.assertRaises(ValueError):
            gen.generate(self.model, self.prompt, -1)


class TestGenerateCLI(Trains):
    def test_sampling_flags_with_greedy_decoding_are_refused(self):
        for flags in (["--top-k", "5"], ["--top-p", "0.5"], ["--seed", "1"]):
            with self.subTest(flags):
                code, _, err = run_cli(gen.main, "--temperature", "0", *flags)
                self.assertEqual(code, 2)
                self.assertIn(f"{flags[0]} does nothing with --temperature 0 (greedy); leave it "
                              "out", err)

    def test_streams_text_and_handles_special_prompts(self):
        tokenizer()
        folder = tiny_gpt2_folder(tmpdir(self))
        for prompt in ("Every effort moves you", "", "a <|endoftext|> b"):
            with self.subTest(prompt=prompt):
                code, out, err = run_cli(gen.main, prompt, "--model", folder,
                                         "--max-new-tokens", "5", "--seed", "1", "--ignore-eos")
                self.assertEqual(code, 0, err)
                self.assertTrue(out.startswith(prompt))
                self.assertGreater(len(out), len(prompt) + 1)
        again = run_cli(gen.main, "Every effort moves you", "--model", folder, "--max-new-tokens",
                        "5", "--seed", "1", "--ignore-eos")[1]
        self.assertEqual(again, run_cli(gen.main, "Every effort moves you", "--model", folder,
                                        "--max-new-tokens", "5", "--seed", "1", "--ignore-eos")[1])
        for bad in ("-1", "nan"):
            code, _, err = run_cli(gen.main, "--temperature", bad)
            self.assertEqual(code, 2)
            self.assertIn("temperature >= 0", err)
        code, _, err = run_cli(gen.main, "--seed", str(10**30))
        self.assertEqual(code, 2)
        self.assertIn("must be a number >= 0", err)

    def test_a_padded_vocabulary_is_never_sampled(self):
        arrays = random_hf_arrays(V=50304, T=16, C=8, L=1)
        arrays["wte.weight"][50257:] = 30.0  # padding rows that would win every step
        folder = write_checkpoint(self.dir / "padded", arrays, 2)
        model = load_gpt2.load_gpt2(folder)
        out = gen.generate(model, torch.tensor([[1, 2]]), 10, temperature=1.0,
                           vocab_size=self.tok.n_vocab)
        self.assertLess(out.max().item(), 50257)
        code, printed, err = run_cli(gen.main, "hi", "--model", folder, "--max-new-tokens", "5",
                                     "--seed", "1", "--ignore-eos")
        self.assertEqual(code, 0, err)
