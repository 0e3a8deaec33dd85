"""HF-native models used by the studies (registered with the Auto classes on import)."""

from .mlp import VarInitMLPConfig, VarInitMLPForClassification

__all__ = ["VarInitMLPConfig", "VarInitMLPForClassification"]
