"""Belief Net with blocked emissions: the forward filter of a block-sparse HMM as a network.

The data's :class:`interp.hmm.blocked.BlockedHMM` fixes the structure (G groups of k states, group g emitting
tokens g m .. g m + m - 1, moving to the d groups ``succ[g]``); the weights are the logits of everything else:

    mu (G k,)   = softmax(mu_logits)                  first state
    w (G, d)    = softmax(w_logits, -1)               which successor group
    B (G, d, k, k) = softmax(block_logits, -1)        state within the successor group
    E (G, k, m) = softmax(emit_logits, -1)            token within the group's block

A token names its group, so the belief after any prefix lives on one group: k numbers, and a step costs
O(d k^2) instead of the dense O(S^2). With b_t the posterior over the state that emitted token t (on group g_t):

    b_0 = normalise(mu[g_0] * E[g_0, :, x_0])
    q_t[e] = w[g_t, e] b_t @ B[g_t, e]                  (d, k): mass moving to group succ[g_t, e]
    P(x_{t+1} = succ[g_t, e] m + c) = q_t[e] @ E[succ[g_t, e], :, c]
    b_{t+1} = normalise(q_t[e*] * E[g_{t+1}, :, x_{t+1} - g_{t+1} m])   e*: the move to g_{t+1}

Hooks: ``blocks.0.hook_resid_pre`` is b_t [batch, pos, k] (in the coordinates of group g_t) and
``blocks.0.hook_resid_post`` is q_t [batch, pos, d k] (the next state over (move, state); it sums to 1). They sit in
the recurrence as in :class:`interp.models.belief_net.BeliefNet`: called once per position on the positions so far,
their output at the newest position is what the step continues from (and q_t's is what predicts token t+1).
Each step batches the sequences that sit on the same group into one (rows, k) @ (k, d k) product.
"""

from __future__ import annotations

import torch
from torch import nn
from transformer_lens import HookedRootModule

from interp.hmm.blocked import BlockedHMM
from interp.models.belief_net import BeliefBlock
from interp.models.configs import BlockedBeliefNetConfig
from interp.models.hooks import recurrent_hook

_LOG_ZERO = -1e4  # log(0) stand-in (exp(-1e4) is 0 in float32 and float64): its "truth" is the exact filter


class BlockedBeliefNet(HookedRootModule):
    family = "blocked_belief_net"

    def __init__(self, cfg: BlockedBeliefNetConfig, n_tokens: int, n_ctx: int, *, seed: int = 0,
                 hmm: BlockedHMM | None = None):
        super().__init__()
        if not isinstance(hmm, BlockedHMM):
            raise ValueError("blocked_belief_net needs block-sparse data (process 'blocked'): its structure "
                             "(groups, tokens per group, successor groups) comes from the data's HMM")
        if hmm.n_tokens != n_tokens:
            raise ValueError(f"blocked_belief_net: the data has {hmm.n_tokens} tokens, not {n_tokens}")
        self.cfg, self.n_tokens, self.n_ctx = cfg, n_tokens, n_ctx
        G, k, m, d = hmm.n_groups, hmm.group_size, hmm.tokens_per_group, hmm.succ.shape[1]
        self.register_buffer("succ", hmm.succ.cpu().clone())
        shapes = ((G * k,), (G, d), (G, d, k, k), (G, k, m))
        if cfg.init == "truth":
            truth = (hmm.mu.reshape(-1), hmm.w, hmm.blocks, hmm.emit)
            logs = [torch.log(x.cpu()).clamp_min(_LOG_ZERO) for x in truth]  # float64: exact at the truth
        else:
            g = torch.Generator().manual_seed(seed)
            scale = cfg.init_scale
            logs = [scale * torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes]
        self.mu_logits, self.w_logits, self.block_logits, self.emit_logits = (
            nn.Parameter(x) for x in logs)  # float64 here; build_model casts to the run dtype
        self.blocks = nn.ModuleList([BeliefBlock()])
        self.setup()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(G, k, m, d): groups, states per group, tokens per group, successors per group."""
        G, d, k, _ = self.block_logits.shape
        return G, k, self.emit_logits.shape[-1], d

    def parameters_prob(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu (G, k), w (G, d), blocks (G, d, k, k), emit (G, k, m)) as probabilities."""
        G, k, _, _ = self.shape
        return (torch.softmax(self.mu_logits, -1).reshape(G, k), torch.softmax(self.w_logits, -1),
                torch.softmax(self.block_logits, -1), torch.softmax(self.emit_logits, -1))

    def get_hmm(self) -> BlockedHMM:
        """The learned block-sparse HMM (float64)."""
        mu, w, blocks, emit = (x.detach().to(torch.float64).cpu() for x in self.parameters_prob())
        return BlockedHMM(mu / mu.sum(), self.succ.cpu(), w / w.sum(-1, keepdim=True),
                          blocks / blocks.sum(-1, keepdim=True), emit / emit.sum(-1, keepdim=True),
                          name="blocked_belief_net")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mu, w, B, E = self.parameters_prob()
        G, k, m, d = self.shape
        n, L = tokens.shape
        group, local = tokens // m, tokens % m
        succ = self.succ
        # per group: its d blocks side by side (k, d k), and the emissions of its successors (d, k, m)
        B_cat = B.permute(0, 2, 1, 3).reshape(G, k, d * k)
        E_next = E[succ]  # (G, d, k, m)
        rows = torch.arange(n, device=tokens.device)

        b = mu[group[:, 0]] * E[group[:, 0], :, local[:, 0]]
        b = b / b.sum(-1, keepdim=True)
        block = self.blocks[0]
        pre, post, logits = [], [], []  # pre and post: the hooked values of the positions so far
        for t in range(L):
            b = recurrent_hook(block.hook_resid_pre, pre, b)
            g = group[:, t]
            order = torch.argsort(g, stable=True)
            present, counts = torch.unique_consecutive(g[order], return_counts=True)
            groups = list(zip(present.tolist(), torch.split(order, counts.tolist())))
            q_parts = [(b[rows_g] @ B_cat[gg]).reshape(-1, d, k) * w[gg][:, None] for gg, rows_g in groups]
            inverse = torch.empty_like(order)
            inverse[order] = rows
            q = recurrent_hook(block.hook_resid_post, post, torch.cat(q_parts)[inverse].reshape(n, d * k)).reshape(n, d, k)
            p_parts = [torch.einsum("rdk,dkm->rdm", q[rows_g], E_next[gg]) for gg, rows_g in groups]  # (r, d, m)
            p = torch.cat(p_parts)[inverse]  # (n, d, m): next-token probabilities, token succ[g, e] m + c
            idx = (succ[g][:, :, None] * m + torch.arange(m, device=tokens.device)).reshape(n, d * m)
            step = torch.full((n, self.n_tokens), _LOG_ZERO, dtype=p.dtype, device=p.device)
            logp = torch.log(p.reshape(n, d * m).clamp_min(torch.finfo(p.dtype).tiny))  # clamp first: no 0 * inf
            logits.append(step.scatter(1, idx, logp))
            if t + 1 < L:
                h = group[:, t + 1]
                hit = succ[g] == h[:, None]  # (n, d): the move that reaches the next token's group
                prior = (q * hit[:, :, None]).sum(1)
                b = prior * E[h, :, local[:, t + 1]]
                b = b / b.sum(-1, keepdim=True).clamp_min(torch.finfo(b.dtype).tiny)
        return torch.stack(logits, 1)

