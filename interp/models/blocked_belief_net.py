"""Belief Net with blocked emissions: the forward filter of a block-sparse HMM as a network.

The data's :class:`interp.hmm.blocked.BlockedHMM` fixes the structure (G groups of k states, group g emitting
tokens g m .. g m + m - 1, moving to the d groups ``succ[g]``); the weights are the logits of everything else:

    mu (G k,)   = softmax(mu_logits)                  first state
    w (G, d)    = softmax(w_logits, -1)               which successor group
    B (G, d, k, k) = softmax(block_logits, -1)        state within the successor group
    E (G, k, m) = softmax(emit_logits, -1)            token within the group's block

k is the data's states per group unless ``group_size`` says otherwise (a model smaller or larger than the data:
tokens still name groups, so the groups and successors stay the data's and only the states within a group change).

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

``parameterisation = "neural"`` replaces the logits of mu, B and E (w keeps its own (G, d) logits: a group's move
does not depend on the state) by products of embeddings, state embeddings Z (S, h) and token embeddings X (V, h):
H_out, H_in, H_emit = f_out(Z), f_in(Z), f_emit(Z) with f(z) = LayerNorm(relu(a W2 + b2) + a), a = relu(z W1 + b1),
and with s a start vector (h,):

    mu ∝ exp(H_in s / sqrt(h))
    B[g, e, i, j] ∝ exp(H_out[g, i] . H_in[succ[g, e], j] / sqrt(h))    softmax over j
    E[g, i, c] ∝ exp(H_emit[g, i] . X[g m + c] / sqrt(h))               softmax over c

(1 / sqrt(h) keeps the initial logits of unit scale.) Parameters: S h + V h + h + 3 (2 h^2 + 4 h) + G d. Either way
(mu, w, B, E) are computed once per forward and the one recurrence (``_filter``) runs on them.

``state_dropout = p``: each forward in training mode keeps k' = max(1, floor((1 - p) k + 1/2)) states of every group,
drawn uniformly without replacement by :meth:`BlockedBeliefNet.kept_states` from the model's seed and the count of
training forwards so far (the buffer ``dropout_step``, saved with the weights, so a resumed run draws the same masks).
The filter is then exact for the HMM restricted to the kept states: the softmaxes are taken over kept states only,
i.e. mu renormalised over all kept states, each block row B[g, e, i] restricted to the kept states of group
succ[g, e] and renormalised over them, w and the emission rows E[g, i] unchanged (tokens are not dropped). Each
step then costs O(d k'^2). The hooks hold k'-vectors then (in the kept states' coordinates). ``eval()`` uses every
state.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule

from interp.hmm.blocked import BlockedHMM
from interp.models.belief_net import BeliefBlock
from interp.models.configs import BlockedBeliefNetConfig
from interp.models.hooks import recurrent_hook

_LOG_ZERO = -1e4  # log(0) stand-in (exp(-1e4) is 0 in float32 and float64): its "truth" is the exact filter
_ROLES = ("out", "in", "emit")  # the neural state representations, in the order of the stacked MLP weights


def kept_count(group_size: int, state_dropout: float) -> int:
    """k': the states each group keeps under ``state_dropout`` (rounded half up, at least one)."""
    return max(1, math.floor((1 - state_dropout) * group_size + 0.5))


def parameter_count(cfg: BlockedBeliefNetConfig, hmm: BlockedHMM) -> int:
    """Trained parameters of ``cfg`` on the structure of ``hmm`` (without building the model)."""
    G, m, d = hmm.n_groups, hmm.tokens_per_group, hmm.succ.shape[1]
    k = hmm.group_size if cfg.group_size is None else cfg.group_size
    if cfg.parameterisation == "neural":
        return neural_parameter_count(G * k, hmm.n_tokens, G, d, cfg.hidden)
    return G * k + G * d + G * d * k * k + G * k * m


def neural_parameter_count(n_states: int, n_tokens: int, n_groups: int, successors: int, hidden: int) -> int:
    """Parameters of the neural blocked Belief Net: embeddings, start vector, three residual MLPs, move logits."""
    h = hidden
    return n_states * h + n_tokens * h + h + 3 * (2 * h * h + 4 * h) + n_groups * successors


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
        self.cfg, self.n_tokens, self.n_ctx, self.seed = cfg, n_tokens, n_ctx, seed
        G, m, d = hmm.n_groups, hmm.tokens_per_group, hmm.succ.shape[1]
        k = hmm.group_size if cfg.group_size is None else cfg.group_size
        if cfg.init == "truth" and k != hmm.group_size:
            raise ValueError(f"model.group_size = {k} with init = 'truth' needs the data's group size "
                             f"{hmm.group_size}")
        self._shape = (G, k, m, d)
        self.n_kept = kept_count(k, cfg.state_dropout)
        self.register_buffer("succ", hmm.succ.cpu().clone())
        if cfg.state_dropout > 0:  # only then: scalar checkpoints keep their keys
            self.register_buffer("dropout_step", torch.zeros((), dtype=torch.long))
        shapes = ((G * k,), (G, d), (G, d, k, k), (G, k, m))
        if cfg.parameterisation == "neural":
            g = torch.Generator().manual_seed(seed)
            h, f64 = cfg.hidden, torch.float64
            bound = 1 / math.sqrt(h)  # nn.Linear's default range
            self.w_logits = nn.Parameter(cfg.init_scale * torch.randn(G, d, generator=g, dtype=f64))
            self.state_emb = nn.Parameter(torch.randn(G * k, h, generator=g, dtype=f64))
            self.token_emb = nn.Parameter(torch.randn(n_tokens, h, generator=g, dtype=f64))
            self.start = nn.Parameter(torch.randn(h, generator=g, dtype=f64))
            self.mlp_w1, self.mlp_w2 = (
                nn.Parameter(bound * (2 * torch.rand(len(_ROLES), h, h, generator=g, dtype=f64) - 1)) for _ in "12")
            self.mlp_b1, self.mlp_b2, self.ln_bias = (
                nn.Parameter(torch.zeros(len(_ROLES), h, dtype=f64)) for _ in "123")
            self.ln_weight = nn.Parameter(torch.ones(len(_ROLES), h, dtype=f64))
        elif cfg.init == "truth":
            truth = (hmm.mu.reshape(-1), hmm.w, hmm.blocks, hmm.emit)
            logs = [torch.log(x.cpu()).clamp_min(_LOG_ZERO) for x in truth]  # float64: exact at the truth
        else:
            g = torch.Generator().manual_seed(seed)
            scale = cfg.init_scale
            logs = [scale * torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes]
        if cfg.parameterisation == "scalar":
            self.mu_logits, self.w_logits, self.block_logits, self.emit_logits = (
                nn.Parameter(x) for x in logs)  # float64 here; build_model casts to the run dtype
        self.blocks = nn.ModuleList([BeliefBlock()])
        self.setup()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(G, k, m, d): groups, states per group, tokens per group, successors per group."""
        return self._shape

    def parameters_prob(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu (G, k), w (G, d), blocks (G, d, k, k), emit (G, k, m)) as probabilities."""
        return self.probabilities()

    def kept_states(self, step: int) -> torch.Tensor:
        """(G, k') the states (ascending) each group keeps at training forward ``step``: uniform without
        replacement, from a generator seeded by (model seed, step) alone, so any step's mask can be replayed."""
        G, k, _, _ = self.shape
        seed = int(np.random.SeedSequence([self.seed, step]).generate_state(1)[0])
        u = torch.rand(G, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return u.argsort(1)[:, :self.n_kept].sort(1).values.to(self.succ.device)

    def _representation(self, z: torch.Tensor, role: int) -> torch.Tensor:
        """f_role(z) = LayerNorm(relu(a W2 + b2) + a), a = relu(z W1 + b1): a residual MLP per role."""
        a = torch.relu(z @ self.mlp_w1[role] + self.mlp_b1[role])
        return F.layer_norm(torch.relu(a @ self.mlp_w2[role] + self.mlp_b2[role]) + a, a.shape[-1:],
                            self.ln_weight[role], self.ln_bias[role])

    def probabilities(self, keep: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu (G, k'), w (G, d), blocks (G, d, k', k'), emit (G, k', m)) of the HMM restricted to the states
        ``keep`` (G, k') of each group, every softmax taken over kept states only (all states when None)."""
        G, k, m, d = self.shape
        succ = self.succ
        if self.cfg.parameterisation == "neural":
            h = self.cfg.hidden
            z = self.state_emb.reshape(G, k, h)
            if keep is not None:
                z = z.gather(1, keep[:, :, None].expand(-1, -1, h))  # only kept states' representations
            out, into, emit = (self._representation(z, r) for r in range(len(_ROLES)))
            scale = 1 / math.sqrt(h)
            mu_l = into @ self.start * scale  # (G, k')
            block_l = torch.einsum("gih,gdjh->gdij", out, into[succ]) * scale
            emit_l = torch.einsum("gih,gch->gic", emit, self.token_emb.reshape(G, m, h)) * scale
        else:
            mu_l, block_l, emit_l = self.mu_logits.reshape(G, k), self.block_logits, self.emit_logits
            if keep is not None:
                kk = keep.shape[1]
                mu_l = mu_l.gather(1, keep)
                block_l = block_l.gather(2, keep[:, None, :, None].expand(-1, d, -1, k))  # rows: own kept states
                block_l = block_l.gather(3, keep[succ][:, :, None, :].expand(-1, -1, kk, -1))  # successors' kept
                emit_l = emit_l.gather(1, keep[:, :, None].expand(-1, -1, m))
        kk = mu_l.shape[1]
        return (torch.softmax(mu_l.reshape(-1), -1).reshape(G, kk), torch.softmax(self.w_logits, -1),
                torch.softmax(block_l, -1), torch.softmax(emit_l, -1))

    def get_hmm(self) -> BlockedHMM:
        """The learned block-sparse HMM (float64)."""
        mu, w, blocks, emit = (x.detach().to(torch.float64).cpu() for x in self.parameters_prob())
        return BlockedHMM(mu / mu.sum(), self.succ.cpu(), w / w.sum(-1, keepdim=True),
                          blocks / blocks.sum(-1, keepdim=True), emit / emit.sum(-1, keepdim=True),
                          name="blocked_belief_net")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = None
        if self.training and self.cfg.state_dropout > 0:
            keep = self.kept_states(int(self.dropout_step))
            self.dropout_step += 1
        return self._filter(tokens, *self.probabilities(keep))

    def _filter(self, tokens: torch.Tensor, mu: torch.Tensor, w: torch.Tensor, B: torch.Tensor,
                E: torch.Tensor) -> torch.Tensor:
        """Next-token logits of the blocked HMM (mu, w, B, E) on k = B.shape[-1] states per group."""
        G, k, m, d = B.shape[0], B.shape[-1], E.shape[-1], B.shape[1]
        n, L = tokens.shape
        group, local = tokens // m, tokens % m
        succ = self.succ
        # per group: its d blocks side by side (k, d k), and the emissions of its successors (d, k, m)
        B_cat = B.permute(0, 2, 1, 3).reshape(G, k, d * k)
        E_next = E[succ]  # (G, d, k, m)
        # one view per group: indexing B_cat[g] in the loop would make every use's gradient a full-size zero tensor
        # (G k d k numbers, 100 MB at k = 256); unbind sums each group's gradient in its own slot and stacks once
        B_parts, E_parts, w_parts = B_cat.unbind(0), E_next.unbind(0), w.unbind(0)
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
            q_parts = [(b[rows_g] @ B_parts[gg]).reshape(-1, d, k) * w_parts[gg][:, None] for gg, rows_g in groups]
            inverse = torch.empty_like(order)
            inverse[order] = rows
            q = recurrent_hook(block.hook_resid_post, post, torch.cat(q_parts)[inverse].reshape(n, d * k)).reshape(n, d, k)
            p_parts = [torch.einsum("rdk,dkm->rdm", q[rows_g], E_parts[gg]) for gg, rows_g in groups]  # (r, d, m)
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

