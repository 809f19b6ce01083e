"""A user's own data and models, as a new user brings them: a folder of PNGs with a metadata.csv of
their own column names, models named by timm:/torchvision:, trained weights, and the notebook
snippets of the original project run as written."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import main
from datasets import load_dataset, make_loader

TIMM_ARCH = "timm:test_resnet"
TORCHVISION_ARCH = "torchvision:squeezenet1_1"


def write_manifest_folder(folder, n=480, seed=0):
    """PNGs whose brightness carries the target, and a metadata.csv naming them with a string
    target (benign / malignant), a 2-valued and a 3-valued sensitive column, and an age column."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        sick = int(rng.random() < 0.4)
        pixels = rng.normal(110 + 40 * sick, 25, size=(24, 24, 3)).clip(0, 255).astype(np.uint8)
        name = f"images/p{i:04d}.png"
        Image.fromarray(pixels).save(folder / name)
        rows.append({"file_name": name, "diagnosis": "malignant" if sick else "benign",
                     "gender": ["female", "male"][i % 2],
                     "race": ["light", "medium", "dark"][(i // 2) % 3],
                     "age": ["young", "old"][int(rng.random() < 0.3)]})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    return folder / "metadata.csv"


@pytest.fixture(scope="module")
def clinic_manifest(tmp_path_factory):
    return write_manifest_folder(tmp_path_factory.mktemp("own") / "derm_clinic")


def _manifest_args(tmp_path, manifest, *extra, positive="malignant"):
    return ["--config", "configs/smoke.yaml", "--set", f"results_dir={tmp_path / 'results'}",
            "--set", "data.dataset=manifest", "--set", f"data.manifest={manifest}",
            "--set", "data.target=diagnosis", "--set", "data.sensitive=[gender,race]",
            *(["--set", f"data.positive={positive}"] if positive else []), *extra]


def test_the_whole_study_runs_on_a_manifest_with_timm_and_torchvision_models(clinic_manifest,
                                                                              tmp_path):
    archs = f"models.architectures=[{TIMM_ARCH},{TORCHVISION_ARCH}]"
    assert main.main(_manifest_args(tmp_path, clinic_manifest, "--set", archs, "--set",
                                    "mitigation.calibration_draws=1", "--phase", "all")) == 0
    run_dir = tmp_path / "results" / "smoke"
    baseline = pd.read_csv(run_dir / "baseline_results.csv")
    assert set(baseline["arch"]) == {TIMM_ARCH, TORCHVISION_ARCH}
    assert set(baseline["dataset"]) == {"derm_clinic"}
    assert baseline["config_id"].str.startswith("derm_clinic/").all()
    groups = set(pd.read_csv(run_dir / "group_metrics.csv")["group"])
    assert {f"{g}/{r}" for g in ("female", "male") for r in ("light", "medium", "dark")} <= groups
    report = (run_dir / "analysis" / "report.md").read_text()
    assert "derm_clinic" in report and "female/dark" in report
    assert "celeba" not in report.lower()
    for phase in ("quantization", "mitigation"):
        records = json.loads((run_dir / f"{phase}_results.json").read_text())
        assert records and all(r["status"] == "ok" for r in records), \
            [r.get("error") for r in records if r["status"] != "ok"]
        assert {r["arch"] for r in records} == {TIMM_ARCH, TORCHVISION_ARCH}


def test_trained_weights_with_zero_epochs_are_evaluated_not_retrained(tmp_path):
    from evaluation import predict
    from models import build_model

    torch.manual_seed(3)
    model = build_model("tiny_cnn", num_classes=2, image_size=32).eval()
    weights = tmp_path / "my_model.pt"
    torch.save(model.state_dict(), weights)
    args = ["--config", "configs/smoke.yaml", "--set", f"results_dir={tmp_path / 'results'}",
            "--set", f"data.root={tmp_path / 'data'}", "--set", "training.epochs=0",
            "--set", f"models.weights={{tiny_cnn: {weights}}}", "--phase", "baseline"]
    assert main.main(args) == 0
    run_dir = tmp_path / "results" / "smoke"
    row = pd.read_csv(run_dir / "baseline_results.csv").iloc[0]
    assert row["status"] == "ok" and row["train_time_s"] == 0
    assert row["initial_weights"] == str(weights)
    stored = pd.read_csv(run_dir / "predictions" / "synthetic" / "tiny_cnn" / "fp32"
                         / "seed=0.csv.gz")
    splits = load_dataset("synthetic", tmp_path / "data", image_size=32,
                          synthetic={"n_images": 600, "image_size": 32})
    own = predict(model, make_loader(splits.test, 32), progress=False)
    assert stored["sample_id"].tolist() == own["sample_id"].tolist()
    assert (stored["y_pred"].to_numpy() == own["y_pred"].to_numpy()).all()
    assert np.allclose(stored["score"].to_numpy(), own["score"].to_numpy(), atol=1e-6)


def test_the_original_notebook_snippets_run_as_written(clinic_manifest):
    from models import build_model
    from training import fit

    splits = load_dataset("manifest", clinic_manifest, target="diagnosis", positive="malignant",
                          sensitive=["gender", "race", "age"], image_size=32)
    train_loader = make_loader(splits.train, 32, shuffle=True)
    calib_loader = make_loader(splits.train, 64)
    balanced_calib_loader = calib_loader
    test_loader = make_loader(splits.test, 64)
    torch.manual_seed(0)
    model = build_model("tiny_cnn", num_classes=2, image_size=32)
    fit(model, train_loader, epochs=3, lr=1e-2, device="cpu", progress=False)
    model.eval()

    # --- snippet 1, as written
    from fairness_metrics import compute_fairness_metrics
    from quantization import apply_quantization
    quantized_model = apply_quantization(model, method='bias_aware_calibration', bit_width=8,
                                         calibration_data=calib_loader)
    metrics = compute_fairness_metrics(quantized_model, test_loader, sensitive_attr='gender')
    print(metrics['demographic_parity'], metrics['equalized_odds'], metrics['model_size_mb'])
    assert metrics["above_chance"]
    counts = quantized_model.quant_info["calibration_group_counts"]
    assert max(counts.values()) - min(counts.values()) <= 1

    # --- snippet 2, as written, with the calibration and training loaders QAT and PTQ need
    from quantization import compare_quantization_methods
    results = compare_quantization_methods(model=model,
                                           methods=['PTQ_INT8', 'PTQ_INT4', 'QAT_INT8',
                                                    'bias_aware'],
                                           test_loader=test_loader,
                                           sensitive_attrs=['gender', 'age'],
                                           calibration_data=calib_loader, train_loader=train_loader)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "constrained_layout not applied"
        results.plot_comparison(clinic_manifest.parent / "comparison.png")
    results.save_to_csv(clinic_manifest.parent / 'quantization_comparison.csv')
    assert results.table["label"].tolist() == ["fp32", "PTQ_INT8", "PTQ_INT4", "QAT_INT8",
                                               "bias_aware"]

    # --- snippet 3, as written
    from quantization import FairnessAwareQuantizer
    quantizer = FairnessAwareQuantizer(bit_width=8, max_dp_gap=0.01,
                                       sensitive_attributes=['gender', 'race'])
    quantized_model = quantizer.quantize(model=model, calibration_data=balanced_calib_loader,
                                         fairness_constraint=True)
    assert quantizer.history and quantizer.constraint_met in (True, False)
    assert set(quantizer.fp32_metrics) >= {"dp_gap", "accuracy"}


def _small_manifest(folder, n=48):
    path = write_manifest_folder(folder, n=n)
    return path, pd.read_csv(path, dtype=str)


def _break_outside(folder, table):
    (folder.parent / "outside.png").write_bytes((folder / table.at[3, "file_name"]).read_bytes())
    table.at[3, "file_name"] = "../outside.png"


def _break_missing(folder, table):
    table.at[3, "file_name"] = "images/nope.png"


def _break_duplicate(folder, table):
    table.at[3, "file_name"] = table.at[2, "file_name"]


def _break_third_target(folder, table):
    table.at[3, "diagnosis"] = "unclear"


def _break_empty_sensitive(folder, table):
    table.at[3, "race"] = ""


def _break_split(folder, table):
    table["split"] = "train"
    table.loc[table.index[-12:], "split"] = "val"
    table.loc[table.index[:12], "split"] = "test"
    table.loc[(table["split"] == "test") & (table["race"] == "dark"), "split"] = "train"


@pytest.mark.parametrize("breaks, expected", [
    (_break_outside, "line 5: file_name '../outside.png' leads out of the folder"),
    (_break_missing, "line 5: image 'images/nope.png' does not exist"),
    (_break_duplicate, "line 5: file_name 'images/p0002.png' is the same image as"),
    (_break_third_target, "line 5: target column 'diagnosis' holds 'unclear', a third"),
    (_break_empty_sensitive, "line 5: sensitive column 'race' is empty"),
    (_break_split, "has no rows in the test split"),
])
def test_a_bad_manifest_exits_2_naming_the_row_and_writes_nothing(tmp_path, capsys, breaks,
                                                                   expected):
    folder = tmp_path / "clinic"
    path, table = _small_manifest(folder)
    breaks(folder, table)
    table.to_csv(path, index=False)
    positive = None if breaks is _break_third_target else "malignant"
    assert main.main(_manifest_args(tmp_path, path, "--phase", "all", positive=positive)) == 2
    message = capsys.readouterr().err
    assert expected in message, message
    assert not (tmp_path / "results").exists()
