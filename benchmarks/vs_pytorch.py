"""jaxcnn against PyTorch eager on this CPU, side by side: training steps, then single layers.

    pip install torch==2.13.0        # CPU build, for benchmarking only (never a jaxcnn dependency)
    python benchmarks/vs_pytorch.py [--rounds 7] [--backends xla,im2col,auto] [--dtype bfloat16]

Training step: the same architecture, batch and optimizer (SGD, momentum 0.9,
cross-entropy) in both frameworks, synthetic data resident in memory; PyTorch runs
eagerly (zero_grad, forward, backward, step), in its default NCHW layout and in
channels_last (NHWC, its faster CPU layout for convolutions and BatchNorm), jaxcnn runs its ``train_step``
compiled as training compiles it (``jaxcnn.runtime.jit``) with the state donated.
Models: LeNet-5 (batch 128, 32x32x1), ResNet-20 (batch 128, 32x32x3), a
bottleneck ResNet-50 (batch 16, 64x64x3), DenseNet-BC-100 (k=12; batch 64,
32x32x3), GoogLeNet (batch 16, 112x112x3), VGG-16 with BatchNorm and the CIFAR
head (batch 32, 32x32x3), and the textbook's AlexNet (batch 16, 227x227x3) and NiN
(batch 16, 224x224x3).
Layers: forward and forward+backward of LeNet-5's and ResNet-20's convolutions.
Medians over alternating rounds; ratio = jaxcnn images/s / PyTorch images/s, the
median of the ratios within each round (so drift in the machine's load cancels),
with half its interquartile range. ``--dtype bfloat16``: jaxcnn's models compute in bfloat16
(``dtype=bfloat16``, float32 parameters and BatchNorm statistics), PyTorch's forward runs under
``torch.autocast("cpu", torch.bfloat16)``.
PyTorch's training steps run in a child process, one step per request over a
pipe (~0.05 ms a step): in one process PyTorch's OpenMP threads and those of
jaxcnn's oneDNN kernels share one libgomp, and PyTorch's steps measured 7-28%
slower there. Both processes run after ``jaxcnn.runtime.tune_cpu_malloc()``, and
jaxcnn after ``dispatch_cpu_inline()`` (what the training loop does on CPU;
``--async_dispatch`` keeps JAX's default dispatch instead, for comparison). The single layers run
both frameworks in this process.
Also reported: each candidate's model FLOPs per second (3 x the forward convolution and
dense FLOPs per image, :func:`jaxcnn.models.layer_table`) and their share of a
2048-cubed float32 matmul's rate measured in the same run (model FLOPs utilisation);
per jaxcnn backend, the time to the first step (tracing,
autotuning for ``auto``, compiling) and the process's peak resident memory
after all models ran. jaxcnn's per-machine cache is off unless ``JAXCNN_CACHE_DIR``
is set, so ``auto`` measures its plans afresh in every run (``startup.py`` measures
what the cache saves).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import (  # noqa: E402
    CPU_MODEL_OPTIONS,
    CPU_MODELS,
    machine,
    matmul_peak_tflops,
    median,
    side_by_side,
    spread,
    train_flops_per_image,
)

from jaxcnn import models, ops, runtime  # noqa: E402
from jaxcnn.train import StepConfig, create_train_state, train_step  # noqa: E402


def torch_models():
    import torch
    from torch import nn

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c3 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
            self.f5, self.f6, self.out = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
            x = nn.functional.max_pool2d(torch.relu(self.c3(x)), 2)
            x = torch.flatten(x, 1)
            return self.out(torch.relu(self.f6(torch.relu(self.f5(x)))))

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            s = x[:, :, :: self.stride, :: self.stride]
            if self.extra:  # option A: zero-pad the new channels
                s = nn.functional.pad(s, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
            return torch.relu(y + s)

    class ResNet20(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            blocks, cin = [], 16
            for stage, width in enumerate((16, 32, 64)):
                for b in range(3):
                    blocks.append(Basic(cin, width, 2 if stage and not b else 1))
                    cin = width
            self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
            self.c2, self.b2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
            self.c3, self.b3 = nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4)
            self.short = None
            if stride != 1 or cin != width * 4:
                self.short = nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride, bias=False), nn.BatchNorm2d(width * 4))

        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            y = torch.relu(self.b2(self.c2(y)))
            y = self.b3(self.c3(y))
            return torch.relu(y + (x if self.short is None else self.short(x)))

    class ResNet50(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            blocks, cin = [], 64
            for stage, n in enumerate((3, 4, 6, 3)):
                for b in range(n):
                    blocks.append(Bottleneck(cin, 64 * 2**stage, 2 if stage and not b else 1))
                    cin = 64 * 2**stage * 4
            self.blocks, self.fc = nn.Sequential(*blocks), nn.Linear(2048, 10)

        def forward(self, x):
            return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))

    def norm_relu_conv(cin, cout, kernel):
        return [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False)]

    class DenseLayer(nn.Module):
        def __init__(self, cin, growth):
            super().__init__()
            self.layers = nn.Sequential(*norm_relu_conv(cin, 4 * growth, 1), *norm_relu_conv(4 * growth, growth, 3))

        def forward(self, x):
            return torch.cat([x, self.layers(x)], 1)

    class DenseNetBC100(nn.Module):
        """DenseNet-BC-100, growth 12 (``jaxcnn.models.densenet``'s ``densenet_bc_100_12``)."""

        def __init__(self, growth=12, layers_per_block=16):
            super().__init__()
            stages, cin = [nn.Conv2d(3, 2 * growth, 3, 1, 1, bias=False)], 2 * growth
            for block in range(3):
                for _ in range(layers_per_block):
                    stages.append(DenseLayer(cin, growth))
                    cin += growth
                if block < 2:
                    stages += [*norm_relu_conv(cin, cin // 2, 1), nn.AvgPool2d(2)]
                    cin //= 2
            self.features = nn.Sequential(*stages, nn.BatchNorm2d(cin), nn.ReLU())
            self.fc = nn.Linear(cin, 10)

        def forward(self, x):
            return self.fc(self.features(x).mean(dim=(2, 3)))

    def conv_bn_relu(cin, cout, kernel, stride=1, padding=0):  # GoogLeNet's BasicConv2d
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False),
                             nn.BatchNorm2d(cout, eps=1e-3), nn.ReLU())

    class Inception(nn.Module):
        def __init__(self, cin, ch1, ch3red, ch3, ch5red, ch5, pool_proj):
            super().__init__()
            self.branches = nn.ModuleList([
                conv_bn_relu(cin, ch1, 1),
                nn.Sequential(conv_bn_relu(cin, ch3red, 1), conv_bn_relu(ch3red, ch3, 3, padding=1)),
                nn.Sequential(conv_bn_relu(cin, ch5red, 1), conv_bn_relu(ch5red, ch5, 3, padding=1)),
                nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv_bn_relu(cin, pool_proj, 1))])

        def forward(self, x):
            return torch.cat([branch(x) for branch in self.branches], 1)

    class GoogLeNet(nn.Module):
        """torchvision's GoogLeNet without auxiliary classifiers (``jaxcnn.models.googlenet``)."""

        def __init__(self):
            super().__init__()
            from jaxcnn.models.googlenet import INCEPTIONS

            layers, cin = [conv_bn_relu(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True),
                           conv_bn_relu(64, 64, 1), conv_bn_relu(64, 192, 3, padding=1),
                           nn.MaxPool2d(3, 2, ceil_mode=True)], 192
            for i, spec in enumerate(INCEPTIONS):
                if spec == "M":
                    layers.append(nn.MaxPool2d(2 if INCEPTIONS[i + 1][0] == "5a" else 3, 2, ceil_mode=True))
                    continue
                layers.append(Inception(cin, *spec[1:]))
                cin = spec[1] + spec[3] + spec[5] + spec[6]
            self.features, self.dropout, self.fc = nn.Sequential(*layers), nn.Dropout(0.2), nn.Linear(cin, 10)

        def forward(self, x):
            return self.fc(self.dropout(self.features(x).mean(dim=(2, 3))))

    class VGG16BN(nn.Module):
        """torchvision's VGG-16 with BatchNorm, its head one linear layer on the pooled features
        (``jaxcnn.models.vgg``'s ``vgg16_bn`` with ``head="cifar"``)."""

        def __init__(self):
            super().__init__()
            from jaxcnn.models.vgg import CONFIGS

            layers, cin = [], 3
            for v in CONFIGS[16]:
                if v == "M":
                    layers.append(nn.MaxPool2d(2))
                    continue
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
                cin = v
            self.features, self.fc = nn.Sequential(*layers), nn.Linear(cin, 10)

        def forward(self, x):
            return self.fc(self.features(x).mean(dim=(2, 3)))

    class AlexNet(nn.Module):
        """The textbook's single-tower AlexNet (``jaxcnn.models.alexnet``, no LRN), 10 classes."""

        def __init__(self):
            super().__init__()
            from jaxcnn.models.alexnet import ALEXNET_LAYERS

            layers, cin = [], 3
            for cout, kernel, stride, padding, pool in ALEXNET_LAYERS:
                layers += [nn.Conv2d(cin, cout, kernel, stride, padding), nn.ReLU()]
                layers += [nn.MaxPool2d(3, 2, ceil_mode=True)] if pool else []
                cin = cout
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(),
                                            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 10))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    def nin_block(cin, cout, kernel, stride, padding):
        return [nn.Conv2d(cin, cout, kernel, stride, padding), nn.ReLU(), nn.Conv2d(cout, cout, 1), nn.ReLU(),
                nn.Conv2d(cout, cout, 1), nn.ReLU()]

    class NiN(nn.Module):
        """The textbook's Network in Network (``jaxcnn.models.nin``), 10 classes."""

        def __init__(self):
            super().__init__()
            from jaxcnn.models.nin import BLOCKS

            layers, cin = [], 3
            for cout, kernel, stride, padding in BLOCKS:
                layers += [*nin_block(cin, cout, kernel, stride, padding), nn.MaxPool2d(3, 2)]
                cin = cout
            self.features = nn.Sequential(*layers, nn.Dropout(0.5), *nin_block(cin, 10, 3, 1, 1))

        def forward(self, x):
            return self.features(x).mean(dim=(2, 3))

    return {"lenet5": LeNet5, "resnet20": ResNet20, "resnet50": ResNet50, "densenet_bc_100_12": DenseNetBC100,
            "googlenet": GoogLeNet, "vgg16_bn": VGG16BN, "alexnet": AlexNet, "nin": NiN}


TORCH_LAYOUTS = ("NCHW", "NHWC")  # PyTorch's default, and channels_last


def torch_step(name, batch, shape, channels_last=False, bfloat16=False):
    """PyTorch's eager training step; ``channels_last`` stores the model and batch NHWC (PyTorch's faster
    CPU layout for convolutions and BatchNorm; NCHW is its default); ``bfloat16`` runs the forward under
    ``torch.autocast("cpu", torch.bfloat16)``, PyTorch's mixed precision on the CPU."""
    import torch

    model = torch_models()[name]()
    x = torch.randn(batch, shape[2], shape[0], shape[1])
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bfloat16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return run


class TorchStepInChild:
    """:func:`torch_step` in a child process: each call runs one step there and returns its loss."""

    def __init__(self, name, batch, shape, layout, dtype="float32"):
        spec = f"{name}:{batch}:{'x'.join(map(str, shape))}:{layout}:{dtype}"
        command = [sys.executable, __file__, "--torch_worker", spec]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.version = self.process.stdout.readline().strip()  # "2.13.0+cpu (2 threads)" once torch is ready

    def __call__(self):
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def torch_worker(spec: str):
    """The child's side of :class:`TorchStepInChild`: a step per line read, its loss written back."""
    import torch

    runtime.tune_cpu_malloc()  # as in jaxcnn's process (PyTorch's steps measured up to 25% faster with it)
    name, batch, shape, layout, dtype = spec.split(":")
    run = torch_step(name, int(batch), tuple(int(v) for v in shape.split("x")), channels_last=layout == "NHWC",
                     bfloat16=dtype == "bfloat16")
    print(f"{torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
    for _ in sys.stdin:
        print(run().item(), flush=True)


def per_round_ratio(torch_seconds, jax_seconds) -> str:
    """jaxcnn / PyTorch images/s: the median over rounds of the ratio within each round, and its spread."""
    ratios = [t / j for t, j in zip(torch_seconds, jax_seconds)]
    return f"{median(ratios):.2f} {spread(ratios)}"


def jax_model(name, backend="xla", dtype="float32"):
    return models.create(name, num_classes=10, conv_backend=backend, dtype=jnp.dtype(dtype),
                         **CPU_MODEL_OPTIONS.get(name, {}))


def jax_step(name, batch, shape, backend, dtype="float32"):
    model = jax_model(name, backend, dtype)
    tx = optax.sgd(0.01, momentum=0.9)
    step = runtime.jit(functools.partial(train_step, apply_fn=model.apply, tx=tx,
                                         schedule=optax.constant_schedule(0.01), cfg=StepConfig()), donate_argnums=0)
    box = {"state": create_train_state(model, tx, shape, seed=0, ema=False)}
    data = {"image": jax.random.normal(jax.random.key(0), (batch, *shape)),
            "label": jax.random.randint(jax.random.key(1), (batch,), 0, 10)}

    def run():
        box["state"], metrics = step(box["state"], data)
        return metrics["objective"]

    start = time.perf_counter()
    jax.block_until_ready(run())
    return run, time.perf_counter() - start


LAYERS = [  # name, NHWC input without batch, HWIO kernel, stride, padding
    ("lenet5 C1 5x5 1->6", (32, 32, 1), (5, 5, 1, 6), 1, 0),
    ("lenet5 C3 5x5 6->16", (14, 14, 6), (5, 5, 6, 16), 1, 0),
    ("resnet20 3x3 16->16 @32", (32, 32, 16), (3, 3, 16, 16), 1, 1),
    ("resnet20 3x3/2 16->32", (32, 32, 16), (3, 3, 16, 32), 2, 1),
    ("resnet20 3x3 64->64 @8", (8, 8, 64), (3, 3, 64, 64), 1, 1),
]


def layer_candidates(shape, kernel, stride, padding, batch, backends):
    import torch

    xt = torch.randn(batch, shape[2], shape[0], shape[1], requires_grad=True)
    wt = torch.randn(kernel[3], kernel[2], kernel[0], kernel[1], requires_grad=True)

    def torch_fwd():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding)

    def torch_fwd_bwd():
        xt.grad = wt.grad = None
        torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding).square().sum().backward()
        return wt.grad

    out = {"torch fwd": torch_fwd, "torch fwd+bwd": torch_fwd_bwd}
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, *shape)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).standard_normal(kernel), jnp.float32)
    conv_ops = {"xla": ops.conv2d, "im2col": ops.conv2d_im2col, "auto": ops.conv2d_auto}
    for backend in backends:
        conv = functools.partial(conv_ops[backend], stride=stride, padding=padding)
        fwd = runtime.jit(conv)
        grad = runtime.jit(jax.grad(lambda a, b, conv=conv: jnp.sum(conv(a, b) ** 2), (0, 1)))
        out[f"{backend} fwd"] = lambda fwd=fwd: fwd(x, w)
        out[f"{backend} fwd+bwd"] = lambda grad=grad: grad(x, w)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--backends", default="xla,im2col,auto")
    parser.add_argument("--models", default=",".join(CPU_MODELS))
    parser.add_argument("--skip_layers", action="store_true")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                        help="bfloat16: jaxcnn's models with dtype=bfloat16 (float32 parameters) against "
                             "PyTorch's bfloat16 autocast")
    parser.add_argument("--async_dispatch", action="store_true", help="keep JAX's asynchronous CPU dispatch")
    parser.add_argument("--torch_worker", help=argparse.SUPPRESS)  # name:batch:HxWxC:layout, the PyTorch child
    args = parser.parse_args()
    if args.torch_worker:
        return torch_worker(args.torch_worker)
    os.environ.setdefault(runtime.CACHE_DIR_ENV, "")  # plans measured on this machine now, not read back
    if not args.async_dispatch:
        runtime.dispatch_cpu_inline()
    runtime.tune_cpu_malloc()
    backends = args.backends.split(",")
    children = {(name, layout): TorchStepInChild(name, *CPU_MODELS[name], layout, args.dtype)
                for name in args.models.split(",") for layout in TORCH_LAYOUTS}
    print(f"`python {' '.join(sys.argv)}` on {machine()}, "
          f"torch {next(iter(children.values())).version}, PyTorch's steps in child processes\n")
    peak = matmul_peak_tflops(jnp.float32, size=2048) * 1e3
    print(f"measured float32 matmul peak (2048^3, XLA): {peak:.0f} GFLOP/s\n")
    references = [f"PyTorch {layout}" for layout in TORCH_LAYOUTS]
    print("| model (batch) | " + " | ".join(f"{r} images/s" for r in references) + " | "
          + " | ".join(f"jaxcnn {b} images/s" for b in backends) + " | "
          + " | ".join(f"{b} / {r}" for b in backends for r in references) + " |")
    print("|---" * (1 + len(references) + len(backends) + len(backends) * len(references)) + "|")
    first_step, utilisation = {}, []
    for name in args.models.split(","):
        batch, shape = CPU_MODELS[name]
        cands = {f"PyTorch {layout}": children[name, layout] for layout in TORCH_LAYOUTS}
        for b in backends:
            cands[b], first_step[name, b] = jax_step(name, batch, shape, b, args.dtype)
        s = side_by_side(cands, rounds=args.rounds, min_time=1.0)
        rate = {k: batch / median(v) for k, v in s.items()}
        print(f"| {name} ({batch}) | "
              + " | ".join(f"{rate[k]:,.0f} {spread(s[k])}" for k in references + backends) + " | "
              + " | ".join(per_round_ratio(s[r], s[b]) for b in backends for r in references) + " |", flush=True)
        flops = train_flops_per_image(jax_model(name), shape)
        gflops = {k: rate[k] * flops / 1e9 for k in references + backends}
        utilisation.append(f"| {name} | {flops / 1e9:.3g} | "
                           + " | ".join(f"{g:,.0f} ({g / peak:.0%})" for g in gflops.values()) + " |")
        for layout in TORCH_LAYOUTS:
            children[name, layout].close()
    print("\nModel FLOPs per second (3 x the forward convolution and dense FLOPs per image) and, in brackets,"
          " their share of the matmul peak:\n")
    print("| model | GFLOP/image | " + " | ".join(f"{k} GFLOP/s" for k in references + backends) + " |")
    print("|---" * (2 + len(references) + len(backends)) + "|")
    print("\n".join(utilisation))
    print("\n| model | " + " | ".join(f"{b}: first step s" for b in backends) + " |")
    print("|---" * (1 + len(backends)) + "|")
    for name in args.models.split(","):
        print(f"| {name} | " + " | ".join(f"{first_step[name, b]:.1f}" for b in backends) + " |")
    if "auto" in backends:
        print("\nplans auto chose (forward / weight gradient / input gradient), per conv shape:")
        for key, plan in ops.autotune.plans()["conv"].items():
            if plan != {"forward": "xla", "grad_weight": "xla", "grad_input": "xla"}:
                print(f"- `{key}`: {plan['forward']} / {plan['grad_weight']} / {plan['grad_input']}")
        print("(every other conv shape: xla / xla / xla)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\npeak resident memory of jaxcnn's process (all models): {peak:.2f} GiB")
    if args.skip_layers:
        return
    print("\n| layer (batch 128) | pass | PyTorch ms | " + " | ".join(f"{b} ms" for b in backends) + " |")
    print("|---" * (3 + len(backends)) + "|")
    for name, shape, kernel, stride, padding in LAYERS:
        s = side_by_side(layer_candidates(shape, kernel, stride, padding, 128, backends), rounds=args.rounds)
        for p in ("fwd", "fwd+bwd"):
            print(f"| {name} | {p} | {median(s[f'torch {p}']) * 1e3:.2f} | "
                  + " | ".join(f"{median(s[f'{b} {p}']) * 1e3:.2f}" for b in backends) + " |", flush=True)


if __name__ == "__main__":
    main()
