"""Class-subset, relabelled datasets and test subsets (a data option of every study)."""
import numpy as np
import pytest

from cifar_jax.data import datasets
from cifar_jax.study import config


def test_select_classes_keeps_and_relabels_in_the_given_order():
    ds = datasets.synthetic(600, 300, num_classes=4, image_shape=(8, 8, 3))
    names = ds.classes
    sub = datasets.select_classes(ds, f"{names[2]},1")
    assert sub.classes == (names[2], names[1]) and sub.num_classes == 2
    assert set(np.unique(sub.y_train)) == {0, 1}
    np.testing.assert_array_equal(sub.x_train, ds.x_train[np.isin(ds.y_train, [1, 2])])
    np.testing.assert_array_equal(sub.y_train, np.where(ds.y_train[np.isin(ds.y_train, [1, 2])] == 2, 0, 1))
    merged = datasets.select_classes(ds, f"0+3,{names[1]}")
    assert merged.classes == (f"{names[0]}+{names[3]}", names[1])
    assert len(merged.y_test) == np.isin(ds.y_test, [0, 1, 3]).sum()
    assert np.all(merged.y_test[np.isin(ds.y_test[np.isin(ds.y_test, [0, 1, 3])], [0, 3])] == 0)


@pytest.mark.parametrize("spec,message", [("cat,7", "'cat' is not a class"), ("1,1", "listed twice"),
                                          ("2", "at least two classes")])
def test_select_classes_refuses_bad_specs(spec, message):
    with pytest.raises(datasets.DataError, match=message):
        datasets.select_classes(datasets.synthetic(100, 50, num_classes=4, image_shape=(8, 8, 3)), spec)


def test_test_subset_is_seeded_and_bounded():
    ds = datasets.synthetic(100, 200, num_classes=4, image_shape=(8, 8, 3))
    a, b = datasets.test_subset(ds, 40, seed=3), datasets.test_subset(ds, 40, seed=3)
    assert len(a.y_test) == 40 and np.array_equal(a.x_test, b.x_test) and a.x_train is ds.x_train
    assert not np.array_equal(a.y_test, datasets.test_subset(ds, 40, seed=4).y_test)
    with pytest.raises(datasets.DataError, match="--test_size=201"):
        datasets.test_subset(ds, 201, seed=0)


def test_subset_flags_reach_the_run_records_data_config(parse):
    run = config.grid(parse("--classes=cat,dog", "--test_size=400"), 1000, 2)[0]
    assert run.config["classes"] == "cat,dog" and run.config["test_size"] == 400
    assert "classes" not in config.grid(parse(), 1000, 10)[0].config
