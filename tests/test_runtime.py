"""jaxcnn.runtime: the settings for XLA's CPU backend do what they claim (no timings)."""

import functools
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from jaxcnn import runtime

# ResNet-20's first-stage convolution on the im2col backend: its im2col matrix is 75 MB, above the
# 64 MB heap limit of glibc's secondary arenas, so with asynchronous dispatch each call maps and
# page-faults it afresh.
_PROBE = textwrap.dedent("""
    import resource, sys
    import jax, jax.numpy as jnp
    from jaxcnn import runtime
    if sys.argv[1] == "inline":
        runtime.dispatch_cpu_inline()
    runtime.tune_cpu_malloc()
    from jaxcnn import ops
    f = jax.jit(lambda x, w: ops.conv2d_im2col(x, w, padding=1))
    x, w = jnp.ones((128, 32, 32, 16)), jnp.ones((3, 3, 16, 16))
    for _ in range(3):
        f(x, w).block_until_ready()
    faults = []
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x, w).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sorted(faults)[4])  # the median call: the heap's occasional growth is a one-off
""")


def _faults_per_call(mode):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not runtime.tune_cpu_malloc(), reason="tune_cpu_malloc needs glibc")
def test_inline_dispatch_reuses_large_temporaries():
    """Run inline, a computation's large temporaries come from the kept heap: almost no page faults
    (asynchronously dispatched, the same call takes ~33,000 per call, about one per 4 KiB page touched)."""
    inline = _faults_per_call("inline")
    assert inline < 1000, inline
    assert _faults_per_call("async") > 10 * max(inline, 100)


def _conv_and_dot(x, w, a):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")), a @ a


def _compiled_text(jit):
    x, w, a = jnp.ones((8, 8, 8, 64)), jnp.ones((3, 3, 64, 64)), jnp.ones((256, 256))
    return jit(_conv_and_dot).lower(x, w, a).compile().as_text()


@pytest.mark.skipif(not runtime.cpu_compiler_options(), reason="this XLA lacks the CPU options")
def test_jit_leaves_convolutions_to_xla_and_dots_to_ynnpack():
    """``runtime.jit`` hands XLA's own convolution the convs that ``jax.jit`` gives YNNPACK, and keeps
    YNNPACK for matmuls."""
    def ynn_fusions(text):  # the output shapes of the YNNPACK fusions
        return sorted(re.findall(r"%ynn_fusion[.\d]* = f32\[([\d,]+)\]", text))

    assert ynn_fusions(_compiled_text(jax.jit)) == ["256,256", "8,8,8,64"]  # the dot and the conv
    assert ynn_fusions(_compiled_text(runtime.jit)) == ["256,256"]
    # Options of the caller's own are added to jaxcnn's, not instead of them.
    with_own = functools.partial(runtime.jit, compiler_options={"xla_cpu_enable_fast_math": False})
    assert ynn_fusions(_compiled_text(with_own)) == ["256,256"]


def test_cpu_compiler_options_unknown_to_xla_are_dropped(monkeypatch):
    monkeypatch.setattr(runtime, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": "1"})
    runtime.cpu_compiler_options.cache_clear()
    try:
        assert runtime.cpu_compiler_options() == {}
        assert float(runtime.jit(lambda v: v * 2)(jnp.float32(3))) == 6.0
    finally:
        runtime.cpu_compiler_options.cache_clear()
