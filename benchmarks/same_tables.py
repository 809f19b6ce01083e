"""Whether two run folders hold the same tables, apart from timing and paths.

    python -m benchmarks.same_tables /tmp/run_before /tmp/run_after

Compares every ``.csv``, ``.csv.gz`` and ``.json`` under the two folders (matched by their path
relative to each folder), cell by cell as written. Left out of the comparison: columns and keys
that measure time or the machine's load (``TIMING``), values derived from them (speedups, cost
ratios) and the folder's own path inside any text. Prints one line per file that differs (or is
in one folder only) and exits 1 when any does, else prints ``same`` with the count and exits 0.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import pandas as pd

SUFFIXES = (".csv", ".csv.gz", ".json")
TIMING = re.compile(r"latency|seconds|wall|time|_s$|_s_|speedup|load_avg|timestamp|cost_ratio"
                    r"|_ns$|cpu_shared|other_cores|fp32_reference_b|int8_form_b|latency_layout")
"""Names of columns and keys that hold timings, the load of the machine, or values chosen or
derived from timings (the fastest FP32 form, speedups, measured cost ratios)."""
TIMED_FACTS = re.compile(r"cost ratio")
"""Hypothesis facts (``{"name": ..., "value": ...}``) whose value is a measured cost ratio."""


def table_files(root: Path) -> dict[str, Path]:
    """Every compared file under ``root``, by its path relative to ``root``."""
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*"))
            if p.is_file() and p.name.endswith(SUFFIXES)}


def without_paths(text: str, root: Path) -> str:
    """``text`` with the run folder's own path written as ``<run>``."""
    return text.replace(str(root.resolve()), "<run>").replace(str(root), "<run>")


def csv_cells(path: Path, root: Path) -> pd.DataFrame:
    """A CSV's cells as written, without timing columns, paths replaced."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = frame[[c for c in frame.columns if not TIMING.search(str(c))]]
    return frame.map(lambda cell: without_paths(cell, root))


def json_value(value, root: Path):
    """A JSON value without timing keys or timed facts, paths replaced."""
    if isinstance(value, dict):
        if TIMED_FACTS.search(str(value.get("name", ""))) and "value" in value:
            value = {k: v for k, v in value.items() if k != "value"}
        return {k: json_value(v, root) for k, v in value.items() if not TIMING.search(str(k))}
    if isinstance(value, list):
        return [json_value(v, root) for v in value]
    if isinstance(value, str):
        return without_paths(value, root)
    return value


ABSENT = object()


def first_difference(old, new, where: str = "/") -> str | None:
    """The JSON path of the first place ``old`` and ``new`` differ, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys()):
            found = first_difference(old.get(key, ABSENT), new.get(key, ABSENT), f"{where}{key}/")
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            found = first_difference(a, b, f"{where}{i}/")
            if found is not None:
                return found
        return None
    return None if old == new else where


def difference(name: str, before: Path, after: Path, roots: tuple[Path, Path]) -> str:
    """Why the two files differ, or an empty string when they hold the same tables."""
    if name.endswith(".json"):
        old, new = (json_value(json.loads(path.read_text()), root)
                    for path, root in zip((before, after), roots))
        where = first_difference(old, new)
        return f"JSON differs at {where}" if where is not None else ""
    old, new = (csv_cells(p, r) for p, r in zip((before, after), roots))
    if list(old.columns) != list(new.columns):
        return f"columns differ: {sorted(set(old.columns) ^ set(new.columns))}"
    if old.shape != new.shape:
        return f"rows differ: {len(old)} vs {len(new)}"
    differs = [c for c in old.columns if not old[c].equals(new[c])]
    return f"values differ in columns {differs}" if differs else ""


def compare(before: Path, after: Path) -> list[str]:
    """One line per file that differs or exists in one folder only."""
    old, new = table_files(before), table_files(after)
    lines = [f"{name}: only in {before}" for name in sorted(old.keys() - new.keys())]
    lines += [f"{name}: only in {after}" for name in sorted(new.keys() - old.keys())]
    for name in sorted(old.keys() & new.keys()):
        why = difference(name, old[name], new[name], (before, after))
        if why:
            lines.append(f"{name}: {why}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    for folder in (args.before, args.after):
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
    lines = compare(args.before, args.after)
    print("\n".join(lines) if lines else
          f"same: {len(table_files(args.before))} tables, apart from timing and paths")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
