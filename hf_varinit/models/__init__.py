"""HF-native models used by the studies (registered with the Auto classes on import)."""

from hf_varinit.models.mlp import VarInitMLPConfig, VarInitMLPForClassification

__all__ = ["VarInitMLPConfig", "VarInitMLPForClassification"]
