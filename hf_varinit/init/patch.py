"""Patching HF's weight initialisation with an init rule.

Every ``PreTrainedModel`` initialises through ``initialize_weights`` (``post_init`` of a fresh model,
and the missing keys of ``from_pretrained``). `patched_init` swaps that method at class level, so
nested models are covered too. The rule writes every tensor it covers; the model's own
``_init_weights`` then runs for the rest (buffers, rotary tables, unknown parameters). It runs under
transformers' guarded init functions and honours the ``_is_hf_initialized`` flags, so loaded weights
are never touched.
"""

from __future__ import annotations

import contextlib
import math
import reprlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
import transformers
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers import initialization as hf_init

from hf_varinit.arch.config import hidden_size, num_layers
from hf_varinit.arch.table import ENCODER_TYPES, is_known_architecture
from hf_varinit.errors import ConfigError, RoleError, RuleError
from hf_varinit.init.roles import TensorRole, iter_roles
from hf_varinit.init.rules import Init, InitRule, ModelContext, get_rule, truncated_std_factor

_ORIGINAL_INITIALIZE = PreTrainedModel.initialize_weights
_FLAG = "_is_hf_initialized"


class PlanRow(NamedTuple):
    """One row of `init_plan`: what a tensor (or slice) gets."""

    name: str
    role: str
    layer: int | None
    slice: str | None
    fan_in: int
    fan_out: int
    distribution: str
    std: float | None
    key: str
    note: str


def model_context(model: nn.Module) -> ModelContext:
    """The model-level facts a rule may use (depth, width, ``initializer_range``)."""
    config = getattr(model, "config", None)
    if config is None:
        return ModelContext(None, None, None, 0.02)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelContext(
        model_type=getattr(config, "model_type", None),
        n_layer=num_layers(config),
        hidden_size=hidden_size(config),
        initializer_range=getattr(text, "initializer_range", None) or 0.02,
        config=config,
    )


_TRUNC_CHUNK = 1 << 18


def trunc_normal_(tensor: torch.Tensor, std: float, cutoff: float = 2.0) -> torch.Tensor:
    """N(0, std^2) truncated at ±cutoff·std, by resampling the values outside (exact, and much faster
    than the inverse-CDF ``torch.nn.init.trunc_normal_``)."""
    bound = cutoff * std
    if cutoff < 1.0:  # resampling would reject most draws (all but 1e-6 of them at cutoff 1e-6): invert the CDF
        edge = math.erf(cutoff / math.sqrt(2))  # u in (-edge, edge) -> erfinv(u) * sqrt(2) in (-cutoff, cutoff)
        return tensor.uniform_(-edge, edge).erfinv_().mul_(std * math.sqrt(2)).clamp_(-bound, bound)
    for chunk in tensor.view(-1).split(_TRUNC_CHUNK):  # chunks stay in cache between the passes below
        chunk.normal_(0.0, std)
        index = (chunk.abs() > bound).nonzero().squeeze(1)
        while index.numel():
            values = torch.empty(index.numel(), dtype=chunk.dtype, device=chunk.device).normal_(0.0, std)
            chunk[index] = values
            index = index[values.abs() > bound]
    return tensor


def sample_(tensor: torch.Tensor, init: Init) -> None:
    """Fill ``tensor`` (a parameter or a view of one) in place as ``init`` says."""
    if init.distribution == "constant":
        tensor.fill_(init.value)
        return
    if not tensor.is_contiguous():  # torch samples strided views (Q/K/V column blocks) far slower
        buffer = torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
        sample_(buffer, init)
        tensor.copy_(buffer)
    elif init.distribution == "normal":
        tensor.normal_(0.0, init.std)
    elif init.distribution == "uniform":
        bound = 3.0**0.5 * init.std  # U(-b, b) has std b / sqrt(3)
        tensor.uniform_(-bound, bound)
    elif init.distribution == "trunc_normal":
        trunc_normal_(tensor, init.std / truncated_std_factor(init.cutoff), init.cutoff)
    else:
        raise RuleError(f"unknown distribution {init.distribution!r}; valid: normal, uniform, trunc_normal, constant")


def _resolved(model: nn.Module, rule: InitRule) -> Iterator[tuple[TensorRole, nn.Parameter, nn.Module, Init]]:
    ctx = model_context(model)
    for entry, param, module in iter_roles(model):
        yield entry, param, module, rule.resolve(entry, ctx)


@torch.no_grad()
def initialize_with_rule(model: nn.Module, rule: InitRule) -> None:
    """Initialise every not-yet-initialised tensor of ``model`` with ``rule`` (the patched method)."""
    if rule.name == "hf":
        return _ORIGINAL_INITIALIZE(model) if isinstance(model, PreTrainedModel) else _reset(model)
    rule = rule.bind(model)
    tied_targets = set(getattr(model, "all_tied_weights_keys", None) or ())
    plan: dict[int, tuple[nn.Parameter, list[tuple[TensorRole, Init]]]] = {}
    for entry, param, module, init in _resolved(model, rule):
        if getattr(param, _FLAG, False) or getattr(module, _FLAG, False) or entry.name in tied_targets:
            continue  # loaded, already initialised, or about to be tied to another tensor
        plan.setdefault(id(param), (param, []))[1].append((entry, init))
    # Tensors entirely ours are flagged so the model's own init (run next) leaves them alone.
    flagged = [p for p, inits in plan.values() if all(i.distribution != "hf" for _, i in inits)]
    for param in flagged:
        setattr(param, _FLAG, True)
    try:
        with hf_init.guard_torch_init_functions():
            if isinstance(model, PreTrainedModel):
                _ORIGINAL_INITIALIZE(model)
            for param, inits in plan.values():
                for entry, init in inits:
                    if init.distribution != "hf":
                        sample_(entry.view(param), init)
    finally:
        for param in flagged:
            delattr(param, _FLAG)


def _check_model(model: Any, where: str) -> None:
    if not isinstance(model, nn.Module):
        raise RoleError(f"{where}: model={reprlib.repr(model)} is not a torch nn.Module; pass a model, e.g. "
                        "hv.from_config(GPT2Config(...)) (to build one from a config use hv.from_config)")


def _reset(model: nn.Module) -> None:
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


@contextlib.contextmanager
def patched_init(rule: str | dict | InitRule) -> Iterator[InitRule]:
    """Initialise every HF model built inside the block with ``rule``.

    Patches ``PreTrainedModel.initialize_weights`` at class level (nested models included) and
    restores it on exit, also after an exception. Under ``from_pretrained`` only the missing weights
    are initialised; loaded ones stay bit-identical.

    Example:
        >>> with patched_init("xavier"):
        ...     model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=2))
    """
    resolved = get_rule(rule)
    previous = PreTrainedModel.__dict__["initialize_weights"]

    def initialize_weights(self):
        initialize_with_rule(self, resolved)

    PreTrainedModel.initialize_weights = initialize_weights
    try:
        yield resolved
    finally:
        PreTrainedModel.initialize_weights = previous


@contextlib.contextmanager
def _seeded(seed: int | None):
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise ConfigError(f"seed={seed!r} is invalid; give an integer in [-2**63, 2**64), e.g. seed=0, or None")
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _model_class(config: PretrainedConfig):
    for arch in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    lm = AutoModelForMaskedLM if config.model_type in ENCODER_TYPES else AutoModelForCausalLM
    for auto in (lm, AutoModel):
        if type(config) in auto._model_mapping:
            return auto
    raise RuleError(
        f"no model class is registered for config {type(config).__name__} (model_type "
        f"{config.model_type!r}); pass model_class=... to from_config"
    )


def from_config(
    config: PretrainedConfig,
    rule: str | dict | InitRule = "hf",
    seed: int | None = None,
    *,
    model_class: Any = None,
    **kwargs,
) -> PreTrainedModel:
    """Build a model from ``config`` initialised with ``rule``.

    Args:
        config (`PretrainedConfig`): e.g. ``GPT2Config(n_layer=12)``.
        rule (`str | dict | InitRule`): an init rule spec, see `get_rule`.
        seed (`int`, *optional*): makes the weights deterministic; the global RNG state is restored.
        model_class: an Auto class or model class; by default ``config.architectures[0]``, else
            ``AutoModelForCausalLM`` (``AutoModelForMaskedLM`` for encoders such as BERT) where the config
            supports it, else ``AutoModel``.

    The rule spec and seed are recorded in the config (``varinit_rule``, ``varinit_seed``), so
    ``save_pretrained`` carries them.
    """
    if not isinstance(config, PretrainedConfig):
        raise ConfigError(f"from_config: config={reprlib.repr(config)} is not a transformers config; pass one such as "
                          "GPT2Config(n_layer=12) or AutoConfig.for_model('gpt2', n_layer=12)")
    resolved = get_rule(rule)
    cls = model_class or _model_class(config)
    with _seeded(seed), patched_init(resolved):
        if hasattr(cls, "from_config"):  # an Auto class
            model = cls.from_config(config, **kwargs)
        elif isinstance(cls, type) and issubclass(cls, PreTrainedModel):
            model = cls._from_config(config, **kwargs)  # honours dtype= and attn_implementation=
        else:
            model = cls(config, **kwargs)
    model.config.varinit_rule = resolved.spec
    model.config.varinit_seed = seed
    model.varinit_init_rule = resolved  # the rule object (a spec string cannot hold a variance table)
    return model


def apply_init(model: nn.Module, rule: str | dict | InitRule, seed: int | None = None) -> nn.Module:
    """Re-initialise an existing model with ``rule`` (all its tensors, on purpose).

    Clears the ``_is_hf_initialized`` flags first, so loaded weights are overwritten too.
    """
    _check_model(model, "apply_init")
    resolved = get_rule(rule)
    for tensor in (*model.modules(), *model.parameters(), *model.buffers()):
        if hasattr(tensor, _FLAG):
            delattr(tensor, _FLAG)
    with _seeded(seed):
        initialize_with_rule(model, resolved)
    model.varinit_init_rule = resolved
    if isinstance(model, PreTrainedModel):
        model.config.varinit_rule = resolved.spec
        model.tie_weights()
    return model


def init_plan(model: nn.Module, rule: str | dict | InitRule) -> list[PlanRow]:
    """A dry run: what distribution and std every tensor (or Q/K/V slice) of ``model`` would get."""
    _check_model(model, "init_plan")
    resolved = get_rule(rule)
    bound = resolved.bind(model) if resolved.name != "hf" else resolved
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    fallback = "" if is_known_architecture(model_type) else f"per-module role: {model_type!r} is not in the table"
    rows = []
    for entry, _, _, init in _resolved(model, bound):
        note = "; ".join(n for n in (init.note, fallback if entry.role in ("linear", "embedding") else "") if n)
        rows.append(
            PlanRow(
                name=entry.name,
                role=entry.role,
                layer=entry.layer,
                slice=str(entry.slice) if entry.slice is not None else None,
                fan_in=entry.fan_in,
                fan_out=entry.fan_out,
                distribution=init.describe(),
                std=init.std,
                key=entry.key,
                note=note,
            )
        )
    return rows
