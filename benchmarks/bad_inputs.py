"""Re-try the bad inputs and faults of issue 11 as a new user would, and count the outcomes.

    python benchmarks/bad_inputs.py            # 2-4 minutes on 2 cores; one line per case

CLI cases run ``main.py`` as its own process on the smoke config in a temporary folder; notebook
cases call the API in this process. Outcomes: ``clear`` (refused with a ValueError/TypeError/
FileNotFoundError, or exit 2/3 with a one-paragraph ``error:`` line and no traceback), ``works``
(a case whose fix is to go through: it did, as documented), ``traceback`` (any other exception,
or a traceback on the CLI), ``silent`` (accepted although it is wrong) and ``unclear``.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLEAR_ERRORS = (ValueError, TypeError, FileNotFoundError)


def cli(tmp: Path, *extra, data_root=None) -> tuple[int, str]:
    command = [sys.executable, "main.py", "--config", "configs/smoke.yaml", "--log-level", "ERROR",
               "--set", f"results_dir={tmp / 'results'}", "--set",
               f"data.root={data_root or tmp / 'data'}", *extra]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return done.returncode, done.stderr


def cli_outcome(code: int, err: str, expect_fail: bool = True) -> str:
    if "Traceback" in err:
        return "traceback"
    if not expect_fail:
        return "works" if code == 0 else "unclear"
    if code == 0:
        return "silent"
    message = err[err.rfind("error: "):] if "error: " in err else ""
    return "clear" if code in (2, 3) and message.count("\n") == 1 else "unclear"


def api_outcome(call, expect_fail: bool = True) -> str:
    try:
        call()
    except CLEAR_ERRORS:
        return "clear" if expect_fail else "unclear"
    except Exception:  # noqa: BLE001 - what a user would see as a deep error
        return "traceback"
    return "silent" if expect_fail else "works"


def celeba_copy(data_root: Path, name: str) -> Path:
    """A CelebA-format dataset made from the synthetic one (same files, the celeba folder name)."""
    target = data_root.parent / name
    shutil.copytree(data_root / "synthetic_celeba", target / "celeba")
    (target / "celeba" / "synthetic_params.json").unlink()
    return target


def cli_cases(tmp: Path) -> dict[str, str]:
    out = {}
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("models:\n  architectures: [tiny_cnn\n")
    done = subprocess.run([sys.executable, "main.py", "--config", str(bad_yaml)], cwd=ROOT,
                          capture_output=True, text=True)
    out["malformed YAML file"] = cli_outcome(done.returncode, done.stderr)
    out["malformed YAML in --set"] = cli_outcome(*cli(tmp, "--set", "training.epochs=[1"))
    (tmp / "afile").write_text("x")
    out["results_dir is a file"] = cli_outcome(*cli(tmp, "--set", f"results_dir={tmp / 'afile'}"))
    out["results_dir unwritable"] = cli_outcome(*cli(tmp, "--set", "results_dir=/sys/bnq"))
    out["unknown architecture"] = cli_outcome(*cli(tmp, "--set", "models.architectures=[resnet51]"))
    out["mitigation.architectures not trained"] = cli_outcome(
        *cli(tmp, "--set", "mitigation.architectures=[resnet50]"))
    out["runtime.latency_warmup=-1"] = cli_outcome(*cli(tmp, "--set", "runtime.latency_warmup=-1"))
    out["quantization.methods=[]"] = cli_outcome(*cli(tmp, "--set", "quantization.methods=[]"))
    out["quantization.seeds=[] (beyond the issue)"] = cli_outcome(
        *cli(tmp, "--set", "quantization.seeds=[]"))
    out["fairness_aware_quantizer unknown option (beyond)"] = cli_outcome(*cli(
        tmp, "--set", "mitigation.methods=[{method: fairness_aware_quantizer, crit: dp_gap}]"))
    out["synthetic data.root is a file (beyond)"] = cli_outcome(
        *cli(tmp, "--phase", "baseline", data_root=tmp / "afile" / "data"))
    out["calibration size > train split"] = cli_outcome(
        *cli(tmp, "--phase", "baseline", "--set", "quantization.calibration_sizes=[5000]"))
    # the synthetic data now exists under tmp/data: derive CelebA-format copies to damage
    for name, damage in [("corrupt image", b"not a jpeg"), ("zero-byte image", b"")]:
        root = celeba_copy(tmp / "data", name.replace(" ", "_"))
        (root / "celeba" / "img_align_celeba" / "000007.jpg").write_bytes(damage)
        code, err = cli(tmp / name.replace(" ", "_"), "--phase", "baseline", "--set",
                        "data.dataset=celeba", data_root=root)
        out[name] = cli_outcome(code, err) if "000007.jpg" in err or code == 0 else "unclear"
    for name, file_name in [("non-UTF-8 attribute file", "list_attr_celeba.txt"),
                            ("non-UTF-8 partition file", "list_eval_partition.txt")]:
        root = celeba_copy(tmp / "data", file_name.split(".")[0])
        path = root / "celeba" / file_name
        data = bytearray(path.read_bytes())
        data[data.index(b"\n", 400) + 3] = 0xFF
        path.write_bytes(bytes(data))
        code, err = cli(tmp / file_name, "--phase", "baseline", "--set", "data.dataset=celeba",
                        data_root=root)
        out[name] = cli_outcome(code, err) if "line" in err or code == 0 else "unclear"
    root = celeba_copy(tmp / "data", "duplicated")
    path = root / "celeba" / "list_attr_celeba.txt"
    lines = path.read_text().splitlines()
    lines[0] = str(int(lines[0]) + 1)
    path.write_text("\n".join(lines + [lines[5]]) + "\n")
    out["duplicated attribute row"] = cli_outcome(*cli(tmp / "dup", "--phase", "baseline", "--set",
                                                       "data.dataset=celeba", data_root=root))
    typo = tmp / "typo"
    cli(typo, "--phase", "baseline", "--set", "data.dataset=celeba", data_root=tmp / "nowhere")
    code, err = cli(typo, "--phase", "analysis")  # the fixed config on the same folder
    out["fixed rerun after a data typo"] = "works" if "--set run_name=NEW" not in err else "unclear"
    return out


def store_cases(tmp: Path) -> dict[str, str]:
    from results import ResultStore, WorkUnit, run_sweep

    run_dir = tmp / "legacy"
    run_dir.mkdir()
    records = [{"config_id": f"c{i}", "status": "ok"} for i in range(3)]
    text = json.dumps(records, indent=1)
    (run_dir / "quantization_results.json").write_text(text[: text.index('"c2"')])
    ran = []
    units = [WorkUnit(f"c{i}", {}, "fake", {"i": i}, str(run_dir), "quantization") for i in range(3)]
    try:
        run_sweep(ResultStore(run_dir, "quantization_results"), units, progress=False,
                  execute=lambda unit: ran.append(unit.args["i"]) or ({}, None, None))
        out = "works" if ran == [2] else "unclear"
    except Exception:  # noqa: BLE001
        out = "traceback"
    from results import load_predictions, save_predictions

    import pandas as pd
    save_predictions(run_dir, "p", pd.DataFrame({"sample_id": ["x"] * 500}))
    damaged = run_dir / "predictions" / "p.csv.gz"
    damaged.write_bytes(damaged.read_bytes()[:20])
    return {"truncated quantization_results.json": out,
            "damaged predictions file (beyond)": api_outcome(lambda: load_predictions(run_dir, "p"))}


def api_cases(tmp: Path) -> dict[str, str]:
    import torch
    from torch.utils.data import DataLoader

    import datasets
    from fairness_metrics import compute_fairness_metrics
    from mitigation import FairnessAwareQuantizer
    from models import build_model
    from quantization import apply_quantization

    splits = datasets.load_dataset("synthetic", tmp / "data", image_size=32,
                                   synthetic={"n_images": 600, "image_size": 32})
    test = datasets.make_loader(splits.test, 64)
    model = build_model("tiny_cnn", num_classes=2, image_size=32).eval()
    small = datasets.make_loader(datasets.random_subset(splits.train, 100, seed=0), 50)

    class Gray(torch.utils.data.Dataset):
        metadata = splits.test.metadata

        def __len__(self):
            return len(splits.test)

        def __getitem__(self, i):
            image, *rest = splits.test[i]
            return (image[:1], *rest)

    with torch.device("meta"):
        meta_model = build_model("tiny_cnn", num_classes=2, image_size=32)

    def mode_restored():
        model.train()
        compute_fairness_metrics(model, test)
        if not model.training:
            raise AssertionError("left in eval mode")
    out = {
        'compute_fairness_metrics("m", loader)': api_outcome(lambda: compute_fairness_metrics("m", test)),
        "list instead of a loader": api_outcome(lambda: compute_fairness_metrics(model, [splits.test[0]])),
        "FaceDataset instead of a loader": api_outcome(lambda: compute_fairness_metrics(model, splits.test)),
        "sensitive_attr=None": api_outcome(lambda: compute_fairness_metrics(model, test, sensitive_attr=None)),
        "sensitive_attr=5 (beyond)": api_outcome(lambda: compute_fairness_metrics(model, test, sensitive_attr=5)),
        "1-channel batch": api_outcome(lambda: compute_fairness_metrics(model, DataLoader(Gray(), 32))),
        "meta-device model": api_outcome(lambda: compute_fairness_metrics(meta_model, test)),
        "caller's model mode restored": "works" if api_outcome(mode_restored, False) == "works" else "silent",
        "FaceDataset as calibration_data": api_outcome(
            lambda: apply_quantization(model, "ptq_static", calibration_data=splits.train)),
        "bias_aware seed call, loader < 512": api_outcome(lambda: apply_quantization(
            model, method="bias_aware_calibration", bit_width=8, calibration_data=small), False),
        "FairnessAwareQuantizer, data < 512": api_outcome(lambda: FairnessAwareQuantizer(
            bit_width=8, max_dp_gap=1.0, progress=False, device="cpu").quantize(model, small), False),
        "explicit calibration_size too large": api_outcome(lambda: apply_quantization(
            model, method="bias_aware_calibration", bit_width=8, calibration_data=small,
            calibration_size=512)),
        "bit_width=8.0": api_outcome(lambda: apply_quantization(
            model, "ptq_static", bit_width=8.0, calibration_data=small)),
        "bit_width=2": api_outcome(lambda: apply_quantization(
            model, "ptq_static", bit_width=2, calibration_data=small), False),
    }
    return out


def main() -> int:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        cases = {**cli_cases(tmp), **store_cases(tmp), **api_cases(tmp)}
    for name, outcome in cases.items():
        print(f"{outcome:10s} {name}")
    print(dict(collections.Counter(cases.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
