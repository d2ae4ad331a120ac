"""jaxcnn.runtime: the settings for XLA's CPU backend do what they claim (no timings)."""

import functools
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from jaxcnn import models, runtime
from jaxcnn.train import create_train_state

# "im2col": ResNet-20's first-stage convolution on the im2col backend: its im2col matrix is 75 MB,
# above the 64 MB heap limit of glibc's secondary arenas, so with asynchronous dispatch each call maps
# and page-faults it afresh. "2GiB": an output of 2.1 GiB, above what glibc's mmap threshold can be
# raised to (DenseNet-BC-100's step at batch 64 holds 2.1 GiB of temporaries).
_PROBE = textwrap.dedent("""
    import resource, sys
    import jax, jax.numpy as jnp
    from jaxcnn import runtime
    if sys.argv[1] == "inline":
        runtime.dispatch_cpu_inline()
    runtime.tune_cpu_malloc()
    from jaxcnn import ops
    if sys.argv[2] == "im2col":
        f = jax.jit(lambda x, w: ops.conv2d_im2col(x, w, padding=1))
        args = jnp.ones((128, 32, 32, 16)), jnp.ones((3, 3, 16, 16))
    else:
        f = jax.jit(lambda v: jnp.full((2**29 + 2**25,), v))
        args = (jnp.float32(1.0),)
    for _ in range(6):  # the kept heap reaches its size: it grew on up to 3 of the first 4 calls, never later
        f(*args).block_until_ready()
    faults = []
    for _ in range(int(sys.argv[3])):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(*args).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(sorted(faults)[len(faults) // 2])  # the median call: the heap's occasional growth is a one-off
""")


def _faults_per_call(mode, case="im2col", calls=9):
    out = subprocess.run([sys.executable, "-c", _PROBE, mode, case, str(calls)], capture_output=True, text=True,
                         check=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not runtime.tune_cpu_malloc(), reason="tune_cpu_malloc needs glibc")
def test_inline_dispatch_reuses_large_temporaries():
    """Run inline, a computation's large temporaries come from the kept heap: almost no page faults
    (asynchronously dispatched, the same call takes ~33,000 per call, about one per 4 KiB page touched)."""
    inline = _faults_per_call("inline")
    assert inline < 1000, inline
    assert _faults_per_call("async") > 10 * max(inline, 100)


@pytest.mark.skipif(not runtime.tune_cpu_malloc(), reason="tune_cpu_malloc needs glibc")
def test_a_buffer_above_2_gib_is_reused_too():
    """glibc's mmap threshold cannot be raised past 2 GiB (a C int); with mmap off a 2.1 GiB output is
    still served from the kept heap (mapped afresh, each call took ~550,000 faults). The heap can take
    up to three such outputs before it stops growing, as the previous output is sometimes freed only after
    the next call allocated its own; so the median of five calls after the warm-up."""
    assert _faults_per_call("inline", "2GiB", calls=5) < 1000


_RELEASE_PROBE = textwrap.dedent("""
    import numpy as np
    from jaxcnn import runtime
    def rss_mib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    runtime.tune_cpu_malloc()
    block = np.ones(2**26)  # 512 MiB from the heap, kept mapped once freed
    del block
    kept = rss_mib()
    runtime.release_free_memory()
    print(kept, rss_mib())
""")


@pytest.mark.skipif(not runtime.tune_cpu_malloc() or not os.path.exists("/proc/self/status"),
                    reason="needs glibc and /proc")
def test_free_memory_the_tuned_heap_keeps_is_released():
    out = subprocess.run([sys.executable, "-c", _RELEASE_PROBE], capture_output=True, text=True, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": ""})
    kept, released = map(float, out.stdout.split())
    assert kept - released > 400, (kept, released)  # of the 512 MiB freed


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


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_jit_once_initialises_a_model_to_the_values_of_jax_jit(name):
    """Compiled with less optimisation, the initialiser still draws the same parameters and optimizer
    state, bit for bit (Adam's two moments and EMA too, so that every kind of leaf is compared)."""
    model = models.create(name, num_classes=10)
    init = functools.partial(create_train_state, model, optax.adamw(1e-3), models.input_shape(name), seed=3,
                             ema=True)
    once, default = runtime.jit_once(init)(), jax.jit(init)()
    assert jax.tree.structure(once) == jax.tree.structure(default)
    for a, b in zip(jax.tree.leaves(once), jax.tree.leaves(default)):
        np.testing.assert_array_equal(a, b)


# --- the per-machine cache ------------------------------------------------------------------


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path / "mine"))
    assert runtime.cache_dir() == str(tmp_path / "mine")
    monkeypatch.setenv("JAXCNN_CACHE_DIR", "")
    assert runtime.cache_dir() is None
    monkeypatch.delenv("JAXCNN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.cache_dir() == str(tmp_path / "xdg" / "jaxcnn")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert runtime.cache_dir() == str(tmp_path / "home" / ".cache" / "jaxcnn")


def test_machine_tables_merge_updates_and_are_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path))
    assert runtime.read_machine_table("t") == {}
    runtime.update_machine_table("t", "conv", "a", 1)
    runtime.update_machine_table("t", "conv", "b", 2)  # a second writer keeps the first's entry
    runtime.update_machine_table("t", "pool", "c", "xla")
    table = runtime.read_machine_table("t")
    assert table["conv"] == {"a": 1, "b": 2} and table["pool"] == {"c": "xla"}
    assert table["machine"] == json.loads(json.dumps(runtime.machine_fingerprint()))
    (path,) = tmp_path.iterdir()
    assert re.fullmatch(r"t-[0-9a-f]{16}\.json", path.name), path.name

    fingerprint = runtime.machine_fingerprint()
    monkeypatch.setattr(runtime, "machine_fingerprint", lambda: {**fingerprint, "cores": fingerprint["cores"] + 1})
    assert runtime.read_machine_table("t") == {}  # another machine's (or jax version's) table is not read
    runtime.update_machine_table("t", "conv", "a", 3)
    assert len(list(tmp_path.iterdir())) == 2


def test_an_unreadable_table_warns_and_is_replaced(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path))
    runtime.update_machine_table("t", "conv", "a", 1)
    (path,) = tmp_path.iterdir()
    path.write_text("{half a file")
    with pytest.warns(RuntimeWarning, match="ignoring the unreadable cache file"):
        assert runtime.read_machine_table("t") == {}
    with pytest.warns(RuntimeWarning):
        runtime.update_machine_table("t", "conv", "b", 2)
    assert runtime.read_machine_table("t")["conv"] == {"b": 2}


def test_an_unwritable_cache_only_warns(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("JAXCNN_CACHE_DIR", str(tmp_path / "file" / "below"))  # a directory under a file
    with pytest.warns(RuntimeWarning, match="could not write the cache file"):
        runtime.update_machine_table("t", "conv", "a", 1)
    assert runtime.read_machine_table("t") == {}


def test_the_cache_turned_off_reads_nothing_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXCNN_CACHE_DIR", "")
    monkeypatch.chdir(tmp_path)
    runtime.update_machine_table("t", "conv", "a", 1)
    assert runtime.read_machine_table("t") == {} and list(tmp_path.iterdir()) == []


_COMPILE_CACHE_PROBE = textwrap.dedent("""
    import os, sys
    import jax, jax.numpy as jnp
    from jaxcnn import runtime
    if sys.argv[1] == "user":
        jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ["JAXCNN_CACHE_DIR"], "user"))
    print(runtime.enable_compilation_cache())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.jit(lambda v: jnp.sin(v) * 2)(jnp.ones(3)).block_until_ready()
""")


@pytest.mark.parametrize("who", ["jaxcnn", "user"])
def test_enable_compilation_cache_stores_compiled_programs(tmp_path, who):
    """In a fresh process: programs land in cache_dir()/xla, or where the user already pointed JAX."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # JAX's own setting
    env["JAXCNN_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", _COMPILE_CACHE_PROBE, who], env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()[-1]
    expected = tmp_path / ("xla" if who == "jaxcnn" else "user")
    assert out == str(expected)
    assert any(p.name.startswith("jit__lambda") for p in expected.iterdir())


def test_cpuinfo_fields_are_read_from_proc_cpuinfo():
    assert runtime.cpuinfo_field("no such field") is None
    if os.path.exists("/proc/cpuinfo"):
        assert runtime.cpu_model() == runtime.cpuinfo_field("model name")
        assert runtime.cpuinfo_field("flags")  # a Linux CPU lists its features


def test_cpuinfo_fields_match_their_whole_name(monkeypatch, tmp_path):
    fake = tmp_path / "cpuinfo"
    fake.write_text("model name\t: Some CPU\nvmx flags\t: ept\nmodel\t\t: 17\nflags\t\t: avx512_bf16 sse\n")
    monkeypatch.setattr(runtime, "open", lambda path: open(fake), raising=False)
    assert runtime.cpuinfo_field("model") == "17" and runtime.cpuinfo_field("model name") == "Some CPU"
    assert runtime.cpuinfo_field("flags") == "avx512_bf16 sse" and runtime.cpuinfo_field("mod") is None
