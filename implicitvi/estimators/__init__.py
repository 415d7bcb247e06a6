"""Score estimators behind one ``init/update/score`` interface (see :mod:`.base`)."""

from implicitvi.estimators.base import ScoreEstimator, estimate_score, get_estimator, state_matches
from implicitvi.estimators.network import ScoreNet, ScoreNetState
from implicitvi.estimators.spectral import SSGE, SSGEState
from implicitvi.estimators.stein import Stein, SteinState

__all__ = [
    "SSGE",
    "SSGEState",
    "ScoreEstimator",
    "ScoreNet",
    "ScoreNetState",
    "Stein",
    "SteinState",
    "estimate_score",
    "get_estimator",
    "state_matches",
]
