"""Belief Net: the HMM forward filter as a network whose weights are the logits of (mu, A, C).

    b_0 = softmax(mu_logits)                           belief over the state emitting token 0
    b_{t+1} = normalise(b_t * C[:, x_t]) @ A           belief over the state emitting token t+1
    logits_t = log(b_{t+1} @ C)                        prediction of token t+1

``blocks.0.hook_resid_pre`` is b_t and ``blocks.0.hook_resid_post`` is b_{t+1}, so the caching
and probing code treats the belief like a residual stream. :meth:`BeliefNet.get_hmm` reads the
learned HMM straight off the weights.

The same class is the recovery study's learner: :func:`initial_logits` holds the initialisations both use,
and :meth:`BeliefNet.log_likelihood_gradient` the exact gradient by expected counts (:mod:`interp.hmm.smoothing`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from interp.hmm import HMM, EmissionForm, LogitGradient, log_likelihood_gradient
from interp.hmm import log_likelihood as exact_log_likelihood
from interp.models.configs import BeliefNetConfig, check_belief_net_init
from interp.models.hooks import recurrent_hook

# Probabilities below this become logits of log(1e-13) ~ -30 when starting at known parameters: exact to 1e-13,
# and a zero can still move under Adam (a logit of -1e4 never would).
_PROB_FLOOR = 1e-13


def initial_logits(n_states: int, n_tokens: int, init: str, scale: float = 1.0,
                   generator: torch.Generator | None = None, *, dtype: torch.dtype = torch.float64,
                   spectral: EmissionForm | None = None,
                   truth: EmissionForm | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of (mu (S,), A (S, S), C (S, V)) for one of :data:`BELIEF_NET_INITS`:

    - "random": N(0, scale^2), drawn from ``generator`` in ``dtype`` (mu, then A, then C);
    - "near_uniform": 0 plus N(0, (0.01 scale)^2) noise, drawn the same way;
    - "spectral": the log of ``spectral``, a spectral estimate (probabilities below 1e-6 raised to it);
    - "truth": the log of ``truth``, the data's own parameters (below 1e-13 raised to it), in float64.
    """
    check_belief_net_init(init)
    shapes = ((n_states,), (n_states, n_states), (n_states, n_tokens))
    if init in ("random", "near_uniform"):
        if generator is None:
            raise ValueError(f"init={init!r} needs a torch.Generator")
        size = scale if init == "random" else 0.01 * scale
        return tuple(size * torch.randn(*s, generator=generator, dtype=dtype) for s in shapes)
    given = spectral if init == "spectral" else truth
    if given is None:
        raise ValueError(f"init={init!r} needs the {'spectral estimate' if init == 'spectral' else 'true parameters'}")
    params = (given.mu, given.A, given.C)
    for name, p, s in zip(("mu", "A", "C"), params, shapes):
        if tuple(p.shape) != s:
            raise ValueError(f"init={init!r}: {name} has shape {tuple(p.shape)}, but the Belief Net needs {s} "
                             f"({n_states} states, {n_tokens} tokens)")
    floor = 1e-6 if init == "spectral" else _PROB_FLOOR
    return tuple(torch.log(p.detach().cpu().double().clamp_min(floor)) for p in params)


class BeliefBlock(nn.Module):
    """Hook container for the filter step (named like a transformer block)."""

    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()  # [batch, pos, n_states]: b_t
        self.hook_resid_post = HookPoint()  # [batch, pos, n_states]: b_{t+1}


class BeliefNet(HookedRootModule):
    """The forward filter of (mu, A, C) = softmax of the weights ``mu_logits``, ``A_logits``, ``C_logits``.

    Hooks sit in the recurrence (:mod:`interp.models.hooks`): at each position t, ``blocks.0.hook_resid_pre`` is
    called on b_0..b_t and the step continues from its output at t; then ``blocks.0.hook_resid_post`` on
    b_1..b_{t+1}, whose output at t is both the prediction at t and the next step's belief. A hook that edits the
    belief at position t changes the predictions from t on and nothing before.
    """

    family = "belief_net"

    def __init__(self, cfg: BeliefNetConfig, n_tokens: int, n_ctx: int, *, seed: int = 0, hmm: HMM | None = None,
                 logits: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
        """``cfg.init`` draws the weights (random ones in float32 from ``torch.Generator().manual_seed(seed)``;
        "truth" from ``hmm``) unless ``logits`` gives them (copied)."""
        super().__init__()
        self.cfg, self.n_tokens, self.n_ctx = cfg, n_tokens, n_ctx
        s, v = cfg.n_states, n_tokens
        if logits is not None:
            logs = [x.detach().clone() for x in logits]
        elif cfg.init == "truth":
            if hmm is None:
                raise ValueError("belief_net init='truth' needs the data's HMM")
            logs = initial_logits(s, v, "truth", truth=hmm.to_emission())  # float64: exact
        else:
            logs = initial_logits(s, v, cfg.init, cfg.init_scale, torch.Generator().manual_seed(seed),
                                  dtype=torch.float32)
        shapes = ((s,), (s, s), (s, v))
        if [tuple(x.shape) for x in logs] != list(shapes):
            raise ValueError(f"belief_net logits must have shapes {shapes}, got {[tuple(x.shape) for x in logs]}")
        self.mu_logits, self.A_logits, self.C_logits = (nn.Parameter(x) for x in logs)
        self.blocks = nn.ModuleList([BeliefBlock()])
        self.setup()

    @classmethod
    def from_logits(cls, mu_logits: torch.Tensor, A_logits: torch.Tensor, C_logits: torch.Tensor, *,
                    n_ctx: int = 0) -> "BeliefNet":
        """A Belief Net whose weights are copies of these logits (their dtype and device)."""
        S, V = C_logits.shape
        return cls(BeliefNetConfig(n_states=S), V, n_ctx, logits=(mu_logits, A_logits, C_logits))

    def parameters_prob(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu (S,), A (S, S), C (S, V)) as probabilities."""
        return (torch.softmax(self.mu_logits, -1), torch.softmax(self.A_logits, -1),
                torch.softmax(self.C_logits, -1))

    @torch.no_grad()
    def emission_form(self, dtype: torch.dtype = torch.float64) -> EmissionForm:
        """(mu, A, C) as probabilities, the softmax taken in ``dtype`` (on the weights' device)."""
        return EmissionForm(*(torch.softmax(x.detach().to(dtype), -1)
                              for x in (self.mu_logits, self.A_logits, self.C_logits)))

    def get_hmm(self) -> HMM:
        """The learned HMM (float64) as an ``interp.hmm.HMM`` in emission form."""
        mu, A, C = (x.detach().to(torch.float64).cpu() for x in self.parameters_prob())
        return HMM.from_emission(mu / mu.sum(), A / A.sum(1, keepdim=True), C / C.sum(1, keepdim=True),
                                 name="belief_net")

    def log_likelihood(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch] ``log P(x_0..x_{L-1})`` (first token included) by the exact filter of :mod:`interp.hmm`, in
        float64. Not differentiable: :meth:`log_likelihood_gradient` gives the gradient."""
        return exact_log_likelihood(self.emission_form().to_hmm(), tokens)

    def log_likelihood_gradient(self, tokens: torch.Tensor) -> LogitGradient:
        """[batch] log-likelihoods in the weights' dtype, and the exact gradient of their sum with respect to
        the weights, by expected counts (:func:`interp.hmm.log_likelihood_gradient`)."""
        return log_likelihood_gradient(self.mu_logits, self.A_logits, self.C_logits, tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mu, A, C = self.parameters_prob()
        n, L = tokens.shape
        emit = F.embedding(tokens, C.T)  # [batch, pos, n_states]: P(x_t | state)
        block = self.blocks[0]
        b = mu.expand(n, -1)
        pre, post = [], []  # the hooked beliefs of the positions so far
        for t in range(L):
            b = recurrent_hook(block.hook_resid_pre, pre, b)
            w = b * emit[:, t]
            b = recurrent_hook(block.hook_resid_post, post, (w / w.sum(-1, keepdim=True)) @ A)
        return torch.log(torch.stack(post, 1) @ C)
