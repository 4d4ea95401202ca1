"""Linear state-space model: a residual stream through layers of

    h_t = A h_{t-1} + B u_t          (h_0 = 0; u = the layer's resid_pre)
    resid_post_t = u_t + C h_t       (the residual stream is the direct D path)

then ``logits = resid W_U + b_U``. The transition is parameterised to be stable:
- "dense": ``A = 0.999 W / max(1, ||W||_2)``, spectral norm below 1;
- "diagonal": real eigenvalues ``0.999 tanh(w)``;
- "complex": complex diagonal ``0.999 exp(-exp(nu) + i theta)`` (no conjugate pairs imposed);
  its state is hooked as ``[Re h, Im h]`` so probes see real numbers.
:meth:`LinearSSM.spectrum` returns each layer's eigenvalues.

Every hook sits in the data flow: what a hook returns is what the next operation reads. ``hook_embed``,
``hook_resid_pre``, ``hook_out`` and ``hook_resid_post`` see all positions at once; ``blocks.{l}.hook_state``
is called inside the recurrence, once per position (:mod:`interp.models.hooks`), so an edit of the state at
position t changes t + 1.. and nothing before t.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from interp.models.configs import SSMConfig
from interp.models.hooks import recurrent_hook

_RADIUS = 0.999


class SSMLayer(nn.Module):
    def __init__(self, cfg: SSMConfig, generator: torch.Generator):
        super().__init__()
        self.kind = cfg.transition
        d, n = cfg.d_model, cfg.d_state
        width = 2 * n if self.kind == "complex" else n  # real features of the state
        if self.kind == "dense":
            self.W = nn.Parameter(0.5 * torch.linalg.qr(torch.randn(n, n, generator=generator))[0])
        elif self.kind == "diagonal":
            self.w = nn.Parameter(torch.atanh(torch.rand(n, generator=generator) * 1.8 - 0.9))
        else:
            # moduli spread in (0.3, 0.95), phases in (-pi, pi)
            r = 0.3 + 0.65 * torch.rand(n, generator=generator)
            self.nu = nn.Parameter(torch.log(-torch.log(r)))
            self.theta = nn.Parameter((torch.rand(n, generator=generator) * 2 - 1) * torch.pi)
        self.B = nn.Parameter(torch.randn(d, width, generator=generator) / d**0.5)
        self.C = nn.Parameter(torch.randn(width, d, generator=generator) / width**0.5)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_state = HookPoint()  # [batch, pos, d_state] (complex: [batch, pos, 2 * d_state])
        self.hook_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def transition(self) -> torch.Tensor:
        """A as a (d_state, d_state) matrix (dense) or the (d_state,) diagonal (real or complex)."""
        if self.kind == "dense":
            norm = torch.linalg.matrix_norm(self.W, ord=2)
            return _RADIUS * self.W / torch.clamp(norm, min=1.0)
        # The radius keeps moduli below 1 even where tanh / exp(-exp) round to exactly 1.
        if self.kind == "diagonal":
            return _RADIUS * torch.tanh(self.w)
        return _RADIUS * torch.exp(torch.complex(-torch.exp(self.nu), self.theta))

    def eigenvalues(self) -> torch.Tensor:
        a = self.transition().detach()
        return (torch.linalg.eigvals(a) if self.kind == "dense" else a).to(torch.complex128)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u = self.hook_resid_pre(u)
        a = self.transition()
        bu = u @ self.B  # [batch, pos, width]
        states = []  # the hooked state of each position so far
        if self.kind == "complex":
            n = a.shape[0]
            drive = torch.complex(bu[..., :n], bu[..., n:])
            h = torch.zeros_like(drive[:, 0])
            for t in range(u.shape[1]):
                h = a * h + drive[:, t]
                s = recurrent_hook(self.hook_state, states, torch.cat([h.real, h.imag], -1))
                h = torch.complex(s[..., :n], s[..., n:])  # exact: the same real and imaginary parts
        else:
            h = torch.zeros_like(bu[:, 0])
            for t in range(u.shape[1]):
                h = recurrent_hook(self.hook_state, states, (h @ a.T if self.kind == "dense" else a * h) + bu[:, t])
        out = self.hook_out(torch.stack(states, 1) @ self.C)
        return self.hook_resid_post(u + out)


class LinearSSM(HookedRootModule):
    family = "ssm"

    def __init__(self, cfg: SSMConfig, n_tokens: int, n_ctx: int, *, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.cfg, self.n_tokens, self.n_ctx = cfg, n_tokens, n_ctx
        self.W_E = nn.Parameter(torch.randn(n_tokens, cfg.d_model, generator=g))
        self.blocks = nn.ModuleList([SSMLayer(cfg, g) for _ in range(cfg.n_layers)])
        self.W_U = nn.Parameter(torch.randn(cfg.d_model, n_tokens, generator=g) / cfg.d_model**0.5)
        self.b_U = nn.Parameter(torch.zeros(n_tokens))
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.setup()

    def spectrum(self) -> list[torch.Tensor]:
        """Per layer, the eigenvalues of A (complex128), sorted by decreasing modulus."""
        out = []
        for block in self.blocks:
            ev = block.eigenvalues()
            out.append(ev[torch.argsort(ev.abs(), descending=True, stable=True)])  # a conjugate pair ties
        return out

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        resid = self.hook_embed(F.embedding(tokens, self.W_E))
        for block in self.blocks:
            resid = block(resid)
        return resid @ self.W_U + self.b_U
