"""The offline datasets: sizes, determinism, disjoint and balanced splits, and their tfds builders."""

import hashlib

import numpy as np
import pytest

from jaxcnn.data import catalog, load_arrays, offline

SIZES = {  # name: (train, test, image shape, classes)
    "digits": (1437, 360, (8, 8, 1), 10),
    "shapes": (3000, 500, (28, 28, 1), 5),
    "colors": (3600, 600, (28, 28, 3), 6),
    "shapes_colors": (5400, 900, (28, 28, 3), 9),
    "econ": (4000, 1000, (32, 32, 4), 0),
}


def _hashes(images):
    return {hashlib.sha1(img.tobytes()).hexdigest() for img in images}


@pytest.mark.parametrize("name", list(SIZES))
def test_sizes_determinism_disjoint_splits_and_balance(name):
    n_train, n_test, shape, classes = SIZES[name]
    train, test = offline.GENERATORS[name]("train"), offline.GENERATORS[name]("test")
    assert train["image"].shape == (n_train, *shape) and test["image"].shape == (n_test, *shape)
    assert train["image"].dtype == np.uint8
    again = offline.GENERATORS[name]("train")
    np.testing.assert_array_equal(again["image"], train["image"])
    np.testing.assert_array_equal(again["label"], train["label"])
    assert not _hashes(train["image"]) & _hashes(test["image"])
    if classes:
        train_counts = np.bincount(train["label"], minlength=classes)
        test_counts = np.bincount(test["label"], minlength=classes)
        assert len(train_counts) == len(test_counts) == classes
        if name == "digits":  # sklearn's classes are not balanced; the split is stratified: 20% of each in test
            assert np.all(np.abs(test_counts - 0.2 * (train_counts + test_counts)) <= 1)
        else:  # generated balanced: 600 / 100 per class
            assert set(train_counts) == {600} and set(test_counts) == {100}


def test_digits_are_sklearns_digits_unscaled():
    from sklearn.datasets import load_digits

    ref = load_digits()
    train, test = offline.digits("train"), offline.digits("test")
    assert train["image"].max() == 16 and train["image"].min() == 0
    ours = sorted((img.tobytes(), int(lab)) for split in (train, test) for img, lab in zip(split["image"], split["label"]))
    theirs = sorted((img.astype(np.uint8)[..., None].tobytes(), int(lab)) for img, lab in zip(ref.images, ref.target))
    assert ours == theirs


def test_econ_target_is_band_weighted_lit_area():
    data = offline.econ("test")
    images = data["image"].astype(np.float64)
    expected = sum(w * (images[..., b] > 128).mean(axis=(1, 2)) for b, w in enumerate(offline.ECON_BAND_WEIGHTS))
    np.testing.assert_allclose(data["label"], expected, rtol=1e-6)
    assert data["label"].std() > 0.05  # the target varies: there is something to regress


@pytest.mark.parametrize("name", list(SIZES))
def test_catalog_statistics_are_those_of_the_training_split(name):
    info = catalog.get(name)
    images = offline.GENERATORS[name]("train")["image"] / info.max_value
    np.testing.assert_allclose(info.mean, images.mean(axis=(0, 1, 2)), atol=1e-4)
    np.testing.assert_allclose(info.std, images.std(axis=(0, 1, 2)), atol=1e-4)
    assert info.image_shape == SIZES[name][2] and info.num_classes == SIZES[name][3]


@pytest.mark.parametrize("name", list(SIZES))
def test_tfds_builder_holds_the_generated_examples(name, data_dir):
    for split in ("train", "test"):
        generated = offline.GENERATORS[name](split)
        loaded = load_arrays(name, split, data_dir)
        # tfds shuffles records when writing them: same examples, other order
        ours = sorted(zip(map(bytes, generated["image"]), generated["label"].tolist()))
        theirs = sorted(zip(map(bytes, loaded["image"]), loaded["label"].tolist()))
        assert ours == theirs


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'. Did you mean 'cifar10'\? Known datasets: digits"):
        catalog.get("cifar")
