"""F3's previous-token profile reads every row of a cached pattern: caches hold only trained positions."""

import numpy as np
import torch

from interp.figures.paper import _previous_token_profile
from interp.interpret.attention import decay_pattern


def test_every_cached_row_is_read_including_the_last():
    L, lam = 5, 0.5
    lags, ratios, first = _previous_token_profile(decay_pattern(lam, L))
    # rows 1..L-1, each with t + 1 allowed entries
    assert len(lags) == sum(t + 1 for t in range(1, L))
    assert lags.max() == L - 1 and first.sum() == L - 1
    # the construction's pattern: weight at lag k over the weight at lag 1 is lam^(k - 1)
    assert np.allclose(ratios, lam ** (lags - 1.0))


def test_rows_without_weight_on_the_previous_token_are_skipped():
    P = torch.tril(torch.ones(4, 4))
    P[3, 2] = 0.0
    lags, _, _ = _previous_token_profile(P)
    assert len(lags) == 2 + 3
