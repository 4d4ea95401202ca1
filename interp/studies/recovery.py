"""Parameter recovery: a Belief Net, Baum-Welch (hmmlearn) and spectral learning fitted to the same data.

For each seed a true HMM is drawn from the ``cyclic`` family, with a training set and a held-out set; each
method is fitted on the training set and scored on the held-out set by NLL per token (first token
included) against the true model's. Belief Net and Baum-Welch record held-out NLL against wall-clock time
(the clock runs only while fitting). Parameters are compared after matching states (Hungarian on emission
rows). ``interp recover runs/<name>.toml`` runs it and writes ``runs/<name>/recovery.json``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from interp import hmm as H
from interp.config import ConfigError, check_folder_name, load, load_config, to_dict
from interp.hmm.filtering import flush_denormals
from interp.hmm.matching import parameter_errors
from interp.models.belief_net import BeliefNet, initial_logits
from interp.models.configs import check_belief_net_init, check_init_scale


@dataclass(frozen=True)
class TrueHMMConfig:
    """The ``cyclic`` family (see ``interp processes``); the seed of each run draws its own HMM."""

    n_states: int = 64
    n_tokens: int = 128
    shift_weight: float = 0.9  # A = shift_weight * (shift i -> i+1) + the rest sparse random
    transition_nnz: int = 4  # nonzeros per transition row
    emission_nnz: int = 4  # nonzeros per emission row


@dataclass(frozen=True)
class DataConfig:
    """Sequences sampled from each seed's true HMM: the same for every method."""

    n_train: int = 4000  # training sequences
    n_heldout: int = 500  # held-out sequences, for the NLL every method is scored by
    length: int = 256  # tokens per sequence


@dataclass(frozen=True)
class BeliefNetFit:
    """How the Belief Net is fitted (Adam(W) on the exact gradient of the NLL)."""

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 0.05
    batch_size: int = 0  # 0: full batch
    max_steps: int = 500
    max_seconds: float = 600.0
    eval_every: int = 10  # steps between held-out evaluations (not timed)
    # "random" | "near_uniform" | "spectral" | "truth" (interp.models.belief_net.initial_logits)
    init: str = "random"
    init_scale: float = 1.0  # std of random logits; 100 times the noise of "near_uniform"
    restarts: int = 1  # independent inits; the best training likelihood is kept
    # "cosine": the learning rate decays to 0 over max_steps, so minibatch noise dies out at the end
    lr_schedule: Literal["constant", "cosine"] = "constant"

    def __post_init__(self):
        check_belief_net_init(self.init)


@dataclass(frozen=True)
class BaumWelchFit:
    """hmmlearn's EM, one run per implementation, started where the Belief Net starts."""

    implementations: tuple[str, ...] = ("scaling",)  # hmmlearn's; "log" is its default
    max_iter: int = 200
    max_seconds: float = 1800.0
    tol_per_token: float = 1e-5  # stop when the training log-likelihood per token improves by less


@dataclass(frozen=True)
class AblationConfig:
    """Belief Net initialisations to compare (each on every seed)."""

    random_scales: tuple[float, ...] = ()
    near_uniform: bool = False
    spectral: bool = False
    restarts: int = 0  # > 1: a run keeping the best of this many random inits
    # a control, not a method: started at the true parameters, where the fit ends is the floor for this
    # optimiser setting (estimation error from the finite training set plus the optimiser's own noise)
    from_truth: bool = False


SPECTRAL_MAX_ENTRIES = 2**27  # windowed third moments held in float64: 1 GiB


@dataclass(frozen=True)
class RecoveryConfig:
    """A recovery study: per seed a true HMM and its data, every method fitted and scored."""

    name: str = "recovery"  # the study's folder name; the TOML file's stem when left out
    seeds: tuple[int, ...] = tuple(range(10))  # each draws its own true HMM and data
    epsilon: float = 1e-3  # nats/token from the true model's held-out NLL that counts as recovered
    device: str = "cpu"  # where the Belief Net is fitted: "cpu" or "cuda"
    hmm: TrueHMMConfig = field(default_factory=TrueHMMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    belief_net: BeliefNetFit = field(default_factory=BeliefNetFit)
    baum_welch: BaumWelchFit = field(default_factory=BaumWelchFit)
    spectral: bool = True
    # moments over windows of this many tokens (rank min(S, V^window)), for the observable-operator baseline and
    # the spectral start; 1 is single tokens, which cannot represent an overcomplete HMM (V < S)
    spectral_window: int = 1
    ablation: AblationConfig = field(default_factory=AblationConfig)

    def __post_init__(self):
        check_folder_name(self.name)
        for key, v in (("hmm.n_states", self.hmm.n_states), ("hmm.n_tokens", self.hmm.n_tokens),
                       ("data.n_train", self.data.n_train), ("data.n_heldout", self.data.n_heldout),
                       ("belief_net.max_steps", self.belief_net.max_steps),
                       ("belief_net.eval_every", self.belief_net.eval_every),
                       ("belief_net.restarts", self.belief_net.restarts), ("baum_welch.max_iter", self.baum_welch.max_iter)):
            if v < 1:
                raise ConfigError(f"{key} must be >= 1, got {v}")
        if self.data.length < 3:
            raise ConfigError(f"data.length must be >= 3 (spectral learning uses triples), got {self.data.length}")
        w = self.spectral_window
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ConfigError(f"spectral_window must be an integer >= 1, got {w!r}")
        moments = self.spectral or self.belief_net.init == "spectral" or self.ablation.spectral
        if moments and self.data.length < 2 * w + 1:
            raise ConfigError(f"data.length must be >= 2 spectral_window + 1 = {2 * w + 1}, got {self.data.length}")
        if moments and self.hmm.n_tokens ** (2 * w + 1) > SPECTRAL_MAX_ENTRIES:
            raise ConfigError(f"spectral_window {w} needs V^(2 window + 1) = {self.hmm.n_tokens ** (2 * w + 1):,} "
                              f"moment entries, over the {SPECTRAL_MAX_ENTRIES:,} allowed")
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        for i, seed in enumerate(self.seeds):
            if seed < 0:  # the true HMM's generator refuses it, deep inside the study
                raise ConfigError(f"seeds[{i}] must be >= 0, got {seed}")
            if seed in self.seeds[:i]:  # each seed's results are stored by seed: a repeat is not a new sample
                raise ConfigError(f"seeds lists {seed} twice (seeds[{self.seeds.index(seed)}] and seeds[{i}])")
        check_init_scale(self.belief_net.init_scale, "belief_net.init_scale")
        for i, scale in enumerate(self.ablation.random_scales):
            check_init_scale(scale, f"ablation.random_scales[{i}]")
        if self.ablation.restarts < 0:
            raise ConfigError(f"ablation.restarts must be >= 0, got {self.ablation.restarts}")
        for key, v in (("epsilon", self.epsilon), ("belief_net.lr", self.belief_net.lr),
                       ("belief_net.max_seconds", self.belief_net.max_seconds),
                       ("baum_welch.max_seconds", self.baum_welch.max_seconds)):
            if not v > 0:
                raise ConfigError(f"{key} must be > 0, got {v}")
        if self.belief_net.batch_size < 0:
            raise ConfigError(f"belief_net.batch_size must be >= 0, got {self.belief_net.batch_size}")
        bad = [i for i in self.baum_welch.implementations if i not in ("scaling", "log")]
        if bad or not self.baum_welch.implementations:
            raise ConfigError(f"baum_welch.implementations must list 'scaling' and/or 'log', got "
                              f"{list(self.baum_welch.implementations)}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        self.true_hmm(self.seeds[0])  # the family's own checks (nnz against the sizes)

    def to_dict(self) -> dict:
        return to_dict(self)

    def true_hmm(self, seed: int) -> H.HMM:
        h = self.hmm
        return H.get_process("cyclic", n_states=h.n_states, n_tokens=h.n_tokens, seed=seed,
                             shift_weight=h.shift_weight, transition_nnz=h.transition_nnz,
                             emission_nnz=h.emission_nnz)


def recovery_config_from_dict(data: dict, *, default_name: str | None = None) -> RecoveryConfig:
    """Validate a parsed recovery TOML (or a saved config.json) into a RecoveryConfig."""
    return load(RecoveryConfig, data, default_name=default_name)


def load_recovery_config(path: str | Path) -> RecoveryConfig:
    return load_config(path, RecoveryConfig)


# ----------------------------------------------------------------------------- Belief Net
def _seed_stream(seed: int, label: str) -> int:
    return int(np.random.SeedSequence([seed, sum(map(ord, label))]).generate_state(1)[0])


def fit_belief_net(train: torch.Tensor, heldout: torch.Tensor, logits, fit: BeliefNetFit, *, seed: int,
                   dtype=torch.float32) -> dict:
    """Adam(W) on the negative log-likelihood of a :class:`BeliefNet` started at ``logits`` (mu, A, C), with the
    exact gradient by expected counts; returns the model, its learned (mu, A, C), the curve of held-out NLL per
    token (the exact filter's, first token included) against fitting time, and the final training NLL per token."""
    device = train.device
    model = BeliefNet.from_logits(*(x.to(device=device, dtype=dtype) for x in logits), n_ctx=train.shape[1])
    params = [model.mu_logits, model.A_logits, model.C_logits]
    opt_cls = torch.optim.AdamW if fit.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(params, lr=fit.lr)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=fit.max_steps)
             if fit.lr_schedule == "cosine" else None)
    g = torch.Generator(device="cpu").manual_seed(seed)
    n_tok_train, n_tok_held = train.numel(), heldout.numel()

    def heldout_nll() -> float:
        return float(-model.log_likelihood(heldout).sum() / n_tok_held)

    curve = [(0.0, 0, heldout_nll())]
    elapsed, step = 0.0, 0
    while step < fit.max_steps and elapsed < fit.max_seconds:
        t0 = time.perf_counter()
        batch = train if fit.batch_size == 0 else train[torch.randint(train.shape[0], (fit.batch_size,), generator=g)]
        grads = model.log_likelihood_gradient(batch)
        for p, g_ in zip(params, (grads.mu, grads.A, grads.C)):
            p.grad = -g_ / batch.numel()  # the gradient of the mean NLL per token
        opt.step()
        if sched is not None:
            sched.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed += time.perf_counter() - t0
        step += 1
        if step % fit.eval_every == 0 or step == fit.max_steps:
            curve.append((elapsed, step, heldout_nll()))
    train_nll = float(-model.log_likelihood(train).sum() / n_tok_train)
    if curve[-1][1] != step:
        curve.append((elapsed, step, heldout_nll()))
    em = model.emission_form()
    return {"model": model, "params": H.EmissionForm(em.mu.cpu(), em.A.cpu(), em.C.cpu()), "curve": curve,
            "train_nll": train_nll, "steps": step, "seconds": elapsed, "final_lr": float(opt.param_groups[0]["lr"])}


# ----------------------------------------------------------------------------- Baum-Welch
def fit_baum_welch(train: np.ndarray, heldout: np.ndarray, init: H.EmissionForm, fit: BaumWelchFit,
                   implementation: str) -> dict:
    """hmmlearn's CategoricalHMM from ``init``, one EM iteration per ``fit`` call so that held-out NLL can
    be recorded against fitting time; stops when the training log-likelihood per token improves by less than
    ``tol_per_token`` (hmmlearn's own ``tol`` is on the total, which with 10^6 tokens rarely stops it)."""
    from hmmlearn.hmm import CategoricalHMM

    S, V = init.C.shape
    n_train, L = train.shape
    X, lengths = train.reshape(-1, 1), [L] * n_train
    Xh, lengths_h = heldout.reshape(-1, 1), [heldout.shape[1]] * heldout.shape[0]
    model = CategoricalHMM(n_components=S, n_features=V, n_iter=1, tol=0.0, init_params="", params="ste",
                           implementation=implementation)
    model.startprob_, model.transmat_, model.emissionprob_ = (np.asarray(x, dtype=np.float64)
                                                              for x in (init.mu, init.A, init.C))
    score = lambda m, x, lens: float(m.score(x, lens))  # noqa: E731
    curve = [(0.0, 0, -score(model, Xh, lengths_h) / heldout.size)]
    elapsed, prev, it, stopped = 0.0, -math.inf, 0, "max_iter"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hmmlearn warns on every one-iteration fit
        while it < fit.max_iter:
            if elapsed >= fit.max_seconds:
                stopped = "max_seconds"
                break
            t0 = time.perf_counter()
            model.fit(X, lengths)
            elapsed += time.perf_counter() - t0
            it += 1
            ll = model.monitor_.history[-1] / train.size  # before this iteration's M-step
            curve.append((elapsed, it, -score(model, Xh, lengths_h) / heldout.size))
            if ll - prev < fit.tol_per_token:
                stopped = "converged"
                break
            prev = ll
    params = H.EmissionForm(*(torch.as_tensor(x, dtype=torch.float64)
                              for x in (model.startprob_, model.transmat_, model.emissionprob_)))
    train_nll = -score(model, X, lengths) / train.size
    return {"params": params, "curve": curve, "train_nll": train_nll, "iterations": it, "seconds": elapsed,
            "stopped": stopped}


# ----------------------------------------------------------------------------- one seed
def time_to_reach(curve: list[tuple[float, int, float]], target: float) -> float | None:
    """First fitting time at which the held-out NLL is <= target (None if never)."""
    return next((t for t, _, nll in curve if nll <= target), None)


def _summary(result: dict, true: H.EmissionForm, true_nll: float, epsilon: float) -> dict:
    final = result["curve"][-1][2]
    out = {"heldout_nll": final, "excess_nll": final - true_nll, "train_nll": result["train_nll"],
           "seconds": result["seconds"], "recovered": final - true_nll <= epsilon,
           "time_to_epsilon": time_to_reach(result["curve"], true_nll + epsilon),
           "curve": [list(c) for c in result["curve"]], **parameter_errors(true, result["params"])}
    for k in ("steps", "iterations", "stopped"):
        if k in result:
            out[k] = result[k]
    return out


def study_data(cfg: RecoveryConfig, seed: int) -> tuple[H.HMM, torch.Tensor, torch.Tensor]:
    """A seed's true HMM, training and held-out tokens (CPU): the same for every method and every run."""
    hmm = cfg.true_hmm(seed)
    train = H.sample(hmm, cfg.data.n_train, cfg.data.length, seed=_seed_stream(seed, "train")).cpu()
    heldout = H.sample(hmm, cfg.data.n_heldout, cfg.data.length, seed=_seed_stream(seed, "heldout")).cpu()
    return hmm, train, heldout


def fit_spectral(train: torch.Tensor, heldout: torch.Tensor, n_states: int, n_tokens: int, window: int):
    """HKZ observable operators over ``window``-token windows at rank min(S, V^window): (result with the held-out
    NLL per token, the moments it was fitted to, for a spectral start to reuse)."""
    from interp.baselines import spectral as SP

    t0 = time.perf_counter()
    rank = min(n_states, n_tokens ** window)
    moments = SP.empirical_moments(train, n_tokens, window=window)
    model = SP.SpectralHMM.fit(moments, rank)
    seconds = time.perf_counter() - t0
    nll = float(-model.log_likelihood(heldout).sum() / heldout.numel())
    return {"rank": rank, "window": window, "heldout_nll": nll, "seconds": seconds}, moments


@dataclass(frozen=True)
class RecoverySeed:
    """One seed of a study, as ``seeds/seed_*.json`` holds it (NLL in nats/token, first token included)."""

    seed: int
    true_heldout_nll: float  # the true HMM's, on the held-out set
    true_train_nll: float
    methods: dict[str, dict]  # method -> its scores (heldout_nll, excess_nll, recovered, curve, errors, ...)
    speedup: dict  # how much sooner the Belief Net reaches Baum-Welch's final held-out NLL

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "RecoverySeed":
        return cls(**data)


def run_seed(cfg: RecoveryConfig, seed: int, log: Callable[[str], None] = lambda m: None) -> "RecoverySeed":
    device = torch.device(cfg.device)
    hmm, train, heldout = study_data(cfg, seed)
    true = hmm.to_emission()
    S, V = hmm.n_states, hmm.n_tokens
    true_nll = float(-H.log_likelihood(hmm, heldout).sum() / heldout.numel())
    true_train_nll = float(-H.log_likelihood(hmm, train).sum() / train.numel())
    methods: dict[str, dict] = {}

    needs_spectral = cfg.belief_net.init == "spectral" or cfg.ablation.spectral
    spectral_params, spectral_start, moments = None, None, None
    if cfg.spectral:
        res, moments = fit_spectral(train, heldout, S, V, cfg.spectral_window)
        nll = res["heldout_nll"]
        methods["spectral"] = {**res, "excess_nll": nll - true_nll, "recovered": nll - true_nll <= cfg.epsilon}
        window = f", {cfg.spectral_window}-token windows" if cfg.spectral_window > 1 else ""
        log(f"seed {seed}: spectral (rank {res['rank']}{window}) held-out NLL {nll:.4f} vs true {true_nll:.4f}")
    if needs_spectral:
        from interp.baselines import spectral as SP

        w = cfg.spectral_window
        if moments is None:
            moments = SP.empirical_moments(train, V, window=w)
        k = min(S, V ** w)
        rec = SP.fit_emission_form(moments, k, generator=torch.Generator().manual_seed(seed))
        spectral_params = rec.params
        # how its eigenvectors were found (a collapsing refinement is survived, and said)
        spectral_start = {"refinement": rec.refinement, "start": rec.start, "sweeps": rec.sweeps}
        if S > k:  # a rank-k estimate has k states: pad with copies so the Belief Net keeps S states
            reps = math.ceil(S / k)
            idx = torch.arange(S) % k
            A = spectral_params.A[idx][:, idx] / reps
            spectral_params = H.EmissionForm(spectral_params.mu[idx] / reps, A / A.sum(1, keepdim=True),
                                             spectral_params.C[idx])

    def bn(label: str, init: str, scale: float, restarts: int, stream: str | None = None) -> None:
        runs = []
        for r in range(restarts):
            g = torch.Generator().manual_seed(_seed_stream(seed, f"{stream or label}/{r}"))
            logits = initial_logits(S, V, init, scale, g, spectral=spectral_params, truth=true)
            runs.append(fit_belief_net(train.to(device), heldout.to(device), logits, cfg.belief_net, seed=seed))
        best = min(runs, key=lambda r: r["train_nll"])
        # the other restarts cost their time too: count it as spent before the kept one
        other = sum(r["seconds"] for r in runs) - best["seconds"]
        best = {**best, "seconds": best["seconds"] + other,
                "curve": [(t + other, s, n) for t, s, n in best["curve"]]}
        methods[label] = _summary(best, true, true_nll, cfg.epsilon)
        if init == "spectral":
            methods[label]["spectral_start"] = spectral_start
        m = methods[label]
        log(f"seed {seed}: {label} held-out NLL {m['heldout_nll']:.4f} (excess {m['excess_nll']:.2e}) in "
            f"{m['seconds']:.1f} s; A err {m['A_frobenius']:.3f}, C err {m['C_frobenius']:.3f}")

    fit = cfg.belief_net
    bn("belief_net", fit.init, fit.init_scale, fit.restarts)
    ab = cfg.ablation
    for scale in ab.random_scales:
        bn(f"belief_net/random_{scale:g}", "random", scale, 1)
    if ab.near_uniform:
        # the random stream keeps the name it had when the init was called "uniform", and so its draws
        bn("belief_net/near_uniform", "near_uniform", fit.init_scale, 1, stream="belief_net/uniform")
    if ab.spectral:
        bn("belief_net/spectral", "spectral", 0.0, 1)
    if ab.restarts > 1:
        bn(f"belief_net/best_of_{ab.restarts}", "random", fit.init_scale, ab.restarts)
    if ab.from_truth:
        bn("belief_net/from_truth", "truth", 0.0, 1)

    # Baum-Welch starts where the main Belief Net started
    g = torch.Generator().manual_seed(_seed_stream(seed, "belief_net/0"))  # the same draw as bn()'s first
    init = [torch.softmax(x, -1) for x in initial_logits(S, V, fit.init, fit.init_scale, g, spectral=spectral_params,
                                                         truth=true)]
    for impl in cfg.baum_welch.implementations:
        res = fit_baum_welch(train.numpy(), heldout.numpy(), H.EmissionForm(*init), cfg.baum_welch, impl)
        label = f"baum_welch_{impl}"
        methods[label] = _summary(res, true, true_nll, cfg.epsilon)
        m = methods[label]
        log(f"seed {seed}: {label} held-out NLL {m['heldout_nll']:.4f} (excess {m['excess_nll']:.2e}) after "
            f"{m['iterations']} iterations, {m['seconds']:.1f} s ({m['stopped']})")
    # how much sooner the Belief Net reaches Baum-Welch's final held-out NLL
    bw = methods.get("baum_welch_scaling") or next(v for k, v in methods.items() if k.startswith("baum"))
    bw_curve, bn_curve = bw["curve"], methods["belief_net"]["curve"]
    target = bw["heldout_nll"]
    t_bw = time_to_reach(bw_curve, target)
    t_bn = time_to_reach(bn_curve, target)
    speedup = {"target_nll": target, "baum_welch_seconds": t_bw, "belief_net_seconds": t_bn,
                      "ratio": None if not t_bn else t_bw / t_bn}
    return RecoverySeed(seed, true_nll, true_train_nll, methods, speedup)


# ----------------------------------------------------------------------------- the study
def aggregate(seeds: list[RecoverySeed]) -> dict:
    """Per method: mean, std, min and max over seeds of each number, and how many seeds recovered."""
    methods = sorted({m for s in seeds for m in s.methods})
    out = {}
    for m in methods:
        rows = [s.methods[m] for s in seeds if m in s.methods]
        stats = {"n_seeds": len(rows), "n_recovered": sum(bool(r["recovered"]) for r in rows)}
        for key in ("excess_nll", "heldout_nll", "A_frobenius", "C_frobenius", "seconds", "time_to_epsilon"):
            vals = np.array([r[key] for r in rows if r.get(key) is not None], dtype=np.float64)
            if len(vals):
                stats[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                              "min": float(vals.min()), "max": float(vals.max()), "n": int(len(vals))}
        out[m] = stats
    ratios = np.array([s.speedup["ratio"] for s in seeds if s.speedup["ratio"] is not None])
    out["speedup"] = {"n_reached": int(len(ratios)), "n_seeds": len(seeds),
                      **({"median": float(np.median(ratios)), "min": float(ratios.min()), "max": float(ratios.max())}
                         if len(ratios) else {})}
    return out


def seed_inputs(cfg: RecoveryConfig, seed: int) -> dict:
    """What one seed's result is made from: the study's config (without its seed list) and the seed."""
    return {"config": {k: v for k, v in cfg.to_dict().items() if k != "seeds"}, "seed": seed}


def seed_done(cfg: RecoveryConfig, seed: int, out_dir: str | Path) -> bool:
    """The study's manifest records this seed's result, made from this config, its file intact."""
    from interp.rundir import Manifest, seed_output

    return Manifest(out_dir).is_fresh(seed_output(seed), seed_inputs(cfg, seed))


def prepare_study(cfg: RecoveryConfig, out_dir: str | Path, *, force: bool = False) -> Path:
    """Create ``out_dir`` for ``cfg`` (emptied first with ``force``); refuse a folder holding another study.

    The seed list is not part of a study's identity: every seed's result depends only on the rest of the
    config, so a study run on ``--seeds 2`` grows to ten seeds later without redoing the first two."""
    from interp.rundir import CONFIG, adopt, clear, read_config, write_config

    out_dir = Path(out_dir)
    if force:
        clear(out_dir)
    adopt(out_dir, "recovery", CONFIG)
    if (out_dir / CONFIG).exists():
        # read back through the config class, so that a field added since (at its default) is no change
        old = {k: v for k, v in recovery_config_from_dict(read_config(out_dir)).to_dict().items() if k != "seeds"}
        if old != {k: v for k, v in cfg.to_dict().items() if k != "seeds"}:
            raise FileExistsError(f"{out_dir} holds a study with another config; use --force to start again")
    write_config(out_dir, cfg.to_dict())
    return out_dir


def run_recovery_seed(cfg: RecoveryConfig, seed: int, out_dir: str | Path, *,
                      log: Callable[[str], None] = lambda m: None) -> RecoverySeed:
    """One seed of a prepared study: read back if it is up to date (see :func:`seed_done`), else run, save it
    and record it in the study's manifest."""
    from interp.io import read_json, write_json
    from interp.rundir import Manifest, seed_file, seed_output

    path = seed_file(out_dir, seed)
    if seed_done(cfg, seed, out_dir):
        log(f"seed {seed}: done before, reused")
        return RecoverySeed.from_dict(read_json(path))
    t0 = time.perf_counter()
    with flush_denormals():  # tiny forward-filter values otherwise slow every step several-fold
        res = run_seed(cfg, seed, log=log)
    write_json(path, res.to_dict())
    Manifest(out_dir).record(seed_output(seed), seed_inputs(cfg, seed), [path])
    log(f"seed {seed}: {len(res.methods)} methods fitted in {time.perf_counter() - t0:.1f} s -> {path}")
    return res


def run_recovery(cfg: RecoveryConfig, out_dir: str | Path, *, force: bool = False,
                 log: Callable[[str], None] = lambda m: None) -> dict:
    """Every seed of ``cfg`` (each saved on completion, so an interrupted study resumes), then recovery.json."""
    from interp.io import write_json
    from interp.rundir import RECOVERY, writer

    with writer(out_dir):
        out_dir = prepare_study(cfg, out_dir, force=force)
        results = []
        for i, seed in enumerate(cfg.seeds, 1):
            log(f"recovery: seed {seed} ({i} of {len(cfg.seeds)})")
            results.append(run_recovery_seed(cfg, seed, out_dir, log=log))
        out = {"config": cfg.to_dict(), "summary": aggregate(results), "seeds": [r.to_dict() for r in results]}
        write_json(out_dir / RECOVERY, out)
    return out
