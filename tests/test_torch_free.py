"""The torch-free modules' tests pass where torch cannot be imported (tests/_no_torch.py)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ["tests/test_fairness_metrics.py", "tests/test_unit_stats.py", "tests/test_verdicts.py",
       "tests/test_config.py", "tests/test_results.py", "tests/test_docs.py",
       "tests/test_manifest.py", "tests/test_plants.py", "tests/test_prediction_store.py"]
"""Run in full without torch (their modules: fairness_metrics, resampling, unit_stats, verdicts,
config, results, manifest, plants, synthetic, prediction_store; test_manifest's dataset tests
are marked torch)."""
COLLECT = ["tests/test_analysis.py", "tests/test_visualizations.py"]
"""Too slow to run twice: collected without torch (the modules import), and test_analysis checks
that a whole analysis runs without importing torch."""


def no_torch_pytest(*args):
    return subprocess.run([sys.executable, "-m", "tests._no_torch", "-q", "-p", "no:cacheprovider",
                           *args], cwd=ROOT, capture_output=True, text=True)


def test_the_blocker_really_blocks_torch():
    probe = no_torch_pytest("--collect-only", "tests/test_models.py")
    assert probe.returncode != 0
    assert "is blocked: this run checks the torch-free modules" in probe.stdout


def test_the_torch_free_tests_pass_without_torch():
    run = no_torch_pytest("-m", "not torch", *RUN)
    assert run.returncode == 0, run.stdout[-3000:]
    collected = no_torch_pytest("--collect-only", *COLLECT)
    assert collected.returncode == 0, collected.stdout[-3000:]
