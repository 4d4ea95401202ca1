"""A plain-torch attention-only transformer with the TransformerLens native model's exact layout.

Its parameters carry the same names and shapes as ``build_transformer(...).state_dict()``, so weights
load across in both directions. It has no hooks: the benchmark uses it to measure what
TransformerLens costs per training step, and the tests use it to check the bridge's forward pass.
Standard (learned) positional embeddings; normalisation "none" or "LN".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from interp.models.configs import TransformerConfig


class _Attention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        inner = cfg.n_heads * cfg.d_head
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.q, self.k, self.v = (nn.Linear(cfg.d_model, inner) for _ in range(3))
        self.o = nn.Linear(inner, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.n_heads, self.d_head).transpose(1, 2) for f in (self.q, self.k, self.v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)
        mask = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        pattern = F.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        return self.o((pattern @ v).transpose(1, 2).reshape(b, n, -1))


class _Block(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=1e-5) if cfg.normalization == "LN" else nn.Identity()
        self.attn = _Attention(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.attn(self.ln1(x))


class PlainTransformer(nn.Module):
    def __init__(self, cfg: TransformerConfig, n_tokens: int, n_ctx: int):
        super().__init__()
        if cfg.positional != "standard":
            raise ValueError("the plain twin supports positional='standard' only")
        self.embed = nn.Embedding(n_tokens, cfg.d_model)
        self.pos_embed = nn.Embedding(n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = nn.LayerNorm(cfg.d_model, eps=1e-5) if cfg.normalization == "LN" else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, n_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos_embed.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))
