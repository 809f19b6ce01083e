import json

import pandas as pd
import pytest

from results import ResultStore, WorkUnit, load_predictions, run_sweep, save_predictions


def _unit(config_id, calls, fail=False):
    def run():
        calls.append(config_id)
        if fail:
            raise RuntimeError("boom")
        table = pd.DataFrame({"sample_id": ["a", "b"], "y_true": [0, 1], "y_pred": [0, 0]})
        per_group = pd.DataFrame({"group": ["g"], "metric": ["accuracy"], "value": [0.5]})
        return {"accuracy": 0.5, "dp_gap": float("nan")}, table, per_group
    return WorkUnit(config_id, {"arch": "tiny"}, run)


def test_sweep_stores_each_config_and_a_rerun_skips_finished_ones(tmp_path):
    store = ResultStore(tmp_path, "quantization_results")
    calls = []
    counts = run_sweep(store, [_unit("d/a/m/w8a8/seed=0", calls), _unit("d/a/m/w4a8/seed=0", calls)],
                       progress=False)
    assert counts == {"ran": 2, "skipped": 0, "failed": 0}
    records = json.loads(store.json_path.read_text())
    assert [r["config_id"] for r in records] == ["d/a/m/w8a8/seed=0", "d/a/m/w4a8/seed=0"]
    assert records[0]["dp_gap"] is None  # NaN is stored as JSON null
    assert len(pd.read_csv(store.csv_path)) == 2
    assert set(pd.read_csv(store.groups_path)["config_id"]) == {"d/a/m/w8a8/seed=0", "d/a/m/w4a8/seed=0"}
    assert load_predictions(tmp_path, "d/a/m/w4a8/seed=0")["sample_id"].tolist() == ["a", "b"]

    calls.clear()
    counts = run_sweep(store, [_unit("d/a/m/w8a8/seed=0", calls), _unit("d/a/m/w2a8/seed=0", calls)],
                       progress=False)
    assert calls == ["d/a/m/w2a8/seed=0"]
    assert counts == {"ran": 1, "skipped": 1, "failed": 0}

    calls.clear()
    run_sweep(store, [_unit("d/a/m/w8a8/seed=0", calls)], force=True, progress=False)
    assert calls == ["d/a/m/w8a8/seed=0"]
    assert len(store.records()) == 3  # forced rerun replaced its record, did not duplicate it


def test_a_failing_config_is_recorded_and_the_sweep_goes_on_and_retries_later(tmp_path):
    store = ResultStore(tmp_path, "r")
    calls = []
    counts = run_sweep(store, [_unit("bad", calls, fail=True), _unit("good", calls)], progress=False)
    assert counts == {"ran": 1, "skipped": 0, "failed": 1}
    bad = next(r for r in store.records() if r["config_id"] == "bad")
    assert bad["status"] == "failed" and "RuntimeError: boom" in bad["error"]
    calls.clear()
    run_sweep(store, [_unit("bad", calls), _unit("good", calls)], progress=False)
    assert calls == ["bad"]
    assert {r["status"] for r in store.records()} == {"ok"}


def test_interrupt_keeps_finished_configurations(tmp_path):
    store = ResultStore(tmp_path, "r")
    calls = []

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_sweep(store, [_unit("first", calls), WorkUnit("second", {}, interrupted)], progress=False)
    assert store.done_ids() == {"first"}
    assert not list(tmp_path.glob("**/*.tmp"))


def test_missing_predictions_error_names_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="--phase baseline"):
        load_predictions(tmp_path, "x/y/fp32/seed=0")


def test_save_predictions_round_trip_keeps_string_ids(tmp_path):
    table = pd.DataFrame({"sample_id": ["000001.jpg", "007"], "y_true": [1, 0]})
    save_predictions(tmp_path, "a/b", table)
    assert load_predictions(tmp_path, "a/b")["sample_id"].tolist() == ["000001.jpg", "007"]


def test_result_files_are_readable_by_others(tmp_path):
    store = ResultStore(tmp_path, "r")
    store.add({"config_id": "a", "status": "ok"})
    import results
    assert store.csv_path.stat().st_mode & 0o777 == 0o666 & ~results._UMASK
