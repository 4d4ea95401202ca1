"""Run-level analysis: probes, attention, SSM spectrum and Belief Net recovery for one trained run,
and the comparison table across runs. Each step reads the run's activation cache and writes JSON
(plus safetensors for probe weights) beside the run."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from interp.hmm import HMM
from interp.hmm.matching import parameter_errors
from interp.interpret import attention as A
from interp.interpret import construction as K
from interp.interpret.cache import ActivationCache, build_cache, cache_is_fresh, load_cache, run_fingerprint
from interp.interpret.causal import causal_check
from interp.interpret.probes import best_hook, probe_hooks
from interp.io import read_json, read_tensors, temp_dir, write_json, write_tensors
from interp.progress import progress, quiet
from interp.rundir import (COMPARE_JSON, COMPARE_MD, CONFIG, CONSTRUCTION, MODEL, MODEL_META, PROBE, PROBE_WEIGHTS,
                           PROBES, RESULT, Manifest, claim, write_config)

PROBE_FORMAT = 4  # bump when what probe.json holds or how it is computed changes (4: trained positions only)
CONCAT = "all_layers"


def ensure_cache(run_dir: Path, *, device="cpu", log=lambda msg: None) -> ActivationCache:
    """The run's cache, built first if it is missing or stale."""
    if not cache_is_fresh(run_dir):
        log(f"{run_dir}: building the activation cache")
        build_cache(run_dir, device=device, log=log)
    return load_cache(run_dir, check=False)  # just checked, or just built


def residual_hooks(cache: ActivationCache) -> list[str]:
    """Hooks holding the residual stream between blocks or a state (not attention patterns), each stored tensor once.

    An MLP's output is not a residual stream, and ``hook_resid_mid`` (inside a block) is left out so that the
    concatenation is the paper's "every layer's residual stream" with the same width as without MLPs, and probes
    fitted before the cache kept it stay what a refit would give."""
    aliases = cache.meta.get("aliases", {})
    return [h for h in cache.hooks if "hook_pattern" not in h and h not in aliases
            and not h.endswith(("hook_resid_mid", "hook_mlp_out"))]


@dataclass(frozen=True)
class ProbeResult:
    """A run's belief probes, as ``probe.json`` holds them (R^2 pooled over belief coordinates, held-out
    sequences, weighted like the evaluation set)."""

    format: int  # PROBE_FORMAT when written
    run: str
    family: str
    config_hash: str  # of the run the probes were fitted to
    weights_sha256: str  # of its final weights
    evaluation_set: str  # every sequence weighted by probability, or sampled sequences
    split: dict  # how sequences were split: by, test_fraction, seed
    ridge: float
    r2: str  # what the R^2 values are
    hooks: dict  # hook -> its scores (r2, shuffled_r2, ...)
    all_layers: dict  # every residual hook concatenated: its hooks and scores
    best_hook: str
    best_r2: float
    causal: dict  # the causal check on the best hook (KL before / after steering, ...)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "ProbeResult":
        return cls(**data)


def probe_run(run_dir: str | Path, *, test_fraction: float = 0.2, ridge: float = 0.0, seed: int = 0,
              causal_points: int = 2000, device="cpu", log=quiet) -> ProbeResult:
    """Fit belief probes on every residual hook and on all of them concatenated; causal check on the best.

    Writes ``probe.json`` (scores) and ``probe.safetensors`` (``{hook}.coef`` [S, d], ``{hook}.intercept``), and
    records them in the run's manifest as the output ``probe`` of :func:`probe_inputs`."""
    from interp.training.checkpoint import load_model

    run_dir = Path(run_dir)
    cache = ensure_cache(run_dir, device=device, log=log)
    hooks = residual_hooks(cache)
    if not hooks:
        raise ValueError(f"{run_dir}: its activation cache holds no residual-stream hook to probe")
    acts = {h: cache[h].reshape(*cache[h].shape[:2], -1) for h in hooks}
    n_seq, n_pos = cache.beliefs.shape[:2]
    model, cfg = load_model(run_dir, device=device)
    hmm = cfg.process.build()
    simplex = isinstance(hmm, HMM)  # a GHMM's beliefs lie in the plane eta @ w = 1, not in a simplex
    log(f"{run_dir}: probes on {len(hooks)} hooks and on all of them concatenated ({n_seq} sequences x {n_pos} "
        f"positions, {test_fraction:.0%} held out)")
    t0 = time.perf_counter()
    results = {}
    for h in progress([*hooks, CONCAT], log, f"{run_dir.name}: probe"):
        x = torch.cat([acts[k] for k in hooks], -1) if h == CONCAT else acts[h]
        # one hook per call, with probe_hooks' own split and shuffle (both from ``seed``), so each can be reported
        results[h] = probe_hooks({h: x}, cache.beliefs, cache.weight, test_fraction=test_fraction, ridge=ridge,
                                 seed=seed, concat_name="", concat_hooks=[], simplex=simplex)[h]
    # the best residual-stream hook: an SSM's state alone misses the current token, which reaches the
    # output through the skip path, so steering the state cannot move the model as a belief change would
    best = best_hook({h: r for h, r in results.items() if "hook_state" not in h})
    log(f"{run_dir}: {len(results)} probes in {time.perf_counter() - t0:.1f} s; best hook {best} "
        f"(R^2 {results[best][1].r2:.4f}); causal check there at {min(causal_points, n_seq * n_pos)} points")
    t0 = time.perf_counter()
    probe = results[best][0]
    causal = causal_check(model, cache.tokens, cache.beliefs, acts[best], probe.coef_, probe.intercept_,
                          hmm.emission_matrix, hook=best, n_points=causal_points,
                          generator=torch.Generator().manual_seed(seed), bos_token=cache.meta.get("bos_token"))
    log(f"{run_dir}: causal check in {time.perf_counter() - t0:.1f} s; KL to the target belief's prediction "
        f"{causal['kl_target_before']:.2e} before the move, {causal['kl_target_after']:.2e} after")
    out = ProbeResult(
        format=PROBE_FORMAT, run=cfg.name, family=cfg.model.family, **run_fingerprint(run_dir),
        evaluation_set="every sequence, weighted by probability" if cache.exhaustive else "sampled sequences",
        split={"by": "sequence", "test_fraction": test_fraction, "seed": seed},
        ridge=ridge,
        r2="pooled over belief coordinates, held-out sequences, weighted like the evaluation set",
        hooks={h: results[h][1].to_dict() for h in hooks},
        all_layers={"hooks": hooks, **results[CONCAT][1].to_dict()},
        best_hook=best, best_r2=results[best][1].r2,
        causal=causal,
    )
    weights = {}
    for name, (p, _) in results.items():
        weights[f"{name}.coef"], weights[f"{name}.intercept"] = p.coef_, p.intercept_
    manifest = Manifest(run_dir)
    manifest.forget(PROBES)
    write_tensors(run_dir / PROBE_WEIGHTS, weights)
    write_json(run_dir / PROBE, out.to_dict())
    manifest.record(PROBES, {"format": PROBE_FORMAT, "config_hash": out.config_hash,
                             "weights_sha256": out.weights_sha256},
                    [run_dir / PROBE, run_dir / PROBE_WEIGHTS])
    return out


def probe_inputs(run_dir: Path) -> dict:
    """What a run's probes are made from (their fingerprint in the run's manifest)."""
    return {"format": PROBE_FORMAT, **run_fingerprint(run_dir)}


def load_probe_result(run_dir: Path) -> ProbeResult | None:
    """probe.json if the run's manifest records it as made from the run's current weights, intact; else None."""
    run_dir = Path(run_dir)
    if not Manifest(run_dir).is_fresh(PROBES, probe_inputs(run_dir)):
        return None
    return ProbeResult.from_dict(read_json(run_dir / PROBE))


def load_probe_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """probe.safetensors (``{hook}.coef``, ``{hook}.intercept``), checked against the SHA-256 the run's manifest
    recorded for it."""
    path = Path(run_dir) / PROBE_WEIGHTS
    Manifest(run_dir).verify(PROBES, path, remedy=f"refit the probes with `interp probe {run_dir}`")
    return read_tensors(path)


def probe_settings(probe: ProbeResult | None) -> dict:
    """``test_fraction``, ``seed`` and ``ridge`` of a run's probes (its up-to-date probe.json, from
    :func:`load_probe_result`), or :func:`probe_run`'s defaults where there is none: fits made beside the run's
    probes use these, so their R^2 values compare with probe.json's."""
    out = {"test_fraction": 0.2, "seed": 0, "ridge": 0.0}  # probe_run's defaults
    if probe is not None:
        out.update({k: probe.split[k] for k in ("test_fraction", "seed") if k in probe.split}, ridge=probe.ridge)
    return out


def attention_summary(cache: ActivationCache, hmm, *, fitted_decay: float | None = None) -> list[dict]:
    """Per layer and head: fixedness, decay fits, and the distance of the mean pattern to the construction's."""
    lam = K.analytic_decay(hmm)
    out = []
    for hook in cache.hooks:
        if "hook_pattern" not in hook:
            continue
        patterns = cache[hook]
        mean = A.mean_pattern(patterns, cache.weight)
        fixed = A.fixedness(patterns, cache.weight)
        L = mean.shape[-1]
        for head in range(mean.shape[0]):
            row = {"hook": hook, "head": head, **fixed[head], **A.describe_head(mean[head])}
            for label, value in (("analytic", lam), ("fitted", fitted_decay)):
                if value is not None:
                    row[f"distance_to_{label}"] = A.pattern_distance(mean[head], A.decay_pattern(value, L))
            out.append(row)
        cache.release(hook)
    return out


def ssm_summary(model, cache: ActivationCache, hmm, top: int = 4) -> list[dict]:
    """Per SSM layer: eigenvalues, each mode's share of the output variance, and Smat's zero-sum spectrum.

    A mode's share is var(h_i) ||C_i||^2 over the evaluation set (diagonal transitions), so a mode the
    model does not read from does not count as leading."""
    smat = [[z.real, z.imag] for z in K.zero_sum_operator_eigenvalues(hmm).tolist()]
    out = []
    for l, block in enumerate(model.blocks):
        ev = block.eigenvalues()
        row = {"layer": l, "transition": block.kind, "eigenvalues": [[z.real, z.imag] for z in ev.tolist()],
               "smat_zero_sum_eigenvalues": smat}
        if block.kind in ("diagonal", "complex"):
            state = cache[f"blocks.{l}.hook_state"].double()
            w = cache.weight[:, None].expand(state.shape[:2]).reshape(-1)
            flat = state.reshape(-1, state.shape[-1])
            mean = w @ flat
            var = w @ (flat - mean) ** 2
            C = block.C.detach().double().cpu()
            contrib = var * (C**2).sum(1)
            if block.kind == "complex":  # a mode is its (Re, Im) pair
                n = ev.shape[0]
                contrib = contrib[:n] + contrib[n:]
            share = contrib / contrib.sum()
            order = torch.argsort(share, descending=True, stable=True)[:top]
            row["leading"] = [{"eigenvalue": [ev[i].real.item(), ev[i].imag.item()], "share": float(share[i])}
                              for i in order]
            cache.release(f"blocks.{l}.hook_state")
        out.append(row)
    return out


@torch.no_grad()
def ssm_token_kernel(block, u: torch.Tensor, lags: int) -> torch.Tensor:
    """[lags, V, d_model] what a token's input ``u`` [V, d_model] adds to the layer's output k = 1..lags steps later
    (the state path only: ``C (A^k B u)``; lag 0 also has the direct path)."""
    a = block.transition().detach().double().cpu()
    bu = u.double() @ block.B.detach().double().cpu()
    C = block.C.detach().double().cpu()
    out = []
    if block.kind == "complex":
        n = a.shape[0]
        h = torch.complex(bu[:, :n], bu[:, n:])
        for _ in range(lags):
            h = h * a
            out.append(torch.cat([h.real, h.imag], -1) @ C)
    else:
        h = bu
        for _ in range(lags):
            h = h @ a.T if block.kind == "dense" else h * a
            out.append(h @ C)
    return torch.stack(out)


def ssm_effective_decay(model, coef: torch.Tensor, hmm, lags: int) -> dict:
    """How fast a token's effect on the probed belief fades in a 1-layer SSM, next to lambda.

    The belief-space kernel ``G_k[x] = coef @ (C A^k B W_E[x])`` (centred over tokens, since only differences
    between tokens move the belief) plays the role of ``lambda^k v[x]`` in the construction; its norm per lag,
    the decay fitted to those norms (log-linear, lags 1..lags), and its cosine with ``v[x]`` at each lag."""
    block = model.blocks[0]
    u = model.W_E.detach().double().cpu()
    G = ssm_token_kernel(block, u, lags) @ coef.double().T  # [lags, V, S]
    G = G - G.mean(1, keepdim=True)
    v = K.token_vectors(hmm)
    norms = G.flatten(1).norm(dim=1)
    k = torch.arange(1, lags + 1, dtype=torch.float64)
    slope = float(torch.linalg.lstsq(torch.stack([torch.ones_like(k), k], 1), torch.log(norms)[:, None]).solution[1])
    cos = (G.flatten(1) @ v.flatten()) / (norms * v.norm())
    return {"kernel_norm": norms.tolist(), "decay": math.exp(slope), "cosine_with_v": cos.tolist()}


def belief_net_summary(model, hmm) -> dict:
    """The learned HMM against the true one after matching states (only when the data is an HMM and the sizes
    agree)."""
    if not isinstance(hmm, HMM):
        return {"comparable": False, "reason": f"{hmm.name} is a generalised HMM: no emission form to match"}
    learned = model.get_hmm().to_emission()
    true = hmm.to_emission()
    if learned.C.shape != true.C.shape:
        return {"comparable": False, "reason": f"learned {tuple(learned.C.shape)} vs true {tuple(true.C.shape)} C"}
    return {"comparable": True, **parameter_errors(true, learned)}


def _nan_to_none(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x


def process_label(cfg) -> str:
    """``name(k=v, ...)`` with every parameter, defaults included (from the built HMM)."""
    hmm = cfg.process.build()
    params = ", ".join(f"{k}={v}" for k, v in hmm.params.items())
    return f"{hmm.name}({params})"


def analyse_run(run_dir: str | Path, *, construction: dict | None = None, device="cpu", log=lambda msg: None) -> dict:
    """Everything ``interp compare`` reports about one run (probes are reused when up to date)."""
    from interp.training.checkpoint import load_model

    run_dir = Path(run_dir)
    result = read_json(run_dir / RESULT)
    probe = load_probe_result(run_dir)
    if probe is None:
        log(f"{run_dir}: fitting probes")
        probe = probe_run(run_dir, device=device, log=log)
    cache = ensure_cache(run_dir, device=device, log=log)
    model, cfg = load_model(run_dir, device=device)
    hmm = cfg.process.build()
    row = {
        "run": cfg.name, "path": str(run_dir), "family": cfg.model.family, "process": process_label(cfg),
        "relative_loss": result["relative_loss"], "gap_fraction": result.get("gap_fraction"),
        "probe_hook": probe.best_hook, "probe_r2": probe.best_r2, "probe_r2_all_layers": probe.all_layers["r2"],
        "probe_r2_shuffled": probe.hooks[probe.best_hook]["shuffled_r2"],
        "causal": {k: probe.causal[k] for k in ("kl_target_before", "kl_target_after", "kl_target_random",
                                                   "share_closer", "change_r2")},
    }
    if any("hook_pattern" in h for h in cache.hooks):
        fitted = None if construction is None else construction.get("lambda_fitted")
        row["attention"] = attention_summary(cache, hmm, fitted_decay=fitted)
    if cfg.model.family == "ssm":
        row["ssm"] = ssm_summary(model, cache, hmm)
        hook = f"blocks.{len(model.blocks) - 1}.hook_resid_post"
        if len(model.blocks) == 1:
            coef = load_probe_weights(run_dir)[f"{hook}.coef"]
            row["ssm"][0]["effective"] = ssm_effective_decay(model, coef, hmm, cfg.train.context - 1)
    if cfg.model.family == "belief_net":
        row["belief_net"] = belief_net_summary(model, hmm)
    cache.release()
    return _nan_to_none(row)


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path, *, device="cpu", log=lambda msg: None) -> dict:
    """Analyse each run, build the construction once per process, write compare.json and compare.md."""
    from interp.training.checkpoint import load_model

    constructions: dict[str, dict] = {}
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"no run folder at {run_dir}")
        _, cfg = load_model(run_dir)
        label = process_label(cfg)
        if label not in constructions:
            from interp.hmm import beliefs as exact_beliefs
            from interp.interpret.cache import evaluation_set

            # the construction is the HMM's own: scored on every position of the context (as the hand-set
            # construction run is), not only on the positions a trained model's cache holds
            log(f"construction for {label}")
            hmm = cfg.process.build()
            data = evaluation_set(hmm, cfg.train.context, seed=cfg.seeds()["eval"])
            constructions[label] = _nan_to_none(K.construction_report(hmm, data.tokens, data.weight,
                                                                      exact_beliefs(hmm, data.tokens)))
        rows.append(analyse_run(run_dir, construction=constructions[label], device=device, log=log))
    out = {"construction": constructions, "runs": rows}
    out_dir = Path(out_dir)
    write_json(out_dir / COMPARE_JSON, out)
    from interp.io import atomic_write_bytes

    atomic_write_bytes(out_dir / COMPARE_MD, format_markdown(out).encode())
    return out


def _f(x, fmt="{:.4f}") -> str:
    return "-" if x is None else fmt.format(x)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def format_markdown(out: dict) -> str:
    lines = ["# Runs compared", "",
             "Probe R^2: held-out sequences, pooled over belief coordinates, weighted by sequence probability.",
             "Causal: mean KL from the HMM's prediction at the steered-to belief to the model's next-token "
             "distribution, before -> after moving the residual along the probe (random move of the same size "
             "in brackets).", ""]
    e2 = "{:.2e}"
    lines += _table(
        ["run", "family", "process", "relative loss", "probe R^2 (hook)", "all layers", "shuffled", "causal KL"],
        [[r["run"], r["family"], r["process"], _f(r["relative_loss"], "{:.6f}"),
          f"{_f(r['probe_r2'])} ({r['probe_hook']})", _f(r["probe_r2_all_layers"]), _f(r["probe_r2_shuffled"]),
          f"{_f(r['causal']['kl_target_before'], e2)} -> {_f(r['causal']['kl_target_after'], e2)} "
          f"({_f(r['causal']['kl_target_random'], e2)})"] for r in out["runs"]])
    lines += ["", "## Construction (scaled vector addition) per process", "",
              "Scored on every position of the context (the HMM's own object, like the hand-set construction run), "
              "not on the trained positions the runs' caches and probes cover: compare its R^2 with theirs "
              "knowing that.", ""]
    keys = ["lambda_analytic", "lambda_fitted", "r2_analytic", "r2_analytic_readout", "r2_fitted", "r2_matrix_power"]
    lines += _table(
        ["process", "lambda analytic", "lambda fitted", "R^2 analytic", "R^2 analytic + read-out", "R^2 fitted",
         "R^2 matrix power", "relative loss analytic", "relative loss fitted"],
        [[label, *(_f(k.get(key)) for key in keys), _f(k.get("relative_loss_analytic"), "{:.6f}"),
          _f(k.get("relative_loss_fitted"), "{:.6f}")] for label, k in out["construction"].items()])
    att = [(r, a) for r in out["runs"] for a in r.get("attention", [])]
    if att:
        lines += ["", "## Attention", "",
                  "Fixedness: mean std of each pattern entry across inputs; position share: the part of the "
                  "pattern's variance that position alone explains. Decay: geometric fit of the mean pattern, "
                  "leaving out the current (and previous) token where that fits better. TV: mean total-variation "
                  "distance per query row to the construction's (row-normalised) pattern.", ""]
        lines += _table(
            ["run", "hook", "head", "std", "position share", "current", "previous", "decay (excluded)",
             "TV to analytic", "TV to fitted"],
            [[r["run"], a["hook"], str(a["head"]), _f(a["mean_std"]), _f(a["position_share"]),
              _f(a["current_weight"]), _f(a["previous_weight"]),
              f"{_f(a['exclude_' + str(a['best_exclude'])]['decay'])} ({a['best_exclude']})",
              _f(a.get("distance_to_analytic", {}).get("tv")), _f(a.get("distance_to_fitted", {}).get("tv"))]
             for r, a in att])
    ssm = [(r, s) for r in out["runs"] for s in r.get("ssm", [])]
    if ssm:
        lines += ["", "## SSM spectrum", "",
                  "Leading eigenvalues: the modes carrying most of the layer's output variance. Effective decay: "
                  "the geometric rate at which a token's effect on the probed belief fades (fit over lags), with "
                  "the cosine of that effect with the construction's v[x] at lags 1, 2, 3.", ""]
        rows = []
        for r, s in ssm:
            eff = s.get("effective")
            rows.append([r["run"], str(s["layer"]),
                         ", ".join(f"{_cx(e['eigenvalue'])} ({e['share']:.2f})" for e in s.get("leading", [])) or "-",
                         _f(eff and eff["decay"]),
                         "-" if eff is None else ", ".join(f"{c:.3f}" for c in eff["cosine_with_v"][:3]),
                         ", ".join(_cx(z) for z in s["smat_zero_sum_eigenvalues"])])
        lines += _table(["run", "layer", "leading eigenvalues (share of output variance)", "effective decay",
                         "cosine with v", "Smat on zero-sum vectors"], rows)
    bn = [r for r in out["runs"] if "belief_net" in r]
    if bn:
        lines += ["", "## Belief Net against the true HMM (states matched)", ""]
        lines += _table(["run", "A Frobenius", "C Frobenius", "mu L1"],
                        [[r["run"], *(_f(r["belief_net"].get(k)) for k in ("A_frobenius", "C_frobenius", "mu_l1"))]
                         if r["belief_net"]["comparable"] else [r["run"], r["belief_net"]["reason"], "", ""]
                         for r in bn])
    return "\n".join(lines) + "\n"


def _cx(z) -> str:
    re_, im = z
    return f"{re_:.3f}" if abs(im) < 1e-9 else f"{re_:.3f}{im:+.3f}i"


def construction_inputs(process: dict, context: int, decay: str) -> dict:
    """What a construction run is made from (its fingerprint in the folder's manifest)."""
    return {"process": process, "context": context, "decay": decay}


def build_construction_run(process: dict, context: int, out_dir: str | Path, *, decay: str = "analytic",
                           name: str | None = None) -> dict:
    """Write the hand-set TransformerLens construction as a run folder that loads, caches, probes and
    compares like a trained run (it reads a BOS token first; ``model.json`` says which).

    The model is ``transformer_construction(..., bos=True)``: a TransformerConfig with ``bos = true``.
    ``decay="analytic"``: lambda and v from the HMM (needs Smat to be a scalar on zero-sum vectors);
    ``"fitted"``: lambda, v and the offset fitted by least squares to the exact beliefs of the evaluation set.
    The folder's manifest records it as the output ``construction`` of :func:`construction_inputs`."""
    import os
    import shutil

    from interp.hmm import beliefs as exact_beliefs
    from interp.interpret.cache import evaluation_set
    from interp.training.checkpoint import model_meta
    from interp.training.runconfig import run_config_from_dict

    if decay not in ("analytic", "fitted"):
        raise ValueError(f"decay must be 'analytic' or 'fitted', got {decay!r}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; remove it or choose another --out")
    pre = run_config_from_dict({"name": name or out_dir.name, "process": process,
                                "model": {"family": "transformer"}, "train": {"context": context}})
    hmm = pre.process.build()
    S, V = hmm.n_states, hmm.n_tokens
    data = evaluation_set(hmm, context, seed=pre.seeds()["eval"])
    eta = exact_beliefs(hmm, data.tokens)
    lam, vectors, offset = K.analytic_decay(hmm), None, None
    if decay == "analytic" and lam is None:
        raise ValueError(f"{process_label(pre)}: Smat is not a scalar on zero-sum vectors, so there is no analytic "
                         f"decay; use --decay fitted")
    if decay == "fitted":
        fit = K.fit_construction(data.tokens, eta, data.weight, n_tokens=V, bounds=(1e-3, 0.999))
        lam, vectors, offset = fit.decay, fit.vectors, fit.offset
    cfg = run_config_from_dict({**pre.to_dict(), "model": {"family": "transformer", "n_layers": 1, "n_heads": 1,
                                                           "d_model": 2 * S + 1, "d_head": S, "bos": True},
                                "train": {**pre.to_dict()["train"], "dtype": "float64"}})
    model = K.transformer_construction(hmm, context, lam, vectors, bos=True, offset=offset)
    with torch.no_grad():
        logits = model(K.to_tokens_with_bos(data.tokens, V))[:, 1:-1].double()
    nll = -torch.log_softmax(logits, -1).gather(-1, data.tokens[:, 1:, None]).squeeze(-1)
    loss = float(data.weight @ nll.mean(1))
    fitted = offset if offset is not None else hmm.pi
    eta_hat = K.construction_beliefs(hmm, data.tokens, decay=lam, vectors=vectors, offset=fitted)
    optimal = K.next_token_loss(hmm, data.tokens, data.weight, eta)
    construction = {"decay_source": decay, "decay": lam, "bos_token": V, "channels": {
        k: [s.start, s.stop] for k, s in K.transformer_channels(S).items()}}
    result = {
        "name": cfg.name, "family": "transformer", "construction": construction, "config_hash": cfg.hash(),
        "eval_loss": loss, "optimal_loss": optimal, "relative_loss": loss / optimal,
        "relative_loss_exact_readout": K.next_token_loss(hmm, data.tokens, data.weight, eta_hat) / optimal,
        "note": "eval_loss: the model's own logits (first-order linear read-out of the belief channels); "
                "exact_readout: the HMM's prediction from the simplex-projected construction belief; "
                "both over positions 1..L-1 of the evaluation set, weighted by sequence probability",
    }
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out_dir.parent, f".{out_dir.name}.tmp_")
    try:
        claim(tmp, "construction")
        write_tensors(tmp / MODEL, model.state_dict())
        write_json(tmp / MODEL_META, {**model_meta(cfg, V), "construction": construction})
        write_config(tmp, cfg.to_dict())
        write_json(tmp / RESULT, result)
        Manifest(tmp).record(CONSTRUCTION, construction_inputs(process, context, decay),
                             [tmp / name for name in (MODEL, MODEL_META, CONFIG, RESULT)])
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result
