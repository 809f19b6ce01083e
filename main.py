"""Beyond Naive Quantization: what compression does to group fairness.

    python main.py --phase all                       # baseline → quantization → mitigation → analysis
    python main.py --phase quantization --set quantization.seeds=[0,1]
    python main.py --phase analysis --config configs/celeba_full.yaml

Each phase reads its inputs from ``results/<run_name>/`` and writes its outputs there; a rerun
skips finished configurations (``--force`` redoes them).
"""
from __future__ import annotations

import argparse
import logging
import sys

import config as config_module
import experiment
from results import ResultStore, run_sweep

PHASES = ("baseline", "quantization", "mitigation", "analysis")
log = logging.getLogger("main")


def run_baseline(ctx: experiment.Context, force: bool) -> None:
    _sweep(ctx, "baseline_results", experiment.baseline_units(ctx, force), force)


def run_quantization(ctx: experiment.Context, force: bool) -> None:
    _sweep(ctx, "quantization_results", experiment.quantization_units(ctx), force)


def run_mitigation(ctx: experiment.Context, force: bool) -> None:
    _sweep(ctx, "mitigation_results", experiment.mitigation_units(ctx), force)


def _sweep(ctx: experiment.Context, table: str, units, force: bool) -> None:
    run_sweep(ResultStore(ctx.run_dir, table), units, force=force,
              desc=table.removesuffix("_results"), progress=ctx.cfg.runtime.progress)


def run_analysis(ctx: experiment.Context, force: bool) -> None:
    import analysis
    settings = ctx.cfg.analysis
    outputs = analysis.run_analysis(ctx.run_dir, n_resamples=settings.bootstrap_resamples,
                                    alpha=settings.alpha, seed=ctx.cfg.seed, ci=settings.ci,
                                    min_group_size=settings.min_group_size,
                                    progress=ctx.cfg.runtime.progress,
                                    size_budgets_mib=settings.size_budgets_mib,
                                    fairness_tolerance=settings.fairness_tolerance)
    log.info("analysis: %d files in %s; start with %s", len(outputs), ctx.run_dir / "analysis",
             outputs["report.md"])


PHASE_FUNCTIONS = {"baseline": run_baseline, "quantization": run_quantization,
                   "mitigation": run_mitigation, "analysis": run_analysis}


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
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_module.load_config(args.config, args.set)
        experiment.save_run_config(cfg)
        ctx = experiment.Context(cfg)
        for phase in PHASES if args.phase == "all" else (args.phase,):
            log.info("phase %s → %s", phase, cfg.run_dir)
            PHASE_FUNCTIONS[phase](ctx, args.force)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
