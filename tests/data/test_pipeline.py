"""Input pipelines: both feeding modes, determinism and resumption, layouts, exact evaluation, offline errors."""

import hashlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcnn.data import DataConfig, DatasetUnavailableError, Pipeline, offline, sources


def _config(data_dir, **kw):
    return DataConfig(**{"name": "shapes", "batch_size": 64, "data_dir": data_dir, **kw})


def _hashes(images):
    """One digest per image; float images in [0, 1] are compared as the uint8 pixels they came from."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.rint(images * 255).astype(np.uint8)
    return [hashlib.sha1(img.tobytes()).hexdigest() for img in images]


@pytest.mark.parametrize("feeding", ["device", "stream"])
def test_batches_shapes_values_and_one_epoch_is_a_permutation(data_dir, feeding):
    p = Pipeline(_config(data_dir, feeding=feeding, normalize=False), seed=0)
    assert p.feeding == feeding and p.steps_per_epoch == 3000 // 64 and p.input_shape == (28, 28, 1)
    batches = [b for _, b in zip(range(p.steps_per_epoch), p.train_batches())]
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    assert images.shape == (p.steps_per_epoch * 64, 28, 28, 1) and images.dtype == np.float32
    assert labels.dtype == np.int32 and 0.0 <= images.min() and images.max() <= 1.0
    assert len(set(_hashes(images))) == len(images)  # no example twice within an epoch
    train = offline.shapes("train")
    assert set(_hashes(images)) <= set(_hashes(train["image"]))


def test_normalised_batches_have_zero_mean_unit_std(data_dir):
    p = Pipeline(_config(data_dir, name="colors"), seed=0)
    images = np.concatenate([b["image"] for _, b in zip(range(20), p.train_batches())])
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=0.05)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=0.05)


@pytest.mark.parametrize("feeding", ["device", "stream"])
def test_batch_at_step_k_is_the_same_after_a_restart(data_dir, feeding):
    cfg = _config(data_dir, feeding=feeding, crop_padding=2, flip=True, batch_size=128)
    first = Pipeline(cfg, seed=3)
    uninterrupted = [b for _, b in zip(range(30), first.train_batches(0))]  # crosses an epoch (23 steps)
    resumed = Pipeline(cfg, seed=3)  # a new process would build a new pipeline
    for k in (0, 7, 23, 29):
        b = resumed.batch_at(k)
        np.testing.assert_array_equal(b["image"], uninterrupted[k]["image"])
        np.testing.assert_array_equal(b["label"], uninterrupted[k]["label"])
    assert not np.array_equal(Pipeline(cfg, seed=4).batch_at(0)["image"], uninterrupted[0]["image"])


@pytest.mark.parametrize("feeding", ["device", "stream"])
def test_evaluation_covers_the_split_exactly_once(data_dir, feeding):
    p = Pipeline(_config(data_dir, feeding=feeding, eval_batch_size=96, normalize=False), seed=0)
    batches = list(p.eval_batches())
    assert len(batches) == -(-500 // 96) and p.num_eval_examples == 500
    masks = np.concatenate([b["mask"] for b in batches])
    assert masks.sum() == 500 and masks[:500].all()  # only the last batch is padded
    images = np.concatenate([b["image"] for b in batches])[masks]
    labels = np.concatenate([b["label"] for b in batches])[masks]
    test = offline.shapes("test")
    expected = sorted(zip(_hashes(test["image"]), test["label"].tolist()))
    assert sorted(zip(_hashes(images), labels.tolist())) == expected


@pytest.mark.parametrize("feeding", ["device", "stream"])
def test_batches_do_not_depend_on_the_device_layout(data_dir, feeding):
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py asks for 4 CPU devices)")
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    cfg = _config(data_dir, feeding=feeding, crop_padding=2, flip=True, mixup_alpha=0.2)
    one, four = Pipeline(cfg, seed=0), Pipeline(cfg, seed=0, sharding=NamedSharding(mesh, PartitionSpec("data")))
    for k in (0, 5):
        a, b = one.batch_at(k), four.batch_at(k)
        assert len(b["image"].sharding.device_set) == 4
        np.testing.assert_allclose(a["image"], b["image"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(a["label"], b["label"], rtol=1e-6, atol=1e-6)
    ea, eb = next(iter(one.eval_batches())), next(iter(four.eval_batches()))
    np.testing.assert_array_equal(ea["mask"], eb["mask"])
    np.testing.assert_allclose(ea["image"], eb["image"], rtol=1e-6, atol=1e-6)


def test_mixup_and_cutmix_make_soft_labels(data_dir):
    p = Pipeline(_config(data_dir, mixup_alpha=0.4, cutmix_alpha=1.0), seed=0)
    labels = p.batch_at(0)["label"]
    assert labels.shape == (64, 5) and labels.dtype == np.float32
    np.testing.assert_allclose(labels.sum(axis=1), 1.0, rtol=1e-6)


def test_digits_resized_for_lenet_and_econ_regression_targets(data_dir):
    digits = Pipeline(DataConfig(name="digits", batch_size=32, image_size=32, data_dir=data_dir), seed=0)
    assert digits.batch_at(0)["image"].shape == (32, 32, 32, 1) and digits.input_shape == (32, 32, 1)
    econ = Pipeline(DataConfig(name="econ", batch_size=32, data_dir=data_dir), seed=0)
    batch = econ.batch_at(0)
    assert batch["image"].shape == (32, 32, 32, 4) and batch["label"].dtype == np.float32
    assert econ.num_classes == 0


def test_grayscale_option(data_dir):
    p = Pipeline(_config(data_dir, name="colors", grayscale=True), seed=0)
    assert p.batch_at(0)["image"].shape == (64, 28, 28, 1) and p.input_shape == (28, 28, 1)


# --- standard tfds datasets, on tfds's mock data --------------------------------------------------


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3)),
                                        ("fashion_mnist", (28, 28, 1)), ("cifar100", (32, 32, 3))])
def test_standard_datasets_stream_from_tfds(name, shape):
    with tfds.testing.mock_data(num_examples=50):
        p = Pipeline(DataConfig(name=name, batch_size=16, feeding="stream", crop_padding=2, flip=True), seed=0)
        assert (p.num_train_examples, p.steps_per_epoch) == (50, 3)  # drop the remainder of 2
        batch = p.batch_at(4)
        assert batch["image"].shape == (16, *shape) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and int(batch["label"].max()) < p.num_classes
        np.testing.assert_array_equal(p.batch_at(4)["image"], batch["image"])
        masks = [int(b["mask"].sum()) for b in p.eval_batches()]
        assert masks == [16, 16, 16, 2]


def test_imagenet_is_decoded_and_cropped_in_the_stream():
    with tfds.testing.mock_data(num_examples=12):
        p = Pipeline(DataConfig(name="imagenet2012", batch_size=4, image_size=64, flip=True), seed=0)
        assert p.feeding == "stream" and p.input_shape == (64, 64, 3)
        batch = p.batch_at(0)
        assert batch["image"].shape == (4, 64, 64, 3) and np.isfinite(batch["image"]).all()
        assert next(iter(p.eval_batches()))["image"].shape == (4, 64, 64, 3)


def test_each_process_streams_a_disjoint_shard(data_dir, monkeypatch):
    """Two simulated processes: their per-host batches over an epoch are disjoint and cover the split."""
    seen = []
    for index in range(2):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        p = Pipeline(_config(data_dir, batch_size=200, feeding="stream", normalize=False), seed=0)
        assert p.steps_per_epoch == 15 and p.num_train_examples == 3000
        local = [b["image"] for _, b in zip(range(p.steps_per_epoch), p.train_batches())]
        assert local[0].shape == (100, 28, 28, 1)  # this host's half of a global batch of 200
        seen.append(set(_hashes(np.concatenate(local))))
        assert sum(int(b["mask"].sum()) for b in p.eval_batches()) == 250  # half of the 500 test examples
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 3000


# --- errors ----------------------------------------------------------------------------------------


def test_missing_dataset_offline_is_one_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "network_available", lambda timeout=3.0: False)
    with pytest.raises(DatasetUnavailableError) as err:
        Pipeline(DataConfig(name="cifar10", data_dir=str(tmp_path)), seed=0)
    message = str(err.value)
    assert "dataset 'cifar10' (tfds 'cifar10') is not prepared in data_dir" in message
    assert str(tmp_path) in message and "there is no network to download it" in message
    assert "tfds.builder('cifar10'" in message and "download_and_prepare()" in message
    with pytest.raises(DatasetUnavailableError, match=r"(?s)imagenet2012.*manual_dir"):
        Pipeline(DataConfig(name="imagenet2012", data_dir=str(tmp_path)), seed=0)


def test_missing_dataset_on_this_machine_fails_fast(tmp_path):
    if sources.network_available():
        pytest.skip("this machine can reach the download host")
    with pytest.raises(DatasetUnavailableError, match="there is no network"):
        sources.as_dataset("mnist", "train", str(tmp_path))


@pytest.mark.parametrize("values,message", [
    (dict(name="shapes", batchsize=32), r"unknown dataset option 'batchsize'. Did you mean 'batch_size'"),
    (dict(name="shapes", batch_size=0), r"dataset.batch_size must be a positive int, got 0"),
    (dict(name="shapes", feeding="gpu"), r"dataset.feeding must be one of \('auto', 'device', 'stream'\)"),
    (dict(name="imagenet2012", feeding="device"), r"needs fixed-size images"),
    (dict(name="econ", mixup_alpha=0.2), r"need class labels; econ is a regression task"),
    (dict(name="shapes", crop_mode="wrap"), r"dataset.crop_mode must be 'zeros' or 'reflect'"),
    (dict(name="cifar11"), r"unknown dataset 'cifar11'. Did you mean 'cifar10'"),
])
def test_bad_dataset_config(values, message):
    with pytest.raises(ValueError, match=message):
        DataConfig.from_dict(values)


def test_batch_size_must_split_over_the_devices(data_dir):
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices")
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    with pytest.raises(ValueError, match=r"dataset.batch_size=30 must be divisible by the 4 devices"):
        Pipeline(_config(data_dir, batch_size=30), seed=0, sharding=NamedSharding(mesh, PartitionSpec("data")))
    with pytest.raises(ValueError, match=r"batch_size=4000 is larger than the 3000 training examples"):
        Pipeline(_config(data_dir, batch_size=4000), seed=0)


def test_an_offline_dataset_another_process_generated_meanwhile_is_read(tmp_path, monkeypatch):
    """Two processes generating one offline dataset: the one that loses tfds's final rename reads the winner's."""
    import tensorflow_datasets as tfds

    generate = tfds.core.DatasetBuilder.download_and_prepare
    raced = []

    def lose_the_race(self, *args, **kwargs):
        if raced:
            return generate(self, *args, **kwargs)
        raced.append(True)
        generate(self, *args, **kwargs)  # the other process's copy lands in data_dir first
        raise FileExistsError(f"Cannot rename .../incomplete.XYZ. Destination {self.data_dir} already exists.")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", lose_the_race)
    examples = sources.as_dataset("digits", "test", str(tmp_path))
    assert raced and sum(1 for _ in examples) == sources.num_examples("digits", "test", str(tmp_path)) > 0
