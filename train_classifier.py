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
import contextlib
import functools
import itertools
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler

from data import by_length, encode, encode_examples, load_dataset, pad_batch
from load_gpt2 import check_finite, get_tokenizer, load_gpt2, pick_device
from report import final_report, load_classifier, save_run
from speed import FastClassifier, adamw, use_bf16
from utils import HelpFormatter, InputError, Progress, number, run_main, tracked

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
    (out, in)), leaving a plain GPTModel with a new head: what classifier.pt holds."""
    for name, module in model.named_children():
        if isinstance(module, LinearWithLoRA):
            lora = module.lora
            module.linear.weight += lora.scale * (lora.A @ lora.B).T
            setattr(model, name, module.linear)
        else:
            merge_lora(module)
    return model


def calc_loss_batch(input_batch, target_batch, lengths, model, device):
    """Cross-entropy of one batch, from the logits at each text's last real token (6.6)."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    # The chapter reads model(input_batch)[:, -1, :], the last *position*. Our batches are padded
    # on the right to their own longest text, so for every shorter text that position is padding.
    # We read each row's last *real* token instead: causal attention lets it see its whole text
    # and none of the padding after it, so every text gets the result it would get alone.
    logits = model(input_batch)[torch.arange(len(lengths)), lengths - 1]  # (B, num_classes)
    return F.cross_entropy(logits, target_batch)


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Mean loss over the first num_batches batches (all of them if None)."""
    losses = [calc_loss_batch(input_batch, target_batch, lengths, model, device).item()
              for input_batch, target_batch, lengths in itertools.islice(data_loader, num_batches)]
    return sum(losses) / len(losses)


@torch.no_grad()
def calc_accuracy_loader(data_loader, model, device, num_batches=None):
    """Share of texts classified right over the first num_batches batches (all if None)."""
    model.eval()
    correct, total = 0, 0
    for input_batch, target_batch, lengths in itertools.islice(data_loader, num_batches):
        logits = model(input_batch.to(device))[torch.arange(len(lengths)), lengths - 1]  # last real
        correct += (logits.argmax(dim=-1) == target_batch.to(device)).sum().item()
        total += len(target_batch)
    return correct / total


def accuracy_batches(data_loader, eval_iter, whole_up_to=5000):
    """Batches to measure after each epoch: all of a split of up to 5,000 texts, else eval_iter."""
    return None if len(data_loader.dataset) <= whole_up_to else eval_iter


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """Training and validation loss over eval_iter batches each, in eval mode."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def train_classifier_simple(model, train_loader, val_loader, optimizer, device, num_epochs,
                            eval_freq, eval_iter, master_process=True):
    """The chapter's loop (6.7). It returns one list of records (what metrics.jsonl stores)
    instead of four lists. Under torchrun only the master process evaluates and prints."""
    history, examples_seen, global_step = [], 0, -1
    start = tick = time.time()
    seen_at_tick = 0
    for epoch in range(1, num_epochs + 1):
        model.train()
        if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler: without it, every
            train_loader.sampler.set_epoch(epoch)      # epoch would repeat one shuffled order
        for input_batch, target_batch, lengths in tracked(train_loader, f"epoch {epoch}",
                                                          "batches", show=master_process):
            optimizer.zero_grad()
            loss = calc_loss_batch(input_batch, target_batch, lengths, model, device)
            loss.backward()  # under torchrun, gradients are averaged across processes here
            optimizer.step()
            examples_seen += input_batch.shape[0]
            global_step += 1
            stop_if_diverged(loss, global_step)
            if global_step % eval_freq == 0 and master_process:
                record = {"epoch": epoch, "step": global_step, "examples_seen": examples_seen,
                          "examples_per_s": (examples_seen - seen_at_tick) / (time.time() - tick)}
                record["train_loss"], record["val_loss"] = evaluate_model(
                    model, train_loader, val_loader, device, eval_iter)
                history.append({**record, "elapsed_s": time.time() - start})
                print(f"Ep {epoch} (Step {global_step:06d}): Train loss "
                      f"{record['train_loss']:.3f}, Val loss {record['val_loss']:.3f} | "
                      f"{record['examples_per_s']:.1f} ex/s | {time.time() - start:.1f} s")
                tick, seen_at_tick = time.time(), examples_seen  # ex/s: training steps only
        if master_process:
            # The chapter measures accuracy on eval_iter batches here; we take whole splits
            # unless they are large (IMDB-sized): the final report always takes them whole.
            train_accuracy = calc_accuracy_loader(train_loader, model, device,
                                                  accuracy_batches(train_loader, eval_iter))
            val_accuracy = calc_accuracy_loader(val_loader, model, device,
                                                accuracy_batches(val_loader, eval_iter))
            history.append({"epoch": epoch, "train_acc": train_accuracy, "val_acc": val_accuracy,
                            "elapsed_s": time.time() - start})
            print(f"Training accuracy: {train_accuracy:.2%} | Validation accuracy: "
                  f"{val_accuracy:.2%} | {time.time() - start:.1f} s")
            tick, seen_at_tick = time.time(), examples_seen
    return history, examples_seen


@torch.no_grad()
def classify(model, tokenizer, texts, label_names, max_length, batch_size=32):
    """[(label, probability)] for each text (the chapter's classify_review, for many texts).
    Texts are batched by length; padding never changes a result, so a text gets the same
    answer alone or beside much longer ones."""
    model.eval()
    tokens, device = encode(tokenizer, texts, max_length), next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(tokens[i]))
    results = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        input_batch, _, lengths = pad_batch([(tokens[i], 0) for i in ids], tokenizer.eot_token)
        logits = model(input_batch.to(device))[torch.arange(len(ids)), lengths - 1]  # last real
        for i, p in zip(ids, torch.softmax(logits.float(), dim=-1)):
            results[i] = (label_names[int(p.argmax())], float(p.max()))
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.predict:
        return predict(args)
    with distributed(args) as (ddp, rank, world_size, device):
        master_process = rank == 0
        log = print if master_process else lambda *a, **k: None
        start = time.time()
        # Data and pretrained GPT-2 (6.2-6.4). Under torchrun one process per machine downloads
        # what is missing while the others wait.
        with first_on_each_machine(ddp):
            tokenizer = get_tokenizer()
            splits, labels = load_dataset(args.data, args.seed, args.balance,
                                          args.text_column, args.label_column)
            torch.manual_seed(args.seed)  # the same random weights (--init random) and head
            model = load_gpt2(args.model, pretrained=args.init == "pretrained")
        max_length = args.max_length or model.cfg["context_length"]
        sets = {name: encode_examples(tokenizer, examples, labels, max_length)
                for name, examples in splits.items()}
        check_fits(args, model, tokenizer, sets, max_length, world_size)
        collate = functools.partial(pad_batch, pad_id=tokenizer.eot_token)
        # A seeded shuffle each epoch, and under torchrun each process's share of every batch.
        sampler = DistributedSampler(sets["train"], world_size, rank, seed=args.seed,
                                     drop_last=True)
        train_loader = DataLoader(sets["train"], args.batch_size, sampler=sampler, drop_last=True,
                                  collate_fn=collate)
        val_loader = DataLoader(sets["validation"], args.batch_size, collate_fn=collate)
        test_loader = DataLoader(sets["test"], args.batch_size, collate_fn=collate)
        log(f"data: {', '.join(f'{len(v)} {k}' for k, v in sets.items())}; labels: {labels}")

        # The classifier (6.5): a new head, everything frozen but the top.
        build_classifier(model, len(labels), args.trainable, args.lora_rank,
                         args.lora_alpha).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        log(f"model: {args.model} ({args.init}) on {device}, {sum(p.numel() for p in params):,} of "
            f"{sum(p.numel() for p in model.parameters()):,} parameters train ({args.trainable})")
        net = model
        if args.fast:  # speed.py: the same logits, computed with less work
            token_lists = [ids for name in ("train", "validation", "test") for ids, _ in sets[name]]
            net = FastClassifier(model, tokenizer.eot_token, use_bf16(args.dtype, device),
                                 args.compile, token_lists, args.cache, args.cache_mb, args.out)
            log(f"speed layer: {net.note}")
        optimizer = adamw(params, args.fast, lr=args.lr, weight_decay=args.weight_decay)

        # Fine-tuning (6.7), then the accuracy on every split.
        history, _ = train_classifier_simple(
            DDP(net) if ddp else net, train_loader, val_loader, optimizer, device, args.epochs,
            args.eval_freq, args.eval_iter, master_process)
        check_finite(model, "after training", "training diverged; try a smaller --lr")
        if master_process:
            loaders = {"train": train_loader, "validation": val_loader, "test": test_loader,
                       "unused": DataLoader(by_length(sets.get("unused", [])), 64,
                                            collate_fn=collate)}
            history.append(final_report(net, loaders, labels, device, start))
            log(save_run(args.out, merge_lora(model), labels, max_length, splits, history))
            texts = EXAMPLES if labels == ["ham", "spam"] else [t for _, t in splits["test"][:2]]
            for text, (label, prob) in zip(texts, classify(net, tokenizer, texts, labels,
                                                           max_length)):
                log(f"{label} ({prob:.1%}): {text}")
    return model


# ---------------------------------------------------------------------------------------------
# Plumbing: flags, checks, torchrun, files.

def check_trainable(trainable, n_layers):
    n = trainable.removeprefix("last-")
    if trainable not in ("head", "all", "lora") and not (
            trainable.startswith("last-") and n.isdigit() and 1 <= int(n) <= n_layers):
        raise InputError(f"--trainable {trainable!r}: use head, all, lora or last-N with "
                         f"1 <= N <= {n_layers}")


def check_fits(args, model, tokenizer, sets, max_length, world_size):
    """Stop before training, not after, when the data, the model and --out do not fit."""
    if max_length > model.cfg["context_length"]:
        raise InputError(f"--max-length {max_length} exceeds the model's context length "
                         f"{model.cfg['context_length']}")
    if model.cfg["vocab_size"] <= tokenizer.eot_token:
        raise InputError(f"the model's vocabulary of {model.cfg['vocab_size']} tokens lacks "
                         "GPT-2's (50,257, <|endoftext|> pads the batches); use a GPT-2 checkpoint")
    if len(sets["train"]) < args.batch_size * world_size:
        raise InputError(f"--batch-size {args.batch_size} x {world_size} process(es) is more than "
                         f"the {len(sets['train'])} texts of the training split; use a smaller one")
    out = args.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder (it holds the run's files)")
    for name in ("classifier.pt", "metrics.jsonl", "metrics.png", "splits"):
        if (out / name).exists() and (out / name).is_dir() != (name == "splits"):
            raise InputError(f"{out / name} is in the way of this run's {name}; move it away")
    out.mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=out).close()  # can we write there? (OSError: one clear line)


def stop_if_diverged(loss, step):
    if not math.isfinite(loss.item()):
        hint = "" if step else ("; or, if you changed how the logits are read: with --fast only "
                                "each text's last real token has logits (try --no-fast)")
        raise InputError(f"the loss became {loss.item()} at step {step}: training diverged; "
                         f"try a smaller --lr{hint}")


@contextlib.contextmanager
def distributed(args):
    """nanoGPT's flags (ddp, rank, world_size) and the device. torchrun sets RANK, LOCAL_RANK and
    WORLD_SIZE; a plain run has none and is rank 0 of 1. Sets the process group up and down."""
    device = pick_device(args.device)
    if "RANK" not in os.environ:
        yield False, 0, 1, device
        return
    env = {name: os.environ.get(name, "") for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    if not all(value.isdigit() for value in env.values()) or "MASTER_ADDR" not in os.environ:
        raise InputError(f"RANK is set, so this looks like a torchrun process, but {env} and "
                         "MASTER_ADDR are not what torchrun sets; start it with torchrun, or "
                         "unset RANK")
    try:
        dist.init_process_group(args.backend or ("nccl" if device.startswith("cuda") else "gloo"))
    except (RuntimeError, ValueError) as e:
        raise InputError(f"the torchrun process group could not start ({str(e)[:150]})") from None
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    try:
        yield True, dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def first_on_each_machine(ddp):
    """Under torchrun, local rank 0 runs the block first (downloading what is missing) while the
    machine's other processes wait at the barrier; then they run it from the cached files."""
    first = not ddp or os.environ["LOCAL_RANK"] == "0"
    if not first:
        dist.barrier()
    yield
    if first and ddp:
        dist.barrier()


def predict(args):
    """--predict: label texts with the saved classifier; "-" reads one text per line from
    standard input and answers in order, a chunk at a time (constant memory)."""
    device = pick_device(args.device)
    model, labels, max_length = load_classifier(args.out / "classifier.pt", device)
    tokenizer = get_tokenizer()
    net = FastClassifier(model, tokenizer.eot_token, use_bf16(args.dtype, device)) \
        if args.fast else model
    chunks = line_chunks(sys.stdin.buffer) if args.predict == ["-"] else [args.predict]
    # A progress line only when the answers go to a file: on one terminal the two would mix.
    quiet_s = float("inf") if sys.stdout.isatty() else 2.0
    progress, done = Progress("classifying", 0, "texts", quiet_s), 0
    for texts in chunks:
        for text, (label, prob) in zip(texts, classify(net, tokenizer, texts, labels,
                                                       max_length)):
            print(f"{label}\t{prob:.3f}\t{text}")
        done += len(texts)
        progress.show(done)
    progress.end()
    return model


def line_chunks(stream, size=1024, longest=1_000_000):
    """Lists of up to size texts, one per line of a binary stream (UTF-8), in order. An empty
    line is skipped with a note on stderr; a line of over a million bytes stops the run."""
    chunk = []
    for n, raw in enumerate(iter(lambda: stream.readline(longest + 1), b""), 1):
        if len(raw) > longest:
            raise InputError(f"standard input, line {n}: over {longest:,} bytes; one text a line")
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise InputError(f"standard input, line {n}: bytes that are not UTF-8") from None
        if text.strip():
            chunk.append(text)
        else:
            print(f"line {n} is empty: skipped", file=sys.stderr)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def trainable_spec(text):
    if text not in ("head", "all", "lora") and not re.fullmatch(r"last-[1-9][0-9]*", text):
        raise argparse.ArgumentTypeError(f"use head, all, lora or last-N (such as last-2), "
                                         f"got {text}")
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    a = p.add_argument
    a("--model", default="gpt2-small",
      help="size (gpt2, gpt2-medium, 774M, ...) or a folder with model.safetensors")
    a("--init", choices=["pretrained", "random"], default="pretrained",
      help="random: train from scratch, no download")
    a("--data", default=None, help="labelled .tsv/.csv/.jsonl file or train/validation/test "
      "folder (default: the SMS Spam Collection, downloaded once)")
    a("--text-column", default=None, help="the text's column (or JSON key) in --data (default: "
      "found by name in a header, else the second column)")
    a("--label-column", default=None, help="the label's column (or JSON key) in --data "
      "(default: found by name in a header, else the first column)")
    a("--balance", action=argparse.BooleanOptionalAction, default=None,
      help="undersample every label to the rarest; the left-out examples are then tested on their "
      "own (default: only for a file named SMSSpamCollection)")
    a("--trainable", type=trainable_spec, default="last-1",
      help="head, last-N (last N blocks + final_norm + head), all, or lora (low-rank updates of "
      "every Linear layer, appendix E)")
    a("--lora-rank", type=number(int, high=4096), default=16, help="rank of the LoRA updates")
    a("--lora-alpha", type=number(float), default=16, help="LoRA scale: updates x alpha / rank")
    a("--epochs", type=number(int, inclusive=True), default=5, help="passes over the training data")
    a("--batch-size", type=number(int), default=8,
      help="examples per step (per process under torchrun)")
    a("--lr", type=number(float), default=None,
      help="AdamW learning rate (default: 5e-5, or 8e-4 with lora, as in the appendix)")
    a("--weight-decay", type=number(float, inclusive=True), default=0.1, help="AdamW weight decay")
    a("--max-length", type=number(int), default=None,
      help="tokens kept per text (default: the model's context length)")
    a("--eval-freq", type=number(int), default=50,
      help="every N steps, log training and validation loss")
    a("--eval-iter", type=number(int), default=5,
      help="batches of each split behind those losses, and behind the accuracies after each "
      "epoch for a split of over 5,000 texts (smaller splits are measured whole)")
    a("--seed", type=number(int, 0, inclusive=True, high=2**32 - 1), default=123,
      help="seed for the split, the shuffling and the new head")
    a("--out", type=Path, default=Path("out"), help="folder for classifier.pt, metrics and splits")
    a("--fast", action=argparse.BooleanOptionalAction, default=True,
      help="the speed layer (same results); --no-fast runs the chapter's plain path")
    a("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    a("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
      help="bfloat16 autocast with --fast (auto: on CUDA when supported)")
    a("--compile", action="store_true", help="torch.compile the trained blocks (worth it on GPUs)")
    a("--cache", choices=["auto", "ram", "disk", "off"], default="auto",
      help="where the frozen-prefix cache lives (auto: in RAM up to --cache-mb, else on disk)")
    a("--cache-mb", type=number(float, inclusive=True), default=2048,
      help="RAM budget of the frozen-prefix cache, in MB")
    a("--backend", default=None, help="torchrun process-group backend (default: nccl on CUDA, "
      "else gloo)")
    a("--predict", nargs="+", metavar="TEXT", help="label these texts with the saved classifier "
      "in --out and exit; - reads one text per line from standard input")
    args = p.parse_args(argv)
    args.lr = args.lr or (8e-4 if args.trainable == "lora" else 5e-5)
    return args


if __name__ == "__main__":
    run_main(main, interrupted="interrupted: nothing was written; the files in --out are as "
             "they were")
