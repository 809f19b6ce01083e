"""Test helper: run a sweep in this process and SIGKILL it right after its N-th file write.

    python -m tests._kill_after_write N fake RUN_DIR    # three tiny fake configurations
    python -m tests._kill_after_write N main ARGS...    # main.main(ARGS)

(from the repository root, which ``-m`` puts on ``sys.path``)

A file write is an ``os.replace`` of a finished temp file into place (every write of the project
goes through ``results.atomic_write``); each one is printed as ``WRITE <path>``. N = 0 kills
nothing, so a first run lists the writes to choose kill points from.
"""
import os
import signal
import sys
import time

FAKE_IDS = ("d/a/m/w8a8/seed=0", "d/a/m/w4a8/seed=0", "d/a/m/w2a8/seed=0")


def fake_units():
    from results import WorkUnit

    return [WorkUnit(i, {"arch": "a"}, "fake", {}, "", "quantization") for i in FAKE_IDS]


def execute_fake(unit):
    """Run a fake unit: log which process ran it, wait UNIT_SLEEP seconds, return a record."""
    import pandas as pd

    table = pd.DataFrame({"sample_id": ["a", "b"], "y_true": [0, 1], "y_pred": [0, 1]})
    per_group = pd.DataFrame({"group": ["F", "M"], "metric": ["accuracy"] * 2, "value": [1.0, 0.5]})
    with open(os.environ["RUN_LOG"], "a") as log:  # which process ran which configuration
        log.write(f"{os.getpid()} {unit.config_id}\n")
    time.sleep(float(os.environ.get("UNIT_SLEEP", 0)))
    return {"accuracy": 1.0}, table, per_group


def main():
    kill_at, mode, rest = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    real_replace, count = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        count[0] += 1
        print(f"WRITE {dst}", flush=True)
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    if mode == "fake":
        from results import ResultStore, RunFolderBusy, RunLock, run_sweep
        try:
            with RunLock(rest[0]):
                run_sweep(ResultStore(rest[0], "quantization_results"), fake_units(),
                          execute=execute_fake, progress=False)
        except RunFolderBusy as error:
            print(f"error: {error}", file=sys.stderr)
            return 3
        return 0
    import main as cli
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main())
