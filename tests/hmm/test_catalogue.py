"""The process catalogue: word probabilities equal those of simplexity's and epsilon-transformers' definitions, every
registered process's word probabilities sum to 1 at every depth, and a value derived by hand for each process."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from interp.cli import main
from interp.hmm import get_process, list_processes, log_likelihood
from interp.hmm.blocked import BlockedHMM

# Computed with numpy from the two libraries' matrices transcribed (not with interp): see the file's "about".
REFERENCE = json.loads((Path(__file__).parent / "data" / "catalogue_words.json").read_text())
CASES = {case["id"]: case for case in REFERENCE["cases"]}


def all_words(n_tokens: int, length: int) -> torch.Tensor:
    """(n_tokens ** length, length): every word, in lexicographic order (last position fastest)."""
    return torch.tensor(list(itertools.product(range(n_tokens), repeat=length)), dtype=torch.long)


def word_probs(hmm, words: torch.Tensor) -> torch.Tensor:
    ll = hmm.log_likelihood(words) if isinstance(hmm, BlockedHMM) else log_likelihood(hmm, words)
    return ll.exp()


def prob(hmm, word) -> float:
    return float(word_probs(hmm, torch.tensor([word], dtype=torch.long))[0])


# ------------------------------------------------------------------ equal to the public definitions
def test_reference_covers_every_shared_process():
    shared = {"coin", "sns", "nond", "golden_mean", "matching_parens", "mr_name", "days_of_week", "leaky_rrxor",
              "rrxor", "mess3", "z1r", "even"}
    assert {case["process"] for case in CASES.values()} == shared
    # the generalised golden mean and RRXOR with two bit probabilities are among them
    assert {"golden_mean_R4_k1", "golden_mean_R3_k2", "rrxor_p1_p2", "leaky_rrxor"} <= set(CASES)
    # every word up to length 6, but days_of_week (11 tokens: 1331 words at length 3, 14641 at 4)
    assert {cid: case["max_length"] for cid, case in CASES.items() if case["max_length"] != 6} == {"days_of_week": 3}


@pytest.mark.parametrize("cid", sorted(CASES))
def test_word_probabilities_equal_the_public_definitions(cid):
    case = CASES[cid]
    hmm = get_process(case["process"], **case["params"])
    # token_map: interp's token for theirs, where the convention differs (the golden mean's 0 <-> 1)
    mapping = torch.tensor(case["token_map"] or list(range(hmm.n_tokens)), dtype=torch.long)
    assert len(case["probs"]) == case["max_length"]
    for n, want in enumerate(case["probs"], 1):
        theirs = all_words(hmm.n_tokens, n)
        got = word_probs(hmm, mapping[theirs])
        want = torch.tensor(want, dtype=torch.float64)
        assert got.shape == want.shape == (hmm.n_tokens ** n,)
        err = float((got - want).abs().max())
        assert err <= 1e-12, f"{cid}: length {n} differs by {err:.3g}"


def simplexity_days_of_week():
    """simplexity's ``days_of_week`` transition matrices, transcribed into numpy (tokens: the days M..Su 0-6, then
    tomorrow 7, yesterday 8, weekend 9, weekday 10; states: the days): the reference beyond the stored length 3."""
    import numpy as np

    T = np.zeros((11, 7, 7))
    for day in range(7):
        T[day, :, day] = 1.0
    T[10, :, :5] = 1 / 5
    T[9, :, 5:] = 1 / 2
    for day in range(7):
        nxt, prv = (day + 1) % 7, (day - 1) % 7
        T[7, day, nxt] = 1.0
        T[nxt, day, nxt] = 5.0
        T[8, day, prv] = 1.0
    return T / T.sum(axis=(0, 2), keepdims=True)


def test_days_of_week_equals_simplexity_to_length_6():
    """Every one of the 11^6 words, against numpy on the transcribed matrices (the stored reference stops at 3)."""
    import numpy as np

    T = simplexity_days_of_week()
    vals, vecs = np.linalg.eig(T.sum(0).T)
    pi = np.real(vecs[:, np.argmin(abs(vals - 1))])
    want = (pi / pi.sum())[None, :]  # (words so far, states): pi T[x_1] ... T[x_n], last position fastest
    h = get_process("days_of_week")
    for n in range(1, 7):
        want = np.einsum("ws,xst->wxt", want, T).reshape(-1, 7)
        got = word_probs(h, all_words(11, n)).numpy()
        err = float(abs(got - want.sum(1)).max())
        assert got.shape == (11 ** n,) and err <= 1e-12, f"length {n} differs by {err:.3g}"


# ------------------------------------------------------------------ every depth sums to 1
WORD_BUDGET = 2 ** 14  # words enumerated per depth
# processes whose vocabulary allows fewer than 6 depths within the budget: the depth they reach
SHALLOW = {"days_of_week": 4, "cyclic": 2, "blocked": 1}


@pytest.mark.parametrize("name", list_processes())
def test_word_probabilities_sum_to_one_at_every_depth(name):
    hmm = get_process(name)  # defaults; the random families' seed is a default too
    depth = max(n for n in range(1, 7) if hmm.n_tokens ** n <= WORD_BUDGET)
    assert depth == SHALLOW.get(name, 6), f"{name}: {hmm.n_tokens} tokens reach depth {depth}"
    for n in range(1, depth + 1):
        total = float(word_probs(hmm, all_words(hmm.n_tokens, n)).sum())
        assert abs(total - 1) <= 1e-12, f"{name}: depth {n} sums to {total!r}"


# ------------------------------------------------------------------ values derived by hand
def test_coin():
    # i.i.d.: P(word) = p^(number of 1s) (1 - p)^(number of 0s); P(110) = 0.7^2 * 0.3 = 0.147.
    h = get_process("coin", p=0.7)
    assert abs(prob(h, [1, 1, 0]) - 0.147) <= 1e-15
    w = all_words(2, 4)
    want = 0.7 ** w.sum(1).double() * 0.3 ** (4 - w.sum(1)).double()
    assert float((word_probs(h, w) - want).abs().max()) <= 1e-15


def test_sns():
    # Balance pi_0 p = pi_1 q: pi = (q, p) / (p + q) = (2/3, 1/3) for p = 0.3, q = 0.6. Only state 1 emits 1 (with q):
    # P(1) = pi_1 q = 0.2. A 1 returns to state 0, which emits only 0s; a 1 next needs the move to 1 (p) and then q:
    # P(101) = P(1) p q = 0.036, and P(11) = 0.
    h = get_process("sns", p=0.3, q=0.6)
    assert abs(prob(h, [1]) - 0.2) <= 1e-15
    assert abs(prob(h, [1, 0, 1]) - 0.036) <= 1e-15
    assert prob(h, [1, 1]) == 0.0


def test_nond():
    # pi_0 = pi_1 / 2 + pi_2 / 3, pi_1 = pi_1 / 2 + pi_2 / 3, pi_2 = pi_0 + pi_2 / 3  ->  pi = (2, 2, 3) / 7.
    # Only state 0 emits 0 (then moves to 2); state 2 emits 1 and returns to 0 with 1/3: P(010) = 2/7 * 1/3 = 2/21.
    h = get_process("nond")
    assert torch.allclose(h.pi, torch.tensor([2, 2, 3], dtype=torch.float64) / 7, rtol=0, atol=1e-15)
    assert abs(prob(h, [0]) - 2 / 7) <= 1e-15
    assert abs(prob(h, [0, 1, 0]) - 2 / 21) <= 1e-15
    assert prob(h, [0, 0]) == 0.0


def test_golden_mean_generalised():
    # Today's golden mean is the case R = k = 1, unchanged.
    old = torch.zeros(2, 2, 2, dtype=torch.float64)
    old[1, 0, 0], old[0, 0, 1], old[1, 1, 0] = 0.3, 0.7, 1.0
    assert torch.equal(get_process("golden_mean", p=0.3).T, old)
    # R = 2, k = 3, p = 1/2: states 1..4 each hold pi_0 (1 - p), so pi_0 = 1 / (1 + 4 / 2) = 1/3. A 1 that lands in
    # state 0 (from 0 with p, or from the last state) has probability pi_0 p + pi_0 (1 - p) = 1/3; then 0 (1/2), 0,
    # and the forced 1: P(1001) = 1/6. 0s come in runs of exactly 2 and 1s in runs of at least 3.
    h = get_process("golden_mean", p=0.5, R=2, k=3)
    assert h.n_states == 5
    assert abs(float(h.pi[0]) - 1 / 3) <= 1e-15
    assert abs(prob(h, [1, 0, 0, 1]) - 1 / 6) <= 1e-15
    for impossible in ([0, 0, 0], [1, 0, 1], [0, 0, 1, 0]):
        assert prob(h, impossible) == 0.0


def test_matching_parens():
    # Detailed balance pi_d o_d = pi_(d+1) (1 - o_(d+1)) with o = (1, 1/2, 1/2, 0): pi = (1, 2, 2, 1) / 6.
    # "(((" only from depth 0: 1/6 * 1 * 1/2 * 1/2 = 1/24; "((((" would pass depth 3: impossible.
    h = get_process("matching_parens", open_probs=[1.0, 0.5, 0.5])
    assert torch.allclose(h.pi, torch.tensor([1, 2, 2, 1], dtype=torch.float64) / 6, rtol=0, atol=1e-15)
    assert abs(prob(h, [0, 0, 0]) - 1 / 24) <= 1e-15
    assert abs(prob(h, [1, 1, 1]) - 1 / 24) <= 1e-15
    assert prob(h, [0, 0, 0, 0]) == 0.0 and prob(h, [1, 1, 1, 1]) == 0.0


def test_mr_name():
    # "Mr." (0) and "name" (3) each take pi m, "Something" (1) and "Blah" (2) pi s; pi_Mr = q (2 s) = s / 2 for
    # q = 1/4: pi = (1, 2, 2, 1) / 6. The state is the last token: P(Something, Mr., name) = 1/3 * q * 1 = 1/12.
    h = get_process("mr_name", p=0.4, q=0.25)
    assert torch.allclose(h.pi, torch.tensor([1, 2, 2, 1], dtype=torch.float64) / 6, rtol=0, atol=1e-15)
    assert abs(prob(h, [1, 0, 3]) - 1 / 12) <= 1e-15
    assert prob(h, [3, 0]) == 0.0  # "name" is never followed by "Mr."


def test_days_of_week():
    # From any day: "tomorrow" 1/15, then "yesterday" 1/15: P = 1/225. A day's name has probability 11/15 from any
    # day, and the next day's name after it 5/15: summed over the 7 days, P(d, d + 1) = 11/45.
    h = get_process("days_of_week")
    assert (h.n_states, h.n_tokens) == (7, 11)
    assert abs(prob(h, [7, 8]) - 1 / 225) <= 1e-15
    pairs = torch.tensor([[d, (d + 1) % 7] for d in range(7)], dtype=torch.long)
    assert abs(float(word_probs(h, pairs).sum()) - 11 / 45) <= 1e-15


def test_leaky_rrxor():
    # Smat = (1 - eps) S + eps/5 J, so pi = a pi S + c with a = 0.9, c = 0.02 (p1 = p2 = 1/2). By the symmetry of
    # the two bit states (u) and of the two XOR states (v): pi_S = 2 a v + c, u = a pi_S / 2 + c, v = a u + c, so
    # u = c (1 + a/2 + a^2) / (1 - a^3) = 452/2710, v = 461/2710, pi_S = 884/2710. Every state but T and F emits 1
    # with 1/2, T with a + eps/2 and F with eps/2: P(1) = 1/2 (1 - 2 v) + v (a + eps) = 1/2.
    h = get_process("leaky_rrxor", p1=0.5, p2=0.5, eps=0.1)
    want = torch.tensor([884, 452, 452, 461, 461], dtype=torch.float64) / 2710
    assert torch.allclose(h.pi, want, rtol=0, atol=1e-15)
    assert abs(prob(h, [1]) - 0.5) <= 1e-15
    # eps = 1 is fair i.i.d. bits; eps = 0 is RRXOR itself
    assert torch.allclose(word_probs(get_process("leaky_rrxor", eps=1.0), all_words(2, 5)),
                          torch.full((32,), 1 / 32, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.equal(get_process("leaky_rrxor", p1=0.2, p2=0.7, eps=0.0).T,
                       get_process("rrxor", p1=0.2, p2=0.7).T)


def test_rrxor_two_bit_probabilities():
    # pi = (1, 1 - p1, p1, x, 1 - x) / 3 with x = P(XOR = 1) = p1 (1 - p2) + (1 - p1) p2 = 0.62 for p1 = 0.2,
    # p2 = 0.7. P(1) = (p1 + p2 + x) / 3 = 1.52 / 3.
    h = get_process("rrxor", p1=0.2, p2=0.7)
    assert torch.allclose(h.pi, torch.tensor([1, 0.8, 0.2, 0.62, 0.38], dtype=torch.float64) / 3, rtol=0, atol=1e-15)
    assert abs(prob(h, [1]) - 1.52 / 3) <= 1e-15
    # today's p: both bits; p1 or p2 given alone replaces one of them
    assert torch.equal(get_process("rrxor", p=0.3).T, get_process("rrxor", p1=0.3, p2=0.3).T)
    assert torch.equal(get_process("rrxor", p=0.7, p1=0.2).T, h.T)
    # its label names what was set (reports and captions keep today's "rrxor(p=0.5)")
    assert get_process("rrxor").params == {"p": 0.5}
    assert get_process("rrxor", p1=0.2).params == {"p": 0.5, "p1": 0.2}


# ------------------------------------------------------------------ bad parameters, one line naming them
@pytest.mark.parametrize("name, params, message", [
    ("coin", {"p": 1.5}, "p must lie in [0, 1], got 1.5"),
    ("sns", {"q": 0.0}, "q must lie in (0, 1], got 0.0"),
    ("golden_mean", {"R": 0}, "R must be a positive integer, got 0"),
    ("golden_mean", {"k": 1.5}, "k must be a positive integer, got 1.5"),
    ("matching_parens", {"open_probs": [0.5, 0.5]}, "open_probs[0] must be 1 (depth 0 cannot close), got 0.5"),
    ("matching_parens", {"open_probs": [1.0, 0.0]}, "open_probs[1] must lie in (0, 1], got 0.0"),
    ("matching_parens", {"open_probs": []}, "open_probs must be a non-empty list of probabilities, got []"),
    ("matching_parens", {"open_probs": 0.5}, "open_probs must be a non-empty list of probabilities, got 0.5"),
    ("mr_name", {"p": 0.8, "q": 0.3}, "p + q must be at most 1, got p=0.8, q=0.3"),
    ("mr_name", {"q": 0}, "q must lie in (0, 1], got 0.0"),
    ("leaky_rrxor", {"eps": -0.1}, "eps must lie in [0, 1], got -0.1"),
    ("rrxor", {"p2": 2}, "p2 must lie in [0, 1], got 2.0"),
    ("nond", {"p": 0.5}, "process 'nond' has no parameter 'p'; it takes: "),
])
def test_bad_parameters_raise_naming_them(name, params, message):
    with pytest.raises(ValueError) as err:
        get_process(name, **params)
    assert str(err.value) == message


# ------------------------------------------------------------------ the command line
def test_processes_lists_the_catalogue(capsys):
    assert main(["processes"]) == 0
    out = capsys.readouterr().out
    for line in ["coin(p=0.5)", "sns(p=0.5, q=0.5)", "nond()", "golden_mean(p=0.5, R=1, k=1)",
                 "matching_parens(open_probs=(1.0, 0.5, 0.5))", "mr_name(p=0.4, q=0.25)", "days_of_week()",
                 "leaky_rrxor(p1=0.5, p2=0.5, eps=0.1)", "rrxor(p=0.5, p1=None, p2=None)"]:
        assert line + "\n" in out


def test_describe_a_new_process(capsys):
    argv = ["describe", "--process", "sns", "--param", "p=0.5", "--param", "q=0.5", "--samples", "2000",
            "--length", "6"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("process   sns(p=0.5, q=0.5): 2 states, 2 tokens; stationary pi = ")
    assert "entropy rate" in out


def test_describe_with_a_bad_parameter_is_one_line(capsys):
    assert main(["describe", "--process", "sns", "--param", "p=2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "interp: error: --param p=2: p must lie in (0, 1], got 2.0\n"


def test_reference_probabilities_are_distributions():
    # a damaged data file would fail here rather than pass against itself
    for case in CASES.values():
        for n, probs in enumerate(case["probs"], 1):
            assert all(p >= 0 for p in probs) and math.isclose(sum(probs), 1.0, rel_tol=0, abs_tol=1e-12), case["id"]
