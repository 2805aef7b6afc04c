"""Steering and scoring on the tiny random-weight model: scoped, position-exact, cache-consistent."""

from __future__ import annotations

import pytest
import torch

from emolib.chat import encode
from emolib.hooks import count_live_hooks
from emolib.steering import random_direction, steer, steering_vector
from emolib.vectors import EmotionVectors

PROMPT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def vecs():
    g = torch.Generator().manual_seed(0)
    return EmotionVectors(["calm", "desperate", "happy"], [0, 1], torch.randn(2, 3, 32, generator=g),
                          torch.zeros(2, 32), "tiny", "mean-diff")


NORMS = {0: 3.0, 1: 4.0}


def toks(model, text=PROMPT):
    return torch.tensor([encode(model.tokenizer, text)])


def test_steering_adds_the_scaled_unit_vector_and_unhooks(tiny_model, vecs):
    t = toks(tiny_model)
    with torch.no_grad():
        base = tiny_model(t)
        with steer(tiny_model, vecs, emotions="calm", layers=[1], alpha=0.5, norms=NORMS) as added:
            steered = tiny_model(t)
            _, cache = tiny_model.run_with_cache(t, names_filter=lambda n: n == "blocks.1.hook_resid_post")
        assert count_live_hooks(tiny_model) == 0
        _, clean = tiny_model.run_with_cache(t, names_filter=lambda n: n == "blocks.1.hook_resid_post")
    v = added[1]
    assert torch.allclose(v.norm(), torch.tensor(0.5 * 4.0), atol=1e-5)
    diff = cache["blocks.1.hook_resid_post"] - clean["blocks.1.hook_resid_post"]
    assert torch.allclose(diff[0, 1:], v.expand_as(diff[0, 1:]), atol=1e-5)
    assert diff[0, 0].abs().max() == 0, "BOS is never steered"
    assert not torch.allclose(base, steered)


def test_hooks_removed_on_exception(tiny_model, vecs):
    with pytest.raises(KeyError):
        with steer(tiny_model, vecs, emotions="calm", layers=[0, 1], alpha=1.0, norms=NORMS):
            assert count_live_hooks(tiny_model) == 2
            raise KeyError("x")
    assert count_live_hooks(tiny_model) == 0


def test_several_emotions_sum(vecs):
    both = steering_vector(vecs, {"calm": 1.0, "happy": 1.0}, 1, alpha=1.0, norm=2.0)
    expected = 2.0 * (vecs.vector("calm", 1, unit=True) + vecs.vector("happy", 1, unit=True))
    assert torch.allclose(both, expected)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated"])
def test_cached_and_uncached_steered_generation_agree(tiny_model, vecs, positions):
    t = toks(tiny_model)
    kw = dict(max_new_tokens=8, do_sample=False, stop_at_eos=False, verbose=False)
    outs = {}
    for cache in (True, False):
        with torch.no_grad(), steer(tiny_model, vecs, emotions="desperate", layers=[0], alpha=8.0, norms=NORMS,
                                    positions=positions, prompt_len=t.shape[1]):
            outs[cache] = tiny_model.generate(t, use_past_kv_cache=cache, **kw)
    assert torch.equal(outs[True], outs[False])
    with torch.no_grad():
        plain = tiny_model.generate(t, use_past_kv_cache=True, **kw)
    assert not torch.equal(outs[True], plain), "steering this strong must change greedy output"
    assert count_live_hooks(tiny_model) == 0


def test_position_modes_touch_exactly_their_positions(tiny_model, vecs):
    t = toks(tiny_model)
    n = t.shape[1]
    name = "blocks.0.hook_resid_post"

    def resid(**kw):
        with torch.no_grad():
            if kw:
                with steer(tiny_model, vecs, emotions="happy", layers=[0], alpha=1.0, norms=NORMS, **kw):
                    _, c = tiny_model.run_with_cache(t, names_filter=lambda x: x == name)
            else:
                _, c = tiny_model.run_with_cache(t, names_filter=lambda x: x == name)
        return c[name][0]

    clean = resid()
    moved = lambda r: (r - clean).norm(dim=-1) > 1e-6  # noqa: E731
    assert moved(resid(positions="all")).tolist() == [False] + [True] * (n - 1)  # BOS never
    assert moved(resid(positions="prompt", prompt_len=4)).tolist() == [False] + [True] * 3 + [False] * (n - 4)
    assert moved(resid(positions="generated", prompt_len=4)).tolist() == [False] * 4 + [True] * (n - 4)
    assert moved(resid(positions="generated", prompt_len=0)).tolist() == [False] + [True] * (n - 1)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[2:5] = True
    assert moved(resid(positions=mask)).tolist() == mask.tolist()
    # a mask that includes BOS still leaves it alone, in both mask shapes
    everything = torch.ones(n, dtype=torch.bool)
    assert moved(resid(positions=everything)).tolist() == [False] + [True] * (n - 1)
    assert moved(resid(positions=everything[None, :])).tolist() == [False] + [True] * (n - 1)


def test_batched_steering_equals_one_by_one(tiny_model, vecs):
    texts = [PROMPT, "I could not sleep at all."]
    ids = [encode(tiny_model.tokenizer, x) for x in texts]
    width = max(map(len, ids))
    pad = tiny_model.tokenizer.pad_token_id
    batch = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    mask = (batch != pad).long()
    with torch.no_grad(), steer(tiny_model, vecs, emotions="calm", layers=[1], alpha=0.7, norms=NORMS):
        together = tiny_model(batch, attention_mask=mask)
        alone = [tiny_model(torch.tensor([x])) for x in ids]
    for k, x in enumerate(ids):
        torch.testing.assert_close(together[k, : len(x)], alone[k][0], atol=1e-4, rtol=1e-4)


def test_staged_vector_units_and_wrapper_agree(tiny_model, vecs):
    from emolib.steering import Span, SteeringVector, StrengthUnits

    units = StrengthUnits(layer=1, residual_norm=4.0, vector_norm=0.5)
    assert units.vector_multiple(0.25) == pytest.approx(2.0)
    assert units.alpha_for_multiple(2.0) == pytest.approx(0.25)
    vec = SteeringVector.from_emotions(vecs, "calm", layer=1, alpha=0.25, units=units)
    assert vec.added.norm() == pytest.approx(1.0) and vec.vector_multiple == pytest.approx(2.0)
    t = toks(tiny_model)
    with torch.no_grad():
        with vec.apply(tiny_model, positions=Span.ALL):
            staged = tiny_model(t)
        assert count_live_hooks(tiny_model) == 0
        with steer(tiny_model, vecs, emotions="calm", layers=[1], alpha=0.25, norms={1: 4.0}):
            legacy = tiny_model(t)
    torch.testing.assert_close(staged, legacy)
    with pytest.raises(ValueError, match="layer"):
        SteeringVector.from_emotions(vecs, "calm", layer=0, alpha=0.1, units=units)


def test_strength_units_measure(tiny_model, vecs):
    from emolib.capture import mean_resid_norms
    from emolib.steering import StrengthUnits

    texts = [PROMPT, "I could not sleep at all."]
    u = StrengthUnits.measure(tiny_model, vecs, 1, texts=texts, label="two")
    assert u.residual_norm == pytest.approx(float(mean_resid_norms(tiny_model, texts)[1]))
    assert u.vector_norm == pytest.approx(float(vecs.at(1).norm(dim=-1).median()))
    assert u.as_dict()["alpha_1_in_vector_norms"] == pytest.approx(u.residual_norm / u.vector_norm)


def test_null_directions_are_typed_seeded_and_of_both_kinds(vecs):
    import numpy as np

    from emolib.nulls import NullKind, null_directions, null_percentile, null_summary

    nulls = null_directions(20, seed=0)
    assert len(nulls) == 40 and {n.kind for n in nulls} == set(NullKind)
    assert len({n.seed for n in nulls}) == 40
    units = torch.stack([n.unit(vecs, 1) for n in nulls])
    torch.testing.assert_close(units.norm(dim=-1), torch.ones(40))
    torch.testing.assert_close(units, torch.stack([n.unit(vecs, 1) for n in null_directions(20, seed=0)]))
    # the in-distribution kind lies in the span of the emotion vectors (3 of them here, in 32 dimensions)
    basis = torch.linalg.qr(vecs.at(1).T.float()).Q  # [32, 3]
    mix = units[20:]
    torch.testing.assert_close(mix @ basis @ basis.T, mix, atol=1e-5, rtol=1e-5)
    iso = units[:20]
    assert ((iso @ basis).norm(dim=-1) < 0.9).all()
    assert null_percentile(50.0, np.arange(10)) == 100.0 and null_percentile(-1.0, np.arange(10)) == 0.0
    assert null_percentile(5.0, np.arange(10)) == 55.0  # 5 below, one tie counted half
    assert null_summary(np.arange(101))["null_mean"] == pytest.approx(50.0)


def test_random_direction_control_has_equal_norm(tiny_model):
    d = random_direction(32, seed=3)
    assert torch.isclose(d.norm(), torch.tensor(1.0))
    with steer(tiny_model, direction=d, layers=[1], alpha=0.5, norms=NORMS) as added:
        assert torch.isclose(added[1].norm(), torch.tensor(2.0))
    assert not torch.equal(d, random_direction(32, seed=4))


def test_bad_steering_arguments(tiny_model, vecs):
    with pytest.raises(ValueError, match="exactly one"):
        with steer(tiny_model, vecs, layers=[0], alpha=1.0, norms=NORMS):
            pass
    with pytest.raises(ValueError, match="needs prompt_len"):
        with steer(tiny_model, vecs, emotions="calm", layers=[0], alpha=1.0, norms=NORMS, positions="prompt"):
            pass
    with pytest.raises(ValueError, match="unknown positions"):
        with steer(tiny_model, vecs, emotions="calm", layers=[0], alpha=1.0, norms=NORMS, positions="middle"):
            pass
    with pytest.raises(KeyError, match="unknown emotion"):
        with steer(tiny_model, vecs, emotions="hungry", layers=[0], alpha=1.0, norms=NORMS):
            pass
    assert count_live_hooks(tiny_model) == 0




def test_fan_out_runs_the_lower_layers_once_and_equals_one_pass_per_condition(tiny_model):
    """R input rows leave the layer as C * R rows (condition-major), each equal to a separate steered pass."""
    from emolib.hooks import fan_out, residual_edit

    hf = tiny_model.original_model
    a, b = encode(tiny_model.tokenizer, "The quick brown fox"), encode(tiny_model.tokenizer, "She walked to the shop")
    n = min(len(a), len(b))
    ids = torch.tensor([a[:n], b[:n]])  # no padding: fan_out needs masks that broadcast over rows
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(3, tiny_model.cfg.d_model, generator=g) * 3
    vecs[1] = 0
    calls = {"n": 0}

    def count(resid):
        calls["n"] += 1
        return resid

    with torch.no_grad():
        with fan_out(tiny_model, 1, vecs, skip_first=True), residual_edit(tiny_model, {0: count}):
            out = hf.model(input_ids=ids).last_hidden_state  # [3 * 2, 5, d]
        assert out.shape[0] == 6 and calls["n"] == 1  # layer 0 ran once, on the 2 input rows
        for c in range(3):
            add = vecs[c].clone()

            def edit(resid, add=add):
                v = add.expand_as(resid).clone()
                v[:, 0] = 0  # BOS never
                return resid + v
            with residual_edit(tiny_model, {1: edit}):
                ref = hf.model(input_ids=ids).last_hidden_state
            torch.testing.assert_close(out[2 * c: 2 * c + 2], ref, atol=1e-5, rtol=1e-5)
    assert count_live_hooks(tiny_model) == 0
