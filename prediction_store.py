"""The prediction tables of one run, each read once, and their pairs on ``sample_id``.

Every analysis room (``stats_tables``, ``hypotheses``, ``calibration_study``) pairs two
configurations' predictions through one ``PredictionStore``: ``table`` reads a configuration's
table (cached), ``pair`` aligns two on ``sample_id`` and checks that they cover the same samples
with the same labels (``fairness_metrics.aligned_reference``), naming both configurations when
they do not. Never runs a model.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

import fairness_metrics as fm
from results import load_predictions

UNPAIRED = "predictions of {order} (pred) and {config_id} (reference) cannot be paired: {why}"


@dataclass(frozen=True)
class PairedPredictions:
    """Two prediction tables on the same samples, row by row in the same order."""

    config_id: str
    reference_id: str
    predictions: pd.DataFrame
    reference: pd.DataFrame

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(y_true, y_pred, y_reference, groups)``: what a paired test reads."""
        return (self.predictions["y_true"].to_numpy(), self.predictions["y_pred"].to_numpy(),
                self.reference["y_pred"].to_numpy(), self.predictions["group"].to_numpy())


class PredictionStore:
    """Prediction tables by configuration id, read once through ``load(config_id)``; pairs of
    them aligned on ``sample_id`` and checked. Shared by every analysis room."""

    def __init__(self, load: Callable[[str], pd.DataFrame]):
        self._load = load
        self._tables: dict[str, pd.DataFrame] = {}

    @classmethod
    def of_run(cls, run_dir: str | Path) -> PredictionStore:
        """The store of a run folder's ``predictions/`` (``results.load_predictions``)."""
        return cls(functools.partial(load_predictions, Path(run_dir)))

    def table(self, config_id: str) -> pd.DataFrame:
        """The prediction table of ``config_id``, read on first use."""
        if config_id not in self._tables:
            self._tables[config_id] = self._load(config_id)
        return self._tables[config_id]

    def aligned(self, config_id: str, order: str) -> pd.DataFrame:
        """The table of ``config_id`` in the sample order of ``order``'s table, checked: same
        samples, same labels (a ValueError naming both otherwise)."""
        if config_id == order:
            return self.table(config_id)
        try:
            return fm.aligned_reference(self.table(order), self.table(config_id))
        except ValueError as error:
            raise ValueError(UNPAIRED.format(order=order, config_id=config_id,
                                             why=error)) from error

    def pair(self, config_id: str, reference_id: str, *,
             order: str | None = None) -> PairedPredictions:
        """``config_id`` and ``reference_id`` on the same samples, in the row order of ``order``'s
        table (default: ``config_id``'s own)."""
        order = config_id if order is None else order
        return PairedPredictions(config_id, reference_id, self.aligned(config_id, order),
                                 self.aligned(reference_id, order))
