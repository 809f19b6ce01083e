"""benchmarks/same_tables.py: two run folders hold the same tables apart from timing and paths."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, accuracy: float, latency: float) -> Path:
    (folder / "analysis").mkdir(parents=True)
    (folder / "results.csv").write_text(f"config_id,accuracy,latency_ms_b1,cost_s\n"
                                        f"a,{accuracy},{latency},{latency * 2}\n")
    (folder / "analysis" / "summary.json").write_text(json.dumps(
        {"run_dir": str(folder), "accuracy": accuracy, "record": {"wall_s": latency},
         "facts": [{"name": "cost ratio QAT / PTQ", "value": latency}]}))
    return folder


def same_tables(before: Path, after: Path):
    return subprocess.run([sys.executable, "-m", "benchmarks.same_tables", str(before), str(after)],
                          cwd=ROOT, capture_output=True, text=True)


def test_timing_and_paths_are_ignored_and_any_other_change_is_named(tmp_path):
    before = write_run(tmp_path / "before", 0.9, 1.0)
    same = same_tables(before, write_run(tmp_path / "after", 0.9, 3.0))
    assert same.returncode == 0 and same.stdout.startswith("same: 2 tables")
    changed = same_tables(before, write_run(tmp_path / "changed", 0.8, 1.0))
    assert changed.returncode == 1
    assert "results.csv: values differ in columns ['accuracy']" in changed.stdout
    assert "analysis/summary.json: JSON differs at /accuracy/" in changed.stdout
