"""Reading datasets through tensorflow-datasets, with one clear error when a dataset is not there.

TensorFlow and tfds are imported here, lazily, inside the functions: importing
``jaxcnn.data`` does not need them, and the offline datasets are read straight
from their NumPy generators where tfds is not installed.
"""

from __future__ import annotations

import os
import socket

import numpy as np

from jaxcnn.data import catalog, offline

DEFAULT_DATA_DIR = os.path.join("~", "tensorflow_datasets")
_DOWNLOAD_HOST = ("storage.googleapis.com", 443)  # where tfds downloads (and mirrors) datasets from


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither prepared in ``data_dir`` nor downloadable from here."""


def resolve_data_dir(data_dir: str | None) -> str:
    return os.path.abspath(os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR))


def network_available(timeout: float = 3.0) -> bool:
    """Whether tfds's download host answers; fails fast on a machine without internet."""
    try:
        socket.create_connection(_DOWNLOAD_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def unavailable_message(info: catalog.DatasetInfo, data_dir: str, reason: str) -> str:
    lines = [
        f"dataset {info.name!r} (tfds {info.tfds_name!r}) is not prepared in data_dir {data_dir!r}, and {reason}.",
        "Prepare it on a machine with internet access and copy the directory here:",
        f"  python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{info.tfds_name}', data_dir='{data_dir}').download_and_prepare()\"",
    ]
    if info.name == "imagenet2012":
        lines.insert(1, f"ImageNet cannot be downloaded by tfds: put ILSVRC2012_img_train.tar and "
                        f"ILSVRC2012_img_val.tar in {os.path.join(data_dir, 'downloads', 'manual')} (the manual_dir) "
                        "and run the command below there.")
    lines.append("or point dataset.data_dir (or TFDS_DATA_DIR) at a directory that holds it.")
    return "\n".join(lines)


def _tfds():
    import tensorflow_datasets as tfds

    from jaxcnn.data import builders  # noqa: F401  (registers the offline builders)

    return tfds


def builder(name: str, data_dir: str | None = None):
    """The tfds builder of a catalogue dataset, prepared (offline datasets are generated on first use)."""
    info = catalog.get(name)
    data_dir = resolve_data_dir(data_dir)
    b = _tfds().builder(info.tfds_name, data_dir=data_dir)
    return b


def as_dataset(name: str, split: str, data_dir: str | None = None, **kwargs):
    """``builder(name).as_dataset(split)``, preparing the dataset first if needed.

    Offline datasets are generated into ``data_dir``. A standard dataset that is
    missing is downloaded when the network answers; otherwise, or if the download
    fails, :class:`DatasetUnavailableError` says how to prepare it.
    """
    info = catalog.get(name)
    b = builder(name, data_dir)
    try:
        return b.as_dataset(split=split, **kwargs)
    except AssertionError:  # tfds's "could not find data in DATA_DIR"
        pass
    if not info.offline:
        data_dir = resolve_data_dir(data_dir)
        if not network_available():
            raise DatasetUnavailableError(unavailable_message(info, data_dir, "there is no network to download it"))
        try:
            b.download_and_prepare()
        except Exception as e:  # noqa: BLE001 - any download failure gets the same explanation
            raise DatasetUnavailableError(unavailable_message(info, data_dir, f"downloading it failed ({e})")) from e
    else:
        try:
            b.download_and_prepare()
        except FileExistsError:
            # Another process (a second run, or another process of a multi-process run on
            # this machine) generated it meanwhile: tfds renames a finished copy into place,
            # so the copy there is whole. Read it through a builder that sees it.
            b = builder(name, data_dir)
    return b.as_dataset(split=split, **kwargs)


def num_examples(name: str, split: str, data_dir: str | None = None) -> int:
    """Examples in ``split`` (a tfds split expression), without reading them where tfds knows."""
    b = builder(name, data_dir)
    try:
        return int(b.info.splits[split].num_examples)
    except (KeyError, ValueError):  # not prepared yet, or mocked: count
        return int(as_dataset(name, split, data_dir).reduce(np.int64(0), lambda n, _: n + 1))


def load_arrays(name: str, split: str, data_dir: str | None = None) -> dict[str, np.ndarray]:
    """A whole split in memory: ``{"image": uint8 (N, H, W, C), "label": (N,)}``.

    In tfds's order for the split. Offline datasets are read from their generator
    when tensorflow_datasets is not installed (same examples, generation order).
    """
    info = catalog.get(name)
    if info.image_shape is None:
        raise ValueError(f"dataset {name!r} has variable-size images and is only streamed, not loaded into memory")
    if info.offline and split in offline.SPLITS:
        try:
            import tensorflow_datasets  # noqa: F401
        except ImportError:
            return offline.GENERATORS[name](split)
    ds = as_dataset(name, split, data_dir, shuffle_files=False)
    images, labels = [], []
    for batch in ds.batch(4096).as_numpy_iterator():
        images.append(batch["image"])
        labels.append(batch["label"])
    label_dtype = np.float32 if info.is_regression else np.int32
    return {"image": np.concatenate(images).astype(np.uint8), "label": np.concatenate(labels).astype(label_dtype)}
