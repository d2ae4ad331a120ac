"""The textbook's offline tasks in one command, with a REPORT.md table of its figures next to jaxcnn's.

    python launch.py --config experiments/report.py --workdir runs/report
    python launch.py --config experiments/report.py --config.budget_steps=5   # quick check, a few steps each

Runs colours, shapes, shapes+colours, digits (LeNet-5), kernel recovery and the econ
regression with their own experiment configs. Expected (measured 2026-11-24 on a
2-core CPU): colours 99.67%, shapes 99.80%, shapes+colours 100.00% (textbook 96.3%,
96%, 97%), digits 99.72%, kernel recovered to a loss below 1e-7, econ test MSE 0.0027
(0.0018-0.0027 over seeds); about 110 s in all on a machine's first run (75 s once the
machine cache holds the conv plans and compiled programs), half of it the econ regression.
"""

import ml_collections

from experiments import colors, default, econ_regression, kernel_recovery, shapes, shapes_colors


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "report"
    c.budget_steps = 0  # > 0: every run stops after this many steps
    c.runs = ml_collections.ConfigDict({
        "colors": colors.get_config(),
        "shapes": shapes.get_config(),
        "shapes_colors": shapes_colors.get_config(),
        "digits": default.get_config(),
        "kernel_recovery": kernel_recovery.get_config(),
        "econ_regression": econ_regression.get_config(),
    })
    c.descriptions = ml_collections.ConfigDict({
        "colors": "textbook 18.1: 6 colours, colors_cnn (1x1 conv first)",
        "shapes": "textbook 18.2: 5 shapes, shapes_cnn",
        "shapes_colors": "textbook 18.3: 3 shapes x 3 colours, shapes_colors_cnn",
        "digits": "LeNet-5 on scikit-learn's digits at 32x32",
        "kernel_recovery": "textbook 17.3.7: learn a 3x3 edge kernel (final MSE)",
        "econ_regression": "satellite-tile regression (a constant predictor: MSE 0.030)",
    })
    c.textbook = ml_collections.ConfigDict({"colors": 0.963, "shapes": 0.96, "shapes_colors": 0.97})
    c.notes = ("For reference, the textbook reports 98.65% on MNIST (experiments/mnist_cnn.py); MNIST cannot be "
               "downloaded offline, so it is not part of this report.",)
    return c
