"""Peak memory of one training step, measured.

What a step holds at its peak: the parameters, their gradients, the optimiser's state and the step's activations.
:func:`step_memory` builds the run's model in a fresh spawned process (so nothing the caller holds counts), resets
the peak counter after the model and a batch exist, runs one step of the trainer's loss and optimiser, and returns
the parameters' bytes plus the rise of the peak above the level before the step. On CUDA the peak is
``torch.cuda.max_memory_allocated``; on CPU it is Linux's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``), so elsewhere the CPU figure is not measured (None).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")


def step_memory(cfg, device: str = "cpu") -> int | None:
    """Peak bytes of one training step of the run ``cfg`` (a RunConfig) on ``device``; None where not measurable."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_measure, cfg.to_dict(), str(device)).result()


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/self/status has no {field}")


def _measure(cfg_dict: dict, device: str) -> int | None:
    from interp.hmm.sampling import sample
    from interp.models import build_model, next_token_logits
    from interp.training.runconfig import run_config_from_dict
    from interp.training.trainer import make_optimizer, next_token_loss

    torch.set_num_threads(1)
    cuda = device.startswith("cuda")
    if not cuda and not _CLEAR_REFS.exists():
        return None
    cfg = run_config_from_dict(cfg_dict)
    t = cfg.train
    hmm = cfg.process.build()
    tokens = sample(hmm, t.batch_size, t.context, seed=cfg.seeds()["data"]).to(device)
    model = build_model(cfg.model, hmm.n_tokens, t.context, seed=cfg.seeds()["model"], hmm=hmm, device=device,
                        dtype=getattr(torch, t.dtype))
    optimizer = make_optimizer(t, model.parameters())
    model.train()
    del hmm
    gc.collect()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        _CLEAR_REFS.write_text("5")  # the peak resident set starts again from the current one
        base = _status_bytes("VmRSS")
    loss = next_token_loss(next_token_logits(model, tokens), tokens)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if cuda:
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _status_bytes("VmHWM")
    return params + peak - base
