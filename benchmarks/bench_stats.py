"""Time the bootstrap statistics of fairness_metrics on a synthetic prediction table.

    python benchmarks/bench_stats.py [--samples 20000] [--groups 4] [--resamples 2000]

Prints the best-of-N wall time of paired_bootstrap, bootstrap_ci and summarize_predictions
(with a reference) in seconds. The target is well under a second for the paired bootstrap at the
defaults.
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the benchmark should not depend on free cores
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import fairness_metrics as fm  # noqa: E402


def synthetic_tables(n_samples, n_groups, seed=0):
    """A prediction table and a reference that differs on about 5% of samples."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n_samples)
    reference = np.where(rng.random(n_samples) < 0.85, y_true, 1 - y_true)
    model = np.where(rng.random(n_samples) < 0.05, 1 - reference, reference)
    table = pd.DataFrame({"sample_id": np.arange(n_samples).astype(str), "y_true": y_true,
                          "y_pred": model, "score": rng.random(n_samples),
                          "group": rng.choice([f"g{i}" for i in range(n_groups)], n_samples)})
    return table, table.assign(y_pred=reference)


def best_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    pred, reference = synthetic_tables(args.samples, args.groups)
    arrays = (pred["y_true"].to_numpy(), pred["y_pred"].to_numpy())
    options = dict(sensitive_features=pred["group"].to_numpy(), n_resamples=args.resamples)
    cases = {
        "paired_bootstrap": lambda: fm.paired_bootstrap(*arrays, reference["y_pred"].to_numpy(),
                                                        **options),
        "bootstrap_ci": lambda: fm.bootstrap_ci(*arrays, **options),
        "summarize_predictions(reference=...)": lambda: fm.summarize_predictions(
            pred, reference=reference, n_resamples=args.resamples),
    }
    print(f"{args.samples} samples, {args.groups} groups, {args.resamples} resamples, "
          f"best of {args.repeats}")
    for name, function in cases.items():
        print(f"{name:40s} {best_time(function, args.repeats):.4f} s")


if __name__ == "__main__":
    main()
