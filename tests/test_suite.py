"""test_all.py: the suite is hermetic."""
import shutil

from helpers import encoder_json, run_script, Trains


class TestTheSuite(Trains):
    def test_a_users_caches_change_nothing(self):
        """After a real run filled a user's caches (Hugging Face's with the hub's gpt2, ours with
        its vocab.json), the suite's tests run exactly as they do for a user with no caches and no
        variable set: they once found the cached vocab.json, then failed."""
        home = self.dir / "home"
        snapshot = home / ".cache" / "huggingface" / "hub" / "models--openai-community--gpt2"
        (snapshot / "refs").mkdir(parents=True)
        (snapshot / "refs" / "main").write_text("a" * 40)
        shutil.copytree(self.model_dir, snapshot / "snapshots" / ("a" * 40))
        vocab = home / ".cache" / "gpt2-classifier" / "gpt2" / "vocab.json"
        vocab.parent.mkdir(parents=True)
        vocab.write_bytes(encoder_json())
        user = {"HOME": str(home), "USERPROFILE": str(home), "GPT2_CACHE_DIR": None,
                "HF_HOME": None, "XDG_CACHE_HOME": None, "TIKTOKEN_CACHE_DIR": "",
                "HF_HUB_OFFLINE": "1"}
        code, out, err = run_script("train_classifier.py", "--data", self.data, "--epochs", "1",
                                    "--batch-size", "4", "--out", self.dir / "o", env=user)
        self.assertEqual(code, 0, err)  # the user's own run, from the caches alone
        self.assertIn(f"({snapshot / 'snapshots' / ('a' * 40) / 'model.safetensors'})", out)
        names = ["test_load_gpt2.TestLoadGPT2.test_tokenizer_ids", "test_generate.TestGenerateCLI."
                 "test_a_padded_vocabulary_is_never_sampled", "test_train_classifier."
                 "TestTrainClassifier.test_loss_falls_and_accuracy_reaches_100"]
        fresh = dict(user, HOME=str(self.dir / "fresh"), USERPROFILE=str(self.dir / "fresh"))
        summaries = [run_script("test_all.py", *names, env=env)[1].splitlines()[-1]
                     for env in (user, fresh)]
        self.assertEqual(summaries[0], summaries[1])
        self.assertEqual(summaries[0], "3 passed, 0 failed, 0 skipped")  # offline, no variable
