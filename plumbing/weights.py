"""GPT-2's weights checked before use: finite, trained-looking, of a size GPT-2 was released in.
"""
import math

import torch
import torch.nn.functional as F

from model import GPT_CONFIGS, get_config
from plumbing.cli import InputError


# A cheap look at whether weights were trained: GPT-2's released weights predict the tokens of a
# plain English sentence at a loss of a few nats a token; random ones at about ln(50,257) = 10.8.
SENTENCE = "The weather was cold, so she put on her coat and walked to the station."
SENTENCE_IDS = [464, 6193, 373, 4692, 11, 523, 673, 1234, 319, 607, 13209, 290, 6807, 284, 262,
                4429, 13]  # GPT-2's tokens of SENTENCE


@torch.no_grad()
def untrained(model):
    """None, or a sentence on why the model looks untrained: its language-model loss on SENTENCE
    within 2 nats of what random weights give. Never a refusal (a model fine-tuned on other text
    may be odd on English); one forward pass over 17 tokens."""
    V = 50257  # GPT-2's tokens; a padded vocabulary's other rows never come out of the tokenizer
    if model.cfg["vocab_size"] < V or model.cfg["context_length"] < len(SENTENCE_IDS):
        return None
    ids = torch.tensor([SENTENCE_IDS], device=model.tok_emb.weight.device)
    loss = F.cross_entropy(model(ids)[0, :-1, :V].float(), ids[0, 1:]).item()
    if loss < math.log(V) - 2:
        return None
    return (f"looks untrained or damaged: its loss on a plain English sentence is {loss:.1f} nats "
            f"a token, as random weights give (about {math.log(V):.1f}); GPT-2's released "
            "weights give far less (about 3 to 4)")


def infer_config(folder, tensors):
    """cfg for a model.safetensors without config.json: the released size its shapes match."""
    names = {k.removeprefix("transformer."): v.shape for k, v in tensors.items()}
    n_layers = len({k.split(".")[1] for k in names if k.startswith("h.")})
    emb_dim = names["wte.weight"][1] if "wte.weight" in names else None
    for name, sizes in GPT_CONFIGS.items():
        if (sizes["emb_dim"], sizes["n_layers"]) == (emb_dim, n_layers):
            return get_config(name)
    raise InputError(f"{folder} has no config.json and its tensors match no released GPT-2 "
                     "size; add Hugging Face's config.json beside model.safetensors")


def check_finite(model, where, why="the file is damaged or from a diverged training run"):
    """Weights that are NaN or infinite would compute garbage: refuse them. Each tensor's least
    and greatest values tell (NaN makes both NaN), in a fifth of the time a test of every value
    takes (2 s for gpt2-small's on 2 cores)."""
    for name, param in model.named_parameters():
        if param.numel() and not torch.isfinite(torch.stack(torch.aminmax(param.detach()))).all():
            raise InputError(f"{where}: tensor {name} holds NaN or infinite values; {why}")
    return model
