"""End to end: the smoke config through every phase, resume, and the CLI's handling of bad input."""
import json

import pandas as pd
import pytest
import torch

import main


def _args(tmp_path, *extra):
    return ["--config", "configs/smoke.yaml", "--set", f"results_dir={tmp_path / 'results'}",
            "--set", f"data.root={tmp_path / 'data'}", *extra]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("smoke")
    assert main.main(_args(tmp_path, "--phase", "all")) == 0
    return tmp_path, tmp_path / "results" / "smoke"


def test_baseline_writes_checkpoint_predictions_and_table(smoke_run):
    _, run_dir = smoke_run
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "synthetic" / "tiny_cnn.pt").is_file()
    table = pd.read_csv(run_dir / "baseline_results.csv")
    row = table.iloc[0]
    assert row["config_id"] == "synthetic/tiny_cnn/fp32/seed=0" and row["status"] == "ok"
    for column in ["accuracy", "dp_gap", "eo_gap", "pe_gap",
                   "disparate_impact", "worst_group_accuracy", "params", "size_mib",
                   "latency_ms_b1", "train_time_s"]:
        assert pd.notna(row[column]), column
    # point estimates only: the analysis computes every interval and test once
    assert not [c for c in table.columns if c.endswith(("_low", "_high", "_p"))]
    predictions = pd.read_csv(run_dir / "predictions" / "synthetic" / "tiny_cnn" / "fp32" /
                              "seed=0.csv.gz")
    assert list(predictions.columns[:4]) == ["sample_id", "y_true", "y_pred", "score"]
    assert {"gender", "age", "group"} <= set(predictions.columns)


def test_quantization_covers_the_grid_with_honest_execution_modes(smoke_run):
    _, run_dir = smoke_run
    records = json.loads((run_dir / "quantization_results.json").read_text())
    by_method = {(r["method"], r["weight_bits"]): r for r in records}
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    assert by_method[("ptq_static", 8)]["execution"] == "real_int8"
    assert by_method[("ptq_static", 4)]["execution"] == "simulated"
    assert by_method[("ptq_static", 8)]["agreement_with_simulated"] >= 0.99
    assert by_method[("ptq_static", 4)]["size_mib"] < by_method[("ptq_static", 8)]["fp32_size_mib"]
    assert ("qat", 4) in by_method and ("ptq_dynamic", 8) in by_method
    for record in records:
        assert record["delta_accuracy"] == pytest.approx(
            record["accuracy"] - _baseline(run_dir)["accuracy"], abs=1e-9)


def _baseline(run_dir):
    return pd.read_csv(run_dir / "baseline_results.csv").iloc[0]


def test_a_rerun_skips_finished_work(smoke_run):
    tmp_path, run_dir = smoke_run
    checkpoint = run_dir / "checkpoints" / "synthetic" / "tiny_cnn.pt"
    before = checkpoint.stat().st_mtime_ns, (run_dir / "quantization_results.json").read_text()
    assert main.main(_args(tmp_path, "--phase", "quantization")) == 0
    assert main.main(_args(tmp_path, "--phase", "baseline")) == 0
    after = checkpoint.stat().st_mtime_ns, (run_dir / "quantization_results.json").read_text()
    assert before == after


def test_mitigation_and_analysis_outputs(smoke_run):
    _, run_dir = smoke_run
    mitigation = pd.read_csv(run_dir / "mitigation_results.csv")
    assert (mitigation["status"] == "ok").all(), mitigation.get("error")
    assert {"bias_aware_calibration", "mixed_precision", "fairness_finetune",
            "sensitive_layer_preservation", "fairness_aware_quantizer"} <= set(mitigation["method"])
    deployable = mitigation[(mitigation["execution"] == "real_int8")
                            & (mitigation["method"] != "ptq_static")]
    assert len(deployable) > 0
    for relative in deployable["model_path"]:
        scripted = torch.jit.load(run_dir / relative)
        assert scripted(torch.zeros(2, 3, 32, 32)).shape == (2, 2)
    analysis = run_dir / "analysis"
    for name in ["stats.csv", "hypotheses.json", "report.md"]:
        assert (analysis / name).stat().st_size > 0, name


def test_changed_experiment_in_the_same_run_folder_is_refused(smoke_run, capsys):
    tmp_path, _ = smoke_run
    assert main.main(_args(tmp_path, "--phase", "baseline", "--set", "training.epochs=5")) == 2
    assert "--set run_name=NEW" in capsys.readouterr().err


def test_bad_config_value_prints_a_message_not_a_traceback(tmp_path, capsys):
    assert main.main(_args(tmp_path, "--phase", "baseline", "--set", "training.epoch=1")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown key(s) ['epoch']") and "Traceback" not in err


def test_unknown_method_in_the_grid_is_reported_before_running(tmp_path, capsys):
    code = main.main(_args(tmp_path, "--phase", "quantization", "--set",
                           "quantization.methods=[{method: ptq_magic}]"))
    assert code == 2
    assert "ptq_magic" in capsys.readouterr().err


def test_quantization_before_baseline_says_which_phase_to_run(tmp_path, capsys):
    assert main.main(_args(tmp_path, "--phase", "quantization")) == 2
    assert "--phase baseline" in capsys.readouterr().err


def test_missing_dataset_stops_the_phase_with_the_way_out(tmp_path, capsys):
    assert main.main(_args(tmp_path, "--phase", "baseline", "--set", "data.dataset=celeba")) == 2
    err = capsys.readouterr().err
    assert "list_attr_celeba.txt" in err and "'synthetic'" in err


def test_a_failing_configuration_is_recorded_and_the_exit_code_says_so(tmp_path):
    assert main.main(_args(tmp_path, "--phase", "baseline")) == 0
    bad_layer = "quantization.methods=[{method: ptq_static, fp32_layers: [[no_such_layer]]}]"
    assert main.main(_args(tmp_path, "--phase", "quantization", "--set", bad_layer)) == 1
    results_json = tmp_path / "results" / "smoke" / "quantization_results.json"
    record = json.loads(results_json.read_text())[0]
    assert record["status"] == "failed" and "no_such_layer" in record["error"]


def test_the_same_config_gives_the_same_baseline_in_a_new_folder(smoke_run, tmp_path):
    first_tmp, first_run = smoke_run
    again = ["--config", "configs/smoke.yaml", "--set", f"results_dir={tmp_path / 'results'}",
             "--set", f"data.root={first_tmp / 'data'}", "--phase", "baseline"]
    assert main.main(again) == 0
    relative = "predictions/synthetic/tiny_cnn/fp32/seed=0.csv.gz"
    pd.testing.assert_frame_equal(pd.read_csv(first_run / relative),
                                  pd.read_csv(tmp_path / "results" / "smoke" / relative))


# ----------------------------------------------------------------- bad input: exit 2, one paragraph

def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith("\n"), err
    message = err[err.rindex("error: "):]  # after any progress bars
    assert message.count("\n") == 1, err
    return message


def test_malformed_yaml_exits_2_with_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  architectures: [tiny_cnn\n")
    assert main.main(["--config", str(bad), "--phase", "baseline"]) == 2
    assert f"config file {str(bad)!r} is not valid YAML (line" in _error(capsys)
    assert main.main(_args(tmp_path, "--set", "training.epochs=[1")) == 2
    assert "override 'training.epochs=[1'" in _error(capsys)


def test_a_results_dir_that_is_a_file_or_unwritable_exits_2(tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    args = ["--config", "configs/smoke.yaml", "--phase", "analysis", "--set"]
    assert main.main([*args, f"results_dir={tmp_path / 'taken'}"]) == 2
    assert "is a file, not a folder" in _error(capsys)
    assert main.main([*args, "results_dir=/sys/bnq_results"]) == 2
    assert "cannot write to the run folder" in _error(capsys)


def test_an_unknown_architecture_is_refused_before_the_run_folder_is_written(tmp_path, capsys):
    assert main.main(_args(tmp_path, "--set", "models.architectures=[resnet51]")) == 2
    assert "models.architectures: unknown model 'resnet51'" in _error(capsys)
    assert not (tmp_path / "results").exists()


def test_a_run_stopped_by_a_data_typo_does_not_block_its_fix(tmp_path, capsys):
    assert main.main(_args(tmp_path, "--phase", "baseline", "--set", "data.dataset=celeba")) == 2
    assert "list_attr_celeba.txt" in _error(capsys)
    assert not (tmp_path / "results").exists()  # the data are checked before anything is written
    assert main.main(_args(tmp_path, "--phase", "analysis")) == 2  # the fixed config is accepted
    assert "holds none of baseline_results.csv" in _error(capsys)


def test_a_calibration_size_over_the_train_split_stops_before_training(tmp_path, capsys):
    assert main.main(_args(tmp_path, "--phase", "all", "--set",
                           "mitigation.calibration_size=5000")) == 2
    assert "mitigation.calibration_size=5000 is larger than the" in _error(capsys)
    assert not (tmp_path / "results" / "smoke" / "checkpoints").exists()


def test_a_damaged_checkpoint_stops_the_quantization_phase_with_the_way_out(smoke_run, tmp_path,
                                                                            capsys):
    import shutil
    first_tmp, first_run = smoke_run
    run_root = tmp_path / "results"
    shutil.copytree(first_run, run_root / "smoke")
    checkpoint = run_root / "smoke" / "checkpoints" / "synthetic" / "tiny_cnn.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    args = ["--config", "configs/smoke.yaml", "--set", f"results_dir={run_root}",
            "--set", f"data.root={first_tmp / 'data'}", "--phase", "quantization", "--force"]
    assert main.main(args) == 2
    assert "tiny_cnn.pt is damaged" in _error(capsys)


def _copied_run(smoke_run, tmp_path):
    import shutil
    first_tmp, first_run = smoke_run
    run_root = tmp_path / "results"
    shutil.copytree(first_run, run_root / "smoke")
    args = ["--config", "configs/smoke.yaml", "--set", f"results_dir={run_root}",
            "--set", f"data.root={first_tmp / 'data'}"]
    return run_root / "smoke", args


def test_a_checkpoint_holding_a_non_tensor_object_stops_the_phase_once_up_front(smoke_run, tmp_path,
                                                                               capsys):
    import argparse
    run_dir, args = _copied_run(smoke_run, tmp_path)
    checkpoint = run_dir / "checkpoints" / "synthetic" / "tiny_cnn.pt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["meta"]["note"] = argparse.Namespace(x=1)  # a global torch will not unpickle safely
    torch.save(saved, checkpoint)
    records = sorted((run_dir / "records").rglob("*.json"))
    before = [path.read_bytes() for path in records]
    for phase in ("quantization", "mitigation"):
        assert main.main([*args, "--phase", phase, "--force"]) == 2
        message = _error(capsys)
        assert f"checkpoint {checkpoint} cannot be used (" in message
        assert "python main.py --phase baseline --force" in message
        assert "weights_only" not in message
    assert [path.read_bytes() for path in records] == before  # no configuration ran or failed


def test_cuda_on_a_machine_without_it_is_refused_before_anything_is_written(tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main.main(_args(tmp_path, "--set", "runtime.device=cuda")) == 2
    message = _error(capsys)
    assert "runtime.device='cuda', but this machine has no CUDA GPU" in message
    assert "--set runtime.device=auto" in message and "--set runtime.device=cpu" in message
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("name", ["..", "."])
def test_a_run_name_that_leaves_its_folder_writes_nothing(tmp_path, capsys, name):
    assert main.main(_args(tmp_path, "--set", f"run_name={name}")) == 2
    assert f"run_name={name!r}" in _error(capsys)
    assert not (tmp_path / "results").exists()


def test_a_run_name_too_long_for_the_filesystem_is_a_clear_error(tmp_path, capsys):
    assert main.main(_args(tmp_path, "--set", "run_name=" + "r" * 300)) == 2
    assert "at most 100 characters" in _error(capsys)
    assert not (tmp_path / "results").exists()


def test_an_unbounded_number_is_refused_at_load(tmp_path, capsys):
    assert main.main(_args(tmp_path, "--set", "analysis.bootstrap_resamples=1000000000000")) == 2
    assert "analysis.bootstrap_resamples=1000000000000: expected a whole number from 1" in \
        _error(capsys)
    assert not (tmp_path / "results").exists()


def test_a_full_disk_during_a_commit_is_one_clear_paragraph_and_the_rerun_completes(
        tmp_path, capsys, monkeypatch):
    import errno
    import os

    import results

    def full(_fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(results.os, "fsync", full)  # the record write, the commit point
    assert main.main(_args(tmp_path, "--phase", "baseline")) == 2
    message = _error(capsys)
    assert message.startswith("error: no space left to write ") and "seed=0.json" in message
    assert "nothing is half-written" in message and "run the same command again" in message
    run_dir = tmp_path / "results" / "smoke"
    assert not list(run_dir.rglob("*.tmp")) and not list((run_dir / "records").rglob("*.json"))
    monkeypatch.undo()
    assert main.main(_args(tmp_path, "--phase", "baseline")) == 0
    assert len(list((run_dir / "records").rglob("*.json"))) == 1


def test_a_lock_that_is_a_folder_exits_2_with_the_way_out(tmp_path, capsys):
    (tmp_path / "results" / "smoke" / ".lock").mkdir(parents=True)
    assert main.main(_args(tmp_path, "--phase", "analysis")) == 2
    assert "is not a file" in _error(capsys)
