"""What a kill at any write keeps, what two processes on one run folder do, and a stale lock.

Each process here is real: a child is SIGKILLed right after one file write
(tests/_kill_after_write.py), then a rerun must hold every configuration exactly once in every table
(and in the analysis). The promises are listed in docs/reliability.md.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import _kill_after_write as helper
import main
from results import GROUP_TABLE, LOCK_FILE, ResultStore, RunFolderBusy, RunLock, run_sweep

ROOT = Path(__file__).resolve().parents[1]
FAKE_IDS = helper.FAKE_IDS


def _child(kill_at, *args, env=None, wait=True):
    command = [sys.executable, "-m", "tests._kill_after_write", str(kill_at), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _writes(stdout: str) -> list[str]:
    return [line[len("WRITE "):] for line in stdout.splitlines() if line.startswith("WRITE ")]


def _commit_writes(writes, config_id, next_id) -> list[int]:
    """1-based numbers of the writes from ``config_id``'s first one to before ``next_id``'s."""
    start = next(i for i, path in enumerate(writes) if config_id in path)
    stop = next((i for i, path in enumerate(writes) if i > start and next_id and next_id in path),
                len(writes))
    return list(range(start + 1, stop + 1))


def _assert_each_once(run_dir: Path, table: str, expected_ids):
    records = json.loads((run_dir / f"{table}.json").read_text())
    assert sorted(r["config_id"] for r in records) == sorted(expected_ids)
    assert all(r["status"] == "ok" for r in records)
    csv = pd.read_csv(run_dir / f"{table}.csv")
    assert sorted(csv["config_id"]) == sorted(expected_ids)
    groups = pd.read_csv(run_dir / GROUP_TABLE)
    mine = groups[groups["config_id"].isin(expected_ids)]
    assert set(mine["config_id"]) == set(expected_ids)
    assert not mine.duplicated(["config_id", "group", "metric"]).any()


def _ran(log: Path) -> list[str]:
    return [line.split(" ", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


# ----------------------------------------------------------------------------- kill at any write

def test_a_kill_right_after_each_write_of_a_commit_loses_nothing(tmp_path, monkeypatch):
    listing = _child(0, "fake", tmp_path / "listing",
                     env={"RUN_LOG": str(tmp_path / "listing.log")})
    assert listing.returncode == 0, listing.stderr
    writes = _writes(listing.stdout)
    points = _commit_writes(writes, FAKE_IDS[-1], None)  # the last: no later commit rebuilds
    # predictions, the commit file, then the three derived tables
    assert [Path(writes[k - 1]).name for k in points] == [
        "seed=0.csv.gz", "seed=0.json", "quantization_results.json", "quantization_results.csv",
        GROUP_TABLE]
    for kill_at in points:
        run_dir, log = tmp_path / f"kill{kill_at}", tmp_path / f"kill{kill_at}.log"
        killed = _child(kill_at, "fake", run_dir, env={"RUN_LOG": str(log)})
        assert killed.returncode == -signal.SIGKILL
        assert _writes(killed.stdout)[-1] == writes[kill_at - 1].replace("listing",
                                                                         f"kill{kill_at}")
        monkeypatch.setenv("RUN_LOG", str(log))
        with RunLock(run_dir):  # the killed holder's lock is taken over
            run_sweep(ResultStore(run_dir, "quantization_results"), helper.fake_units(),
                      execute=helper.execute_fake, progress=False)
        _assert_each_once(run_dir, "quantization_results", FAKE_IDS)
        ran = _ran(log)
        committed = kill_at > points[0]  # the commit file is the second write
        assert ran.count(FAKE_IDS[0]) == 1 and ran.count(FAKE_IDS[1]) == 1
        assert ran.count(FAKE_IDS[2]) == (1 if committed else 2), (kill_at, ran)


def _args(tmp_path, run_root, *extra):
    return ["--config", "configs/smoke.yaml", "--set", f"results_dir={run_root}",
            "--set", f"data.root={tmp_path / 'data'}", "--set", "runtime.latency_repeats=1",
            "--set", "runtime.latency_batch_sizes=[1]", *extra]


QUICK_GRID = ["--set",
              "quantization.methods=[{method: ptq_dynamic}, {method: ptq_static, bits: [w8a8]}]",
              "--set", "quantization.check_agreement=false", "--set",
              "analysis.bootstrap_resamples=20"]


@pytest.fixture(scope="module")
def baseline_folder(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("kill_cli")
    assert main.main(_args(tmp_path, tmp_path / "base", "--phase", "baseline")) == 0
    return tmp_path


def test_cli_killed_after_each_write_of_a_commit_then_rerun_has_every_config_once(baseline_folder):
    tmp_path = baseline_folder

    def fresh(name):
        shutil.copytree(tmp_path / "base", tmp_path / name)
        return tmp_path / name
    listing = _child(0, "main", *_args(tmp_path, fresh("listing"), "--phase", "quantization",
                                       "--log-level", "WARNING", *QUICK_GRID))
    assert listing.returncode == 0, listing.stderr
    table = json.loads((tmp_path / "listing" / "smoke" / "quantization_results.json").read_text())
    ids = [r["config_id"] for r in table]
    assert len(ids) == 2
    writes = _writes(listing.stdout)
    points = _commit_writes(writes, ids[1], None)
    assert len(points) == 5, writes
    for kill_at in points:
        root = fresh(f"kill{kill_at}")
        killed = _child(kill_at, "main", *_args(tmp_path, root, "--phase", "quantization",
                                                "--log-level", "WARNING", *QUICK_GRID))
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert _writes(killed.stdout)[-1] == writes[kill_at - 1].replace(
            f"{os.sep}listing{os.sep}", f"{os.sep}kill{kill_at}{os.sep}")  # killed where intended
        assert main.main(_args(tmp_path, root, "--phase", "quantization", *QUICK_GRID)) == 0
        assert main.main(_args(tmp_path, root, "--phase", "analysis", *QUICK_GRID)) == 0
        run_dir = root / "smoke"
        _assert_each_once(run_dir, "quantization_results", ids)
        stats = pd.read_csv(run_dir / "analysis" / "stats.csv")
        rows = stats[(stats["comparison"] == "config") & (stats["metric"] == "accuracy")]
        assert sorted(rows["config_id"]) == sorted(ids + ["synthetic/tiny_cnn/fp32/seed=0"])


# ---------------------------------------------------------------------------- one writer per folder

def test_two_processes_on_one_run_folder_lose_nothing_and_do_nothing_twice(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    env = {"RUN_LOG": str(log), "UNIT_SLEEP": "0.5"}
    first = _child(0, "fake", run_dir, env=env, wait=False)
    _wait_for_holder(run_dir, first.pid)
    second = _child(0, "fake", run_dir, env=env)
    first_out, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert second.returncode == 3
    assert f"in use by process {first.pid}" in second.stderr
    assert "--set run_name=NEW" in second.stderr
    assert sorted(_ran(log)) == sorted(FAKE_IDS)  # each configuration ran once, by the holder
    _assert_each_once(run_dir, "quantization_results", FAKE_IDS)


def _wait_for_holder(run_dir: Path, pid: int, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((run_dir / LOCK_FILE).read_text() or "{}").get("pid") == pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"process {pid} never took the lock of {run_dir}")


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog, monkeypatch):
    run_dir, log = tmp_path / "run", tmp_path / "run.log"
    holder = _child(0, "fake", run_dir, env={"RUN_LOG": str(log), "UNIT_SLEEP": "30"}, wait=False)
    _wait_for_holder(run_dir, holder.pid)
    with pytest.raises(RunFolderBusy, match=f"in use by process {holder.pid}"):
        RunLock(run_dir).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    monkeypatch.setenv("RUN_LOG", str(log))
    with RunLock(run_dir):
        run_sweep(ResultStore(run_dir, "quantization_results"), helper.fake_units(),
                      execute=helper.execute_fake, progress=False)
    assert f"took over the lock left by process {holder.pid}" in caplog.text
    _assert_each_once(run_dir, "quantization_results", FAKE_IDS)
    assert (run_dir / LOCK_FILE).read_text() == ""  # released cleanly: nothing to take over


def test_the_cli_refuses_a_run_folder_held_by_another_process(tmp_path, capsys):
    run_root = tmp_path / "results"
    with RunLock(run_root / "smoke"):
        code = main.main(_args(tmp_path, run_root, "--phase", "baseline"))
    assert code == 3
    err = capsys.readouterr().err
    assert f"in use by process {os.getpid()}" in err and "Traceback" not in err
    assert not (run_root / "smoke" / "config.yaml").exists()


STRESS_WRITER = """
import sys
import pandas as pd
from results import ResultStore
store = ResultStore(sys.argv[1], "quantization_results")
for i in range(int(sys.argv[3])):
    config_id = f"{sys.argv[2]}/{i}"
    store.add({"config_id": config_id, "status": "ok"},
              pd.DataFrame({"group": ["F", "M"], "metric": ["accuracy"] * 2, "value": [0.5, 0.6]}))
"""


def test_even_unlocked_writers_lose_no_commit(tmp_path):
    """Without the lock (a notebook using the store), two writers still keep every commit."""
    writers = [subprocess.Popen([sys.executable, "-c", STRESS_WRITER, str(tmp_path), name, "40"],
                                cwd=ROOT) for name in ("p1", "p2")]
    assert [w.wait(timeout=300) for w in writers] == [0, 0]
    store = ResultStore(tmp_path, "quantization_results")
    store.refresh()
    expected = [f"{name}/{i}" for name in ("p1", "p2") for i in range(40)]
    _assert_each_once(tmp_path, "quantization_results", expected)
    assert len(pd.read_csv(tmp_path / GROUP_TABLE)) == 2 * len(expected)
