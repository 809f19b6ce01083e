"""Installation check: run ``python test_setup.py`` first on a new machine.

It says plainly what is present and what is missing, and exits non-zero when a core piece is
missing (what the default pipeline cannot run without). Optional pieces only warn.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

CORE = ["torch", "torchvision", "timm", "numpy", "pandas", "scipy", "yaml", "tqdm",
        "fairlearn", "matplotlib"]
OPTIONAL = {"aif360": "AIF360 cross-checks and the generalized entropy index",
            "pytest": "running the test suite",
            "onnxruntime": "the onnxruntime backend (runtime.backends)",
            "openvino": "the openvino backend (runtime.backends)",
            "nncf": "OpenVINO's INT8 quantizer for the openvino backend"}
DATASET_FILES = {"celeba": ["list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"],
                 "utkface": [],
                 "fairface": ["fairface_label_train.csv", "fairface_label_val.csv"],
                 "synthetic_celeba": ["list_attr_celeba.txt"]}
DATA_ROOT = Path(__file__).resolve().parent / "data" / "datasets"


def check_import(name: str) -> tuple[bool, str]:
    try:
        module = importlib.import_module(name)
    except Exception as error:  # any import failure means "not usable"
        return False, f"{type(error).__name__}: {error}"
    return True, getattr(module, "__version__", "installed")


def check_quantized_engine() -> tuple[bool, str]:
    """A real INT8 model needs the x86 (or fbgemm) integer kernels."""
    import torch
    engines = torch.backends.quantized.supported_engines
    ok = "x86" in engines or "fbgemm" in engines
    return ok, f"supported engines: {', '.join(engines)}"


def check_kernels() -> str:
    """The CPU's kernel capability and the 8-bit activation range it gets (see quantization.py)."""
    from quantization import default_activation_range, kernel_capability
    kernels = kernel_capability()
    return (f"{kernels['cpu_capability']}, VNNI {'yes' if kernels['vnni'] else 'no'}: "
            f"real INT8 uses activation_range='{default_activation_range()}'")


def check_device() -> str:
    import torch
    if torch.cuda.is_available():
        return f"CUDA GPU: {torch.cuda.get_device_name(0)}"
    return "no GPU: everything runs on the CPU (the default config is sized for a laptop CPU)"


def dataset_status() -> list[str]:
    lines = []
    for name, needed in DATASET_FILES.items():
        folder = DATA_ROOT / name
        present = folder.is_dir() and all((folder / item).exists() for item in needed)
        note = "present" if present else "absent"
        if name == "synthetic_celeba" and not present:
            note += " (generated automatically on first use)"
        lines.append(f"  {name:17s} {note}  [{folder}]")
    return lines


def main() -> int:
    missing = []
    print(f"Python {sys.version.split()[0]}")
    for name in CORE:
        ok, detail = check_import(name)
        print(f"  [{'ok' if ok else 'MISSING'}] {name}: {detail}")
        if not ok:
            missing.append(name)
    for name, purpose in OPTIONAL.items():
        ok, detail = check_import(name)
        print(f"  [{'ok' if ok else 'optional, missing'}] {name} ({purpose}): {detail}")
    if "torch" not in missing:
        ok, detail = check_quantized_engine()
        print(f"  [{'ok' if ok else 'MISSING'}] quantized integer kernels: {detail}")
        print(f"  CPU kernels: {check_kernels()}")
        if not ok:
            missing.append("x86/fbgemm quantized engine")
        print(f"  device: {check_device()}")
    print("datasets under data/datasets/:")
    print("\n".join(dataset_status()))
    if missing:
        print(f"\nMissing core pieces: {', '.join(missing)}. Install them with "
              "`pip install -r requirements.txt`.")
        return 1
    print("\nAll core pieces are installed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
