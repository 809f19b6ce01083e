"""The report a new user reads, on a real smoke run (configs/smoke.yaml, whose FP32 model is at
chance): report.html is one self-contained file whose first section says why nothing can be
recommended ("chance"), report.md says so in its first 30 lines, and the run's log states a
repeated message once, with its count."""
import logging
import re
from html.parser import HTMLParser

import pytest

import main
from test_analysis import _first_section, external_references


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report_smoke")
    handler, root = Lines(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        code = main.main(["--config", "configs/smoke.yaml", "--phase", "all",
                          "--set", f"results_dir={tmp_path / 'results'}",
                          "--set", f"data.root={tmp_path / 'data'}"])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert code == 0
    return tmp_path / "results" / "smoke" / "analysis", handler.lines


def test_a_chance_level_run_says_chance_first(smoke):
    folder, _ = smoke
    head = "\n".join((folder / "report.md").read_text().splitlines()[:30])
    assert "Nothing can be recommended, because the FP32 model is at chance" in head
    assert "SYNTHETIC DATA" in head
    first = _first_section((folder / "report.html").read_text())
    assert "Nothing can be recommended" in first and "chance" in first and "SYNTHETIC" in first


def test_report_html_parses_and_points_nowhere_outside_itself(smoke):
    folder, _ = smoke
    page = (folder / "report.html").read_text()
    parser = HTMLParser()
    parser.feed(page)
    parser.close()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not external_references(page)
    assert "<details><summary>config.yaml" in page
    assert (folder / "report.html").stat().st_size < 5 * 2 ** 20


def test_the_smoke_log_states_a_repeated_message_once_with_its_count(smoke):
    _, lines = smoke
    below = [line for line in lines
             if "groups below 10 samples" in line and "quiet_logs" not in line]
    assert len(below) == 1, below
    counts = [line for line in lines if re.search(r"of fairness_metrics first logged at .* "
                                                  r"occurred \d+ times in this run", line)]
    assert len(counts) == 1 and int(re.search(r"occurred (\d+) times", counts[0]).group(1)) > 1
    # no line twice
    assert len(lines) == len(set(lines)), [line for line in set(lines) if lines.count(line) > 1]
