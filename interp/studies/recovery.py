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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from interp import hmm as H
from interp.config import ConfigError, from_dict, read_toml, to_dict
from interp.hmm.filtering import flush_denormals
from interp.hmm.matching import parameter_errors


@dataclass(frozen=True)
class TrueHMMConfig:
    """The ``cyclic`` family (see ``interp processes``); the seed of each run draws its own HMM."""

    n_states: int = 64
    n_tokens: int = 128
    shift_weight: float = 0.9
    transition_nnz: int = 4
    emission_nnz: int = 4


@dataclass(frozen=True)
class DataConfig:
    n_train: int = 4000
    n_heldout: int = 500
    length: int = 256


@dataclass(frozen=True)
class BeliefNetFit:
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 0.05
    batch_size: int = 0  # 0: full batch
    max_steps: int = 500
    max_seconds: float = 600.0
    eval_every: int = 10  # steps between held-out evaluations (not timed)
    init: Literal["random", "uniform", "spectral"] = "random"
    init_scale: float = 1.0  # std of random logits; noise size for "uniform"
    restarts: int = 1  # independent inits; the best training likelihood is kept
    # "cosine": the learning rate decays to 0 over max_steps, so minibatch noise dies out at the end
    lr_schedule: Literal["constant", "cosine"] = "constant"


@dataclass(frozen=True)
class BaumWelchFit:
    implementations: tuple[str, ...] = ("scaling",)  # hmmlearn's; "log" is its default
    max_iter: int = 200
    max_seconds: float = 1800.0
    tol_per_token: float = 1e-5  # stop when the training log-likelihood per token improves by less


@dataclass(frozen=True)
class AblationConfig:
    """Belief Net initialisations to compare (each on every seed)."""

    random_scales: tuple[float, ...] = ()
    uniform: bool = False
    spectral: bool = False
    restarts: int = 0  # > 1: a run keeping the best of this many random inits
    # a control, not a method: started at the true parameters, where the fit ends is the floor for this
    # optimiser setting (estimation error from the finite training set plus the optimiser's own noise)
    from_truth: bool = False


SPECTRAL_MAX_ENTRIES = 2**27  # windowed third moments held in float64: 1 GiB


@dataclass(frozen=True)
class RecoveryConfig:
    name: str = "recovery"
    seeds: tuple[int, ...] = tuple(range(10))
    epsilon: float = 1e-3  # nats/token from the true model's held-out NLL that counts as recovered
    device: str = "cpu"
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

    def to_dict(self) -> dict:
        return to_dict(self)

    def true_hmm(self, seed: int) -> H.HMM:
        h = self.hmm
        return H.get_process("cyclic", n_states=h.n_states, n_tokens=h.n_tokens, seed=seed,
                             shift_weight=h.shift_weight, transition_nnz=h.transition_nnz,
                             emission_nnz=h.emission_nnz)


def recovery_config_from_dict(data: dict, *, default_name: str | None = None) -> RecoveryConfig:
    data = dict(data)
    if "name" not in data and default_name is not None:
        data["name"] = default_name
    try:
        cfg = from_dict(RecoveryConfig, data)
        cfg.true_hmm(cfg.seeds[0])
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return cfg


def load_recovery_config(path: str | Path) -> RecoveryConfig:
    path = Path(path)
    try:
        return recovery_config_from_dict(read_toml(path), default_name=path.stem)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# ----------------------------------------------------------------------------- Belief Net
def _seed_stream(seed: int, label: str) -> int:
    return int(np.random.SeedSequence([seed, sum(map(ord, label))]).generate_state(1)[0])


def initial_logits(S: int, V: int, init: str, scale: float, generator: torch.Generator,
                   spectral: H.EmissionForm | None = None,
                   truth: H.EmissionForm | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of (mu, A, C) for an initialisation: random N(0, scale^2), near-uniform (0 plus scale * 0.01
    noise), the log of a spectral estimate, or the log of the true parameters (a control)."""
    shapes = ((S,), (S, S), (S, V))
    if init == "random":
        return tuple(scale * torch.randn(*s, generator=generator, dtype=torch.float64) for s in shapes)
    if init == "uniform":
        return tuple(0.01 * scale * torch.randn(*s, generator=generator, dtype=torch.float64) for s in shapes)
    if init == "spectral":
        if spectral is None:
            raise ValueError("init='spectral' needs a spectral estimate")
        return tuple(torch.log(p.double().clamp_min(1e-6)) for p in (spectral.mu, spectral.A, spectral.C))
    if init == "truth":
        if truth is None:
            raise ValueError("init='truth' needs the true parameters")
        # zeros of the sparse truth become logits of -30: exact to 1e-13, and still finite for Adam
        return tuple(torch.log(p.double().clamp_min(1e-13)) for p in (truth.mu, truth.A, truth.C))
    raise ValueError(f"unknown init {init!r}")


def belief_net_log_likelihood(mu_logits, A_logits, C_logits, tokens: torch.Tensor) -> torch.Tensor:
    """[n] log P(x_0..x_{L-1}) under the emission form given by the logits (the Belief Net's forward filter,
    first token included). Differentiable."""
    mu, A, C = torch.softmax(mu_logits, -1), torch.softmax(A_logits, -1), torch.softmax(C_logits, -1)
    emit = C.T[tokens]  # [n, L, S]: P(x_t | state)
    b = mu.expand(tokens.shape[0], -1)
    ll = torch.zeros(tokens.shape[0], dtype=mu.dtype, device=mu.device)
    for t in range(tokens.shape[1]):
        w = b * emit[:, t]
        z = w.sum(-1)
        ll = ll + torch.log(z)
        b = (w / z[:, None]) @ A
    return ll


@torch.no_grad()
def belief_net_gradient(mu_logits: torch.Tensor, A_logits: torch.Tensor, C_logits: torch.Tensor,
                        tokens: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """[n] log-likelihoods and the exact gradient of their sum with respect to the three logit tensors.

    The same numbers autograd gives through :func:`belief_net_log_likelihood`, computed by a scaled
    forward-backward pass: for a row-softmax parameter, ``d LL / d logits[i, j] = N[i, j] - P[i, j] N[i, :].sum()``
    with N the expected counts (initial states, transitions, emissions). Autograd through 256 sequential
    steps of a 4000 x 64 batch is dominated by allocating and saving every intermediate; this pass keeps
    one time-major [L, n, S] array of forward beliefs (each step reads and writes contiguous rows), gathers
    each step's emission rows from the small [V, S] table, gets the normaliser as an extra column of the
    product, and accumulates the expected counts while it goes back (2.3x faster than a batch-major pass
    at the paper's size, and two orders of magnitude faster than autograd)."""
    mu, A, C = torch.softmax(mu_logits, -1), torch.softmax(A_logits, -1), torch.softmax(C_logits, -1)
    n, L = tokens.shape
    S, V = C.shape
    dt, dev = A.dtype, A.device
    tok = tokens.T.contiguous()  # [L, n]: each step reads contiguous rows
    CT = C.T.contiguous()  # [V, S]
    a_ext = torch.cat([A, torch.ones(S, 1, dtype=dt, device=dev)], 1)  # last column: row sums
    alpha = torch.empty(L, n, S, dtype=dt, device=dev)  # normalised forward beliefs, time-major
    r = torch.empty(L, n, dtype=dt, device=dev)  # 1 / c_t
    u = torch.empty(n, S + 1, dtype=dt, device=dev)
    e = torch.empty(n, S, dtype=dt, device=dev)
    prior = mu.expand(n, S)
    for t in range(L):
        torch.index_select(CT, 0, tok[t], out=e)
        w = torch.mul(prior, e, out=alpha[t])
        torch.mm(w, a_ext, out=u)
        torch.reciprocal(u[:, S], out=r[t])
        w.mul_(r[t, :, None])
        prior = u[:, :S].mul_(r[t, :, None])
    n_A = torch.zeros(S, S, dtype=dt, device=dev)
    n_C = torch.zeros(V, S, dtype=dt, device=dev)
    beta = torch.ones(n, S, dtype=dt, device=dev)
    nxt = torch.empty(n, S, dtype=dt, device=dev)
    AT = A.T.contiguous()
    n_C.index_add_(0, tok[L - 1], alpha[L - 1])
    for t in range(L - 2, -1, -1):
        torch.index_select(CT, 0, tok[t + 1], out=e)
        torch.mul(e, beta, out=nxt).mul_(r[t + 1, :, None])
        n_A.addmm_(alpha[t].T, nxt)
        torch.mm(nxt, AT, out=beta)
        g = e  # reuse: gamma_t
        torch.mul(alpha[t], beta, out=g)
        n_C.index_add_(0, tok[t], g)
    n_A = n_A * A
    n_mu = g.sum(0) if L > 1 else alpha[0].sum(0)
    n_C = n_C.T
    grads = tuple(N - P * N.sum(-1, keepdim=True) for N, P in ((n_mu, mu), (n_A, A), (n_C, C)))
    return -torch.log(r).sum(0), grads


def fit_belief_net(train: torch.Tensor, heldout: torch.Tensor, logits, fit: BeliefNetFit, *, seed: int,
                   dtype=torch.float32) -> dict:
    """Adam(W) on the negative log-likelihood; returns the learned (mu, A, C), the curve of held-out NLL per
    token against fitting time, and the final training NLL per token."""
    device = train.device
    params = [torch.nn.Parameter(x.to(device=device, dtype=dtype)) for x in logits]
    opt_cls = torch.optim.AdamW if fit.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(params, lr=fit.lr)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=fit.max_steps)
             if fit.lr_schedule == "cosine" else None)
    g = torch.Generator(device="cpu").manual_seed(seed)
    n_tok_train, n_tok_held = train.numel(), heldout.numel()

    @torch.no_grad()
    def heldout_nll() -> float:
        p64 = [p.detach().double() for p in params]
        return float(-sum(belief_net_log_likelihood(*p64, chunk).sum() for chunk in heldout.split(1000)) / n_tok_held)

    curve = [(0.0, 0, heldout_nll())]
    elapsed, step = 0.0, 0
    while step < fit.max_steps and elapsed < fit.max_seconds:
        t0 = time.perf_counter()
        batch = train if fit.batch_size == 0 else train[torch.randint(train.shape[0], (fit.batch_size,), generator=g)]
        _, grads = belief_net_gradient(*params, batch)
        for p, g_ in zip(params, grads):
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
    with torch.no_grad():
        p64 = [p.detach().double() for p in params]
        train_nll = float(-sum(belief_net_log_likelihood(*p64, c).sum() for c in train.split(1000)) / n_tok_train)
        mu, A, C = (torch.softmax(p, -1).cpu() for p in p64)
    if curve[-1][1] != step:
        curve.append((elapsed, step, heldout_nll()))
    return {"params": H.EmissionForm(mu, A, C), "curve": curve, "train_nll": train_nll, "steps": step,
            "seconds": elapsed, "final_lr": float(opt.param_groups[0]["lr"])}


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


def run_seed(cfg: RecoveryConfig, seed: int, log: Callable[[str], None] = lambda m: None) -> dict:
    device = torch.device(cfg.device)
    hmm, train, heldout = study_data(cfg, seed)
    true = hmm.to_emission()
    S, V = hmm.n_states, hmm.n_tokens
    true_nll = float(-H.log_likelihood(hmm, heldout).sum() / heldout.numel())
    true_train_nll = float(-H.log_likelihood(hmm, train).sum() / train.numel())
    out = {"seed": seed, "true_heldout_nll": true_nll, "true_train_nll": true_train_nll, "methods": {}}

    needs_spectral = cfg.belief_net.init == "spectral" or cfg.ablation.spectral
    spectral_params, moments = None, None
    if cfg.spectral:
        res, moments = fit_spectral(train, heldout, S, V, cfg.spectral_window)
        nll = res["heldout_nll"]
        out["methods"]["spectral"] = {**res, "excess_nll": nll - true_nll, "recovered": nll - true_nll <= cfg.epsilon}
        window = f", {cfg.spectral_window}-token windows" if cfg.spectral_window > 1 else ""
        log(f"seed {seed}: spectral (rank {res['rank']}{window}) held-out NLL {nll:.4f} vs true {true_nll:.4f}")
    if needs_spectral:
        from interp.baselines import spectral as SP

        w = cfg.spectral_window
        if moments is None:
            moments = SP.empirical_moments(train, V, window=w)
        k = min(S, V ** w)
        spectral_params = SP.recover_emission_form(moments, k, generator=torch.Generator().manual_seed(seed))
        if S > k:  # a rank-k estimate has k states: pad with copies so the Belief Net keeps S states
            reps = math.ceil(S / k)
            idx = torch.arange(S) % k
            A = spectral_params.A[idx][:, idx] / reps
            spectral_params = H.EmissionForm(spectral_params.mu[idx] / reps, A / A.sum(1, keepdim=True),
                                             spectral_params.C[idx])

    def bn(label: str, init: str, scale: float, restarts: int) -> None:
        runs = []
        for r in range(restarts):
            g = torch.Generator().manual_seed(_seed_stream(seed, f"{label}/{r}"))
            logits = initial_logits(S, V, init, scale, g, spectral_params, true)
            runs.append(fit_belief_net(train.to(device), heldout.to(device), logits, cfg.belief_net, seed=seed))
        best = min(runs, key=lambda r: r["train_nll"])
        # the other restarts cost their time too: count it as spent before the kept one
        other = sum(r["seconds"] for r in runs) - best["seconds"]
        best = {**best, "seconds": best["seconds"] + other,
                "curve": [(t + other, s, n) for t, s, n in best["curve"]]}
        out["methods"][label] = _summary(best, true, true_nll, cfg.epsilon)
        m = out["methods"][label]
        log(f"seed {seed}: {label} held-out NLL {m['heldout_nll']:.4f} (excess {m['excess_nll']:.2e}) in "
            f"{m['seconds']:.1f} s; A err {m['A_frobenius']:.3f}, C err {m['C_frobenius']:.3f}")

    fit = cfg.belief_net
    bn("belief_net", fit.init, fit.init_scale, fit.restarts)
    ab = cfg.ablation
    for scale in ab.random_scales:
        bn(f"belief_net/random_{scale:g}", "random", scale, 1)
    if ab.uniform:
        bn("belief_net/uniform", "uniform", fit.init_scale, 1)
    if ab.spectral:
        bn("belief_net/spectral", "spectral", 0.0, 1)
    if ab.restarts > 1:
        bn(f"belief_net/best_of_{ab.restarts}", "random", fit.init_scale, ab.restarts)
    if ab.from_truth:
        bn("belief_net/from_truth", "truth", 0.0, 1)

    # Baum-Welch starts where the main Belief Net started
    g = torch.Generator().manual_seed(_seed_stream(seed, "belief_net/0"))  # the same draw as bn()'s first
    init = [torch.softmax(x, -1) for x in initial_logits(S, V, fit.init, fit.init_scale, g, spectral_params)]
    for impl in cfg.baum_welch.implementations:
        res = fit_baum_welch(train.numpy(), heldout.numpy(), H.EmissionForm(*init), cfg.baum_welch, impl)
        label = f"baum_welch_{impl}"
        out["methods"][label] = _summary(res, true, true_nll, cfg.epsilon)
        m = out["methods"][label]
        log(f"seed {seed}: {label} held-out NLL {m['heldout_nll']:.4f} (excess {m['excess_nll']:.2e}) after "
            f"{m['iterations']} iterations, {m['seconds']:.1f} s ({m['stopped']})")
    # how much sooner the Belief Net reaches Baum-Welch's final held-out NLL
    bw = out["methods"].get("baum_welch_scaling") or next(v for k, v in out["methods"].items() if k.startswith("baum"))
    bw_curve, bn_curve = bw["curve"], out["methods"]["belief_net"]["curve"]
    target = bw["heldout_nll"]
    t_bw = time_to_reach(bw_curve, target)
    t_bn = time_to_reach(bn_curve, target)
    out["speedup"] = {"target_nll": target, "baum_welch_seconds": t_bw, "belief_net_seconds": t_bn,
                      "ratio": None if not t_bn else t_bw / t_bn}
    return out


# ----------------------------------------------------------------------------- the study
def aggregate(seeds: list[dict]) -> dict:
    """Per method: mean, std, min and max over seeds of each number, and how many seeds recovered."""
    methods = sorted({m for s in seeds for m in s["methods"]})
    out = {}
    for m in methods:
        rows = [s["methods"][m] for s in seeds if m in s["methods"]]
        stats = {"n_seeds": len(rows), "n_recovered": sum(bool(r["recovered"]) for r in rows)}
        for key in ("excess_nll", "heldout_nll", "A_frobenius", "C_frobenius", "seconds", "time_to_epsilon"):
            vals = np.array([r[key] for r in rows if r.get(key) is not None], dtype=np.float64)
            if len(vals):
                stats[key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                              "min": float(vals.min()), "max": float(vals.max()), "n": int(len(vals))}
        out[m] = stats
    ratios = np.array([s["speedup"]["ratio"] for s in seeds if s["speedup"]["ratio"] is not None])
    out["speedup"] = {"n_reached": int(len(ratios)), "n_seeds": len(seeds),
                      **({"median": float(np.median(ratios)), "min": float(ratios.min()), "max": float(ratios.max())}
                         if len(ratios) else {})}
    return out


def seed_path(out_dir: str | Path, seed: int) -> Path:
    return Path(out_dir) / "seeds" / f"seed_{seed:04d}.json"


def prepare_study(cfg: RecoveryConfig, out_dir: str | Path, *, force: bool = False) -> Path:
    """Create ``out_dir`` for ``cfg`` (emptied first with ``force``); refuse a folder holding another study.

    The seed list is not part of a study's identity: every seed's result depends only on the rest of the
    config, so a study run on ``--seeds 2`` grows to ten seeds later without redoing the first two."""
    import shutil

    from interp.io import read_json, write_json

    out_dir = Path(out_dir)
    if out_dir.exists() and force:
        shutil.rmtree(out_dir)
    cfg_path = out_dir / "config.json"
    if cfg_path.exists():
        # read back through the config class, so that a field added since (at its default) is no change
        old = {k: v for k, v in recovery_config_from_dict(read_json(cfg_path)).to_dict().items() if k != "seeds"}
        if old != {k: v for k, v in cfg.to_dict().items() if k != "seeds"}:
            raise FileExistsError(f"{out_dir} holds a study with another config; use --force to start again")
    write_json(cfg_path, cfg.to_dict())
    return out_dir


def run_recovery_seed(cfg: RecoveryConfig, seed: int, out_dir: str | Path, *,
                      log: Callable[[str], None] = lambda m: None) -> dict:
    """One seed of a prepared study: read back if it finished before, else run and save it."""
    from interp.io import read_json, write_json

    path = seed_path(out_dir, seed)
    if path.exists():
        log(f"seed {seed}: done before, reused")
        return read_json(path)
    with flush_denormals():  # tiny forward-filter values otherwise slow every step several-fold
        res = run_seed(cfg, seed, log=log)
    write_json(path, res)
    return res


def run_recovery(cfg: RecoveryConfig, out_dir: str | Path, *, force: bool = False,
                 log: Callable[[str], None] = lambda m: None) -> dict:
    """Every seed of ``cfg`` (each saved on completion, so an interrupted study resumes), then recovery.json."""
    from interp.io import write_json

    out_dir = prepare_study(cfg, out_dir, force=force)
    results = [run_recovery_seed(cfg, seed, out_dir, log=log) for seed in cfg.seeds]
    out = {"config": cfg.to_dict(), "summary": aggregate(results), "seeds": results}
    write_json(out_dir / "recovery.json", out)
    return out
