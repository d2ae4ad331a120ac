"""jaxcnn.runtime: the process settings for XLA's CPU backend do what they claim (no timings)."""

import subprocess
import sys
import textwrap

import pytest

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
