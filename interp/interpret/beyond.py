"""Beyond the next token: do a model's activations keep apart histories that predict alike but differ in belief?

Two histories (points: a sequence of the evaluation set and a position in it) whose exact next-token distributions
are equal can still have different beliefs: the belief also says what comes after the next token. Points are first
merged into *classes* of equal belief, then classes into *groups* of equal next-token distribution
``eta @ emission_matrix``. A group with two or more classes is where the belief carries more than the next token.

For each such group the weighted mean pairwise distance between its classes' mean beliefs is measured three ways,
all in belief space:

- exact: between the beliefs themselves;
- residual: between the class means of a linear probe's predicted beliefs from the model's activations;
- next-token: the same through a probe fitted onto the exact next-token distributions instead. Equal inputs give
  equal predictions, so this control separates a group's classes by rounding noise only.

Probes are those of :mod:`interp.interpret.probes` (the same sequence split, weighting and fit as ``interp probe``);
the class means use held-out sequences only. The summary is each probe's share of the exact separation, summed
over groups weighted by their probability mass.

Tolerances. The exact beliefs come from float64 filtering, whose rounding error after L tokens is of order L times
1e-16. Beliefs within ``tol`` (1e-9) of each other are one class, so two classes differ by more than 1e-9 in some
coordinate (checked: a class whose values spread beyond ``tol`` through a chain of near values is refused). Their
next-token distributions then differ by at least ``sigma * 1e-9`` along any direction the emission matrix maps
with gain ``sigma``, while equal ones agree to rounding: next-token distributions are equal within ``pred_tol``
(1e-12), far above rounding and below ``sigma * tol`` for every ``sigma > 1e-3``. (One tolerance for both would
merge deep Mess3 beliefs 1e-9 apart, whose predictions differ by less than 1e-9.)
Beliefs can share a next-token distribution only along the ``S - rank(emission_matrix)`` directions the emission
matrix does not see: none for Mess3, whose emission matrix ``Smat @ E`` is invertible, so its histories never
predict alike with different beliefs; three for RRXOR (5 states, 2 tokens).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from interp.hmm import HMM
from interp.interpret.analyse import CONCAT, ensure_cache, load_probe_result, probe_settings, residual_hooks
from interp.interpret.probes import fit_probe, split_by_sequence
from interp.progress import quiet
from interp.rundir import read_config
from interp.training.runconfig import run_config_from_dict

TOL = 1e-9  # equality of beliefs (see the module docstring)
PRED_TOL = 1e-12  # equality of next-token distributions


def group_rows(x: torch.Tensor, tol: float = TOL) -> torch.Tensor:
    """[m] int64 labels of the rows of x [m, k]: rows within ``tol`` of each other in every coordinate share a
    label. Labels are numbered by first appearance.

    Splits at every gap larger than ``tol`` between sorted values of each coordinate in turn, within the current
    labels, until no coordinate splits further; rows within ``tol`` are never separated. Raises ValueError when a
    label's rows spread beyond ``tol`` in some coordinate (values chained by gaps of at most ``tol``)."""
    a = np.asarray(torch.as_tensor(x, dtype=torch.float64).cpu())
    if a.ndim != 2:
        raise ValueError(f"rows must be 2-D [m, k], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("rows have non-finite entries")
    m, k = a.shape
    labels = np.zeros(m, dtype=np.int64)
    n_labels, stable = min(m, 1), 0
    while m and stable < k:
        for j in range(k):
            order = np.lexsort((a[:, j], labels))  # by label, then by coordinate j
            xs, ls = a[order, j], labels[order]
            cut = (ls[1:] != ls[:-1]) | (np.diff(xs) > tol)
            labels = np.empty(m, dtype=np.int64)
            labels[order] = np.concatenate([[0], np.cumsum(cut)])
            count = int(labels.max()) + 1
            stable = stable + 1 if count == n_labels else 1
            n_labels = count
            if stable >= k:
                break
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    labels = rank[inverse.reshape(-1)]
    if m:
        lo, hi = np.full((n_labels, k), np.inf), np.full((n_labels, k), -np.inf)
        np.minimum.at(lo, labels, a)
        np.maximum.at(hi, labels, a)
        spread = (hi - lo).max(1)
        if (spread > tol).any():
            g = int(np.argmax(spread))
            raise ValueError(f"rows chained within tol = {tol:g} spread by {spread[g]:.3g} in group {g}: the values "
                             f"are too close together to group at this tolerance")
    return torch.from_numpy(labels)


@dataclass(frozen=True)
class BeyondGroup:
    """Classes of equal belief sharing one next-token distribution; distances are weighted mean pairwise distances
    between the classes' mean beliefs (None when fewer than two classes occur in held-out sequences)."""

    next_token: tuple[float, ...]  # the shared next-token distribution
    n_beliefs: int  # distinct beliefs (classes) in the evaluation set
    n_heldout: int  # of them, those reached in held-out sequences (the distances use these)
    mass: float  # the group's share of the (sequence, position) probability
    exact: float | None  # between the exact beliefs
    residual: float | None  # between the class means of the activations' probe
    next_token_probe: float | None  # between the class means of the next-token probe

    @property
    def residual_share(self) -> float | None:
        return None if self.exact in (None, 0.0) or self.residual is None else self.residual / self.exact

    @property
    def next_token_share(self) -> float | None:
        return (None if self.exact in (None, 0.0) or self.next_token_probe is None
                else self.next_token_probe / self.exact)


@dataclass(frozen=True)
class BeyondResult:
    """Every group of equal next-token distribution with two or more beliefs, and the summary over them."""

    groups: tuple[BeyondGroup, ...]  # by decreasing mass
    n_beliefs: int  # distinct beliefs in the evaluation set
    n_predictions: int  # distinct next-token distributions among them
    kernel_dim: int  # S - rank(emission matrix): belief directions the next token does not see
    mass: float  # share of the probability in the groups
    residual_share: float | None  # sum_g mass * residual / sum_g mass * exact (None without groups)
    next_token_share: float | None  # the same for the next-token probe
    residual_r2: float | None  # held-out R^2 of the activations' probe (None when no probe was fitted)
    next_token_r2: float | None  # held-out R^2 of the next-token probe
    tol: float  # equality of beliefs
    pred_tol: float  # equality of next-token distributions
    split: dict  # by, test_fraction, seed: as ``interp probe``

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def rows(self) -> list[dict]:
        """One dict per group (the fields plus both shares)."""
        return [{**asdict(g), "next_token": list(g.next_token), "residual_share": g.residual_share,
                 "next_token_share": g.next_token_share} for g in self.groups]

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "groups"}
        return {**out, "n_groups": self.n_groups, "groups": self.rows()}


def belief_groups(beliefs: torch.Tensor, emission_matrix: torch.Tensor, tol: float = TOL,
                  pred_tol: float = PRED_TOL) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(class of each point [n, L], group of each class [c], next-token distribution of each class [c, V]) for
    beliefs [n, L, S]: classes are equal beliefs (within ``tol``), groups equal next-token distributions (within
    ``pred_tol``)."""
    flat = beliefs.reshape(-1, beliefs.shape[-1]).double()
    cls = group_rows(flat, tol)
    first = torch.zeros(int(cls.max()) + 1, dtype=torch.long).scatter_reduce_(
        0, cls, torch.arange(len(cls)), reduce="amin", include_self=False)
    pred = flat[first] @ emission_matrix.double().cpu()
    return cls.reshape(beliefs.shape[:2]), group_rows(pred, pred_tol), pred


def _mean_pairwise(means: torch.Tensor, w: torch.Tensor) -> float:
    """sum_{a<b} w_a w_b ||m_a - m_b|| / sum_{a<b} w_a w_b."""
    d = torch.cdist(means, means)
    ww = w[:, None] * w[None, :]
    iu = torch.triu_indices(len(w), len(w), 1)
    return float((ww[iu[0], iu[1]] * d[iu[0], iu[1]]).sum() / ww[iu[0], iu[1]].sum())


def beyond_separation(acts: torch.Tensor, beliefs: torch.Tensor, weight: torch.Tensor,
                       emission_matrix: torch.Tensor, *, test_fraction: float = 0.2, seed: int = 0,
                       ridge: float = 0.0, simplex: bool = True, tol: float = TOL,
                       pred_tol: float = PRED_TOL) -> BeyondResult:
    """Groups of equal next-token distribution with several beliefs, and how far apart the activations keep them.

    acts [n, L, d] (any hook, or several concatenated), beliefs [n, L, S] exact, weight [n] (the evaluation set's),
    emission_matrix [S, V] (``eta @ emission_matrix`` is the next-token distribution). Both probes are fitted by
    :func:`interp.interpret.probes.fit_probe` on the split :func:`split_by_sequence` draws from ``seed`` (as
    ``interp probe`` does); the class means average held-out points by their weights. With no group, no probe is
    fitted (R^2 None)."""
    if acts.ndim != 3 or beliefs.ndim != 3 or acts.shape[:2] != beliefs.shape[:2]:
        raise ValueError(f"activations {tuple(acts.shape)} and beliefs {tuple(beliefs.shape)} must be "
                         f"[n, L, d], [n, L, S]")
    E = emission_matrix.double().cpu()
    beliefs, weight = beliefs.double().cpu(), weight.double().cpu().reshape(-1)
    n, L, S = beliefs.shape
    if E.shape[0] != S:
        raise ValueError(f"emission_matrix must be [{S}, V], got {tuple(E.shape)}")
    cls, grp, pred = belief_groups(beliefs, E, tol, pred_tol)
    n_cls, n_grp = len(grp), int(grp.max()) + 1
    point_w = (weight[:, None].expand(n, L) / (weight.sum() * L)).reshape(-1)  # sums to 1 over points
    cls_mass = torch.zeros(n_cls, dtype=torch.float64).index_add_(0, cls.reshape(-1), point_w)
    size = torch.bincount(grp, minlength=n_grp)
    split = {"by": "sequence", "test_fraction": test_fraction, "seed": seed}
    kernel_dim = S - int(torch.linalg.matrix_rank(E, rtol=1e-12))
    many = [g for g in range(n_grp) if size[g] >= 2]
    if not many:
        return BeyondResult((), n_cls, n_grp, kernel_dim, 0.0, None, None, None, None, tol, pred_tol, split)

    train, test = split_by_sequence(n, test_fraction, torch.Generator().manual_seed(seed))
    next_tok = beliefs @ E  # [n, L, V] exact next-token distributions

    def predicted(x: torch.Tensor) -> tuple[torch.Tensor, float]:
        probe, scores = fit_probe(x, beliefs, weight, train=train, test=test, ridge=ridge,
                                  generator=torch.Generator().manual_seed(seed + 1), simplex=simplex)
        return probe.predict(x[test].reshape(-1, x.shape[-1])), scores.r2

    pred_res, r2_res = predicted(acts)
    pred_tok, r2_tok = predicted(next_tok)
    test_cls = cls[test].reshape(-1)
    test_w = (weight[test, None].expand(len(test), L)).reshape(-1)
    w_cls = torch.zeros(n_cls, dtype=torch.float64).index_add_(0, test_cls, test_w)

    def class_means(y: torch.Tensor) -> torch.Tensor:
        total = torch.zeros(n_cls, y.shape[-1], dtype=torch.float64).index_add_(0, test_cls, y * test_w[:, None])
        return total / w_cls.clamp_min(torch.finfo(torch.float64).tiny)[:, None]

    exact_m = class_means(beliefs[test].reshape(-1, S))
    res_m, tok_m = class_means(pred_res), class_means(pred_tok)
    groups = []
    for g in many:
        members = torch.nonzero(grp == g).reshape(-1)
        seen = members[w_cls[members] > 0]
        dist = [None, None, None]
        if len(seen) >= 2:
            dist = [_mean_pairwise(m[seen], w_cls[seen]) for m in (exact_m, res_m, tok_m)]
        groups.append(BeyondGroup(tuple(float(p) for p in pred[members[0]]), len(members), len(seen),
                                  float(cls_mass[members].sum()), *dist))
    groups.sort(key=lambda r: (-r.mass, r.next_token))
    scored = [r for r in groups if r.exact is not None]
    exact_total = sum(r.mass * r.exact for r in scored)
    share = (lambda attr: None if not scored or exact_total == 0
             else sum(r.mass * getattr(r, attr) for r in scored) / exact_total)
    return BeyondResult(tuple(groups), n_cls, n_grp, kernel_dim, sum(r.mass for r in groups), share("residual"),
                        share("next_token_probe"), r2_res, r2_tok, tol, pred_tol, split)


def beyond_next_token(run_dir: str | Path, *, hook: str = "all_layers", device="cpu", log=quiet) -> BeyondResult:
    """:func:`beyond_separation` on a run's activation cache (built if missing or stale): ``hook`` is a cached hook
    or ``"all_layers"``, the residual hooks ``interp probe`` concatenates; split, seed and ridge are those of the
    run's probe.json when it is up to date, else ``interp probe``'s defaults."""
    run_dir = Path(run_dir)
    cache = ensure_cache(run_dir, device=device, log=log)
    probe = load_probe_result(run_dir)
    hooks = (list(probe.all_layers["hooks"]) if probe is not None else residual_hooks(cache)) if hook == CONCAT \
        else [hook]
    for h in hooks:
        if h not in cache:
            raise ValueError(f"{run_dir}: hook {h!r} is not in its activation cache (it has {', '.join(cache.hooks)})")
    hmm = run_config_from_dict(read_config(run_dir)).process.build()
    _, grp, _ = belief_groups(cache.beliefs, hmm.emission_matrix)
    if torch.bincount(grp).max() < 2:  # no group (Mess3): nothing is fitted, so no activation need be loaded
        x = torch.zeros(*cache.beliefs.shape[:2], 0)
    else:
        x = torch.cat([cache[h].reshape(*cache[h].shape[:2], -1) for h in hooks], -1)
    log(f"{run_dir}: beyond the next token through {hook} ({len(hooks)} hooks)")
    out = beyond_separation(x, cache.beliefs, cache.weight, hmm.emission_matrix, **probe_settings(probe),
                            simplex=isinstance(hmm, HMM))
    cache.release()
    return out
