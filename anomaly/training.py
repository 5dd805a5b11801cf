"""Training: split normal rows, fit preprocessing and the density model, calibrate, evaluate."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anomaly import __version__, models
from anomaly.calibration import Calibrator
from anomaly.config import Config
from anomaly.detector import Detector
from anomaly.io import expand, iter_chunks, read_table, shown
from anomaly.neighbours import NormalIndex
from anomaly.preprocessing import Prepared, Preprocessor
from anomaly.profile import feature_profile

#: the label column of labelled evaluation data
LABEL = "is_anomaly"
#: training rows scored for the train_log_likelihood metric
TRAIN_SAMPLE = 2_000
#: held-out rows needed for the sample-quality metrics (``sample_*``)
SAMPLE_CHECK_MIN_ROWS = 10

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """A fitted detector, its metrics, and the held-out rows' log-likelihoods."""

    detector: Detector
    metrics: dict[str, float]
    heldout_log_likelihood: np.ndarray = field(repr=False)
    #: kind ``auto`` only: the chosen kind and each candidate's held-out log-likelihood
    #: (:attr:`anomaly.models.auto.Auto.selection_`)
    selection: dict[str, Any] | None = None


def split_rows(n: int, calibration: float, test: float, seed: int) -> list[np.ndarray]:
    """Seeded (train, calibration, test) index arrays of ``n`` rows."""
    order = np.random.default_rng(seed).permutation(n)
    n_cal, n_test = round(calibration * n), round(test * n)
    if n - n_cal - n_test < 2 or n_cal < 1:
        msg = f"{n} rows are too few to split into training, calibration and test rows"
        raise ValueError(msg)
    return [order[n_cal + n_test :], order[:n_cal], order[n_cal : n_cal + n_test]]


def model_for(config: Config) -> models.DensityModel:
    """The config's model, unfitted, its parameters checked: a bad one raises
    :class:`~anomaly.models.InvalidParameterError` (a ValueError) before any data is read."""
    model = models.create(config.model.kind, seed=config.model.seed, **config.model.params)
    model.validate_parameters()
    return model


def check_training_files(config: Config) -> None:
    """Raise before any fitting when a file of ``data.train`` or ``data.evaluation`` is missing
    or lacks a column of the feature spec (reads each file's first row only)."""
    pre = Preprocessor(config.features)
    sources = [("training data", config.data.train), ("evaluation data", config.data.evaluation)]
    for what, pattern in sources:
        for path in expand(pattern) if pattern else []:
            first = next(iter_chunks(path, 1), None)
            if first is not None:  # an empty file: reading it says so
                pre.check_schema(list(first.columns), f"{what} {shown(path)}")


def train(
    config: Config, data: pd.DataFrame | None = None, labelled: pd.DataFrame | None = None
) -> TrainResult:
    """Fit a detector on normal rows (``data`` or the config's ``data.train``) and evaluate
    it on ``labelled`` rows (default: the config's ``data.evaluation``, if any)."""
    model = model_for(config)
    df = read_table(config.data.train) if data is None else data
    train_idx, cal_idx, test_idx = split_rows(
        len(df), config.split.calibration, config.split.test, config.model.seed
    )
    pre = Preprocessor(config.features).fit(df.iloc[train_idx])
    parts = [pre.transform(df.iloc[idx]) for idx in (train_idx, cal_idx, test_idx)]
    n_quarantined = sum(len(p.quarantined) for p in parts)
    if n_quarantined:
        logger.warning("%d training rows quarantined (not used)", n_quarantined)
    fit_part, cal_part, test_part = parts
    start = time.perf_counter()
    model.fit(fit_part.X, layout=pre.layout_, context=fit_part.context)
    fit_seconds = time.perf_counter() - start
    cal_ll = model.log_prob(cal_part.X, context=cal_part.context) + cal_part.log_det
    calibrator = Calibrator(
        rule=config.calibration.rule,
        alpha=config.calibration.alpha,
        shift_pvalue=config.calibration.shift_pvalue,
    ).fit(-cal_ll)
    test_ll = model.log_prob(test_part.X, context=test_part.context) + test_part.log_det
    metadata: dict[str, Any] = {
        "name": config.name,
        "kind": config.model.kind,
        "anomaly_version": __version__,
        "trained_at": pd.Timestamp.now(tz="UTC").isoformat(),
        "profile": feature_profile(df.iloc[train_idx], config.features),  # for reviewers
    }
    detector = Detector(pre, model, calibrator, metadata)
    fit_raw = df.iloc[train_idx].reset_index(drop=True).iloc[fit_part.scored.index]
    columns = [*config.features.numeric, *config.features.categorical]
    detector.neighbours = NormalIndex.build(fit_part.X, fit_raw[columns], config.model.seed)
    metrics = {
        "rows_train": float(len(fit_part.X)),
        "rows_calibration": float(len(cal_ll)),
        "rows_test": float(len(test_ll)),
        "rows_quarantined": float(n_quarantined),
        "fit_seconds": fit_seconds,
        "calibration_threshold": float(calibrator.threshold_),
        "train_log_likelihood": _mean_log_likelihood(model, fit_part, config.model.seed),
    }
    if len(test_ll):
        p = calibrator.p_values(-test_ll)
        metrics["heldout_log_likelihood"] = float(test_ll.mean())
        metrics["heldout_fpr"] = float(calibrator.flag(p).mean())
    if len(test_ll) >= SAMPLE_CHECK_MIN_ROWS:  # samples vs held-out rows (sample_check.py)
        from anomaly.sample_check import sample_quality  # scikit-learn loads only here

        logger.info("checking the model's samples against %d held-out rows", len(test_ll))
        heldout = df.iloc[test_idx].reset_index(drop=True).iloc[test_part.scored.index]
        metrics.update(sample_quality(model, pre, heldout, seed=config.model.seed))
    if labelled is None and config.data.evaluation:
        labelled = read_table(config.data.evaluation)
    if labelled is not None:
        logger.info("evaluating on %d labelled rows", len(labelled))
        metrics.update(evaluate(detector, labelled))
    selection = model.selection_ if config.model.kind == "auto" else None
    return TrainResult(detector, metrics, test_ll, selection)


def _mean_log_likelihood(model: models.DensityModel, part: Prepared, seed: int) -> float:
    """Mean log-likelihood of at most TRAIN_SAMPLE rows (beside the held-out mean it shows
    overfitting; scoring every training row would cost kernel models as much as fitting)."""
    rows = np.random.default_rng(seed).permutation(len(part.X))[:TRAIN_SAMPLE]
    context = None if part.context is None else part.context[rows]
    return float(np.mean(model.log_prob(part.X[rows], context=context) + part.log_det[rows]))


def evaluate(detector: Detector, labelled: pd.DataFrame) -> dict[str, float]:
    """Detection metrics on labelled rows (a boolean ``is_anomaly`` column).

    AUROC and average precision rank rows by −log-likelihood; recall and FPR are those of the
    detector's flag rule. Quarantined rows are left out and counted.
    """
    if LABEL not in labelled:
        msg = f"labelled evaluation data needs a boolean {LABEL!r} column"
        raise ValueError(msg)
    truth = labelled[LABEL].astype(bool).to_numpy()
    scored = detector.predict(labelled)
    ok = ~scored["quarantined"].to_numpy()
    y, score = truth[ok], -scored["log_likelihood"].to_numpy()[ok]
    flags = scored["is_anomaly"].to_numpy()[ok].astype(bool)
    metrics = {"eval_rows": float(ok.sum()), "eval_quarantined": float((~ok).sum())}
    if 0 < y.sum() < len(y):
        from sklearn.metrics import average_precision_score, roc_auc_score

        metrics |= {
            "eval_auroc": float(roc_auc_score(y, score)),
            "eval_auprc": float(average_precision_score(y, score)),
            "eval_recall": float(flags[y].mean()),
            "eval_fpr": float(flags[~y].mean()),
        }
    return metrics
