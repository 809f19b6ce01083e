"""Re-try the bad inputs and faults of issues 11 and 25 as a new user would, and count the outcomes.

    python -m benchmarks.bad_inputs            # 3-5 minutes on 2 cores; one line per case

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


def _wrote_outside(tmp: Path) -> bool:
    """True when a run put its files beside results/ (run_name=..) or into results/ itself."""
    return any((folder / name).exists() for folder in (tmp, tmp / "results")
               for name in ("config.yaml", "records", "checkpoints"))


def _relisted(tmp: Path, name: str, file_name: str, listed: str) -> Path:
    """A CelebA-format copy whose ``file_name`` lists ``listed`` on its first image line."""
    root = celeba_copy(tmp / "data", name)
    path = root / "celeba" / file_name
    lines = path.read_text().splitlines()
    row = 2 if file_name == "list_attr_celeba.txt" else 0
    lines[row] = listed + lines[row][lines[row].index(" "):]
    path.write_text("\n".join(lines) + "\n")
    return root


def issue25_cases(tmp: Path) -> dict[str, str]:
    """The 40 cases of issue 25 that its fixes answer (the data of cli_cases must exist)."""
    out, data = {}, tmp / "data"
    outside = tmp / "outside.jpg"
    shutil.copy(next((data / "synthetic_celeba" / "img_align_celeba").iterdir()), outside)
    for case, file_name, listed in [
            ("attribute file lists ../../outside.jpg", "list_attr_celeba.txt", "../../outside.jpg"),
            ("partition file lists ../../outside.jpg", "list_eval_partition.txt",
             "../../outside.jpg"),
            ("attribute file lists /etc/passwd by ..", "list_attr_celeba.txt",
             "../../../../../../../../etc/passwd"),
            ("attribute file lists an absolute path", "list_attr_celeba.txt", str(outside))]:
        root = _relisted(tmp, case.replace(" ", "_").replace("/", "_"), file_name, listed)
        code, err = cli(tmp / case.replace(" ", "_").replace("/", "_"), "--phase", "baseline",
                        "--set", "data.dataset=celeba", data_root=root)
        out[case] = cli_outcome(code, err) if "line" in err or code == 0 else "unclear"
    root = celeba_copy(data, "symlinked")
    image = sorted((root / "celeba" / "img_align_celeba").iterdir())[0]
    image.unlink()
    image.symlink_to(outside)
    out["image symlinked to outside the dataset"] = cli_outcome(*cli(
        tmp / "symlinked", "--phase", "baseline", "--set", "data.dataset=celeba", data_root=root))
    root = celeba_copy(data, "fifo")
    image = sorted((root / "celeba" / "img_align_celeba").iterdir())[1]
    image.unlink()
    os.mkfifo(image)
    code, err = cli(tmp / "fifo", "--phase", "baseline", "--set", "data.dataset=celeba",
                    data_root=root)
    out["FIFO image"] = cli_outcome(code, err) if "FIFO" in err or code == 0 else "unclear"
    for case, override in [("run_name=..", "run_name=.."), ("run_name=.", "run_name=."),
                           ("run_name of 300 characters", "run_name=" + "r" * 300),
                           ("data.name=..", "data.name=.."),
                           ("duplicate architectures", "models.architectures=[tiny_cnn, tiny_cnn]"),
                           ("bootstrap_resamples=1e12",
                            "analysis.bootstrap_resamples=1000000000000"),
                           ("seed=1e20", "seed=100000000000000000000"),
                           ("training.lr=.inf", "training.lr=.inf"),
                           ("training.epochs=12:30", "training.epochs=12:30"),
                           ("runtime.device=cuda without CUDA", "runtime.device=cuda"),
                           ("unknown dataset name", "data.dataset=celebb")]:
        code, err = cli(tmp / "names", "--phase", "analysis", "--set", override)
        outcome = cli_outcome(code, err)
        if case == "runtime.device=cuda without CUDA" and _cuda():
            outcome = "works" if code in (0, 2) else outcome  # this machine has CUDA
        out[case] = "silent" if _wrote_outside(tmp / "names") else outcome
    names = ", ".join(f"arch{i}" for i in range(10_000))
    code, err = cli(tmp / "names", "--set", f"mitigation.architectures=[{names}]")
    out["10,000-name error"] = cli_outcome(code, err) if len(err) < 2000 else "unclear"
    lock = tmp / "lockdir" / "results" / "smoke" / ".lock"
    lock.mkdir(parents=True)
    out[".lock is a folder"] = cli_outcome(*cli(tmp / "lockdir", "--phase", "analysis"))
    out.update(_disk_full_and_checkpoint(tmp))
    return out


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


DISK_FULL = """
import errno, os, sys
def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.fsync = full  # the commit point of every configuration
import main
sys.exit(main.main({args!r}))
"""


def _disk_full_and_checkpoint(tmp: Path) -> dict[str, str]:
    out = {}
    args = ["--config", "configs/smoke.yaml", "--log-level", "ERROR", "--set",
            f"results_dir={tmp / 'full' / 'results'}", "--set", f"data.root={tmp / 'data'}",
            "--phase", "baseline"]
    done = subprocess.run([sys.executable, "-c", DISK_FULL.format(args=args)],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    leftovers = list((tmp / "full").rglob("*.tmp"))
    outcome = cli_outcome(done.returncode, done.stderr)
    out["disk full during a commit"] = "unclear" if leftovers else outcome
    code, _ = cli(tmp / "full", "--phase", "baseline", data_root=tmp / "data")
    out["rerun after the disk is freed"] = "works" if code == 0 else "unclear"
    import argparse

    import torch
    checkpoint = tmp / "full" / "results" / "smoke" / "checkpoints" / "synthetic" / "tiny_cnn.pt"
    saved = torch.load(checkpoint, weights_only=True)
    saved["meta"]["note"] = argparse.Namespace(x=1)
    torch.save(saved, checkpoint)
    code, err = cli(tmp / "full", "--phase", "quantization", data_root=tmp / "data")
    clear = "--phase baseline --force" in err and "weights_only" not in err
    out["checkpoint holding a non-tensor global"] = cli_outcome(code, err) if clear else "unclear"
    return out


def store_cases(tmp: Path) -> dict[str, str]:
    from results import ResultStore, WorkUnit, run_sweep

    run_dir = tmp / "legacy"
    run_dir.mkdir()
    records = [{"config_id": f"c{i}", "status": "ok"} for i in range(3)]
    text = json.dumps(records, indent=1)
    (run_dir / "quantization_results.json").write_text(text[: text.index('"c2"')])
    ran = []
    units = [WorkUnit(f"c{i}", {}, "fake", {"i": i}, str(run_dir), "quantization")
             for i in range(3)]
    try:
        run_sweep(ResultStore(run_dir, "quantization_results"), units, progress=False,
                  execute=lambda unit: ran.append(unit.args["i"]) or ({}, None, None))
        out = "works" if ran == [2] else "unclear"
    except Exception:  # noqa: BLE001
        out = "traceback"
    import pandas as pd

    from results import load_predictions, save_predictions
    save_predictions(run_dir, "p", pd.DataFrame({"sample_id": ["x"] * 500}))
    damaged = run_dir / "predictions" / "p.csv.gz"
    damaged.write_bytes(damaged.read_bytes()[:20])
    return {"truncated quantization_results.json": out,
            "damaged predictions file (beyond)":
                api_outcome(lambda: load_predictions(run_dir, "p"))}


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
        'compute_fairness_metrics("m", loader)':
            api_outcome(lambda: compute_fairness_metrics("m", test)),
        "list instead of a loader":
            api_outcome(lambda: compute_fairness_metrics(model, [splits.test[0]])),
        "FaceDataset instead of a loader":
            api_outcome(lambda: compute_fairness_metrics(model, splits.test)),
        "sensitive_attr=None": api_outcome(lambda: compute_fairness_metrics(model, test,
                                                                            sensitive_attr=None)),
        "sensitive_attr=5 (beyond)":
            api_outcome(lambda: compute_fairness_metrics(model, test, sensitive_attr=5)),
        "1-channel batch": api_outcome(lambda: compute_fairness_metrics(model,
                                                                        DataLoader(Gray(), 32))),
        "meta-device model": api_outcome(lambda: compute_fairness_metrics(meta_model, test)),
        "caller's model mode restored":
            "works" if api_outcome(mode_restored, False) == "works" else "silent",
        "FaceDataset as calibration_data": api_outcome(
            lambda: apply_quantization(model, "ptq_static", calibration_data=splits.train)),
        "bias_aware seed call, loader < 512": api_outcome(lambda: apply_quantization(
            model, method="bias_aware_calibration", bit_width=8, calibration_data=small), False),
        "FairnessAwareQuantizer, data < 512": api_outcome(lambda: FairnessAwareQuantizer(
            bit_width=8, max_dp_gap=1.0, progress=False, device="cpu").quantize(model, small),
            False),
        "explicit calibration_size too large": api_outcome(lambda: apply_quantization(
            model, method="bias_aware_calibration", bit_width=8, calibration_data=small,
            calibration_size=512)),
        "bit_width=8.0": api_outcome(lambda: apply_quantization(
            model, "ptq_static", bit_width=8.0, calibration_data=small)),
        "bit_width=2": api_outcome(lambda: apply_quantization(
            model, "ptq_static", bit_width=2, calibration_data=small), False),
        "apply_quantization, 1-channel calibration batch": api_outcome(
            lambda: apply_quantization(model, "ptq_static",
                                       calibration_data=DataLoader(Gray(), 32))),
        "apply_quantization, meta-device model": api_outcome(
            lambda: apply_quantization(meta_model, "ptq_static", calibration_data=small)),
        "dataset loaded from a relative root, then os.chdir": api_outcome(
            lambda: _relative_root_then_chdir(tmp), False),
        "fairface csv lists an absolute path": api_outcome(lambda: _fairface_absolute(tmp)),
        "--set run_name=on keeps the text": api_outcome(lambda: _typed_name(), False),
        "data.synthetic.seed as docs/synthetic.md says":
            api_outcome(lambda: _synthetic_seed(), False),
    }
    return out


def _relative_root_then_chdir(tmp: Path) -> None:
    import datasets
    here = os.getcwd()
    try:
        os.chdir(tmp)
        splits = datasets.load_dataset("synthetic", "data", image_size=32,
                                       synthetic={"n_images": 600, "image_size": 32})
        os.chdir("/")
        splits.train[0]
    finally:
        os.chdir(here)


def _fairface_absolute(tmp: Path) -> None:
    import datasets
    folder = tmp / "fairface_root" / "fairface"
    folder.mkdir(parents=True)
    header = "file,age,gender,race,service_test\n"
    (folder / "fairface_label_train.csv").write_text(header + "/etc/passwd,20-29,Male,White,True\n")
    (folder / "fairface_label_val.csv").write_text(header + "val/1.jpg,20-29,Male,White,True\n")
    datasets.load_dataset("fairface", folder.parent)


def _typed_name() -> None:
    import config
    if config.load_config("configs/smoke.yaml", ["run_name=on"]).run_name != "on":
        raise AssertionError("run_name=on was not kept as typed")


def _synthetic_seed() -> None:
    import config
    if config.load_config("configs/smoke.yaml", ["data.synthetic.seed=3"]).data.synthetic.seed != 3:
        raise AssertionError("data.synthetic.seed not kept")


def main() -> int:
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        cases = {**cli_cases(tmp), **issue25_cases(tmp), **store_cases(tmp), **api_cases(tmp)}
    for name, outcome in cases.items():
        print(f"{outcome:10s} {name}")
    counts = collections.Counter(cases.values())
    print(dict(counts))
    print("\n| outcome | cases |\n|---|---|")
    for outcome, label in [("clear", "clear error"), ("traceback", "traceback"),
                           ("unclear", "unclear message"), ("silent", "silently accepted"),
                           ("works", "works as documented")]:
        print(f"| {label} | {counts.get(outcome, 0)} |")
    print(f"| total | {len(cases)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
