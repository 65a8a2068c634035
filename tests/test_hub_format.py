"""plumbing/hub_format.py: transformers' GPT-2 format, checked against the real transformers
(pip install transformers; the tests that need it skip without it)."""
import _thread
import contextlib
import copy
import errno
import functools
import hashlib
import http.client
import importlib.util
import io
import json
import os
import re
import shutil
import tempfile
import threading
import time
import unittest.mock
from pathlib import Path

import tiktoken
import torch

import load_gpt2
import lora
import model as gpt
import serve
import train_classifier as tc
from plumbing import cli, formats, hub_format, operating_point, report

from helpers import (Sources, TestCase, Trains, encoder_json, run_cli, said, tiny_gpt2_folder,
                     tmpdir, tokenizer)

NO_TRANSFORMERS = "transformers is not installed: pip install transformers to compare with it"
needs_transformers = unittest.skipIf(importlib.util.find_spec("transformers") is None,
                                     NO_TRANSFORMERS)
TEXTS = ["Free entry! Win £1,000 now", "ok", "  two spaces,\nthen a new line\t and a tab",
         "See you at dinner tonight? Let me know :)", "日本語のテキスト, émojis 🙂 and 12345.67",
         "A longer text " * 9 + "that ends here."]


def quietly(call, *args, **kwargs):
    """A transformers call without its progress bars, notes and warnings on the console."""
    from transformers.utils import logging
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return call(*args, **kwargs)
    finally:
        logging.set_verbosity(level)


class TestLanguageModel(TestCase):
    """write_language_model: a folder that transformers' AutoModelForCausalLM and load_gpt2 both
    open with the model's logits, and GPT-2's tokenizer files as the hub's repos hold them."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        folder = tempfile.TemporaryDirectory()
        cls.addClassCleanup(folder.cleanup)
        cls.tok = tokenizer()
        with contextlib.redirect_stderr(io.StringIO()):  # random weights: an "untrained" warning
            cls.model = load_gpt2.load_gpt2(tiny_gpt2_folder(Path(folder.name), T=80))
        cls.ids = [torch.tensor([cls.tok.encode_ordinary(text)]) for text in TEXTS[::2]]

    def setUp(self):
        self.dir = tmpdir(self)

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

    def test_the_tokenizer_files_are_gpt2s_byte_for_byte(self):
        files = hub_format.tokenizer_files(self.tok)
        self.assertEqual(files["vocab.json"], encoder_json())  # OpenAI's, as the hub's repos copy
        merges = files["merges.txt"]  # OpenAI's vocab.bpe, which the hub's merges.txt copies:
        self.assertEqual((hashlib.sha256(merges).hexdigest(), len(merges)),
                         ("1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
                          456318))

    @needs_transformers
    def test_transformers_tokenizer_reads_texts_as_ours_does(self):
        from transformers import AutoTokenizer
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


# ---------------------------------------------------------------------------------------------
# Classifiers, both ways

WORDS = ("Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121 "
         "to receive entry question(std txt rate) Nah I don't think he goes to usf, he lives "
         "around here though; see you at dinner tonight? Let me know! 日本語 émojis 🙂").split()
LENGTHS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)  # in words: 1 token to past the max length
CLASSIFIER_TEXTS = [" ".join(WORDS[i % 7:][:n]) for i, n in enumerate(LENGTHS)]


def theirs(folder, texts, one_by_one=False):
    """transformers' probabilities of texts, from folder: its model and its tokenizer, in one
    batch padded by the tokenizer (or one text at a time), cut as the tokenizer says."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = quietly(AutoModelForSequenceClassification.from_pretrained, folder).eval()
    tok = quietly(AutoTokenizer.from_pretrained, folder)
    with torch.no_grad():
        return torch.cat([model(**tok(batch, padding=not one_by_one, truncation=True,
                                      return_tensors="pt")).logits.softmax(-1)
                          for batch in ([[t] for t in texts] if one_by_one else [texts])])


def ours(classifier, texts):
    """Our probabilities of texts, from what load_classifier reads (a folder, a file, a repo),
    calibrated as the classifier's decision says."""
    net, settings = tc.load_classifier(classifier)
    return tc.probabilities(net, tokenizer(), texts, settings["max_length"],
                            settings["truncate"], temperature=settings["decision"]["temperature"])


def transformers_classifier(folder, labels=("negative", "neutral", "positive"), C=16, L=2, T=64,
                            pad_token="<|endoftext|>", seed=0, **config):
    """A GPT2ForSequenceClassification with random weights (the norms and biases too), saved as
    a user of transformers saves a fine-tune: the model, and the tokenizer (set up as such users
    set GPT-2's: a pad token, the context as its max length) with save_pretrained."""
    from transformers import (AutoTokenizer, GPT2Config, GPT2ForSequenceClassification)
    vocab = tmpdir_of(folder, "vocab")
    for name, data in hub_format.tokenizer_files(tokenizer()).items():
        (vocab / name).write_bytes(data)
    (vocab / "config.json").write_text('{"model_type": "gpt2"}')
    tok = quietly(AutoTokenizer.from_pretrained, vocab, model_max_length=T)
    if pad_token:
        tok.add_special_tokens({"pad_token": pad_token})  # an existing token, or a new one
    torch.manual_seed(seed)
    model = quietly(GPT2ForSequenceClassification, quietly(
        GPT2Config, n_embd=C, n_layer=L, n_head=2, n_positions=T, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)},
        pad_token_id=tok.pad_token_id, **config))
    quietly(model.resize_token_embeddings, len(tok))  # 50,258 with a new pad token
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    quietly(model.save_pretrained, folder)
    quietly(tok.save_pretrained, folder)
    return folder


@functools.lru_cache(maxsize=None)
def shared_classifier():
    """(folder, transformers' probabilities of CLASSIFIER_TEXTS) of one transformers_classifier,
    made once for the classes that read it, in a folder removed when the tests end."""
    folder = Path(SHARED.name) / "hf"
    return transformers_classifier(folder), theirs(folder, CLASSIFIER_TEXTS)


SHARED = tempfile.TemporaryDirectory()  # (a finalizer removes it when the tests end)


def tmpdir_of(folder, name):
    path = folder.parent / f"{folder.name}-{name}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class TestExport(TestCase):
    """--export: a classifier trained here (one, shared by the tests, with LoRA: its updates are
    merged into the weights, as saving does), in transformers' format."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        fixture = Trains.shared(cls)
        fixture.train("--epochs", "1", "--max-length", "24", "--trainable", "lora")
        cls.fixture, cls.dir, cls.out = fixture, fixture.dir, fixture.dir / "out"
        # A head bias that moves the probabilities (one epoch barely moves it): folding it counts
        path = cls.out / "classifier.safetensors"
        tensors, metadata = formats.read_safetensors(path)
        tensors = {**tensors, "out_head.bias": torch.tensor([0.7, -0.4])}
        formats.write_safetensors(path, tensors, {k: v for k, v in metadata.items()
                                                  if k != "sha256"})
        cls.net, cls.settings = tc.load_classifier(cls.out)
        cls.expected = ours(cls.out, CLASSIFIER_TEXTS)
        cls.hub, cls.said = cls.dir / "hub", run_cli(tc.main, "--out", cls.out, "--export",
                                                     cls.dir / "hub")  # one export, read by all

    def exported(self, name):
        code, out, err = run_cli(tc.main, "--out", self.out, "--export", self.dir / name)
        self.assertEqual((code, said(err)), (0, []), err)
        self.assertIn(f"exported to {self.dir / name}: config.json, model.safetensors", out)
        return self.dir / name

    @needs_transformers
    def test_transformers_pipeline_gives_our_probabilities(self):
        from transformers import AutoConfig, pipeline
        folder, texts, expected = self.hub, CLASSIFIER_TEXTS, self.expected
        self.assertLess(expected.max(), 0.99)  # no comparison of saturated probabilities
        classify = quietly(pipeline, "text-classification", model=str(folder))  # as it is
        for batch_size in (1, 4):
            answers = classify(texts, top_k=None, truncation=True, batch_size=batch_size)
            got = torch.tensor([[next(a["score"] for a in answer if a["label"] == label)
                                 for label in ("ham", "spam")] for answer in answers])
            self.assertLess((got - expected).abs().max(), 1e-5)
        self.assertLess((theirs(folder, texts) - expected).abs().max(), 1e-5)
        net = copy.deepcopy(self.net)  # the bias folded in counts:
        net.model.out_head.bias.data.zero_()
        unbiased = tc.probabilities(net, tokenizer(), texts, 24,
                                    temperature=self.settings["decision"]["temperature"])
        self.assertGreater((unbiased - expected).abs().max(), 0.05)
        config = AutoConfig.from_pretrained(folder)
        self.assertEqual((config.id2label, config.pad_token_id, config.architectures),
                         ({0: "ham", 1: "spam"}, 50256, ["GPT2ForSequenceClassification"]))

    def test_an_export_is_one_line_and_a_round_trip_gives_the_original_probabilities(self):
        code, out, err = self.said
        self.assertEqual((code, said(err)), (0, []), err)
        self.assertEqual(out, f"exported to {self.hub}: config.json, model.safetensors, "
                         "vocab.json, merges.txt, tokenizer_config.json, README.md\n")
        folder, texts = self.hub, CLASSIFIER_TEXTS
        self.assertLess((ours(folder, texts) - self.expected).abs().max(), 1e-5)
        net, settings = tc.load_classifier(folder)
        self.assertEqual((settings["labels"], settings["max_length"], settings["truncate"],
                          settings["pooling"]), (["ham", "spam"], 24, "start", "last"))
        predicted = [run_cli(tc.main, *where, "--predict", *texts)[1].splitlines()
                     for where in (["--out", self.out], ["--classifier", folder])]
        self.assertEqual(predicted[0], predicted[1])

    @needs_transformers
    def test_texts_cut_at_their_start_are_cut_so_in_transformers_too(self):
        net, settings = self.net, {**self.settings, "truncate": "end"}
        folder = self.dir / "end"
        hub_format.export_classifier(folder, net.model, settings, tokenizer(), None, {})
        texts = CLASSIFIER_TEXTS
        T = settings["decision"]["temperature"]  # folded into the export: the calibrated ones
        expected = tc.probabilities(net, tokenizer(), texts, 24, "end", temperature=T)
        self.assertLess((theirs(folder, texts) - expected).abs().max(), 1e-5)
        self.assertLess((ours(folder, texts) - expected).abs().max(), 1e-5)
        start = tc.probabilities(net, tokenizer(), texts, 24, "start", temperature=T)
        self.assertGreater((start - expected).abs().max(), 1e-3)  # the side cut matters

    @needs_transformers
    def test_the_model_card_is_the_hubs(self):
        from huggingface_hub import ModelCard
        card = ModelCard.load(self.hub / "README.md")
        self.assertEqual((card.data.pipeline_tag, card.data.library_name),
                         ("text-classification", "transformers"))
        test_acc = report.final_record(self.out)["test_acc"]
        for line in (f"| test | {test_acc:.2%} |", "| 1 | spam |", "`--pooling last`",
                     "Command: `python train_classifier.py --model tiny --epochs 1 --batch-size 4 "
                     "--lr 0.0008 --out out --data toy.tsv --trainable lora --max-length 24`",
                     "epoch 1, step 3",
                     "Data: toy.tsv."):
            self.assertIn(line, card.text)
        self.assertNotIn(str(self.dir), card.content)  # a public card: no path of this machine

    def test_what_cannot_be_carried_exactly_is_refused_in_one_sentence(self):
        net, settings = self.net, self.settings
        forked = copy.deepcopy(net.model)
        forked.out_head = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(),
                                              torch.nn.Linear(8, 2))
        alike = copy.deepcopy(net.model)  # 3 labels, rows that are one: no d gives 3 biases
        alike.out_head = torch.nn.Linear(16, 3)
        alike.out_head.weight.data[:] = alike.out_head.weight.data[0]
        three = {**settings, "labels": ["a", "b", "c"]}
        for model, flags, message in (
                (net.model, {"pooling": "first"}, "a classifier of --pooling first cannot be "
                 "exported: GPT2ForSequenceClassification reads each text's last token"),
                (forked, {}, "its head is not one Linear layer"),
                (alike, three, "its head's bias cannot be carried")):
            with self.subTest(message), self.assertRaisesRegex(cli.InputError, message):
                hub_format.export_classifier(self.dir / "refused", model, {**settings, **flags},
                                             tokenizer(), None, {})
            self.assertFalse((self.dir / "refused").exists())
        (self.dir / "taken").mkdir()
        (self.dir / "taken" / "notes.txt").write_text("mine")
        for args, code, message in (
                (["--export", self.dir / "x", "--epochs", "2"], 2,
                 "--epochs does nothing with --export"),
                (["--export", self.dir / "x", "--predict", "hi"], 2,
                 "--predict does nothing with --export"),
                (["--export", self.dir / "taken"], 1, "holds 'notes.txt', which is not an "
                 "export's; export into a new folder, or one an export made"),
                (["--export", self.fixture.data], 1, "is a file; give a folder")):
            with self.subTest(args=args):
                got, _, err = run_cli(tc.main, "--out", self.out, *args)
                self.assertEqual(got, code)
                self.assertIn(message, said(err)[-1])  # one line (argparse's usage before it)
                self.assertEqual(len(said(err)), 1, err) if code == 1 else None
        self.assertEqual(os.listdir(self.dir / "taken"), ["notes.txt"])

    def test_an_export_replaces_the_last_one_whole_or_not_at_all(self):
        folder = self.exported("again")
        (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
        before = {p.name: p.read_bytes() for p in folder.iterdir()}

        def full(*args):
            raise OSError(errno.ENOSPC, "No space left on device")
        with unittest.mock.patch.object(hub_format, "write_safetensors", full):
            code, _, err = run_cli(tc.main, "--out", self.out, "--export", folder)
        self.assertEqual(code, 1)
        self.assertIn("could not save the export in", err)
        self.assertEqual({p.name: p.read_bytes() for p in folder.iterdir()}, before)
        self.exported("again")
        self.assertEqual({p.name: p.read_bytes() for p in folder.iterdir()}, before)


@needs_transformers
class TestImport(TestCase):
    """--classifier reads a classifier fine-tuned with transformers (one, shared by the tests):
    --predict and serve.py answer with transformers' probabilities."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = Path(tempfile.mkdtemp())
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.folder, cls.expected = shared_classifier()

    def test_predict_and_serve_answer_with_transformers_probabilities(self):
        texts, expected = CLASSIFIER_TEXTS, self.expected
        self.assertLess(expected.max(), 0.99)  # no comparison of saturated probabilities
        labels = ["negative", "neutral", "positive"]
        code, out, err = run_cli(tc.main, "--classifier", self.folder, "--predict", *texts)
        self.assertEqual((code, said(err)), (0, []), err)
        for line, p in zip(out.splitlines(), expected, strict=True):
            label, prob, _ = line.split("\t")
            self.assertEqual((label, float(prob)), (labels[p.argmax()], round(p.max().item(), 3)))
        self.assertLess((self.served(self.folder, texts, labels) - expected).abs().max(), 1e-5)

    def served(self, classifier, texts, labels):
        """serve.py's probabilities of texts (in the order of labels), from its API."""
        out, seen = io.StringIO(), {}

        def user():  # reads the address, asks, presses Ctrl-C
            try:
                while not (found := re.search(r":(\d+)/", out.getvalue())):
                    time.sleep(0.02)
                connection = http.client.HTTPConnection("127.0.0.1", int(found[1]), timeout=30)
                connection.request("POST", "/classify", json.dumps({"inputs": texts}),
                                   {"Content-Type": "application/json"})
                answer = connection.getresponse()
                seen["answer"] = (answer.status, json.loads(answer.read()))
                connection.close()
            finally:
                _thread.interrupt_main()
        thread = threading.Thread(target=user)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            thread.start()
            cli.run_main(lambda: serve.main(["--classifier", str(classifier), "--port", "0"]))
            thread.join()
        status, answer = seen["answer"]
        self.assertEqual(status, 200, answer)
        return torch.tensor([[next(e["score"] for e in entry if e["label"] == label)
                              for label in labels] for entry in answer])

    def test_pad_tokens_as_transformers_takes_them(self):
        texts, config = CLASSIFIER_TEXTS, json.loads((self.folder / "config.json").read_text())
        for pad in (None, 0):  # none (transformers then takes one text at a time); "!"
            shutil.copytree(self.folder, self.dir / f"pad-{pad}")
            (self.dir / f"pad-{pad}" / "config.json").write_text(json.dumps(
                {**config, "pad_token_id": pad}))
        self.assertLess((ours(self.dir / "pad-None", texts) - theirs(
            self.dir / "pad-None", texts, one_by_one=True)).abs().max(), 1e-5)
        with self.assertRaisesRegex(cli.InputError, "its pad_token_id 0 is a token GPT-2's texts "
                                                    "have"):
            tc.load_classifier(self.dir / "pad-0")
        folder = transformers_classifier(self.dir / "pad-new", pad_token="[PAD]")  # 50257
        self.assertLess((ours(folder, texts) - theirs(folder, texts)).abs().max(), 1e-5)

    def test_a_round_trip_through_our_format_gives_transformers_probabilities(self):
        code, _, err = run_cli(tc.main, "--classifier", self.folder, "--export", self.dir / "re")
        self.assertEqual(code, 0, err)
        self.assertLess((theirs(self.dir / "re", CLASSIFIER_TEXTS) - self.expected).abs().max(),
                        1e-5)
        original, again = (formats.read_safetensors(folder / "model.safetensors")[0]
                           for folder in (self.folder, self.dir / "re"))
        self.assertEqual(original.keys(), again.keys())
        for name, tensor in original.items():  # no bias: nothing folded, every weight as it was
            self.assertTrue(torch.equal(tensor, again[name]), name)

    def test_what_transformers_would_compute_otherwise_is_refused_in_one_sentence(self):
        config = json.loads((self.folder / "config.json").read_text())
        tensors = dict(formats.read_safetensors(self.folder / "model.safetensors")[0])
        other = json.loads(encoder_json())
        other["Ġthe"], other["Ġa"] = other["Ġa"], other["Ġthe"]  # another tokenizer's ranks
        cases = [
            ({"architectures": ["GPT2LMHeadModel"]}, {}, {}, "it is a GPT2LMHeadModel, not a "
             "GPT2ForSequenceClassification"),
            ({}, {"score.bias": torch.zeros(3)}, {}, "it holds score.bias, which "
             "GPT2ForSequenceClassification does not have"),
            ({"problem_type": "multi_label_classification"}, {}, {}, "its problem_type "
             "'multi_label_classification' scores each label apart (sigmoid)"),
            ({"id2label": {"0": "a", "1": "b"}}, {}, {}, "its id2label does not name the 3 labels"),
            ({"id2label": {"0": "a"}}, {"score.weight": tensors["score.weight"][:1]}, {},
             "it has one output (a regression or a sigmoid score)"),
            ({"id2label": {"0": "a", "1": "a", "2": "c"}}, {}, {},
             "its labels are not 2 to 10,000 different printable names"),
            ({"n_embd": 32}, {}, {}, "has shape (50257, 16), expected (50257, 32)"),
            ({"model_type": "bert"}, {}, {}, "model_type 'bert' changes the model's math"),
            ({}, {}, {"tokenizer.json": json.dumps({"model": {"vocab": other}})},
             "tokenizer.json is not GPT-2's vocabulary"),
            ({}, {}, {"tokenizer_config.json": '{"add_prefix_space": true}'},
             "adds a space before every text"),
            ({}, None, {"pytorch_model.bin": "pickled"}, "holds no model.safetensors")]
        for n, (changes, more_tensors, files, message) in enumerate(cases):
            with self.subTest(message):
                folder = self.dir / f"bad-{n}"
                folder.mkdir()
                (folder / "config.json").write_text(json.dumps({**config, **changes}))
                if more_tensors is not None:
                    formats.write_safetensors(folder / "model.safetensors",
                                              {**tensors, **more_tensors}, {})
                for name, text in files.items():
                    (folder / name).write_text(text)
                code, _, err = run_cli(tc.main, "--classifier", folder, "--predict", "hi")
                self.assertEqual(code, 1)
                self.assertEqual(len(said(err)), 1, err)
                self.assertIn(message, err)


@needs_transformers
class TestImportFromTheHub(Sources):
    """--classifier ORG/NAME: a classifier of the hub (TestImport's), found in the caches or
    downloaded once, as load_gpt2 finds --model ORG/NAME (HF_ENDPOINT, HF_HUB_OFFLINE, the
    Hugging Face cache)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.folder, cls.expected = shared_classifier()  # tokenizer.json, no vocab.json

    def test_a_repo_is_downloaded_once_then_read_offline(self):
        expected = self.expected
        hub = self.hub({("org/clf", p.name): p.read_bytes() for p in self.folder.iterdir()})
        with contextlib.redirect_stderr(io.StringIO()):  # the downloads' progress
            self.assertLess((ours("org/clf", CLASSIFIER_TEXTS) - expected).abs().max(), 1e-5)
        kept = self.dir / "ours" / "org--clf"
        self.assertEqual(sorted(p.name for p in kept.iterdir() if p.name != ".lock"),
                         ["config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json"])
        asked = len(hub.requests)
        with unittest.mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
            self.assertLess((ours("org/clf", CLASSIFIER_TEXTS) - expected).abs().max(), 1e-5)
        self.assertEqual(len(hub.requests), asked)  # nothing asked twice
        with unittest.mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}), \
                self.assertRaisesRegex(cli.InputError, "forbids downloading it"):
            tc.load_classifier("org/other")

    def test_the_hugging_face_cache_is_read_in_place(self):
        entry = self.dir / "hf" / "hub" / "models--org--clf"  # as transformers leaves it
        commit = "b" * 40
        snapshot = entry / "snapshots" / commit
        shutil.copytree(self.folder, snapshot)
        (entry / "refs").mkdir()
        (entry / "refs" / "main").write_text(commit)
        with unittest.mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
            for name in ("org/clf", entry):
                with self.subTest(name=name):
                    self.assertLess((ours(name, CLASSIFIER_TEXTS) - self.expected).abs().max(),
                                    1e-5)
        self.assertFalse((self.dir / "ours").exists())  # read in place, not copied


@needs_transformers
class TestGPT2SmallShape(TestCase):
    def test_both_ways_at_gpt2_smalls_size(self):
        """GPT-2 small's shape (124M parameters, random weights, a head with a bias): exported,
        then read by transformers and by load_classifier, with the same probabilities."""
        from transformers import AutoModelForSequenceClassification
        folder, texts, tok = tmpdir(self) / "hub", CLASSIFIER_TEXTS[:6:2], tokenizer()  # short
        with torch.device("meta"):  # weights filled below: GPT-2's own initialisation is slower
            model = tc.build_classifier(gpt.GPTModel(gpt.get_config("gpt2")), 2, "head")
        model.to_empty(device="cpu").eval()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():  # uniform: cheaper to draw than normal
                centre = 1.0 if name.endswith("scale") else 0.0
                p.uniform_(centre - 0.04, centre + 0.04, generator=generator)
            model.out_head.bias.copy_(torch.tensor([0.5, -0.5]))
        net = tc.Classifier(model, 50256)
        settings = {"labels": ["a", "b"], "max_length": 1024, "pooling": "last",
                    "truncate": "start", "run": {}, "weights_from": {},
                    "decision": operating_point.NO_DECISION}
        hub_format.export_classifier(folder, model, settings, tok, None, {})
        expected = tc.probabilities(net, tok, texts, 1024)
        self.assertLess(expected.max(), 0.99)
        ids = [tok.encode_ordinary(text) for text in texts]  # padded on the right, masked
        batch = torch.tensor([t + [50256] * (max(map(len, ids)) - len(t)) for t in ids])
        hf = quietly(AutoModelForSequenceClassification.from_pretrained, folder).eval()
        with torch.no_grad():
            got = hf(batch, attention_mask=(batch != 50256).long()).logits.softmax(-1)
        self.assertLess((got - expected).abs().max(), 1e-5)
        self.assertLess((ours(folder, texts) - expected).abs().max(), 1e-5)
