"""Appendix E: LoRA. Instead of updating a frozen weight W, learn a low-rank update A @ B:
train_classifier.build_classifier(model, n, "lora") puts one beside every Linear layer, and
merge_lora folds them into the weights before the classifier is saved.
"""
import math

import torch
import torch.nn as nn


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
    (out, in)), leaving a plain GPTModel with a new head: what classifier.safetensors holds."""
    for name, module in model.named_children():
        if isinstance(module, LinearWithLoRA):
            lora = module.lora
            module.linear.weight += lora.scale * (lora.A @ lora.B).T
            setattr(model, name, module.linear)
        else:
            merge_lora(module)
    return model
