"""Forward and forward+backward time of the lax and im2col convs and pools, and BatchNorm, side by side.

    python benchmarks/ops.py [--batch 128] [--rounds 7] [--only conv|passes|pool|maxpool|norm]

Layer shapes are LeNet-5's (32x32x1 input) and ResNet-20's (CIFAR, 32x32x3),
NHWC float32. Prints markdown tables: medians over rounds (spread: half the
interquartile range), and the im2col/lax ratio (> 1 means im2col is slower).
Convolutions are also timed as plain ``jax.jit`` compiles them (XLA then hands
them to YNNPACK); BatchNorm + ReLU as ``flax.linen.BatchNorm`` against
``jaxcnn.layers.BatchNorm`` (also on two ResNet-50 shapes). ``passes`` times each
pass of each convolution (forward, weight gradient, input gradient) in every
formulation ``conv2d_auto`` chooses among, and PyTorch's channels-last pass where
torch is installed (2 threads). ``maxpool`` times ``max_pool2d`` against
``max_pool2d_auto`` (on the CPU, jaxcnn's FFI max pool) and PyTorch's channels-last
max pool, on LeNet-5's, ResNet's and GoogLeNet's pools at their
``benchmarks/vs_pytorch.py`` batches. Runs after
``jaxcnn.runtime.dispatch_cpu_inline()`` and ``tune_cpu_malloc()``, as training does.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import machine, median, side_by_side, spread  # noqa: E402

from jaxcnn import layers, ops, runtime  # noqa: E402
from jaxcnn.ops import autotune  # noqa: E402
from jaxcnn.ops.im2col import make_window  # noqa: E402

# (name, input NHWC without batch, kernel HWIO, stride, padding)
CONV_LAYERS = [
    ("lenet5 C1 5x5 1->6", (32, 32, 1), (5, 5, 1, 6), 1, 0),
    ("lenet5 C3 5x5 6->16", (14, 14, 6), (5, 5, 6, 16), 1, 0),
    ("resnet20 stem 3x3 3->16", (32, 32, 3), (3, 3, 3, 16), 1, 1),
    ("resnet20 stage1 3x3 16->16", (32, 32, 16), (3, 3, 16, 16), 1, 1),
    ("resnet20 stage2 3x3/2 16->32", (32, 32, 16), (3, 3, 16, 32), 2, 1),
    ("resnet20 stage2 3x3 32->32", (16, 16, 32), (3, 3, 32, 32), 1, 1),
    ("resnet20 stage3 3x3 64->64", (8, 8, 64), (3, 3, 64, 64), 1, 1),
]
# (name, input NHWC without batch, kernel, stride, padding)
POOL_LAYERS = [
    ("lenet5 S2 max 2x2", (28, 28, 6), 2, 2, 0),
    ("lenet5 S4 max 2x2", (10, 10, 16), 2, 2, 0),
    ("resnet stem max 3x3/2 p1", (32, 32, 16), 3, 2, 1),
]
# pools also timed as lax.reduce_window, differentiated by JAX
REDUCE_WINDOW_LAYERS = POOL_LAYERS + [
    ("vgg 2x2 on 32x32x64", (32, 32, 64), 2, 2, 0),
    ("alexnet 3x3/2 on 13x13x256", (13, 13, 256), 3, 2, 0),
    ("googlenet 3x3/1 p1 on 16x16x192", (16, 16, 192), 3, 1, 1),
]


# (name, input NHWC without batch, kernel, stride, padding, batch): max pools as the models train them
# in benchmarks/vs_pytorch.py (GoogLeNet's with ceil_mode, at batch 16 and 112x112 images)
MAX_POOL_LAYERS = [
    ("lenet5 S2 2x2 on 28x28x6", (28, 28, 6), 2, 2, 0, 128),
    ("resnet50 stem 3x3/2 on 32x32x64", (32, 32, 64), 3, 2, 1, 16),
    ("googlenet 3x3/2 on 56x56x64", (56, 56, 64), 3, 2, 0, 16),
    ("googlenet 3x3/2 on 28x28x192", (28, 28, 192), 3, 2, 0, 16),
    ("googlenet 3x3/1 on 14x14x256", (14, 14, 256), 3, 1, 1, 16),
    ("googlenet 3x3/1 on 7x7x512", (7, 7, 512), 3, 1, 1, 16),
    ("googlenet 2x2/2 on 7x7x832", (7, 7, 832), 2, 2, 0, 16),
]

# BatchNorm + ReLU inputs (NHWC without batch, batch): ResNet-20's three stages, two ResNet-50 shapes
NORM_LAYERS = [((32, 32, 16), 128), ((16, 16, 32), 128), ((8, 8, 64), 128), ((16, 16, 256), 16), ((2, 2, 2048), 16)]


def conv_candidates(shape, kernel, stride, padding, batch):
    """lax and im2col compiled as jaxcnn compiles (``runtime.jit``), and lax as plain ``jax.jit``
    compiles it, which gives XLA's CPU convolutions to YNNPACK."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel) * 0.1, jnp.float32)
    out = {}
    for backend, conv, jit in (("lax", ops.conv2d, runtime.jit), ("lax ynnpack", ops.conv2d, jax.jit),
                               ("im2col", ops.conv2d_im2col, runtime.jit)):
        f = functools.partial(conv, stride=stride, padding=padding)
        fwd = jit(f)
        fwd_bwd = jit(jax.grad(lambda x_, w_, f=f: jnp.sum(f(x_, w_) ** 2), (0, 1)))
        out[f"fwd {backend}"] = lambda fwd=fwd: fwd(x, w)
        out[f"fwd+bwd {backend}"] = lambda g=fwd_bwd: g(x, w)
    return out


def pass_candidates(shape, kernel, stride, padding, batch):
    """Each pass of the convolution in each of ``conv2d_auto``'s formulations (where it is a candidate)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel) * 0.1, jnp.float32)
    window = make_window(shape[:2], kernel[:2], stride, padding, 1, "benchmark")
    dy = jnp.asarray(rng.standard_normal((batch, *window.out_size, kernel[3])), jnp.float32)
    measured = autotune.candidates(window, kernel, jnp.float32, 1)
    out = {}
    for pass_name, table, args in (("forward", autotune.FORWARD, (x, w)), ("dW", autotune.GRAD_WEIGHT, (x, w, dy)),
                                   ("dx", autotune.GRAD_INPUT, (x, w, dy))):
        for name in measured:
            f = runtime.jit(functools.partial(table[name], window=window, groups=1))
            out[f"{pass_name} {name}"] = lambda f=f, args=args: f(*args)
    out.update(_torch_pass_candidates(x, w, dy, stride, padding))
    return out


def _torch_pass_candidates(x, w, dy, stride, padding):
    """PyTorch's channels-last passes (oneDNN on the CPU), where torch is installed."""
    try:
        import torch
    except ImportError:
        return {}
    torch.set_num_threads(2)
    cl = torch.channels_last
    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    tw = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous(memory_format=cl)
    tdy = torch.from_numpy(np.array(dy)).permute(0, 3, 1, 2).contiguous(memory_format=cl)
    s, p = [stride, stride], [padding, padding]

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(tdy, tx, tw, None, s, p, [1, 1], False, [0, 0], 1, mask)

    return {"forward pytorch": lambda: torch.nn.functional.conv2d(tx, tw, stride=stride, padding=padding),
            "dW pytorch": backward([False, True, False]), "dx pytorch": backward([True, False, False])}


def norm_candidates(shape, batch):
    """A training pass of BatchNorm + ReLU (forward, batch statistics, gradients of input and parameters)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, *shape)) * 2 + 1, jnp.float32)
    out = {}
    for name, module in (("flax", nn.BatchNorm(use_running_average=False, momentum=0.9)),
                         ("jaxcnn", layers.BatchNorm(use_running_average=False, momentum=0.9))):
        variables = module.init(jax.random.key(0), x)

        def loss(params, x, module=module, stats=variables["batch_stats"]):
            y, _ = module.apply({"params": params, "batch_stats": stats}, x, mutable=["batch_stats"])
            return jnp.sum(jnp.square(jax.nn.relu(y)))

        g = runtime.jit(jax.grad(loss, (0, 1)))
        out[name] = lambda g=g, p=variables["params"]: g(p, x)
    return out


def pool_candidates(shape, kernel, stride, padding, batch):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, *shape)), jnp.float32)
    out = {}
    pools_by_kind = {"max": (ops.max_pool2d, ops.max_pool2d_im2col), "avg": (ops.avg_pool2d, ops.avg_pool2d_im2col)}
    for kind, pools in pools_by_kind.items():
        for backend, pool in zip(("lax", "im2col"), pools):
            f = functools.partial(pool, kernel_size=kernel, stride=stride, padding=padding)
            fwd, fwd_bwd = runtime.jit(f), runtime.jit(jax.grad(lambda v, f=f: jnp.sum(f(v) ** 2)))
            out[f"{kind} fwd {backend}"] = lambda fwd=fwd: fwd(x)
            out[f"{kind} fwd+bwd {backend}"] = lambda g=fwd_bwd: g(x)
    return out


def reduce_window_candidates(kind, shape, kernel, stride, padding, batch):
    """jaxcnn's max_pool2d or avg_pool2d against lax.reduce_window: forward, and forward+backward (JAX's own
    derivative)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, *shape)), jnp.float32)
    init, op, pool, divisor = {"max": (-jnp.inf, lax.max, ops.max_pool2d, 1),
                               "avg": (0.0, lax.add, ops.avg_pool2d, kernel * kernel)}[kind]

    def jax_pool(v):
        pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
        return lax.reduce_window(v, init, op, (1, kernel, kernel, 1), (1, stride, stride, 1), pads) / divisor

    jaxcnn = functools.partial(pool, kernel_size=kernel, stride=stride, padding=padding)
    out = {}
    for name, f in (("jax", jax_pool), ("jaxcnn", jaxcnn)):
        fwd, g = runtime.jit(f), runtime.jit(jax.grad(lambda v, f=f: jnp.sum(f(v) ** 2)))
        out[f"{name} fwd"] = lambda fwd=fwd: fwd(x)
        out[f"{name} fwd+bwd"] = lambda g=g: g(x)
    return out


def max_pool_candidates(shape, kernel, stride, padding, batch):
    """max_pool2d (lax formulation), max_pool2d_auto and PyTorch's channels-last max pool (where torch is
    installed), ceil_mode as GoogLeNet's: forward, and forward+backward of ``sum(pool(x) * c)``."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, *shape)), jnp.float32)
    kw = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=True)
    c = jnp.asarray(rng.standard_normal(jax.eval_shape(lambda v: ops.max_pool2d(v, **kw), x).shape), jnp.float32)
    out = {}
    for name, pool in (("lax", ops.max_pool2d), ("auto", ops.max_pool2d_auto)):
        f = functools.partial(pool, **kw)
        fwd, g = runtime.jit(f), runtime.jit(jax.grad(lambda v, f=f: jnp.sum(f(v) * c)))
        out[f"fwd {name}"] = lambda fwd=fwd: fwd(x)
        out[f"fwd+bwd {name}"] = lambda g=g: g(x)
    try:
        import torch
    except ImportError:
        return out
    torch.set_num_threads(2)
    cl = torch.channels_last
    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous(memory_format=cl).requires_grad_()
    tc = torch.from_numpy(np.array(c)).permute(0, 3, 1, 2).contiguous(memory_format=cl)

    def torch_pool():
        return torch.nn.functional.max_pool2d(tx, kernel, stride, padding, ceil_mode=True)

    def torch_forward():
        with torch.no_grad():
            return torch_pool()

    def torch_forward_backward():
        tx.grad = None
        torch_pool().backward(tc)
        return tx.grad

    return {**out, "fwd pytorch": torch_forward, "fwd+bwd pytorch": torch_forward_backward}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=["conv", "passes", "pool", "maxpool", "norm"],
                        help="one part (pool: both pool tables)")
    args = parser.parse_args()
    runtime.dispatch_cpu_inline()
    runtime.tune_cpu_malloc()
    print(f"`python {' '.join(sys.argv)}` on {machine()}\n")
    if args.only in (None, "conv"):
        conv_tables(args)
    if args.only in (None, "passes"):
        pass_table(args)
    if args.only in (None, "pool"):
        pool_tables(args)
    if args.only in (None, "maxpool"):
        max_pool_table(args)
    if args.only in (None, "norm"):
        norm_table(args)


def conv_tables(args):
    print("lax: XLA's own CPU convolution (jaxcnn.runtime.jit); lax YNNPACK: the same under plain jax.jit\n")
    print("| layer | pass | lax ms | lax YNNPACK ms | im2col ms | im2col / lax | YNNPACK / lax |")
    print("|---|---|---|---|---|---|---|")
    ratios = {"fwd": [], "fwd+bwd": []}
    for name, shape, kernel, stride, padding in CONV_LAYERS:
        s = side_by_side(conv_candidates(shape, kernel, stride, padding, args.batch), rounds=args.rounds)
        for p in ("fwd", "fwd+bwd"):
            lax_t, ynn_t, im_t = s[f"{p} lax"], s[f"{p} lax ynnpack"], s[f"{p} im2col"]
            ratios[p].append(median(im_t) / median(lax_t))
            print(f"| {name} | {p} | {median(lax_t) * 1e3:.2f} {spread(lax_t)} | "
                  f"{median(ynn_t) * 1e3:.2f} {spread(ynn_t)} | {median(im_t) * 1e3:.2f} {spread(im_t)} | "
                  f"{ratios[p][-1]:.2f} | {median(ynn_t) / median(lax_t):.2f} |", flush=True)
    geo = {p: float(np.exp(np.mean(np.log(r)))) for p, r in ratios.items()}
    print(f"\nconv im2col/lax geometric mean: fwd {geo['fwd']:.2f}, fwd+bwd {geo['fwd+bwd']:.2f}")


PASS_FORMULATIONS = ["xla", "im2col", "banded", "onednn", "pytorch"]


def pass_table(args):
    print("\nEach pass alone, ms (n/a: not a candidate there); ratios of oneDNN's kernels to XLA's and to PyTorch's\n")
    print(f"| layer | pass | {' | '.join(PASS_FORMULATIONS)} | onednn / xla | onednn / pytorch |")
    print("|---|---|" + "---|" * (len(PASS_FORMULATIONS) + 2))
    for name, shape, kernel, stride, padding in CONV_LAYERS:
        s = side_by_side(pass_candidates(shape, kernel, stride, padding, args.batch), rounds=args.rounds)
        for pass_name in ("forward", "dW", "dx"):
            cells = [f"{median(s[k]) * 1e3:.2f} {spread(s[k])}" if k in s else "n/a"
                     for k in (f"{pass_name} {f}" for f in PASS_FORMULATIONS)]
            ratios = [f"{median(s[f'{pass_name} onednn']) / median(s[f'{pass_name} {f}']):.2f}"
                      if f"{pass_name} onednn" in s and f"{pass_name} {f}" in s else "n/a" for f in ("xla", "pytorch")]
            print(f"| {name} | {pass_name} | {' | '.join(cells)} | {' | '.join(ratios)} |", flush=True)


def pool_tables(args):
    print("\n| pool | pass | lax ms | im2col ms | im2col / lax |")
    print("|---|---|---|---|---|")
    for name, shape, kernel, stride, padding in POOL_LAYERS:
        s = side_by_side(pool_candidates(shape, kernel, stride, padding, args.batch), rounds=args.rounds)
        for kind in ("max", "avg"):
            for p in ("fwd", "fwd+bwd"):
                lax_t, im_t = s[f"{kind} {p} lax"], s[f"{kind} {p} im2col"]
                print(f"| {name.replace('max', kind)} | {p} | {median(lax_t) * 1e3:.2f} {spread(lax_t)} | "
                      f"{median(im_t) * 1e3:.2f} {spread(im_t)} | {median(im_t) / median(lax_t):.2f} |", flush=True)
    print("\n| pool | pass | lax.reduce_window (JAX's derivative) ms | jaxcnn ms | jaxcnn / JAX |")
    print("|---|---|---|---|---|")
    for kind in ("max", "avg"):
        for name, shape, kernel, stride, padding in REDUCE_WINDOW_LAYERS:
            s = side_by_side(reduce_window_candidates(kind, shape, kernel, stride, padding, args.batch),
                             rounds=args.rounds)
            for p in ("fwd", "fwd+bwd"):
                jax_t, ours = s[f"jax {p}"], s[f"jaxcnn {p}"]
                print(f"| {kind} {name.replace(' max', '')} | {p} | {median(jax_t) * 1e3:.2f} {spread(jax_t)} | "
                      f"{median(ours) * 1e3:.2f} {spread(ours)} | {median(ours) / median(jax_t):.2f} |", flush=True)


def max_pool_table(args):
    print("\nMax pools (ceil_mode): jaxcnn's max_pool2d (lax formulation), max_pool2d_auto (on the CPU jaxcnn's "
          "FFI kernels) and PyTorch channels-last, ms\n")
    names = ("lax", "auto", "pytorch")
    print("| pool (batch) | pass | lax | auto | pytorch | auto / lax | auto / pytorch |")
    print("|---|---|---|---|---|---|---|")
    totals = {}
    for name, shape, kernel, stride, padding, batch in MAX_POOL_LAYERS:
        s = side_by_side(max_pool_candidates(shape, kernel, stride, padding, batch), rounds=args.rounds)
        for p in ("fwd", "fwd+bwd"):
            t = {n: median(s[f"{p} {n}"]) for n in names if f"{p} {n}" in s}
            for n, v in t.items():
                totals[p, n] = totals.get((p, n), 0.0) + v
            cells = [f"{t[n] * 1e3:.3f} {spread(s[f'{p} {n}'])}" if n in t else "n/a" for n in names]
            ratios = [f"{t['auto'] / t[n]:.2f}" if n in t else "n/a" for n in ("lax", "pytorch")]
            print(f"| {name} ({batch}) | {p} | {' | '.join(cells)} | {' | '.join(ratios)} |", flush=True)
    for p in ("fwd", "fwd+bwd"):
        sums = " ".join(f"{n} {totals[p, n] * 1e3:.2f} ms" for n in names if (p, n) in totals)
        print(f"\nsum of medians, {p}: {sums}")


def norm_table(args):
    print("\n| BatchNorm + ReLU input (batch) | train pass: flax.linen.BatchNorm ms | jaxcnn.layers.BatchNorm ms "
          "| jaxcnn / flax |")
    print("|---|---|---|---|")
    for shape, batch in NORM_LAYERS:
        s = side_by_side(norm_candidates(shape, batch), rounds=args.rounds)
        print(f"| {'x'.join(map(str, shape))} ({batch}) | {median(s['flax']) * 1e3:.2f} {spread(s['flax'])} | "
              f"{median(s['jaxcnn']) * 1e3:.2f} {spread(s['jaxcnn'])} | "
              f"{median(s['jaxcnn']) / median(s['flax']):.2f} |", flush=True)


if __name__ == "__main__":
    main()
