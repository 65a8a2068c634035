"""Fine-tune pretrained GPT-2 into a text classifier (SMS spam by default), loop written out.

    python train_classifier.py                         # gpt2-small on the SMS Spam Collection
    python train_classifier.py --predict "Free entry!"  # label texts with the saved classifier
    torchrun --standalone --nproc_per_node=2 train_classifier.py   # several GPUs or processes

The recipe follows the textbook: replace out_head by a Linear(emb_dim, num_classes), freeze
everything, train the last block, final_norm and the new head with AdamW (lr 5e-5, weight decay
0.1, batch 8, 5 epochs). Two changes make it exact and fast:
  - each batch is padded only to its longest text, and the class is read at each text's last
    real token (not at the last position, which is padding for all but the longest text);
  - the frozen bottom of the network gives the same output for a text every time, so it runs
    once per text and is cached; each step then runs only the trainable top.
"""
import argparse
import contextlib
import functools
import json
import math
import os
import pickle
import re
import time
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from data import (InputError, atomic_write, encode, epoch_order, load_dataset, make_batches,
                  run_main, write_splits)
from load_gpt2 import get_tokenizer, load_gpt2, pick_device
from model import GPTModel

EXAMPLES = ["You are a winner you have been specially selected to receive $1000 cash or a $2000 "
            "award.", "Hey, just wanted to check if we're still on for dinner tonight? Let me know!"]


def build_classifier(model, num_classes, trainable="last-1"):
    """Swap out_head for a num_classes-way Linear and freeze all but the trainable part:
    "head" (the new head alone), "last-N" (the last N blocks, final_norm and head) or "all"."""
    n_layers = len(model.trf_blocks)
    n_top = trainable.removeprefix("last-")
    if trainable not in ("head", "all") and not (n_top.isdigit() and 1 <= int(n_top) <= n_layers):
        raise InputError(f"--trainable {trainable!r}: use head, all or last-N with 1 <= N <= {n_layers}")
    model.out_head = nn.Linear(model.cfg["emb_dim"], num_classes, device=model.out_head.weight.device)
    model.requires_grad_(trainable == "all")
    model.out_head.requires_grad_(True)
    if trainable.startswith("last-"):
        model.final_norm.requires_grad_(True)
        model.trf_blocks[n_layers - int(n_top):].requires_grad_(True)
    return model


class LastTokenClassifier(nn.Module):
    """GPT-2 read at each row's last real token: (B, T) ids and (B,) lengths -> (B, classes).

    The bottom (embeddings and the blocks below the first trainable one) takes no gradient;
    its output may be passed in from the frozen-prefix cache instead of being recomputed.
    """

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt
        self.n_frozen = 0  # blocks in the bottom; 0 when the embeddings train
        if not any(p.requires_grad for p in [*gpt.tok_emb.parameters(), *gpt.pos_emb.parameters()]):
            while self.n_frozen < len(gpt.trf_blocks) and not any(
                    p.requires_grad for p in gpt.trf_blocks[self.n_frozen].parameters()):
                self.n_frozen += 1

    def bottom(self, idx):  # (B, T) -> (B, T, C)
        x = self.gpt.embed(idx)
        for block in self.gpt.trf_blocks[:self.n_frozen]:
            x = block(x)
        return x

    def forward(self, idx, lengths, bottom=None):
        x = self.bottom(idx) if bottom is None else bottom  # (B, T, C)
        blocks = self.gpt.trf_blocks[self.n_frozen:]
        for block in blocks[:-1]:
            x = block(x)
        # Causal attention: position lengths-1 has seen its whole text and none of the padding.
        # The head reads only that position, so the top block computes only it (its attention
        # still reads every earlier token): the same numbers for a fraction of the work.
        last = lengths - 1
        if len(blocks):
            x = blocks[-1](x, last=last)[:, 0]  # (B, C)
        else:  # only the head trains: the bottom already ran every block
            x = x[torch.arange(x.size(0), device=x.device), last]
        return self.gpt.out_head(self.gpt.final_norm(x))  # (B, C) -> (B, num_classes)


class PrefixCache:
    """The frozen bottom's output for each example, computed once and reused in every step and
    epoch. Exact, because a frozen bottom without dropout maps a text to the same output every
    time. Kept unpadded, in the model's dtype; costs tokens * emb_dim * 4 bytes in float32."""

    def __init__(self, clf, sets, pad_id, dtype, batch_size=64):
        self.clf, self.sets, self.pad_id, self.dtype, self.batch_size = clf, sets, pad_id, dtype, batch_size
        self.store = {}

    @torch.no_grad()
    def fill(self, split, ids, amp):
        tokens, targets = self.sets[split]
        missing = sorted({i for i in ids if (split, i) not in self.store}, key=lambda i: len(tokens[i]))
        device = self.clf.gpt.tok_emb.weight.device
        # Sorted by length, so these batches carry almost no padding.
        for batch_ids, idx, lengths, _ in make_batches(tokens, targets, missing, self.batch_size, self.pad_id):
            with amp():
                out = self.clf.bottom(idx.to(device))  # (B, T, C)
            for row, i in enumerate(batch_ids):
                # a copy: a view would keep the whole padded batch alive
                self.store[split, i] = out[row, :lengths[row]].to(self.dtype, copy=True)

    def get(self, split, ids):  # -> (B, T, C), zeros after each row's end: never read (causal)
        return nn.utils.rnn.pad_sequence([self.store[split, i] for i in ids], batch_first=True)


class Run:
    """What the training steps and evaluations of one run share: the classifier, the token ids
    and labels of each split, the cache, the autocast context and this process's rank."""

    def __init__(self, clf, sets, pad_id, amp, cache, rank=0, world=1):
        self.clf, self.sets, self.pad_id, self.amp, self.cache = clf, sets, pad_id, amp, cache
        self.rank, self.world, self.device = rank, world, clf.gpt.tok_emb.weight.device

    def logits(self, split, ids, idx, lengths, net):
        """(B, num_classes) float32 logits of a batch; net is the classifier or its DDP wrapper."""
        bottom = self.cache.get(split, ids) if self.cache else None
        with self.amp():
            return net(idx.to(self.device), lengths.to(self.device), bottom).float()

    @torch.no_grad()
    def accuracy(self, split):
        """Accuracy over the whole split, summed across ranks (the textbook's
        calc_accuracy_loader). Runs the bare classifier: ranks may take different numbers of
        batches here, which DDP's wrapper must never see."""
        tokens, targets = self.sets[split]
        mine = sorted(range(self.rank, len(tokens), self.world), key=lambda i: len(tokens[i]))
        if self.cache:
            self.cache.fill(split, mine, self.amp)
        self.clf.eval()
        counts = torch.zeros(2, device=self.device)  # correct, total
        for ids, idx, lengths, y in make_batches(tokens, targets, mine, 64, self.pad_id):
            pred = self.logits(split, ids, idx, lengths, self.clf).argmax(-1)
            counts += torch.tensor([(pred == y.to(self.device)).sum(), len(y)], device=self.device)
        self.clf.train()
        if self.world > 1:
            dist.all_reduce(counts)
        return (counts[0] / counts[1]).item()


@torch.no_grad()
def classify(model, tokenizer, texts, label_names, max_length, batch_size=32):
    """[(label, probability)] for each text. Texts are batched by length; padding never changes
    a result, so a text gets the same answer alone or beside much longer ones."""
    model.eval()
    clf, device = LastTokenClassifier(model), model.tok_emb.weight.device
    tokens = encode(tokenizer, texts, max_length)
    order = sorted(range(len(texts)), key=lambda i: len(tokens[i]))
    results = [None] * len(texts)
    for ids, idx, lengths, _ in make_batches(tokens, [0] * len(texts), order, batch_size, 0):
        probs = torch.softmax(clf(idx.to(device), lengths.to(device)).float(), dim=-1)  # (B, classes)
        for i, p in zip(ids, probs):
            results[i] = (label_names[int(p.argmax())], float(p.max()))
    return results


def save_classifier(model, labels, max_length, path):
    with atomic_write(path) as tmp:
        torch.save({"model": model.state_dict(), "cfg": model.cfg, "labels": labels,
                    "max_length": max_length}, tmp)


def load_classifier(path, device="cpu"):
    """(model, label names, max_length) from save_classifier's file; plain tensors and
    dicts only (weights_only=True), never arbitrary pickled code."""
    try:
        with zipfile.ZipFile(path) as z:  # torch.load does not check the CRCs; a damaged file
            damaged = z.testzip()          # would load and predict garbage
        if damaged:
            raise RuntimeError(f"{damaged} fails its checksum")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        labels, max_length = ckpt["labels"], ckpt["max_length"]
        with torch.device("meta"):
            model = build_classifier(GPTModel(ckpt["cfg"]), len(labels), "all")
        model.load_state_dict(ckpt["model"], assign=True)
    except FileNotFoundError:
        raise InputError(f"no trained classifier at {path}; train one first with "
                         "python train_classifier.py, or point --out at its folder") from None
    except (RuntimeError, KeyError, TypeError, ValueError, OSError, zipfile.BadZipFile,
            pickle.UnpicklingError) as e:
        raise InputError(f"{path} is not a classifier saved by this script ({str(e)[:200]})") from None
    return model.to(device).eval(), labels, max_length


def save_metrics(records, out):
    with atomic_write(out / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    try:  # the Figure class alone: no pyplot, no change to the user's plotting backend
        from matplotlib.figure import Figure
    except ImportError:
        return "plot skipped: pip install matplotlib to get metrics.png"
    steps = [r for r in records if "loss" in r]
    epochs = [r for r in records if "val_acc" in r]
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot([r["step"] for r in steps], [r["loss"] for r in steps])
    ax1.set(xlabel="step", ylabel="training loss")
    for key in ("train_acc", "val_acc"):
        ax2.plot([r["epoch"] for r in epochs], [r[key] for r in epochs], marker="o", label=key)
    ax2.set(xlabel="epoch", ylabel="accuracy")
    ax2.legend()
    fig.tight_layout()
    with atomic_write(out / "metrics.png") as tmp:
        fig.savefig(tmp, format="png")
    return f"plot: {out / 'metrics.png'}"


def number(kind, low=0.0, inclusive=False):
    """An argparse type: a finite number above low (or from low on, if inclusive)."""
    def parse(text):
        value = kind(text)
        if not (math.isfinite(value) and (value >= low if inclusive else value > low)):
            raise argparse.ArgumentTypeError(f"must be a number {'>=' if inclusive else '>'} {low:g}, got {text}")
        return value
    return parse


def trainable_spec(text):
    if text not in ("head", "all") and not re.fullmatch(r"last-[1-9][0-9]*", text):
        raise argparse.ArgumentTypeError(f"use head, all or last-N (such as last-2), got {text}")
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", default="gpt2-small", help="size (gpt2, gpt2-medium, 774M, ...) or a folder with model.safetensors")
    a("--init", choices=["pretrained", "random"], default="pretrained", help="random: train from scratch, no download")
    a("--data", default=None, help="labelled .tsv/.csv file or train/validation/test folder (default: SMS spam)")
    a("--balance", action=argparse.BooleanOptionalAction, default=None,
      help="undersample every label to the rarest (default: only for the SMS Spam Collection)")
    a("--trainable", type=trainable_spec, default="last-1", help="head, last-N (last N blocks + final_norm + head) or all")
    a("--epochs", type=number(int, inclusive=True), default=5, help="passes over the training data")
    a("--batch-size", type=number(int), default=8, help="examples per step (per process under torchrun)")
    a("--lr", type=number(float), default=5e-5, help="AdamW learning rate")
    a("--weight-decay", type=number(float, inclusive=True), default=0.1, help="AdamW weight decay")
    a("--max-length", type=number(int), default=None, help="tokens kept per text (default: the context length)")
    a("--eval-every", type=number(int), default=50, help="log training loss and accuracy every N steps")
    a("--seed", type=int, default=123, help="seed for the split, the shuffling and the new head")
    a("--out", type=Path, default=Path("out"), help="folder for classifier.pt, metrics and splits")
    a("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    a("--dtype", choices=["auto", "float32", "bfloat16"], default="auto", help="bfloat16 autocast (auto: on CUDA when supported)")
    a("--compile", action="store_true", help="torch.compile the classifier (worth it on GPUs)")
    a("--cache-mb", type=number(float, inclusive=True), default=2048, help="memory budget of the frozen-prefix cache; 0 turns it off")
    a("--backend", default=None, help="torchrun process-group backend (default: nccl on CUDA, else gloo)")
    a("--predict", nargs="+", metavar="TEXT", help="label these texts with the saved classifier and exit")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    if args.predict:
        model, labels, max_length = load_classifier(args.out / "classifier.pt", device)
        for text, (label, prob) in zip(args.predict, classify(model, get_tokenizer(), args.predict, labels, max_length)):
            print(f"{label}\t{prob:.3f}\t{text}")
        return model

    # torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain run has none of them.
    ddp = "RANK" in os.environ
    rank, world = 0, 1
    if ddp:
        dist.init_process_group(args.backend or ("nccl" if device.startswith("cuda") else "gloo"))
        rank, world = dist.get_rank(), dist.get_world_size()
        if device.startswith("cuda"):
            device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(device)
    log = print if rank == 0 else lambda *a, **k: None
    bf16 = args.dtype == "bfloat16" or (args.dtype == "auto" and device.startswith("cuda")
                                          and torch.cuda.is_bf16_supported())
    # bfloat16 autocast on this device; otherwise a context that does nothing
    amp = functools.partial(torch.autocast, torch.device(device).type, dtype=torch.bfloat16) \
        if bf16 else contextlib.nullcontext
    log(f"device: {device}{f' x {world} processes' if ddp else ''}, {'bfloat16 autocast' if bf16 else 'float32'}")
    start = time.time()

    # Data and model. Under torchrun one process per machine downloads what is missing while
    # the others wait at the barrier, then read the cached files.
    first = not ddp or os.environ["LOCAL_RANK"] == "0"
    if not first:
        dist.barrier()
    tokenizer = get_tokenizer()
    splits, labels = load_dataset(args.data, seed=args.seed, balance_classes=args.balance)
    torch.manual_seed(args.seed)  # the same random weights (--init random) and head everywhere
    model = load_gpt2(args.model, pretrained=args.init == "pretrained")
    if first and ddp:
        dist.barrier()
    if rank == 0:
        write_splits(splits, args.out / "splits")
    log(f"data: {', '.join(f'{len(v)} {k}' for k, v in splits.items())}; labels: {labels}")

    # Text -> token ids, truncated to fit the model; a new head; only the top trains.
    context = model.cfg["context_length"]
    max_length = args.max_length or context
    if max_length > context:
        raise InputError(f"--max-length {max_length} exceeds the model's context length {context}")
    pad_id = tokenizer.eot_token if tokenizer.eot_token < model.cfg["vocab_size"] else 0
    sets = {name: (encode(tokenizer, [t for _, t in ex], max_length), [labels.index(l) for l, _ in ex])
            for name, ex in splits.items()}
    if any(max(map(max, tokens)) >= model.cfg["vocab_size"] for tokens, _ in sets.values()):
        raise InputError(f"the texts hold token ids beyond this model's vocabulary of {model.cfg['vocab_size']}")
    build_classifier(model, len(labels), args.trainable).to(device).train()
    clf = LastTokenClassifier(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    log(f"model: {args.model} ({args.init}), {sum(p.numel() for p in trainable):,} of "
        f"{sum(p.numel() for p in model.parameters()):,} parameters train ({args.trainable})")

    # Frozen-prefix cache: only when there is a frozen bottom, it is deterministic, and it fits.
    n_tokens = sum(len(t) for tokens, _ in sets.values() for t in tokens)
    cache_mb = n_tokens * model.cfg["emb_dim"] * model.tok_emb.weight.element_size() / 2**20
    use_cache = clf.n_frozen > 0 and model.cfg["drop_rate"] == 0 and cache_mb <= args.cache_mb
    cache = PrefixCache(clf, sets, pad_id, model.tok_emb.weight.dtype) if use_cache else None
    why = ("no frozen blocks" if clf.n_frozen == 0 else "dropout is on" if model.cfg["drop_rate"]
           else f"{cache_mb:.0f} MB > --cache-mb {args.cache_mb:g}")
    log("frozen-prefix cache: " + (f"on, {clf.n_frozen} blocks, {cache_mb:.0f} MB" if use_cache else f"off ({why})"))

    net = torch.compile(clf) if args.compile else clf
    net = DDP(net, device_ids=[device] if device.startswith("cuda") else None) if ddp else net
    run = Run(clf, sets, pad_id, amp, cache, rank, world)
    try:  # the fused AdamW does the same update in one kernel: 5x faster here than the default
        optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay, fused=True)
    except RuntimeError:  # not on this device or torch version
        optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=args.weight_decay)

    # The training loop, written out.
    records, accs, step, seen = [], {}, 0, 0
    loss_sum = correct = count = 0  # over the steps since the last log line
    tick = time.time()
    train_tokens, train_targets = sets["train"]
    for epoch in range(1, args.epochs + 1):
        order = epoch_order(len(train_tokens), args.batch_size, args.seed + epoch, rank, world)
        if cache:
            cache.fill("train", order, amp)
        for ids, idx, lengths, y in make_batches(train_tokens, train_targets, order, args.batch_size, pad_id):
            logits = run.logits("train", ids, idx, lengths, net)  # (B, num_classes)
            y = y.to(device)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP, gradients are averaged across processes here
            optimizer.step()
            step, seen = step + 1, seen + len(y) * world
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(-1) == y).sum().item()  # last-token accuracy
            count += len(y)
            if step % args.eval_every == 0:
                now = time.time()
                records.append({"step": step, "epoch": epoch, "loss": loss_sum / count,
                                "acc": correct / count, "examples_per_s": seen / (now - tick),
                                "elapsed_s": now - start})
                log(f"step {step:5d} | epoch {epoch} | loss {loss_sum / count:.4f} | acc "
                    f"{correct / count:6.2%} | {seen / (now - tick):6.1f} ex/s | {now - start:6.1f}s")
                loss_sum = correct = count = seen = 0
                tick = now
        accs = {"train": run.accuracy("train"), "validation": run.accuracy("validation")}
        records.append({"epoch": epoch, "train_acc": accs["train"], "val_acc": accs["validation"],
                        "elapsed_s": time.time() - start})
        log(f"epoch {epoch} done | train acc {accs['train']:.2%} | validation acc "
            f"{accs['validation']:.2%} | {time.time() - start:.1f}s")
        if rank == 0:
            save_metrics(records, args.out)
        tick, seen = time.time(), 0  # examples/s counts training steps, not this evaluation

    # The last epoch measured train and validation already (unless --epochs 0).
    for name in sets:
        if name not in accs:
            accs[name] = run.accuracy(name)
    records.append({"final": True, **{f"{k}_acc": v for k, v in accs.items()}, "elapsed_s": time.time() - start})
    log(f"final | train {accs['train']:.2%} | validation {accs['validation']:.2%} | "
        f"test {accs['test']:.2%} | {time.time() - start:.1f}s")
    if rank == 0:
        save_classifier(model, labels, max_length, args.out / "classifier.pt")
        plot = save_metrics(records, args.out)
        log(f"saved {args.out / 'classifier.pt'}; metrics: {args.out / 'metrics.jsonl'}; {plot}")
        texts = EXAMPLES if labels == ["ham", "spam"] else [t for _, t in splits["test"][:2]]
        for text, (label, prob) in zip(texts, classify(model, tokenizer, texts, labels, max_length)):
            log(f"{label} ({prob:.1%}): {text}")
    if ddp:
        dist.destroy_process_group()
    return model


if __name__ == "__main__":
    run_main(main)
