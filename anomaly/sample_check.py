"""Does the model generate data like the normal data? Samples against held-out normal rows.

A density that has collapsed or missed a mode can still score held-out rows reasonably; its
samples show it. Three checks, all in raw units (samples go through the preprocessor's
inverse transform):

Samples of a numeric column whose held-out values are all integers are rounded first (a
continuous density cannot produce integers, and the classifier would only see that).

* ``sample_c2st_auroc``: a classifier two-sample test — a gradient-boosted classifier, with
  cross-validation, tries to tell samples from held-out rows; its AUROC is 0.5 when they are
  indistinguishable and near 1 when the samples are obviously wrong;
* ``sample_ks_<column>`` (numeric) and ``sample_tv_<column>`` (categorical): the
  Kolmogorov–Smirnov statistic and the total-variation distance of each marginal, with their
  maxima ``sample_ks_max`` and ``sample_tv_max``;
* ``sample_corr_max_diff``: the largest absolute difference between the two rank (Spearman)
  correlation matrices (numeric columns and category indicators).

Rows are capped (``max_rows`` of each) so the check costs a few seconds at training time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp, rankdata
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from threadpoolctl import threadpool_limits

from anomaly.models.base import DensityModel
from anomaly.preprocessing import Preprocessor

#: rows of each side compared (samples and held-out rows)
MAX_ROWS = 2_000


def sample_quality(
    model: DensityModel,
    preprocessor: Preprocessor,
    heldout: pd.DataFrame,
    max_rows: int = MAX_ROWS,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics comparing ``model``'s samples with ``heldout`` raw normal rows (module doc)."""
    n = min(max_rows, len(heldout))
    if n < 10:
        msg = f"the sample check needs at least 10 held-out rows, got {len(heldout)}"
        raise ValueError(msg)
    real = heldout.sample(n, random_state=seed) if len(heldout) > n else heldout
    f = preprocessor.features
    context = preprocessor.transform(real).context if f.context else None
    if context is None:
        fake = preprocessor.inverse_transform(model.sample(n, seed=seed))
    else:  # sample x given each held-out row's own context, and compare the pairs
        fake = preprocessor.inverse_transform(model.sample(n, seed=seed, context=context))
        for col in f.context:
            fake[col] = real[col].to_numpy()
    for col in f.numeric:  # integer-valued columns: compare like with like
        fake[col] = np.nan_to_num(fake[col].to_numpy(np.float64))  # a wild sample stays finite
        values = real[col].to_numpy(np.float64)
        if np.array_equal(values, np.round(values)):
            fake[col] = np.round(fake[col])
    given = [c for c in f.context if preprocessor.context_kinds_[c] == "numeric"]
    given_categorical = [c for c in f.context if c not in given]
    return compare(
        real, fake, f.numeric, f.categorical, seed=seed, given=(given, given_categorical)
    )


def compare(
    real: pd.DataFrame,
    fake: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    seed: int = 0,
    given: tuple[list[str], list[str]] = ([], []),
) -> dict[str, float]:
    """Two-sample metrics of two raw frames over the given columns.

    ``given``: (numeric, categorical) context columns, equal in both frames: the classifier
    sees them (so it judges x given its context); the marginal metrics leave them out.
    """
    both_numeric, both_categorical = [*numeric, *given[0]], [*categorical, *given[1]]
    metrics: dict[str, float] = {
        "sample_c2st_auroc": c2st_auroc(real, fake, both_numeric, both_categorical, seed=seed)
    }
    ks = {
        c: float(ks_2samp(real[c].astype(float), fake[c].astype(float), method="asymp").statistic)
        for c in numeric
    }
    tv = {c: _total_variation(real[c], fake[c]) for c in categorical}
    metrics |= {f"sample_ks_{c}": v for c, v in ks.items()}
    metrics |= {f"sample_tv_{c}": v for c, v in tv.items()}
    if ks:
        metrics["sample_ks_max"] = max(ks.values())
    if tv:
        metrics["sample_tv_max"] = max(tv.values())
    a, b = _indicators(real, fake, numeric, categorical)
    if a.shape[1] > 1:
        metrics["sample_corr_max_diff"] = float(np.abs(_corr(a) - _corr(b)).max())
    return metrics


def c2st_auroc(
    real: pd.DataFrame,
    fake: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    seed: int = 0,
) -> float:
    """Cross-validated AUROC of a classifier telling ``fake`` rows from ``real`` ones."""
    both = pd.concat([real[numeric + categorical], fake[numeric + categorical]], ignore_index=True)
    codes = {c: pd.Categorical(both[c].astype(str)).codes for c in categorical}
    X = np.column_stack(
        [both[c].to_numpy(np.float64) for c in numeric] + [codes[c] for c in categorical]
    )
    y = np.r_[np.zeros(len(real)), np.ones(len(fake))]
    clf = HistGradientBoostingClassifier(
        max_iter=100,
        learning_rate=0.1,
        categorical_features=np.arange(len(numeric), X.shape[1]) if categorical else None,
        random_state=seed,
    )
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    with threadpool_limits(1):  # small data: OpenMP threads only contend with the training run
        p = cross_val_predict(clf, X, y, cv=folds, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def _total_variation(a: pd.Series, b: pd.Series) -> float:
    pa = a.astype(str).value_counts(normalize=True)
    pb = b.astype(str).value_counts(normalize=True)
    return float(pa.sub(pb, fill_value=0).abs().sum() / 2)


def _indicators(
    real: pd.DataFrame, fake: pd.DataFrame, numeric: list[str], categorical: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Numeric columns plus one indicator per category seen in ``real``."""

    def encode(df: pd.DataFrame) -> np.ndarray:
        cols = [df[c].to_numpy(np.float64) for c in numeric]
        for c in categorical:
            values = df[c].astype(str).to_numpy()
            cols += [(values == v).astype(np.float64) for v in sorted(real[c].astype(str).unique())]
        return np.column_stack(cols) if cols else np.zeros((len(df), 0))

    return encode(real), encode(fake)


def _corr(a: np.ndarray) -> np.ndarray:
    """Spearman (rank) correlations, robust to heavy tails; a constant column correlates 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(rankdata(a, axis=0), rowvar=False)
    return np.nan_to_num(np.atleast_2d(c))
