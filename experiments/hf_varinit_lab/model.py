"""An HF-native MLP classifier, so the MLP studies use the same `from_config` path as GPT-2.

``VarInitMLPConfig(input_size=64, hidden_sizes=[128, 128, 128], num_labels=10, activation="relu")``
builds ``input -> [Linear -> activation] * depth -> classifier``. Like any custom transformers model, the module
that defines the classes registers them with ``AutoConfig``, ``AutoModel`` and ``AutoModelForImageClassification``
under ``model_type="varinit_mlp"``; the library finds it through the lab's ``hf_varinit.architectures`` entry
point (`hf_varinit_lab.arch`), which imports this module.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "identity": nn.Identity}


class VarInitMLPConfig(PreTrainedConfig):
    """Config of `VarInitMLPForClassification`.

    Args:
        input_size (`int`): number of input features (784 for flattened MNIST).
        hidden_sizes (`list[int]`): width of each hidden layer; its length is the depth.
        activation (`str`): one of relu, tanh, gelu, sigmoid, identity.
        initializer_range (`float`): std of the model's own (``hf``) init.
        num_labels (`int`): number of classes.
    """

    model_type = "varinit_mlp"
    attribute_map = {"num_hidden_layers": "n_layer"}

    input_size: int = 784
    hidden_sizes: list[int] | tuple[int, ...] = (256, 256, 256)
    activation: str = "relu"
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.hidden_sizes = [int(h) for h in self.hidden_sizes]
        if not self.hidden_sizes or min(self.hidden_sizes) < 1 or self.input_size < 1:
            raise ValueError(
                f"VarInitMLPConfig: input_size={self.input_size} and hidden_sizes={self.hidden_sizes} must be "
                "positive, with at least one hidden layer"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"VarInitMLPConfig: activation={self.activation!r} is unknown; valid: {', '.join(ACTIVATIONS)}"
            )
        super().__post_init__(**kwargs)

    @property
    def n_layer(self) -> int:
        return len(self.hidden_sizes)


class VarInitMLPPreTrainedModel(PreTrainedModel):
    config_class = VarInitMLPConfig
    base_model_prefix = "mlp"
    main_input_name = "inputs"

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            init.zeros_(module.bias)


class VarInitMLPForClassification(VarInitMLPPreTrainedModel):
    """``layers.{i}`` are the hidden ``nn.Linear`` layers, ``classifier`` the output head."""

    def __init__(self, config: VarInitMLPConfig):
        super().__init__(config)
        sizes = [config.input_size, *config.hidden_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activation = ACTIVATIONS[config.activation]()
        self.classifier = nn.Linear(sizes[-1], config.num_labels)
        self.post_init()

    def forward(
        self,
        inputs: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> ImageClassifierOutput:
        """``inputs`` (B, input_size) or ``pixel_values`` (B, ...) flattened; ``labels`` (B,)."""
        x = inputs if inputs is not None else pixel_values
        if x is None:
            raise ValueError("VarInitMLPForClassification.forward needs `inputs` (or `pixel_values`)")
        x = x.flatten(1)  # (B, input_size)
        hidden = []
        for layer in self.layers:
            x = self.activation(layer(x))
            if output_hidden_states:
                hidden.append(x)
        logits = self.classifier(x)  # (B, num_labels)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=tuple(hidden) or None)


AutoConfig.register(VarInitMLPConfig.model_type, VarInitMLPConfig, exist_ok=True)
AutoModel.register(VarInitMLPConfig, VarInitMLPForClassification, exist_ok=True)
AutoModelForImageClassification.register(VarInitMLPConfig, VarInitMLPForClassification, exist_ok=True)
