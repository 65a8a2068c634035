"""Fine-tune pretrained GPT-2 into a text classifier (SMS spam by default): chapter 6, written out.

    python train_classifier.py                         # gpt2-small on the SMS Spam Collection
    python train_classifier.py --predict "Free entry!"  # label texts with the saved classifier
    torchrun --standalone --nproc_per_node=2 train_classifier.py   # several GPUs or processes

Read it in the chapter's order: build_classifier (the new head and the freezing), calc_loss_batch
and calc_accuracy_loader (the class read at the last token), evaluate_model,
train_classifier_simple (the loop), classify, main. Skip the rest on a first reading: the
plumbing (flags, checks, torchrun, files) below main, and speed.py, which makes the same
numbers about 10x faster.
"""
import argparse
import functools
import itertools
import math
import signal
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # Ctrl-C while the imports load torch: end at once, quietly
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # (utils.run_main takes over from there)

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from data import encode, encode_examples, load_dataset, pad_batch
from load_gpt2 import check_finite, get_tokenizer, load_gpt2, pick_device
from model import GPTModel
from ddp import distributed, first_on_each_machine, gradient_sync
from report import final_report
from save import POOLINGS, TRUNCATIONS, check_out, read_classifier, save_run
from speed import Autocast, FastClassifier, adamw, autocast, use_bf16
from utils import (HelpFormatter, InputError, Progress, line_chunks, number, printable, run_main,
                   tracked)

EXAMPLES = [  # the chapter's two examples
    "You are a winner you have been specially selected to receive $1000 cash or a $2000 award.",
    "Hey, just wanted to check if we're still on for dinner tonight? Let me know!"]


# ---------------------------------------------------------------------------------------------
# Chapter 6, step by step

def build_classifier(model, num_classes, trainable="last-1", lora_rank=16, lora_alpha=16):
    """GPT-2 -> a num_classes-way classifier (chapter 6.5). trainable: "head" (the new head
    alone), "last-N" (the last N blocks, final_norm and the head), "all", or "lora" (low-rank
    updates of every Linear layer, the head included: appendix E)."""
    check_trainable(trainable, len(model.trf_blocks))
    # 1. Freeze the whole pretrained model.
    for param in model.parameters():
        param.requires_grad = False
    # 2. Swap the 50,257-way vocabulary head for a num_classes-way one; a new layer trains.
    model.out_head = nn.Linear(in_features=model.cfg["emb_dim"], out_features=num_classes,
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


# Appendix E: LoRA. Instead of updating a frozen weight W, learn a low-rank update A @ B.
class LoRALayer(nn.Module):
    def __init__(self, in_dim, out_dim, rank, alpha):
        super().__init__()
        self.A = nn.Parameter(torch.empty(in_dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.B = nn.Parameter(torch.zeros(rank, out_dim))  # zeros: no change before training
        # The appendix's current scaling; its first version (and the bonus table's LoRA rows)
        # used alpha alone: the same update needs alpha x rank here.
        self.scale = alpha / rank

    def forward(self, x):  # (B, T, in_dim) -> (B, T, out_dim)
        return self.scale * (x @ self.A @ self.B)


class LinearWithLoRA(nn.Module):
    def __init__(self, linear, rank, alpha):
        super().__init__()
        self.linear = linear
        self.lora = LoRALayer(linear.in_features, linear.out_features, rank, alpha)

    def forward(self, x):
        return self.linear(x) + self.lora(x)


def replace_linear_with_lora(model, rank, alpha):
    for name, module in model.named_children():
        if isinstance(module, nn.Linear):
            setattr(model, name, LinearWithLoRA(module, rank, alpha))
        else:
            replace_linear_with_lora(module, rank, alpha)


@torch.no_grad()
def merge_lora(model):
    """Fold each LoRA update into its weight, W + scale * (A @ B)^T (nn.Linear stores W as
    (out, in)), leaving a plain GPTModel with a new head: what classifier.safetensors holds."""
    for name, module in model.named_children():
        if isinstance(module, LinearWithLoRA):
            lora = module.lora
            module.linear.weight += lora.scale * (lora.A @ lora.B).T
            setattr(model, name, module.linear)
        else:
            merge_lora(module)
    return model


def select_logits(logits, lengths, pooling="last"):
    """(B, T, num_classes) logits -> (B, num_classes): what the classifier reads (6.6). Every
    number a run reports comes through here: the loss, the accuracies, the final report,
    --predict. pooling: "last" (real token), "first" or "mean" (of the real tokens)."""
    if pooling == "last":
        # The chapter reads model(input_batch)[:, -1, :], the last *position*. Our batches are
        # padded on the right to their own longest text, so for every shorter text that position
        # is padding. We read each row's last *real* token instead: causal attention lets it see
        # its whole text and none of the padding after it, so a text gets the result it would
        # get alone.
        return logits[torch.arange(len(lengths)), lengths - 1]
    if pooling == "first":  # the bonus table's row 2: causal attention, so it saw only itself
        return logits[:, 0]
    if pooling != "mean":  # row 19: over the real tokens only (its flag averages the padding)
        raise ValueError(f"pooling {pooling!r}: use last, first or mean")
    real = (torch.arange(logits.size(1)) < lengths[:, None]).to(logits.device)  # (B, T)
    return torch.where(real[..., None], logits, 0).sum(dim=1) / real.sum(dim=1, keepdim=True)


def calc_loss_batch(input_batch, target_batch, lengths, model, device, pooling="last"):
    """Cross-entropy of one batch, from the logits select_logits reads (6.6)."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = select_logits(model(input_batch), lengths, pooling)  # (B, num_classes)
    return F.cross_entropy(logits, target_batch)


def calc_loss_loader(data_loader, model, device, num_batches=None, pooling="last"):
    """Mean loss over the first num_batches batches (all of them if None)."""
    losses = [calc_loss_batch(input_batch, target_batch, lengths, model, device, pooling).item()
              for input_batch, target_batch, lengths in itertools.islice(data_loader, num_batches)]
    return sum(losses) / len(losses)


@torch.no_grad()
def calc_accuracy_loader(data_loader, model, device, num_batches=None, pooling="last"):
    """Share of texts classified right over the first num_batches batches (all if None)."""
    model.eval()
    correct, total = 0, 0
    for input_batch, target_batch, lengths in itertools.islice(data_loader, num_batches):
        logits = select_logits(model(input_batch.to(device)), lengths, pooling)
        correct += (logits.argmax(dim=-1) == target_batch.to(device)).sum().item()
        total += len(target_batch)
    return correct / total


def accuracy_batches(data_loader, eval_iter, whole_up_to=5000):
    """Batches to measure after each epoch: all of a split of up to 5,000 texts, else eval_iter."""
    return None if len(data_loader.dataset) <= whole_up_to else eval_iter


def evaluate_model(model, train_loader, val_loader, device, eval_iter, pooling="last"):
    """Training and validation loss over eval_iter batches each, in eval mode."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, eval_iter, pooling)
        val_loss = calc_loss_loader(val_loader, model, device, eval_iter, pooling)
    model.train()
    return train_loss, val_loss


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                            eval_freq, eval_iter, master_process=True, pooling="last",
                            accumulation_steps=1):
    """The chapter's loop (6.7), returning (history, examples_seen): one list of records (what
    metrics.jsonl stores), not four lists. Under torchrun only the master process evaluates."""
    history, examples_seen, global_step = [], 0, -1
    start = tick = time.time()
    seen_at_tick = 0  # examples per second: counted from the last log line
    steps_per_epoch = len(train_loader) // accumulation_steps
    for epoch in range(1, num_epochs + 1):
        model.train()
        if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler: without it, every
            train_loader.sampler.set_epoch(epoch)      # epoch would repeat one shuffled order
        batches = tracked(train_loader, f"epoch {epoch}", "batches", show=master_process)
        for batch_idx, (input_batch, target_batch, lengths) in enumerate(batches):
            if batch_idx == steps_per_epoch * accumulation_steps:
                break  # too few micro-batches left for a step: dropped, as drop_last does
            loss = calc_loss_batch(input_batch, target_batch, lengths, model, device, pooling)
            stop_if_diverged(loss, global_step + 1)
            # Gradient accumulation (the bonus table's row 15): a step's loss is the mean over
            # accumulation_steps micro-batches, and the optimizer steps after the last one.
            update = (batch_idx + 1) % accumulation_steps == 0
            with gradient_sync(model, update):  # under torchrun: averaged across processes
                (loss / accumulation_steps).backward()
            examples_seen += input_batch.shape[0]
            if not update:
                continue
            optimizer.step()
            optimizer.zero_grad()
            global_step += 1
            if global_step % eval_freq == 0 and master_process:
                record = {"epoch": epoch, "step": global_step, "examples_seen": examples_seen,
                          "examples_per_s": (examples_seen - seen_at_tick) / (time.time() - tick)}
                record["train_loss"], record["val_loss"] = evaluate_model(
                    model, train_loader, val_loader, device, eval_iter, pooling)
                history.append({**record, "elapsed_s": time.time() - start})
                print(f"Ep {epoch} (Step {global_step:06d}): Train loss "
                      f"{record['train_loss']:.3f}, Val loss {record['val_loss']:.3f} | "
                      f"{record['examples_per_s']:.1f} ex/s | {time.time() - start:.1f} s")
                tick, seen_at_tick = time.time(), examples_seen  # ex/s: training steps only
        if master_process:
            # The chapter measures accuracy on eval_iter batches here; we take whole loaders
            # unless they are large (IMDB-sized): the final report always takes every text.
            train_accuracy = calc_accuracy_loader(
                train_loader, model, device, accuracy_batches(train_loader, eval_iter), pooling)
            val_accuracy = calc_accuracy_loader(
                val_loader, model, device, accuracy_batches(val_loader, eval_iter), pooling)
            history.append({"epoch": epoch, "train_acc": train_accuracy, "val_acc": val_accuracy,
                            "elapsed_s": time.time() - start})
            print(f"Training accuracy: {train_accuracy:.2%} | Validation accuracy: "
                  f"{val_accuracy:.2%} | {time.time() - start:.1f} s")
            tick, seen_at_tick = time.time(), examples_seen
    return history, examples_seen


def classify(model, tokenizer, texts, label_names, max_length, pooling="last", truncate="start",
             batch_size=32):
    """(label, probability) for each text of a list, or for one text (the chapter's
    classify_review, which returns the label alone)."""
    if isinstance(texts, str):
        return classify(model, tokenizer, [texts], label_names, max_length, pooling, truncate,
                        batch_size)[0]
    probs = probabilities(model, tokenizer, texts, max_length, pooling, truncate, batch_size)
    return [(label_names[int(p.argmax())], float(p.max())) for p in probs]


@torch.no_grad()
def probabilities(model, tokenizer, texts, max_length, pooling="last", truncate="start",
                  batch_size=32):
    """(len(texts), num_classes) class probabilities. Texts are batched by length; padding never
    changes a result, so a text gets the same answer alone or beside much longer ones."""
    model.eval()
    tokens = encode(tokenizer, texts, max_length, truncate)
    order = sorted(range(len(texts)), key=lambda i: len(tokens[i]))
    device = next(model.parameters()).device
    results = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        input_batch, _, lengths = pad_batch([(tokens[i], 0) for i in ids], tokenizer.eot_token)
        logits = select_logits(model(input_batch.to(device)), lengths, pooling)
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        if not torch.isfinite(probs).all():
            raise InputError("the classifier gave non-finite probabilities (did select_logits "
                             "read a position the speed layer leaves empty? try --no-fast)")
        for i, p in zip(ids, probs):
            results[i] = p
    return torch.stack(results) if results else torch.empty(0, 0)


def load_classifier(path, device="cpu"):
    """(model, settings) from a classifier.safetensors that save_run wrote: the model built as
    build_classifier builds it, so a changed head loads as it trained."""
    tensors, settings = read_classifier(path)
    with torch.device("meta"):  # no memory for weights about to be replaced
        model = build_classifier(GPTModel(settings["cfg"]), len(settings["labels"]), "head")
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()}, assign=True)
    except RuntimeError as e:  # names or shapes that do not match: one line, not torch's many
        raise InputError(f"{path} does not fit this script's classifier "
                         f"({' '.join(str(e).split())[:200]})") from None
    return check_finite(model, path).to(device).eval(), settings


def main(argv=None):
    args = parse_args(argv)
    if args.predict:
        return predict(args)
    with distributed(pick_device(args.device), args.backend, args.dist_timeout) as (
            ddp, rank, world_size, device):
        master_process = rank == 0
        log = print if master_process else lambda *a, **k: None
        start = time.time()
        # The data and pretrained GPT-2 (6.2-6.4). Under torchrun one process per machine
        # downloads what is missing while the others wait.
        with first_on_each_machine(ddp):
            tokenizer = get_tokenizer(args.model)
            splits, labels = load_dataset(args.data, args.seed, args.balance,
                                          args.text_column, args.label_column)
            torch.manual_seed(args.seed)  # the same weights each run with --init random
            model = load_gpt2(args.model, pretrained=args.init == "pretrained")
        max_length = args.max_length or model.cfg["context_length"]
        sets = {name: encode_examples(tokenizer, examples, labels, max_length, args.truncate)
                for name, examples in splits.items()}
        check_fits(args, model, tokenizer, sets, max_length, world_size)
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
        params = [p for p in model.parameters() if p.requires_grad]
        bf16 = use_bf16(args.dtype, device)
        log(f"model: {args.model} ({model.source}) on {device} in "
            f"{'bfloat16' if bf16 else 'float32'}, {sum(map(torch.numel, params)):,} of "
            f"{sum(map(torch.numel, model.parameters())):,} parameters train ({args.trainable}, "
            f"--pooling {args.pooling})")
        net = model
        if args.fast:  # speed.py: the same logits where select_logits reads them, less work
            texts = [ids for split in ("train", "validation", "test") for ids, _ in sets[split]]
            with autocast(bf16, device):  # the fill: forward passes only, before any step
                net = FastClassifier(model, tokenizer.eot_token, args.pooling, args.compile,
                                     texts, args.cache, args.cache_mb, args.out)
            log(f"speed layer: {net.note}")
        net = Autocast(net, device) if bf16 else net  # --dtype: each forward pass in bfloat16
        optimizer = adamw(params, args.fast, lr=args.lr, weight_decay=args.weight_decay)

        # Fine-tuning (6.7), then the accuracy on every split.
        torch.manual_seed(args.seed)
        history, _ = train_classifier_simple(
            DDP(net) if ddp else net, train_loader, val_loader, optimizer, device,
            args.epochs, args.eval_freq, args.eval_iter, master_process, args.pooling,
            args.accumulation_steps)
        check_finite(model, "after training", "training diverged; try a smaller --lr")
        if not master_process:
            return model
        read = functools.partial(select_logits, pooling=args.pooling)
        history.append(final_report(net, sets, collate, labels, device, read, start))
        settings = {"cfg": model.cfg, "labels": labels, "max_length": max_length,
                    "pooling": args.pooling, "truncate": args.truncate, "run": vars(args)}
        texts = EXAMPLES if labels == ["ham", "spam"] else [t for _, t in splits["test"][:2]]
        for text, (label, prob) in zip(texts, classify(
                net, tokenizer, texts, labels, max_length, args.pooling, args.truncate)):
            log(f"{label} ({prob:.1%}): {printable(text)}")
        log(save_run(args.out, merge_lora(model), settings, splits, history))
    return model


# ---------------------------------------------------------------------------------------------
# Plumbing: flags, checks, --predict.

def check_trainable(trainable, n_layers=None):
    """--trainable's value, checked: as a flag (n_layers None), then against the model."""
    n = trainable.removeprefix("last-")
    if trainable not in ("head", "all", "lora") and not (
            trainable.startswith("last-") and n.isdecimal() and 1 <= int(n) <= (n_layers or 10**9)):
        raise InputError(f"--trainable {trainable!r}: use head, all, lora or last-N"
                         + (f" with 1 <= N <= {n_layers}" if n_layers else ""))
    return trainable


def check_fits(args, model, tokenizer, sets, max_length, world_size):
    """Stop before training, not after, when the data, the model and --out do not fit."""
    if max_length > model.cfg["context_length"]:
        raise InputError(f"--max-length {max_length} exceeds the model's context length "
                         f"{model.cfg['context_length']}")
    if model.cfg["vocab_size"] <= tokenizer.eot_token:
        raise InputError(f"the model's vocabulary of {model.cfg['vocab_size']} tokens lacks "
                         "GPT-2's (50,257, <|endoftext|> pads the batches); use a GPT-2 checkpoint")
    if len(sets["train"]) < args.batch_size * world_size * args.accumulation_steps:
        raise InputError(f"--batch-size {args.batch_size} x {world_size} process(es) x "
                         f"--accumulation-steps {args.accumulation_steps} is more than the "
                         f"{len(sets['train'])} texts of the training split; use smaller ones")
    check_out(args.out)


def stop_if_diverged(loss, step):
    if not math.isfinite(loss.item()):
        hint = "" if step else ("; or, if you changed how the logits are read: with --fast and "
                                "--pooling last only each text's last real token has logits")
        raise InputError(f"the loss became {loss.item()} at step {step}: training diverged; "
                         f"try a smaller --lr{hint}")


def predict(args):
    """--predict: label texts with a saved classifier; "-" reads one text per line from
    standard input and answers in order, a chunk at a time (constant memory)."""
    device = pick_device(args.device)
    model, s = load_classifier(args.classifier or args.out / "classifier.safetensors", device)
    tokenizer = get_tokenizer()  # GPT-2's: checked when the classifier was trained
    bf16 = use_bf16(args.dtype, device)
    net = FastClassifier(model, tokenizer.eot_token, s["pooling"]) if args.fast else model
    net = Autocast(net, device) if bf16 else net
    chunks = line_chunks(sys.stdin) if args.predict == ["-"] else [args.predict]
    # A progress line only when the answers go to a file: on one terminal the two would mix.
    progress, done = Progress("classifying", 0, "texts", 1e9 if sys.stdout.isatty() else 2.0), 0
    for texts in chunks:
        for text, (label, prob) in zip(texts, classify(net, tokenizer, texts, s["labels"],
                                                       s["max_length"], s["pooling"],
                                                       s["truncate"])):
            shown = printable(" ".join(text.replace("\t", " ").splitlines()))  # 3 fields, 1 line
            print(f"{label}\t{prob:.3f}\t{shown}")
        done += len(texts)
        progress.show(done)
    progress.end()
    return model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--model", default="gpt2-small", help="size (gpt2, gpt2-medium, 774M, ...), a Hugging Face "
      "repo (ORG/NAME) or a folder (model.safetensors, or the book's gpt2/124M)")
    a("--init", choices=["pretrained", "random"], default="pretrained",
      help="random: train from scratch, no download")
    a("--data", default=None, help="labelled .tsv/.csv/.jsonl file or train/validation/test "
      "folder (default: the SMS Spam Collection, downloaded once)")
    a("--text-column", help="the text's column (or JSON key) in --data (default: by its name)")
    a("--label-column", help="the label's column (or JSON key) in --data (default: by its name)")
    a("--balance", action=argparse.BooleanOptionalAction, default=None,
      help="undersample every label to the rarest; the left-out examples are then tested on their "
      "own (default: only for a file named SMSSpamCollection)")
    a("--trainable", type=check_trainable, default="last-1",
      help="head, last-N (last N blocks + final_norm + head), all, or lora (low-rank updates of "
      "every Linear layer, appendix E)")
    a("--lora-rank", type=number(int, high=4096), default=16, help="rank of the LoRA updates")
    a("--lora-alpha", type=number(float), default=16, help="LoRA scale: updates x alpha / rank")
    a("--pooling", choices=POOLINGS, default="last",
      help="what the class is read from: the last real token, the first, or the mean of all real")
    a("--epochs", type=number(int, inclusive=True), default=5, help="passes over the training data")
    a("--batch-size", type=number(int), default=8,
      help="examples per step (per process under torchrun)")
    a("--accumulation-steps", type=number(int), default=1,
      help="micro-batches of --batch-size per optimizer step (gradient accumulation)")
    a("--lr", type=number(float), default=None,
      help="AdamW learning rate (default: 5e-5, or 8e-4 with lora, as in the appendix)")
    a("--weight-decay", type=number(float, inclusive=True), default=0.1, help="AdamW weight decay")
    a("--max-length", type=number(int), default=None,
      help="tokens kept per text (default: the model's context length)")
    a("--truncate", choices=TRUNCATIONS, default="start",
      help="which tokens a longer text keeps: its start or its end")
    a("--eval-freq", type=number(int), default=50,
      help="every N optimizer steps, log training and validation loss")
    a("--eval-iter", type=number(int), default=5,
      help="batches of each split behind those losses, and behind the accuracies after each "
      "epoch for a split of over 5,000 texts (smaller splits are measured whole)")
    a("--seed", type=number(int, 0, inclusive=True, high=2**32 - 1), default=123,
      help="seed for the split, the shuffling and the new head")
    a("--out", type=Path, default=Path("out"),
      help="folder for classifier.safetensors, metrics and splits")
    a("--fast", action=argparse.BooleanOptionalAction, default=True,
      help="the speed layer (same results); --no-fast runs the chapter's plain path")
    a("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    a("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
      help="bfloat16 autocast, with or without --fast (auto: on CUDA GPUs from Ampere on)")
    a("--compile", action="store_true", help="torch.compile the trained blocks (worth it on GPUs)")
    a("--cache", choices=["auto", "ram", "disk", "off"], default="auto",
      help="where the frozen-prefix cache lives (auto: in RAM up to --cache-mb, else on disk)")
    a("--cache-mb", type=number(float, inclusive=True), default=2048,
      help="RAM budget of the frozen-prefix cache, in MB")
    a("--backend", help="torchrun process-group backend (default: nccl on CUDA, else gloo)")
    a("--dist-timeout", type=number(float, 1, True, 10**6), default=1800,
      help="seconds torchrun processes wait for each other before giving up")
    a("--predict", nargs="+", metavar="TEXT", help="label these texts with the saved classifier "
      "and exit; - reads one text per line from standard input")
    a("--classifier", type=Path, default=None, help="for --predict: a classifier.safetensors, or "
      "a folder holding one (default: the one in --out)")
    args = p.parse_args(argv)
    for k, value in vars(args).items():  # no setting is silently ignored
        why = ("with --predict: a classifier brings its own settings" if args.predict and k not in
               ("predict", "classifier", "out", "device", "dtype", "fast") else "with --no-fast"
               if not args.fast and k in ("compile", "cache", "cache_mb") else
               "without --predict" if not args.predict and k == "classifier" else None)
        if why and value != p.get_default(k):
            p.error(f"--{k.replace('_', '-')} does nothing {why}; leave it out")
    args.lr = args.lr or (8e-4 if args.trainable == "lora" else 5e-5)
    return args


if __name__ == "__main__":
    run_main(main, interrupted="interrupted: nothing was written; the files in --out are as "
             "they were")
