"""Gradient check of the conv and pool primitives, and of whole models, as a command users run.

    python -m jaxcnn.gradcheck [--num 12] [--seed 0]
    python -m jaxcnn.gradcheck --model lenet5 [--image-size 32]

For random configurations (strides, dilation, groups, every padding form and
mode, both data formats) it prints one row per case with the max relative
errors of

* ``conv2d_im2col`` (hand-written im2col/col2im VJP) against ``conv2d`` (lax):
  forward, and the gradients w.r.t. input, weight and bias;
* ``conv2d_auto`` under every plan it can choose (each combination of the
  forward, weight-gradient and input-gradient formulations) against lax: the
  largest error of forward and gradients over all plans;
* each backend's reverse-mode gradient against central finite differences
  in float64, along a random direction of all inputs at once;
* the im2col pooling variants against the ``lax.reduce_window`` ones, and
  ``max_pool2d_auto`` (on the CPU, jaxcnn's FFI max pool) against ``max_pool2d``:
  forward and input gradient;

and exits 1 if any error is above its tolerance. With ``--model NAME`` it checks
one model instead, in float64: the ``im2col`` backend against ``xla`` (logits,
gradients w.r.t. all parameters and the input, in train mode), and each backend
against finite differences, on a batch of 8 random images.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxcnn import ops
from jaxcnn.ops import autotune

MODES = ("zeros", "reflect", "replicate", "circular")


@dataclasses.dataclass(frozen=True)
class ConvCase:
    """One convolution configuration, always valid."""

    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    stride: tuple[int, int]
    padding: Any
    dilation: tuple[int, int]
    groups: int
    padding_mode: str
    data_format: str

    @property
    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    padding_mode=self.padding_mode, data_format=self.data_format)

    def describe(self) -> str:
        pad = self.padding if isinstance(self.padding, str) else str(self.padding).replace(" ", "")
        return (f"{self.data_format} x{list(self.x_shape)} w{list(self.w_shape)} s{list(self.stride)} "
                f"d{list(self.dilation)} g{self.groups} p={pad} {self.padding_mode}")


@dataclasses.dataclass(frozen=True)
class PoolCase:
    kind: str  # "max" | "avg"
    x_shape: tuple[int, ...]
    kwargs: dict

    def describe(self) -> str:
        kw = self.kwargs
        opts = f"k{list(kw['kernel_size'])} s{list(kw['stride'])} p{list(kw['padding'])}"
        if self.kind == "max":
            opts += f" d{list(kw['dilation'])}"
        else:
            opts += " incl-pad" if kw["count_include_pad"] else " excl-pad"
        if kw["ceil_mode"]:
            opts += " ceil"
        return f"{self.kind}_pool2d {kw['data_format']} x{list(self.x_shape)} {opts}"


def random_conv_case(rng: np.random.Generator) -> ConvCase:
    """A random valid 2-D convolution: kernel fits the padded input, pads fit the mode."""
    groups = int(rng.choice([1, 1, 2, 3]))
    c_in, c_out = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
    stride = tuple(int(s) for s in rng.integers(1, 4, 2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 2))
    mode = str(rng.choice(MODES))
    style = rng.choice(["int", "pairs", "SAME", "VALID"])
    pads = [(int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(2)]
    padding = {"int": pads[0][0], "pairs": tuple(pads), "SAME": "SAME", "VALID": "VALID"}[style]
    size = []
    for i, (k, d) in enumerate(zip(kernel, dilation)):
        lo, hi = {"int": (pads[0][0],) * 2, "pairs": pads[i]}.get(style, (0, 0))
        low = max(1, d * (k - 1) + 1 - lo - hi, max(lo, hi) + 1, d * (k - 1))  # SAME pads < eff kernel
        size.append(low + int(rng.integers(0, 4)))
    n = int(rng.integers(1, 3))
    channels_last = bool(rng.integers(0, 2))
    if channels_last:
        x_shape, w_shape = (n, *size, c_in), (*kernel, c_in // groups, c_out)
    else:
        x_shape, w_shape = (n, c_in, *size), (c_out, c_in // groups, *kernel)
    return ConvCase(x_shape, w_shape, stride, padding, dilation, groups, mode,
                    "NHWC" if channels_last else "NCHW")


def random_pool_case(rng: np.random.Generator) -> PoolCase:
    kind = str(rng.choice(["max", "avg"]))
    kernel = tuple(int(k) for k in rng.integers(1, 4, 2))
    stride = tuple(int(s) for s in rng.integers(1, 4, 2))
    dilation = tuple(int(d) for d in rng.integers(1, 3, 2)) if kind == "max" else (1, 1)
    padding = tuple(int(rng.integers(0, (d * (k - 1) + 1) // 2 + 1)) for k, d in zip(kernel, dilation))
    size = [d * (k - 1) + 1 + int(rng.integers(0, 5)) for k, d in zip(kernel, dilation)]
    # max pools of 32 or 33 channels too: max_pool2d_auto's FFI kernels take 32 or more (channels-last)
    c, n = int(rng.choice([1, 2, 3, 32, 33] if kind == "max" else [1, 2, 3])), int(rng.integers(1, 3))
    channels_last = bool(rng.integers(0, 2))
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=bool(rng.integers(0, 2)),
                  data_format="NHWC" if channels_last else "NCHW")
    if kind == "max":
        kwargs["dilation"] = dilation
    else:
        kwargs["count_include_pad"] = bool(rng.integers(0, 2))
    return PoolCase(kind, (n, *size, c) if channels_last else (n, c, *size), kwargs)


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max(|expected|), with the scale floored at 1e-30."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max(initial=0.0) / max(np.abs(expected).max(initial=0.0), 1e-30))


def _value_and_vjp(fn: Callable, args: Sequence, cotangent) -> list:
    def run(args_, cot):
        y, vjp = jax.vjp(fn, *args_)
        return [y, *vjp(cot)]

    return jax.jit(run)(args, cotangent)


def finite_difference_error(fn: Callable, args: Sequence, rng: np.random.Generator, eps: float = 1e-5) -> float:
    """Reverse-mode gradient of ``sum(tanh(fn(*args)) * r)`` vs central differences, in float64.

    Compares the directional derivative ``<grad, v>`` along a random unit
    direction ``v`` of all arguments with ``(L(a + eps v) - L(a - eps v)) / (2 eps)``.
    """
    with jax.enable_x64(True):
        args = [jnp.asarray(a, jnp.float64) for a in args]
        r = jnp.asarray(rng.standard_normal(jax.eval_shape(fn, *args).shape))
        loss = jax.jit(lambda *a: jnp.sum(jnp.tanh(fn(*a)) * r))
        grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))(*args)
        direction = [rng.standard_normal(a.shape) for a in args]
        norm = np.sqrt(sum(np.sum(v**2) for v in direction))
        direction = [jnp.asarray(v / norm) for v in direction]
        analytic = sum(float(jnp.vdot(g, v)) for g, v in zip(grads, direction))
        plus = loss(*(a + eps * v for a, v in zip(args, direction)))
        minus = loss(*(a - eps * v for a, v in zip(args, direction)))
        numeric = float(plus - minus) / (2 * eps)
    return abs(analytic - numeric) / max(abs(numeric), abs(analytic), 1e-12)


def check_conv(case: ConvCase, rng: np.random.Generator) -> dict[str, float]:
    x = rng.standard_normal(case.x_shape).astype(np.float32)
    w = rng.standard_normal(case.w_shape).astype(np.float32)
    b = rng.standard_normal(case.w_shape[-1 if case.data_format == "NHWC" else 0]).astype(np.float32)
    lax_conv = lambda *a: ops.conv2d(*a, **case.kwargs)
    im2col_conv = lambda *a: ops.conv2d_im2col(*a, **case.kwargs)
    dy = rng.standard_normal(jax.eval_shape(lax_conv, x, w, b).shape).astype(np.float32)
    expected = _value_and_vjp(lax_conv, (x, w, b), dy)
    actual = _value_and_vjp(im2col_conv, (x, w, b), dy)
    errors = {name: relative_error(a, e) for name, a, e in zip(("fwd", "dx", "dw", "db"), actual, expected)}
    errors["plans"] = max(
        relative_error(a, e)
        for plan in autotune.all_plans()
        for a, e in zip(_value_and_vjp(lambda *a, plan=plan: ops.conv2d_auto(*a, **case.kwargs, plan=plan),
                                       (x, w, b), dy), expected)
    )
    errors["fd lax"] = finite_difference_error(lax_conv, (x, w, b), rng)
    errors["fd im2col"] = finite_difference_error(im2col_conv, (x, w, b), rng)
    return errors


def check_pool(case: PoolCase, rng: np.random.Generator) -> dict[str, float]:
    # distinct values: a max-pool tie has no derivative for finite differences to find
    x = rng.permutation(np.prod(case.x_shape)).reshape(case.x_shape).astype(np.float32) / np.prod(case.x_shape)
    lax_pool = {"max": ops.max_pool2d, "avg": ops.avg_pool2d}[case.kind]
    im2col_pool = {"max": ops.max_pool2d_im2col, "avg": ops.avg_pool2d_im2col}[case.kind]
    lax_fn = lambda v: lax_pool(v, **case.kwargs)
    im2col_fn = lambda v: im2col_pool(v, **case.kwargs)
    dy = rng.standard_normal(jax.eval_shape(lax_fn, x).shape).astype(np.float32)
    expected, actual = _value_and_vjp(lax_fn, (x,), dy), _value_and_vjp(im2col_fn, (x,), dy)
    errors = {name: relative_error(a, e) for name, a, e in zip(("fwd", "dx"), actual, expected)}
    if case.kind == "max":
        auto = _value_and_vjp(lambda v: ops.max_pool2d_auto(v, **case.kwargs), (x,), dy)
        errors["auto"] = max(relative_error(a, e) for a, e in zip(auto, expected))
    errors["fd lax"] = finite_difference_error(lax_fn, (x,), rng, eps=1e-6)
    errors["fd im2col"] = finite_difference_error(im2col_fn, (x,), rng, eps=1e-6)
    return errors


def check_model(name: str, rng: np.random.Generator, image_size: int | None = None, batch: int = 8
                ) -> dict[str, float]:
    """im2col vs xla backends of one model, and each against finite differences, all in float64.

    Train mode (BatchNorm on batch statistics, dropout with a fixed rng). Float64
    keeps the comparison about the backends: a deep network's float32 gradients
    differ from the exact ones by up to 1e-2 through rounding alone (DenseNet-BC).
    Both backends are differenced along the same random direction with a small
    step (1e-7): a ReLU network has so many kinks that a larger step crosses some.
    """
    from jaxcnn import models

    h, w, c = models.input_shape(name)
    if image_size:
        h = w = image_size
    x = rng.standard_normal((batch, h, w, c))
    key = jax.random.key(int(rng.integers(2**31)))
    variables = models.create(name, num_classes=3).init({"params": key, "dropout": key}, x.astype(np.float32),
                                                        train=False)
    r = rng.standard_normal((batch, 3))
    fd_seed = int(rng.integers(2**31))
    with jax.enable_x64(True):
        variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
        params = variables["params"]
        state = {k: v for k, v in variables.items() if k != "params"}

        def logits_fn(backend):
            model = models.create(name, num_classes=3, conv_backend=backend, dtype=jnp.float64)

            def run(params_, x_):
                out = model.apply({"params": params_, **state}, x_, train=True, rngs={"dropout": key},
                                  mutable=list(state))
                out = out[0] if state else out
                return out[0] if isinstance(out, tuple) else out

            return run

        expected = _value_and_vjp(logits_fn("xla"), (params, jnp.asarray(x)), jnp.asarray(r))
        actual = _value_and_vjp(logits_fn("im2col"), (params, jnp.asarray(x)), jnp.asarray(r))
        errors = {"fwd": relative_error(actual[0], expected[0]),
                  "dparams": relative_error(ravel_pytree(actual[1])[0], ravel_pytree(expected[1])[0]),
                  "dx": relative_error(actual[2], expected[2])}
        flat, unravel = ravel_pytree(params)
        for backend in ("xla", "im2col"):
            run = logits_fn(backend)
            errors[f"fd {backend}"] = finite_difference_error(lambda p, x_: run(unravel(p), x_), (flat, x),
                                                              np.random.default_rng(fd_seed), eps=1e-7)
    return errors


def format_table(rows: list[tuple[str, dict[str, float]]], tolerances: dict[str, float]) -> str:
    width = max(len(name) for name, _ in rows)
    columns = list(dict.fromkeys(k for _, errors in rows for k in errors))
    lines = [f"{'case':<{width}}  " + "  ".join(f"{c:>9}" for c in columns) + "  ok"]
    for name, errors in rows:
        cells = "  ".join(f"{errors[c]:9.1e}" if c in errors else f"{'-':>9}" for c in columns)
        ok = all(v <= tolerances[k] for k, v in errors.items())
        lines.append(f"{name:<{width}}  {cells}  {'ok' if ok else 'FAIL'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxcnn.gradcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=12, help="random conv cases (and half as many pool cases)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-4, help="im2col vs lax, float32 (default 1e-4)")
    parser.add_argument("--fd-tol", type=float, help="reverse mode vs finite differences, float64 "
                        "(default 1e-6; 1e-5 with --model, whose step is smaller)")
    parser.add_argument("--model", help="check this model (a name from jaxcnn.models.names()) instead of the ops")
    parser.add_argument("--image-size", type=int, help="with --model: height and width of the random input")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"--num must be >= 1, got {args.num}")
    fd_tol = args.fd_tol or (1e-5 if args.model else 1e-6)
    tolerances = {c: args.tol for c in ("fwd", "dx", "dw", "db", "plans", "auto", "dparams")}
    tolerances |= {f"fd {b}": fd_tol for b in ("lax", "xla", "im2col")}

    rng = np.random.default_rng(args.seed)
    rows = []
    if args.model:
        from jaxcnn import models

        if args.model not in models.names():
            parser.error(f"unknown model {args.model!r}; known models: {', '.join(models.names())}")
        rows.append((args.model, check_model(args.model, rng, args.image_size)))
    else:
        for _ in range(args.num):
            case = random_conv_case(rng)
            rows.append((case.describe(), check_conv(case, rng)))
        for _ in range(max(1, args.num // 2)):
            case = random_pool_case(rng)
            rows.append((case.describe(), check_pool(case, rng)))
    print(format_table(rows, tolerances))
    failed = sum(any(v > tolerances[k] for k, v in errors.items()) for _, errors in rows)
    columns = dict.fromkeys(k for _, errors in rows for k in errors)
    worst = {c: max(e[c] for _, e in rows if c in e) for c in columns}
    print(f"\n{len(rows)} cases, {failed} failed; worst: " + ", ".join(f"{c} {v:.1e}" for c, v in worst.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
