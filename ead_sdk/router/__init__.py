"""Learned routers: labels and features from traces, training, and the network a ``learned`` policy runs.

``ead train-router`` and `train_router` fit a small classifier of "the large model would emit
another token here" on recorded, teacher-forced traces; `router_spec` writes it as a ``learned``
policy spec (docs/learned-router.md).
"""

from __future__ import annotations

from ead_sdk.router.features import DEFAULT_FEATURES, FEATURES, FeatureSpec, feature_matrix, trace_features
from ead_sdk.router.labels import LABELS, label_positions, would_differ
from ead_sdk.router.network import RouterNetwork, file_sha256, network_from_json, save_weights
from ead_sdk.router.training import (
    TrainingReport,
    auc,
    position_dataset,
    precision_recall,
    router_spec,
    split_sequences,
    train_router,
)

__all__ = [
    "DEFAULT_FEATURES",
    "FEATURES",
    "LABELS",
    "FeatureSpec",
    "RouterNetwork",
    "TrainingReport",
    "auc",
    "feature_matrix",
    "label_positions",
    "file_sha256",
    "network_from_json",
    "position_dataset",
    "precision_recall",
    "router_spec",
    "save_weights",
    "split_sequences",
    "trace_features",
    "train_router",
    "would_differ",
]
