"""GPT-2 in one file: the model from the text, exact enough to run OpenAI's released weights.

Read top to bottom: configs -> LayerNorm -> attention -> feed-forward -> block -> GPTModel.
Only torch is imported; load_gpt2.py puts pretrained weights into this model (and
plumbing/formats.py checks configs read from files before one is built).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# The four released sizes. Every size shares vocab_size, context_length and the bias choice.
BASE_CONFIG = {"vocab_size": 50257, "context_length": 1024, "drop_rate": 0.0, "qkv_bias": True}
GPT_CONFIGS = {
    "gpt2-small (124M)": {"emb_dim": 768, "n_layers": 12, "n_heads": 12},
    "gpt2-medium (355M)": {"emb_dim": 1024, "n_layers": 24, "n_heads": 16},
    "gpt2-large (774M)": {"emb_dim": 1280, "n_layers": 36, "n_heads": 20},
    "gpt2-xl (1558M)": {"emb_dim": 1600, "n_layers": 48, "n_heads": 25},
}
# Short names people type, each mapped to one of the names above.
ALIASES = {
    "gpt2": "gpt2-small (124M)", "gpt2-small": "gpt2-small (124M)", "124M": "gpt2-small (124M)",
    "gpt2-medium": "gpt2-medium (355M)", "355M": "gpt2-medium (355M)",
    "gpt2-large": "gpt2-large (774M)", "774M": "gpt2-large (774M)",
    "gpt2-xl": "gpt2-xl (1558M)", "1558M": "gpt2-xl (1558M)",
    **{name: name for name in GPT_CONFIGS},
}


def model_name(name):
    """Resolve a size name or alias ("gpt2", "124M", "gpt2-medium", ...) to its full name."""
    if name not in ALIASES:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(sorted(ALIASES))}")
    return ALIASES[name]


def get_config(name, **overrides):
    """The full cfg dict for a named size, e.g. get_config("gpt2", drop_rate=0.1)."""
    return {**BASE_CONFIG, **GPT_CONFIGS[model_name(name)], **overrides}


class LayerNorm(nn.Module):
    """Normalise each token's vector to zero mean and unit variance, then scale and shift.
    GPT-2 uses eps 1e-5 and the biased variance, which is what F.layer_norm computes: the
    book's three lines, fused (written out, they make the default run's fill 25% slower)."""

    def __init__(self, emb_dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x):  # (B, T, C)
        # mean = x.mean(dim=-1, keepdim=True); var = x.var(dim=-1, keepdim=True, unbiased=False)
        # return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift
        return F.layer_norm(x, x.shape[-1:], self.scale, self.shift, self.eps)


class MultiHeadAttention(nn.Module):
    """Causal self-attention: each token mixes the values of itself and the tokens before it.
    fused=False computes chapter 3's attention step by step instead of in one fused call."""
    fused = True

    def __init__(self, d_in, d_out, context_length, dropout, num_heads, qkv_bias=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_out // num_heads
        self.context_length = context_length
        self.dropout = nn.Dropout(dropout)  # its rate is applied inside the fused call below
        # Three separate projections, as in the text. GPT-2's checkpoint stores them fused
        # (c_attn); load_gpt2.py splits it.
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)

    def forward(self, x, cache=None):  # (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        # Project, then split the channels into heads: (B, T, C) -> (B, nh, T, hs), hs = C / nh.
        q, k, v = (W(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
                   for W in (self.W_query, self.W_key, self.W_value))
        mask = None  # without a cache: the causal lower triangle (is_causal below)
        if cache is not None:  # KV cache (generation only; skip on a first reading)
            if "k" not in cache:
                # Room for the whole context at once: each step then writes one slot in place
                # instead of copying the ever-longer cache into a new tensor (torch.cat).
                cache["k"] = k.new_empty(B, self.num_heads, self.context_length, self.head_dim)
                cache["v"] = torch.empty_like(cache["k"])
            start, end = cache["len"], cache["len"] + T
            cache["k"][:, :, start:end], cache["v"][:, :, start:end], cache["len"] = k, v, end
            k, v = cache["k"][:, :, :end], cache["v"][:, :, :end]  # (B, nh, S, hs), S = end
            # The T new tokens see every cached key and the new ones up to their own position.
            mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(start)  # (T, S)
        if self.fused:  # chapter 3's attention below, in one call: the same numbers, less memory
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                               dropout_p=self.dropout.p if self.training else 0.0)
        else:
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril() if mask is None \
                else mask  # causal: no later token
            attn_scores = (q @ k.transpose(2, 3)).masked_fill(~mask, -torch.inf)  # (B, nh, T, S)
            attn_weights = torch.softmax(attn_scores / self.head_dim**0.5, dim=-1)
            y = self.dropout(attn_weights) @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, C): heads side by side
        return self.out_proj(y)

    def _load_from_state_dict(self, state_dict, prefix, *args):
        # The book keeps the causal mask as a buffer, "mask"; here it is built where it is used,
        # so a state_dict the book's code saved loads without it.
        state_dict.pop(prefix + "mask", None)
        super()._load_from_state_dict(state_dict, prefix, *args)


class FeedForward(nn.Module):
    """Per-token MLP: expand 4x, GELU, project back."""

    def __init__(self, cfg):
        super().__init__()
        # GPT-2 was trained with the tanh approximation of GELU, the book's formula,
        # 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))), fused here; the exact erf
        # form differs by up to 4.7e-4 and would not reproduce the released model's outputs.
        self.layers = nn.Sequential(
            nn.Linear(cfg["emb_dim"], 4 * cfg["emb_dim"]),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * cfg["emb_dim"], cfg["emb_dim"]),
        )

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(norm1(x)), then x + ff(norm2(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.att = MultiHeadAttention(cfg["emb_dim"], cfg["emb_dim"], cfg["context_length"],
                                      cfg["drop_rate"], cfg["n_heads"], cfg["qkv_bias"])
        self.ff = FeedForward(cfg)
        self.norm1 = LayerNorm(cfg["emb_dim"])
        self.norm2 = LayerNorm(cfg["emb_dim"])
        self.drop_shortcut = nn.Dropout(cfg["drop_rate"])

    def forward(self, x, cache=None):  # (B, T, C) -> (B, T, C)
        x = x + self.drop_shortcut(self.att(self.norm1(x), cache))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    """Token + position embeddings -> n_layers blocks -> final LayerNorm -> out_head."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = dict(cfg)
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = LayerNorm(cfg["emb_dim"])
        # Separate from tok_emb (the text's 163M count); the released checkpoint ties them,
        # so load_gpt2.py copies wte into both.
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2's initialisation (N(0, 0.02), zero biases), used when training from scratch.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        # Each residual branch ends in a projection; GPT-2 shrinks those by 1/sqrt(2 * n_layers)
        # so the residual stream does not grow with depth.
        if isinstance(module, TransformerBlock):
            std = 0.02 / math.sqrt(2 * self.cfg["n_layers"])
            for proj in (module.att.out_proj, module.ff.layers[2]):
                nn.init.normal_(proj.weight, mean=0.0, std=std)

    def new_cache(self):
        """An empty key/value cache: one dict per block, filled by the calls that get it."""
        return [{"len": 0} for _ in self.trf_blocks]

    def embed(self, idx, start=0):
        """(B, T) token ids at positions start.. -> (B, T, C) input of the first block."""
        T = idx.size(1)
        if start + T > self.cfg["context_length"]:
            raise ValueError(f"{start + T} tokens do not fit the context length of "
                             f"{self.cfg['context_length']}; truncate the input or slide a window")
        pos = torch.arange(start, start + T, device=idx.device)
        return self.drop_emb(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C) + (T, C)

    def hidden_states(self, idx, cache=None):
        """(B, T) token ids -> (B, T, C) final hidden states, after final_norm.

        With a cache from new_cache(), idx continues the tokens the cache has seen: their
        keys and values are reused and the new ones appended (one prefill, then a token a step).
        """
        start = cache[0]["len"] if cache else 0
        x = self.embed(idx, start)
        for i, block in enumerate(self.trf_blocks):
            x = block(x, None if cache is None else cache[i])
        return self.final_norm(x)

    def forward(self, idx, cache=None):
        """(B, T) token ids -> (B, T, out_head's outputs): logits for the token after each
        position, or with a classifier's head, for each class."""
        return self.out_head(self.hidden_states(idx, cache))
