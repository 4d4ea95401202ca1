import pytest
import torch
from sklearn.metrics import r2_score

from interp.interpret.metrics import pooled_r2, project_to_simplex, rmse, simplex_distance


def test_pooled_r2_equals_sklearn_variance_weighted():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(200, 3, generator=g, dtype=torch.float64)
    y_hat = y + 0.1 * torch.randn(200, 3, generator=g, dtype=torch.float64)
    w = torch.rand(200, generator=g, dtype=torch.float64)
    ref = r2_score(y.numpy(), y_hat.numpy(), sample_weight=w.numpy(), multioutput="variance_weighted")
    assert pooled_r2(y, y_hat, w) == pytest.approx(ref, abs=1e-12)
    # batch dimensions are flattened: [n, L, d] with weights [n, L]
    assert pooled_r2(y.reshape(20, 10, 3), y_hat.reshape(20, 10, 3), w.reshape(20, 10)) == pytest.approx(ref, abs=1e-12)


def test_rmse_and_perfect_fit():
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert pooled_r2(y, y) == 1.0
    assert rmse(y, y + torch.tensor([[0.3, -0.3], [0.3, -0.3]], dtype=torch.float64)) == pytest.approx(0.3)


def test_bad_weights_rejected():
    y = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="entries"):
        pooled_r2(y, y, torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        pooled_r2(y, y, -torch.ones(4))


def test_simplex_projection_against_grid_search():
    g = torch.Generator().manual_seed(1)
    pts = 1.5 * torch.randn(50, 3, generator=g, dtype=torch.float64)
    proj = project_to_simplex(pts)
    assert torch.all(proj >= 0)
    torch.testing.assert_close(proj.sum(-1), torch.ones(50, dtype=torch.float64))
    # brute force: the closest point of a fine grid on the simplex is never closer than the projection
    n = 200
    i, j = torch.meshgrid(torch.arange(n + 1), torch.arange(n + 1), indexing="ij")
    keep = i + j <= n
    grid = torch.stack([i[keep], j[keep], n - i[keep] - j[keep]], -1).double() / n
    best = torch.cdist(pts, grid).min(1).values
    mine = (pts - proj).norm(dim=1)
    assert torch.all(mine <= best + 1e-12)
    assert torch.all(best - mine < 2.0 / n)
    # points already on the simplex do not move
    torch.testing.assert_close(project_to_simplex(grid[:100]), grid[:100])


def test_simplex_distance_of_exact_prediction_is_zero():
    y = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float64)
    assert simplex_distance(y, y) == pytest.approx(0.0, abs=1e-15)
    assert simplex_distance(y, y + 1.0) == pytest.approx(0.0, abs=1e-12)  # a shift along 1 projects back
