"""Block-sparse HMMs: states in groups of k, each group emitting its own block of tokens.

G groups of k states (S = G k); group g emits only tokens ``g m .. g m + m - 1`` (V = G m), so a token names
the group of the state that emitted it and the belief after any prefix lives on one group: k numbers. A group
moves to d successor groups ``succ[g, e]`` with probability ``w[g, e]``, and within that move by the k x k
stochastic block ``blocks[g, e]``. In emission form (z_1 ~ mu, x_t ~ C[z_t], z_{t+1} ~ A[z_t]):

    A[(g, i), (succ[g, e], j)] = w[g, e] blocks[g, e, i, j],   C[(g, i), g m + c] = emit[g, i, c].

Storage is G d k^2 + G k m + G k numbers instead of the dense V S^2; filtering costs O(T k^2) per sequence
(one k x k product per step), so S = 2^14 and beyond fit where the dense (V, S, S) tensor does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from interp.hmm import native
from interp.hmm.core import HMM


@dataclass(frozen=True)
class BlockedFilterResult:
    group: torch.Tensor  # (n, L) long: the group every belief lives on (the group of token t)
    beliefs: torch.Tensor  # (n, L, k) posterior over the state that emitted token t (on its group), given 0..t
    log_normalizers: torch.Tensor  # (n, L) log P(x_t | x_<t); -inf where the sequence is impossible
    products: int  # (rows, k) @ (k, k) products made: n (L - 1) / products rows per block read on average


def _check_rows(t: torch.Tensor, name: str, atol: float = 1e-9) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite entries")
    if (t < 0).any():
        idx = tuple(int(i) for i in (t < 0).nonzero()[0])
        raise ValueError(f"{name} has a negative entry at {idx}")
    err = (t.sum(-1) - 1).abs()
    if (err > atol).any():
        idx = tuple(int(i) for i in (err > atol).nonzero()[0])
        raise ValueError(f"{name} row {idx} sums to {float(t.sum(-1)[idx]):.12g}, not 1")


class BlockedHMM:
    """``BlockedHMM(mu, succ, w, blocks, emit)``; shapes (G, k), (G, d), (G, d), (G, d, k, k), (G, k, m).

    Validated on construction like :class:`interp.hmm.HMM` (finite, non-negative, rows summing to 1 within
    1e-9, successor groups distinct and in range); a violation raises ``ValueError`` naming it."""

    def __init__(self, mu, succ, w, blocks, emit, *, name: str = "blocked"):
        mu, w, blocks, emit = (torch.as_tensor(t, dtype=torch.float64) for t in (mu, w, blocks, emit))
        succ = torch.as_tensor(succ, dtype=torch.long, device=mu.device)
        if mu.ndim != 2 or succ.ndim != 2 or w.shape != succ.shape or emit.ndim != 3:
            raise ValueError(f"need mu (G, k), succ and w (G, d), blocks (G, d, k, k), emit (G, k, m); got "
                             f"{tuple(mu.shape)}, {tuple(succ.shape)}, {tuple(w.shape)}, {tuple(blocks.shape)}, "
                             f"{tuple(emit.shape)}")
        G, k = mu.shape
        d = succ.shape[1]
        if blocks.shape != (G, d, k, k) or emit.shape[:2] != (G, k):
            raise ValueError(f"blocks must be {(G, d, k, k)} and emit {(G, k)} + (m,), got {tuple(blocks.shape)}, "
                             f"{tuple(emit.shape)}")
        if ((succ < 0) | (succ >= G)).any():
            raise ValueError(f"succ must hold group indices in [0, {G})")
        if (succ.sort(1).values.diff(dim=1) == 0).any():
            raise ValueError("succ must list distinct successor groups in every row")
        if not torch.isfinite(mu).all() or (mu < 0).any() or abs(float(mu.sum()) - 1) > 1e-9:
            raise ValueError("mu must be a non-negative (G, k) array summing to 1")
        _check_rows(w, "w")
        _check_rows(blocks, "blocks")
        _check_rows(emit, "emit")
        self.mu, self.succ, self.w, self.blocks, self.emit = mu, succ, w, blocks, emit
        self.name, self.params = name, {}
        self._pass_order: torch.Tensor | None = None

    # ------------------------------------------------------------------ sizes
    @property
    def n_groups(self) -> int:
        return self.mu.shape[0]

    @property
    def group_size(self) -> int:
        return self.mu.shape[1]

    @property
    def tokens_per_group(self) -> int:
        return self.emit.shape[2]

    @property
    def n_states(self) -> int:
        return self.n_groups * self.group_size

    @property
    def n_tokens(self) -> int:
        return self.n_groups * self.tokens_per_group

    def to(self, device) -> "BlockedHMM":
        out = BlockedHMM(self.mu.to(device), self.succ.to(device), self.w.to(device), self.blocks.to(device),
                         self.emit.to(device), name=self.name)
        out.params, out._pass_order = dict(self.params), self._pass_order
        return out

    # ------------------------------------------------------------------ dense view
    def transition_matrix(self) -> torch.Tensor:
        """Dense A (S, S); only for sizes where it fits."""
        G, k, d = self.n_groups, self.group_size, self.succ.shape[1]
        A = torch.zeros(G, k, G, k, dtype=torch.float64, device=self.mu.device)
        for e in range(d):
            A[torch.arange(G), :, self.succ[:, e], :] += self.w[:, e, None, None] * self.blocks[:, e]
        return A.reshape(G * k, G * k)

    def emission_matrix(self) -> torch.Tensor:
        """Dense C (S, V)."""
        G, k, m = self.n_groups, self.group_size, self.tokens_per_group
        C = torch.zeros(G, k, G, m, dtype=torch.float64, device=self.mu.device)
        C[torch.arange(G), :, torch.arange(G), :] = self.emit
        return C.reshape(G * k, G * m)

    def to_dense(self) -> HMM:
        """The same process as a dense :class:`HMM` (exact; for checking on small sizes)."""
        return HMM.from_emission(self.mu.reshape(-1), self.transition_matrix(), self.emission_matrix(),
                                 name=self.name)

    def step(self, p: torch.Tensor) -> torch.Tensor:
        """One step of the state chain: (G, k) distribution -> (G, k), without the dense A."""
        out = torch.zeros_like(p)
        for e in range(self.succ.shape[1]):
            moved = torch.einsum("gi,gij->gj", p, self.blocks[:, e]) * self.w[:, e, None]
            out.index_add_(0, self.succ[:, e], moved)
        return out

    def stationary(self, *, tol: float = 1e-13, max_iter: int = 100_000) -> torch.Tensor:
        """(G, k) stationary distribution by power iteration on the lazy chain (p + pA) / 2, which has the same
        fixed point and converges for periodic chains too."""
        p = torch.full_like(self.mu, 1.0 / self.n_states)
        for _ in range(max_iter):
            new = 0.5 * (p + self.step(p))
            if float((new - p).abs().sum()) < tol:
                return new / new.sum()
            p = new
        raise ValueError(f"the state chain did not reach stationarity within {max_iter} steps (tol {tol})")

    def unigram_loss(self) -> float:
        """Loss (nats) of the best context-free predictor at stationarity: entropy of the token marginal."""
        tokens = torch.einsum("gi,gic->gc", self.stationary(), self.emit)
        return float(torch.special.entr(tokens).sum())

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, length: int, *, seed: int | None = None, generator: torch.Generator | None = None,
               return_states: bool = False):
        """Tokens (n, length) [and states (n, length), as g k + i] by inverse-CDF draws from ``generator``."""
        if n < 1 or length < 1:
            raise ValueError(f"n and length must be >= 1, got {n}, {length}")
        dev = self.mu.device
        if generator is None:
            generator = torch.Generator(device=dev).manual_seed(0 if seed is None else seed)
        k, m = self.group_size, self.tokens_per_group

        def draw(probs: torch.Tensor) -> torch.Tensor:  # (n, K) rows -> (n,) indices
            u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=dev, generator=generator)
            cdf = probs.cumsum(-1)
            return torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1).clamp_max(probs.shape[-1] - 1)

        state = draw(self.mu.reshape(1, -1).expand(n, -1))
        g, i = state // k, state % k
        tokens = torch.empty(n, length, dtype=torch.long, device=dev)
        states = torch.empty(n, length, dtype=torch.long, device=dev)
        for t in range(length):
            tokens[:, t] = g * m + draw(self.emit[g, i])
            states[:, t] = g * k + i
            if t + 1 < length:
                e = draw(self.w[g])
                i = draw(self.blocks[g, e, i])
                g = self.succ[g, e]
        return (tokens, states) if return_states else tokens

    # ------------------------------------------------------------------ filtering
    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(tokens) or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError("tokens must be an integer tensor (n, L)")
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"tokens must be a non-empty (n, L) tensor, got shape {tuple(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= self.n_tokens:
            raise ValueError(f"tokens must lie in [0, {self.n_tokens}), got {int(tokens.min())}..{int(tokens.max())}")
        return tokens.long().to(self.mu.device)

    @torch.no_grad()
    def filter(self, tokens: torch.Tensor, *, return_beliefs: bool = True,
               compiled: bool = True) -> BlockedFilterResult:
        """Exact forward filter: one k x k product per sequence and step, batched over the sequences that make
        the same (group, successor) move, so each product is a (rows, k) @ (k, k) matmul.

        On CPU with the compiled kernels (:mod:`interp.hmm.native`) the batches reach across positions (passes over
        the blocks in :meth:`pass_order`, ``kernels.cpp``); otherwise (GPU, no compiler, ``INTERP_NATIVE=0``, or
        ``compiled=False``) torch batches the sequences at one position a step. Both give the same numbers up to
        rounding."""
        tokens = self._check_tokens(tokens)
        lib = native.library() if compiled and tokens.device.type == "cpu" else None
        n, L = tokens.shape
        G, k, m, d = self.n_groups, self.group_size, self.tokens_per_group, self.succ.shape[1]
        dev = tokens.device
        group = tokens // m
        log_z = torch.empty(n, L, dtype=torch.float64, device=dev)
        beliefs = torch.empty(n, L, k, dtype=torch.float64, device=dev) if return_beliefs else None
        emit_rows = self.emit.permute(0, 2, 1).reshape(G * m, k)  # row g m + c is emit[g, :, c]: indexed by token
        hit = self.succ[group[:, :-1]] == group[:, 1:, None]  # (n, L-1, d): the move to the next group
        pair = group[:, :-1] * d + hit.to(torch.uint8).argmax(2)  # (n, L-1): the block of each step
        weight = self.w.reshape(-1)[pair] * hit.any(2)  # 0 where no move leads there
        if lib is not None:
            products = native.blocked_filter(
                lib, tokens.contiguous(), pair.contiguous(), weight.contiguous(), self.mu.contiguous(),
                group[:, 0].contiguous(), self.blocks.reshape(G * d, k, k).contiguous(), emit_rows.contiguous(),
                self.pass_order(), log_z, beliefs)
            return BlockedFilterResult(group, beliefs, log_z, products)
        # The beliefs stay in the order of the last step's moves (rows[i] is the sequence in row i), so a step
        # permutes them once; the move's weight only enters the normaliser (it cancels in the belief).
        pair, weight = pair.T.contiguous(), weight.T.contiguous()
        tok_t = tokens.T.contiguous()
        tiny = torch.finfo(torch.float64).tiny

        def condition(post: torch.Tensor, rows: torch.Tensor, t: int, w: torch.Tensor | None) -> None:
            post.mul_(emit_rows.index_select(0, tok_t[t].index_select(0, rows)))
            s = post.sum(-1)
            z = s if w is None else s * w
            log_z[rows, t] = torch.log(z)
            post.mul_(torch.where(z > 0, 1 / s.clamp_min(tiny), 0.0)[:, None])
            if beliefs is not None:
                beliefs[rows, t] = post

        rows = torch.arange(n, device=dev)
        alpha = self.mu.index_select(0, group[:, 0])
        condition(alpha, rows, 0, None)
        blocks = self.blocks.reshape(G * d, k, k)
        out = torch.empty_like(alpha)
        products = 0
        for t in range(1, L):
            key = pair[t - 1].index_select(0, rows)
            order = torch.argsort(key)
            counts = torch.bincount(key, minlength=G * d)
            moves = torch.nonzero(counts).squeeze(1)
            products += len(moves)
            src = alpha.index_select(0, order)
            rows = rows.index_select(0, order)
            start = 0
            for p, c in zip(moves.tolist(), counts[moves].tolist()):
                torch.matmul(src[start:start + c], blocks[p], out=out[start:start + c])
                start += c
            condition(out, rows, t, weight[t - 1].index_select(0, rows))
            alpha, out = out, src
        return BlockedFilterResult(group, beliefs, log_z, products)

    def pass_order(self) -> torch.Tensor:
        """(G d,) the order of the compiled filter's passes over the blocks: the groups in an order where most of
        the expected moves between distinct groups (in 256 steps from the start) go forward, each group's blocks in
        move order. A greedy start (the group with the largest outgoing minus incoming weight among those left
        comes next), then single groups moved to wherever the forward weight gains most, until no move gains (at
        most 8 sweeps; 0.01 s at G = 64, 0.8 s at G = 1024, so it is computed once an HMM). A sequence advances
        within a pass for as long as its moves go forward, so the order sets how many rows a block read serves; it
        never changes a number."""
        if self._pass_order is None:
            self._pass_order = self._find_pass_order()
        return self._pass_order.clone()

    def _find_pass_order(self) -> torch.Tensor:
        G, d = self.n_groups, self.succ.shape[1]
        move = torch.zeros(G, G, dtype=torch.float64)
        move.index_put_((torch.arange(G).repeat_interleave(d), self.succ.cpu().reshape(-1)),
                        self.w.cpu().reshape(-1).double(), accumulate=True)
        p, visits = self.mu.cpu().double().sum(1), torch.zeros(G, dtype=torch.float64)
        for _ in range(256):  # a move's weight counts as often as its group is visited in 256 steps
            visits += p
            p = p @ move
        flow = visits[:, None] * move
        flow.fill_diagonal_(0)
        score, left, groups = flow.sum(1) - flow.sum(0), torch.ones(G, dtype=torch.bool), []
        for _ in range(G):
            g = int(torch.where(left, score, -torch.inf).argmax())
            groups.append(g)
            left[g] = False
            score += flow[g] - flow[:, g]  # g's edges no longer count for the groups left
        groups = _insertion_search(flow.numpy(), groups)
        return (torch.tensor(groups)[:, None] * d + torch.arange(d)).reshape(-1)

    def log_likelihood(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n,) log P(tokens); -inf for impossible sequences."""
        return self.filter(tokens, return_beliefs=False).log_normalizers.sum(1)

    def beliefs(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, L, S) dense beliefs in the library's convention (:func:`interp.hmm.beliefs`): the distribution of
        the state after emitting token t, i.e. ``filter(...).beliefs`` moved one step by A. For small S only."""
        res = self.filter(tokens)
        n, L, k = res.beliefs.shape
        out = torch.zeros(n, L, self.n_groups, k, dtype=torch.float64, device=res.beliefs.device)
        for e in range(self.succ.shape[1]):
            g = res.group
            moved = torch.einsum("nti,ntij->ntj", res.beliefs, self.blocks[g, e]) * self.w[g, e][..., None]
            out.scatter_add_(2, self.succ[g, e][..., None, None].expand(n, L, 1, k), moved[:, :, None, :])
        return out.reshape(n, L, self.n_states)


def _insertion_search(flow: np.ndarray, order: list[int], sweeps: int = 8) -> list[int]:
    """A local optimum of the forward weight sum(flow[a, b] for a before b): each node in turn moves to the slot
    where it gains most, while some move gains."""
    tol = 1e-12 * float(flow.sum())
    for _ in range(sweeps):
        moved = False
        for x in list(order):
            i = order.index(x)
            rest = order[:i] + order[i + 1:]
            # x in slot j: after rest[:j] (their moves into x go forward), before rest[j:] (x's moves to them do)
            score = (np.concatenate(([0.0], np.cumsum(flow[rest, x])))
                     + np.concatenate((np.cumsum(flow[x, rest][::-1])[::-1], [0.0])))
            j = int(np.argmax(score))
            if score[j] > score[i] + tol:
                order, moved = rest[:j] + [x] + rest[j:], True
        if not moved:
            break
    return order


def random_blocked(n_groups: int = 64, group_size: int = 256, tokens_per_group: int = 4, successors: int = 4,
                   seed: int = 0, self_weight: float = 0.5, alpha: float = 1.0) -> BlockedHMM:
    """A random block-sparse HMM: group g moves to itself with ``self_weight`` and to ``successors - 1`` other
    groups (drawn without replacement) with Dirichlet weights; dense Dirichlet(alpha) k x k blocks and emissions."""
    for key, v in (("n_groups", n_groups), ("group_size", group_size), ("tokens_per_group", tokens_per_group),
                   ("successors", successors)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be a positive integer, got {v!r}")
    if successors > n_groups:
        raise ValueError(f"successors ({successors}) cannot exceed n_groups ({n_groups})")
    if not 0 < self_weight <= 1 or (successors == 1 and self_weight != 1):
        raise ValueError(f"self_weight must be in (0, 1] (1 when successors is 1), got {self_weight}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise ValueError(f"alpha must be a positive number, got {alpha!r}")
    rng = np.random.default_rng(seed)
    G, k, m, d = n_groups, group_size, tokens_per_group, successors

    def dir_rows(*shape):  # Dirichlet(alpha) rows as normalised Gamma draws
        x = rng.gamma(float(alpha), size=shape)
        under = (x == 0).any(-1)  # small alpha: draws below the float64 range, a row of them all zero
        if under.any():  # those rows again in log space: Gamma(a) = Gamma(a + 1) U^(1 / a)
            size = (int(under.sum()), shape[-1])
            logs = np.log(rng.gamma(float(alpha) + 1, size=size)) + np.log(rng.uniform(size=size)) / alpha
            x[under] = np.exp(logs - logs.max(-1, keepdims=True))
        x = torch.from_numpy(x)
        return x / x.sum(-1, keepdim=True)

    others = torch.from_numpy(np.stack([np.concatenate([[g], (g + 1 + rng.permutation(G - 1)[:d - 1]) % G])
                                        for g in range(G)]))
    w = torch.cat([torch.full((G, 1), float(self_weight), dtype=torch.float64),
                   (1 - self_weight) * dir_rows(G, d - 1)], 1) if d > 1 else torch.ones(G, 1, dtype=torch.float64)
    mu = dir_rows(G * k).reshape(G, k)
    return BlockedHMM(mu, others, w, dir_rows(G, d, k, k), dir_rows(G, k, m), name="blocked")
