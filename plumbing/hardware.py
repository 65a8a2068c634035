"""Where a run computes and in what: the device, and bfloat16 where the hardware has it natively."""
import contextlib
import re
import sys

import torch
import torch.nn as nn

from plumbing.cli import InputError


def pick_device(name=None):
    """The device to run on: name if given, else CUDA, then Apple's MPS, else the CPU. MPS
    only with torch 2.9 or newer: older versions gave wrong losses there (the book's issue
    #635); --device mps still forces it."""
    if name is None:
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            if tuple(map(int, re.findall(r"\d+", torch.__version__)[:2])) >= (2, 9):
                return "mps"
            print(f"using the CPU: torch {torch.__version__} computes wrong losses on Apple's "
                  "MPS (2.9 fixed it); upgrade torch, or force it with --device mps",
                  file=sys.stderr)
        return "cpu"
    try:
        if torch.device(name).type not in ("cpu", "cuda", "mps"):
            raise RuntimeError("not a device to compute on")
        torch.empty(0, device=name)  # fails for absent hardware
    except (RuntimeError, AssertionError) as e:
        raise InputError(f"device {name!r} is not usable here ({str(e).splitlines()[0]}); "
                         "try cpu") from None
    return name


def use_bf16(dtype, device):
    """(bfloat16 or not, why) for --dtype. auto: bfloat16 where the hardware multiplies it natively
    (a CUDA GPU of compute capability 8+, not a T4 or V100; a CPU with AMX or AVX512-BF16, or BF16
    on ARM); elsewhere float32, as emulated bfloat16 is slower."""
    if dtype != "auto":
        return dtype == "bfloat16", f"--dtype {dtype}"
    if device.startswith("cuda"):
        native = torch.cuda.get_device_capability(device)[0] >= 8
        return native, "the GPU computes it natively" if native else "the GPU would emulate it"
    feature = native_bf16_cpu() if device == "cpu" else None
    return (True, f"the CPU multiplies it natively ({feature})") if feature else (
        False, f"{'the CPU' if device == 'cpu' else device} has no native bfloat16")


def native_bf16_cpu():
    """The CPU feature that multiplies bfloat16 natively, as torch.cpu.get_capabilities() (torch
    2.9 and newer) reports it, or None."""
    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return next((f for f in ("amx_bf16", "avx512_bf16", "sve_bf16", "bf16")
                 if capabilities.get(f)), None)


def autocast(bf16, device):
    """bfloat16 autocast around forward passes, if asked for (older torch refuses autocast on
    some devices even when off). Never around an optimizer step: autocast keeps its bfloat16
    copies of trainable weights while the block lasts, so later steps would use stale ones."""
    if bf16:
        return torch.autocast(torch.device(device).type, torch.bfloat16)
    return contextlib.nullcontext()


class Autocast(nn.Module):
    """net, each forward pass under a new bfloat16 autocast region (--dtype), as PyTorch asks:
    backward() and the optimizer step run outside it. The logits come back in float32 (as
    autocast computes cross_entropy); the weights and the optimizer stay float32."""

    def __init__(self, net, device):
        super().__init__()
        self.net, self.device = net, device

    def forward(self, input_batch):  # (B, T) -> (B, num_classes), float32
        with autocast(True, self.device):
            return self.net(input_batch).float()
