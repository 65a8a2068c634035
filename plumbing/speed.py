"""The speed layer of train_classifier.py: the same numbers with less work.

Classifier gets its hidden states from SpeedLayer.hidden_states instead of model.hidden_states:
the same numbers where pool() reads them (for --pooling last, each text's last real token; the
other positions, never read, are NaN). What it saves, and why the numbers stay the same:
  - Frozen-prefix cache. The frozen bottom (embeddings and the blocks below the first trainable
    one) has no dropout and takes no gradient: a text's output is the same every time. It runs
    once per text, in length-sorted batches, and is kept (float32, in RAM up to --cache-mb, else
    in a memory-mapped temporary file); every step then runs only the trainable top.
  - The last block at the last token only (--pooling last): pool() reads nothing else, so that
    block computes one query per text (its keys and values still come from every position).
  - Optional torch.compile and fused AdamW. Tests hold losses and weights to the plain path's.
"""
import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from plumbing.cli import InputError, Progress, tracked


class SpeedLayer:
    """model.hidden_states of a classifier build_classifier made, with less work. cache: "auto"
    keeps the frozen bottom's outputs in RAM when they fit cache_mb, else in a temporary file in
    cache_dir (memory-mapped, deleted at exit); "ram", "disk", "off"."""

    def __init__(self, model, pad_id, pooling="last", compile=False, texts=(), cache="auto",
                 cache_mb=2048, cache_dir="."):
        self.model, self.pad_id, self.last_only = model, pad_id, pooling == "last"
        self.n_bottom = frozen_bottom(model)
        n_tokens, C = sum(map(len, texts)), model.cfg["emb_dim"]
        mb = n_tokens * C * 4 / 2**20  # float32
        if cache == "auto":
            cache = "ram" if mb <= cache_mb else "disk"
        why_not = ("no frozen blocks" if self.n_bottom == 0
                   else "dropout is on" if model.cfg["drop_rate"]
                   else "not asked for" if cache == "off" or not texts else None)
        if not why_not and cache == "disk":  # in cache_dir, or the nearest folder above it
            cache_dir = next(p for p in (Path(cache_dir), *Path(cache_dir).absolute().parents)
                             if p.is_dir())  # (a run that fails must not leave a new --out)
            if shutil.disk_usage(cache_dir).free < 1.1 * mb * 2**20:
                why_not = f"{mb:,.0f} MB do not fit the free disk space in {cache_dir}"
        # Every cached text's rows, one after another in one (tokens, C) buffer; index: a text's
        # token ids (as bytes) -> (first row, length). On disk, the OS pages the file in and out.
        self.index, self.store, self.file = {}, None, None
        if why_not:
            self.note = f"frozen-prefix cache off ({why_not})"
        elif cache == "ram":  # the computer's memory, also when the model is on a GPU
            self.store = torch.empty(n_tokens, C)
            self.note = f"frozen-prefix cache in RAM ({self.n_bottom} blocks, {mb:,.0f} MB)"
        else:  # written during the fill, mapped after it
            self.file = tempfile.TemporaryFile(dir=cache_dir, prefix="prefix-cache-")
            self.note = (f"frozen-prefix cache on disk ({self.n_bottom} blocks, {mb:,.0f} MB in a "
                         f"temporary file in {cache_dir}, deleted at exit)")
        self.note += "; last block at the last token only" if self.last_only else ""
        self.top = last_token_block
        if compile:  # the blocks that run every step; nn.Module.compile keeps the weights' names
            for block in model.trf_blocks[self.n_bottom:-1 if self.last_only else None]:
                block.compile()
            self.top = torch.compile(last_token_block)
            self.note += "; compiled"
        if not why_not:
            self.fill(texts, cache_dir)

    def hidden_states(self, input_batch, lengths):  # (B, T) -> (B, T, C), after final_norm
        x = self.bottom(input_batch, lengths)  # (B, T, C)
        for block in self.model.trf_blocks[self.n_bottom:-1]:
            x = block(x)
        if not self.last_only:  # another pooling reads every position: all of them computed
            return self.model.final_norm(self.model.trf_blocks[-1](x))
        rows, last = torch.arange(len(lengths), device=input_batch.device), lengths - 1
        x = self.model.final_norm(self.top(self.model.trf_blocks[-1], x, last))  # (B, C)
        out = x.new_full((*input_batch.shape, x.size(-1)), float("nan"))
        return out.index_put((rows, last), x)  # NaN where pool() never reads

    def bottom(self, input_batch, lengths):  # (B, T) -> (B, T, C), from the cache if on
        ids = input_batch.cpu().numpy()
        keys = [ids[row, :n].tobytes() for row, n in enumerate(lengths.tolist())]
        if self.store is not None and all(key in self.index for key in keys):
            parts = [self.store[start:start + n] for start, n in map(self.index.get, keys)]
            # zeros after each text's end: causal attention never reads them
            x = nn.utils.rnn.pad_sequence(parts, batch_first=True)
            return x.to(input_batch.device, self.model.tok_emb.weight.dtype)
        return self.run_bottom(input_batch)  # no cache, or a text not cached: computed, not kept

    def run_bottom(self, input_batch):  # (B, T) -> (B, T, C)
        x = self.model.embed(input_batch)
        for block in self.model.trf_blocks[:self.n_bottom]:
            x = block(x)
        return x

    @torch.no_grad()
    def fill(self, texts, cache_dir, batch_size=64):
        """Compute every text's bottom output once, before training, with a progress line."""
        texts, done, end = sorted(texts, key=len), 0, 0  # similar lengths together: little padding
        device = self.model.tok_emb.weight.device
        # tokens, the work, not texts or batches: the estimate holds although the batches grow
        with Progress("caching the frozen blocks", sum(map(len, texts)), "tokens") as progress:
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                input_batch = nn.utils.rnn.pad_sequence([torch.tensor(t) for t in batch], True,
                                                        self.pad_id)  # (B, T), padded on the right
                out = self.run_bottom(input_batch.to(device)).float().cpu()  # (B, T, C)
                end = self.keep(batch, out, end, cache_dir)
                done += sum(map(len, batch))
                progress.show(done)
        if self.file is not None:  # copy-on-write: readable, and never written back
            self.file.flush()
            self.store = torch.from_numpy(np.memmap(self.file, np.float32, "c",
                                                    shape=(end, self.model.cfg["emb_dim"])))
            self.file.close()  # the map keeps the (already unlinked) file while it lives


    def keep(self, batch, out, end, cache_dir):
        """Each new text's rows of out (B, T, C), stored from row end on; the new end."""
        for row, t in enumerate(batch):
            key = torch.tensor(t).numpy().tobytes()
            if key in self.index:  # a text that occurs twice is kept once
                continue
            if self.file is None:
                self.store[end:end + len(t)] = out[row, :len(t)]
            else:  # a write, not a memory map: a full disk is an error, not a crash
                try:
                    self.file.write(out[row, :len(t)].numpy().tobytes())
                except OSError as e:
                    raise InputError(f"the frozen-prefix cache filled the disk in {cache_dir} "
                                     f"({e.strerror}); free space, or use --cache ram or --cache "
                                     "off") from None
            self.index[key], end = (end, len(t)), end + len(t)
        return end


def frozen_bottom(model):
    """How many blocks from the bottom take no gradient (0 when the embeddings train). Never
    the last block, which SpeedLayer runs at the last token only."""
    frozen = lambda module: not any(p.requires_grad for p in module.parameters())
    if not (frozen(model.tok_emb) and frozen(model.pos_emb)):
        return 0
    n = 0
    while n < len(model.trf_blocks) - 1 and frozen(model.trf_blocks[n]):
        n += 1
    return n


def last_token_block(block, x, last):
    """block(x)[rows, last] for x (B, T, C) and positions last (B,), computing only those B
    tokens with the block's own layers: each one's query meets the keys up to its position."""
    B, T, C = x.shape
    att, rows = block.att, torch.arange(B, device=x.device)
    h = block.norm1(x)  # (B, T, C)
    heads = lambda t: t.view(B, -1, att.num_heads, att.head_dim).transpose(1, 2)  # (B, nh, *, hs)
    q = heads(att.W_query(h[rows, last].unsqueeze(1)))  # (B, nh, 1, hs)
    k, v = heads(att.W_key(h)), heads(att.W_value(h))  # (B, nh, T, hs)
    mask = (torch.arange(T, device=x.device) <= last[:, None])[:, None, None]  # (B, 1, 1, T)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                       dropout_p=att.dropout.p if block.training else 0.0)
    x = x[rows, last] + block.drop_shortcut(att.out_proj(y.reshape(B, C)))  # (B, C)
    return x + block.drop_shortcut(block.ff(block.norm2(x)))


def accuracy_loader(data_loader, eval_iter, whole_up_to=5000, batch_size=64):
    """What the loop measures after each epoch, batch by batch, with a progress line: a split's
    texts (past 5,000, its first eval_iter batches') in batches of batch_size, shortest first: the
    same accuracy in half the time (2.1x on SMS): a batch reads the trained block's weights once."""
    dataset = data_loader.dataset  # whole: every text, not this process's share (torchrun)
    ids = range(len(dataset)) if len(dataset) <= whole_up_to else (
        i for batch in itertools.islice(data_loader.batch_sampler, eval_iter) for i in batch)
    items = sorted((dataset[i] for i in ids), key=lambda item: len(item[0]))
    return tracked(DataLoader(items, max(batch_size, data_loader.batch_size),
                              collate_fn=data_loader.collate_fn),
                   f"measuring the accuracy on {len(items):,} texts", "batches")


def adamw(params, fused, **settings):
    """torch.optim.AdamW; fused, where this device and torch version have it, does the same
    update in one kernel (5x faster here than the default loop over tensors)."""
    if fused:
        try:
            return torch.optim.AdamW(params, fused=True, **settings)
        except RuntimeError:
            pass
    return torch.optim.AdamW(params, **settings)
