"""lora.py: appendix E's LoRA, from the base model to a merged classifier."""
import torch

import load_gpt2
import lora
import model as gpt
import train_classifier as tc

from helpers import Trains


class TestLoRA(Trains):
    def test_lora_starts_at_the_base_model_and_merges_exactly(self):
        torch.manual_seed(0)
        cfg = gpt.get_config("gpt2", emb_dim=32, n_heads=4, n_layers=2, context_length=16,
                             vocab_size=50)
        model = tc.build_classifier(gpt.GPTModel(cfg), 3, "head").eval()
        idx = torch.randint(0, 50, (2, 9))
        with torch.no_grad():
            base = model(idx)
            lora.replace_linear_with_lora(model, rank=4, alpha=8)
            self.assertTrue(torch.equal(model(idx), base))  # B starts at zero: the same logits
            for name, p in model.named_parameters():  # as if trained: every B nonzero
                if name.endswith("lora.B"):
                    p.normal_(std=0.1)
            adapted = model(idx)
            self.assertGreater((adapted - base).abs().max().item(), 1e-2)
            merged = lora.merge_lora(model)
            self.assertFalse(any(isinstance(m, lora.LinearWithLoRA) for m in merged.modules()))
            plain = tc.build_classifier(gpt.GPTModel(cfg), 3, "head")
            self.assertEqual(merged.state_dict().keys(), plain.state_dict().keys())
            self.assertLess((merged(idx) - adapted).abs().max().item(), 1e-5)

    def test_lora_trains_and_saves_a_plain_classifier(self):
        model, log = self.train("--trainable", "lora", "--lora-rank", "4", "--epochs", "3")
        lora_params = sum(4 * (m.in_features + m.out_features)
                          for m in load_gpt2.load_gpt2(self.model_dir).modules()
                          if isinstance(m, torch.nn.Linear))
        lora_params += 4 * (16 + 2) - 4 * (16 + 50257)  # the head has 2 outputs, not 50,257
        self.assertIn(f"{lora_params:,} of", log)
        self.assertIn("frozen-prefix cache off (no frozen blocks)", log)
        self.assertFalse(any(isinstance(m, lora.LinearWithLoRA) for m in model.modules()))
        loaded, settings = tc.load_classifier(self.dir / "out")
        texts = ["message number 99 says apple", "message number 98 says zebra"]
        labels, max_length = settings["labels"], settings["max_length"]
        self.assertEqual(tc.classify(loaded, self.tok, texts, labels, max_length),
                         tc.classify(tc.Classifier(model, self.tok.eot_token), self.tok, texts,
                                     labels, max_length))
        self.assertEqual(settings["run"]["trainable"], "lora")
        self.assertGreater(self.records()[-1]["train_acc"], 0.5)
