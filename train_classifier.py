"""Fine-tune pretrained GPT-2 into a text classifier (SMS spam by default): chapter 6, written out.

    python train_classifier.py                         # gpt2-small on the SMS Spam Collection
    python train_classifier.py --predict "Free entry!"  # label texts with the saved classifier
    python train_classifier.py --export hub            # the classifier in transformers' format
    torchrun --standalone --nproc_per_node=2 train_classifier.py   # several GPUs or processes

Read it top to bottom, in the chapter's order, from build_classifier to main; a first reading
skips what sits below main (the speed layer switched on, --predict, the flags) and plumbing/.
"""
import argparse
import functools
import itertools
import sys
from pathlib import Path

from plumbing.cli import starting  # first: torch's import can take seconds (cli's is quick)

starting(__name__)  # as a script: Ctrl-C ends it at once, quietly; a slow start is said

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from data import TRUNCATIONS, encode, encode_examples, load_dataset, pad_batch
from load_gpt2 import get_tokenizer, gpt2_state_dict, load_gpt2
from lora import merge_lora, replace_linear_with_lora
from model import GPTModel
from plumbing.cli import InputError, every_one_or_what_failed, label_lines, printable, run_main
from plumbing.ddp import distributed, first_on_each_machine, gradient_sync, processes
from plumbing.extras import (EarlyStopping, appendix_d_lr, class_weights, optimizer_steps,
                             stop_if_diverged, text_mean_loss, weights_flag)
from plumbing.flags import HelpFormatter, check_fits, number, parse, training_flags
from plumbing.hardware import Autocast, autocast, pick_device, use_bf16
from plumbing.operating_point import NO_DECISION, decide, for_predict
from plumbing.hub_format import export_classifier, read_classifier as read_hub_classifier
from plumbing.report import TrainingLog, final_record, final_report
from plumbing.save import check_structure, read_classifier, save_run
from plumbing.speed import SpeedLayer, accuracy_loader, adamw
from plumbing.weights import check_finite

EXAMPLES = [  # the chapter's two examples
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!"]


# ---------------------------------------------------------------------------------------------
# Chapter 6, step by step

# What build_classifier can train: a new choice is a branch there and a name here.
TRAINABLE = ("head", "last-N", "all", "lora")


def build_classifier(model, num_classes, trainable="last-1", lora_rank=16, lora_alpha=16):
    """GPT-2 -> a num_classes-way classifier (chapter 6.5), changed in place and returned.
    trainable: "head" (the new head alone), "last-N" (the last N blocks, final_norm and the
    head), "all", or "lora" (low-rank updates of every Linear layer, the head too: appendix E)."""
    check_trainable(trainable, len(model.trf_blocks))
    # 1. Freeze the whole pretrained model.
    for param in model.parameters():
        param.requires_grad = False
    # 2. Swap the 50,257-way vocabulary head for a num_classes-way one; a new layer trains.
    model.out_head = nn.Linear(in_features=model.out_head.in_features, out_features=num_classes,
                               device=model.out_head.weight.device)
    # 3. Unfreeze the top: the last N transformer blocks and the final LayerNorm, or everything.
    if trainable == "all":
        for param in model.parameters():
            param.requires_grad = True
    elif trainable.startswith("last-"):
        for param in model.trf_blocks[-int(trainable.removeprefix("last-")):].parameters():
            param.requires_grad = True
        for param in model.final_norm.parameters():
            param.requires_grad = True
    elif trainable == "lora":  # appendix E: the new head stays frozen too; LoRA adapts it
        for param in model.out_head.parameters():
            param.requires_grad = False
        replace_linear_with_lora(model, lora_rank, lora_alpha)
    return model


# The one place a text's hidden states become the vector its class is read from (6.6): a new
# pooling is a branch of pool() and a name here.
POOLINGS = ("last", "first", "mean")


def pool(hidden, lengths, pooling="last"):
    """(B, T, C) final hidden states and each text's length -> (B, C), what out_head classifies:
    pooling "last" (real token), "first" or "mean" (of the real tokens)."""
    if pooling == "last":
        # The chapter reads model(input_batch)[:, -1, :], the last *position*: padding, for every
        # text shorter than its batch's longest. We read each row's last *real* token: causal
        # attention lets it see its whole text and no padding, so a text gets its result alone.
        return hidden[torch.arange(len(lengths)), lengths - 1]
    if pooling == "first":  # the bonus table's row 2: causal attention, so it saw only itself
        return hidden[:, 0]
    if pooling == "mean":  # row 19: over the real tokens only (its flag averages the padding)
        real = (torch.arange(hidden.size(1), device=hidden.device) < lengths[:, None])  # (B, T)
        return torch.where(real[..., None], hidden, 0).sum(dim=1) / real.sum(dim=1, keepdim=True)
    raise ValueError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}")


class Classifier(nn.Module):
    """The model build_classifier made, as the chapter's functions call it: (B, T) token ids ->
    (B, num_classes) logits, out_head applied to what pool() reads. fast: the speed layer
    (plumbing/speed.py), the same hidden states where pool() reads them, with less work."""

    def __init__(self, model, pad_id, pooling="last", fast=None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)}")
        self.model, self.pad_id, self.pooling, self.fast = model, pad_id, pooling, fast

    def forward(self, input_batch):  # (B, T) -> (B, num_classes)
        # <|endoftext|> pads a batch and never comes out of encode_ordinary: it marks the ends.
        real = input_batch != self.pad_id  # (B, T)
        if (real[:, 1:] > real[:, :-1]).any():  # left padding: pool() would read a pad token
            raise ValueError("a row of the batch has padding before a real token: batches are "
                             "padded on the right here (pad_batch), so each text ends at its "
                             "last real token")
        lengths = real.sum(dim=1)  # (B,)
        if self.fast is None:
            hidden = self.model.hidden_states(input_batch)  # (B, T, C), after final_norm
        else:  # for "last", NaN at every position but each text's last real token
            hidden = self.fast.hidden_states(input_batch, lengths)
        return self.model.out_head(pool(hidden, lengths, self.pooling))


def class_logits(logits):
    """logits, if a Classifier's (B, num_classes); a GPTModel's (B, T, ...) would be misread."""
    if logits.dim() != 2:
        raise TypeError(f"the model gave logits of shape {tuple(logits.shape)}, a GPTModel's; the "
                        "functions here take Classifier(model, pad_id), which reads each text's "
                        "last real token (the book reads model(input_batch)[:, -1, :])")
    return logits


def calc_loss_batch(input_batch, target_batch, model, device, class_weights=None):
    """Cross-entropy of one batch, the mean over its texts (6.6); with class_weights
    (--class-weights), each text's loss is first multiplied by its class's weight."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = class_logits(model(input_batch))  # (B, num_classes)
    return F.cross_entropy(logits, target_batch, weight=class_weights, reduction="none").mean()


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Mean loss over the first num_batches batches (all of them if None); nan if none."""
    losses = [calc_loss_batch(input_batch, target_batch, model, device).item()
              for input_batch, target_batch in itertools.islice(data_loader, num_batches)]
    return sum(losses) / len(losses) if losses else float("nan")


@torch.no_grad()
def calc_accuracy_loader(data_loader, model, device, num_batches=None):
    """Share of texts classified right over the first num_batches batches (all if None)."""
    model.eval()
    correct, total = 0, 0
    for input_batch, target_batch in itertools.islice(data_loader, num_batches):
        logits = class_logits(model(input_batch.to(device)))  # (B, num_classes)
        correct += (logits.argmax(dim=-1) == target_batch.to(device)).sum().item()
        total += len(target_batch)
    return correct / total if total else float("nan")


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """Training and validation loss over eval_iter batches each, in eval mode."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                            eval_freq, eval_iter, *, loss_fn=calc_loss_batch, accumulation_steps=1,
                            lr_at=None, clip_grad_norm=None, stopper=None, log=None):
    """The chapter's loop (6.7) and its five values: losses, accuracies, examples seen. Our extras,
    off by default, each a line where it acts: loss_fn (class weights), accumulation_steps, lr_at
    and clip_grad_norm (appendix D), stopper (early stopping); log prints and keeps records."""
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, global_step = 0, -1
    log = log or TrainingLog()
    for epoch in range(1, num_epochs + 1):
        model.train()
        for micro_batches in optimizer_steps(train_loader, accumulation_steps, epoch, log.master):
            optimizer.zero_grad()
            global_step += 1
            for n, (input_batch, target_batch) in enumerate(micro_batches, 1):
                with gradient_sync(model, n == accumulation_steps):  # torchrun: the average
                    loss = loss_fn(input_batch, target_batch, model, device)
                    stop_if_diverged(loss, global_step)
                    (loss / accumulation_steps).backward()  # the mean over the step's batches
                examples_seen += input_batch.shape[0] * processes()  # under torchrun: all
            if lr_at:  # appendix D: a linear warmup, then a cosine decay
                for param_group in optimizer.param_groups:
                    param_group["lr"] = lr_at(global_step)
            if clip_grad_norm:  # appendix D: no step from a gradient longer than this norm
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=clip_grad_norm)
            optimizer.step()
            if global_step % eval_freq == 0 and log.master:  # under torchrun: rank 0 alone
                train_loss, val_loss = evaluate_model(
                    model, train_loader, val_loader, device, eval_iter)
                train_losses.append(train_loss)
                val_losses.append(val_loss)
                log.losses(epoch, global_step, examples_seen, train_loss, val_loss, optimizer)
                if stopper and stopper.stop(model, epoch, global_step):  # early stopping
                    return train_losses, val_losses, train_accs, val_accs, examples_seen
        if log.master:
            # The chapter measures accuracy on eval_iter batches here; we take whole splits (of
            # every process) unless they are large, in larger batches (plumbing/speed.py).
            train_accuracy = calc_accuracy_loader(accuracy_loader(train_loader, eval_iter), model,
                                                  device)
            val_accuracy = calc_accuracy_loader(accuracy_loader(val_loader, eval_iter), model,
                                                device)
            log.accuracies(epoch, global_step, examples_seen, train_accuracy, val_accuracy)
            train_accs.append(train_accuracy)
            val_accs.append(val_accuracy)
    return train_losses, val_losses, train_accs, val_accs, examples_seen


def classify(model, tokenizer, texts, label_names, max_length, truncate="start", batch_size=64,
             decision=None):
    """(label, probability) for each text of a list, or for one (the chapter's classify_review
    takes the text first and returns the label). decision: a classifier's temperature and
    threshold on a positive label's probability (operating_point.py); none: the likeliest."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"classify(model, tokenizer, texts, label_names, max_length) takes the "
                        f"model first, not a {type(model).__name__} (the book's classify_review "
                        "takes the text first)")
    if not (isinstance(label_names, (list, tuple)) and all(type(n) is str for n in label_names)):
        raise TypeError(f"label_names must be the list of the classes' names, not "
                        f"{label_names!r} (the book's classify_review takes the device there)")
    one = isinstance(texts, str)
    probs = probabilities(model, tokenizer, [texts] if one else texts, max_length, truncate,
                          batch_size, (decision or NO_DECISION)["temperature"])
    if len(probs) and probs.size(1) != len(label_names):
        raise ValueError(f"label_names names {len(label_names)} classes; the model has "
                         f"{probs.size(1)}")
    chosen = decide(probs, decision, label_names).tolist()  # the likeliest, or past a threshold
    results = [(label_names[i], float(p[i])) for i, p in zip(chosen, probs)]
    return results[0] if one else results


@torch.no_grad()
def probabilities(model, tokenizer, texts, max_length, truncate="start", batch_size=64,
                  temperature=1.0):
    """(len(texts), num_classes) class probabilities, the softmax of logits / temperature. Texts
    are batched by length; padding never changes a result, so a text gets the same answer alone
    or beside much longer ones."""
    model.eval()
    tokens = encode(tokenizer, texts, max_length, truncate)
    order = sorted(range(len(texts)), key=lambda i: len(tokens[i]))
    device, chunks = next(model.parameters()).device, []
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        input_batch, _ = pad_batch([(tokens[i], 0) for i in ids], tokenizer.eot_token)
        logits = class_logits(model(input_batch.to(device)))  # (B, num_classes)
        probs = torch.softmax(logits.float() / temperature, dim=-1).cpu()
        if not torch.isfinite(probs).all():
            raise InputError("the classifier gave non-finite probabilities (did pool() read a "
                             "position the speed layer leaves empty? try --no-fast)")
        chunks.append(probs)
    return torch.cat(chunks)[torch.tensor(order).argsort()] if chunks else torch.empty(0, 0)


def load_classifier(path, device="cpu"):
    """(classifier, settings) from a classifier.safetensors that save_run wrote, or from
    transformers' GPT2ForSequenceClassification (a folder, ORG/NAME: plumbing/hub_format.py): the
    model built as build_classifier builds it (a forked head must be the one that trained), in a
    Classifier with the pooling it trained with; settings: what the file says of the run."""
    known = {"pooling": POOLINGS, "truncate": TRUNCATIONS}
    hub = read_hub_classifier(path, known, gpt2_state_dict)  # None: not transformers' format
    tensors, settings = hub or read_classifier(Path(path), known)
    with torch.device("meta"):  # no memory for weights about to be replaced
        model = build_classifier(GPTModel(settings["cfg"]), len(settings["labels"]), "head")
    if not hub:  # transformers' has one structure, which this code builds
        check_structure(model, settings, path)
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()}, assign=True)
    except RuntimeError as e:  # names or shapes that do not match: one line, not torch's many
        raise InputError(f"{path} does not fit this script's classifier "
                         f"({' '.join(str(e).split())[:200]})") from None
    return Classifier(check_finite(model, path).to(device).eval(), GPT2_EOT,
                      settings["pooling"]), settings


def main(argv=None):
    args = parse_args(argv)
    if args.predict or args.export:  # a saved classifier's use: nothing to train
        return predict(args) if args.predict else export(args)
    with distributed(pick_device(args.device), args.backend, args.dist_timeout) as (
            ddp, rank, world_size, device):
        log = TrainingLog(master=rank == 0)
        # The data and pretrained GPT-2 (6.2-6.4). Under torchrun one process per machine
        # downloads what is missing while the others wait.
        with first_on_each_machine(ddp):  # all three tried: what is missing is named at once
            torch.manual_seed(args.seed)  # the same weights each run with --init random
            tokenizer, (splits, labels), model = every_one_or_what_failed(
                ("GPT-2's vocabulary", lambda: get_tokenizer(args.model)),
                ("the data", lambda: load_dataset(args.data, args.seed, args.balance,
                                                  args.text_column, args.label_column)),
                ("the weights", lambda: load_gpt2(args.model, pretrained=args.init != "random")))
        max_length = args.max_length or model.cfg["context_length"]
        sets = {name: encode_examples(tokenizer, examples, labels, max_length, args.truncate)
                for name, examples in splits.items()}
        check_fits(args, model.cfg, tokenizer.n_vocab, sets, labels, max_length, world_size)
        log.mark("load")
        collate = functools.partial(pad_batch, pad_id=tokenizer.eot_token)
        # A seeded shuffle each epoch, and under torchrun each process's share of every batch.
        sampler = DistributedSampler(sets["train"], world_size, rank, seed=args.seed,
                                     drop_last=True)
        train_loader = DataLoader(sets["train"], args.batch_size, sampler=sampler, drop_last=True,
                                  collate_fn=collate)
        val_loader = DataLoader(sets["validation"], args.batch_size, collate_fn=collate)
        log(f"data: {', '.join(f'{len(v)} {k}' for k, v in sets.items())}; labels: {labels}")

        # The classifier (6.5): a new head, everything frozen but the top. The seed is set
        # again where the book sets it, so every --init starts from the same head.
        torch.manual_seed(args.seed)
        build_classifier(model, len(labels), args.trainable, args.lora_rank,
                         args.lora_alpha).to(device)
        net, optimizer, options = classifier_and_options(args, model, tokenizer, sets, labels,
                                                         device, log, train_loader, val_loader)
        log.mark("fill")
        # Fine-tuning (6.7), then the accuracy on every split.
        torch.manual_seed(args.seed)
        train_classifier_simple(DDP(net) if ddp else net, train_loader, val_loader, optimizer,
                                device, args.epochs, args.eval_freq, args.eval_iter, **options)
        check_finite(model, "after training", "training diverged; try a smaller --lr")
        if not log.master:
            return model
        log.mark("epochs")
        log.history.append(final_report(net, sets, collate, labels, device, log.start, args,
                                        model.untrained) | log.mark("final report"))
        decision = log.history[-1]["decision"]  # how its probabilities become labels
        texts = EXAMPLES if labels == ["ham", "spam"] else [t for _, t in splits["test"][:2]]
        for text, (label, prob) in zip(texts, classify(net, tokenizer, texts, labels, max_length,
                                                       args.truncate, decision=decision)):
            log(f"{label} ({prob:.1%}): {printable(text)}")
        merge_lora(model)  # what is saved: a plain GPTModel with a new head
        settings = {"cfg": model.cfg, "labels": labels, "max_length": max_length,
                    "pooling": args.pooling, "truncate": args.truncate, "run": vars(args),
                    "weights_from": log.weights_from(options["stopper"]), "structure": repr(model),
                    "untrained": model.untrained or "", "decision": decision}
        log(save_run(args.out, model, settings, splits, log.history))
    return model


# ---------------------------------------------------------------------------------------------
# Plumbing: the speed layer and the forks switched on, the log, checks, --predict, flags.

GPT2_EOT = 50256  # <|endoftext|>, which pads every batch


def classifier_and_options(args, model, tokenizer, sets, labels, device, log, train_loader,
                           val_loader):
    """main's Classifier (with the speed layer and bfloat16 unless turned off), AdamW,
    and the loop's options: the forks the flags switch on, each built here in one line."""
    params = [p for p in model.parameters() if p.requires_grad]
    bf16, why = use_bf16(args.dtype, device)
    log(f"model: {args.model} ({model.source}) on {device} in "
        f"{'bfloat16' if bf16 else 'float32'} ({why}), {sum(map(torch.numel, params)):,} of "
        f"{sum(map(torch.numel, model.parameters())):,} parameters train ({args.trainable}, "
        f"--pooling {args.pooling})")
    # The class weights before the fill, which may take minutes: a wrong count is told at once.
    weights = class_weights(args.class_weights, sets["train"], labels, device, log)
    fast = None
    if args.fast:  # the same hidden states where pool() reads them, with less work
        texts = [ids for split in ("train", "validation", "test") for ids, _ in sets[split]]
        with autocast(bf16, device):  # the fill: forward passes only, before any step
            fast = SpeedLayer(model, tokenizer.eot_token, args.pooling, args.compile, texts,
                              args.cache, args.cache_mb, args.out)
        log(f"speed layer: {fast.note}")
    net = Classifier(model, tokenizer.eot_token, args.pooling, fast)
    net = Autocast(net, device) if bf16 else net  # --dtype: each forward pass in bfloat16
    total_steps = args.epochs * (len(train_loader) // args.accumulation_steps)  # a process's
    options = {
        "loss_fn": functools.partial(calc_loss_batch, class_weights=weights),
        "accumulation_steps": args.accumulation_steps,
        "lr_at": functools.partial(appendix_d_lr, peak_lr=args.lr, total_steps=total_steps,
                                   warmup_steps=args.warmup_steps, min_lr=args.min_lr),
        "clip_grad_norm": args.clip_grad_norm,
        "stopper": EarlyStopping(args.patience, lambda model: text_mean_loss(
            model, val_loader, device)) if args.patience else None, "log": log}
    return net, adamw(params, args.fast, lr=args.lr, weight_decay=args.weight_decay), options


def check_trainable(trainable, n_layers=None):
    """--trainable's value, one of TRAINABLE, checked: as a flag (n_layers None), then against
    the model."""
    n = trainable.removeprefix("last-")
    if trainable not in TRAINABLE and not (
            trainable.startswith("last-") and n.isdecimal() and 1 <= int(n) <= (n_layers or 10**9)):
        raise InputError(f"--trainable {trainable!r}: use one of {', '.join(TRAINABLE)}"
                         + (f" (last-N: 1 <= N <= {n_layers})" if n_layers else ""))
    return trainable


def does_nothing(args, name):
    """Why a flag does nothing beside the others given, or None: parse refuses it if it is set."""
    if args.predict and name not in ("predict", "classifier", "out", "device", "dtype", "fast",
                                     "verbose", "threshold", "positive_label"):
        return "with --predict: a classifier brings its own settings"
    if args.export and name not in ("export", "classifier", "out", "verbose"):
        return "with --export: a classifier brings its own settings"
    return {"classifier": not (args.predict or args.export) and "without --predict or --export",
            "out": args.classifier and (args.predict or args.export) and
            f"with --classifier, which --{'predict' if args.predict else 'export'} reads",
            **dict.fromkeys(("lora_rank", "lora_alpha"), args.trainable != "lora" and
                            "without --trainable lora"),
            **dict.fromkeys(("compile", "cache"), not args.fast and "with --no-fast"),
            "cache_mb": not args.fast and "with --no-fast" or args.cache != "auto" and
            f"with --cache {args.cache}: it is --cache auto's budget"}.get(name) or None


def predict(args):
    """--predict: label texts with a saved classifier; "-" reads one text per line from
    standard input and answers in order (label_lines)."""
    device = pick_device(args.device)
    net, s = load_classifier(args.classifier or args.out / "classifier.safetensors", device)
    if s["untrained"]:  # the answers of a classifier made from random weights mean little
        print(f"warning: this classifier was fine-tuned from {s['untrained']}, not GPT-2's "
              "trained ones: its answers mean little", file=sys.stderr)
    tokenizer = get_tokenizer()  # GPT-2's: checked when the classifier was trained
    net.fast = SpeedLayer(net.model, tokenizer.eot_token, s["pooling"]) if args.fast else None
    net = Autocast(net, device) if use_bf16(args.dtype, device)[0] else net
    decision = for_predict(s["decision"], args, s["labels"])  # --threshold: this run's
    label_lines(args.predict, lambda texts: classify(net, tokenizer, texts, s["labels"],
                                                     s["max_length"], s["truncate"],
                                                     decision=decision))
    return net


def export(args):
    """--export DIR: the classifier as transformers' GPT2ForSequenceClassification, with its
    tokenizer files and model card, exactly (docs/hub.md); LoRA's updates were merged in saving."""
    path = args.classifier or args.out / "classifier.safetensors"
    net, settings = load_classifier(path)
    print(export_classifier(args.export, net.model, settings, get_tokenizer(), final_record(path),
                            vars(parser().parse_args([]))))
    return net


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    training_flags(p, epochs=5, batch_size=8, lr="5e-5, or 8e-4 with lora", eval_freq=50)
    a = p.add_argument
    a("--data", default=None, help="labelled .tsv/.csv/.jsonl file or train/validation/test "
      "folder (default: the SMS Spam Collection, downloaded once)")
    a("--text-column", help="the text's column (or JSON key) in --data (default: by its name)")
    a("--label-column", help="the label's column (or JSON key) in --data (default: by its name)")
    a("--balance", action=argparse.BooleanOptionalAction, default=None,
      help="undersample every label to the rarest; the left-out examples are then tested on their "
      "own (default: only for a file named SMSSpamCollection)")
    a("--trainable", type=check_trainable, default="last-1", help=f"{', '.join(TRAINABLE)}: the "
      "new head, or it with the last N blocks and final_norm, or all, or low-rank updates of "
      "every Linear layer (appendix E)")
    a("--lora-rank", type=number(int, high=4096), default=16, help="rank of the LoRA updates")
    a("--lora-alpha", type=number(float), default=16, help="LoRA scale: updates x alpha / rank")
    a("--pooling", choices=POOLINGS, default="last",
      help="what the class is read from: the last real token, the first, or the mean of all real")
    a("--class-weights", type=weights_flag, help="weight each text's loss by its class: balanced "
      "(n / (k * n_class) on the training split), or W1,W2,... in the labels' order (default: "
      "unweighted)")
    a("--patience", type=number(int), default=None, help="stop once the validation loss, the mean "
      "of each text's over the whole split (not the logged mean of batches, which depends on how "
      "they are cut), has not improved for N evaluations; keep the best weights (default: off)")
    a("--positive-label", help="for two labels, the one the curves, --max-fpr and --threshold "
      "are about (default: spam beside ham, else the rarer in training)")
    a("--max-fpr", type=number(float, 0, True, 1), help="label a text positive from the lowest "
      "probability whose false-positive rate on the validation split is at most this (default: "
      "the likeliest label)")
    a("--threshold", type=number(float, 0, True, 1), help="label a text positive from this "
      "probability; with --predict, in place of the classifier's")
    a("--calibrate", action=argparse.BooleanOptionalAction, default=True, help="fit one "
      "temperature on the validation split so the probabilities mean what they say")
    a("--max-length", type=number(int), help="tokens kept a text (default: the model's context)")
    a("--truncate", choices=TRUNCATIONS, default="start", help="what a longer text keeps")
    a("--unused-texts", type=number(int, inclusive=True), help="at the end, test only N of the "
      "texts balancing left out, drawn with --seed (0: none; default: all)")
    a("--eval-iter", type=number(int), default=5, help="batches of each split behind those "
      "losses, and each epoch's accuracy of a split over 5,000 texts (others: measured whole)")
    a("--fast", action=argparse.BooleanOptionalAction, default=True,
      help="the speed layer (same results); --no-fast runs the chapter's plain path")
    a("--cache", choices=["auto", "ram", "disk", "off"], default="auto",
      help="where the frozen-prefix cache lives (auto: in RAM up to --cache-mb, else on disk)")
    a("--cache-mb", type=number(float, inclusive=True), default=2048, help="its RAM budget, in MB")
    a("--predict", nargs="+", metavar="TEXT", help="label these texts with the saved classifier "
      "and exit; - reads one text per line from standard input")
    a("--export", type=Path, metavar="DIR", help="write the saved classifier into DIR as "
      "transformers' GPT2ForSequenceClassification, with a model card, and exit (docs/hub.md)")
    a("--classifier", type=Path, help="for --predict and --export: a classifier.safetensors or "
      "its folder, or a transformers classifier's folder or hub repo ORG/NAME (default: --out's)")
    return p


def parse_args(argv=None):
    args = parse(parser(), argv, does_nothing)
    args.lr = args.lr or (8e-4 if args.trainable == "lora" else 5e-5)
    return args


if __name__ == "__main__":
    run_main(main, interrupted="interrupted: nothing was written; the files in --out are as "
             "they were")
