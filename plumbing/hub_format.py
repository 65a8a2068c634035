"""transformers' GPT-2 format, written and read: the hub's folders of GPT-2 and its classifier.

A GPT2LMHeadModel or GPT2ForSequenceClassification folder as the hub's repos hold one (config.json,
model.safetensors, GPT-2's tokenizer files, a model card), and such a classifier read back for
--classifier. docs/hub.md says what is honoured and what is refused.
"""
import functools
import hashlib
import json
import shlex
from pathlib import Path

import torch

from plumbing.cli import InputError, Progress
from plumbing.download import cache_snapshot, checkpoint_folder, source
from plumbing.files import read_small
from plumbing.formats import (BYTE_CHARS, CONFIG_BYTES, encoding_from, read_config,
                              read_safetensors, read_tokenizer_config, write_safetensors)
from plumbing.operating_point import NO_DECISION
from plumbing.save import check_settings, publish

EOT = 50256  # <|endoftext|>: GPT-2's bos, eos, and the pad token of this project's batches
# vocab.json and merges.txt as the hub's GPT-2 repos hold them: OpenAI's encoder.json and
# vocab.bpe, byte for byte
VOCAB_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
MERGES_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# What --export writes, and all that its folder may hold (but hidden files: .git, .gitattributes)
EXPORT_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt",
                "tokenizer_config.json", "README.md")


# ---------------------------------------------------------------------------------------------
# Written: GPTModel's weights under the hub's names, config.json, the tokenizer's files

def hub_tensors(model):
    """(GPTModel's weights under the names and layouts of transformers' GPT2Model, out_head's
    own): load_gpt2.gpt2_state_dict's reverse. nn.Linear keeps its weight as (out, in), Conv1D as
    (in, out): transposed; W_query, W_key and W_value side by side in c_attn (no qkv bias: 0)."""
    left = {name: t.detach().cpu().float() for name, t in model.state_dict().items()}
    C = model.cfg["emb_dim"]

    def take(name, zeros=None):  # zeros: the size of a bias that may be absent
        return left.pop(name) if zeros is None or name in left else torch.zeros(zeros)
    try:
        hub = {"wte.weight": take("tok_emb.weight"), "wpe.weight": take("pos_emb.weight")}
        for b in range(model.cfg["n_layers"]):
            ours, h = f"trf_blocks.{b}.", f"h.{b}."
            qkv = [f"{ours}att.{W}." for W in ("W_query", "W_key", "W_value")]
            hub[h + "attn.c_attn.weight"] = torch.cat([take(p + "weight") for p in qkv]).t()
            hub[h + "attn.c_attn.bias"] = torch.cat([take(p + "bias", C) for p in qkv])  # (3C,)
            for theirs, mine in (("attn.c_proj", "att.out_proj"), ("mlp.c_fc", "ff.layers.0"),
                                 ("mlp.c_proj", "ff.layers.2")):
                hub[f"{h}{theirs}.weight"] = take(f"{ours}{mine}.weight").t()  # (in, out)
                hub[f"{h}{theirs}.bias"] = take(f"{ours}{mine}.bias")
            for theirs, mine in (("ln_1", "norm1"), ("ln_2", "norm2")):
                hub[f"{h}{theirs}.weight"] = take(f"{ours}{mine}.scale")
                hub[f"{h}{theirs}.bias"] = take(f"{ours}{mine}.shift")
        hub["ln_f.weight"], hub["ln_f.bias"] = take("final_norm.scale"), take("final_norm.shift")
    except KeyError as e:
        raise InputError(f"the model has no tensor {e}, which GPT-2's format needs (an unmerged "
                         "LoRA layer, or a fork?)") from None
    head = {name: left.pop(name) for name in list(left) if name.startswith("out_head.")}
    if left:
        raise InputError(f"the model's {sorted(left)[0]!r} has no place in GPT-2's format (an "
                         "unmerged LoRA layer, or a fork?)")
    return {f"transformer.{name}": t.contiguous() for name, t in hub.items()}, head


def hub_config(cfg, architecture, **more):
    """config.json as transformers writes GPT-2's: its names of cfg's sizes, GPT-2's constants."""
    return {"architectures": [architecture], "model_type": "gpt2", "vocab_size": cfg["vocab_size"],
            "n_positions": cfg["context_length"], "n_embd": cfg["emb_dim"],
            "n_layer": cfg["n_layers"], "n_head": cfg["n_heads"], "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "bos_token_id": EOT, "eos_token_id": EOT, **more}


def merged_pair(ranks, token):
    """The two tokens whose merge made token: byte-pair merging its bytes with the merges ranked
    below its own stops at them (minbpe's recover_merges)."""
    parts, rank = [bytes([b]) for b in token], ranks[token]
    while len(parts) > 2:
        best, i = min((ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:])))
        if best >= rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


@functools.lru_cache(maxsize=2)  # recovering the merges takes seconds: once a process
def tokenizer_files(tokenizer):
    """{vocab.json, merges.txt: their bytes} of GPT-2's tiktoken encoding, as the hub's repos hold
    them: each token's bytes as printable characters (BYTE_CHARS), with its rank; the merges in
    rank order, each recovered from the ranks (merged_pair). Each checked by its SHA-256."""
    def checked(name, data, sha256):
        if hashlib.sha256(data).hexdigest() != sha256:
            raise InputError(f"the tokenizer's {name} would not be GPT-2's; use GPT-2's tokenizer "
                             "(load_gpt2.get_tokenizer)")
        return data
    try:
        tokens = [tokenizer.decode_single_token_bytes(rank) for rank in range(EOT)]
    except (KeyError, ValueError):  # fewer tokens
        tokens = []
    text = lambda token: "".join(BYTE_CHARS[b] for b in token)
    vocab = {text(t): rank for rank, t in enumerate(tokens)} | {"<|endoftext|>": EOT}
    vocab_json = checked("vocab.json", json.dumps(vocab).encode(), VOCAB_SHA256)  # first: cheap
    ranks = {t: rank for rank, t in enumerate(tokens)}
    merges = ["#version: 0.2"] + [" ".join(map(text, merged_pair(ranks, t))) for t in tokens[256:]]
    return {"vocab.json": vocab_json,
            "merges.txt": checked("merges.txt", "\n".join(merges).encode() + b"\n", MERGES_SHA256)}


def write_folder(folder, tensors, config, tokenizer_config, tokenizer):
    """model.safetensors, config.json and the tokenizer's files into folder."""
    files = tokenizer_files(tokenizer)  # first: it may refuse the tokenizer
    for name, data in {"config.json": config, "tokenizer_config.json": tokenizer_config}.items():
        files[name] = (json.dumps(data, indent=2) + "\n").encode("utf-8")
    write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
    for name, data in files.items():
        (folder / name).write_bytes(data)


def write_language_model(folder, model, tokenizer):
    """A GPT2LMHeadModel into folder, which exists (the caller stages and publishes it):
    model.safetensors (out_head tied to wte is not stored, as in the hub's repos), config.json,
    and GPT-2's tokenizer files. transformers' AutoModelForCausalLM and load_gpt2 open it."""
    tensors, head = hub_tensors(model)
    cfg, weight = model.cfg, head.pop("out_head.weight", None)
    if head or weight is None or tuple(weight.shape) != (cfg["vocab_size"], cfg["emb_dim"]):
        raise InputError("the model's out_head is not a language model's (a Linear from emb_dim "
                         "to vocab_size, without bias), which GPT2LMHeadModel's lm_head is")
    tied = torch.equal(weight, tensors["transformer.wte.weight"])
    if not tied:
        tensors["lm_head.weight"] = weight
    write_folder(folder, tensors, hub_config(cfg, "GPT2LMHeadModel", tie_word_embeddings=tied),
                 {"model_max_length": cfg["context_length"]}, tokenizer)


def fold_bias(W, b, shift):
    """final_norm's shift moved by d = Wᵀ(WWᵀ)⁻¹b, so that the bias-free head W adds b to every
    logit: W(x + d) = Wx + b, and the final norm feeds nothing but the head. W's rows must be
    independent; what the new shift carries in float32, as stored and summed, is checked."""
    W64, b64, shift64 = W.double(), b.double(), shift.double()  # W: (n, C), b: (n,)
    try:
        new = (shift64 + W64.T @ torch.linalg.solve(W64 @ W64.T, b64)).float()  # (C,)
    except RuntimeError:  # singular
        new = shift
    d = new.double() - shift64
    error = (W64 @ d - b64).abs() + 2**-24 * (W64.abs() @ d.abs())  # (n,), float32's rounding
    if not error.max() <= 1e-6 * (1 + b64.abs().max()):
        raise InputError("its head's bias cannot be carried into GPT2ForSequenceClassification, "
                         "whose head has none: the head's rows are (nearly) linearly dependent")
    return new


def classifier_files(model, settings):
    """(tensors, config.json, tokenizer_config.json) of the classifier as a
    GPT2ForSequenceClassification; refused where that would not compute the same probabilities."""
    if settings["pooling"] != "last":
        raise InputError(f"a classifier of --pooling {settings['pooling']} cannot be exported: "
                         "GPT2ForSequenceClassification reads each text's last token, as "
                         "--pooling last does")
    tensors, head = hub_tensors(model)
    if sorted(head) != ["out_head.bias", "out_head.weight"]:
        raise InputError("its head is not one Linear layer, as GPT2ForSequenceClassification's "
                         "score is (a forked head?)")
    T, labels = settings["decision"]["temperature"], settings["labels"]  # calibrated: logits / T
    W = head["out_head.weight"] / T
    tensors["transformer.ln_f.bias"] = fold_bias(W, head["out_head.bias"] / T,
                                                 tensors["transformer.ln_f.bias"])
    tensors["score.weight"] = W
    config = hub_config(model.cfg, "GPT2ForSequenceClassification",
                        id2label=dict(enumerate(labels)),
                        label2id={label: i for i, label in enumerate(labels)},
                        pad_token_id=EOT, problem_type="single_label_classification")
    return tensors, config, {  # a batch padded with <|endoftext|>, texts cut as in training
        "model_max_length": settings["max_length"], "pad_token": "<|endoftext|>",
        "truncation_side": "right" if settings["truncate"] == "start" else "left"}


def export_classifier(dest, model, settings, tokenizer, record, defaults):
    """--export: the classifier as a GPT2ForSequenceClassification folder with its model card
    (record: its run's final metrics, or None; defaults: train_classifier's flags'), all at once
    (save.publish) into dest, which holds no other file transformers may read. A log line."""
    dest = Path(dest)
    others = sorted(p.name for p in dest.iterdir() if p.name not in EXPORT_FILES and
                    not p.name.startswith(".")) if dest.is_dir() else []
    if others:
        raise InputError(f"--export {dest} holds {others[0]!r}, which is not an export's; export "
                         "into a new folder, or one an export made")
    files, card = classifier_files(model, settings), model_card(settings, record, defaults)

    def write(staged):
        write_folder(staged, *files, tokenizer)
        (staged / "README.md").write_text(card, encoding="utf-8")
    return f"exported to {dest}: {', '.join(publish(dest, EXPORT_FILES, write, 'the export'))}"


CARD = """---
library_name: transformers
pipeline_tag: text-classification
tags:
- gpt2
- text-classification{base_model}
---

# A GPT-2 text classifier

GPT-2{base}, fine-tuned to give a text one of {n} labels as chapter 6 of *Build a Large Language
Model (From Scratch)* does, then exported as transformers' `GPT2ForSequenceClassification`.

## Use

```python
from transformers import pipeline

classify = pipeline("text-classification", model="ORG/NAME")  # this repo, or its folder
classify("Free entry! Win a prize now", truncation=True, top_k=None)  # every label's probability
```

As in training, a text is cut to {max_length} tokens, its {truncate} kept: `truncation=True` does
that with the tokenizer's `model_max_length` and `truncation_side`.

| id | label |
| --- | --- |
{labels}

## Training

{training}
{results}{deciding}
## How it was exported

The class is read from each text's last token (`--pooling last`), as
`GPT2ForSequenceClassification` reads the last token that is not the pad token (`<|endoftext|>`,
50256). Its head, `score`, has no bias: the classifier's bias b was folded into
`transformer.ln_f.bias`, moved by d = Wᵀ(WWᵀ)⁻¹b, which adds b to every logit. The logits are
the classifier's; the final hidden states are moved by d.
"""


def model_card(settings, record, defaults):
    """README.md, the hub's model card (CARD): YAML front matter (the hub's keys), how to call the
    model, its labels, how it was trained, the run's final metrics (record: metrics.jsonl's last,
    or None) and how it was exported."""
    run, labels, base = settings["run"], settings["labels"], None
    if "data" in run:  # trained by train_classifier.py (else read from transformers' format)
        try:  # from a size or a hub repo (not a folder), pretrained (not --init random)
            base = (source(str(run["model"])) or [None])[0] if run.get("init") != "random" else None
        except InputError:
            pass
        data = "the SMS Spam Collection (UCI)" if run["data"] is None else public(run["data"])
        step = ", ".join(f"{key} {value}" for key, value in settings["weights_from"].items())
        training = (f"Data: {data}. Command: `{training_command(run, defaults)}`. The weights are "
                    f"those of {step or 'its last step'}.")
        if settings.get("untrained"):  # --init random, say: the card must not hide it
            training += (f" It was fine-tuned from {settings['untrained']}, not GPT-2's trained "
                         "weights: its answers mean little.")
    else:
        training = f"Converted from the transformers classifier {public(run.get('model'))}."
    return CARD.format(
        deciding=deciding(settings["decision"]),
        base_model=f"\nbase_model: {json.dumps(base)}" if base else "",
        base=f" ({base})" if base else "", n=len(labels), max_length=settings["max_length"],
        truncate=settings["truncate"], training=training, results=results(record, labels),
        labels="\n".join(f"| {i} | {cell(label)} |" for i, label in enumerate(labels)))


def deciding(decision):
    """A model card's words on how the classifier's probabilities become labels, if not as
    transformers' pipeline makes them (the likeliest label, of the softmax)."""
    lines = ([f"Its probabilities are calibrated: the logits are divided by a temperature of "
              f"{decision['temperature']:.3f}, fitted on the validation split (folded into "
              "`score.weight` and `transformer.ln_f.bias`: the pipeline's scores are the "
              "calibrated ones)."] if decision["temperature"] != 1 else [])
    if decision["threshold"] is not None:
        positive = cell(decision["positive"])
        lines.append(f"It labels a text {positive} from a {positive} score of "
                     f"{decision['threshold']:.4f}, chosen for the rate of false positives "
                     "its user can bear; the pipeline gives the likeliest label instead, so "
                     f"compare the {positive} score with that threshold (`top_k=None` gives "
                     "every label's score).")
    return "\n".join(["", "## Deciding", "", " ".join(lines), ""]) if lines else ""


def results(record, labels):
    """A model card's Results: the accuracy of each split, and the test split's per label."""
    if not isinstance(record, dict):
        return ""
    pct = lambda x: f"{x:.2%}" if type(x) in (int, float) else "-"
    test = record.get("test_metrics") if isinstance(record.get("test_metrics"), dict) else {}
    columns = [test.get(key) if isinstance(test.get(key), list) else []
               for key in ("precision", "recall", "f1")]
    per_label = [f"| {cell(label)} | {' | '.join(map(pct, xs))} |"
                 for label, *xs in zip(labels, *columns)]
    return "\n".join(["", "## Results", "", "| split | accuracy |", "| --- | --- |", *(
        f"| {split} | {pct(record[f'{split}_acc'])} |" for split in
        ("train", "validation", "test", "unused") if f"{split}_acc" in record), "", *(
        ["The test split, per label:", "", "| label | precision | recall | F1 |",
         "| --- | --- | --- | --- |", *per_label, ""] if per_label else [])])


def cell(text):
    """text in a cell of a Markdown table."""
    return str(text).replace("|", "\\|")


def public(value):
    """value as a public card shows it: an absolute path (this machine's) as its name alone."""
    return Path(str(value)).name if Path(str(value)).is_absolute() else str(value)


def training_command(run, defaults):
    """The command line of a run's flags (run) that differ from defaults."""
    same = lambda a, b: json.dumps(a, default=str) == json.dumps(b, default=str)
    words = ["python", "train_classifier.py"]
    for key, value in run.items():
        if key in defaults and not same(value, defaults[key]):
            flag = "--" + key.replace("_", "-")
            if type(value) is bool:  # --compile; --fast and --no-fast
                words.append(flag if value else "--no-" + flag[2:])
            else:
                words += [flag, public(value)]
    return shlex.join(words)


# ---------------------------------------------------------------------------------------------
# Read: a transformers GPT2ForSequenceClassification, for --predict and serve.py

def classifier_folder(path):
    """The folder of the transformers classifier that --classifier names: a folder, an entry of
    the Hugging Face cache (models--ORG--NAME), or a hub repo ORG/NAME (found in the caches, else
    downloaded: plumbing/download.py). None where path is, or holds, this project's classifier,
    or names nothing: a file's name (out/classifier.safetensors) is never a repo's."""
    path = Path(path)
    if path.is_file() or path.suffix in (".safetensors", ".pt") or any(
            (path / name).exists() for name in ("classifier.safetensors", "classifier.pt")):
        return None
    if path.is_dir():
        folder = cache_snapshot(path) or path
        return folder if (folder / "config.json").is_file() else None
    try:
        repo, size, _ = source(str(path))  # a size or ORG/NAME; else an InputError
    except InputError:
        return None
    return None if size else checkpoint_folder(repo, instead="--classifier DIR with its files")


def read_classifier(path, known, state_dict):
    """(tensors, settings) of the transformers GPT2ForSequenceClassification that --classifier
    names (classifier_folder), as save.read_classifier gives this project's own; None for those.
    The body through state_dict (load_gpt2.gpt2_state_dict), score.weight as out_head with a zero
    bias; the labels of id2label; tokenizer_config.json's max length and truncation side (else
    the context, and the start kept). Each thing transformers would compute otherwise is refused."""
    folder = classifier_folder(path)
    if folder is None:
        return None
    cfg = read_config(folder / "config.json")  # the sizes; no key that changes the math
    hf = json.loads(read_small(folder / "config.json", CONFIG_BYTES))
    for vocab in (folder / "vocab.json", folder / "tokenizer.json"):
        if vocab.is_file():  # texts are read with GPT-2's tokens: a model of others is refused
            encoding_from(vocab)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise InputError(f"{folder} holds no model.safetensors (a pytorch_model.bin is never "
                         "opened here: it may hold code); save the model with transformers' "
                         "save_pretrained, which writes one")
    with Progress(f"reading {weights}"):  # into memory, not a file that may change
        tensors = read_safetensors(weights, in_memory=True)[0]
    score, pad = tensors.get("score.weight"), hf.get("pad_token_id")
    n = len(score) if score is not None and score.dim() == 2 else 0
    id2label = hf.get("id2label") or {str(i): f"LABEL_{i}" for i in range(n)}  # transformers'
    extra = next((name for name in ("score.bias", "lm_head.weight") if name in tensors), None)
    kind = hf.get("architectures", ["GPT2ForSequenceClassification"])
    named = " and ".join(map(str, kind)) if type(kind) is list else repr(kind)
    why = (f"it is a {named}, not a GPT2ForSequenceClassification" if
           kind != ["GPT2ForSequenceClassification"] else
           "it holds no score.weight, the head of a GPT2ForSequenceClassification" if not n else
           f"it holds {extra}, which GPT2ForSequenceClassification does not have" if extra else
           "it has one output (a regression or a sigmoid score), not a probability per label"
           if n < 2 else f"its problem_type {hf['problem_type']!r} scores each label apart "
           "(sigmoid) or is a regression, not a probability per label" if
           hf.get("problem_type") not in (None, "single_label_classification") else
           f"its id2label does not name the {n} labels of its score.weight" if not (
               isinstance(id2label, dict) and sorted(id2label) == sorted(map(str, range(n)))) else
           f"its pad_token_id {pad!r} is a token GPT-2's texts have (transformers would skip it "
           "at a text's end); set it to 50256 if the model was trained so" if pad is not None and
           not (type(pad) is int and pad >= EOT) else None)
    if why:
        raise InputError(f"{folder} is not a classifier this project can read: {why}")
    body = state_dict({k: v for k, v in tensors.items() if k != "score.weight"}, cfg, weights)
    body["out_head.weight"], body["out_head.bias"] = score.float(), torch.zeros(n)
    length, truncate = (read_tokenizer_config(folder / "tokenizer_config.json") if
                        (folder / "tokenizer_config.json").is_file() else (None, "start"))
    settings = {"cfg": cfg, "labels": [id2label[str(i)] for i in range(n)],
                "max_length": min(length or cfg["context_length"], cfg["context_length"]),
                "pooling": "last", "truncate": truncate, "run": {"model": str(path)},
                "weights_from": {}, "structure": "", "untrained": "", "decision": NO_DECISION}
    try:
        check_settings(settings, known)
    except ValueError as e:
        raise InputError(f"{folder} is not a classifier this project can read: {e}") from None
    return body, settings
