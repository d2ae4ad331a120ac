"""conv2d_auto and the auto pools: every formulation a plan can pick is proven equal to the loops."""

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxcnn import ops
from jaxcnn.ops import autotune, onednn
from jaxcnn.ops.im2col import GATHER_BELOW_CHANNELS, SEPARABLE_BELOW_CHANNELS, Window, make_window, patches, tap_slices
from tests.ops.helpers import assert_close, loop_reference_case, nchw_to, oihw_to, randn, to_nchw, to_oihw

# (x NCHW, w OIHW, stride, padding pairs, dilation, groups)
GEOMETRIES = [
    ((2, 1, 9, 8), (3, 1, 3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),  # LeNet's C1: one input channel
    ((2, 3, 7, 9), (4, 3, 2, 3), (2, 1), ((1, 0), (2, 1)), (1, 1), 1),  # strided, asymmetric padding
    ((1, 2, 9, 9), (2, 2, 3, 3), (1, 2), ((1, 1), (0, 2)), (2, 1), 1),  # dilated
    ((2, 4, 6, 6), (6, 2, 3, 1), (1, 1), ((1, 1), (0, 0)), (1, 1), 2),  # grouped
    ((1, 5, 5, 4), (5, 5, 1, 1), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),  # 1x1
]

PLANS = [
    autotune.ConvPlan(f, dw, dx)
    for f, dw, dx in itertools.product(autotune.FORWARD, autotune.GRAD_WEIGHT, autotune.GRAD_INPUT)
]


def _window(x_nhwc_shape, w_hwio_shape, stride, pads, dilation):
    return Window(tuple(w_hwio_shape[:2]), stride, dilation, pads, tuple(x_nhwc_shape[1:3]))


CASES = [(plan, geometry) for plan in PLANS for geometry in GEOMETRIES]


@pytest.mark.parametrize("plan,geometry", CASES, ids=[
    f"{p.forward}-{p.grad_weight}-{p.grad_input}-x{g[0]}w{g[1]}s{g[2]}d{g[4]}g{g[5]}" for p, g in CASES])
def test_every_plan_matches_the_loop_reference(plan, geometry):
    _, _, stride, pads, dilation, groups = geometry
    (x, w, dy), (expected, dx_ref, dw_ref) = loop_reference_case(geometry)
    xl, wl = nchw_to(x, "NHWC"), oihw_to(w, "NHWC")
    window = _window(xl.shape, wl.shape, stride, pads, dilation)
    y, vjp = jax.vjp(lambda a, b: autotune._conv_planned(a, b, window, groups, plan), xl, wl)
    dx, dw = vjp(nchw_to(dy, "NHWC"))
    assert_close(to_nchw(y, "NHWC"), expected)
    assert_close(to_nchw(dx, "NHWC"), dx_ref)
    assert_close(to_oihw(dw, "NHWC"), dw_ref)


@pytest.mark.parametrize("plan", [autotune.ConvPlan("im2col", "im2col", "xla"),
                                  autotune.ConvPlan("im2col", "xla", "im2col"),
                                  autotune.ConvPlan("banded", "banded", "banded"),
                                  autotune.ConvPlan("banded", "im2col", "banded")], ids=str)
def test_mixed_plans_pass_finite_differences(plan):
    rng = np.random.default_rng(1)
    window = make_window((6, 5), (3, 2), (1, 2), 1, 1, "test")
    with jax.enable_x64():
        x, w = jnp.asarray(randn(rng, (1, 6, 5, 1)), jnp.float64), jnp.asarray(randn(rng, (3, 2, 1, 2)), jnp.float64)
        check_grads(lambda a, b: autotune._conv_planned(a, b, window, 1, plan), (x, w), order=1, modes=["rev"])


@pytest.mark.parametrize("channels", [1, GATHER_BELOW_CHANNELS - 1, GATHER_BELOW_CHANNELS,
                                      SEPARABLE_BELOW_CHANNELS - 1, SEPARABLE_BELOW_CHANNELS])
def test_patches_gather_separable_and_stacked_paths_agree(channels):
    """Whichever way the taps are assembled for a channel count, the receptive fields are the same."""
    x = jnp.asarray(randn(np.random.default_rng(2), (2, 7, 8, channels)))
    window = make_window((7, 8), (3, 2), (2, 1), ((1, 2), (0, 1)), (1, 2), "test")
    stacked = jnp.stack(tap_slices(x, window, -5.0), axis=-2).reshape(2, *window.out_size, 3, 2, channels)
    np.testing.assert_array_equal(patches(x, window, -5.0), stacked)


def test_conv2d_auto_measures_once_caches_and_matches_conv2d():
    autotune.clear_plans()
    rng = np.random.default_rng(3)
    x, w, b = randn(rng, (16, 36, 36, 1)), randn(rng, (5, 5, 1, 16)), randn(rng, (16,))  # 6.5M multiply-adds
    f = jax.jit(jax.value_and_grad(lambda x, w, b: jnp.sum(ops.conv2d_auto(x, w, b) ** 2), (0, 1, 2)))
    g = jax.jit(jax.value_and_grad(lambda x, w, b: jnp.sum(ops.conv2d(x, w, b) ** 2), (0, 1, 2)))
    for got, want in zip(jax.tree_util.tree_leaves(f(x, w, b)), jax.tree_util.tree_leaves(g(x, w, b))):
        assert_close(got, want, rtol=1e-4, atol=1e-4)
    table = autotune.plans()
    assert len(table["conv"]) == 1
    (key, plan), = table["conv"].items()
    assert "x(16, 36, 36, 1) w(5, 5, 1, 16) float32" in key
    assert plan["forward"] in autotune.FORWARD and plan["grad_weight"] in autotune.GRAD_WEIGHT
    json.dumps(table)  # the training loop saves it

    autotune.clear_plans()
    autotune.set_plans({"conv": {key: {"forward": "im2col", "grad_weight": "im2col", "grad_input": "xla"}}})
    y = ops.conv2d_auto(x, w, b)  # preset: no measuring, the given formulations
    assert autotune.plans()["conv"] == {key: {"forward": "im2col", "grad_weight": "im2col", "grad_input": "xla"}}
    assert_close(y, ops.conv2d(x, w, b), rtol=1e-4, atol=1e-4)
    autotune.clear_plans()


def test_small_problems_are_not_measured_and_use_xla():
    autotune.clear_plans()
    ops.conv2d_auto(np.ones((1, 6, 6, 2), np.float32), np.ones((3, 3, 2, 2), np.float32))
    assert list(autotune.plans()["conv"].values()) == [{"forward": "xla", "grad_weight": "xla", "grad_input": "xla"}]
    autotune.clear_plans()


def test_conv2d_auto_options_channels_first_and_padding_modes():
    rng = np.random.default_rng(4)
    x, w = randn(rng, (2, 3, 7, 6)), randn(rng, (4, 3, 3, 3))
    for mode in ("zeros", "reflect", "circular"):
        kw = dict(stride=(2, 1), padding=1, padding_mode=mode, data_format="NCHW")
        assert_close(ops.conv2d_auto(x, w, **kw), ops.conv2d(x, w, **kw))
        ga = jax.grad(lambda a: jnp.sum(ops.conv2d_auto(a, w, **kw) ** 2))(x)
        gx = jax.grad(lambda a: jnp.sum(ops.conv2d(a, w, **kw) ** 2))(x)
        assert_close(ga, gx, rtol=1e-4, atol=1e-4)


def test_conv2d_auto_validates_like_conv2d():
    with pytest.raises(ValueError, match=r"conv2d_auto: x has 2 channels"):
        ops.conv2d_auto(np.ones((1, 5, 5, 2), np.float32), np.ones((3, 3, 3, 4), np.float32))


def test_set_plans_rejects_unknown_formulations():
    with pytest.raises(ValueError, match=r"grad_input='fft'; expected one of \['banded', 'im2col', 'onednn', 'xla'\]"):
        autotune.set_plans({"conv": {"k": {"forward": "xla", "grad_weight": "xla", "grad_input": "fft"}}})
    with pytest.raises(ValueError, match=r"pool 'k' is 'cudnn'"):
        autotune.set_plans({"pool": {"k": "cudnn"}})


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_auto_pools_match_lax_and_only_average_pools_measure(kind):
    autotune.clear_plans()
    x = randn(np.random.default_rng(5), (16, 32, 32, 8))  # large enough to be measured
    auto, plain = {"max": (ops.max_pool2d_auto, ops.max_pool2d), "avg": (ops.avg_pool2d_auto, ops.avg_pool2d)}[kind]
    np.testing.assert_allclose(auto(x, 2), plain(x, 2), rtol=1e-5, atol=1e-6)
    relu_x = np.maximum(x, 0)  # ties at zero: the gradient goes to the first maximum either way
    ga = jax.grad(lambda a: jnp.sum(auto(a, 3, 2, padding=1) ** 2))(relu_x)
    gp = jax.grad(lambda a: jnp.sum(plain(a, 3, 2, padding=1) ** 2))(relu_x)
    np.testing.assert_allclose(ga, gp, rtol=1e-5, atol=1e-6)
    measured = autotune.plans()["pool"]
    assert set(measured.values()) <= {"xla", "im2col"} and len(measured) == (2 if kind == "avg" else 0)
    autotune.clear_plans()


ONEDNN = ["onednn"] if onednn.usable(np.float32) else []  # measured only where its kernels run


@pytest.mark.parametrize("filters,names", [(16, ["xla", "im2col", "banded", *ONEDNN]),  # bands of 2 pixels
                                           (32, ["xla", "im2col", *ONEDNN])])  # a band of 1 would be im2col
def test_measured_plans_are_timed_not_defaulted(monkeypatch, filters, names):
    """Above the size floor: every candidate of every pass is timed, then the forward and weight gradient's
    mix against each formulation doing both; the input gradient alone."""
    timed = []

    def equal(candidates, args):
        timed.append([str(name) for name in candidates])
        return dict.fromkeys(candidates, 1.0)

    monkeypatch.setattr(autotune, "_best_times", equal)
    autotune.clear_plans()
    ops.conv2d_auto(np.ones((16, 36, 36, 1), np.float32), np.ones((5, 5, 1, filters), np.float32))
    assert timed[:2] == [names] * 2
    assert timed[2] == [str((n, n)) for n in names]  # the forward + weight gradient mix is xla's pair
    assert timed[3] == names
    autotune.clear_plans()


# Seconds per call of each pass alone, the pair of winners (onednn, im2col): 1.0 + 1.0.
FORWARD_TIMES = {"xla": 1.2, "im2col": 2.5, "onednn": 1.0}
GRAD_WEIGHT_TIMES = {"xla": 1.8, "im2col": 1.0, "onednn": 1.5}


@pytest.mark.parametrize("margin,pairs", [
    (1.5, [("onednn", "im2col"), ("xla", "xla"), ("onednn", "onednn")]),  # 3.0 and 2.5 are within 1.5 * 2.0
    (1.2, [("onednn", "im2col")]),  # no other pair is within 2.4: the winners' mix is taken untimed
])
def test_pairs_timed_are_those_whose_passes_alone_are_within_the_margin(monkeypatch, margin, pairs):
    timed = []

    def pair_times(candidates, args):
        timed.append(list(candidates))
        return {pair: 1.0 if pair == ("xla", "xla") else 2.0 for pair in candidates}

    monkeypatch.setattr(autotune, "_best_times", pair_times)
    monkeypatch.setattr(autotune, "PAIR_MARGIN", margin)
    window = Window((3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), (8, 8))
    chosen = autotune._fastest_pair(FORWARD_TIMES, GRAD_WEIGHT_TIMES, window, 1, args=None)
    assert timed == ([pairs] if len(pairs) > 1 else [])
    assert chosen == (("xla", "xla") if len(pairs) > 1 else ("onednn", "im2col"))


def test_candidates_are_traced_as_the_step_traces_them(monkeypatch):
    """Plans are measured while a step is traced; the candidates must still trace to programs with no
    eagerly computed constants (lax's passes differentiate at zeros, which a step stages as broadcasts)."""
    consts = {}

    def equal(candidates, args):
        for name, fn in candidates.items():
            consts[str(name)] = len(jax.make_jaxpr(fn)(*args).consts)
        return dict.fromkeys(candidates, 1.0)

    monkeypatch.setattr(autotune, "_best_times", equal)
    monkeypatch.setattr(autotune, "_PLANS", {})
    monkeypatch.setattr(autotune, "_measures", lambda: True)
    monkeypatch.setenv("JAXCNN_CACHE_DIR", "")
    x, w = jnp.ones((16, 36, 36, 8), jnp.float32), jnp.ones((3, 3, 8, 32), jnp.float32)
    jax.jit(lambda x, w: ops.conv2d_auto(x, w, padding=1)).lower(x, w)
    assert "xla" in consts and "('xla', 'xla')" in consts
    assert consts == dict.fromkeys(consts, 0)


def test_measuring_compiles_only_the_programs_it_times(monkeypatch):
    """Making the measuring's data compiles nothing: a program compiled per data shape (as an eager
    ``jnp.asarray(..., dtype)`` does) stays in JAX's caches, ResNet-50's ~50 MiB for the process's life."""
    compiled = []

    def record(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(kwargs.get("fun_name"))

    monkeypatch.setattr(autotune, "_best_times", lambda candidates, args: dict.fromkeys(candidates, 1.0))
    monkeypatch.setattr(autotune, "_PLANS", {})
    monkeypatch.setattr(autotune, "_measures", lambda: True)
    monkeypatch.setenv("JAXCNN_CACHE_DIR", "")
    x, w = jnp.ones((16, 36, 36, 7), jnp.float32), jnp.ones((3, 3, 7, 33), jnp.float32)
    jax.monitoring.register_event_duration_secs_listener(record)
    try:
        jax.jit(lambda x, w: ops.conv2d_auto(x, w, padding=1)).lower(x, w)
    finally:
        jax.monitoring.unregister_event_duration_listener(record)
    assert len(autotune._PLANS) == 1 and compiled == []


def test_all_plans_are_every_combination():
    assert len(autotune.all_plans()) == len(set(autotune.all_plans())) == 4**3 == len(PLANS)


def test_initialising_a_model_measures_nothing(monkeypatch):
    """Parameters are initialised on a batch of 1 that is never trained on: no plan is measured or kept."""
    import flax.linen as nn
    import optax

    from jaxcnn.layers import Conv, MaxPool
    from jaxcnn.models import summary
    from jaxcnn.train import create_train_state

    class Wide(nn.Module):  # 37.7M multiply-adds per image: measured at any batch outside the pause
        @nn.compact
        def __call__(self, x, train=False):
            return MaxPool(2, backend="auto")(Conv(64, 3, padding=1, backend="auto")(x))

    def fail(*args):
        raise AssertionError("measured while paused")

    monkeypatch.setattr(autotune, "_best_times", fail)
    autotune.clear_plans()
    create_train_state(Wide(), optax.sgd(0.1), (64, 64, 16), seed=0, ema=False)
    summary(Wide(), (64, 64, 16))
    assert autotune.plans() == {"conv": {}, "pool": {}}
    with autotune.measuring_paused():  # a cached choice is still used inside
        autotune.set_plans({"conv": {"k": {"forward": "im2col", "grad_weight": "xla", "grad_input": "xla"}}})
    assert list(autotune.plans()["conv"]) == ["k"]
    with pytest.raises(AssertionError, match="measured while paused"):  # outside, it measures again
        ops.conv2d_auto(np.ones((1, 64, 64, 16), np.float32), np.ones((3, 3, 16, 64), np.float32), padding=1)
    autotune.clear_plans()


@pytest.mark.parametrize("plan,stored_apart", [
    (autotune.ConvPlan("xla", "xla", "xla"), True), (autotune.ConvPlan("onednn", "xla", "onednn"), True),
    (autotune.ConvPlan("onednn", "onednn", "xla"), onednn.usable(np.float32) is False)])
def test_a_wide_input_is_stored_apart_unless_onednn_reads_it_in_both_passes(plan, stored_apart):
    """The pass that stores x for the backward (materialized) is skipped where oneDNN's kernels read x in the
    forward and the weight gradient: they take it as one stored buffer already."""
    window = make_window((6, 6), 3, 1, 1, 1, "test")
    x, w, dy = np.ones((2, 6, 6, 16), np.float32), np.ones((3, 3, 16, 4), np.float32), np.ones((2, 6, 6, 4), np.float32)

    def train_pass(x, w):
        y, vjp = jax.vjp(lambda a, b: autotune._conv_planned(a, b, window, 1, plan), x, w)
        return y, vjp(dy)

    text = jax.jit(train_pass).lower(x, w).as_text()
    stored = onednn.STORED_TARGET in text or "dot_general" in text  # either of materialized's forms
    assert stored == stored_apart


@pytest.mark.parametrize("formulation", ["im2col", "banded"])
def test_a_matmul_forward_and_weight_gradient_share_one_matrix(formulation):
    """The weight gradient reuses the forward's columns (or bands) instead of building them again from x."""
    window = make_window((6, 6), 3, 1, 1, 1, "test")
    x, w, dy = np.ones((2, 6, 6, 16), np.float32), np.ones((3, 3, 16, 4), np.float32), np.ones((2, 6, 6, 4), np.float32)
    plan = autotune.ConvPlan(formulation, formulation, "xla")

    def train_pass(x, w):
        y, vjp = jax.vjp(lambda a, b: autotune._conv_planned(a, b, window, 1, plan), x, w)
        return y, vjp(dy)

    def stacks(fn):  # before XLA's optimisations (no CSE yet)
        return jax.jit(fn).lower(x, w).as_text().count("stablehlo.concatenate")

    forward_only = stacks(lambda a, b: autotune._conv_planned(a, b, window, 1, plan))
    assert forward_only >= 1 and stacks(train_pass) == forward_only  # the forward's stack of tap slices, once


def test_measured_choices_are_kept_in_the_machine_cache(monkeypatch, tmp_path):
    """A later process (here: the process's cache cleared) takes the machine's choice instead of measuring."""
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path))
    measured = []
    chosen = autotune.ConvPlan("im2col", "xla", "im2col")
    monkeypatch.setattr(autotune, "_measure_conv_plan", lambda *args: measured.append(args) or chosen)
    monkeypatch.setattr(autotune, "_fastest", lambda candidates, args: measured.append("pool") or "im2col")
    x, w = np.ones((16, 36, 36, 1), np.float32), np.ones((5, 5, 1, 16), np.float32)  # measured: 6.5M multiply-adds
    pooled = np.ones((16, 32, 32, 8), np.float32)

    def run():
        autotune.clear_plans()
        ops.conv2d_auto(x, w)
        ops.avg_pool2d_auto(pooled, 2)
        return autotune.plans()

    first = run()
    assert len(measured) == 2 and list(first["conv"].values()) == [dataclasses.asdict(chosen)]
    assert list(first["pool"].values()) == ["im2col"]
    (path,) = tmp_path.iterdir()
    stored = json.loads(path.read_text())
    assert stored["conv"] == first["conv"] and stored["pool"] == first["pool"] and "machine" in stored

    assert run() == first and len(measured) == 2  # taken from the machine's cache, not measured

    key = next(iter(first["conv"]))
    stored["conv"][key]["grad_input"] = "fft"  # an entry this jaxcnn cannot use is measured again
    path.write_text(json.dumps(stored))
    assert run() == first and len(measured) == 3
    assert json.loads(path.read_text())["conv"][key] == dataclasses.asdict(chosen)

    monkeypatch.setenv("JAXCNN_CACHE_DIR", "")
    assert run() == first and len(measured) == 5  # the cache turned off: measured every time
    autotune.clear_plans()
