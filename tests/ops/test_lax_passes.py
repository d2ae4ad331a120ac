"""jaxcnn.ops.lax_passes: the xla formulation's three convolution passes against the float64 loops, and
its gradients as canonical convolutions (which XLA:CPU runs on Eigen inside loops too)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.ops import lax_passes
from jaxcnn.ops.im2col import Window
from tests.ops.helpers import assert_close, loop_reference_case

# (x NCHW, w OIHW, stride, padding pairs, dilation, groups): strides that leave rows no window reads
# (in the padding, as ResNet's 3x3/2 on an even size, and past it), padding wider than the kernel's reach, dilation, groups, non-square.
GEOMETRIES = [
    ((2, 3, 8, 8), (5, 3, 3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
    ((2, 4, 11, 10), (6, 4, 2, 2), (3, 3), ((0, 0), (0, 0)), (1, 1), 1),
    ((2, 4, 10, 10), (6, 4, 3, 3), (1, 1), ((1, 1), (1, 1)), (2, 2), 1),
    ((2, 3, 7, 8), (4, 3, 5, 3), (2, 1), ((3, 0), (1, 2)), (1, 1), 1),
    ((1, 2, 6, 6), (3, 2, 1, 1), (1, 1), ((2, 2), (0, 1)), (1, 1), 1),
    ((3, 4, 8, 8), (6, 2, 3, 3), (2, 2), ((0, 0), (0, 0)), (1, 1), 2),
    ((2, 6, 12, 9), (6, 2, 3, 3), (2, 3), ((0, 2), (1, 1)), (1, 2), 3),
]
IDS = ["s2p1", "s3-unread", "dilated", "asymmetric", "pad-past-kernel", "groups2", "groups3-mixed"]


def _window(geometry) -> Window:
    x_shape, w_shape, stride, pads, dilation, _ = geometry
    return Window(tuple(w_shape[2:]), stride, dilation, pads, tuple(x_shape[2:]))


def _nhwc(a):
    return jnp.asarray(np.moveaxis(a, 1, -1))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_the_three_passes_match_the_float64_loops(geometry):
    """Both forms of each gradient: the CPU's canonical convolutions and autodiff's (other backends)."""
    (x, w, dy), (y_ref, dx_ref, dw_ref) = loop_reference_case(geometry)
    window, groups = _window(geometry), geometry[5]
    x, dy, w = _nhwc(x), _nhwc(dy), jnp.asarray(np.transpose(w, (2, 3, 1, 0)))
    assert_close(lax_passes.forward(x, w, window, groups), np.moveaxis(y_ref, 1, -1))
    for grad_input in (lax_passes.grad_input, lax_passes._autodiff_grad_input):
        assert_close(grad_input(dy, w, window, groups), np.moveaxis(dx_ref, 1, -1))
    for grad_weight in (lax_passes.grad_weight, lax_passes._autodiff_grad_weight):
        assert_close(grad_weight(x, dy, w.shape, window, groups), np.transpose(dw_ref, (2, 3, 1, 0)))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=IDS)
def test_each_gradient_is_the_transpose_of_the_forward(geometry):
    """<forward(x, w), dy> = <x, grad_input(dy, w)> = <w, grad_weight(x, dy)>: the passes are one bilinear
    map, so the onednn kernels' lax tangents (and second derivatives through them) are exact."""
    (x, w, dy), _ = loop_reference_case(geometry, seed=3)
    window, groups = _window(geometry), geometry[5]
    x, dy, w = _nhwc(x), _nhwc(dy), jnp.asarray(np.transpose(w, (2, 3, 1, 0)))
    pairing = float(jnp.vdot(lax_passes.forward(x, w, window, groups), dy))
    np.testing.assert_allclose(float(jnp.vdot(x, lax_passes.grad_input(dy, w, window, groups))), pairing, rtol=1e-4)
    np.testing.assert_allclose(float(jnp.vdot(w, lax_passes.grad_weight(x, dy, w.shape, window, groups))), pairing,
                               rtol=1e-4)
    dw_dx = jax.grad(lambda v: jnp.vdot(lax_passes.grad_weight(v, dy, w.shape, window, groups), w))(x)
    assert_close(dw_dx, lax_passes.grad_input(dy, w, window, groups), rtol=1e-4, atol=1e-4)


def _convolutions(compiled_text):
    return [line for line in compiled_text.splitlines() if " convolution(" in line]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's canonical convolution layout")
@pytest.mark.parametrize("geometry", [GEOMETRIES[0], GEOMETRIES[2]], ids=[IDS[0], IDS[2]])
def test_inside_a_scan_every_pass_is_a_canonical_convolution(geometry):
    """XLA:CPU canonicalizes only a program's top-level convolutions; inside a loop a gradient in
    autodiff's layout (``dW``'s ``f01b_i01o->01bf``) ran as a naive loop nest (ResNet-20 with
    gradient accumulation: 35-60x slower per batch)."""
    (x, w, dy), _ = loop_reference_case(geometry)
    window = _window(geometry)
    x, dy, w = _nhwc(x), _nhwc(dy), jnp.asarray(np.transpose(w, (2, 3, 1, 0)))

    def passes(x, w, dy):
        def body(carry, scale):
            return carry, (lax_passes.forward(x * scale, w, window, 1), lax_passes.grad_input(dy * scale, w, window, 1),
                           lax_passes.grad_weight(x * scale, dy, w.shape, window, 1))
        return jax.lax.scan(body, 0.0, jnp.arange(1.0, 3.0))[1]

    convolutions = _convolutions(jax.jit(passes).lower(x, w, dy).compile().as_text())
    assert len(convolutions) == 3
    for line in convolutions:
        assert "dim_labels=b01f_01io->b01f" in line, line
