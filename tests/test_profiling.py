import cpu_policy

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import profiling

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def empty_profile():
    profiling.reset()
    yield
    profiling.reset()


def test_steps_accumulate_seconds_and_calls_per_name_even_when_the_block_raises():
    for _ in range(3):
        with profiling.step("training_step"):
            pass
    with pytest.raises(RuntimeError):
        with profiling.step("calibration"):
            raise RuntimeError("boom")
    rows = {row["step"]: row for row in profiling.table()}
    assert rows["training_step"]["count"] == 3 and rows["calibration"]["count"] == 1
    assert all(row["seconds"] >= 0 for row in rows.values())


def test_table_puts_the_most_time_first_and_reset_empties_it():
    profiling._totals.update({"small": [1.0, 1], "large": [5.0, 2]})
    assert [row["step"] for row in profiling.table()] == ["large", "small"]
    assert "large" in profiling.format_table(profiling.table()).splitlines()[0]
    profiling.reset()
    assert profiling.table() == [] and profiling.log_table() == ""


def test_the_table_is_written_at_exit_when_the_environment_names_a_file(tmp_path):
    target = tmp_path / "profile.json"
    code = "import profiling\nwith profiling.step('prediction'): pass\n"
    env = {**os.environ, profiling.PROFILE_ENV: str(target)}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    rows = json.loads(target.read_text())
    assert [(row["step"], row["count"]) for row in rows] == [("prediction", 1)]


def test_cpu_policy_sets_passive_waiting_only_where_the_user_set_nothing():
    environ = {}
    assert cpu_policy.apply(environ) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert environ["OMP_WAIT_POLICY"] == "PASSIVE"
    users = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert cpu_policy.apply(users) == {} and users == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_importing_cpu_policy_keeps_a_users_setting_in_the_process():
    code = "import cpu_policy, os\nprint(os.environ['OMP_WAIT_POLICY'])"
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        env.update({} if given is None else {"OMP_WAIT_POLICY": given})
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        assert out == expected
