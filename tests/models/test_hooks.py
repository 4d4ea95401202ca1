"""Every hook of every family sits in the data flow: a TransformerLens hook that edits the residual stream (or
the state) at position t changes the outputs that depend on it and leaves positions < t bit-identical, and no
hook stays attached afterwards. Recurrent hooks (the SSM state, the Belief Nets' beliefs) follow one convention:
after computing position t, the hook is called on positions 0..t and the recurrence continues from position t
of its output (earlier positions of the output are ignored)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from transformer_lens.hook_points import HookPoint

from interp.hmm import get_process
from interp.hmm.sampling import sample
from interp.models import (
    BeliefNetConfig,
    BlockedBeliefNetConfig,
    FixedAttentionConfig,
    SSMConfig,
    TransformerConfig,
    build_model,
)

MESS3 = get_process("mess3")
BLOCKED = get_process("blocked", n_groups=4, group_size=3, tokens_per_group=2, successors=2, seed=1)
N_CTX, T = 10, 4  # edits go to position T, in the middle of the context

CONFIGS = {
    "transformer": TransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=8),
    "transformer_rotary_ln": TransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=8,
                                               positional="rotary", normalization="LN"),
    "fixed_raw_noskip": FixedAttentionConfig(d_model=16, d_head=8, pattern="raw", skip=False),
    "fixed_softmax_skip": FixedAttentionConfig(d_model=16, d_head=8, pattern="softmax", skip=True),
    "ssm_dense": SSMConfig(n_layers=2, d_model=16, d_state=4, transition="dense"),
    "ssm_diagonal": SSMConfig(n_layers=2, d_model=16, d_state=4, transition="diagonal"),
    "ssm_complex": SSMConfig(n_layers=2, d_model=16, d_state=4, transition="complex"),
    "belief_net": BeliefNetConfig(n_states=3),
    "blocked_belief_net": BlockedBeliefNetConfig(),
}


def data_of(family: str):
    return BLOCKED if family == "blocked_belief_net" else MESS3


def build(family: str, **kw):
    hmm = data_of(family)
    return build_model(CONFIGS[family], hmm.n_tokens, N_CTX, seed=0, hmm=hmm, **kw)


def tokens_of(family: str, batch: int = 6) -> torch.Tensor:
    return sample(data_of(family), batch, N_CTX, seed=1)


def attached_hooks(model) -> dict[str, int]:
    counts = {name: len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
              for name, m in model.named_modules() if isinstance(m, HookPoint)}
    return {name: n for name, n in counts.items() if n}


def edit_at(t: int, calls: list | None = None):
    """A hook that rolls the features of position t (a belief stays a distribution) wherever it sees position t."""
    def hook(x, hook):
        if calls is not None:
            calls.append(tuple(x.shape))
        if x.shape[1] <= t:
            return x
        x = x.clone()
        x[:, t] = x[:, t].roll(1, -1)
        return x
    return hook


# (family, hook, whether positions after the edited one depend on it): the last layer's residual stream
# feeds only its own position's logits; everything upstream of attention or a recurrence feeds the later ones.
CASES = [
    ("transformer", "hook_embed", True),
    ("transformer", "blocks.0.hook_resid_pre", True),
    ("transformer", "blocks.0.hook_resid_post", True),
    ("transformer", "blocks.1.hook_resid_pre", True),
    ("transformer", "blocks.1.hook_resid_post", False),
    ("transformer_rotary_ln", "blocks.0.hook_resid_pre", True),
    ("transformer_rotary_ln", "blocks.1.hook_resid_post", False),
    ("fixed_raw_noskip", "hook_embed", True),
    ("fixed_raw_noskip", "blocks.0.hook_resid_pre", True),
    ("fixed_raw_noskip", "blocks.0.hook_resid_post", False),
    ("fixed_softmax_skip", "blocks.0.hook_resid_pre", True),
    ("fixed_softmax_skip", "blocks.0.hook_resid_post", False),
]
for _ssm in ("ssm_dense", "ssm_diagonal", "ssm_complex"):
    CASES += [
        (_ssm, "hook_embed", True),
        (_ssm, "blocks.0.hook_resid_pre", True),
        (_ssm, "blocks.0.hook_state", True),
        (_ssm, "blocks.0.hook_out", True),
        (_ssm, "blocks.0.hook_resid_post", True),
        (_ssm, "blocks.1.hook_resid_pre", True),
        (_ssm, "blocks.1.hook_state", True),  # the last layer's state still feeds its later positions
        (_ssm, "blocks.1.hook_out", False),
        (_ssm, "blocks.1.hook_resid_post", False),
    ]
for _bn in ("belief_net", "blocked_belief_net"):
    CASES += [(_bn, "blocks.0.hook_resid_pre", True), (_bn, "blocks.0.hook_resid_post", True)]


@pytest.mark.parametrize("family,name,later", CASES, ids=[f"{f}-{n}" for f, n, _ in CASES])
def test_an_edit_at_position_t_changes_what_depends_on_it_and_nothing_before(family, name, later):
    model = build(family)
    tokens = tokens_of(family)
    with torch.no_grad():
        clean = model(tokens)
        calls = []
        with model.hooks(fwd_hooks=[(name, edit_at(T, calls))]):
            edited = model(tokens)
        assert calls, f"{name} was never called"
        assert not attached_hooks(model)
        assert torch.equal(model(tokens), clean), "a hook outlived its context"
    assert torch.isfinite(edited).all()
    assert torch.equal(edited[:, :T], clean[:, :T]), "an edit at position t reached an earlier position"
    # Every position from t on that depends on the edit moves by more than rounding (a filter forgets an edit
    # geometrically, so far positions move little; one that did not depend on it would be bit-identical).
    for s in range(T, N_CTX if later else T + 1):
        assert not torch.allclose(edited[:, s], clean[:, s], rtol=1e-5, atol=0), f"position {s} ignored the edit"
    if not later:
        assert torch.equal(edited[:, T + 1:], clean[:, T + 1:])


@pytest.mark.parametrize("family", list(CONFIGS))
def test_run_with_hooks_on_every_cached_hook_leaves_nothing_attached(family):
    model = build(family)
    tokens = tokens_of(family)
    names = [n for n in model.hook_dict if n == "hook_embed" or
             n.split(".")[-1] in ("hook_resid_pre", "hook_state", "hook_resid_post")]
    with torch.no_grad():
        clean = model(tokens)
        edited = model.run_with_hooks(tokens, fwd_hooks=[(n, edit_at(T)) for n in names])
        assert not attached_hooks(model)
        assert torch.equal(model(tokens), clean)
    assert torch.equal(edited[:, :T], clean[:, :T]) and not torch.allclose(edited[:, T], clean[:, T])


# ------------------------------------------------------------- the recurrent-hook convention
RECURRENT = [("ssm_dense", "blocks.1.hook_state"), ("ssm_diagonal", "blocks.0.hook_state"),
             ("ssm_complex", "blocks.1.hook_state"),
             ("belief_net", "blocks.0.hook_resid_pre"), ("belief_net", "blocks.0.hook_resid_post"),
             ("blocked_belief_net", "blocks.0.hook_resid_pre"), ("blocked_belief_net", "blocks.0.hook_resid_post")]


@pytest.mark.parametrize("family,name", RECURRENT, ids=[f"{f}-{n}" for f, n in RECURRENT])
def test_a_recurrent_hook_sees_the_prefix_of_hooked_values_at_each_position(family, name):
    model = build(family)
    tokens = tokens_of(family)
    b = tokens.shape[0]

    def recorder(seen):
        def record(x, hook):
            seen.append(x.clone())
            return x
        return record

    def edit_once(x, hook):  # only the call for position T
        if x.shape[1] != T + 1:
            return x
        x = x.clone()
        x[:, T] = x[:, T].roll(1, -1)
        return x

    clean_seen, seen = [], []
    with torch.no_grad():
        clean = model(tokens)
        _, cache = model.run_with_cache(tokens, names_filter=name)
        model.run_with_hooks(tokens, fwd_hooks=[(name, recorder(clean_seen))])
        edited = model.run_with_hooks(tokens, fwd_hooks=[(name, edit_once), (name, recorder(seen))])
    # One call per position, on positions 0..t; the cache holds the last, whole one.
    assert [x.shape[:2] for x in seen] == [(b, t + 1) for t in range(N_CTX)]
    assert cache[name].shape[:2] == (b, N_CTX) and torch.equal(cache[name], clean_seen[-1])
    for t in range(1, N_CTX):  # each call carries the earlier positions as the hooks returned them
        assert torch.equal(seen[t][:, :t], seen[t - 1])
    # Position T was edited and the later positions are the recurrence continued from the edited value.
    assert torch.equal(seen[-1][:, :T], cache[name][:, :T])
    assert torch.equal(seen[-1][:, T], cache[name][:, T].roll(1, -1))
    assert not torch.allclose(seen[-1][:, T + 1], cache[name][:, T + 1])
    assert torch.equal(edited[:, :T], clean[:, :T]) and not torch.allclose(edited[:, T + 1], clean[:, T + 1])


@pytest.mark.parametrize("family,name", RECURRENT, ids=[f"{f}-{n}" for f, n in RECURRENT])
def test_a_recurrent_hooks_earlier_positions_are_ignored(family, name):
    # Only position t of the call at t counts: scribbling over the earlier ones changes nothing.
    model = build(family)
    tokens = tokens_of(family)

    def scribble(x, hook):
        x = x.clone()
        x[:, :-1] = float("nan")
        return x

    with torch.no_grad():
        clean = model(tokens)
        assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=[(name, scribble)]), clean)


@pytest.mark.parametrize("transition", ["dense", "diagonal", "complex"])
def test_ssm_state_edit_continues_the_recurrence_from_the_edited_state(transition):
    # Brute force in float64: h_t = A h_{t-1} + B u_t, with h_T replaced by the edited state.
    cfg = SSMConfig(n_layers=1, d_model=8, d_state=4, transition=transition)
    model = build_model(cfg, MESS3.n_tokens, N_CTX, seed=2, dtype=torch.float64)
    tokens = sample(MESS3, 5, N_CTX, seed=3)
    layer = model.blocks[0]
    delta = torch.randn(5, 8 if transition == "complex" else 4, generator=torch.Generator().manual_seed(4),
                        dtype=torch.float64)

    def kick(x, hook):
        if x.shape[1] <= T:
            return x
        x = x.clone()
        x[:, T] += delta
        return x

    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_state")
        edited = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_state", kick)])
        a = layer.transition()
        bu = model.W_E[tokens] @ layer.B
        n = 4
        if transition == "complex":
            bu = torch.complex(bu[..., :n], bu[..., n:])
            kick_h = torch.complex(delta[:, :n], delta[:, n:])
        else:
            kick_h = delta
        h = torch.zeros_like(bu[:, 0])
        for t in range(N_CTX):
            h = (h @ a.T if transition == "dense" else a * h) + bu[:, t]
            state = torch.cat([h.real, h.imag], -1) if transition == "complex" else h
            assert_close(cache["blocks.0.hook_state"][:, t], state, rtol=1e-12, atol=1e-12)
        states = []
        h = torch.zeros_like(bu[:, 0])
        for t in range(N_CTX):
            h = (h @ a.T if transition == "dense" else a * h) + bu[:, t] + (kick_h if t == T else 0)
            states.append(torch.cat([h.real, h.imag], -1) if transition == "complex" else h)
        resid = model.W_E[tokens] + torch.stack(states, 1) @ layer.C
        assert_close(edited, resid @ model.W_U + model.b_U, rtol=1e-12, atol=1e-12)
    assert torch.equal(edited[:, :T], logits[:, :T])
