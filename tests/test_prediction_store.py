"""The paired-prediction store: tables read once, pairs aligned on sample_id and checked."""
import numpy as np
import pandas as pd
import pytest

import fairness_metrics as fm
from prediction_store import PredictionStore
from results import save_predictions


def table(order, y_pred, y_true=(1, 0, 1, 0)):
    """A prediction table of samples s0..s3 (labels ``y_true``), rows in ``order``."""
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(4)], "y_true": list(y_true),
                          "y_pred": list(y_pred), "score": 0.5, "group": ["a", "a", "b", "b"]})
    return frame.iloc[list(order)].reset_index(drop=True)


def counting_store(tables):
    reads = []

    def load(config_id):
        reads.append(config_id)
        return tables[config_id]
    return PredictionStore(load), reads


def test_each_table_is_read_once():
    store, reads = counting_store({"m": table(range(4), [1, 0, 0, 0]),
                                   "ref": table(range(4), [1, 1, 1, 0])})
    for _ in range(3):
        store.pair("m", "ref")
    assert store.table("m") is store.table("m")
    assert reads == ["m", "ref"]


def test_a_pair_follows_the_model_rows_or_a_third_order():
    store, _ = counting_store({"m": table([3, 2, 1, 0], [0, 1, 0, 1]),
                               "ref": table([0, 1, 2, 3], [1, 1, 1, 1]),
                               "first": table([1, 0, 3, 2], [0, 0, 0, 0])})
    pair = store.pair("m", "ref")
    assert list(pair.reference["sample_id"]) == list(pair.predictions["sample_id"])
    assert list(pair.predictions["sample_id"]) == ["s3", "s2", "s1", "s0"]
    y_true, _, y_reference, _ = pair.arrays()
    np.testing.assert_array_equal(y_reference, [1, 1, 1, 1])
    np.testing.assert_array_equal(y_true, [0, 1, 0, 1])
    in_first = store.pair("m", "ref", order="first")
    assert list(in_first.predictions["sample_id"]) == ["s1", "s0", "s3", "s2"]
    _, y_pred, _, groups = in_first.arrays()
    np.testing.assert_array_equal(y_pred, [1, 0, 1, 0])  # s1, s0, s3, s2 of m
    np.testing.assert_array_equal(groups, ["a", "a", "b", "b"])


def test_other_samples_or_labels_are_refused_naming_both_configurations():
    other = table(range(4), [1, 0, 1, 0]).assign(sample_id=["s0", "s1", "s2", "x9"])
    store, _ = counting_store({"m": table(range(4), [1, 0, 0, 0]), "other": other,
                               "relabelled": table(range(4), [1, 0, 1, 0], y_true=[1, 1, 1, 0])})
    with pytest.raises(ValueError) as error:
        store.pair("m", "other")
    assert str(error.value).startswith("predictions of m (pred) and other (reference) cannot")
    assert fm.SAMPLE_MISMATCH.format(only_pred=1, only_ref=1, example_pred=["s3"],
                                     example_ref=["x9"]) in str(error.value)
    with pytest.raises(ValueError, match="relabelled.*y_true differs"):
        store.pair("m", "relabelled")


def test_a_run_folder_store_reads_saved_predictions(tmp_path):
    saved = table(range(4), [1, 0, 0, 1])
    save_predictions(tmp_path, "synthetic/cnn/fp32/seed=0", saved)
    store = PredictionStore.of_run(tmp_path)
    read = store.table("synthetic/cnn/fp32/seed=0")
    pd.testing.assert_frame_equal(read[saved.columns], saved, check_dtype=False)
