"""implicitvi: implicit variational inference for NumPyro, with score estimation in JAX."""

from implicitvi import (
    datasets,
    diagnostics,
    entropy,
    estimators,
    evaluation,
    infer,
    kernels,
    nets,
    objectives,
    score_model,
)
from implicitvi.estimators import estimate_score

__version__ = "0.1.0"

__all__ = [
    "datasets",
    "diagnostics",
    "entropy",
    "estimate_score",
    "estimators",
    "evaluation",
    "infer",
    "kernels",
    "nets",
    "objectives",
    "score_model",
]
