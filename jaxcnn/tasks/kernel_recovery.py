"""Learn a convolution kernel from an image and its filtered version (textbook 17.3.7).

The target is the photograph filtered with a known 3x3 kernel; a kernel starting
from random values is fitted by plain gradient descent on the mean squared error,
the gradient coming through :func:`jaxcnn.ops.conv2d_im2col`'s textbook backward pass
(``backend="xla"`` uses ``lax`` instead, for comparison). The problem is linear least
squares: its Hessian is ``2/N colsᵀ cols`` of the im2col matrix, so the step size
is the optimal constant one, ``2 / (λ_max + λ_min)``, computed from that matrix.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn import ops
from jaxcnn.tasks import sample_image


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "kernel_recovery"
    c.seed = 0
    c.image = "china.jpg"  # one of scikit-learn's sample images
    c.downsample = 4  # every 4th pixel: 107x160
    c.kernel = "horizontal_edge"  # a name from jaxcnn.ops.filters
    c.backend = "im2col"  # or "xla"
    c.max_steps = 5000
    c.target_loss = 1e-7
    c.init_scale = 0.1
    return c


def recover_kernel(image, true_kernel, *, backend="im2col", max_steps=5000, target_loss=1e-7, seed=0,
                   init_scale=0.1):
    """Fit a 3x3 kernel to ``conv(image, true_kernel)`` by gradient descent; ``image`` is 2-D.

    Returns a dict with the learned kernel, the loss after every step, the step size
    and the conditioning of the problem.
    """
    if backend not in ("im2col", "xla"):
        raise ValueError(f"kernel_recovery: backend must be 'im2col' or 'xla', got {backend!r}")
    x = jnp.asarray((image - image.mean()) / image.std(), jnp.float32)[None, :, :, None]  # better conditioned
    conv = ops.conv2d_im2col if backend == "im2col" else ops.conv2d
    target = ops.conv2d(x, jnp.asarray(true_kernel)[:, :, None, None], padding="SAME")
    cols = np.asarray(ops.im2col(x, true_kernel.shape, padding="SAME"), np.float64)
    eigenvalues = np.linalg.eigvalsh(2 * cols.T @ cols / len(cols))
    lr = 2.0 / (eigenvalues.max() + eigenvalues.min())

    def loss_fn(k):
        return jnp.mean((conv(x, k[:, :, None, None], padding="SAME") - target) ** 2)

    @jax.jit
    def step(k):
        loss, grad = jax.value_and_grad(loss_fn)(k)
        return k - lr * grad, loss

    kernel = init_scale * jax.random.normal(jax.random.key(seed), true_kernel.shape)
    losses = []
    for _ in range(max_steps):
        new_kernel, loss = step(kernel)
        losses.append(float(loss))
        if losses[-1] < target_loss:
            break
        kernel = new_kernel
    return {"kernel": np.asarray(kernel), "losses": losses, "learning_rate": float(lr),
            "condition_number": float(eigenvalues.max() / eigenvalues.min()), "input": np.asarray(x[0, :, :, 0]),
            "target": np.asarray(target[0, :, :, 0]),
            "prediction": np.asarray(conv(x, jnp.asarray(kernel)[:, :, None, None], padding="SAME")[0, :, :, 0])}


def plot(result, true_kernel, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
    for ax, (title, image) in zip(axes[:3], (("input (normalised)", result["input"]), ("target", result["target"]),
                                             ("prediction", result["prediction"]))):
        ax.imshow(image, cmap="gray")
        ax.set_title(title)
        ax.axis("off")
    for ax, (title, k) in zip(axes[3:], (("true kernel", true_kernel), ("learned kernel", result["kernel"]))):
        ax.imshow(k, cmap="coolwarm", vmin=-2, vmax=2)
        for (i, j), v in np.ndenumerate(k):
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=8)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"kernel recovery: loss {result['losses'][-1]:.2e} after {len(result['losses'])} steps")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run(config, workdir: str) -> dict:
    from jaxcnn.train.config import check_keys

    check_keys(config, default_config())
    c = default_config()
    c.update(config)
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    true_kernel = ops.filters.get(c.kernel)
    image = sample_image(c.image, c.downsample, grayscale=True)
    result = recover_kernel(image, true_kernel, backend=c.backend, max_steps=c.max_steps, target_loss=c.target_loss,
                            seed=c.seed, init_scale=c.init_scale)
    results = {
        "learned_kernel": result["kernel"].astype(np.float64).round(6).tolist(), "true_kernel": true_kernel.tolist(),
        "final_loss": result["losses"][-1], "steps": len(result["losses"]),
        "kernel_max_abs_error": float(np.abs(result["kernel"] - true_kernel).max()),
        "converged": result["losses"][-1] < c.target_loss, "learning_rate": result["learning_rate"],
        "condition_number": result["condition_number"], "backend": c.backend,
        "image": f"{c.image} every {c.downsample}th pixel, {list(image.shape)}", "wall_time_s": time.time() - start,
    }
    plot(result, true_kernel, os.path.join(workdir, "kernel_recovery.png"))
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results
