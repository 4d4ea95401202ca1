"""Transformer, built natively by TransformerLens (``TransformerBridge.boot_native``): attention-only, or
standard with an MLP after each attention (``attn_only = false``).

It is a TransformerLens model in full: ``run_with_cache``, ``W_Q``..``W_O``, ``OV``/``QK`` and the
classic hook names (``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_pattern``, ``blocks.{l}.hook_attn_out``,
``blocks.{l}.hook_resid_post``; with MLPs ``blocks.{l}.hook_resid_mid`` and ``blocks.{l}.hook_mlp_out``; with
normalisation ``blocks.{l}.ln1.hook_normalized``, ``ln2`` and ``ln_final``).
"""

from __future__ import annotations

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources.native.model import NativeBlock

from interp.models.configs import TransformerConfig


def transformer_lens_config(cfg: TransformerConfig, n_tokens: int, n_ctx: int, *, seed: int = 0) -> dict:
    """The TransformerBridgeConfig fields for ``cfg`` on data with ``n_tokens`` and context ``n_ctx``."""
    fields = dict(
        n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_model=cfg.d_model, d_head=cfg.d_head,
        n_ctx=n_ctx, d_vocab=n_tokens, attn_only=cfg.attn_only, act_fn=cfg.act_fn,
        normalization_type=None if cfg.normalization == "none" else cfg.normalization,
        positional_embedding_type=cfg.positional, seed=seed,
    )
    if not cfg.attn_only:
        fields["d_mlp"] = cfg.mlp_width
    return fields


def build_transformer(cfg: TransformerConfig, n_tokens: int, n_ctx: int, *, seed: int = 0,
                      device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> TransformerBridge:
    """With ``cfg.bos`` the vocabulary is ``n_tokens + 1`` (BOS = ``n_tokens``) and the context ``n_ctx + 1``;
    ``model.bos_token`` says so (None otherwise), and :func:`interp.models.next_token_logits` prepends it."""
    extra = 1 if cfg.bos else 0
    model = TransformerBridge.boot_native(transformer_lens_config(cfg, n_tokens + extra, n_ctx + extra, seed=seed),
                                          device=device, dtype=dtype)
    model.family = "transformer"
    model.bos_token = n_tokens if cfg.bos else None
    if not cfg.skip:
        for block in model.blocks:  # same weights and hooks; only the block's sum changes
            block.original_component.__class__ = _NoSkipBlock
    return model


class _NoSkipBlock(NativeBlock):
    """An attention-only block without the residual skip path: its output (``hook_resid_post``) is the attention
    output (``hook_attn_out``) alone."""

    def forward(self, hidden_states, attention_mask=None, position_ids=None, **kwargs):
        attn_out, _pattern = self.attn(self.ln1(hidden_states), attention_mask=attention_mask,
                                       position_ids=position_ids)
        return (attn_out,)
