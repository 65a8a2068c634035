"""Pretrain GPT-2 on your own text, from scratch or onward from OpenAI's weights: chapter 5.

    python pretrain.py --data your.txt                  # gpt2-small, trained on your text
    python pretrain.py --data your.txt --init random    # from scratch, as the chapter does
    python train_classifier.py --model pretrained       # then chapter 6 (or generate.py)

Read it top to bottom, in the chapter's order, from GPTDatasetV1 to main (below main: plumbing).
"""
import argparse
import functools
import itertools
from pathlib import Path

from plumbing.cli import starting  # first: torch's import can take seconds (cli's is quick)

starting(__name__)  # as a script: Ctrl-C ends it at once, quietly; a slow start is said

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from generate import generate
from load_gpt2 import get_tokenizer, load_gpt2
from model import GPTModel
from plumbing.cli import (InputError, Progress, every_one_or_what_failed, printable, run_main,
                          tracked)
from plumbing.ddp import distributed, first_on_each_machine, gradient_sync, processes
from plumbing.extras import appendix_d_lr, optimizer_steps, stop_if_diverged
from plumbing.files import read_texts
from plumbing.flags import HelpFormatter, check_windows, number, parse, training_flags
from plumbing.hardware import Autocast, pick_device, use_bf16
from plumbing.hub_format import write_language_model
from plumbing.report import TrainingLog, perplexity, save_metrics
from plumbing.save import publish
from plumbing.speed import adamw
from plumbing.weights import check_finite


# ---------------------------------------------------------------------------------------------
# Chapter 5, step by step (the windows are chapter 2's)

class GPTDatasetV1(Dataset):
    """The text's tokens cut as the chapter cuts them: input i is token_ids[s:s + max_length], its
    target that window one token on, s the i-th of range(0, len(token_ids) - max_length, stride);
    each cut as it is read. <|endoftext|> in txt: GPT-2's document separator, as in its training."""

    def __init__(self, txt, tokenizer, max_length, stride):
        self.token_ids = torch.tensor(tokenizer.encode(txt, allowed_special={"<|endoftext|>"}))
        self.starts = range(0, len(self.token_ids) - max_length, stride)
        self.max_length = max_length

    def __len__(self):
        return len(self.starts)

    def __getitem__(self, idx):
        chunk = self.token_ids[self.starts[idx]:self.starts[idx] + self.max_length + 1]
        return chunk[:-1], chunk[1:]  # input_chunk, target_chunk: (max_length,) each


def create_dataloader_v1(txt, tokenizer, batch_size=4, max_length=256, stride=128, shuffle=True,
                         drop_last=True, seed=123, rank=0, world_size=1):
    """The chapter's loader, GPT-2's tokenizer passed in; seeded; under torchrun, a rank's share."""
    dataset = GPTDatasetV1(txt, tokenizer, max_length, stride)
    sampler = DistributedSampler(dataset, world_size, rank, shuffle=shuffle, seed=seed,
                                 drop_last=drop_last)
    return DataLoader(dataset, batch_size, sampler=sampler, drop_last=drop_last)


def calc_loss_batch(input_batch, target_batch, model, device):
    """Next-token cross-entropy of one batch: the mean over its B x T predictions (5.1.2)."""
    input_batch, target_batch = input_batch.to(device), target_batch.to(device)
    logits = model(input_batch)  # (B, T, vocab_size)
    return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(data_loader, model, device, num_batches=None):
    """Mean loss over the first num_batches batches (all of them if None); nan if none."""
    losses = [calc_loss_batch(input_batch, target_batch, model, device).item()
              for input_batch, target_batch in itertools.islice(data_loader, num_batches)]
    return sum(losses) / len(losses) if losses else float("nan")


def evaluate_model(model, train_loader, val_loader, device, eval_iter):
    """Training and validation loss over eval_iter batches each, in eval mode."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model, tokenizer, device, start_context):
    """What the model makes of start_context so far: 50 tokens, greedy, on one line (5.1.3)."""
    gpt = next(m for m in model.modules() if isinstance(m, GPTModel))  # inside bf16 or torchrun
    gpt.eval()
    encoded = tokenizer.encode(start_context, allowed_special={"<|endoftext|>"})
    token_ids = generate(gpt, torch.tensor([encoded or [tokenizer.eot_token]], device=device),
                         max_new_tokens=50, temperature=0, vocab_size=tokenizer.n_vocab)
    print(printable(tokenizer.decode(token_ids[0].tolist()).replace("\n", " ")))
    gpt.train()


def train_model_simple(model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq,
                       eval_iter, start_context, tokenizer, *, accumulation_steps=1, lr_at=None,
                       clip_grad_norm=None, log=None):
    """The chapter's loop (5.2) and its three lists: the losses, and the tokens seen at each
    evaluation. Our extras, off by default, each a line where it acts: accumulation_steps, lr_at
    and clip_grad_norm (appendix D); log prints and keeps records."""
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, -1
    log = log or TrainingLog(unit="tokens")
    for epoch in range(1, num_epochs + 1):
        model.train()
        for micro_batches in optimizer_steps(train_loader, accumulation_steps, epoch, log.master):
            optimizer.zero_grad()
            global_step += 1
            for n, (input_batch, target_batch) in enumerate(micro_batches, 1):
                with gradient_sync(model, n == accumulation_steps):  # torchrun: the average
                    loss = calc_loss_batch(input_batch, target_batch, model, device)
                    stop_if_diverged(loss, global_step, "before any update (in bfloat16, try "
                                     "--dtype float32)")
                    (loss / accumulation_steps).backward()  # the mean over the step's batches
                tokens_seen += input_batch.numel() * processes()  # under torchrun: all
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
                track_tokens_seen.append(tokens_seen)
                log.losses(epoch, global_step, tokens_seen, train_loss, val_loss, optimizer)
        if log.master:
            generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


def main(argv=None):
    args = parse_args(argv)
    with distributed(pick_device(args.device), args.backend, args.dist_timeout) as (
            ddp, rank, world_size, device):
        log = TrainingLog(master=rank == 0, unit="tokens")
        if ddp and args.data == "-":  # each process would read a part of it
            raise InputError("--data - takes one process; under torchrun, give a file")
        # The text and the model; under torchrun, one process a machine downloads them first.
        with first_on_each_machine(ddp):  # all three tried: what is missing is named at once
            tokenizer, text_data, model = every_one_or_what_failed(
                ("GPT-2's vocabulary", lambda: get_tokenizer(args.model)),
                ("the text", lambda: "<|endoftext|>".join(read_texts(args.data, MAX_BYTES))),
                ("the weights", lambda: the_model(args)))
        # The first 90% of the text to train on, the rest to validate on (5.1.3).
        split_idx = int(0.90 * len(text_data))
        eot = text_data.find("<|endoftext|>", max(split_idx - 12, 0))  # never cut in two
        split_idx = eot if -1 < eot < split_idx else split_idx
        loader = functools.partial(create_dataloader_v1, tokenizer=tokenizer, seed=args.seed,
                                   batch_size=args.batch_size, max_length=args.context_length,
                                   stride=args.stride)
        with Progress("tokenizing the text"):
            train_loader = loader(text_data[:split_idx], rank=rank, world_size=world_size)
            val_loader = loader(text_data[split_idx:], shuffle=False, drop_last=False)
        train, val = train_loader.dataset, val_loader.dataset
        check_windows(args, model.cfg, tokenizer.n_vocab, len(train), len(val), world_size,
                      OWN_FILES)
        bf16, why = use_bf16(args.dtype, device)
        log(f"model: {args.model} ({model.source}) on {device} in "
            f"{'bfloat16' if bf16 else 'float32'} ({why}), context {model.cfg['context_length']}"
            f"\ntext: {len(train.token_ids):,} + {len(val.token_ids):,} tokens; {len(train):,} "
            f"+ {len(val):,} windows of {args.context_length} every {args.stride}")
        log.mark("load")

        # Pretraining (5.2): AdamW on every weight, the loop, then the whole validation text.
        net = Autocast(model.to(device), device) if bf16 else model.to(device)
        net = torch.compile(net) if args.compile else net
        optimizer = adamw(model.parameters(), True, lr=args.lr, weight_decay=args.weight_decay)
        total_steps = args.epochs * (len(train_loader) // args.accumulation_steps)  # appendix D
        torch.manual_seed(args.seed)  # dropout
        train_model_simple(
            DDP(net) if ddp else net, train_loader, val_loader, optimizer, device, args.epochs,
            args.eval_freq, args.eval_iter, args.start_context, tokenizer,
            accumulation_steps=args.accumulation_steps, clip_grad_norm=args.clip_grad_norm,
            lr_at=functools.partial(appendix_d_lr, peak_lr=args.lr, total_steps=total_steps,
                                    warmup_steps=args.warmup_steps, min_lr=args.min_lr), log=log)
        check_finite(model, "after training", "training diverged; try a smaller --lr")
        if not log.master:
            return model
        log.mark("epochs")
        with torch.no_grad():
            val_loss = calc_loss_loader(tracked(val_loader, "final validation", "batches"),
                                        net.eval(), device)  # the whole of it
        final = {"final": True, "validation_loss": val_loss,
                 "validation_perplexity": perplexity(val_loss)}
        log(f"final | validation loss {val_loss:.3f}, perplexity {perplexity(val_loss):.1f}")
        log.history.append(final | log.mark("final validation"))
        new = publish(args.out, OWN_FILES, lambda staged: (
            write_language_model(staged, model, tokenizer), save_metrics(log.history, staged)),
            "the model")
        log(f"saved in {args.out}: {', '.join(new)}"
            + ("" if "metrics.png" in new else " (pip install matplotlib for metrics.png)"))
    return model


# ---------------------------------------------------------------------------------------------
# Plumbing: the model, the flags.

OWN_FILES = ("model.safetensors", "config.json", "tokenizer_config.json", "vocab.json",
             "merges.txt", "metrics.jsonl", "metrics.png")  # --out's: the only ones replaced
MAX_BYTES = 100_000_000  # of text: it and its tokens are held in memory


def the_model(args):
    """GPT-2's weights (--model), or from scratch (--init random, drawn with --seed) a model of
    that size whose context is --context-length, as GPT_CONFIG_124M; dropout: --drop-rate."""
    with torch.device("meta" if args.init == "random" else "cpu"):  # meta: its config alone
        model = load_gpt2(args.model, pretrained=args.init == "pretrained")
    if args.init == "random":  # the chapter's model: its context is a window's length
        torch.manual_seed(args.seed)
        model = GPTModel({**model.cfg, "context_length": args.context_length})
        model.source = model.untrained = "random weights"
    for module in model.modules():  # the chapter's dropout, on loaded weights too
        if isinstance(module, torch.nn.Dropout):
            module.p = args.drop_rate
    return model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    training_flags(p, epochs=10, batch_size=2, lr="4e-4", eval_freq=5)
    p.set_defaults(out=Path("pretrained"))
    a = p.add_argument
    a("--data", required=True, help="the text: a UTF-8 file, a folder of .txt files (joined, "
      f"<|endoftext|> between them) or - (standard input); at most {MAX_BYTES:,} bytes")
    a("--context-length", type=number(int, high=1024), default=256,
      help="tokens a window (the chapter's max_length); from scratch, the model's context too")
    a("--stride", type=number(int), help="tokens between windows' starts (default: no overlap)")
    a("--eval-iter", type=number(int), default=5, help="batches of each part behind those losses")
    a("--drop-rate", type=number(float, 0, True, 0.9), default=0.1, help="dropout while training")
    a("--start-context", default="Every effort moves you", help="the prompt of each epoch's sample")
    args = parse(p, argv)
    args.lr, args.stride = args.lr or 4e-4, args.stride or args.context_length
    return args


if __name__ == "__main__":
    run_main(main, interrupted="interrupted: nothing was written; the files in --out are as "
             "they were")
