"""Input pipelines: one interface, two ways of feeding.

``Pipeline(config, seed=..., sharding=...)`` yields training batches
``{"image": float32 (B, H, W, C), "label": ...}`` and evaluation batches that add
``"mask"`` (False on padding rows), as jax arrays laid out with ``sharding`` (the
training engine's data-parallel sharding; ``None``: the default device).

* ``feeding="device"``: the whole split lives on the accelerator as uint8; each
  step gathers its batch and preprocesses and augments it inside one jitted call.
  No host round trip per step. For datasets that fit (all but ImageNet).
* ``feeding="stream"``: tf.data reads, shuffles and batches on the host (AUTOTUNE,
  prefetch; TensorFlow is kept off the GPU), each process its own shard of the
  split; the batch is then preprocessed and augmented in JAX exactly as above.

Determinism: the training batch at step ``k`` is a function of ``(seed, k)``. The
examples come from a per-epoch shuffle seeded by ``(seed, epoch)`` and augmentation
keys are ``fold_in(key, k)``, so a run resumed at step ``k`` sees the batches an
uninterrupted run sees. With device feeding the global batch also does not depend
on the number of devices or processes; streamed, it does not depend on the number
of devices per process.

Training drops the last partial batch of each epoch; evaluation covers the split
exactly: the last batch is padded and masked.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.data import augment, catalog, sources

FEEDING = ("auto", "device", "stream")
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0x5EED, 0xA06  # fold_in constants: data randomness apart from the model's


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``dataset`` part of an experiment config.

    ``batch_size`` is global (all processes). ``image_size`` resizes (bilinear) to a
    square; ``crop_padding`` > 0 adds random crops (``crop_mode`` "zeros": random
    translations, or "reflect"); ``mixup_alpha`` / ``cutmix_alpha`` > 0 mix training
    batches and turn labels into mixed one-hot vectors. ``train_split`` /
    ``eval_split`` override the catalogue's (any tfds split expression).
    """

    name: str
    data_dir: str | None = None
    batch_size: int = 128
    eval_batch_size: int | None = None
    feeding: str = "auto"
    image_size: int | None = None
    grayscale: bool = False
    normalize: bool = True
    crop_padding: int = 0
    crop_mode: str = "zeros"
    flip: bool = False
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    train_split: str | None = None
    eval_split: str | None = None
    shuffle_buffer: int = 16384

    @classmethod
    def from_dict(cls, values) -> DataConfig:
        """From a mapping (e.g. ``config.dataset``); unknown keys get the closest valid ones named."""
        values = dict(values)
        fields = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=3)
                hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"unknown dataset option {key!r}.{hint} Valid options: {', '.join(fields)}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        info = catalog.get(self.name)
        for key in ("batch_size",):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"dataset.{key} must be a positive int, got {getattr(self, key)!r}")
        if self.eval_batch_size is not None and (not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1):
            raise ValueError(f"dataset.eval_batch_size must be a positive int or None, got {self.eval_batch_size!r}")
        if self.feeding not in FEEDING:
            raise ValueError(f"dataset.feeding must be one of {FEEDING}, got {self.feeding!r}")
        if self.feeding == "device" and info.image_shape is None:
            raise ValueError(f"dataset.feeding='device' needs fixed-size images; {self.name} must be streamed")
        if self.crop_mode not in ("zeros", "reflect"):
            raise ValueError(f"dataset.crop_mode must be 'zeros' or 'reflect', got {self.crop_mode!r}")
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            raise ValueError(f"dataset.image_size must be a positive int or None, got {self.image_size!r}")
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ValueError(f"dataset.crop_padding must be an int >= 0, got {self.crop_padding!r}")
        for key in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, key) < 0:
                raise ValueError(f"dataset.{key} must be >= 0, got {getattr(self, key)!r}")
        if (self.mixup_alpha or self.cutmix_alpha) and info.is_regression:
            raise ValueError(f"dataset.mixup_alpha / cutmix_alpha need class labels; {self.name} is a regression task")


@dataclasses.dataclass(frozen=True)
class _BatchSpec:
    """What turns a uint8 batch into the model's input (hashable: a static jit argument)."""

    max_value: float
    image_size: int | None
    grayscale: bool
    mean: tuple | None
    std: tuple | None
    crop_padding: int
    crop_mode: str
    flip: bool
    mixup_alpha: float
    cutmix_alpha: float
    num_classes: int


def _finish(images, labels, key, spec: _BatchSpec, train: bool):
    """Preprocess (and, in training, augment) a uint8 batch: the same code for both feeding modes."""
    x = augment.to_float(images, spec.max_value)
    if spec.grayscale:
        x = augment.grayscale(x)
    if spec.image_size:
        x = augment.resize(x, spec.image_size)
    if train:
        k_crop, k_flip, k_mix = jax.random.split(key, 3)
        x = augment.random_crop(k_crop, x, spec.crop_padding, spec.crop_mode)
        if spec.flip:
            x = augment.random_flip(k_flip, x)
    if spec.mean is not None:
        x = augment.normalize(x, spec.mean, spec.std)
    if train and (spec.mixup_alpha or spec.cutmix_alpha):
        onehot = jax.nn.one_hot(labels, spec.num_classes, dtype=jnp.float32)
        x, labels = augment.mix(k_mix, x, onehot, spec.mixup_alpha, spec.cutmix_alpha)
    return {"image": x, "label": labels}


class Pipeline:
    """Training and evaluation batches of one dataset; see the module docstring."""

    def __init__(self, config: DataConfig | dict, *, seed: int = 0, sharding: Any = None):
        self.config = config if isinstance(config, DataConfig) else DataConfig.from_dict(config)
        self.config.validate()
        self.info = catalog.get(self.config.name)
        self.sharding = sharding
        self.process_count, self.process_index = jax.process_count(), jax.process_index()
        cfg = self.config
        for key, value in (("batch_size", cfg.batch_size), ("eval_batch_size", self.eval_batch_size)):
            if value % self.process_count:
                raise ValueError(f"dataset.{key}={value} must be divisible by the {self.process_count} processes")
            if sharding is not None and value % sharding.mesh.size:
                raise ValueError(f"dataset.{key}={value} must be divisible by the {sharding.mesh.size} devices "
                                 "it is split over")
        self.feeding = cfg.feeding
        if self.feeding == "auto":
            self.feeding = "stream" if self.info.image_shape is None else "device"
        self.train_split = cfg.train_split or self.info.train_split
        self.eval_split = cfg.eval_split or self.info.eval_split
        self._spec = _BatchSpec(
            max_value=self.info.max_value, image_size=cfg.image_size, grayscale=cfg.grayscale,
            mean=self._channel_stats(self.info.mean) if cfg.normalize else None,
            std=self._channel_stats(self.info.std) if cfg.normalize else None,
            crop_padding=cfg.crop_padding, crop_mode=cfg.crop_mode, flip=cfg.flip, mixup_alpha=cfg.mixup_alpha,
            cutmix_alpha=cfg.cutmix_alpha, num_classes=self.info.num_classes)
        root = jax.random.key(seed)
        self._shuffle_key = jax.random.fold_in(root, _SHUFFLE_STREAM)
        self._augment_key = jax.random.fold_in(root, _AUGMENT_STREAM)
        self.seed = seed
        self._source = (_DeviceSource if self.feeding == "device" else _StreamSource)(self)
        self.num_train_examples = self._source.num_train_examples
        self.steps_per_epoch = self.num_train_examples // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"dataset.batch_size={cfg.batch_size} is larger than the {self.num_train_examples} "
                             f"training examples of {cfg.name}")

    @property
    def eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of the batches the model sees."""
        h, w, c = self.info.image_shape or (224, 224, 3)
        if self.config.image_size:
            h = w = self.config.image_size
        return h, w, 1 if self.config.grayscale else c

    def _channel_stats(self, stats):
        if self.config.grayscale and len(stats) == 3:  # statistics of the luminance image, approximately
            return (float(np.dot(augment._LUMA, stats)),)
        return tuple(stats)

    def _global(self, local: np.ndarray):
        """A process-local batch (this process's rows) as one array over ``sharding``."""
        if self.sharding is None:
            return jnp.asarray(local)
        return jax.make_array_from_process_local_data(self.sharding, local)

    @functools.cached_property
    def _finish_train(self):
        def finish(images, labels, step):
            return _finish(images, labels, self.step_key(step), self._spec, True)

        return jax.jit(finish, out_shardings=self.sharding)

    @functools.cached_property
    def _finish_eval(self):
        return jax.jit(functools.partial(_finish, key=None, spec=self._spec, train=False),
                       out_shardings=self.sharding)

    def step_key(self, step):
        """The augmentation key of ``step`` (derived inside the jitted batch functions: no extra dispatch)."""
        return jax.random.fold_in(self._augment_key, step)

    def train_batches(self, start_step: int = 0) -> Iterator[dict]:
        """Training batches for steps ``start_step, start_step + 1, ...`` (endless)."""
        return self._source.train_batches(start_step)

    def batch_at(self, step: int) -> dict:
        """The training batch of ``step`` alone (what ``train_batches`` yields there)."""
        return next(iter(self._source.train_batches(step)))

    def eval_batches(self) -> Iterator[dict]:
        """The evaluation split in order, in batches of ``eval_batch_size``; the last padded, with ``mask``."""
        return self._source.eval_batches()

    @property
    def num_eval_examples(self) -> int:
        return self._source.num_eval_examples


class _DeviceSource:
    """The whole split on the accelerator; batches gathered and finished in one jitted call."""

    def __init__(self, pipeline: Pipeline):
        self.p = pipeline
        replicated = None
        if pipeline.sharding is not None:
            replicated = jax.sharding.NamedSharding(pipeline.sharding.mesh, jax.sharding.PartitionSpec())
        place = (lambda a: jax.device_put(a, replicated)) if replicated is not None else jnp.asarray
        train = sources.load_arrays(pipeline.config.name, pipeline.train_split, pipeline.config.data_dir)
        self.num_train_examples = len(train["label"])
        self.train = {k: place(v) for k, v in train.items()}
        self._eval = None
        self._place = place
        spec, batch = pipeline._spec, pipeline.config.batch_size

        def train_batch(arrays, perm, step):
            index = jax.lax.dynamic_slice_in_dim(perm, (step % pipeline.steps_per_epoch) * batch, batch)
            return _finish(arrays["image"][index], arrays["label"][index], pipeline.step_key(step), spec, True)

        def eval_batch(arrays, i, size):
            index = i * size + jnp.arange(size)
            mask = index < arrays["label"].shape[0]
            index = jnp.minimum(index, arrays["label"].shape[0] - 1)
            out = _finish(arrays["image"][index], arrays["label"][index], None, spec, False)
            return {**out, "mask": mask}

        self._train_batch = jax.jit(train_batch, out_shardings=pipeline.sharding)
        self._eval_batch = jax.jit(eval_batch, static_argnums=2, out_shardings=pipeline.sharding)
        self._permutation = jax.jit(lambda key, epoch: jax.random.permutation(jax.random.fold_in(key, epoch),
                                                                              self.num_train_examples),
                                    out_shardings=replicated)

    def train_batches(self, start_step: int):
        p = self.p
        perm, perm_epoch = None, None
        for step in itertools.count(start_step):
            epoch = step // p.steps_per_epoch
            if epoch != perm_epoch:
                perm, perm_epoch = self._permutation(p._shuffle_key, epoch), epoch
            yield self._train_batch(self.train, perm, step)

    @property
    def eval_arrays(self):
        if self._eval is None:
            arrays = sources.load_arrays(self.p.config.name, self.p.eval_split, self.p.config.data_dir)
            self._eval = {k: self._place(v) for k, v in arrays.items()}
        return self._eval

    @property
    def num_eval_examples(self) -> int:
        return int(self.eval_arrays["label"].shape[0])

    def eval_batches(self):
        size = self.p.eval_batch_size
        for i in range(math.ceil(self.num_eval_examples / size)):
            yield self._eval_batch(self.eval_arrays, i, size)


class _StreamSource:
    """tf.data on the host, each process reading its own shard of the split."""

    def __init__(self, pipeline: Pipeline):
        self.p = pipeline
        cfg = pipeline.config
        self.local_batch = cfg.batch_size // pipeline.process_count
        self.local_eval_batch = pipeline.eval_batch_size // pipeline.process_count
        shard_sizes = [sources.num_examples(cfg.name, s, cfg.data_dir) for s in self._shards(pipeline.train_split)]
        # every process takes the same number of batches per epoch, so the steps stay in lockstep
        self.num_train_examples = min(shard_sizes) * pipeline.process_count

    def _shards(self, split: str) -> list:
        if self.p.process_count == 1:
            return [split]
        import tensorflow_datasets as tfds

        return tfds.even_splits(split, n=self.p.process_count)

    def _dataset(self, split, train: bool, epoch: int = 0):
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # TensorFlow must not claim the accelerator
        p, cfg = self.p, self.p.config
        ds = sources.as_dataset(cfg.name, self._shards(split)[p.process_index], cfg.data_dir, shuffle_files=False,
                                **self._decoders())
        ds = ds.enumerate()
        if train:
            ds = ds.shuffle(cfg.shuffle_buffer, seed=hash((p.seed, epoch)) % 2**31, reshuffle_each_iteration=False)
        ds = ds.map(functools.partial(self._example, train=train, epoch=epoch), num_parallel_calls=tf.data.AUTOTUNE)
        return ds

    def _decoders(self) -> dict:
        if self.p.info.image_shape is not None:
            return {}
        import tensorflow_datasets as tfds

        return {"decoders": {"image": tfds.decode.SkipDecoding()}}

    def _example(self, index, example, train: bool, epoch: int):
        """Fixed-shape uint8 image and label; ImageNet JPEGs are decoded and cropped here."""
        image, label = example["image"], example["label"]
        if self.p.info.image_shape is None:
            from jaxcnn.data import imagenet

            size = self.p.config.image_size or 224
            seed = (hash((self.p.seed, epoch, self.p.process_index)) % 2**31, index)
            image = imagenet.train_crop(image, size, seed) if train else imagenet.eval_crop(image, size)
        return image, label

    def train_batches(self, start_step: int):
        p = self.p
        epoch, skip = divmod(start_step, p.steps_per_epoch)
        step = start_step
        while True:
            ds = self._dataset(p.train_split, True, epoch).batch(self.local_batch, drop_remainder=True)
            ds = ds.take(p.steps_per_epoch).skip(skip).prefetch(2)
            for images, labels in ds.as_numpy_iterator():
                images, labels = p._global(images), p._global(self._label(labels))
                yield p._finish_train(images, labels, step)
                step += 1
            epoch, skip = epoch + 1, 0

    def _label(self, labels):
        return labels.astype(np.float32 if self.p.info.is_regression else np.int32)

    @functools.cached_property
    def _eval_shard_sizes(self) -> list[int]:
        cfg = self.p.config
        return [sources.num_examples(cfg.name, s, cfg.data_dir) for s in self._shards(self.p.eval_split)]

    @property
    def num_eval_examples(self) -> int:
        return sum(self._eval_shard_sizes)

    def eval_batches(self):
        p, size = self.p, self.local_eval_batch
        # every process runs as many batches as the largest shard needs; the others pad with masked rows
        num_batches = math.ceil(max(self._eval_shard_sizes) / size)
        ds = self._dataset(p.eval_split, False).batch(size).prefetch(2).as_numpy_iterator()
        for _ in range(num_batches):
            images, labels = next(ds, (None, None))
            n = 0 if labels is None else len(labels)
            shape = (size, *p.input_shape) if p.info.image_shape is None else (size, *p.info.image_shape)
            padded_images = np.zeros(shape, np.uint8)
            padded_labels = np.zeros((size,), np.float32 if p.info.is_regression else np.int32)
            if n:
                padded_images[:n], padded_labels[:n] = images, self._label(labels)
            mask = np.arange(size) < n
            out = p._finish_eval(p._global(padded_images), p._global(padded_labels))
            yield {**out, "mask": p._global(mask)}
