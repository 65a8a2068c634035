"""What the training loop's extras need beyond their line in the loop, each off by default so the
default run stays the chapter's: the micro-batches of a step (gradient accumulation), class
weights, appendix D's learning rate, early stopping, a loss that diverged."""
import argparse
import itertools
import math

import torch
import torch.nn.functional as F

from plumbing.cli import InputError, quoted, tracked

WEIGHT_RATIO = 10**6  # the most one class weight may be of another: more trains on one label


def optimizer_steps(train_loader, accumulation_steps, epoch, show):
    """The micro-batches of each optimizer step of an epoch, with a progress line. A step's
    micro-batches left at the epoch's end are dropped, as drop_last drops a short batch."""
    if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler: without it, every
        train_loader.sampler.set_epoch(epoch)      # epoch would repeat one shuffled order
    batches = iter(tracked(train_loader, f"epoch {epoch}", "batches", show=show))
    while len(step := list(itertools.islice(batches, accumulation_steps))) == accumulation_steps:
        yield step


def weights_flag(text):
    """--class-weights, checked as it is read: balanced, or W1,W2,... (one per label, counted
    once the labels are known), each finite and above 0, none over WEIGHT_RATIO times another."""
    if text == "balanced":
        return text
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        weights = []
    if not (weights and all(0 < w < math.inf for w in weights)
            and max(weights) <= WEIGHT_RATIO * min(weights)):
        raise argparse.ArgumentTypeError(
            f"use balanced, or numbers above 0 separated by commas, one per label, none over "
            f"{WEIGHT_RATIO:,} times another; got {quoted(text)}")
    return weights


def class_weights(flag, train, labels, device, log):
    """--class-weights (weights_flag's) as a (num_classes,) tensor, or None. "balanced": n / (k *
    n_class) over the training split. Given weights are scaled the same way, to average 1 over its
    texts: a batch then counts for its size, so accumulated micro-batches are exactly a bigger
    batch."""
    if flag is None:
        return None
    counts = torch.bincount(torch.tensor([y for _, y in train]), minlength=len(labels)).double()
    if flag == "balanced":
        weights = len(train) / (len(labels) * counts.clamp(min=1))
    elif len(flag) != len(labels):
        raise InputError(f"--class-weights gives {len(flag)} weights for the {len(labels)} labels "
                         f"{labels}; give one per label, in that order")
    else:
        weights = torch.tensor(flag, dtype=torch.float64)
    weights = weights / weights.max()  # at most 1 each: the sum below cannot overflow
    weights = weights * len(train) / (weights * counts).sum()
    log(f"class weights: {', '.join(f'{y} {w:.3g}' for y, w in zip(labels, weights.tolist()))} "
        "(the loss trained on is weighted; the losses and accuracies printed are not)")
    return weights.float().to(device)


def appendix_d_lr(step, peak_lr, total_steps, warmup_steps=0, min_lr=None):
    """The learning rate at an optimizer step, as appendix D schedules it: a linear warmup from
    min_lr (or 0) over warmup_steps, then, with min_lr, a cosine decay to it by the last step."""
    floor = min_lr or 0.0
    if step < warmup_steps:
        return floor + step * (peak_lr - floor) / warmup_steps
    if min_lr is None:
        return peak_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class EarlyStopping:
    """--patience: stop once measure(model), the validation loss, has not improved for `patience`
    evaluations in a row, and put back the trainable weights of the best one; at says which epoch
    and step."""

    def __init__(self, patience, measure):
        self.patience, self.measure = patience, measure
        self.best, self.waited, self.kept, self.at = math.inf, 0, {}, None

    def stop(self, model, epoch, step):
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        val_loss = self.measure(model)
        if val_loss < self.best:
            self.best, self.waited, self.at = val_loss, 0, {"epoch": epoch, "step": step}
            self.kept = {name: p.detach().clone() for name, p in params.items()}
            return False
        self.waited += 1
        if self.waited >= self.patience:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(self.kept[name])
            return True
        return False


@torch.no_grad()
def text_mean_loss(model, data_loader, device):
    """The mean of every text's loss over a whole loader: unlike the book's mean of batch means,
    the same number however the texts are cut into batches (what early stopping decides on)."""
    model.eval()
    total, n = 0.0, 0
    for input_batch, target_batch in data_loader:
        logits = model(input_batch.to(device)).float()  # (B, num_classes)
        total += F.cross_entropy(logits, target_batch.to(device), reduction="sum").item()
        n += len(target_batch)
    model.train()
    return total / n


# Why a loss is not finite before any update, in train_classifier.py: the speed layer's read.
FIRST_STEP = ("if you changed what pool() reads, run with --no-fast (the speed layer computes "
              "only the positions pool() reads); else training diverged: try a smaller --lr")


def stop_if_diverged(loss, step, at_step_0=FIRST_STEP):
    """A loss that is NaN or infinite ends the run in one line: at step 0, before any update,
    what at_step_0 says (the script's likeliest cause); later, a learning rate too large."""
    if not math.isfinite(loss.item()):
        raise InputError(f"the loss became {loss.item()} at step {step}: " + (
            at_step_0 if step == 0 else "training diverged; try a smaller --lr"))
