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
    return WorkUnit(config_id, {"arch": "tiny"}, "fake", {"run": run}, "", "quantization")


def _call(unit):
    return unit.args["run"]()


def test_sweep_stores_each_config_and_a_rerun_skips_finished_ones(tmp_path):
    store = ResultStore(tmp_path, "quantization_results")
    calls = []
    counts = run_sweep(store,
                       [_unit("d/a/m/w8a8/seed=0", calls), _unit("d/a/m/w4a8/seed=0", calls)],
                       progress=False, execute=_call)
    assert counts == {"ran": 2, "skipped": 0, "failed": 0}
    records = json.loads(store.json_path.read_text())
    assert [r["config_id"] for r in records] == ["d/a/m/w8a8/seed=0", "d/a/m/w4a8/seed=0"]
    assert records[0]["dp_gap"] is None  # NaN is stored as JSON null
    assert len(pd.read_csv(store.csv_path)) == 2
    assert set(pd.read_csv(store.groups_path)["config_id"]) == {"d/a/m/w8a8/seed=0",
                                                                "d/a/m/w4a8/seed=0"}
    assert load_predictions(tmp_path, "d/a/m/w4a8/seed=0")["sample_id"].tolist() == ["a", "b"]

    calls.clear()
    counts = run_sweep(store,
                       [_unit("d/a/m/w8a8/seed=0", calls), _unit("d/a/m/w2a8/seed=0", calls)],
                       progress=False, execute=_call)
    assert calls == ["d/a/m/w2a8/seed=0"]
    assert counts == {"ran": 1, "skipped": 1, "failed": 0}

    calls.clear()
    run_sweep(store, [_unit("d/a/m/w8a8/seed=0", calls)], force=True, progress=False, execute=_call)
    assert calls == ["d/a/m/w8a8/seed=0"]
    assert len(store.records()) == 3  # forced rerun replaced its record, did not duplicate it


def test_a_failing_config_is_recorded_and_the_sweep_goes_on_and_retries_later(tmp_path):
    store = ResultStore(tmp_path, "r")
    calls = []
    counts = run_sweep(store, [_unit("bad", calls, fail=True), _unit("good", calls)],
                       progress=False, execute=_call)
    assert counts == {"ran": 1, "skipped": 0, "failed": 1}
    bad = next(r for r in store.records() if r["config_id"] == "bad")
    assert bad["status"] == "failed" and "RuntimeError: boom" in bad["error"]
    calls.clear()
    run_sweep(store, [_unit("bad", calls), _unit("good", calls)], progress=False, execute=_call)
    assert calls == ["bad"]
    assert {r["status"] for r in store.records()} == {"ok"}


def test_interrupt_keeps_finished_configurations(tmp_path):
    store = ResultStore(tmp_path, "r")
    calls = []

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_sweep(store,
                  [_unit("first", calls),
                   WorkUnit("second", {}, "fake", {"run": interrupted}, "", "quantization")],
                  progress=False, execute=_call)
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


# ----------------------------------------------------------------------------- commits and recovery

def _sweep(run_dir, ids, calls, name="quantization_results", **kwargs):
    return run_sweep(ResultStore(run_dir, name), [_unit(i, calls) for i in ids], progress=False,
                     execute=_call, **kwargs)


def test_tables_are_rebuilt_from_the_commit_files_when_stale(tmp_path):
    _sweep(tmp_path, ["a", "b"], [])
    store = ResultStore(tmp_path, "quantization_results")
    store.csv_path.write_text("config_id\na\n")  # as if killed before the CSV was rewritten
    store.groups_path.unlink()
    store.json_path.write_text(store.json_path.read_text()[:40])  # a truncated derived table
    calls = []
    assert _sweep(tmp_path, ["a", "b"], calls)["skipped"] == 2 and calls == []
    assert [r["config_id"] for r in json.loads(store.json_path.read_text())] == ["a", "b"]
    assert pd.read_csv(store.csv_path)["config_id"].tolist() == ["a", "b"]
    assert sorted(set(pd.read_csv(store.groups_path)["config_id"])) == ["a", "b"]


def test_a_truncated_old_layout_table_is_named_and_its_intact_records_kept(tmp_path, caplog):
    records = [{"config_id": i, "status": "ok", "accuracy": 0.5} for i in ("a", "b", "c")]
    text = json.dumps(records, indent=1)
    legacy = tmp_path / "quantization_results.json"
    legacy.write_text(text[:text.index('"c"') + 2])  # cut inside the third record
    calls = []
    counts = _sweep(tmp_path, ["a", "b", "c"], calls)
    assert calls == ["c"] and counts["skipped"] == 2
    assert str(legacy) in caplog.text and "recovered the 2 intact record(s)" in caplog.text
    assert (tmp_path / "quantization_results.json.damaged").is_file()
    assert [r["config_id"] for r in json.loads(legacy.read_text())] == ["a", "b", "c"]


def test_a_damaged_commit_file_is_named_set_aside_and_its_configuration_redone(tmp_path, caplog):
    _sweep(tmp_path, ["a", "b"], [])
    store = ResultStore(tmp_path, "quantization_results")
    store.record_path("b").write_text('{"record": {"config_id": "b", "sta')
    calls = []
    _sweep(tmp_path, ["a", "b"], calls)
    assert calls == ["b"]
    assert str(store.record_path("b")) in caplog.text
    assert store.record_path("b").with_name("b.json.damaged").is_file()
    assert sorted(store.done_ids()) == ["a", "b"]


def test_a_failed_record_goes_once_its_configuration_is_fixed(tmp_path):
    calls = []
    run_sweep(ResultStore(tmp_path, "r"), [_unit("bad/fp32_layers=typo", calls, fail=True)],
              progress=False, execute=_call)
    assert ResultStore(tmp_path, "r").records()[0]["status"] == "failed"
    run_sweep(ResultStore(tmp_path, "r"), [_unit("bad/fp32_layers=fc", calls)], progress=False,
              execute=_call)
    assert [r["config_id"] for r in ResultStore(tmp_path, "r").records()] == ["bad/fp32_layers=fc"]
    assert pd.read_csv(tmp_path / "r.csv")["status"].tolist() == ["ok"]


def test_a_configuration_whose_predictions_are_gone_is_not_done(tmp_path):
    _sweep(tmp_path, ["a", "b"], [])
    (tmp_path / "predictions" / "b.csv.gz").unlink()
    calls = []
    _sweep(tmp_path, ["a", "b"], calls)
    assert calls == ["b"]


def test_each_table_keeps_its_own_records_and_the_group_table_covers_all(tmp_path):
    _sweep(tmp_path, ["base"], [], name="baseline_results")
    _sweep(tmp_path, ["q1", "q2"], [], name="quantization_results")
    assert pd.read_csv(tmp_path / "baseline_results.csv")["config_id"].tolist() == ["base"]
    assert pd.read_csv(tmp_path / "quantization_results.csv")["config_id"].tolist() == ["q1", "q2"]
    assert pd.read_csv(tmp_path / "group_metrics.csv")["config_id"].tolist() == ["base", "q1", "q2"]


# ----------------------------------------------------------------------------- the run folder

def test_a_results_dir_that_is_a_file_or_unwritable_is_named(tmp_path):
    import results
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder: point results_dir"):
        results.prepare_run_dir(tmp_path / "file" / "run")
    with pytest.raises(ValueError, match="cannot write to the run folder .* point results_dir"):
        results.prepare_run_dir("/sys/bnq_results/run")  # not writable, even by root


def test_a_second_lock_in_the_same_folder_is_refused_until_released(tmp_path):
    import os

    from results import RunFolderBusy, RunLock
    with RunLock(tmp_path):
        with pytest.raises(RunFolderBusy, match=f"in use by process {os.getpid()}"):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path):
        pass


def test_an_old_layout_folder_keeps_every_tables_group_rows(tmp_path):
    for name, config_id in [("baseline_results", "base"), ("quantization_results", "q")]:
        (tmp_path / f"{name}.json").write_text(json.dumps([{"config_id": config_id,
                                                            "status": "ok"}]))
    pd.DataFrame({"config_id": ["base", "q"], "group": ["g", "g"], "metric": ["accuracy"] * 2,
                  "value": [0.9, 0.8]}).to_csv(tmp_path / "group_metrics.csv", index=False)
    ResultStore(tmp_path, "baseline_results").refresh()  # the first phase of a rerun
    groups = pd.read_csv(tmp_path / "group_metrics.csv")
    assert groups["config_id"].tolist() == ["base", "q"] and groups["value"].tolist() == [0.9, 0.8]
    assert ResultStore(tmp_path, "quantization_results").done_ids() == {"q"}


def test_a_damaged_predictions_file_is_named_with_the_way_out(tmp_path):
    save_predictions(tmp_path, "a/b", pd.DataFrame({"sample_id": ["x"] * 500, "y_true": [1] * 500}))
    path = tmp_path / "predictions" / "a" / "b.csv.gz"
    path.write_bytes(path.read_bytes()[:20])  # a truncated gzip stream
    with pytest.raises(ValueError, match=r"predictions file .*b.csv.gz is damaged .*delete it"):
        load_predictions(tmp_path, "a/b")
    _sweep(tmp_path, ["a/b"], [])  # and once deleted, a rerun redoes it
    path.unlink()
    calls = []
    _sweep(tmp_path, ["a/b"], calls)
    assert calls == ["a/b"]


def test_an_import_killed_half_way_is_done_again_whole(tmp_path):
    records = [{"config_id": i, "status": "ok"} for i in ("a", "b")]
    (tmp_path / "quantization_results.json").write_text(json.dumps(records))
    staging = tmp_path / "records" / ".quantization_results.import-999"
    staging.mkdir(parents=True)
    # left by a kill
    (staging / "a.json").write_text('{"record": {"config_id": "a", "status": "ok"}}')
    calls = []
    _sweep(tmp_path, ["a", "b", "c"], calls)
    assert calls == ["c"]
    records = json.loads((tmp_path / "quantization_results.json").read_text())
    assert [r["config_id"] for r in records] == ["a", "b", "c"]


def test_a_full_disk_is_a_clear_error_and_leaves_no_temporary_file(tmp_path):
    import errno

    from results import DiskFull, atomic_write

    def write(_tmp):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(DiskFull, match=r"no space left to write .*table.csv \(No space left on "
                                       r"device\).*--set results_dir=PATH"):
        atomic_write(tmp_path / "table.csv", write)
    assert list(tmp_path.iterdir()) == []


def test_a_lock_that_is_a_folder_is_a_clear_error(tmp_path):
    from results import RunLock

    (tmp_path / "run" / ".lock").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"the run folder's lock .*\.lock is not a file .* rmdir "):
        RunLock(tmp_path / "run").acquire()
