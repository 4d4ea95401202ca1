"""Belief Net: the HMM forward filter as a network whose weights are the logits of (mu, A, C).

    b_0 = softmax(mu_logits)                           belief over the state emitting token 0
    b_{t+1} = normalise(b_t * C[:, x_t]) @ A           belief over the state emitting token t+1
    logits_t = log(b_{t+1} @ C)                        prediction of token t+1

``blocks.0.hook_resid_pre`` is b_t and ``blocks.0.hook_resid_post`` is b_{t+1}, so the caching
and probing code treats the belief like a residual stream. :meth:`BeliefNet.get_hmm` reads the
learned HMM straight off the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from interp.hmm import HMM
from interp.models.configs import BeliefNetConfig

# log(0) stand-in for exact zeros when starting at a known HMM: exp(-1e4) is 0 in float32 and float64.
_LOG_ZERO = -1e4


class BeliefBlock(nn.Module):
    """Hook container for the filter step (named like a transformer block)."""

    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()  # [batch, pos, n_states]: b_t
        self.hook_resid_post = HookPoint()  # [batch, pos, n_states]: b_{t+1}


class BeliefNet(HookedRootModule):
    family = "belief_net"

    def __init__(self, cfg: BeliefNetConfig, n_tokens: int, n_ctx: int, *, seed: int = 0, hmm: HMM | None = None):
        super().__init__()
        self.cfg, self.n_tokens, self.n_ctx = cfg, n_tokens, n_ctx
        s, v = cfg.n_states, n_tokens
        if cfg.init == "true":
            if hmm is None:
                raise ValueError("belief_net init='true' needs the data's HMM")
            em = hmm.to_emission()
            if em.A.shape[0] != s or em.C.shape[1] != v:
                raise ValueError(
                    f"belief_net init='true': the data's HMM has an emission form with {em.A.shape[0]} states "
                    f"and {em.C.shape[1]} tokens, but the model has n_states={s}, n_tokens={v}"
                )
            logs = [torch.log(m.cpu()).clamp_min(_LOG_ZERO) for m in (em.mu, em.A, em.C)]  # float64: exact
        else:
            g = torch.Generator().manual_seed(seed)
            logs = [cfg.init_scale * torch.randn(*shape, generator=g) for shape in ((s,), (s, s), (s, v))]
        self.mu_logits, self.A_logits, self.C_logits = (nn.Parameter(x) for x in logs)
        self.blocks = nn.ModuleList([BeliefBlock()])
        self.setup()

    def parameters_prob(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu (S,), A (S, S), C (S, V)) as probabilities."""
        return (torch.softmax(self.mu_logits, -1), torch.softmax(self.A_logits, -1),
                torch.softmax(self.C_logits, -1))

    def get_hmm(self) -> HMM:
        """The learned HMM (float64) as an ``interp.hmm.HMM`` in emission form."""
        mu, A, C = (x.detach().to(torch.float64).cpu() for x in self.parameters_prob())
        return HMM.from_emission(mu / mu.sum(), A / A.sum(1, keepdim=True), C / C.sum(1, keepdim=True),
                                 name="belief_net")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mu, A, C = self.parameters_prob()
        n, L = tokens.shape
        emit = F.embedding(tokens, C.T)  # [batch, pos, n_states]: P(x_t | state)
        b = mu.expand(n, -1)
        pre, post = [], []
        for t in range(L):
            pre.append(b)
            w = b * emit[:, t]
            b = (w / w.sum(-1, keepdim=True)) @ A
            post.append(b)
        block = self.blocks[0]
        block.hook_resid_pre(torch.stack(pre, 1))
        beliefs = block.hook_resid_post(torch.stack(post, 1))
        return torch.log(beliefs @ C)
