"""Model families trained on HMM data. Each maps tokens (batch, pos) to next-token logits
(batch, pos, d_vocab) and exposes TransformerLens hook points with the same names
(``hook_embed``, ``blocks.{l}.hook_resid_pre``, ``blocks.{l}.hook_resid_post``, and
``blocks.{l}.attn.hook_pattern`` where there is attention)."""

from __future__ import annotations

import torch

from interp.hmm import HMM
from interp.models.belief_net import BeliefNet
from interp.models.blocked_belief_net import BlockedBeliefNet
from interp.models.configs import (
    FAMILIES,
    BeliefNetConfig,
    BlockedBeliefNetConfig,
    FixedAttentionConfig,
    ModelConfig,
    SSMConfig,
    TransformerConfig,
)
from interp.models.fixed_attention import FixedAttentionModel
from interp.models.ssm import LinearSSM
from interp.models.transformer import build_transformer


def build_model(cfg: ModelConfig, n_tokens: int, n_ctx: int, *, seed: int = 0, hmm: HMM | None = None,
                device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A freshly initialised model of ``cfg``'s family (``hmm`` is used by Belief Nets started at the truth)."""
    if isinstance(cfg, TransformerConfig):
        return build_transformer(cfg, n_tokens, n_ctx, seed=seed, device=device, dtype=dtype)
    elif isinstance(cfg, FixedAttentionConfig):
        model = FixedAttentionModel(cfg, n_tokens, n_ctx, seed=seed)
    elif isinstance(cfg, SSMConfig):
        model = LinearSSM(cfg, n_tokens, n_ctx, seed=seed)
    elif isinstance(cfg, BeliefNetConfig):
        model = BeliefNet(cfg, n_tokens, n_ctx, seed=seed, hmm=hmm)
    elif isinstance(cfg, BlockedBeliefNetConfig):
        model = BlockedBeliefNet(cfg, n_tokens, n_ctx, seed=seed, hmm=hmm)
    else:
        raise TypeError(f"not a model config: {cfg!r}")
    return model.to(device=device, dtype=dtype)


def next_token_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """[batch, pos, n_tokens] logits at each position of ``tokens`` (a BOS token is prepended and its
    position dropped for models that read one; their BOS logit is dropped too)."""
    bos = getattr(model, "bos_token", None)
    if bos is None:
        return model(tokens)
    logits = model(torch.cat([torch.full_like(tokens[:, :1], bos), tokens], 1))
    return logits[:, 1:, :bos]


__all__ = [
    "FAMILIES", "BeliefNetConfig", "BlockedBeliefNetConfig", "FixedAttentionConfig", "ModelConfig", "SSMConfig", "TransformerConfig",
    "BeliefNet", "BlockedBeliefNet", "FixedAttentionModel", "LinearSSM", "build_model", "build_transformer", "next_token_logits",
]
