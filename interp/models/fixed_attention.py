"""The minimal model: attention is one learnable, input-independent lower-triangular matrix M.

    resid_pre = W_E[x]                           [batch, pos, d_model]
    attn_out  = M @ (resid_pre W_V) W_O          M: [pos, pos], the same for every input
    resid_post = attn_out (+ resid_pre if skip)
    logits = resid_post W_U + b_U

Hook names follow TransformerLens, so caching and probing treat it like a 1-layer transformer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from interp.models.configs import FixedAttentionConfig


class FixedAttention(nn.Module):
    def __init__(self, cfg: FixedAttentionConfig, n_ctx: int, generator: torch.Generator):
        super().__init__()
        self.cfg, self.n_ctx = cfg, n_ctx
        # softmax: zeros give the uniform average over the prefix; raw: start at that average.
        init = torch.zeros(n_ctx, n_ctx) if cfg.pattern == "softmax" else \
            torch.tril(torch.ones(n_ctx, n_ctx)) / torch.arange(1, n_ctx + 1)[:, None]
        self.M = nn.Parameter(init)
        self.W_V = nn.Parameter(torch.randn(cfg.d_model, cfg.d_head, generator=generator) / cfg.d_model**0.5)
        self.W_O = nn.Parameter(torch.randn(cfg.d_head, cfg.d_model, generator=generator) / cfg.d_head**0.5)
        self.register_buffer("mask", torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool)), persistent=False)
        self.hook_v = HookPoint()  # [batch, pos, d_head]
        self.hook_pattern = HookPoint()  # [batch, head_index=1, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, d_head]

    def pattern(self, n_pos: int | None = None) -> torch.Tensor:
        """[query_pos, key_pos] attention matrix actually applied (masked, and row-softmaxed if so configured)."""
        n = self.n_ctx if n_pos is None else n_pos
        m, mask = self.M[:n, :n], self.mask[:n, :n]
        if self.cfg.pattern == "softmax":
            return torch.softmax(m.masked_fill(~mask, float("-inf")), dim=-1)
        return m * mask

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        b, n, _ = resid.shape
        pattern = self.hook_pattern(self.pattern(n).expand(b, 1, n, n))
        v = self.hook_v(resid @ self.W_V)
        z = self.hook_z(pattern[:, 0] @ v)
        return z @ self.W_O


class FixedAttentionBlock(nn.Module):
    def __init__(self, cfg: FixedAttentionConfig, n_ctx: int, generator: torch.Generator):
        super().__init__()
        self.skip = cfg.skip
        self.attn = FixedAttention(cfg, n_ctx, generator)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        resid = self.hook_resid_pre(resid)
        out = self.hook_attn_out(self.attn(resid))
        return self.hook_resid_post(out + resid if self.skip else out)


class FixedAttentionModel(HookedRootModule):
    """See the module docstring. ``n_tokens`` and ``n_ctx`` come from the data."""

    family = "fixed_attention"

    def __init__(self, cfg: FixedAttentionConfig, n_tokens: int, n_ctx: int, *, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cfg, self.n_tokens, self.n_ctx = cfg, n_tokens, n_ctx
        self.W_E = nn.Parameter(torch.randn(n_tokens, cfg.d_model, generator=g))
        self.blocks = nn.ModuleList([FixedAttentionBlock(cfg, n_ctx, g)])
        self.W_U = nn.Parameter(torch.randn(cfg.d_model, n_tokens, generator=g) / cfg.d_model**0.5)
        self.b_U = nn.Parameter(torch.zeros(n_tokens))
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.setup()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        resid = self.hook_embed(F.embedding(tokens, self.W_E))
        resid = self.blocks[0](resid)
        return resid @ self.W_U + self.b_U
