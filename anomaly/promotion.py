"""The promotion gate: compare a challenger with the champion on the same labelled data."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from anomaly import registry
from anomaly.config import Config
from anomaly.detector import Detector
from anomaly.io import read_table
from anomaly.store import model_labels
from anomaly.tracking import client
from anomaly.training import LABEL, evaluate


@dataclass(frozen=True)
class Decision:
    """Whether to promote, why, and the numbers behind it."""

    promote: bool
    reasons: list[str]
    challenger: dict[str, float] = field(default_factory=dict)
    champion: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs and the alias history."""
        verdict = "promote" if self.promote else "keep champion"
        return f"{verdict}: " + "; ".join(self.reasons)


#: review labels that make a record labelled data (``unsure`` does not)
REVIEW_LABELS = ("confirmed", "false_positive")


def evaluation_data(config: Config, reviewed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Labelled rows: the config's ``data.evaluation`` plus reviewed records from the store
    (confirmed → anomaly, false positive → normal; unsure ones are left out)."""
    frames = []
    if config.data.evaluation:
        frames.append(read_table(config.data.evaluation))
    if reviewed is not None and len(reviewed):
        known = reviewed[reviewed["label"].isin(REVIEW_LABELS)]
        if len(known):
            rows = pd.DataFrame(list(known["values"]))
            rows[LABEL] = (known["label"] == "confirmed").to_numpy()
            frames.append(rows)
    if not frames:
        msg = "no labelled evaluation data: set data.evaluation or review some flagged records"
        raise ValueError(msg)
    return pd.concat(frames, ignore_index=True)


def measure(detector: Detector, labelled: pd.DataFrame) -> dict[str, float]:
    """Detection metrics plus the mean log-likelihood of the labelled normal rows."""
    metrics = evaluate(detector, labelled)
    normal = labelled[~labelled[LABEL].astype(bool)]
    ll, _ = detector.log_likelihood(normal)
    metrics["eval_normal_log_likelihood"] = float(np.mean(ll)) if len(ll) else float("nan")
    return metrics


def decide(
    config: Config, challenger: dict[str, float], champion: dict[str, float] | None
) -> Decision:
    """Apply ``config.promotion``'s rules; with no champion the challenger wins."""
    if champion is None:
        return Decision(True, ["first model: no champion to compare with"], challenger, {})
    rules = config.promotion
    alpha = config.calibration.alpha
    checks: list[tuple[bool, str]] = []
    ll_new, ll_old = (
        challenger["eval_normal_log_likelihood"],
        champion["eval_normal_log_likelihood"],
    )
    checks.append(
        (
            ll_new >= ll_old - rules.max_loglik_drop,
            f"log-likelihood {ll_new:.4f} vs {ll_old:.4f} (may drop ≤ {rules.max_loglik_drop})",
        )
    )
    if "eval_auroc" in challenger and "eval_auroc" in champion:
        new, old = challenger["eval_auroc"], champion["eval_auroc"]
        checks.append((new >= old - rules.max_auroc_drop, f"AUROC {new:.4f} vs {old:.4f}"))
    if "eval_fpr" in challenger:
        fpr = challenger["eval_fpr"]
        bound = rules.max_fpr_ratio * alpha
        checks.append((fpr <= bound, f"FPR {fpr:.4f} (≤ {bound:.4f})"))
    failed = [text for ok, text in checks if not ok]
    passed = [text for ok, text in checks if ok]
    reasons = [f"fails {t}" for t in failed] or [f"passes {t}" for t in passed]
    return Decision(not failed, reasons, challenger, champion)


@dataclass(frozen=True)
class GateResult:
    """What :func:`run_gate` did: the versions compared, the decision, whether aliases moved."""

    challenger: str
    champion: str | None  #: the champion before the gate ran
    decision: Decision
    promoted: bool
    dry_run: bool = False


def run_gate(
    config: Config, reviewed: pd.DataFrame | None = None, dry_run: bool = False
) -> GateResult:
    """The promotion job: compare ``challenger`` with ``champion`` on the same labelled data
    (:func:`evaluation_data`), apply :func:`decide`, move the aliases if it says promote
    (champion → previous), and tag the challenger version with the decision and its numbers.

    ``reviewed``: the store's current labels (read from the store if None). ``dry_run``:
    decide, move and tag nothing.
    """
    challenger = registry.alias_version(config, registry.CHALLENGER)
    champion = registry.alias_version(config, registry.CHAMPION)
    if challenger is None:
        msg = f"model {config.name!r} has no challenger: run the train flow first"
        raise registry.RegistryError(msg)
    if challenger == champion:
        decision = Decision(False, [f"v{challenger} is already the champion"])
    elif champion is None:
        decision = decide(config, {}, None)
    else:
        if reviewed is None:
            reviewed = model_labels(config)
        labelled = evaluation_data(config, reviewed)
        decision = decide(
            config,
            measure(registry.load_detector(config, challenger)[0], labelled),
            measure(registry.load_detector(config, champion)[0], labelled),
        )
    if dry_run:
        return GateResult(challenger, champion, decision, promoted=False, dry_run=True)
    if decision.promote:
        registry.promote(config, challenger, decision.summary())
    c = client(config)
    c.set_model_version_tag(config.name, challenger, "promotion.decision", decision.summary())
    for key, value in decision.challenger.items():
        c.set_model_version_tag(config.name, challenger, f"promotion.{key}", f"{value:.6g}")
    return GateResult(challenger, champion, decision, promoted=decision.promote)
