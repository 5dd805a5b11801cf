"""The code file MLflow stores with each model ("models from code"): no pickled object."""

import mlflow

from anomaly.pyfunc import DetectorModel

mlflow.models.set_model(DetectorModel())
