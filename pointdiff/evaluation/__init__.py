"""Evaluation suite: classifier features (P-FID, P-IS), text alignment, reports.

Distances and set metrics live in ``pointdiff.metrics``; ``run_eval`` in ``report`` runs them all.
"""

from pointdiff.evaluation.alignment import category_r_precision, clip_r_precision, r_precision
from pointdiff.evaluation.classifier import (
    CLASSIFIER_PRESETS,
    ClassifierConfig,
    PointNet2Classifier,
    load_classifier,
    load_pointe_evaluator,
    save_classifier,
)
from pointdiff.evaluation.features import extract_features, frechet_distance, p_fid, p_is
from pointdiff.evaluation.report import format_markdown, load_cloud_set, run_eval

__all__ = [
    "CLASSIFIER_PRESETS",
    "ClassifierConfig",
    "PointNet2Classifier",
    "category_r_precision",
    "clip_r_precision",
    "extract_features",
    "format_markdown",
    "frechet_distance",
    "load_classifier",
    "load_cloud_set",
    "load_pointe_evaluator",
    "p_fid",
    "p_is",
    "r_precision",
    "run_eval",
    "save_classifier",
]
