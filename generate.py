"""Generate text with GPT-2, printing each piece as soon as it is produced.

    python generate.py "Every effort moves you" --max-new-tokens 50 --temperature 0.8 --top-k 50

The model reads the prompt once (prefill) and keeps every block's keys and values in a cache,
so each new token costs one token's work instead of re-reading the whole text.
"""
import argparse
import codecs
import sys

from plumbing.cli import starting  # first: torch's import can take seconds (cli's is quick)

starting(__name__)  # as a script: Ctrl-C ends it at once, quietly; a slow start is said

import torch

from load_gpt2 import get_tokenizer, load_gpt2
from plumbing.cli import InputError, Progress, run_main
from plumbing.flags import HelpFormatter, model_flags, number, parse
from plumbing.hardware import pick_device


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """(B, V) logits for the next token -> (B, 1) chosen token ids."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # greedy
    logits = logits.double()  # float64: even a temperature of 1e-300 stays above zero
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # The row max is subtracted before dividing: every value is then <= 0, so no temperature,
    # however small, and no logit, however large, overflows.
    probs = torch.softmax((logits - logits.amax(dim=-1, keepdim=True)) / temperature, dim=-1)
    if top_p is not None and top_p < 1.0:
        # Nucleus: keep the most likely tokens until their probability reaches top_p.
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ahead of each
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(before >= top_p, 0.0))
    return torch.multinomial(probs, num_samples=1, generator=generator)  # renormalises itself


def check_settings(max_new_tokens, temperature, top_k, top_p):
    # written so that NaN fails too: every comparison with NaN is False
    if max_new_tokens < 0 or not 0 <= temperature < float("inf") \
            or (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
        raise ValueError("need max_new_tokens >= 0, temperature >= 0 (0 = greedy), top_k >= 1 "
                         f"and 0 < top_p <= 1; got {max_new_tokens}, {temperature}, {top_k}, "
                         f"{top_p}")


@torch.inference_mode()
def stream(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_id=None,
           use_cache=True, generator=None, vocab_size=None):
    """Yield the next (B, 1) token ids one step at a time; see generate()."""
    check_settings(max_new_tokens, temperature, top_k, top_p)
    ctx = model.cfg["context_length"]
    cache, done = None, torch.zeros(idx.size(0), 1, dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        if not use_cache:
            # The textbook's plain loop: the whole model on the whole (windowed) text, every step.
            logits = model(idx[:, -ctx:])[:, -1]  # (B, V)
        else:
            if cache is None or idx.size(1) > ctx:
                # Prefill. Past the context length the window slides: GPT-2's positions are
                # absolute, so cached keys cannot shift with it and the window is read afresh
                # each step (as slow as no cache, but the same tokens).
                cache = model.new_cache()
                h = model.hidden_states(idx[:, -ctx:], cache)
            else:
                h = model.hidden_states(idx[:, -1:], cache)  # only the newest token: (B, 1, C)
            logits = model.out_head(h[:, -1])  # (B, V); earlier positions need no logits
        # A vocabulary padded to a round size (nanoGPT's 50,304) has rows no token uses: never
        # sampled, since the tokenizer could not decode them.
        next_id = sample_next(logits[:, :vocab_size], temperature, top_k, top_p, generator)
        if eos_id is not None:  # rows that have ended keep emitting eos until all have
            next_id = next_id.masked_fill(done, eos_id)
            done |= next_id == eos_id
        idx = torch.cat([idx, next_id], dim=1)
        yield next_id
        if done.all():
            return


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos_id=None,
             use_cache=True, generator=None, vocab_size=None):
    """(B, T) prompt ids -> (B, T + n) ids, n <= max_new_tokens (fewer if every row hit eos_id).
    temperature 0 is greedy; top_k keeps the k likeliest tokens; top_p in (0, 1] the smallest set
    whose probability reaches p. Past context_length only the last context_length tokens are read.
    vocab_size: the tokenizer's, when the model's is padded beyond it. Call model.eval() first,
    or dropout makes every step random."""
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id,
                      use_cache, generator, vocab_size))
    return torch.cat([idx, *new], dim=1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("prompt", nargs="?", default="Every effort moves you",
                   help="text to continue (empty: start from <|endoftext|>)")
    model_flags(p)  # --model, --init, --device, --verbose
    p.add_argument("--max-new-tokens", type=int, default=50, help="how many tokens to add")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="0 = greedy; higher = more random")
    p.add_argument("--top-k", type=int, default=50,
                   help="sample from the k likeliest tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=number(int, 0, inclusive=True, high=2**32 - 1), default=None,
                   help="fix the random choices (default: different each run)")
    p.add_argument("--ignore-eos", action="store_true", help="go on past <|endoftext|>")
    greedy = lambda args, name: args.temperature == 0 and (  # no sampling: no k, p or seed
        name in ("top_k", "top_p") or name == "seed" and args.init == "pretrained")
    args = parse(p, argv, lambda args, name: "with --temperature 0 (greedy)" if greedy(args, name)
                 else None)
    top_k = args.top_k or None
    try:
        check_settings(args.max_new_tokens, args.temperature, top_k, args.top_p)
    except ValueError as e:
        p.error(str(e))

    device = pick_device(args.device)
    tokenizer = get_tokenizer(args.model)
    if args.seed is not None:  # the same text each run (and the same weights with --init random)
        torch.manual_seed(args.seed)
    with Progress(f"loading {args.model}"):
        model = load_gpt2(args.model, pretrained=args.init == "pretrained").to(device)
    print(f"model: {args.model} ({model.source}) on {device}", file=sys.stderr)
    # In a prompt, "<|endoftext|>" is GPT-2's document separator, as in its training data.
    ids = tokenizer.encode(args.prompt, allowed_special={"<|endoftext|>"}) or [tokenizer.eot_token]
    if max(ids) >= model.cfg["vocab_size"]:
        raise InputError(f"the prompt has token ids beyond this model's vocabulary of "
                         f"{model.cfg['vocab_size']}; it was not trained with GPT-2's tokenizer")
    print(args.prompt, end="", flush=True)
    # A character can span several tokens: decode bytes incrementally, never half a character.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    eos_id = None if args.ignore_eos else tokenizer.eot_token
    for token in stream(model, torch.tensor([ids], device=device), args.max_new_tokens,
                        args.temperature, top_k, args.top_p, eos_id, vocab_size=tokenizer.n_vocab):
        if token.item() == eos_id:
            break
        print(text.decode(tokenizer.decode_single_token_bytes(token.item())), end="", flush=True)
    print(text.decode(b"", final=True))


if __name__ == "__main__":
    run_main(main)
