"""Training-speed benchmark: the TransformerLens model against its plain-torch twin, and tokens/s
per model family, in one process on the same batches.

Each measurement is the median over several timed blocks of steps after a warm-up, so a noisy
machine moves it less than a mean would.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from interp.bench.plain_transformer import PlainTransformer
from interp.hmm import get_process
from interp.hmm.sampling import sample
from interp.models import (
    BeliefNetConfig,
    FixedAttentionConfig,
    SSMConfig,
    TransformerConfig,
    build_model,
)
from interp.training.trainer import next_token_loss

TL_OVERHEAD_TARGET = 1.3


def step_seconds(model: torch.nn.Module, batches: list[torch.Tensor], *, warmup: int = 5, blocks: int = 5,
                 sync: Callable[[], None] = lambda: None) -> float:
    """Median seconds per AdamW training step of ``model`` over the given batches."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(tokens):
        loss = next_token_loss(model(tokens), tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:warmup]:
        step(b)
    per = max(len(batches) // blocks, 1)
    times = []
    for i in range(blocks):
        sync()
        t0 = time.perf_counter()
        for b in batches[i * per:(i + 1) * per]:
            step(b)
        sync()
        times.append((time.perf_counter() - t0) / per)
    return statistics.median(times)


def run_train_bench(quick: bool = False, device: str = "cpu",
                    progress: Callable[[str], None] | None = None) -> list[dict]:
    """Rows: TransformerLens vs plain-torch step time (1 and 4 layers), then each family's tokens/s."""
    say = progress or (lambda msg: None)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    hmm = get_process("mess3").to(dev)
    batch, ctx = (128, 10) if quick else (512, 10)
    n_steps = 10 if quick else 60
    batches = [sample(hmm, batch, ctx, seed=i) for i in range(n_steps + 5)]
    rows = []
    for n_layers in (1,) if quick else (1, 4):
        cfg = TransformerConfig(n_layers=n_layers)
        say(f"train step: TransformerLens vs plain torch, {n_layers} layer(s)")
        tl = build_model(cfg, hmm.n_tokens, ctx, device=dev)
        twin = PlainTransformer(cfg, hmm.n_tokens, ctx).to(dev)
        twin.load_state_dict(tl.state_dict())
        # Interleave the two so that drift in machine load hits both alike.
        t_tl, t_plain = [], []
        for _ in range(3):
            t_tl.append(step_seconds(tl, batches, sync=sync))
            t_plain.append(step_seconds(twin, batches, sync=sync))
        t_tl, t_plain = min(t_tl), min(t_plain)
        ratio = t_tl / t_plain
        rows.append({
            "name": f"train step, attn-only {n_layers}L d64, batch {batch}x{ctx}",
            "ours": f"{t_tl * 1e3:.2f} ms (TransformerLens)", "peer": f"{t_plain * 1e3:.2f} ms (plain torch)",
            "ratio": f"{ratio:.2f}x", "target": f"<= {TL_OVERHEAD_TARGET}x",
            "ok": ratio <= TL_OVERHEAD_TARGET,
        })
    families = [("transformer 1L", TransformerConfig()), ("fixed_attention", FixedAttentionConfig()),
                ("ssm diagonal", SSMConfig()), ("ssm complex", SSMConfig(transition="complex")),
                ("belief_net S=3", BeliefNetConfig())]
    for name, cfg in families:
        say(f"train step: {name}")
        model = build_model(cfg, hmm.n_tokens, ctx, device=dev, hmm=hmm)
        sec = step_seconds(model, batches, sync=sync)
        rows.append({"name": f"train tokens/s, {name}", "ours": f"{batch * ctx / sec / 1e3:.0f} k tokens/s",
                     "peer": f"{sec * 1e3:.2f} ms/step", "ratio": "", "target": "", "ok": None})
    return rows
