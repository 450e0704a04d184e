"""make_folds and inner_split: the reported fold never reaches fitting or validation, groups never straddle."""

from __future__ import annotations

import numpy as np
import pytest

from qwave.data import Dataset, TableSpec, inner_split, load_table, make_folds
from qwave.errors import ConfigError, DataError


def synthetic(n_per_class: int = 30, n_classes: int = 4, group_size: int | None = 3, fold: bool = False,
              seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    n = len(y)
    group = None if group_size is None else np.array([f"g{i // group_size}" for i in range(n)], dtype=object)
    folds = (np.arange(n) // group_size % 3 + 1) if fold else None
    return Dataset(rng.normal(size=(n, 2)).astype(np.float32), y, [f"c{c}" for c in range(n_classes)],
                   folds, group, np.arange(n).astype(str), ["a", "b"], "synthetic.csv")


def groups_of(ds: Dataset, idx: np.ndarray) -> set:
    return set(ds.group[idx].tolist())


def check_fold_and_inner_split(ds: Dataset, folds, seed: int = 0, folds_group: bool = True) -> None:
    n = len(ds.y)
    all_tests = np.concatenate([f.test for f in folds])
    np.testing.assert_array_equal(np.sort(all_tests), np.arange(n))
    for f in folds:
        assert f.train.dtype == np.int64 and f.test.dtype == np.int64
        np.testing.assert_array_equal(np.union1d(f.train, f.test), np.arange(n))
        assert len(np.intersect1d(f.train, f.test)) == 0
        fit, val = inner_split(ds, f.train, seed=seed)
        assert len(val) > 0
        assert len(np.intersect1d(fit, val)) == 0
        np.testing.assert_array_equal(np.union1d(fit, val), np.sort(f.train))
        assert len(np.intersect1d(np.union1d(fit, val), f.test)) == 0
        if ds.group is not None:
            assert not folds_group or not groups_of(ds, f.train) & groups_of(ds, f.test)
            assert not groups_of(ds, fit) & groups_of(ds, val)


@pytest.mark.parametrize("group_size", [None, 3])
def test_stratified_folds_partition_rows_and_inner_split_stays_inside_train(group_size):
    ds = synthetic(group_size=group_size)
    folds = make_folds(ds, "auto", n_folds=5, seed=3)
    assert [f.k for f in folds] == [1, 2, 3, 4, 5]
    check_fold_and_inner_split(ds, folds)


def test_stratified_folds_keep_class_proportions_without_groups():
    ds = synthetic(group_size=None)
    for f in make_folds(ds, "stratified", n_folds=5):
        np.testing.assert_array_equal(np.bincount(ds.y[f.test]), [6, 6, 6, 6])


def test_official_folds_equal_the_fold_column(tiny_table):
    ds = load_table(TableSpec(str(tiny_table), fold="fold", group="group"))
    folds = make_folds(ds)
    assert [f.k for f in folds] == [1, 2, 3, 4]
    for f in folds:
        np.testing.assert_array_equal(f.test, np.flatnonzero(ds.fold == f.k))
        np.testing.assert_array_equal(f.train, np.flatnonzero(ds.fold != f.k))
    check_fold_and_inner_split(ds, folds)


def test_auto_without_fold_column_is_stratified_and_official_needs_one(tiny_table):
    ds = load_table(TableSpec(str(tiny_table), fold=None, group="group"))
    assert len(make_folds(ds, "auto", n_folds=3)) == 3
    with pytest.raises(DataError, match="tiny.csv: official folds requested but the table has no fold column"):
        make_folds(ds, "official")


def test_folds_and_inner_split_are_deterministic_given_seed():
    ds = synthetic()
    a, b, c = (make_folds(ds, "stratified", 5, seed=s) for s in (7, 7, 8))
    for fa, fb in zip(a, b, strict=True):
        np.testing.assert_array_equal(fa.test, fb.test)
    assert any(not np.array_equal(fa.test, fc.test) for fa, fc in zip(a, c, strict=True))
    for group_size in (None, 3):
        ds = synthetic(group_size=group_size)
        first, again = inner_split(ds, a[0].train, seed=1), inner_split(ds, a[0].train, seed=1)
        other = inner_split(ds, a[0].train, seed=2)
        np.testing.assert_array_equal(first[1], again[1])
        assert not np.array_equal(first[1], other[1])


def test_inner_split_is_stratified_with_about_the_requested_fraction():
    ds = synthetic(n_per_class=40, group_size=None)
    fit, val = inner_split(ds, np.arange(len(ds.y)), val_fraction=0.25)
    np.testing.assert_array_equal(np.bincount(ds.y[val]), [10, 10, 10, 10])


def test_inner_split_never_empty_at_two_rows_per_class():
    ds = synthetic(n_per_class=2, n_classes=5, group_size=None)
    for seed in range(5):
        fit, val = inner_split(ds, np.arange(10), val_fraction=0.05, seed=seed)
        assert len(val) == 5 and len(fit) == 5


def test_inner_split_with_grouped_tiny_data_is_never_empty():
    ds = synthetic(n_per_class=2, n_classes=5, group_size=2)
    for seed in range(10):
        fit, val = inner_split(ds, np.arange(10), seed=seed)
        assert len(val) > 0 and len(fit) > 0 and not groups_of(ds, fit) & groups_of(ds, val)


def test_class_with_fewer_members_than_folds_is_named_with_the_option():
    ds = synthetic(n_per_class=10, group_size=None)
    ds.y[:7] = 1
    with pytest.raises(DataError, match="synthetic.csv: label class 'c0' has 3 rows, fewer than cv.n_folds=5"):
        make_folds(ds, "stratified", n_folds=5)


def test_fewer_groups_than_folds_and_bad_options_are_errors_naming_the_option():
    with pytest.raises(DataError, match="group column has 4 groups, fewer than cv.n_folds=5 folds"):
        make_folds(synthetic(n_per_class=5, group_size=5), "stratified", n_folds=5)
    with pytest.raises(ConfigError, match="cv.folds='random'"):
        make_folds(synthetic(), "random")
    with pytest.raises(ConfigError, match="cv.n_folds must be at least 2"):
        make_folds(synthetic(), "stratified", n_folds=1)
    with pytest.raises(ConfigError, match="cv.val_fraction"):
        inner_split(synthetic(), np.arange(10), val_fraction=1.5)


def test_real_esc50_folds_official_and_grouped_stratified(require_shared, caplog):
    ds = load_table(TableSpec(str(require_shared("esc50/esc50_specs.csv.gz")), fold="fold", group="clip"))
    official = make_folds(ds)
    assert [f.k for f in official] == [1, 2, 3]
    for f in official:
        np.testing.assert_array_equal(f.test, np.flatnonzero(ds.fold == f.k))
    # Two freesound clip ids (131943, 134049) sit in two official folds with different labels; reported, kept.
    assert "2 group(s) span more than one official fold" in caplog.text
    check_fold_and_inner_split(ds, official, folds_group=False)
    check_fold_and_inner_split(ds, make_folds(ds, "stratified", n_folds=5, seed=1))
