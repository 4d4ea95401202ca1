"""Block-sparse HMMs against the dense HMM they stand for: filter, likelihood, beliefs, sampling, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.hmm import beliefs, forward_filter, get_process, log_likelihood, native
from interp.hmm.blocked import BlockedHMM, _insertion_search, random_blocked


@pytest.mark.parametrize("G, k, m, d", [(5, 3, 2, 3), (4, 1, 3, 2), (3, 4, 1, 1), (6, 2, 2, 6)])
def test_blocked_equals_dense_on_sampled_and_arbitrary_tokens(G, k, m, d):
    b = get_process("blocked", n_groups=G, group_size=k, tokens_per_group=m, successors=d, seed=G + k,
                    self_weight=1.0 if d == 1 else 0.5)
    dense = b.to_dense()
    assert dense.n_states == G * k and dense.n_tokens == G * m
    sampled = b.sample(300, 25, seed=1)
    arbitrary = torch.randint(0, G * m, (300, 3), generator=torch.Generator().manual_seed(2))  # some impossible
    for tokens in (sampled, arbitrary):
        ll_b, ll_d = b.log_likelihood(tokens), log_likelihood(dense, tokens)
        finite = torch.isfinite(ll_d)
        assert torch.equal(torch.isfinite(ll_b), finite)
        torch.testing.assert_close(ll_b[finite], ll_d[finite], rtol=0, atol=1e-10)
        eta_b, eta_d = b.beliefs(tokens[finite]), beliefs(dense, tokens[finite])
        torch.testing.assert_close(eta_b, eta_d, rtol=0, atol=1e-10)
        # position by position: every conditional log P(x_t | x_<t), and the belief before the move (over the
        # state that emitted token t): the dense prior over z_t (mu, then the dense belief after token t-1)
        # times C[:, x_t], normalised, which lives on group g_t
        kept = tokens[finite]
        res, ref = b.filter(kept), forward_filter(dense, kept)
        torch.testing.assert_close(res.log_normalizers, ref.log_normalizers, rtol=0, atol=1e-10)
        prior = torch.cat([b.mu.reshape(1, 1, -1).expand(len(kept), 1, -1), ref.beliefs[:, :-1]], 1)
        post = prior * b.emission_matrix().T[kept]
        post = (post / post.sum(-1, keepdim=True)).view(len(kept), -1, G, k)
        on_group = post.gather(2, res.group[:, :, None, None].expand(-1, -1, 1, k)).squeeze(2)
        torch.testing.assert_close(res.beliefs, on_group, rtol=0, atol=1e-10)
        assert float(post.sum((-1, -2)).sub(on_group.sum(-1)).abs().max()) < 1e-12  # nothing off the group
    assert torch.isfinite(b.log_likelihood(sampled)).all()  # sampled sequences are possible
    assert torch.isfinite(log_likelihood(dense, arbitrary)).any()
    assert (d == G) == bool(torch.isfinite(log_likelihood(dense, arbitrary)).all())


def test_filtered_beliefs_live_on_the_group_of_the_token():
    b = random_blocked(6, 4, 3, 3, seed=0)
    tokens = b.sample(50, 20, seed=0)
    res = b.filter(tokens)
    assert torch.equal(res.group, tokens // 3)
    torch.testing.assert_close(res.beliefs.sum(-1), torch.ones(50, 20, dtype=torch.float64))
    assert (res.beliefs >= 0).all()


def test_sampled_tokens_follow_the_exact_marginals():
    b = random_blocked(4, 3, 2, 2, seed=3)
    dense = b.to_dense()
    n = 100_000
    tokens = b.sample(n, 6, seed=7)
    A, C = b.transition_matrix(), b.emission_matrix()
    p = b.mu.reshape(-1)
    for t in range(6):
        expected = p @ C
        freq = torch.bincount(tokens[:, t], minlength=dense.n_tokens).double() / n
        sigma = (expected * (1 - expected) / n).sqrt()
        assert ((freq - expected).abs() <= 5 * sigma + 1e-12).all(), t
        p = p @ A


def test_large_blocked_filter_needs_no_dense_tensor():
    b = random_blocked(n_groups=128, group_size=128, tokens_per_group=2, successors=2, seed=0)  # S = 2^14
    assert b.n_states == 2**14
    tokens = b.sample(8, 32, seed=0)
    res = b.filter(tokens)
    assert torch.isfinite(res.log_normalizers).all() and (res.log_normalizers <= 0).all()
    torch.testing.assert_close(res.beliefs.sum(-1), torch.ones(8, 32, dtype=torch.float64))
    # the per-step normalisers of the prefix filter are those of the whole sequence
    torch.testing.assert_close(b.filter(tokens[:, :10]).log_normalizers, res.log_normalizers[:, :10])


def test_invalid_blocked_hmms_and_tokens_are_named():
    b = random_blocked(3, 2, 2, 2, seed=0)
    args = dict(mu=b.mu, succ=b.succ, w=b.w, blocks=b.blocks, emit=b.emit)
    bad = b.blocks.clone()
    bad[1, 0, 1] *= 2
    with pytest.raises(ValueError, match=r"blocks row \(1, 0, 1\) sums to"):
        BlockedHMM(**{**args, "blocks": bad})
    with pytest.raises(ValueError, match="distinct successor groups"):
        BlockedHMM(**{**args, "succ": torch.zeros_like(b.succ)})
    with pytest.raises(ValueError, match="emit has a negative entry"):
        BlockedHMM(**{**args, "emit": b.emit - 1})
    with pytest.raises(ValueError, match="succ must hold group indices"):
        BlockedHMM(**{**args, "succ": b.succ + 10})
    with pytest.raises(ValueError, match=r"tokens must lie in \[0, 6\)"):
        b.log_likelihood(torch.tensor([[0, 6]]))
    with pytest.raises(ValueError, match="integer tensor"):
        b.log_likelihood(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="non-empty"):
        b.log_likelihood(torch.zeros(0, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="successors"):
        get_process("blocked", n_groups=2, successors=3)


def test_the_registry_builds_blocked_hmms_with_their_parameters():
    b = get_process("blocked", n_groups=4, group_size=2)
    assert isinstance(b, BlockedHMM) and b.name == "blocked"
    assert b.params == {"n_groups": 4, "group_size": 2, "tokens_per_group": 4, "successors": 4, "seed": 0,
                        "self_weight": 0.5, "alpha": 1.0}
    assert b.n_states == 8 and b.n_tokens == 16


def test_alpha_sets_how_sparse_the_rows_are():
    def row_entropy(hmm):
        rows = hmm.blocks.reshape(-1, hmm.group_size)
        return -(rows * torch.log(rows.clamp_min(1e-300))).sum(-1).mean().item()

    default, one = get_process("blocked", n_groups=8, group_size=16), get_process("blocked", n_groups=8,
                                                                                   group_size=16, alpha=1.0)
    assert torch.equal(default.blocks, one.blocks) and torch.equal(default.emit, one.emit)
    sparse, flat = (get_process("blocked", n_groups=8, group_size=16, alpha=a) for a in (0.05, 20.0))
    # E[row entropy] of Dirichlet(alpha) rises with alpha: near 0 at 0.05, near log k at 20
    assert row_entropy(sparse) < 0.5 * row_entropy(one) < row_entropy(one) < row_entropy(flat)
    for bad in (0, -1.0, float("inf"), True, "1"):
        with pytest.raises(ValueError, match="alpha must be a positive number"):
            get_process("blocked", n_groups=4, group_size=2, alpha=bad)


def test_a_tiny_alpha_gives_valid_near_deterministic_rows():
    # Gamma(0.001) draws fall below the float64 range about half the time: such rows are drawn in log space
    b = get_process("blocked", n_groups=4, group_size=64, tokens_per_group=4, alpha=0.001, seed=0)
    for rows in (b.blocks, b.emit, b.mu.reshape(1, -1)):
        assert torch.isfinite(rows).all() and torch.allclose(rows.sum(-1), torch.ones(()).double(), atol=1e-12)
    top = b.blocks.max(-1).values
    assert float(top.median()) > 0.99  # each row nearly one successor state (E[max] -> 1 as alpha -> 0)
    tokens = b.sample(200, 20, seed=1)
    assert torch.isfinite(b.log_likelihood(tokens)).all()
    torch.testing.assert_close(b.log_likelihood(tokens), log_likelihood(b.to_dense(), tokens), rtol=0, atol=1e-10)
    dense = get_process("blocked", n_groups=4, group_size=64, tokens_per_group=4, alpha=1.0, seed=0)
    assert float(dense.blocks.max(-1).values.median()) < 0.1


def test_blocked_filter_equals_dense_on_one_sequence_one_token_uneven_and_unvisited_groups():
    b = random_blocked(5, 3, 2, 3, seed=4)
    dense = b.to_dense()
    many = b.sample(400, 6, seed=5)
    avoid = many[~(many // 2 == 4).any(1)][:20]  # sequences that never visit group 4
    assert len(avoid) > 0
    uneven = torch.cat([many[:1].expand(60, -1), many[1:4]])  # one (group, move) holds most rows every step
    for tokens in (many[:1], many[:7, :1], avoid, uneven):
        res, ref = b.filter(tokens), forward_filter(dense, tokens)
        torch.testing.assert_close(res.log_normalizers, ref.log_normalizers, rtol=0, atol=1e-10)
        torch.testing.assert_close(b.beliefs(tokens), beliefs(dense, tokens), rtol=0, atol=1e-10)
        assert torch.equal(b.filter(tokens, return_beliefs=False).log_normalizers, res.log_normalizers)
    torch.testing.assert_close(b.filter(uneven).beliefs[:60], b.filter(many[:1]).beliefs.expand(60, -1, -1),
                               rtol=0, atol=1e-12)


def test_describe_a_blocked_process_reports_its_structure_and_its_filters_loss(capsys):
    from interp.cli import main

    args = ["describe", "--process", "blocked", "--param", "n_groups=4", "--param", "group_size=8",
            "--samples", "500", "--length", "6", "--seed", "3"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["process", "sample", "filter", "exact"]
    assert "32 states in 4 groups of 8, 16 tokens (4 a group), 4 successor groups each" in lines[0]
    hmm = get_process("blocked", n_groups=4, group_size=8)
    tokens = hmm.sample(500, 6, seed=3)
    loss = -float(hmm.log_likelihood(tokens).sum()) / tokens.numel()
    assert f"sample log-loss {loss:.5f} nats/token" in lines[2]


needs_compiler = pytest.mark.skipif(native.compiler() is None,
                                    reason="no C++ compiler on this machine: the torch filter runs instead")


@needs_compiler
@pytest.mark.parametrize("G, k, m, d, L", [(5, 3, 2, 3, 25), (4, 40, 2, 3, 30), (6, 70, 3, 2, 12), (3, 4, 2, 2, 1)])
def test_the_compiled_passes_equal_the_torch_filter(G, k, m, d, L):
    # k = 40 and 70: whole register panels and the columns past them (32 a panel with AVX-512, 8 with AVX2, 4 SSE2)
    b = random_blocked(G, k, m, d, seed=G + k)
    sampled = b.sample(300, L, seed=1)
    arbitrary = torch.randint(0, G * m, (200, L), generator=torch.Generator().manual_seed(2))  # some impossible
    for tokens in (sampled, arbitrary):
        res, ref = b.filter(tokens), b.filter(tokens, compiled=False)
        assert torch.equal(res.group, ref.group)
        finite = torch.isfinite(ref.log_normalizers)
        assert torch.equal(torch.isfinite(res.log_normalizers), finite)
        assert bool(finite.all()) == (tokens is sampled or L == 1)  # arbitrary moves: some impossible
        torch.testing.assert_close(res.log_normalizers[finite], ref.log_normalizers[finite], rtol=0, atol=1e-13)
        torch.testing.assert_close(res.beliefs, ref.beliefs, rtol=0, atol=1e-14)  # zero after an impossible token
        assert torch.equal(b.filter(tokens, return_beliefs=False).log_normalizers, res.log_normalizers)


@needs_compiler
def test_the_pass_order_and_the_thread_count_change_no_number(monkeypatch):
    b = random_blocked(4, 136, 2, 2, seed=0)  # k = 136: products of 29 rows or more run on several threads
    tokens = b.sample(400, 30, seed=2)
    ref = b.filter(tokens)
    shuffled = torch.randperm(4 * 2, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(BlockedHMM, "pass_order", lambda self: shuffled)
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2, 3):  # 3: rows split unevenly
            torch.set_num_threads(n_threads)
            res = b.filter(tokens)  # each row's arithmetic is the same in any batch, on any thread
            assert torch.equal(res.log_normalizers, ref.log_normalizers) and torch.equal(res.beliefs, ref.beliefs)
    finally:
        torch.set_num_threads(threads)


@needs_compiler
def test_passes_over_the_blocks_serve_more_rows_a_product_than_one_position_at_a_time():
    b = random_blocked(16, 8, 2, 4, seed=0)
    tokens = b.sample(2000, 64, seed=1)
    passes, steps = b.filter(tokens, return_beliefs=False), b.filter(tokens, return_beliefs=False, compiled=False)
    assert steps.products >= 1.5 * passes.products


def test_the_pass_order_follows_the_heavy_moves():
    G, d = 6, 2
    succ = torch.tensor([[g, (g + 1) % G] for g in range(G)])
    w = torch.tensor([[0.5, 0.5]] * (G - 1) + [[0.99, 0.01]], dtype=torch.float64)  # a cycle, light from 5 to 0
    k = 2
    blocks = torch.full((G, d, k, k), 0.5, dtype=torch.float64)
    b = BlockedHMM(torch.full((G, k), 1 / (G * k), dtype=torch.float64), succ, w, blocks,
                   torch.full((G, k, 1), 1.0, dtype=torch.float64))
    order = b.pass_order()
    assert order.tolist() == list(range(G * d))  # 0 -> 1 -> ... -> 5 all forward; only the light move back
    b = random_blocked(7, 2, 2, 3, seed=1)
    order = b.pass_order().reshape(7, 3)
    assert sorted(order[:, 0].tolist()) == [3 * g for g in range(7)]  # every group once, its moves in order
    assert torch.equal(order - order[:, :1], torch.arange(3).expand(7, 3))


def test_the_insertion_search_ends_where_no_single_move_gains():
    rng = np.random.default_rng(0)
    flow = rng.random((9, 9)) * (rng.random((9, 9)) < 0.4)
    np.fill_diagonal(flow, 0)

    def forward(order):  # brute force: the weight of every pair taken in order
        return sum(flow[a, b] for i, a in enumerate(order) for b in order[i + 1:])

    start = list(range(9))
    order = _insertion_search(flow, list(start), sweeps=100)
    assert sorted(order) == start and forward(order) > forward(start)
    for x in order:
        rest = [y for y in order if y != x]
        assert all(forward(rest[:j] + [x] + rest[j:]) <= forward(order) + 1e-12 for j in range(9))
