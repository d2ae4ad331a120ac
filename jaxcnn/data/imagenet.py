"""ImageNet decoding for the streaming pipeline (TensorFlow ops, run inside tf.data).

Training: Inception-style random-resized crop (8%-100% of the area, aspect ratio
3/4-4/3) cut out while decoding the JPEG, then resized. Evaluation: the central
``size / (size + 32)`` of the shorter side, resized (the ResNet / flax recipe).
Random crops use stateless ops seeded per example, so they are reproducible.
Non-JPEG images (PNG in a mocked dataset, say) take a decode-then-crop path.
"""

from __future__ import annotations

import tensorflow as tf

CROP_PADDING = 32


def _decode_crop_resize(image_bytes, window, size: int):
    """Decode the ``[offset_y, offset_x, height, width]`` window of an encoded image and resize it."""

    def jpeg():
        return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def other():
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        return tf.image.crop_to_bounding_box(image, window[0], window[1], window[2], window[3])

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _shape(image_bytes):
    return tf.cond(tf.io.is_jpeg(image_bytes), lambda: tf.io.extract_jpeg_shape(image_bytes),
                   lambda: tf.shape(tf.io.decode_image(image_bytes, channels=3, expand_animations=False)))


def train_crop(image_bytes, size: int, seed):
    """Random-resized crop of an encoded image to ``(size, size, 3)`` uint8; ``seed``: two ints."""
    shape = _shape(image_bytes)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=tf.cast(tf.stack(seed), tf.int64), min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop_size[0], crop_size[1]])
    return _decode_crop_resize(image_bytes, window, size)


def eval_crop(image_bytes, size: int):
    """Central crop (``size / (size + 32)`` of the shorter side) resized to ``(size, size, 3)`` uint8."""
    shape = _shape(image_bytes)
    h, w = shape[0], shape[1]
    crop = tf.cast(size / (size + CROP_PADDING) * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
    window = tf.stack([(h - crop + 1) // 2, (w - crop + 1) // 2, crop, crop])
    return _decode_crop_resize(image_bytes, window, size)
