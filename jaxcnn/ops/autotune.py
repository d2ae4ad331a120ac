"""``conv2d_auto`` and the auto pools: each pass computed the way measured fastest for its shape.

A convolution's three passes, the forward ``y = x * w``, the weight gradient
``dW`` and the input gradient ``dx``, each have formulations proven equal by the
gradient-check suite, and which one is fastest depends on the shape. On XLA's
CPU backend, for instance, LeNet-5's one-channel first layer runs about twice as
fast as im2col + matmul as on ``lax.conv_general_dilated``, ResNet's 16-channel
layers are fastest on ``lax``, and col2im beats XLA's transposed convolution for
many input gradients.

``conv2d_auto`` therefore picks, per pass, among

* forward: ``"xla"`` (``lax.conv_general_dilated``), ``"im2col"`` (``cols @ W``),
  ``"banded"`` (``rows @ T``, :mod:`jaxcnn.ops.banded`: ``b`` output pixels per
  matrix row, for layers with few filters), ``"onednn"`` (oneDNN's convolution
  kernels, PyTorch's on the CPU, as XLA FFI calls: :mod:`jaxcnn.ops.onednn`);
* weight gradient: ``"xla"`` (autodiff of the lax convolution), ``"im2col"``
  (``colsᵀ · dy``), ``"banded"`` (``rowsᵀ · dy``, folded), ``"onednn"``;
* input gradient: ``"xla"``, ``"im2col"`` (``col2im(dy · Wᵀ)``), ``"banded"``,
  ``"onednn"``.

The choice is a :class:`ConvPlan`, made once per shape signature by timing the
candidates on random data of that signature (a second or so per shape, at trace
time, compiled by :func:`jaxcnn.runtime.jit` as the training steps are): the
forward and the weight gradient are chosen together (each pass's fastest, kept only
if that pair also beats each single formulation doing both whose passes alone came
within :data:`PAIR_MARGIN` of it), and the input gradient,
which reads only ``dy`` and ``W`` and which a network's first layer never runs, on
its own. ``"banded"`` is a candidate only where its band
is wider than one pixel (:func:`jaxcnn.ops.banded.band_width`); elsewhere it would
compute im2col's products; ``"onednn"`` only where its kernels run
(:func:`jaxcnn.ops.onednn.usable`: float32 on the CPU, or bfloat16 on a CPU with native
bfloat16 products, kernels built), elsewhere it
would compute lax's. The choice is cached for the
process and in the machine's cache (:func:`jaxcnn.runtime.cache_dir`, file
``autotune-v8-<machine>.json``), so a later process on the same machine and software
reuses it instead of measuring again (ResNet-20: about 11 s of its first step);
:func:`plans` and :func:`set_plans` read and preset the process's cache, so a
resumed run can reuse the first run's choices and stay bit-exact. Plans are
measured only on the CPU backend in a single process and for problems big
enough for the choice to matter; elsewhere (GPU/TPU convolutions are the vendor
libraries' already, multi-process runs must agree on one program) every pass is
``"xla"``. On CPU an input of 16 channels or more is also stored once for the
backward, apart from its producer (see ``jaxcnn.ops._fusion.materialized``), unless
oneDNN's kernels read it in both the forward and the weight gradient (they take it
as a stored buffer already).

Average pools with ``backend="auto"`` choose between the lax and the im2col
formulation the same way, by the time of forward plus backward. Max pools are not
measured: on the CPU a channels-last float32 max pool of 32 channels or more runs on jaxcnn's FFI
kernels (:func:`jaxcnn.ops.onednn.max_pool_usable`; a bfloat16 one is pooled as float32), elsewhere on
the lax formulation, whose gradient is jaxcnn's own (see :func:`max_pool2d_auto`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import runtime
from jaxcnn.ops import lax_passes, onednn
from jaxcnn.ops import pool as _pool
from jaxcnn.ops._fusion import materialized
from jaxcnn.ops.banded import band_width, banded_forward, banded_grad_input, banded_grad_weight, banded_rows
from jaxcnn.ops.conv import add_bias
from jaxcnn.ops.im2col import (
    Window,
    from_channels_last,
    grouped_cols,
    matmul_forward,
    matmul_grad_input,
    matmul_grad_weight,
    resolve_conv2d_nhwc,
)

# Below this many multiply-adds (N*OH*OW*O*KH*KW*C/G) a conv plan is not worth measuring;
# below this many input values neither is a pool.
MIN_MEASURED_MACS = 1 << 22
MIN_MEASURED_OUTPUT = 1 << 16
# Conv inputs this wide are stored for the backward (materialized); narrower ones (LeNet-5's 1 and
# 6 channels) measured 15-25% slower stored than recomputed.
MATERIALIZED_FROM_CHANNELS = 16


@dataclasses.dataclass(frozen=True)
class ConvPlan:
    """How ``conv2d_auto`` computes one convolution shape: a formulation per pass."""

    forward: str = "xla"
    grad_weight: str = "xla"
    grad_input: str = "xla"


XLA_PLAN = ConvPlan()


def all_plans() -> list[ConvPlan]:
    """Every plan ``conv2d_auto`` can choose (each formulation handles every geometry and group count)."""
    return [ConvPlan(f, dw, dx) for f in FORWARD for dw in GRAD_WEIGHT for dx in GRAD_INPUT]


# --- formulations, all over NHWC x, HWIO w, zero padding given by the window ----------------


_xla_forward = lax_passes.forward


def _im2col_forward(x, w, window, groups):
    return matmul_forward(x, w, window, groups)[0]


def _xla_grad_weight(x, w, dy, window, groups):
    return lax_passes.grad_weight(x, dy, w.shape, window, groups)


def _xla_grad_input(x, w, dy, window, groups):
    del x
    return lax_passes.grad_input(dy, w, window, groups)


def _im2col_grad_weight(x, w, dy, window, groups):
    return matmul_grad_weight(grouped_cols(x, window, groups), dy, w.shape, groups)


def _im2col_grad_input(x, w, dy, window, groups):
    del x
    return matmul_grad_input(dy, w, window, groups)


def _band(window: Window, w_shape, groups: int) -> int:
    return band_width(window, w_shape[3] // groups)


def _banded_forward(x, w, window, groups):
    return banded_forward(x, w, window, groups, _band(window, w.shape, groups))[0]


def _banded_grad_weight(x, w, dy, window, groups):
    b = _band(window, w.shape, groups)
    return banded_grad_weight(banded_rows(x, window, groups, b), dy, w.shape, window, groups, b)


def _banded_grad_input(x, w, dy, window, groups):
    del x
    return banded_grad_input(dy, w, window, groups, _band(window, w.shape, groups))


# oneDNN where its kernels run (jaxcnn.ops.onednn.usable), lax otherwise: the same values.
def _onednn_forward(x, w, window, groups):
    if not onednn.usable(x.dtype):
        return _xla_forward(x, w, window, groups)
    return onednn.onednn_forward(x, w, window, groups)


def _onednn_grad_weight(x, w, dy, window, groups):
    if not onednn.usable(x.dtype):
        return _xla_grad_weight(x, w, dy, window, groups)
    return onednn.onednn_grad_weight(x, dy, w.shape, window, groups)


def _onednn_grad_input(x, w, dy, window, groups):
    if not onednn.usable(dy.dtype):
        return _xla_grad_input(x, w, dy, window, groups)
    return onednn.onednn_grad_input(dy, w, window, groups)


FORWARD: dict[str, Callable] = {"xla": _xla_forward, "im2col": _im2col_forward, "banded": _banded_forward,
                                "onednn": _onednn_forward}
GRAD_WEIGHT: dict[str, Callable] = {"xla": _xla_grad_weight, "im2col": _im2col_grad_weight,
                                    "banded": _banded_grad_weight, "onednn": _onednn_grad_weight}
GRAD_INPUT: dict[str, Callable] = {"xla": _xla_grad_input, "im2col": _im2col_grad_input,
                                   "banded": _banded_grad_input, "onednn": _onednn_grad_input}


# --- the differentiable op ------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_planned(x, w, window: Window, groups: int, plan: ConvPlan):
    return FORWARD[plan.forward](x, w, window, groups)


def _conv_planned_fwd(x, w, window, groups, plan):
    # The weight gradient reads the forward's im2col (or band) matrix: build it once, keep it.
    if plan.forward == plan.grad_weight == "im2col":
        y, cols_g = matmul_forward(x, w, window, groups)
        return y, (x, w, cols_g)
    if plan.forward == plan.grad_weight == "banded":
        y, rows_g = banded_forward(x, w, window, groups, _band(window, w.shape, groups))
        return y, (x, w, rows_g)
    residual = materialized(x) if _stores_input_apart(x, plan) else x
    return _conv_planned(x, w, window, groups, plan), (residual, w, None)


def _stores_input_apart(x, plan: ConvPlan) -> bool:
    """Whether the backward's ``x`` is :func:`materialized`: wide inputs, unless oneDNN reads ``x`` in both
    passes that read it (the forward and the weight gradient), whose kernels already take it as one stored
    buffer (where the store is the identity matmul, that pass only copied it: ResNet-20, ~20 ms of a
    ~140 ms step)."""
    if x.shape[-1] < MATERIALIZED_FROM_CHANNELS:
        return False
    return not (plan.forward == plan.grad_weight == "onednn" and onednn.usable(x.dtype))


def _conv_planned_bwd(window, groups, plan, residuals, dy):
    x, w, cols_g = residuals
    dx = GRAD_INPUT[plan.grad_input](x, w, dy, window, groups)  # dead code when x needs no gradient
    if cols_g is None:
        dw = GRAD_WEIGHT[plan.grad_weight](x, w, dy, window, groups)
    elif plan.grad_weight == "banded":
        dw = banded_grad_weight(cols_g, dy, w.shape, window, groups, _band(window, w.shape, groups))
    else:
        dw = matmul_grad_weight(cols_g, dy, w.shape, groups)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_conv_planned.defvjp(_conv_planned_fwd, _conv_planned_bwd)


def conv2d_auto(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                data_format="NHWC", plan: ConvPlan | None = None):
    """:func:`jaxcnn.ops.conv2d`, each pass computed by the formulation measured fastest.

    Same signature, validation and results (to float rounding) as ``conv2d``;
    the forward, weight-gradient and input-gradient formulations are chosen per
    shape by :func:`conv_plan` (see the module docstring), or forced by ``plan``
    (as the gradient check does, to prove every plan equal). Non-zero padding
    modes pad first and are differentiated by JAX; the bias is added outside.
    """
    x, w, b, spec, window = resolve_conv2d_nhwc(
        x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode, data_format=data_format, fn="conv2d_auto",
    )
    if plan is None:
        plan = conv_plan(x.shape, w.shape, x.dtype, window, spec.groups)
    y = from_channels_last(_conv_planned(x, w, window, spec.groups, plan), spec.channels_last)
    return add_bias(y, b, spec)


# --- plans: measured once per shape signature, cached ---------------------------------------

_PLANS: dict[str, ConvPlan] = {}
_POOL_CHOICES: dict[str, str] = {}


def plan_key(x_shape, w_shape, dtype, window: Window, groups: int) -> str:
    """The cache key of a convolution: shapes, dtype, geometry, groups and the platform."""
    return (f"x{tuple(x_shape)} w{tuple(w_shape)} {jnp.dtype(dtype).name} s{window.stride} "
            f"d{window.dilation} p{tuple(window.padding)} g{groups} {jax.default_backend()}")


def plans() -> dict[str, dict]:
    """The cached choices, JSON-able: ``{"conv": {key: {"forward": ..., "grad_weight": ...,
    "grad_input": ...}}, "pool": {key: "xla" | "im2col"}}``."""
    return {"conv": {key: dataclasses.asdict(plan) for key, plan in _PLANS.items()}, "pool": dict(_POOL_CHOICES)}


def _conv_plan_of(key: str, fields, fn: str) -> ConvPlan:
    if not isinstance(fields, dict) or set(fields) != {"forward", "grad_weight", "grad_input"}:
        raise ValueError(f"{fn}: conv {key!r} is {fields!r}; expected a dict of forward, grad_weight, grad_input")
    for pass_, names in (("forward", FORWARD), ("grad_weight", GRAD_WEIGHT), ("grad_input", GRAD_INPUT)):
        if fields[pass_] not in names:
            raise ValueError(f"{fn}: conv {key!r} has {pass_}={fields[pass_]!r}; expected one of {sorted(names)}")
    return ConvPlan(**fields)


def _pool_choice_of(key: str, choice, fn: str) -> str:
    if choice not in ("xla", "im2col"):
        raise ValueError(f"{fn}: pool {key!r} is {choice!r}; expected 'xla' or 'im2col'")
    return choice


def set_plans(table: dict[str, dict]) -> None:
    """Preset cached choices from a :func:`plans` table (e.g. the one an interrupted run saved)."""
    for key, fields in table.get("conv", {}).items():
        _PLANS[key] = _conv_plan_of(key, fields, "set_plans")
    for key, choice in table.get("pool", {}).items():
        _POOL_CHOICES[key] = _pool_choice_of(key, choice, "set_plans")


def clear_plans() -> None:
    """Forget every choice cached in this process; the next call of each shape takes the machine's
    cached choice if there is one, else measures again."""
    _PLANS.clear()
    _POOL_CHOICES.clear()


# Versioned by the formulations offered and their speed: choices measured among other ones are measured again.
MACHINE_TABLE = "autotune-v8"  # v8: bfloat16 convolutions on oneDNN


def _machine_choice(section: str, key: str, parse: Callable):
    """The choice this machine's cache holds for ``key``, or None (an invalid entry is measured again)."""
    stored = runtime.read_machine_table(MACHINE_TABLE).get(section, {})
    if not isinstance(stored, dict) or key not in stored:
        return None
    try:
        return parse(key, stored[key], "the machine cache")
    except ValueError:
        return None


_MEASURED_SECONDS: list[float] = []  # one entry per choice this process measured


def measured() -> tuple[int, float]:
    """How many conv and pool choices this process has measured, and the seconds they took."""
    return len(_MEASURED_SECONDS), sum(_MEASURED_SECONDS)


def _measured_once(section: str, key: str, parse: Callable, measure: Callable, to_json: Callable):
    """The machine's cached choice for ``key``, or ``measure()``'s, which is then cached."""
    choice = _machine_choice(section, key, parse)
    if choice is None:
        start = time.perf_counter()
        choice = measure()
        _MEASURED_SECONDS.append(time.perf_counter() - start)
        runtime.update_machine_table(MACHINE_TABLE, section, key, to_json(choice))
    return choice


_PAUSED: list[bool] = []


@contextlib.contextmanager
def measuring_paused():
    """Within this block, shapes with no cached choice run on xla, unmeasured and uncached.

    For code that traces a model only for its shapes or initial parameters (on a
    batch of 1 that training never sees): measuring those shapes would be wasted.
    """
    _PAUSED.append(True)
    try:
        yield
    finally:
        _PAUSED.pop()


def _measures() -> bool:
    return jax.default_backend() == "cpu" and jax.process_count() == 1


def conv_plan(x_shape, w_shape, dtype, window: Window, groups: int) -> ConvPlan:
    """The cached :class:`ConvPlan` for this convolution, measured on first use."""
    key = plan_key(x_shape, w_shape, dtype, window, groups)
    if key not in _PLANS and _PAUSED:
        return XLA_PLAN
    if key not in _PLANS:
        macs = x_shape[0] * int(np.prod(window.out_size)) * int(np.prod(w_shape))
        if not _measures() or macs < MIN_MEASURED_MACS:
            _PLANS[key] = XLA_PLAN
        else:
            _PLANS[key] = _measured_once(
                "conv", key, _conv_plan_of, lambda: _measure_conv_plan(x_shape, w_shape, dtype, window, groups),
                dataclasses.asdict)
    return _PLANS[key]


def _fastest(candidates: dict, args):
    """Key of the candidate with the smallest time per call (:func:`_best_times`)."""
    times = _best_times(candidates, args)
    return min(times, key=times.get)


def _best_times(candidates: dict, args, rounds: int = 4, min_time: float = 0.005) -> dict:
    """Each candidate's seconds per call, the best of ``rounds`` rounds of at least ``min_time``.

    Rounds, not their length, decide how well this picks: replayed against held-out rounds over
    ResNet-50's and GoogLeNet's 288 choices, four rounds of 5 ms lost 0.63% on average to the
    held-out fastest, four of 10 ms 0.66%, three of 5 ms 0.86%. Seven rounds of 10 ms took over
    three times as long, half of a first step's measuring.
    """
    compiled = {name: runtime.jit(fn).lower(*args).compile() for name, fn in candidates.items()}
    samples: dict = {name: [] for name in compiled}
    for name, fn in compiled.items():  # warm up
        jax.block_until_ready(fn(*args))
    for _ in range(rounds):
        for name, fn in compiled.items():
            start, calls = time.perf_counter(), 0
            while True:
                jax.block_until_ready(fn(*args))
                calls += 1
                if time.perf_counter() - start >= min_time:
                    break
            samples[name].append((time.perf_counter() - start) / calls)
    # The minimum, not the median: on a shared machine other load only ever adds time,
    # and the minimum picks the same winner run after run far more often.
    return {name: min(times) for name, times in samples.items()}


def _random(shape, dtype, seed):
    """Concrete random data, even while a training step is being traced (plans are measured then).

    Only the data is made under ``ensure_compile_time_eval``: under it, the candidates' own traces
    would compute their constants (the zeros ``lax_passes`` differentiates at) eagerly, one extra
    compile each, and carry them into the timed programs as literals the training step does not have.
    The data is cast by numpy and only copied to the device: an eager ``jnp.asarray(..., dtype)``
    compiles a conversion per shape, which JAX's caches keep (ResNet-50: ~50 MiB held for good).
    """
    data = np.random.default_rng(seed).standard_normal(shape).astype(jnp.dtype(dtype))
    with jax.ensure_compile_time_eval():
        return jax.device_put(data)


def _measure_conv_plan(x_shape, w_shape, dtype, window: Window, groups: int) -> ConvPlan:
    x, w = _random(x_shape, dtype, 0), _random(w_shape, dtype, 1)
    dy = _random((x_shape[0], *window.out_size, w_shape[3]), dtype, 2)
    names = candidates(window, w_shape, dtype, groups)

    def bind(table):
        return {name: functools.partial(table[name], window=window, groups=groups) for name in names}

    forward_times = _best_times(bind(FORWARD), (x, w))
    grad_weight_times = _best_times(bind(GRAD_WEIGHT), (x, w, dy))
    # Passes timed alone need not add up: the forward and the weight gradient (which may share
    # the forward's im2col or band matrix, and decide whether the input is stored apart) are
    # chosen together, their winners' mix against each formulation doing both. The input
    # gradient reads only dy and w, and is chosen alone: its cost must not sway the other two,
    # since a network's first layer never computes it (LeNet-5's C1: the banded plan won
    # forward + both gradients, 2.4 against 2.7 ms, but forward + dW took 0.86 against oneDNN's
    # 0.45 ms, and its training step ran 0.6-0.8x as fast).
    forward, grad_weight = _fastest_pair(forward_times, grad_weight_times, window, groups, (x, w, dy))
    return ConvPlan(forward, grad_weight, _fastest(bind(GRAD_INPUT), (x, w, dy)))


# A formulation doing both passes is timed against the passes' winners only where its passes
# timed alone take at most this much longer than the winners': over 155 shapes of eight models,
# the pair that won took at most 1.25x its passes' sum alone (GoogLeNet's 832->32 1x1: oneDNN
# doing both, which stores no copy of the input, see _stores_input_apart), and the others never won.
PAIR_MARGIN = 1.5


def _fastest_pair(forward_times: dict, grad_weight_times: dict, window: Window, groups: int, args):
    """The (forward, grad_weight) formulations a plan takes, from the passes' times alone.

    Each pass's winner, unless a formulation doing both (sharing its matrix or stored input)
    within :data:`PAIR_MARGIN` of them is faster timed as one program.
    """
    mixed = (min(forward_times, key=forward_times.get), min(grad_weight_times, key=grad_weight_times.get))
    budget = PAIR_MARGIN * (forward_times[mixed[0]] + grad_weight_times[mixed[1]])
    pairs = {mixed: None}
    pairs.update({(name, name): None for name in forward_times
                  if forward_times[name] + grad_weight_times[name] <= budget})
    if len(pairs) == 1:
        return mixed
    return _fastest({pair: _forward_and_grad_weight(*pair, window, groups) for pair in pairs}, args)


def candidates(window: Window, w_shape, dtype, groups: int) -> list[str]:
    """The formulations ``conv2d_auto`` measures for this convolution.

    All but ``"banded"`` where its band is one pixel wide (it would compute im2col's
    products) and ``"onednn"`` where its kernels do not run (it would compute lax's):
    neither is worth its compiles.
    """
    skipped = {"banded"} if _band(window, w_shape, groups) == 1 else set()
    if not onednn.usable(dtype):
        skipped.add("onednn")
    return [name for name in FORWARD if name not in skipped]


def _forward_and_grad_weight(forward: str, grad_weight: str, window: Window, groups: int) -> Callable:
    """The forward and the weight gradient of a plan, as a training step runs them (input stored as planned).

    Differentiated for ``w`` only, so the plan's input gradient is dead code, removed by the jit.
    """
    plan = ConvPlan(forward, grad_weight)

    def run(x, w, dy):
        y, vjp = jax.vjp(lambda b: _conv_planned(x, b, window, groups, plan), w)
        return y, vjp(dy)

    return run


# --- pools ----------------------------------------------------------------------------------

def _pool_auto(lax_fn, im2col_fn, x, kernel_size, stride, kwargs):
    key = (f"{lax_fn.__name__} x{tuple(x.shape)} {jnp.dtype(x.dtype).name} k{kernel_size} s{stride} "
           f"{sorted(kwargs.items())} {jax.default_backend()}")
    if key not in _POOL_CHOICES and _PAUSED:
        return lax_fn(x, kernel_size, stride, **kwargs)
    if key not in _POOL_CHOICES:
        if not _measures() or x.size < MIN_MEASURED_OUTPUT:
            _POOL_CHOICES[key] = "xla"
        else:
            def measure():
                def train_pass(fn):
                    return jax.grad(lambda v: jnp.sum(jnp.square(fn(v, kernel_size, stride, **kwargs))))

                return _fastest({"xla": train_pass(lax_fn), "im2col": train_pass(im2col_fn)},
                                (_random(x.shape, x.dtype, 0),))

            _POOL_CHOICES[key] = _measured_once("pool", key, _pool_choice_of, measure, str)
    fn = lax_fn if _POOL_CHOICES[key] == "xla" else im2col_fn
    return fn(x, kernel_size, stride, **kwargs)


def max_pool2d_auto(x, kernel_size, stride=None, *, padding=0, ceil_mode=False, dilation=1,
                    data_format="NHWC"):
    """:func:`jaxcnn.ops.max_pool2d`, unmeasured: on jaxcnn's FFI kernels where they take a channels-last
    ``x`` (:func:`jaxcnn.ops.onednn.max_pool`, reverse-mode differentiable), else the lax formulation with
    jaxcnn's own gradient.

    The FFI pool's forward + backward took 0.24-0.42x of the lax formulation's
    time on GoogLeNet's and ResNet-50's pools, 0.64-1.11x PyTorch's
    (``benchmarks/ops.py --only maxpool``, ``benchmarks/RESULTS.md``). Timed
    alone, im2col's max pool (its gradient an argmax gather and scatter) is
    sometimes slightly faster than lax's (0.87-0.90x on LeNet-5's S2 and ResNet's
    3x3/2 stem on the CPU), and measuring picked it; inside whole training steps
    the lax pool was faster wherever that happened (LeNet-5 auto step 1.09x,
    ResNet-50 1.03x, side by side with the conv plans fixed), so there is nothing
    to measure.
    """
    x, spec = _pool.resolve_pool(x, 2, kernel_size, stride, padding, dilation, ceil_mode, data_format,
                                 "max_pool2d_auto")
    if x.dtype == jnp.bfloat16 and jax.default_backend() == "cpu":
        # As float32: the same maximum, and each input's gradient the float32 sum of its cotangents,
        # rounded once, as the FFI pool's bfloat16 kernels compute them, but faster than those kernels
        # (GoogLeNet's bfloat16 step 1.20-1.28x, LeNet-5's 1.16x). In a jitted step XLA may skip
        # rounding a value it computed in float32 on its way in (its excess precision: ResNet-50's
        # stem pool gets the sum of its two incoming cotangents unrounded), so a model's values
        # differ slightly, in the direction of float32, from those the bfloat16 kernels gave.
        return _max_pool(x.astype(jnp.float32), spec).astype(x.dtype)
    return _max_pool(x, spec)


def _max_pool(x, spec: _pool.PoolSpec):
    """The windowed max of resolved ``x``: the FFI pool where :func:`jaxcnn.ops.onednn.max_pool_usable`, else lax's."""
    if spec.channels_last and onednn.max_pool_usable(x, spec.window):
        return onednn.max_pool(x, spec.window)
    return _pool.window_max(x, spec)


def avg_pool2d_auto(x, kernel_size, stride=None, *, padding=0, ceil_mode=False, count_include_pad=True,
                    data_format="NHWC"):
    """:func:`jaxcnn.ops.avg_pool2d` on whichever of lax / im2col trains faster at this shape."""
    return _pool_auto(_pool.avg_pool2d, _pool.avg_pool2d_im2col, x, kernel_size, stride,
                      dict(padding=padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                           data_format=data_format))
