"""The measurements behind the docs' speed numbers, each a side-by-side ratio in one run
(docs/results.md says what each measures and what it gave). DATA: the SMS Spam Collection file.

    python bench.py train --data DATA [--dtype float32 bfloat16]  # the default run, phase by
        # phase, in each dtype; then the textbook recipe (padded to 120, every block every step)
    python bench.py predict --data DATA       # --predict - against one text at a time, padded
    python bench.py scale --data DATA         # IMDB-shaped texts: prefix cache in RAM, disk, off
    python bench.py generate                  # the KV cache against none (and transformers')
    python bench.py formulas                  # model.py's fused calls against the book's formulas
    python bench.py memory                    # peak memory loading a gpt2-xl-shaped checkpoint
    python bench.py serve --data DATA         # serve.py with 1 client, then 8 at once
    python bench.py pretrain --data DATA      # the classifier of a small shape, pretrained or not
"""
import argparse
import http.client
import io
import json
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from plumbing.cli import starting  # first: torch's import can take seconds (cli's is quick)

starting(__name__)  # as a script: Ctrl-C ends it at once, quietly; a slow start is said

import torch
import torch.nn.functional as F

import model as gpt
import pretrain
import serve
import train_classifier
from data import encode, load_dataset, sms_spam_file
from generate import generate
from load_gpt2 import get_tokenizer, load_gpt2
from model import GPTModel, get_config
from plumbing.cli import InputError, line_chunks, run_main
from plumbing.flags import number, parse
from plumbing.hardware import Autocast
from plumbing.labelled_files import read_examples
from plumbing.report import final_record
from plumbing.speed import SpeedLayer


def machine():
    cpu = getattr(torch.cpu, "get_capabilities", dict)().get("cpu_name") or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def textbook_recipe(data, epochs=5, batch_size=8, max_length=120, seed=123):
    """The textbook's chapter-6 training run (train_classifier_simple), reproduced with its
    evaluation schedule: every 50 steps the loss on 5 train and 5 validation batches, after
    each epoch the accuracy on 5 batches of each."""
    tokenizer = get_tokenizer()
    splits, labels = load_dataset(data, seed=seed)
    pad = tokenizer.eot_token

    def tensors(name):  # fixed-length padding: every text becomes max_length tokens
        tokens = encode(tokenizer, [t for _, t in splits[name]], max_length)
        idx = torch.tensor([t + [pad] * (max_length - len(t)) for t in tokens])
        return idx, torch.tensor([labels.index(l) for l, _ in splits[name]])

    train, val = tensors("train"), tensors("validation")
    torch.manual_seed(seed)
    model = train_classifier.build_classifier(GPTModel(get_config("gpt2-small")),
                                              len(labels), "last-1")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5,
                                  weight_decay=0.1)  # the textbook's, not fused

    def loader(split, shuffle):
        order = torch.randperm(len(split[0])) if shuffle else torch.arange(len(split[0]))
        stop = len(order) - len(order) % batch_size if shuffle else len(order)  # drop_last
        for i in range(0, stop, batch_size):
            yield split[0][order[i:i + batch_size]], split[1][order[i:i + batch_size]]

    @torch.no_grad()
    def evaluate(split, n=5):
        model.eval()
        losses, correct, total = [], 0, 0
        for (x, y), _ in zip(loader(split, False), range(n)):
            logits = model(x)[:, -1, :]  # the textbook reads the last position, padding or not
            losses.append(F.cross_entropy(logits, y).item())
            correct, total = correct + (logits.argmax(-1) == y).sum().item(), total + len(y)
        model.train()
        return sum(losses) / len(losses), correct / total

    start, step = time.time(), 0
    for _ in range(epochs):
        model.train()
        for x, y in loader(train, True):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x)[:, -1, :], y)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 50 == 0:
                evaluate(train), evaluate(val)
        evaluate(train), evaluate(val)
    return time.time() - start, step


def bench_train(args):
    print(f"machine: {machine()}")
    runs, tokenizer = {}, get_tokenizer()
    with tempfile.TemporaryDirectory() as folder:
        for dtype in args.dtype:
            out = Path(folder) / dtype
            train_classifier.main(["--init", "random", "--dtype", dtype, "--out", str(out)]
                                  + (["--data", args.data] if args.data else []))
            records = [json.loads(line) for line in (out / "metrics.jsonl").open(encoding="utf-8")]
            splits = {name: [text for _, text in read_examples(out / "splits" / f"{name}.tsv")]
                      for name in ("train", "validation", "test", "unused")}
            net, settings = train_classifier.load_classifier(out)
            net = Autocast(net, "cpu") if dtype == "bfloat16" else net
            runs[dtype] = (records, train_classifier.probabilities(
                net, tokenizer, splits["test"], settings["max_length"]).argmax(dim=-1))
    tokens = {name: sum(map(len, encode(tokenizer, texts, 1024))) for name, texts in splits.items()}
    texts = {name: len(texts) for name, texts in splits.items()}
    for dtype, (records, _) in runs.items():
        final, losses = records[-1], [r for r in records if "val_loss" in r][-1]
        print(f"\n{dtype}: train loss {losses['train_loss']:.3f}, val loss {losses['val_loss']:.3f}"
              f"; accuracy " + ", ".join(f"{n} {final[f'{n}_acc']:.2%}" for n in tokens))
        for phase, seconds, n, flop in phases(final, tokens, texts):
            print(f"  {phase:<16} {seconds:7.1f} s  {n / seconds:9,.0f} tokens/s  "
                  f"{flop / seconds / 1e9:6.1f} GFLOP/s (estimated)")
    if len(runs) == 2:
        (_, a), (_, b) = runs.values()
        print(f"\ntest predictions agree on {(a == b).float().mean():.2%} of {len(a)} texts")
    ours = {dtype: sum(records[-1]["phases_s"].values()) for dtype, (records, _) in runs.items()}
    unused = {dtype: records[-1].get("unused_eval_s", 0.0) for dtype, (records, _) in runs.items()}
    recipe, steps = textbook_recipe(args.data)
    print(f"\ntextbook recipe (training loop only, {steps} steps): {recipe:.1f} s")
    for dtype in runs:
        print(f"{dtype}: the whole run {ours[dtype]:.1f} s, of which {unused[dtype]:.1f} s "
              f"evaluate the unused split; speed-up {recipe / (ours[dtype] - unused[dtype]):.1f}x "
              f"without it (like for like), {recipe / ours[dtype]:.1f}x with it")


def phases(final, tokens, texts, C=768, n_bottom=11, epochs=5):
    """(phase, seconds, tokens, GFLOPs) of a default run: the matmuls' FLOPs counted from their
    shapes. A block costs 24 C^2 a token forward; the trained one, at the last token only, 4 C^2 a
    token (its keys and values) and 20 C^2 a text, and three times that with its backward pass."""
    top = {name: 4 * C * C * tokens[name] + 20 * C * C * texts[name] for name in tokens}
    cached = sum(tokens[n] for n in ("train", "validation", "test"))
    fill = (cached, cached * n_bottom * 24 * C * C)
    train = (epochs * (tokens["train"] + tokens["validation"]),  # steps and the accuracies
             epochs * (3 * top["train"] + top["train"] + top["validation"]))
    report = (cached, sum(top[n] for n in ("train", "validation", "test")))
    unused = (tokens["unused"], tokens["unused"] * (n_bottom * 24 + 4) * C * C)
    seconds = final["phases_s"]
    return [("load", seconds["load"], cached, 0), ("fill", seconds["fill"], *fill),
            ("epochs", seconds["epochs"], *train),
            ("final report", seconds["final report"] - final.get("unused_eval_s", 0), *report),
            ("unused split", final.get("unused_eval_s", 0), *unused)]


def sms_texts(data, n):
    """n SMS messages (the file's, repeated as needed), for the benchmarks."""
    texts = [text for _, text in read_examples(data or sms_spam_file())]
    return [texts[i % len(texts)] for i in range(n)]


def bench_predict(args):
    print(f"machine: {machine()}")
    tokenizer, texts = get_tokenizer(), sms_texts(args.data, 10_000)
    torch.manual_seed(0)
    model = train_classifier.build_classifier(GPTModel(get_config("gpt2-small")), 2).eval()
    eot, labels = tokenizer.eot_token, ["ham", "spam"]
    fast = train_classifier.Classifier(model, eot, fast=SpeedLayer(model, eot))
    batched = {}
    for dtype in args.dtype:  # what --predict - does: chunks of lines, each batched by length
        net, start = Autocast(fast, "cpu") if dtype == "bfloat16" else fast, time.time()
        for chunk in line_chunks(io.BytesIO("\n".join(texts).encode())):
            train_classifier.classify(net, tokenizer, chunk, labels, 1024)
        batched[dtype] = len(texts) / (time.time() - start)
        print(f"--predict - in {dtype} (batched by length, 10,000 texts): "
              f"{batched[dtype]:6.1f} messages/s", flush=True)
    if len(batched) == 2:
        print(f"bfloat16 is {batched['bfloat16'] / batched['float32']:.2f}x float32")
    few, base = texts[:500], batched.get("float32")  # the slow ways, on the first 500 texts
    if base is None:
        return
    start = time.time()
    for text in few:
        train_classifier.classify(fast, tokenizer, [text], labels, 1024)
    alone = len(few) / (time.time() - start)
    start = time.time()
    with torch.no_grad():
        for i in range(0, len(few), 32):  # the chapter: every text padded to 120 tokens
            ids = encode(tokenizer, few[i:i + 32], 120)
            model(torch.tensor([t + [tokenizer.eot_token] * (120 - len(t)) for t in ids]))
    padded = len(few) / (time.time() - start)
    print(f"float32, one text at a time (500 texts): {alone:6.1f} messages/s "
          f"-> batched is {base / alone:.1f}x faster")
    print(f"float32, padded to 120 tokens, batches of 32 (500): {padded:6.1f} messages/s "
          f"-> batched is {base / padded:.1f}x faster")


SCALE_CHILD = """
import json, resource, sys, time, torch
import data, train_classifier as tc
from functools import partial
from load_gpt2 import get_tokenizer
from model import GPTModel, get_config
from plumbing.report import TrainingLog
from plumbing.speed import SpeedLayer, adamw
path, cache = sys.argv[1], sys.argv[2]
tok = get_tokenizer()
splits, labels = data.load_dataset(path, seed=123)
sets = {k: data.encode_examples(tok, v, labels, 1024) for k, v in splits.items()}
torch.manual_seed(123)
model = tc.build_classifier(GPTModel(get_config("gpt2-small")), len(labels))
start = time.time()
texts = [ids for s in sets.values() for ids, _ in s]
net = tc.Classifier(model, tok.eot_token, fast=SpeedLayer(model, tok.eot_token, texts=texts,
                                                          cache=cache, cache_dir=sys.argv[3]))
fill = time.time() - start
collate = partial(data.pad_batch, pad_id=tok.eot_token)
sampler = torch.utils.data.DistributedSampler(sets["train"], 1, 0, seed=123, drop_last=True)
train = torch.utils.data.DataLoader(sets["train"], 8, sampler=sampler, drop_last=True,
                                    collate_fn=collate)
val = torch.utils.data.DataLoader(sets["validation"], 8, collate_fn=collate)
params = [p for p in model.parameters() if p.requires_grad]
log = TrainingLog()
tc.train_classifier_simple(net, train, val, adamw(params, True, lr=5e-5), "cpu", 2, 10**9, 5,
                           log=log)
ends = [r["elapsed_s"] for r in log.history if "train_acc" in r]
print(json.dumps({"tokens": sum(map(len, texts)), "fill_s": fill,
                  "epoch_s": [ends[0], ends[1] - ends[0]],
                  "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def bench_scale(args):
    print(f"machine: {machine()}")
    tokenizer, texts = get_tokenizer(), sms_texts(args.data, 20_000)
    reviews, review = [], []
    for text in texts:  # glue messages into ~270-token "reviews", labelled alternately
        review.append(text)
        if len(tokenizer.encode_ordinary(" ".join(review))) >= 270:
            reviews.append(f"{'ab'[len(reviews) % 2]}\t{' '.join(review)}")
            review = []
    print("texts  tokens  cache  fill_s  epoch1_s  epoch2_s  peak_GB")
    with tempfile.TemporaryDirectory() as folder:
        for n in args.sizes:
            path = Path(folder) / f"reviews{n}.tsv"
            path.write_text("\n".join(reviews[:n]) + "\n", encoding="utf-8")
            for cache in ("ram", "disk", "off"):
                child = [sys.executable, "-c", SCALE_CHILD, str(path), cache, folder]
                r = json.loads(subprocess.run(child, capture_output=True, text=True,
                                              check=True).stdout.splitlines()[-1])
                print(f"{n:5d} {r['tokens']:7,d}  {cache:5s} {r['fill_s']:6.1f} "
                      f"{r['epoch_s'][0]:9.1f} {r['epoch_s'][1]:9.1f} {r['peak_gb']:8.2f}",
                      flush=True)


def timed(fn, repeat=2):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.time()
        out = fn()
        times.append(time.time() - start)
    return min(times), out


def bench_formulas(args):
    """model.py's fused LayerNorm and GELU against the book's formulas written out, on the
    default run's two costs: the prefix fill's forward pass (64 texts of 40 tokens, 12 blocks)
    and generation with the KV cache."""
    print(f"machine: {machine()}")
    torch.manual_seed(0)
    model, fused = GPTModel(get_config("gpt2-small")).eval(), gpt.LayerNorm.forward
    gelus, x = [b.ff.layers[1] for b in model.trf_blocks], torch.randint(0, 50257, (64, 40))

    def book_norm(self, x):  # chapter 4's three lines
        mean, var = x.mean(dim=-1, keepdim=True), x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift

    def book_gelu(x):  # chapter 4's GELU
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    times = {}
    for book in (False, True, False, True):  # alternating: a change of load hits both
        gpt.LayerNorm.forward = book_norm if book else fused
        for block, gelu in zip(model.trf_blocks, gelus):
            block.ff.layers[1] = GELU(book_gelu) if book else gelu
        with torch.no_grad():
            fill = timed(lambda: model.hidden_states(x))[0]
        step = timed(lambda: generate(model, torch.tensor([[6109, 3626]]), 40, temperature=0))[0]
        times.setdefault(book, []).append((fill, step))
    gpt.LayerNorm.forward = fused
    (f_fill, f_gen), (b_fill, b_gen) = (map(min, zip(*times[book])) for book in (False, True))
    print(f"fill-like forward: fused {f_fill:.2f} s, the book's formulas {b_fill:.2f} s "
          f"({b_fill / f_fill:.2f}x); generation: {f_gen:.2f} s against {b_gen:.2f} s "
          f"({b_gen / f_gen:.2f}x)")


class GELU(torch.nn.Module):  # a function as a module, to stand where nn.GELU stands
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def bench_generate(args):
    print(f"machine: {machine()}")
    n, prompt = args.new_tokens, torch.tensor([get_tokenizer().encode("Every effort moves you")])
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        GPT2LMHeadModel = None
        print("transformers not installed: skipping that comparison")
    torch.manual_seed(0)
    if GPT2LMHeadModel:  # same random weights in both: save theirs, load into ours
        hf = GPT2LMHeadModel(GPT2Config()).eval()
        with tempfile.TemporaryDirectory() as folder:
            hf.save_pretrained(folder, safe_serialization=True)
            model = load_gpt2(folder)
    else:
        model = GPTModel(get_config("gpt2-small")).eval()
    greedy = dict(max_new_tokens=n, temperature=0.0)
    t_cache, ids = timed(lambda: generate(model, prompt, use_cache=True, **greedy))
    t_plain, ids_plain = timed(lambda: generate(model, prompt, use_cache=False, **greedy), repeat=1)
    print(f"{n} new tokens, greedy, gpt2-small shape")
    print(f"  KV cache:   {n / t_cache:6.1f} tokens/s")
    print(f"  no cache:   {n / t_plain:6.1f} tokens/s  -> cache is {t_plain / t_cache:.1f}x faster"
          f"{'' if torch.equal(ids, ids_plain) else '  (TOKENS DIFFER)'}")
    if GPT2LMHeadModel:
        with torch.inference_mode():
            t_hf, ids_hf = timed(lambda: hf.generate(
                prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                do_sample=False, use_cache=True, pad_token_id=0))
        print(f"  transformers generate (cache): {n / t_hf:6.1f} tokens/s "
              f"-> ours is {t_hf / t_cache:.2f}x its speed; "
              f"same tokens: {torch.equal(ids, ids_hf)}")


def bench_memory(args):
    cfg = get_config("gpt2-xl")
    C, L, V, T = cfg["emb_dim"], cfg["n_layers"], cfg["vocab_size"], cfg["context_length"]
    shapes = {"wte.weight": [V, C], "wpe.weight": [T, C], "ln_f.weight": [C], "ln_f.bias": [C]}
    for i in range(L):
        for name, shape in {"ln_1.weight": [C], "ln_1.bias": [C],
                            "ln_2.weight": [C], "ln_2.bias": [C],
                            "attn.c_attn.weight": [C, 3 * C], "attn.c_attn.bias": [3 * C],
                            "attn.c_proj.weight": [C, C], "attn.c_proj.bias": [C],
                            "mlp.c_fc.weight": [C, 4 * C], "mlp.c_fc.bias": [4 * C],
                            "mlp.c_proj.weight": [4 * C, C], "mlp.c_proj.bias": [C]}.items():
            shapes[f"h.{i}.{name}"] = shape
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = 4 * shape[0] * (shape[1] if len(shape) > 1 else 1)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    with tempfile.TemporaryDirectory() as folder:
        head = json.dumps(header).encode()
        with open(f"{folder}/model.safetensors", "wb") as f:
            f.write(len(head).to_bytes(8, "little") + head)
            for info in header.values():  # zeros, one tensor at a time
                f.write(bytes(info["data_offsets"][1] - info["data_offsets"][0]))
        print(f"machine: {machine()}; checkpoint: {offset / 1e9:.2f} GB")
        code = ("import resource, time, load_gpt2; t = time.time(); m = load_gpt2.load_gpt2(%r); "
                "print(f'loaded {sum(p.numel() for p in m.parameters()):,} parameters "
                "in {time.time() - t:.1f} s, peak resident memory "
                "{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB')" % folder)
        subprocess.run([sys.executable, "-c", code], check=True)


class Counted(torch.nn.Module):
    """net, counting its forward passes."""

    def __init__(self, net):
        super().__init__()
        self.net, self.passes = net, 0

    def forward(self, x):  # (B, T) token ids
        self.passes += 1
        return self.net(x)


def bench_serve(args):
    print(f"machine: {machine()}")
    tokenizer, texts = get_tokenizer(), sms_texts(args.data, args.requests)
    torch.manual_seed(0)
    model = train_classifier.build_classifier(GPTModel(get_config("gpt2-small")), 2).eval()
    eot = tokenizer.eot_token
    net = Counted(train_classifier.Classifier(model, eot, fast=SpeedLayer(model, eot)))
    settings = {"labels": ["ham", "spam"], "max_length": 1024, "pooling": "last",
                "truncate": "start", "run": {"model": "gpt2-small (random weights)"}}
    server = serve.Server(net, tokenizer, settings, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def client(texts, latencies):  # one connection; a request, its answer, the next request
        connection = http.client.HTTPConnection(*server.server_address[:2])
        for text in texts:
            start = time.perf_counter()
            connection.request("POST", "/classify", json.dumps({"inputs": text}).encode(),
                               {"Content-Type": "application/json"})
            answer = connection.getresponse()
            if answer.status != 200:
                raise InputError(f"the server answered {answer.status}: {answer.read()[:200]}")
            answer.read()
            latencies.append(time.perf_counter() - start)
        connection.close()

    client(texts[:8], [])  # warm-up
    # 1 client and 8 take turns, 4 rounds each: a change in the machine's load hits both alike.
    runs = {n: {"latencies": [], "seconds": 0.0, "passes": 0} for n in (1, 8)}
    for round_texts in (texts[i::4] for i in range(4)):
        for n, run in runs.items():
            threads = [threading.Thread(target=client, args=(round_texts[i::n], run["latencies"]))
                       for i in range(n)]
            start, passes = time.perf_counter(), net.passes
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            run["seconds"] += time.perf_counter() - start
            run["passes"] += net.passes - passes
    server.shutdown()
    server.server_close()
    print(f"{len(texts)} requests of one SMS text each, per number of concurrent clients:")
    for n, run in runs.items():
        percentiles = statistics.quantiles(run["latencies"], n=100)
        run.update(rate=len(run["latencies"]) / run["seconds"], p50=percentiles[49],
                   p99=percentiles[98])
        print(f"  {n} client{'s' if n > 1 else ' '}: {run['rate']:6.1f} requests/s, "
              f"p50 {1000 * run['p50']:6.1f} ms, p99 {1000 * run['p99']:6.1f} ms, "
              f"{len(run['latencies']) / run['passes']:.1f} texts per forward pass")
    print(f"8 clients: {runs[8]['rate'] / runs[1]['rate']:.2f}x the throughput of 1 (goal: >= "
          f"2x); their p99 is {runs[8]['p99'] / runs[1]['p50']:.2f}x the p50 of 1 (goal: < 2x)")


def bench_pretrain(args):
    """A small GPT-2 pretrained on the SMS training and unused splits' texts (never validation's or
    test's), fine-tuned as train_classifier.py does, against the same random weights fine-tuned."""
    print(f"machine: {machine()}")
    data = str(args.data or sms_spam_file())
    splits, _ = load_dataset(data, seed=123)  # train_classifier.py's seed: its splits
    texts = [text for name in ("train", "unused") for _, text in splits[name]]
    layers, width, context = args.shape
    with tempfile.TemporaryDirectory() as folder:  # the shape: its config.json alone
        folder = Path(folder)
        (folder / "config.json").write_text(json.dumps(
            {"n_layer": layers, "n_embd": width, "n_head": max(1, width // 64),
             "n_positions": context, "vocab_size": 50257}), encoding="utf-8")
        (folder / "sms.txt").write_text("<|endoftext|>".join(texts), encoding="utf-8")
        pretrain.main([str(a) for a in ("--data", folder / "sms.txt", "--model", folder, "--init",
                       "random", "--context-length", context, "--epochs", args.pretrain_epochs,
                       "--batch-size", 8, "--eval-freq", 100, "--out", folder / "lm")])
        for name, model in (("random weights", [folder, "--init", "random"]),
                            ("pretrained", [folder / "lm"])):
            train_classifier.main([str(a) for a in ["--data", data, "--model", *model, "--out",
                                                    folder / name, "--trainable", args.trainable]])
        runs = {n: final_record(folder / n) for n in ("lm", "random weights", "pretrained")}
    print(f"\n{layers} layers, {width} wide, context {context}; {args.pretrain_epochs} epoch(s) of "
          f"pretraining: validation perplexity {runs.pop('lm')['validation_perplexity']:.1f}; "
          f"--trainable {args.trainable}\n{'':<16}test accuracy  test macro F1  unused flagged")
    for name, r in runs.items():  # the unused texts are ham: the first row of their matrix
        print(f"{name:<16}{r['test_acc']:12.2%}  {r['test_metrics']['macro_f1']:13.2%}  "
              f"{r['unused_confusion'][0][1] / sum(r['unused_confusion'][0]):13.2%}")


USES = {"data": ("train", "predict", "scale", "serve", "pretrain"), "sizes": ("scale",),  # flag:
        "new_tokens": ("generate",), "dtype": ("train", "predict"), "requests": ("serve",),  # the
        **dict.fromkeys(("shape", "pretrain_epochs", "trainable"), ("pretrain",))}  # benches


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["train", "predict", "scale", "generate", "memory", "serve",
                                    "formulas", "pretrain"])
    p.add_argument("--data", default=None, help="the SMS file (default: download it)")
    p.add_argument("--sizes", type=number(int), nargs="+", default=[24, 48, 96],
                   help="numbers of texts for 'scale'")
    p.add_argument("--new-tokens", type=number(int), default=200,
                   help="tokens to generate for 'generate'")
    p.add_argument("--dtype", nargs="+", choices=["float32", "bfloat16"],
                   default=["float32", "bfloat16"], help="for 'train' and 'predict'")
    p.add_argument("--requests", type=number(int), default=320,
                   help="requests for 'serve', with 1 client and again with 8")
    p.add_argument("--shape", type=number(int), nargs=3, default=[4, 128, 64],
                   metavar=("LAYERS", "WIDTH", "CONTEXT"), help="the model for 'pretrain'")
    p.add_argument("--pretrain-epochs", type=number(int), default=1, help="for 'pretrain'")
    p.add_argument("--trainable", default="last-1", help="what fine-tuning trains, for 'pretrain'")
    args = parse(p, argv, lambda args, name: name in USES and args.what not in USES[name] and
                 f"with bench.py {args.what}" or None)
    if args.data is not None and not Path(args.data).is_file():
        raise InputError(f"--data {args.data}: no such file; pass the SMS Spam Collection file")
    {"train": bench_train, "predict": bench_predict, "scale": bench_scale,
     "generate": bench_generate, "memory": bench_memory, "serve": bench_serve,
     "formulas": bench_formulas, "pretrain": bench_pretrain}[args.what](args)


if __name__ == "__main__":
    run_main(main)
