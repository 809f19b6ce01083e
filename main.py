"""Beyond Naive Quantization: what compression does to group fairness.

    python main.py --phase all             # baseline → quantization → mitigation → analysis
    python main.py --phase quantization --set quantization.seeds=[0,1]
    python main.py --phase analysis --config configs/celeba_full.yaml

Each phase reads its inputs from ``results/<run_name>/`` and writes its outputs there; a rerun
skips finished configurations (``--force`` redoes them). One process at a time holds a run folder.
Exit codes: 0 done, 1 some configurations failed (recorded with their errors), 2 bad input (the
message says which and how to fix it), 3 the run folder is in use by another process.
"""
from __future__ import annotations

import cpu_policy  # noqa: F401  (first: libgomp reads OMP_WAIT_POLICY once, when torch loads)

import argparse
import logging
import sys

import config as config_module
import experiment
import profiling
import quiet_logs
from results import (
    DISK_FULL_ELSEWHERE,
    FULL_ERRNOS,
    ResultStore,
    RunFolderBusy,
    RunLock,
    refresh_tables,
    run_sweep,
)

PHASES = ("baseline", "quantization", "mitigation", "analysis")
log = logging.getLogger("main")


def run_baseline(ctx: experiment.Context, force: bool) -> int:
    return _sweep(ctx, "baseline", experiment.baseline_units(ctx, force), force)


def run_quantization(ctx: experiment.Context, force: bool) -> int:
    return _sweep(ctx, "quantization", experiment.quantization_units(ctx), force)


def run_mitigation(ctx: experiment.Context, force: bool) -> int:
    return _sweep(ctx, "mitigation", experiment.mitigation_units(ctx), force)


def _sweep(ctx: experiment.Context, phase: str, units, force: bool) -> int:
    """Run the units not done yet; returns how many failed (each is recorded with its error)."""
    store = _store(ctx, phase, units, force)
    counts = run_sweep(store, units, execute=experiment.execute, force=force, desc=phase,
                       progress=ctx.cfg.runtime.progress)
    return _report(store, counts)


def _store(ctx: experiment.Context, phase: str, units, force: bool) -> ResultStore:
    """The phase's result store, after the checks that stop it before any unit runs."""
    store = ResultStore(ctx.run_dir, f"{phase}_results")
    experiment.check_same_kernels(ctx.run_dir, store.records(), force)
    if force or {unit.config_id for unit in units} - store.done_ids():
        ctx.splits  # load the data first: a missing or malformed dataset stops the phase here
    return store


def _report(store: ResultStore, counts: dict) -> int:
    if counts["failed"]:
        log.error("%d configuration(s) failed; their errors are in %s (column 'error'); a rerun "
                  "retries them", counts["failed"], store.csv_path)
    return counts["failed"]


SWEEP_UNITS = {"baseline": experiment.baseline_units, "quantization": experiment.quantization_units,
               "mitigation": experiment.mitigation_units}


def _sweep_on_ray(ctx: experiment.Context, phases: list[str], force: bool) -> int:
    """The sweep phases as one Ray schedule: a unit starts as soon as what it needs exists."""
    import executors  # the only path that imports ray

    log.info("phases %s on Ray → %s", "+".join(phases), ctx.run_dir)
    sweeps, check = [], "baseline" not in phases  # else the baselines come in this schedule
    for phase in phases:
        listed = SWEEP_UNITS[phase]
        units = listed(ctx, force) if phase == "baseline" else listed(ctx, check=check)
        sweeps.append((_store(ctx, phase, units, force), units))
    counts = executors.run_on_ray(sweeps, ctx.cfg.runtime, force=force, desc="+".join(phases),
                                  progress=ctx.cfg.runtime.progress)
    return sum(_report(store, count) for (store, _), count in zip(sweeps, counts))


def run_analysis(ctx: experiment.Context, force: bool) -> int:
    import analysis
    refresh_tables(ctx.run_dir)  # tables left stale by a killed run hold every commit again
    settings = ctx.cfg.analysis
    outputs = analysis.run_analysis(ctx.run_dir, n_resamples=settings.bootstrap_resamples,
                                    alpha=settings.alpha, seed=ctx.cfg.seed, ci=settings.ci,
                                    min_group_size=settings.min_group_size,
                                    progress=ctx.cfg.runtime.progress,
                                    size_budgets_mib=settings.size_budgets_mib,
                                    fairness_tolerance=settings.fairness_tolerance)
    log.info("analysis: %d files in %s; start with %s", len(outputs), ctx.run_dir / "analysis",
             outputs["report.md"])
    return 0


PHASE_FUNCTIONS = {"baseline": run_baseline, "quantization": run_quantization,
                   "mitigation": run_mitigation, "analysis": run_analysis}


def run_phases(ctx: experiment.Context, phases, force: bool) -> int:
    """Run ``phases`` in order; returns how many configurations failed. With
    ``runtime.executor: ray`` the sweep phases run together on Ray, then analysis here."""
    on_ray = [p for p in phases if p in SWEEP_UNITS] if ctx.cfg.runtime.executor == "ray" else []
    failed = _sweep_on_ray(ctx, on_ray, force) if on_ray else 0
    for phase in phases:
        if phase not in on_ray:
            log.info("phase %s → %s", phase, ctx.run_dir)
            failed += PHASE_FUNCTIONS[phase](ctx, force)
    return failed


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=PHASES + ("all",), default="all")
    parser.add_argument("--config", default="configs/config.yaml", help="YAML experiment config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set training.epochs=2 (repeatable)")
    parser.add_argument("--force", action="store_true", help="redo configurations already done")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    repeats = quiet_logs.install()  # a repeated message is logged once, counted at the end
    try:
        cfg = config_module.load_config(args.config, args.set)
        experiment.check_config(cfg)  # validate everything before anything is written
        phases = PHASES if args.phase == "all" else (args.phase,)
        ctx = experiment.Context(cfg)
        if set(phases) & set(SWEEP_UNITS):
            ctx.splits  # the data too: a bad manifest row stops the run before any write
        with RunLock(cfg.run_dir):
            experiment.save_run_config(cfg)
            failed = run_phases(ctx, phases, args.force)
            profiling.log_table()
    except RunFolderBusy as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk met outside the atomic writes (e.g. a figure)
        if error.errno not in FULL_ERRNOS:
            raise
        where = error.filename or "a file of the run folder"
        print(f"error: {DISK_FULL_ELSEWHERE.format(path=where, reason=error.strerror)}",
              file=sys.stderr)
        return 2
    finally:
        repeats.finish()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
