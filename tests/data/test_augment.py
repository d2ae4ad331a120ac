"""Augmentations: properties that hold for every key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.data import augment

KEYS = [jax.random.key(i) for i in range(5)]


def _images(n=6, h=7, w=9, c=3):
    return jnp.asarray(np.random.default_rng(0).uniform(size=(n, h, w, c)), jnp.float32)


@pytest.mark.parametrize("key", KEYS)
def test_flip_is_an_involution_and_mirrors_or_keeps_each_image(key):
    x = _images()
    once = augment.random_flip(key, x)
    np.testing.assert_array_equal(augment.random_flip(key, once), x)
    for a, b in zip(once, x):
        assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_random_crop_keeps_shape_and_is_a_window_of_the_padded_image(key, mode):
    x = _images()
    y = augment.random_crop(key, x, 2, mode)
    assert y.shape == x.shape
    padded = np.pad(np.asarray(x), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="constant" if mode == "zeros" else "reflect")
    for out, src in zip(np.asarray(y), padded):
        assert any(np.array_equal(out, src[i:i + 7, j:j + 9]) for i in range(5) for j in range(5))
    np.testing.assert_array_equal(augment.random_crop(key, x, 0), x)


def test_zero_padded_crop_is_a_translation():
    x = jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(1.0)
    seen = set()
    for key in jax.random.split(jax.random.key(0), 64):
        y = np.asarray(augment.random_crop(key, x, 1))[0, :, :, 0]
        assert y.sum() == 1.0  # the pixel moved by at most one, never fell off
        seen.add(tuple(np.argwhere(y)[0]))
    assert seen == {(i, j) for i in (1, 2, 3) for j in (1, 2, 3)}


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("fn,alpha", [(augment.mixup, 0.4), (augment.cutmix, 1.0)])
def test_mixed_labels_sum_to_one_and_images_come_from_the_pair(key, fn, alpha):
    x = _images(8, 16, 16, 3)
    labels = jax.nn.one_hot(jnp.arange(8) % 4, 4)
    mixed, mixed_labels = fn(key, x, labels, alpha)
    assert mixed.shape == x.shape and mixed_labels.shape == labels.shape
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1.0, rtol=1e-6)
    assert float(mixed_labels.min()) >= 0.0


def test_cutmix_label_weight_is_the_pasted_area():
    x = jnp.zeros((2, 10, 10, 1)).at[1].set(1.0)  # image 0 black, image 1 white
    labels = jnp.eye(2)
    for key in KEYS:
        mixed, mixed_labels = augment.cutmix(key, x, labels, 1.0)
        for i in range(2):
            white = float(mixed[i].mean())
            other = 1 - i  # the image's partner is the other one (or itself)
            if np.allclose(mixed_labels[i], labels[i]):
                continue  # paired with itself or an empty box: nothing pasted
            pasted = white if i == 0 else 1 - white
            np.testing.assert_allclose(mixed_labels[i, other], pasted, atol=1e-6)


def test_mix_with_both_picks_one_per_batch():
    x = _images(8, 16, 16, 3)
    labels = jax.nn.one_hot(jnp.arange(8) % 4, 4)
    out, out_labels = augment.mix(jax.random.key(3), x, labels, 0.4, 1.0)
    np.testing.assert_allclose(out_labels.sum(axis=1), 1.0, rtol=1e-6)
    unchanged = augment.mix(jax.random.key(3), x, labels)
    np.testing.assert_array_equal(unchanged[0], x)


def test_preprocessing_pieces():
    u8 = jnp.asarray([[[[0, 128, 255]]]], jnp.uint8)
    x = augment.to_float(u8)
    np.testing.assert_allclose(x, [[[[0, 128 / 255, 1.0]]]])
    np.testing.assert_allclose(augment.grayscale(x), [[[[0.587 * 128 / 255 + 0.114]]]], rtol=1e-6)
    assert augment.resize(jnp.ones((2, 8, 8, 1)), 32).shape == (2, 32, 32, 1)
    np.testing.assert_allclose(augment.resize(jnp.ones((2, 8, 8, 1)), 32), 1.0, rtol=1e-6)
    np.testing.assert_allclose(augment.normalize(jnp.full((1, 1, 1, 2), 0.5), (0.5, 0.25), (0.5, 0.25)), [[[[0, 1]]]])
    with pytest.raises(ValueError, match="grayscale needs 1 or 3 channels"):
        augment.grayscale(jnp.ones((1, 2, 2, 4)))
