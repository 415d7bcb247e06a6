"""NumPyro integration: implicit guide sites, the implicit-aware ELBO, implicit and semi-implicit autoguides, and
minibatch training with checkpoints."""

from implicitvi.infer.autoguide import AutoImplicit
from implicitvi.infer.elbo import ImplicitELBO
from implicitvi.infer.nonfinite import floating_point_errors
from implicitvi.infer.primitives import implicit_sample, shared_prng_key
from implicitvi.infer.score_quality import ScoreCheck, score_check
from implicitvi.infer.semi_implicit import AutoSemiImplicit, mixture_score
from implicitvi.infer.training import (
    TrainResult,
    load_checkpoint,
    run_minibatch,
    save_checkpoint,
)

__all__ = [
    "AutoImplicit",
    "AutoSemiImplicit",
    "ImplicitELBO",
    "ScoreCheck",
    "TrainResult",
    "floating_point_errors",
    "implicit_sample",
    "load_checkpoint",
    "mixture_score",
    "run_minibatch",
    "save_checkpoint",
    "score_check",
    "shared_prng_key",
]
