"""The detector as an MLflow pyfunc model, logged as "models from code" so nothing is pickled.

The model's code is :mod:`anomaly.pyfunc_entry`; its one artifact is the detector folder
(JSON + numpy arrays). ``predict(DataFrame)`` returns one row per input row with
``log_likelihood``, ``p_value``, ``is_anomaly``, ``reason``, ``quarantined`` and
``contributions`` (a JSON list of the features to blame, for flagged rows; see
:mod:`anomaly.explain`).
"""

from __future__ import annotations

import json
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types.schema import AnyType, ColSpec, Schema

from anomaly import integrity
from anomaly.detector import Detector
from anomaly.explain import explain
from anomaly.schema import input_example

#: what the served model needs; pinned to this environment's versions
REQUIREMENTS = ("torch", "numpy", "scipy", "pandas", "scikit-learn", "pyarrow", "zuko", "mlflow")


class DetectorModel(PythonModel):
    """pyfunc wrapper: loads the detector once, scores DataFrames."""

    def load_context(self, context: PythonModelContext) -> None:
        """Check the detector folder against the hashes it was logged with, then load it (no
        pickle)."""
        folder = Path(context.artifacts["detector"])
        expected = (context.model_config or {}).get("sha256", {})
        integrity.verify(folder, expected, "the detector artifact")
        self.detector = Detector.load(folder)

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: Any = None
    ) -> pd.DataFrame:
        """Score ``model_input``: one output row per input row."""
        return predict_explained(self.detector, pd.DataFrame(model_input))


def predict_explained(detector: Detector, df: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """``detector.predict`` plus ``contributions``: a JSON list (see :func:`explain`) for
    flagged rows, ``"[]"`` for the others and for quarantined rows."""
    out = detector.predict(df)
    out["contributions"] = "[]"
    flagged = np.flatnonzero(out["is_anomaly"].to_numpy(bool) & ~out["quarantined"].to_numpy(bool))
    if len(flagged):
        explained = explain(detector, df.iloc[flagged].reset_index(drop=True), top=top)
        out.loc[flagged, "contributions"] = [json.dumps(e) for e in explained]
    return out


def pip_requirements() -> list[str]:
    """Explicit requirements (no slow inference; inference also leaves torch out)."""
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def signature(detector: Detector, example: pd.DataFrame) -> ModelSignature:
    """The record's columns (:func:`anomaly.schema.record_columns`) in, the scores out.

    Input columns are typed ``Any``: the detector validates values itself, so a string in a
    numeric column quarantines that row with a reason instead of failing the whole request.
    """
    inputs = Schema([ColSpec(AnyType(), name) for name in example.columns])
    outputs = infer_signature(example, predict_explained(detector, example)).outputs
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_detector(detector: Detector, data: pd.DataFrame) -> ModelInfo:
    """Log ``detector`` as a pyfunc in the active run; ``data`` gives the input example."""
    example = input_example(detector.preprocessor.features, data)
    with tempfile.TemporaryDirectory() as tmp:
        folder = detector.save(Path(tmp) / "detector")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={"detector": str(folder)},
            model_config={"sha256": integrity.file_hashes(folder)},
            signature=signature(detector, example),
            input_example=example,
            pip_requirements=pip_requirements(),
        )
