"""jaxcnn.ops._fusion: values stored once (an aliased FFI call, or an identity matmul, on the CPU) change
nothing but where they live and the shape XLA's loops run over."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops
from jaxcnn.ops import _fusion, onednn
from jaxcnn.ops._fusion import materialized, transposable_materialized, wide_stored

needs_stored = pytest.mark.skipif(_fusion._stored_kernel(jnp.ones(())) is None,
                                  reason="jaxcnn's FFI kernels could not be built here")


def _extreme_values(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal(shape) * np.exp(rng.uniform(-20, 20, shape)), dtype)


@pytest.mark.parametrize("store", [materialized, transposable_materialized])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_the_materialized_value_is_exactly_the_input(dtype, store):
    """Either way of storing x (the FFI call, the identity matmul) changes no value."""
    x = _extreme_values((2, 5, 4, 7), dtype, 6)
    np.testing.assert_array_equal(np.asarray(jax.jit(store)(x), np.float32), np.asarray(x, np.float32))


def test_a_transposed_tangent_is_stored_by_the_identity_matmul():
    """The max pool's JVP rule stores its tangent; its gradient, the transpose, stores the cotangent."""
    x = _extreme_values((2, 4, 4, 16), jnp.float32, 5)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(transposable_materialized(v) ** 2)))
    np.testing.assert_array_equal(grad(x), 2 * x)
    text = jax.jit(jax.grad(lambda v: jnp.sum(ops.max_pool2d(v, 2) ** 2))).lower(x).as_text()
    assert text.count("dot_general") == 1


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_an_overlapping_average_pools_gradient_stores_its_cotangent(data_format):
    """On the CPU, overlapping windows are summed over tap slices, whose transpose reads the cotangent once
    per tap: stored, its producer is not re-run in each (a 3x3/1 pool's forward+backward 6x faster).
    Disjoint windows keep reduce_window and store nothing."""
    x = _extreme_values((2, 8, 8, 16), jnp.float32, 4)

    def dots_in_gradient(**kw):
        loss = lambda v: jnp.sum(jnp.tanh(ops.avg_pool2d(v, data_format=data_format, **kw)))  # noqa: E731
        return jax.jit(jax.grad(loss)).lower(x).as_text().count("dot_general")

    assert dots_in_gradient(kernel_size=3, stride=1, padding=1) == 1
    assert dots_in_gradient(kernel_size=2) == 0


@needs_stored
def test_the_stored_value_is_exact_for_every_value_and_free():
    """Infinities and NaNs too (the identity matmul would spread a NaN over its row), with no copy: the FFI
    call's output aliases the fusion that computes it, and that fusion's loop runs over rows of 128."""
    x = jnp.asarray(np.array([1.5, -0.0, np.inf, -np.inf, np.nan, 3e38, 1e-45, -2.0] * 512, np.float32)
                    .reshape(2, 8, 16, 16))
    np.testing.assert_array_equal(np.asarray(jax.jit(wide_stored)(x)), np.asarray(x))
    text = jax.jit(lambda v: wide_stored(jnp.maximum(v, 0) * 2)).lower(x).compile().as_text()
    call = next(line for line in text.splitlines() if onednn.STORED_TARGET in line)
    assert "output_to_operand_aliasing" in call and "f32[32,128]" in call
    assert not re.search(r"\bcopy\(", text.split("ENTRY")[1])


@needs_stored
def test_an_overlapping_max_pool_stores_the_index_of_each_windows_maximum():
    """Its gradient reads each window's first-maximum index once per window holding an input; stored, the
    index (u8) is computed once. Disjoint windows read it once and do not store it."""
    x = _extreme_values((2, 8, 8, 16), jnp.float32, 4)

    def stored_dtypes(**kw):
        text = jax.jit(jax.grad(lambda v: jnp.sum(ops.max_pool2d(v, **kw) ** 2))).lower(x).compile().as_text()
        return [line.split("=")[1].split("[")[0].strip() for line in text.splitlines()
                if onednn.STORED_TARGET in line and "custom-call(" in line]

    assert "u8" in stored_dtypes(kernel_size=3, stride=2, padding=1)
    assert "u8" not in stored_dtypes(kernel_size=2)


@needs_stored
def test_the_stored_value_differentiates_and_vmaps_as_the_identity():
    x = _extreme_values((3, 4, 16), jnp.float32, 8)
    x = jnp.clip(x, -1e3, 1e3)
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(wide_stored(v ** 2)))(x), 2 * x)
    np.testing.assert_array_equal(jax.jit(jax.vmap(lambda v: wide_stored(v * 3)))(x), x * 3)
    np.testing.assert_array_equal(jax.jit(jax.jacfwd(lambda v: wide_stored(v).sum()))(x[0]), np.ones((4, 16)))


@needs_stored
@pytest.mark.skipif(jax.device_count() < 2, reason="needs 2 devices")
def test_a_batch_sharded_value_is_stored_shard_by_shard():
    """Under jit data parallelism each device stores its own examples: no gather, the sharding kept."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("data",))
    batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    x = jax.device_put(_extreme_values((4, 6, 6, 16), jnp.float32, 9), batch)
    compiled = jax.jit(lambda v: wide_stored(jnp.maximum(v, 0))).lower(x).compile()
    assert "all-gather" not in compiled.as_text() and "all-to-all" not in compiled.as_text()
    y = compiled(x)
    np.testing.assert_array_equal(np.asarray(y), np.maximum(np.asarray(x), 0))
    assert tuple(y.sharding.spec)[:1] == ("data",)


def test_off_the_cpu_or_without_the_kernels_wide_stored_is_the_value_itself(monkeypatch):
    x = jnp.ones((2, 4, 4, 16))
    monkeypatch.setattr(_fusion, "_stored_kernel", lambda v: None)
    assert "custom_call" not in jax.jit(wide_stored).lower(x).as_text()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert materialized(x) is x


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_relu_and_its_gradient_equal_jax_nn_relu(dtype):
    """Values and gradients bit for bit, zeros included (gradient 0 there, as jax.nn.relu's)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 6, 5, 16)) * np.exp(rng.uniform(-10, 10, (3, 6, 5, 16)))
    x[0, 0, 0, :4] = [0.0, -0.0, 1e-30, -1e-30]
    x, dy = jnp.asarray(x, dtype), jnp.asarray(rng.standard_normal(x.shape), dtype)
    ours, vjp = jax.vjp(jax.jit(ops.relu), x)
    theirs, vjp_ref = jax.vjp(jax.nn.relu, x)
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))
    np.testing.assert_array_equal(np.asarray(vjp(dy)[0], np.float32), np.asarray(vjp_ref(dy)[0], np.float32))
    assert ours.dtype == dtype


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.int32])
def test_concatenate_equals_jnp_concatenate_values_and_gradients(dtype):
    """Bit for bit, on any axis, mixed dtypes promoted; forward and reverse derivatives as jnp's."""
    def parts_along(axis):
        shapes = [(2, 3, 4, 5)[:axis] + (c,) + (2, 3, 4, 5)[axis + 1:] for c in (5, 1, 12)]
        parts = [_extreme_values(shape, jnp.float32, i) for i, shape in enumerate(shapes)]
        return [jnp.asarray(p * 1000, dtype) if dtype == jnp.int32 else p.astype(dtype) for p in parts]

    for axis in (-1, 0, 2):
        parts = parts_along(axis % 4)
        got = jax.jit(_fusion.concatenate, static_argnums=1)(parts, axis)
        want = jnp.concatenate(parts, axis)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    parts = parts_along(3)
    if dtype == jnp.int32:
        return
    mixed = [parts[0].astype(jnp.bfloat16), parts[1].astype(jnp.float32)]
    assert _fusion.concatenate(mixed).dtype == jnp.concatenate(mixed, -1).dtype == jnp.float32
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((2, 3, 4, 18)), dtype)

    def loss(fn, *ps):
        return jnp.sum(fn(ps, -1).astype(jnp.float32) * weights.astype(jnp.float32))

    ours = jax.jit(jax.grad(lambda *ps: loss(_fusion.concatenate, *ps), argnums=(0, 1, 2)))(*parts)
    theirs = jax.grad(lambda *ps: loss(jnp.concatenate, *ps), argnums=(0, 1, 2))(*parts)
    for g, r in zip(ours, theirs):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(r, np.float32))
    tangents = [p * 3 for p in parts]
    _, jvp = jax.jvp(lambda *ps: _fusion.concatenate(ps), parts, tangents)
    np.testing.assert_array_equal(np.asarray(jvp, np.float32), np.asarray(jnp.concatenate(tangents, -1), np.float32))


def test_a_bfloat16_concatenate_moves_bits_on_the_cpu_and_is_jnps_elsewhere(monkeypatch):
    """XLA:CPU would compute the bfloat16 concatenate in float32 (operands and result converted): the
    compiled program holds one 16-bit concatenate and no conversion."""
    parts = [jnp.ones((4, 8, 8, c), jnp.bfloat16) for c in (24, 12)]
    ours = jax.jit(_fusion.concatenate).lower(parts).compile().as_text()
    plain = jax.jit(lambda ps: jnp.concatenate(ps, -1)).lower(parts).compile().as_text()
    assert re.search(r"= f32\[4,8,8,36\][^\n]* concatenate\(", plain)  # what this avoids
    assert re.search(r"= (bf16|u16)\[4,8,8,36\][^\n]* concatenate\(", ours)
    assert not re.search(r" convert\(|f32\[", ours)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert "bitcast_convert" not in str(jax.make_jaxpr(lambda ps: _fusion.concatenate(ps))(parts))
