"""The experiment config: every key with its default, and the checks a config must pass.

Experiment files in ``experiments/`` start from :func:`default_config` and change what
they need; ``launch.py --config.KEY=VALUE`` changes the rest. Durations given in
epochs are converted to steps once, when the training length is known.
"""

from __future__ import annotations

import difflib

import ml_collections
from ml_collections import config_dict

PARALLEL = ("auto", "none", "jit", "shard_map", "pmap")
DTYPES = ("float32", "bfloat16", "float16")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "step", "warmup_cosine", "one_cycle")
LOSSES = ("cross_entropy", "mse", "binary_cross_entropy")
WEIGHT_DECAY_MODES = ("decoupled", "l2")


def default_config() -> ml_collections.ConfigDict:
    """Every key an experiment config may set, with its default."""
    c = ml_collections.ConfigDict()
    c.task = "train"  # other tasks (kernel_recovery, filters, report) have their own keys: jaxcnn.tasks
    c.seed = 0
    c.batch_size = 128  # global, over all devices and processes
    c.num_epochs = 10.0
    c.total_steps = 0  # > 0 overrides num_epochs
    c.eval_every_steps = 0  # 0: once per epoch
    c.log_every_steps = 50
    c.checkpoint_every_steps = 0  # 0: once per epoch; checkpoints are also written at the end and on SIGTERM/SIGINT
    c.keep_checkpoints = 3
    c.parallel = "auto"  # auto: "jit" over all devices when there are several, else "none"
    c.dtype = "float32"  # compute dtype; parameters stay float32. float16 adds dynamic loss scaling.
    c.progress_bar = True
    c.figures = True  # kernels, feature maps, predictions and confusion matrix PNGs at the end (classification)

    c.model = ml_collections.ConfigDict()
    c.model.name = "lenet5"
    # auto: each conv pass on the formulation measured fastest for its shape, once per machine (on one CPU
    # process; elsewhere it is xla). "xla" pins one program everywhere.
    c.model.conv_backend = "auto"
    c.model.kwargs = ml_collections.ConfigDict()  # the family's options, e.g. classic=True for lenet5

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "digits"
    c.dataset.data_dir = config_dict.placeholder(str)
    c.dataset.eval_batch_size = config_dict.placeholder(int)
    c.dataset.feeding = "auto"
    c.dataset.image_size = config_dict.placeholder(int)
    c.dataset.grayscale = False
    c.dataset.normalize = True
    c.dataset.crop_padding = 0
    c.dataset.crop_mode = "zeros"
    c.dataset.flip = False
    c.dataset.mixup_alpha = 0.0
    c.dataset.cutmix_alpha = 0.0
    c.dataset.train_split = config_dict.placeholder(str)
    c.dataset.eval_split = config_dict.placeholder(str)
    c.dataset.shuffle_buffer = 16384

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "momentum"
    c.optimizer.learning_rate = 0.1  # the peak of the schedule
    c.optimizer.momentum = 0.9  # momentum / nesterov; rmsprop's momentum when > 0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.rms_decay = 0.9
    c.optimizer.weight_decay = 0.0
    c.optimizer.weight_decay_mode = "l2"  # l2: 0.5 * wd * |kernels|^2 in the loss; decoupled: AdamW-style
    c.optimizer.grad_clip_norm = 0.0  # > 0: clip the global gradient norm
    c.optimizer.grad_accum_steps = 1  # split each batch into this many micro-batches, one update per batch
    c.optimizer.ema_decay = 0.0  # > 0: keep an exponential moving average of the weights and evaluate it

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "constant"
    c.schedule.warmup_epochs = 0.0
    c.schedule.milestones = ()  # epochs at which "step" multiplies the rate by decay_factor
    c.schedule.decay_factor = 0.1
    c.schedule.end_fraction = 0.0  # warmup_cosine / one_cycle end at learning_rate * end_fraction

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "cross_entropy"
    c.loss.label_smoothing = 0.0
    c.loss.aux_weight = 0.3  # GoogLeNet's auxiliary classifiers, when the model returns them
    return c


def _close(key, options):
    close = difflib.get_close_matches(key, list(options), n=3)
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""


def check_keys(config, schema, prefix="") -> None:
    """Raise ValueError for a key of ``config`` that ``schema`` lacks, naming the closest valid ones."""
    for key in config.keys():
        path = f"{prefix}{key}"
        if key not in schema:
            raise ValueError(f"unknown config key {path!r}.{_close(key, schema.keys())} "
                             f"Valid keys{' of ' + prefix[:-1] if prefix else ''}: {', '.join(sorted(schema.keys()))}")
        if isinstance(schema[key], ml_collections.ConfigDict) and path != "model.kwargs":
            if not isinstance(config[key], (ml_collections.ConfigDict, dict)):
                raise ValueError(f"config.{path} must be a group of keys, got {config[key]!r}")
            check_keys(config[key], schema[key], f"{path}.")


def _merge(target, source, prefix="") -> None:
    for key in source.keys():
        value = source[key]
        if isinstance(target[key], ml_collections.ConfigDict) and f"{prefix}{key}" != "model.kwargs":
            _merge(target[key], value, f"{prefix}{key}.")
        elif f"{prefix}{key}" == "model.kwargs":
            target[key] = ml_collections.ConfigDict(dict(value))
        else:
            try:
                target[key] = value
            except TypeError as e:
                raise ValueError(f"config.{prefix}{key}: {e}") from None


def _choice(value, options, name):
    if value not in options:
        raise ValueError(f"config.{name} must be one of {options}, got {value!r}.{_close(str(value), options)}")


def _positive(value, name, minimum=1, kind=int):
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value < minimum:
        raise ValueError(f"config.{name} must be {'a number' if kind is float else 'an int'} >= {minimum}, "
                         f"got {value!r}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raise ValueError, naming the key, for unknown keys and bad values; fill in missing keys."""
    c = default_config()
    check_keys(config, c)
    _merge(c, config)  # keys the config leaves out keep their defaults
    _choice(c.parallel, PARALLEL, "parallel")
    _choice(c.dtype, DTYPES, "dtype")
    _choice(c.optimizer.name, OPTIMIZERS, "optimizer.name")
    _choice(c.optimizer.weight_decay_mode, WEIGHT_DECAY_MODES, "optimizer.weight_decay_mode")
    _choice(c.schedule.name, SCHEDULES, "schedule.name")
    _choice(c.loss.name, LOSSES, "loss.name")
    _positive(c.batch_size, "batch_size")
    _positive(c.total_steps, "total_steps", 0)
    _positive(c.num_epochs, "num_epochs", 0, float)
    if not c.total_steps and not c.num_epochs:
        raise ValueError("config.num_epochs or config.total_steps must be > 0")
    for key in ("eval_every_steps", "checkpoint_every_steps"):
        _positive(c[key], key, 0)
    _positive(c.log_every_steps, "log_every_steps")
    _positive(c.keep_checkpoints, "keep_checkpoints")
    _positive(c.optimizer.grad_accum_steps, "optimizer.grad_accum_steps")
    if c.batch_size % c.optimizer.grad_accum_steps:
        raise ValueError(f"config.batch_size={c.batch_size} must be divisible by "
                         f"config.optimizer.grad_accum_steps={c.optimizer.grad_accum_steps}")
    _positive(c.optimizer.learning_rate, "optimizer.learning_rate", 0, float)
    if not 0 <= c.optimizer.ema_decay < 1:
        raise ValueError(f"config.optimizer.ema_decay must be in [0, 1), got {c.optimizer.ema_decay!r}")
    if not 0 <= c.loss.label_smoothing < 1:
        raise ValueError(f"config.loss.label_smoothing must be in [0, 1), got {c.loss.label_smoothing!r}")
    return c
