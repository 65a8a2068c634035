"""Training in several processes under torchrun: nanoGPT's flags, the process group set up and
taken down, gradients averaged. A plain run is rank 0 of 1."""
import datetime
import os
import sys
import tempfile
import threading
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist

from plumbing.cli import InputError


@contextmanager
def distributed(device, backend=None, timeout_s=1800):
    """nanoGPT's flags (ddp, rank, world_size) and this process's device. torchrun sets RANK,
    LOCAL_RANK, WORLD_SIZE and MASTER_ADDR; a plain run has none and is rank 0 of 1. Sets the
    process group up (within timeout_s, saying what it waits for) and down."""
    if "RANK" not in os.environ:
        yield False, 0, 1, device
        return
    env = {name: os.environ.get(name, "") for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    if not all(value.isdigit() for value in env.values()) or "MASTER_ADDR" not in os.environ:
        raise InputError(f"RANK is set, so this looks like a torchrun process, but {env} and "
                         "MASTER_ADDR are not what torchrun sets; start it with torchrun, or "
                         "unset RANK")
    where = f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '')}"
    # torch's C++ code writes pages of stack frames to file descriptor 2 while the others do
    # not come: until they have met, fd 2 goes to a file, shown only if they do.
    backend = backend or ("nccl" if device.startswith("cuda") else "gloo")
    sys.stderr.flush()
    terminal = os.dup(2)
    waiting = (f"rank {env['RANK']}: waiting for all {env['WORLD_SIZE']} processes to meet at "
               f"{where} (for up to {timeout_s:g} s)\n")
    note = threading.Timer(1, os.write, [terminal, waiting.encode()])
    note.start()
    try:
        with tempfile.TemporaryFile() as kept:
            os.dup2(kept.fileno(), 2)
            try:
                dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
            finally:
                os.dup2(terminal, 2)
            kept.seek(0)
            os.write(2, kept.read())
    except (RuntimeError, ValueError) as e:
        raise InputError(f"the {env['WORLD_SIZE']} torchrun processes did not meet at {where} "
                         f"({' '.join(str(e).split())[:150]}); start them all with the same "
                         "torchrun settings") from None
    finally:
        note.cancel()
        os.close(terminal)
    if device.startswith("cuda"):
        device = f"cuda:{env['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    try:
        yield True, dist.get_rank(), dist.get_world_size(), device
    finally:
        dist.destroy_process_group()


def processes():
    """How many processes train together: torchrun's world size, else 1."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gradient_sync(model, sync):
    """Under torchrun, backward() averages gradients across processes; with gradient
    accumulation only a step's last micro-batch needs to (sync), as in nanoGPT. Around the
    micro-batch's forward pass and backward both: DDP decides in forward() whether to sync."""
    return model.no_sync() if hasattr(model, "no_sync") and not sync else nullcontext()


@contextmanager
def first_on_each_machine(ddp):
    """Under torchrun, local rank 0 runs the block first (downloading what is missing) while the
    machine's other processes wait at the barrier; then they run it from the cached files."""
    first = not ddp or os.environ["LOCAL_RANK"] == "0"
    if not first:
        barrier()
    yield
    if first and ddp:
        barrier()


def barrier():
    try:
        dist.barrier()
    except RuntimeError:  # the process it waits for has stopped, and said why
        raise InputError("another torchrun process stopped (its message says why), so this "
                         "one stops too") from None
