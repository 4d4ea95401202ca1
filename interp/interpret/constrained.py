"""Constrained belief updates in detail: a trained model's first attention layer against the construction.

The first-order (constrained) update of :mod:`interp.interpret.construction` predicts three things about a
model that implements it: each token writes a vector parallel to ``v[x]`` (its OV vector, and its embedding
where the current token reaches the read-out through the skip path), the attention pattern falls off as
``lambda^(t-s)``, and a linear probe on the first layer reads the constrained beliefs better than the exact
ones (later layers can move towards the exact ones). This module measures each:

- :func:`compare_vectors`: learned token vectors, mapped into belief space by a probe's linear map, against
  the predicted ``v[x]`` (cosine per token; the best gain and the R^2 after it);
- :func:`compare_attention`: a head's mean pattern against :func:`attention.decay_pattern`;
- :func:`layer_r2`: per hook, held-out probe R^2 against the exact and the constrained beliefs;
- :func:`analyse_constrained`: all three for one run folder (trained or the hand-set construction).

Learned vectors are centred over tokens (weighted by their stationary probabilities) before they are compared:
a shift shared by every token is absorbed by biases and says nothing about the update.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from interp.interpret import attention as A
from interp.interpret import construction as K
from interp.interpret.metrics import pooled_r2
from interp.interpret.probes import probe_hooks

# Vectors shorter than this (after centring) have no direction: their cosine is None.
_TINY = 1e-12


def token_probabilities(hmm) -> torch.Tensor:
    """[V] stationary probability of each token, ``pi @ T[x] @ 1``."""
    return torch.einsum("i,xij->x", hmm.pi.cpu().double(), hmm.T.cpu().double())


@dataclass(frozen=True)
class VectorComparison:
    """Learned token vectors in belief space against the predicted ``v[x]`` (both [V, S], centred).

    cosine: per token (None where either vector is ~0); gain: the least-squares ``g`` in
    ``learned ~ g * predicted``; r2: pooled R^2 of ``learned`` against ``gain * predicted``, tokens weighted by
    probability; norm_ratio: ||learned|| / ||predicted|| (weighted), 0 when the learned vectors vanish."""

    what: str  # "ov" (a head's OV circuit) or "embedding" (the skip path)
    hook: str  # the residual hook whose linear map took the vectors into belief space
    cosine: list
    gain: float
    r2: float | None
    norm_ratio: float
    learned: list  # [V, S]
    predicted: list  # [V, S]

    @property
    def mean_cosine(self) -> float | None:
        values = [c for c in self.cosine if c is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_cosine": self.mean_cosine}


def compare_vectors(learned, predicted, token_prob, *, what: str, hook: str) -> VectorComparison:
    """Compare ``learned`` [V, S] (already in belief space) with ``predicted`` [V, S], both centred over tokens
    with weights ``token_prob`` [V] (see :class:`VectorComparison`)."""
    y = torch.as_tensor(learned).double()
    x = torch.as_tensor(predicted).double()
    w = torch.as_tensor(token_prob).double()
    if y.shape != x.shape or y.ndim != 2 or w.shape != (y.shape[0],):
        raise ValueError(f"learned {tuple(y.shape)} and predicted {tuple(x.shape)} must be [V, S] with "
                         f"{tuple(w.shape)} token weights [V]")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("token weights must be non-negative and not all zero")
    w = w / w.sum()
    y, x = y - w @ y, x - w @ x
    ny, nx = y.norm(dim=1), x.norm(dim=1)
    cos = [None if a < _TINY or b < _TINY else float(y[i] @ x[i] / (a * b))
           for i, (a, b) in enumerate(zip(ny.tolist(), nx.tolist()))]
    xx = float(w @ (x * x).sum(1))
    if xx < _TINY**2:
        raise ValueError("the predicted vectors are all ~0 after centring: nothing to compare against")
    gain = float(w @ (x * y).sum(1)) / xx
    yy = float(w @ (y * y).sum(1))
    row_w = w[:, None].expand_as(y).reshape(-1)
    r2 = None if yy < _TINY**2 else pooled_r2(y.reshape(-1, 1), (gain * x).reshape(-1, 1), row_w)
    return VectorComparison(what, hook, cos, gain, r2, math.sqrt(yy / xx), y.tolist(), x.tolist())


@dataclass(frozen=True)
class AttentionComparison:
    """One head's mean pattern (rows t >= 1) against the construction's ``decay^(t-s)`` (rows normalised)."""

    hook: str
    head: int
    decay: float  # the construction's decay compared against
    decay_source: str  # "analytic" (Smat on zero-sum vectors) or "fitted" (least squares to the exact beliefs)
    tv: float | None  # mean total-variation distance per query row; None for a negative decay (a signed target)
    frobenius: float | None
    learned_decay: float | None  # geometric fit of the mean pattern (all keys), None where it cannot be fitted
    learned_decay_r2: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def compare_attention(mean: torch.Tensor, decay: float, *, hook: str, decay_source: str) -> list[AttentionComparison]:
    """Per head of ``mean`` [heads, L, L] (see :func:`attention.mean_pattern`). For a negative ``decay`` (Mess3
    with x > 1/3) ``decay^(t-s)`` alternates in sign, which no softmax pattern can match: the distances are None."""
    if mean.ndim != 3 or mean.shape[-1] != mean.shape[-2]:
        raise ValueError(f"mean patterns must be [heads, L, L], got shape {tuple(mean.shape)}")
    target = A.decay_pattern(decay, mean.shape[-1]) if decay >= 0 else None
    out = []
    for h in range(mean.shape[0]):
        d = A.pattern_distance(mean[h], target) if target is not None else {"tv": None, "frobenius": None}
        fit = A.fit_decay(mean[h])
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731
        out.append(AttentionComparison(hook, h, float(decay), decay_source, d["tv"], d["frobenius"],
                                       finite(fit.decay), finite(fit.r2)))
    return out


@dataclass(frozen=True)
class LayerR2:
    """Held-out probe R^2 of one hook against the exact and the constrained (first-order) beliefs."""

    hook: str
    layer: int
    r2_exact: float
    r2_constrained: float

    @property
    def towards_exact(self) -> float:
        """r2_exact - r2_constrained: positive where the hook reads more like the exact belief."""
        return self.r2_exact - self.r2_constrained

    def to_dict(self) -> dict:
        return {**asdict(self), "towards_exact": self.towards_exact}


def hook_layer(hook: str) -> int:
    """``blocks.{l}.…`` -> l; ``hook_embed`` -> -1 (before the first layer)."""
    parts = hook.split(".")
    if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
        return int(parts[1])
    return -1


def layer_r2(acts: dict[str, torch.Tensor], exact: torch.Tensor, constrained: torch.Tensor, weight=None, *,
             known_exact: dict[str, float] | None = None, simplex: bool = True,
             settings: dict | None = None) -> list[LayerR2]:
    """Per hook of ``acts`` ({hook: [n, L, d]}), probes onto ``exact`` and ``constrained`` beliefs [n, L, S] with
    the run's probe split, seed and ridge (``settings``: :func:`interp.interpret.analyse.probe_settings`; None:
    ``interp probe``'s defaults), held-out R^2. ``known_exact`` gives R^2 values already fitted with those
    settings (probe.json), which are reused."""
    from interp.interpret.analyse import probe_settings

    known_exact = known_exact or {}
    settings = probe_settings(None) if settings is None else settings
    out = []
    for hook, x in acts.items():
        kw = dict(**settings, concat_name="", concat_hooks=[], simplex=simplex)
        r_c = probe_hooks({hook: x}, constrained, weight, **kw)[hook][1].r2
        r_e = known_exact[hook] if hook in known_exact else probe_hooks({hook: x}, exact, weight, **kw)[hook][1].r2
        out.append(LayerR2(hook, hook_layer(hook), float(r_e), float(r_c)))
    return out


# ----------------------------------------------------------------------------- learned vectors of a model
def _first_attention_hook(hooks: list[str]) -> str:
    """The residual hook right after the first attention layer (before its MLP, where there is one)."""
    for name in ("blocks.0.hook_resid_mid", "blocks.0.hook_resid_post"):
        if name in hooks:
            return name
    raise ValueError(f"no first-layer residual hook among {hooks}")


@torch.no_grad()
def learned_token_vectors(model, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(embedding [V, d_model], OV [heads, V, d_model]) of the first attention layer, float64, or None for a
    family without attention.

    TransformerLens models: the OV vector of token x in head h is ``ln1(W_E[x] + W_pos[p]) @ W_V[0, h] @ W_O[0, h]``
    averaged over the trained real-token positions p (BOS's own position and the context's untrained last one left
    out, as in the cache: :func:`interp.interpret.cache.evaluation_length`); without normalisation the position
    part is the same for every token and centring removes it. FixedAttentionModel: ``W_E[x] @ W_V @ W_O``."""
    from interp.interpret.cache import evaluation_length

    family = getattr(model, "family", None)
    if family == "fixed_attention":
        attn = model.blocks[0].attn
        emb = model.W_E.detach().double().cpu()
        return emb, (emb @ attn.W_V.detach().double().cpu() @ attn.W_O.detach().double().cpu())[None]
    if family != "transformer":
        return None
    emb = model.W_E.detach().double().cpu()[:n_tokens]
    pos = model.W_pos.detach().double().cpu()
    if getattr(model, "bos_token", None) is not None:
        pos = pos[1:]
    pos = pos[:evaluation_length(pos.shape[0])]  # the last position never gets a gradient
    ln1 = model.blocks[0].ln1
    dtype = model.W_E.dtype
    resid = (emb[:, None, :] + pos[None]).to(dtype=dtype, device=model.W_E.device)  # [V, P, d]
    normed = ln1(resid).double().cpu().mean(1)  # [V, d]
    W_V = model.W_V[0].detach().double().cpu()  # [heads, d, d_head]
    W_O = model.W_O[0].detach().double().cpu()  # [heads, d_head, d]
    return emb, torch.einsum("vd,hde,hef->hvf", normed, W_V, W_O)


def map_vectors(vectors: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """[..., d] residual-stream vectors -> [..., S] through a probe's linear part ``coef`` [S, d] (the intercept
    is a shift shared by every token: centring removes it)."""
    return vectors.double() @ coef.double().cpu().T


# ----------------------------------------------------------------------------- one run
@dataclass(frozen=True)
class ConstrainedAnalysis:
    """Everything :func:`analyse_constrained` measures for one run."""

    run: str
    family: str
    map_target: str  # what the linear map onto belief space was fitted to: "exact" or "constrained"
    map_hook: str | None
    decay: float | None  # the construction's decay (analytic where Smat is a scalar on zero-sum vectors)
    decay_source: str
    r2_constrained_vs_exact: float  # how close first order is to the exact beliefs on this evaluation set
    embedding: VectorComparison | None
    ov: list  # [VectorComparison] per head of the first attention layer
    attention: list  # [AttentionComparison] per attention hook and head
    layers: list  # [LayerR2] per layer's output (and the first attention's output)

    def to_dict(self) -> dict:
        return {"run": self.run, "family": self.family, "map_target": self.map_target, "map_hook": self.map_hook,
                "decay": self.decay, "decay_source": self.decay_source,
                "r2_constrained_vs_exact": self.r2_constrained_vs_exact,
                "embedding": None if self.embedding is None else self.embedding.to_dict(),
                "ov": [c.to_dict() for c in self.ov], "attention": [a.to_dict() for a in self.attention],
                "layers": [r.to_dict() for r in self.layers]}


def _layer_hooks(hooks: list[str]) -> list[str]:
    """The output of every layer (``blocks.{l}.hook_resid_post``), with the first attention's output first when a
    block has an MLP after it."""
    out = [h for h in hooks if h == "blocks.0.hook_resid_mid"]
    return out + sorted((h for h in hooks if h.startswith("blocks.") and h.endswith(".hook_resid_post")),
                        key=hook_layer)


def analyse_constrained(run_dir: str | Path, *, map_target: str = "exact", device="cpu",
                        log=lambda msg: None) -> ConstrainedAnalysis:
    """The constrained-update comparison for one run folder (probes, cache and model as ``interp probe`` left them).

    ``map_target="exact"`` maps learned vectors through the run's own probe (onto the exact beliefs) at the first
    attention layer's output; ``"constrained"`` fits that map (:mod:`interp.interpret.probes`) onto the
    constrained beliefs instead, which is exact for a model that implements the construction."""
    from interp.interpret.analyse import (ensure_cache, load_probe_result, load_probe_weights, probe_settings,
                                          residual_hooks)
    from interp.hmm import HMM
    from interp.training.checkpoint import load_model

    if map_target not in ("exact", "constrained"):
        raise ValueError(f"map_target must be 'exact' or 'constrained', got {map_target!r}")
    run_dir = Path(run_dir)
    cache = ensure_cache(run_dir, device=device, log=log)
    model, cfg = load_model(run_dir, device=device)
    hmm = cfg.process.build()
    simplex = isinstance(hmm, HMM)
    V = hmm.n_tokens
    tokens, exact, weight = cache.tokens, cache.beliefs, cache.weight
    constrained = K.construction_beliefs(hmm, tokens)
    row_w = weight[:, None].expand(exact.shape[:2])
    r2_first_order = pooled_r2(exact, constrained, row_w)

    decay, source = K.analytic_decay(hmm), "analytic"
    if decay is None:
        decay, source = K.fit_construction(tokens, exact, weight, n_tokens=V).decay, "fitted"

    # the probes' hooks leave hook_resid_mid out, but with MLPs it is where the first attention's update lands
    hooks = [*residual_hooks(cache), *(h for h in cache.hooks if h == "blocks.0.hook_resid_mid")]
    layer_hooks = _layer_hooks(hooks)
    probe = load_probe_result(run_dir)
    settings = probe_settings(probe)  # the run's own split, seed and ridge, so reused R^2 values compare
    known = {} if probe is None else {h: s["r2"] for h, s in probe.hooks.items()}
    acts = {h: cache[h].reshape(*cache[h].shape[:2], -1) for h in layer_hooks}
    embedding, ov, map_hook, coef = None, [], None, None
    vectors = learned_token_vectors(model, V) if layer_hooks else None
    if vectors is not None:
        map_hook = _first_attention_hook(layer_hooks)
        if map_target == "exact" and probe is not None and map_hook in probe.hooks:
            coef = load_probe_weights(run_dir)[f"{map_hook}.coef"]
        else:
            target = exact if map_target == "exact" else constrained
            fitted, scores = probe_hooks({map_hook: acts[map_hook]}, target, weight, **settings, concat_name="",
                                         concat_hooks=[], simplex=simplex)[map_hook]
            coef = fitted.coef_
            if map_target == "exact":  # the same fit layer_r2 would make
                known[map_hook] = scores.r2
    log(f"{run_dir.name}: probes onto the constrained beliefs at {len(acts)} hooks")
    layers = layer_r2(acts, exact, constrained, weight, known_exact=known, simplex=simplex, settings=settings)

    if vectors is not None:
        predicted, p_x = K.token_vectors(hmm), token_probabilities(hmm)
        emb, ov_vectors = vectors
        if getattr(cfg.model, "skip", True):  # without a skip path the embedding never reaches the map's hook
            embedding = compare_vectors(map_vectors(emb, coef), predicted, p_x, what="embedding", hook=map_hook)
        ov = [compare_vectors(map_vectors(o, coef), predicted, p_x, what="ov", hook=map_hook) for o in ov_vectors]

    attention = []
    for hook in cache.hooks:
        if "hook_pattern" in hook:
            mean = A.mean_pattern(cache[hook], weight)
            attention += compare_attention(mean, decay, hook=hook, decay_source=source)
            cache.release(hook)
    cache.release()
    return ConstrainedAnalysis(cfg.name, cfg.model.family, map_target, map_hook, decay, source, r2_first_order,
                               embedding, ov, attention, layers)
