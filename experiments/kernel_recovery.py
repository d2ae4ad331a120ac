"""Kernel recovery (textbook 17.3.7): learn the horizontal-edge kernel [[0,-1,0],[0,2,0],[0,-1,0]] from a photo.

    python launch.py --config experiments/kernel_recovery.py
    python launch.py --config experiments/kernel_recovery.py --config.backend=xla     # lax, for comparison

scikit-learn's china.jpg in grey (every 4th pixel, 107x160, normalised) filtered with
the kernel is the target; a random 3x3 kernel is fitted by plain gradient descent on
the MSE through conv2d_im2col's textbook backward pass, with the optimal constant step
computed from the im2col matrix, until the loss is below 1e-7. Expected: about 430
steps, learned kernel within 1e-3 of the true one, under 2 s (measured 2026-11-22).
results.json holds learned_kernel, true_kernel, final_loss, steps; kernel_recovery.png
shows the target against the prediction.
"""

from jaxcnn.tasks.kernel_recovery import default_config


def get_config():
    return default_config()
