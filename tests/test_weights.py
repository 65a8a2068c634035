"""plumbing/weights.py: weights that are not finite, look untrained (said wherever the results
show), or match no size."""
import contextlib
import io

import numpy as np
import torch

import load_gpt2
import train_classifier as tc
from plumbing import cli, weights

from helpers import (TestCase, tokenizer, tmpdir, random_hf_arrays, write_checkpoint,
                     tiny_gpt2_folder, run_cli, Trains)


class TestWeights(TestCase):
    def test_without_config_json_a_non_released_size_is_a_clear_error(self):
        folder = write_checkpoint(tmpdir(self), random_hf_arrays(), 4, config=False)
        with self.assertRaisesRegex(cli.InputError,
                                    "no config.json and its tensors match no released"):
            load_gpt2.load_gpt2(folder)

    def test_weights_that_are_not_finite_are_refused(self):
        for value in (np.nan, np.inf, -np.inf):
            arrays = random_hf_arrays()
            arrays["h.1.mlp.c_fc.weight"][3, 5] = value
            folder = write_checkpoint(tmpdir(self), arrays, 4)
            with self.subTest(value), self.assertRaisesRegex(
                    cli.InputError, "trf_blocks.1.ff.layers.0.weight holds NaN or infinite"):
                load_gpt2.load_gpt2(folder)

    def test_weights_that_look_untrained_are_named_never_refused(self):
        self.assertEqual(tokenizer().encode_ordinary(weights.SENTENCE), weights.SENTENCE_IDS)
        folder = tiny_gpt2_folder(tmpdir(self))
        with contextlib.redirect_stderr(io.StringIO()) as err:
            model = load_gpt2.load_gpt2(folder)
        self.assertIn(f"warning: {folder / 'model.safetensors'} looks untrained or damaged: its "
                      "loss on a plain English sentence is", err.getvalue())
        ids, optimizer = torch.tensor([weights.SENTENCE_IDS]), torch.optim.Adam(
            model.parameters(), lr=1e-2)
        for _ in range(20):  # a model that has learnt the sentence is left alone
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(ids)[0, :-1], ids[0, 1:]).backward()
            optimizer.step()
        self.assertIsNone(weights.untrained(model.eval()))
        with contextlib.redirect_stderr(io.StringIO()) as err:
            load_gpt2.load_gpt2(folder, pretrained=False)  # random on purpose: nothing to say
        self.assertEqual(err.getvalue(), "")


class TestUntrainedWeightsFollowTheModel(Trains):
    def test_the_summary_the_classifier_and_predict_name_them(self):
        _, log = self.train("--epochs", "1")  # the tiny model's weights look untrained
        final = next(line for line in log.splitlines() if line.startswith("final |"))
        self.assertTrue(final.endswith("| from weights that look untrained, not GPT-2's trained "
                                       "ones"), final)
        self.assertEqual(tc.load_classifier(self.out)[1]["untrained"],
                         "weights that look untrained")
        code, out, err = run_cli(tc.main, "--out", self.out, "--predict", "Free entry")
        self.assertEqual((code, err.splitlines()[0]), (0, "warning: this classifier was "
                         "fine-tuned from weights that look untrained, not GPT-2's trained ones: "
                         "its answers mean little"))
        self.assertEqual(len(out.splitlines()), 1)
        _, log = self.train("--epochs", "1", "--init", "random", out="random")
        self.assertIn("| from random weights, not GPT-2's trained ones", log)
        self.assertEqual(tc.load_classifier(self.dir / "random")[1]["untrained"], "random weights")
