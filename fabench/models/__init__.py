"""Models: two-layer heads, backbones, and the classifier that joins them (2-logit view)."""

from fabench.models.classifier import Classifier
from fabench.models.heads import BinaryHead, FineHead, Head, RobustHead

__all__ = ["Classifier", "Head", "BinaryHead", "FineHead", "RobustHead"]
