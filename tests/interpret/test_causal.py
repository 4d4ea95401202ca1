"""The causal check: an exact model that reads beliefs off a linear embedding follows every steer."""

import pytest
import torch
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from interp import hmm as H
from interp.interpret.causal import causal_check


class EmbeddedFilter(HookedRootModule):
    """Residual = eta @ R + c (the exact belief, linearly embedded); logits = log of the HMM's prediction
    decoded from the residual. A model that uses its belief direction exactly as the HMM does."""

    def __init__(self, hmm: H.HMM, R: torch.Tensor, c: torch.Tensor):
        super().__init__()
        self.hmm, self.R, self.c = hmm, R, c
        self.dummy = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.hook_resid_post = HookPoint()
        self.setup()

    def forward(self, tokens):
        resid = self.hook_resid_post(H.beliefs(self.hmm, tokens) @ self.R + self.c)
        eta = (resid - self.c) @ torch.linalg.pinv(self.R)
        return torch.log((eta @ self.hmm.emission_matrix).clamp_min(1e-300))


@pytest.fixture(scope="module")
def setup():
    hmm = H.get_process("mess3")
    g = torch.Generator().manual_seed(0)
    R = torch.randn(3, 7, generator=g, dtype=torch.float64)
    c = torch.randn(7, generator=g, dtype=torch.float64)
    tokens = H.sample(hmm, 200, 6, seed=1)
    beliefs = H.beliefs(hmm, tokens)
    model = EmbeddedFilter(hmm, R, c)
    acts = beliefs @ R + c
    # the exact probe of this embedding: eta = (a - c) pinv(R)
    coef = torch.linalg.pinv(R).T
    intercept = -c @ torch.linalg.pinv(R)
    return hmm, model, tokens, beliefs, acts, coef, intercept


def test_exact_model_follows_every_steer(setup):
    hmm, model, tokens, beliefs, acts, coef, intercept = setup
    out = causal_check(model, tokens, beliefs, acts, coef, intercept, hmm.emission_matrix,
                       hook="hook_resid_post", n_points=300, batch_size=64, generator=torch.Generator().manual_seed(2))
    assert out["n_points"] == 300
    assert out["kl_target_after"] == pytest.approx(0.0, abs=1e-12)
    assert out["change_r2"] == pytest.approx(1.0, abs=1e-10)
    assert out["kl_target_before"] > 1e-4
    assert out["kl_target_random"] > 1e-4  # a random move of the same size does not do it


def test_a_probe_the_model_does_not_use_changes_nothing(setup):
    hmm, model, tokens, beliefs, acts, coef, intercept = setup
    # a probe whose directions the model ignores: the null space of the embedding's decoder
    null = torch.linalg.svd(setup[1].R, full_matrices=True).Vh[3:]  # [4, 7], orthogonal to R's rows
    fake_coef = null[:3]  # reads coordinates the model never decodes
    out = causal_check(model, tokens, beliefs, acts, fake_coef, torch.zeros(3, dtype=torch.float64),
                       hmm.emission_matrix, hook="hook_resid_post", n_points=200,
                       generator=torch.Generator().manual_seed(3))
    assert out["kl_target_after"] == pytest.approx(out["kl_target_before"], rel=1e-9)
