"""One frozen config dataclass per model family.

Every model takes tokens (batch, pos) int64 and returns next-token logits (batch, pos, d_vocab):
the logits at position t predict token t + 1. The vocabulary size and context length come
from the data, so they are not part of these configs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

from interp.config import to_dict


def _positive(**values: int) -> None:
    for k, v in values.items():
        if v < 1:
            raise ValueError(f"{k} must be >= 1, got {v}")


@dataclass(frozen=True)
class TransformerConfig:
    """Transformer built with TransformerLens (``TransformerBridge.boot_native``): attention-only by default, or
    standard (``attn_only = false``: an MLP of width ``d_mlp`` and activation ``act_fn`` after each attention).
    ``normalization``: "none", "LN" (LayerNorm), "LNPre" (LayerNorm without weights) or "RMS" (RMSNorm)."""

    family: Literal["transformer"] = "transformer"
    n_layers: int = 1
    n_heads: int = 1
    d_model: int = 64
    d_head: int = 64
    positional: Literal["standard", "rotary"] = "standard"
    normalization: Literal["none", "LN", "LNPre", "RMS"] = "none"
    # Prepend a BOS token (id = n_tokens) to every input: an attention sink, so one softmax head can
    # weight the past by lambda^k without its rows having to sum to 1 over real tokens.
    bos: bool = False
    attn_only: bool = True
    d_mlp: int | None = None  # None: 4 * d_model
    act_fn: Literal["relu", "gelu"] = "relu"  # TransformerLens's names
    # False: no residual skip path, ``blocks.{l}.hook_resid_post`` is the attention output alone (a step of the
    # minimal-model chain); attention-only models only.
    skip: bool = True

    def __post_init__(self):
        _positive(n_layers=self.n_layers, n_heads=self.n_heads, d_model=self.d_model, d_head=self.d_head)
        if self.positional == "rotary" and self.d_head % 2:  # rotary turns pairs of dimensions
            raise ValueError(f"d_head must be even with positional = 'rotary', got {self.d_head}")
        if self.attn_only:
            if self.d_mlp is not None:
                raise ValueError(f"d_mlp = {self.d_mlp} needs attn_only = false (an attention-only model has no MLPs)")
            if self.act_fn != _MLP_DEFAULTS["act_fn"]:
                raise ValueError(f"act_fn = {self.act_fn!r} needs attn_only = false (an attention-only model has no "
                                 f"MLPs)")
        elif self.d_mlp is not None:
            _positive(d_mlp=self.d_mlp)
        if not self.skip and not self.attn_only:
            raise ValueError("skip = false needs attn_only = true (only an attention-only block can drop its skip "
                             "path)")

    @property
    def mlp_width(self) -> int:
        """The MLPs' hidden width (0 for an attention-only model)."""
        return 0 if self.attn_only else self.d_mlp or 4 * self.d_model

    def to_dict(self) -> dict:
        """Without the MLP keys and ``skip`` at their defaults: an attention-only config keeps the hash it had
        before the keys existed, so its run folders stay fresh."""
        out = to_dict(self)
        for key, default in {**_MLP_DEFAULTS, "skip": True}.items():
            if out[key] == default:
                del out[key]
        return out


_MLP_DEFAULTS = {"attn_only": True, "d_mlp": None, "act_fn": "relu"}


@dataclass(frozen=True)
class FixedAttentionConfig:
    """One learnable, input-independent lower-triangular attention matrix M (pos x pos).

    ``pattern="softmax"`` normalises each row of M over the allowed positions; ``"raw"`` uses the
    masked entries as they are. ``skip`` adds the token's own embedding (the residual path)."""

    family: Literal["fixed_attention"] = "fixed_attention"
    d_model: int = 64
    d_head: int = 64
    pattern: Literal["raw", "softmax"] = "softmax"
    skip: bool = True

    def __post_init__(self):
        _positive(d_model=self.d_model, d_head=self.d_head)


@dataclass(frozen=True)
class SSMConfig:
    """Stack of linear state-space layers ``h_t = A h_{t-1} + B u_t``, ``y_t = C h_t + D u_t`` with a
    residual stream ``u``. ``transition``: "dense" (spectral norm < 1), "diagonal" (real, in (-1, 1))
    or "complex" (diagonal, modulus < 1)."""

    family: Literal["ssm"] = "ssm"
    n_layers: int = 1
    d_model: int = 64
    d_state: int = 16
    transition: Literal["dense", "diagonal", "complex"] = "diagonal"

    def __post_init__(self):
        _positive(n_layers=self.n_layers, d_model=self.d_model, d_state=self.d_state)


# Belief Net initialisations (interp.models.belief_net.initial_logits), shared by the model families and the
# recovery study: "random" (logits ~ N(0, init_scale^2)), "near_uniform" (logits 0 plus 0.01 init_scale noise),
# "spectral" (the log of a spectral estimate from the training data) and "truth" (the log of the data's own HMM).
BELIEF_NET_INITS = ("random", "near_uniform", "spectral", "truth")
_RENAMED_INITS = {
    "true": "use 'truth'",
    "uniform": "use 'near_uniform' (logits 0 plus 0.01 init_scale noise), or 'random' for the model family's old "
               "'uniform' (it drew N(0, init_scale^2) logits, the same as 'random')",
}


def check_belief_net_init(init: str, allowed: tuple[str, ...] = BELIEF_NET_INITS) -> None:
    """Raise ValueError unless ``init`` is one of ``allowed``; an old name gets its new one."""
    if init in _RENAMED_INITS:
        raise ValueError(f"init {init!r} was renamed: {_RENAMED_INITS[init]}")
    if init not in allowed:
        raise ValueError(f"init must be one of {' | '.join(map(repr, allowed))}, got {init!r}")


def check_init_scale(scale: float, key: str = "init_scale") -> None:
    """A Belief Net's init scale: finite and >= 0 (0 starts every logit at 0, the uniform model)."""
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"{key} must be a finite number >= 0, got {scale!r}")


@dataclass(frozen=True)
class BeliefNetConfig:
    """The forward filter as a network whose weights are the logits of (mu, A, C).

    ``init``: "random" (logits ~ N(0, init_scale^2)), "near_uniform" (all logits 0 plus 0.01 init_scale
    noise) or "truth" (the log of the data's own HMM, when it has an emission form)."""

    family: Literal["belief_net"] = "belief_net"
    n_states: int = 3
    init: str = "random"  # "random" | "near_uniform" | "truth"
    init_scale: float = 1.0

    def __post_init__(self):
        _positive(n_states=self.n_states)
        check_belief_net_init(self.init, ("random", "near_uniform", "truth"))
        check_init_scale(self.init_scale)


@dataclass(frozen=True)
class BlockedBeliefNetConfig:
    """Belief Net for block-sparse data (process ``blocked``): the structure (groups, their tokens and successor
    groups) is the data's; the weights are the logits of mu, the group moves, the k x k blocks and the
    emissions. ``init``: "random" (logits ~ N(0, init_scale^2)) or "truth" (the data's own HMM).

    ``parameterisation = "neural"``: the blocks and emissions are softmaxes of products of state and token
    embeddings of width ``hidden`` passed through residual MLPs (O(h^2 + h S + h V) parameters instead of
    O(G d k^2)). ``state_dropout = p``: each training forward keeps round((1 - p) k) random states of every group
    and filters on the HMM restricted to them; evaluation uses every state. ``group_size``: the model's states per
    group (None: the data's k); the groups, their tokens and successors stay the data's."""

    family: Literal["blocked_belief_net"] = "blocked_belief_net"
    init: str = "random"  # "random" | "truth"
    init_scale: float = 1.0
    parameterisation: Literal["scalar", "neural"] = "scalar"
    hidden: int = 64  # the neural parameterisation's embedding width h
    state_dropout: float = 0.0
    group_size: int | None = None  # the model's states per group; None: the data's

    def __post_init__(self):
        check_belief_net_init(self.init, ("random", "truth"))
        check_init_scale(self.init_scale)
        if self.parameterisation not in ("scalar", "neural"):
            raise ValueError(f"parameterisation must be 'scalar' | 'neural', got {self.parameterisation!r}")
        if self.parameterisation == "scalar" and self.hidden != _BLOCKED_DEFAULTS["hidden"]:
            raise ValueError(f"hidden = {self.hidden} needs parameterisation = 'neural' (the scalar blocks have no "
                             f"embeddings)")
        _positive(hidden=self.hidden)
        if self.parameterisation == "neural" and self.init == "truth":
            raise ValueError("init = 'truth' needs parameterisation = 'scalar' (the neural blocks cannot hold the "
                             "data's HMM exactly)")
        if isinstance(self.state_dropout, bool) or not 0 <= self.state_dropout < 1:
            raise ValueError(f"state_dropout must be a number in [0, 1), got {self.state_dropout!r}")
        if self.group_size is not None:
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
                raise ValueError(f"group_size must be a positive integer or left out, got {self.group_size!r}")

    def to_dict(self) -> dict:
        """Without the neural and dropout keys at their defaults: a scalar config keeps the hash it had before
        the keys existed, so its run folders stay fresh."""
        out = to_dict(self)
        for key, default in _BLOCKED_DEFAULTS.items():
            if out[key] == default:
                del out[key]
        return out


_BLOCKED_DEFAULTS = {"parameterisation": "scalar", "hidden": 64, "state_dropout": 0.0, "group_size": None}


ModelConfig = Union[TransformerConfig, FixedAttentionConfig, SSMConfig, BeliefNetConfig, BlockedBeliefNetConfig]
FAMILIES: dict[str, type] = {
    "transformer": TransformerConfig,
    "fixed_attention": FixedAttentionConfig,
    "ssm": SSMConfig,
    "belief_net": BeliefNetConfig,
    "blocked_belief_net": BlockedBeliefNetConfig,
}
