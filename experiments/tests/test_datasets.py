"""The lab's classification sets: UCI Wine, 8x8 digits and the MNIST subset, offline; the hub sets by name."""

import numpy as np
import pytest

from hf_varinit.errors import DataError
from hf_varinit_lab.datasets import list_classification_datasets, load_classification


@pytest.mark.parametrize(
    "name, num_features, num_classes, total",
    [("wine", 13, 3, 178), ("digits", 64, 10, 1797), ("mnist-subset", 784, 10, 5000)],
)
def test_classification_sets_load_with_expected_shapes(name, num_features, num_classes, total):
    d = load_classification(name, seed=0)
    assert (d.num_features, d.num_classes, d.name) == (num_features, num_classes, name)
    assert d.x_train.shape[1] == d.x_test.shape[1] == num_features
    assert len(d.x_train) + len(d.x_test) == total and len(d.y_test) == len(d.x_test)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert set(np.unique(d.y_train)) == set(range(num_classes))


def test_classification_train_features_are_standardized():
    d = load_classification("wine", seed=0)
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(d.x_train.std(axis=0), 1.0, atol=1e-4)


def test_classification_split_is_deterministic_and_max_train_caps():
    a, b = load_classification("digits", seed=3), load_classification("digits", seed=3, max_train=100)
    assert np.array_equal(a.x_test, load_classification("digits", seed=3).x_test)
    assert len(b.x_train) == 100 and len(b.x_test) == len(a.x_test)


def test_unknown_classification_name_lists_valid_names():
    assert {"wine", "digits", "mnist-subset", "mnist", "fashion_mnist"} == set(list_classification_datasets())
    with pytest.raises(DataError, match="mnist-subset"):
        load_classification("cifar")


