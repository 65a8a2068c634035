"""The command-line flags the scripts share, each checked as it is read; parse's rule that none
is silently ignored; check_fits and check_windows, which stop a run whose flags do not fit its
data and model before it trains."""
import argparse
import math
import os
from pathlib import Path

from plumbing import cli
from plumbing.cli import InputError
from plumbing.operating_point import requested
from plumbing.save import LONGEST_CONTEXT, OWN_FILES, check_out


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help keeps a script's docstring layout and shows every default (in words if None)."""

    def _get_help_string(self, action):
        if action.default in (None, argparse.SUPPRESS) or "(default" in action.help:
            return action.help
        return f"{action.help} (default: %(default)s)"


def number(kind, low=0.0, inclusive=False, high=None):
    """An argparse type: a finite number above low (or from low on, if inclusive), at most
    high (for integers, 10**9 unless given: no count or size here needs more)."""
    high = 10**9 if high is None and kind is int else high
    def parse(text):
        value = kind(text)
        if not (math.isfinite(value) and (value >= low if inclusive else value > low)
                and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(
                f"must be a number {'>=' if inclusive else '>'} {low:g}"
                f"{f' and <= {high}' if high is not None else ''}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


def model_flags(p):
    """The flags of every script that loads GPT-2, on parser p: which model, where it runs."""
    a = p.add_argument
    a("--model", default="gpt2-small", help="size (gpt2, gpt2-medium, 774M, ...), a Hugging Face "
      "repo (ORG/NAME) or a folder (model.safetensors, or the book's gpt2/124M)")
    a("--init", choices=["pretrained", "random"], default="pretrained",
      help="random: untrained weights of that size, no download (for trying offline)")
    a("--device", default=None, help="cpu, cuda, mps (default: the best available)")
    a("--verbose", action="store_true", help="when a file cannot be had, every source tried")


def training_flags(p, epochs, batch_size, lr, eval_freq):
    """The flags of a training run, on parser p: the model, the loop and appendix D's extras, the
    hardware; the defaults that differ between the scripts are given."""
    model_flags(p)
    a = p.add_argument
    a("--epochs", type=number(int, inclusive=True), default=epochs,
      help="passes over the training data")
    a("--batch-size", type=number(int), default=batch_size,
      help="examples a step (a process, torchrun)")
    a("--accumulation-steps", type=number(int), default=1,
      help="micro-batches of --batch-size per optimizer step (gradient accumulation)")
    a("--lr", type=number(float), help=f"AdamW learning rate (default: {lr})")
    a("--weight-decay", type=number(float, inclusive=True), default=0.1, help="AdamW weight decay")
    a("--warmup-steps", type=number(int, inclusive=True), default=0,
      help="appendix D: optimizer steps of linear warmup to --lr (from --min-lr, or 0)")
    a("--min-lr", type=number(float, inclusive=True), default=None,
      help="appendix D: after the warmup, cosine decay from --lr to this floor by the last step")
    a("--clip-grad-norm", type=number(float), default=None,
      help="appendix D: clip the gradients to this norm before each step (the appendix: 1.0)")
    a("--eval-freq", type=number(int), default=eval_freq,
      help="log the losses every N optimizer steps")
    a("--seed", type=number(int, 0, True, 2**32 - 1), default=123,
      help="the split, the shuffle, new weights")
    a("--out", type=Path, default=Path("out"), help="folder for what the run writes")
    a("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
      help="bfloat16 autocast (auto: where the hardware has it natively)")
    a("--compile", action="store_true", help="torch.compile the trained blocks (worth it on GPUs)")
    a("--backend", help="torchrun process-group backend (default: nccl on CUDA, else gloo)")
    a("--dist-timeout", type=number(float, 1, True, 10**6), default=1800,
      help="seconds torchrun processes wait for each other before giving up")


TORCHRUN_FLAGS = ("backend", "dist_timeout")  # every script refuses them outside torchrun


def parse(p, argv=None, unused=lambda args, name: None):
    """The flags of parser p from argv (sys.argv if None), --verbose switched on; none is silently
    ignored: a flag set away from its default where unused(args, name) gives a reason why it
    does nothing ends the run, naming the flag and the reason."""
    args = p.parse_args(argv)
    cli.VERBOSE = getattr(args, "verbose", False)
    for name, value in vars(args).items():
        reason = unused(args, name) or name in TORCHRUN_FLAGS and "RANK" not in os.environ \
            and "outside torchrun"
        if reason and value != p.get_default(name):
            p.error(f"--{name.replace('_', '-')} does nothing {reason}; leave it out")
    return args


def check_fits(args, cfg, vocab_size, sets, labels, max_length, world_size, own=OWN_FILES):
    """Stop before training, not after, when the flags, the data (sets: each split's texts, with
    their labels' ids), the model and --out (where the run writes the files own names) do not
    fit."""
    if max_length > cfg["context_length"]:
        raise InputError(f"--max-length {max_length} exceeds the model's context length "
                         f"{cfg['context_length']}")
    if max_length > LONGEST_CONTEXT:
        raise InputError(f"--max-length {max_length} (by default the model's context length) is "
                         f"over {LONGEST_CONTEXT:,}, the longest text a classifier here may read; "
                         f"give --max-length {LONGEST_CONTEXT} or less")
    n_train = len(sets["train"])
    if n_train < args.batch_size * world_size * args.accumulation_steps:
        raise InputError(f"--batch-size {args.batch_size} x {world_size} process(es) x "
                         f"--accumulation-steps {args.accumulation_steps} is more than the "
                         f"{n_train} texts of the training split; use smaller ones")
    if getattr(args, "unused_texts", None) is not None and not sets.get("unused"):
        raise InputError("--unused-texts does nothing: this data leaves no texts unused (only "
                         "--balance does); leave it out")
    if hasattr(args, "max_fpr"):  # the decision's flags, against the labels
        counts = [sum(y == k for _, y in sets["train"]) for k in range(len(labels))]
        positive = requested(args, labels, counts)["positive"]
        if args.max_fpr is not None and len({y for _, y in sets["validation"]}) < 2:
            raise InputError(f"--max-fpr chooses on the validation split's {positive} and other "
                             "texts; this one lacks one kind; give a larger one")
    if getattr(args, "patience", None) and world_size > 1:
        raise InputError("--patience needs one process: under torchrun only rank 0 evaluates")
    check_run(args, cfg, vocab_size, own)


def check_windows(args, cfg, vocab_size, n_train, n_val, world_size, own):
    """check_fits for pretrain.py: a window fits the model, each part of the text (n_train and
    n_val windows) holds what it needs, and check_run."""
    if args.context_length > cfg["context_length"]:
        raise InputError(f"--context-length {args.context_length} exceeds the model's context "
                         f"length {cfg['context_length']}")
    if n_train < args.batch_size * world_size * args.accumulation_steps or not n_val:
        raise InputError(f"too short a text: {n_train} training window(s) of {args.context_length} "
                         f"tokens, {n_val} for validation, and a step takes --batch-size x "
                         f"--accumulation-steps x {world_size} process(es); give more text, or "
                         "a smaller --context-length or --batch-size")
    check_run(args, cfg, vocab_size, own)


def check_run(args, cfg, vocab_size, own):
    """What every training run checks before it starts: the model's vocabulary holds the
    tokenizer's, --min-lr is below --lr, --out can take the files own names."""
    if cfg["vocab_size"] < vocab_size:
        raise InputError(f"the model's vocabulary of {cfg['vocab_size']} tokens lacks "
                         f"GPT-2's ({vocab_size:,}); use a GPT-2 checkpoint")
    if (args.min_lr or 0) > args.lr:
        raise InputError(f"--min-lr {args.min_lr:g} is above --lr {args.lr:g}: it is the floor")
    check_out(args.out, own)
