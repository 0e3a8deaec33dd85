"""Training loop of the MLP studies: plain SGD (or Adam) on in-memory tensors, seeded, no DataLoader.

Example:
    >>> from hf_varinit import from_config
    >>> from hf_varinit_lab.datasets import load_classification
    >>> from hf_varinit_lab.model import VarInitMLPConfig
    >>> data = load_classification("digits")
    >>> cfg = VarInitMLPConfig(input_size=data.num_features, hidden_sizes=[64] * 3, num_labels=data.num_classes)
    >>> run = train_mlp(from_config(cfg, rule="kaiming", seed=0), data, steps=200, seed=0)
    >>> run.final_train_loss, run.test_accuracy  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hf_varinit.errors import ConfigError
from hf_varinit.init.patch import from_config
from hf_varinit.record.recorder import VarianceRecorder
from hf_varinit.record.stats_file import VarianceStats
from hf_varinit_lab.model import VarInitMLPConfig

__all__ = ["MLPRun", "build_mlp", "evaluate", "init_diagnostics", "run_stats", "train_mlp"]

OPTIMIZERS = ("sgd", "adam")


@dataclass
class MLPRun:
    """The outcome of `train_mlp`.

    Attributes:
        losses: minibatch training loss per step (the diverging step's loss is ``inf``).
        epoch_losses: mean minibatch loss per (possibly partial) epoch.
        eval_steps / eval_losses: full-training-set loss (eval mode) at step 0 and every ``eval_every`` steps.
        final_train_loss: full-training-set loss at the end (eval mode); ``inf`` when diverged.
        test_accuracy: accuracy on the test split at the end (``nan`` when ``eval=False``).
        test_loss: mean cross-entropy (NLL) on the test split at the end (``nan`` when ``eval=False``).
        steps: optimizer steps taken.
        diverged: a non-finite loss stopped training.
        recorder: the `VarianceRecorder` when ``record_every`` was set, else None.
        stats: ``recorder.arrays()`` (step, mean, var, second_moment) when recording, else None.
    """

    losses: list[float]
    epoch_losses: list[float]
    final_train_loss: float
    test_accuracy: float
    steps: int
    diverged: bool
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    recorder: VarianceRecorder | None = None
    stats: dict[str, np.ndarray] | None = None
    test_loss: float = math.nan


def build_mlp(data, depth: int, width: int, rule: Any, seed: int, activation: str = "relu") -> nn.Module:
    """An MLP for ``data`` built through the product's init path: ``from_config(..., rule=rule, seed=seed)``."""
    config = VarInitMLPConfig(
        input_size=data.num_features, hidden_sizes=[width] * depth, num_labels=data.num_classes, activation=activation
    )
    return from_config(config, rule=rule, seed=seed)


def _tensors(data) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(data.x_train, dtype=torch.float32),
        torch.as_tensor(data.y_train, dtype=torch.long),
        torch.as_tensor(data.x_test, dtype=torch.float32),
        torch.as_tensor(data.y_test, dtype=torch.long),
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on (x, y) in eval mode; loss is ``inf`` if not finite."""
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        logits = model(inputs=x[i : i + chunk]).logits  # (B, C)
        total += float(nn.functional.cross_entropy(logits, y[i : i + chunk], reduction="sum"))
        correct += int((logits.argmax(-1) == y[i : i + chunk]).sum())
    model.train(was_training)
    loss = total / max(len(x), 1)
    return (loss if math.isfinite(loss) else math.inf), correct / max(len(x), 1)


def train_mlp(
    model: nn.Module,
    data,
    *,
    optimizer: str = "sgd",
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    epochs: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    record_every: int | None = None,
    eval: bool = True,
    eval_every: int | None = None,
    rule: Any = None,
) -> MLPRun:
    """Train ``model`` on ``data`` (a `ClassificationData`) with minibatch SGD and cross-entropy.

    Args:
        model (`nn.Module`): a classifier returning ``.logits`` (e.g. from `build_mlp`).
        data (`ClassificationData`): standardized in-memory arrays.
        optimizer (`str`): ``"sgd"`` (plain SGD, the studies' setting) or ``"adam"``.
        lr (`float`), momentum (`float`), weight_decay (`float`), batch_size (`int`): optimizer settings (the
            studies use plain SGD: momentum 0, weight decay 0).
        epochs (`int`, *optional*) / steps (`int`, *optional*): training length; ``steps`` wins when both are
            given; neither means 5 epochs. Each epoch is a fresh permutation drawn from a generator seeded with
            ``seed``, so a run is deterministic given the model's weights and ``seed``.
        record_every (`int`, *optional*): record weight statistics with `VarianceRecorder` at step 0, every
            ``record_every`` steps and at the last step.
        eval (`bool`): compute the final full-training-set loss and the test accuracy.
        eval_every (`int`, *optional*): also record the full-training-set loss every that many steps.
        rule: the init rule spec the model was built with (stored with the statistics).

    Returns:
        `MLPRun`. A non-finite minibatch loss stops training and marks the run ``diverged``.

    Subnormal floats are flushed to zero during the run (``torch.set_flush_denormal``): in the vanishing regime
    they would otherwise make every CPU matmul ~100x slower without changing any reported number.
    """
    with _flush_denormal():
        return _train(model, data, optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay,
                      batch_size=batch_size,
                      epochs=epochs, steps=steps, seed=seed, record_every=record_every, eval=eval,
                      eval_every=eval_every, rule=rule)


@contextlib.contextmanager
def _flush_denormal():
    previous = torch.set_flush_denormal(True)  # returns whether it is supported, not the old state
    try:
        yield previous
    finally:
        torch.set_flush_denormal(False)


def _train(model, data, *, optimizer, lr, momentum, weight_decay, batch_size, epochs, steps, seed, record_every, eval,
           eval_every, rule) -> MLPRun:
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer={optimizer!r} is unknown; valid: {', '.join(OPTIMIZERS)}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"lr={lr!r} must be a number > 0, e.g. lr=0.05")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be >= 1")
    x, y, x_test, y_test = _tensors(data)
    n = len(x)
    per_epoch = math.ceil(n / batch_size)
    total = steps if steps is not None else (epochs if epochs is not None else 5) * per_epoch
    if total < 1:
        raise ConfigError(f"training length must be >= 1 step (got steps={steps}, epochs={epochs})")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay) if optimizer == "sgd"
           else torch.optim.Adam(params, lr=lr, weight_decay=weight_decay))
    gen = torch.Generator().manual_seed(seed)
    recorder = VarianceRecorder(model, every=record_every, rule=rule) if record_every else None
    if recorder is not None:
        recorder.record(0)
    run = MLPRun(losses=[], epoch_losses=[], final_train_loss=math.nan, test_accuracy=math.nan, steps=0,
                 diverged=False)
    if eval_every:
        run.eval_steps.append(0)
        run.eval_losses.append(evaluate(model, x, y)[0])
    model.train()
    step, epoch_sum, epoch_count, perm = 0, 0.0, 0, None
    while step < total:
        if step % per_epoch == 0:
            perm = torch.randperm(n, generator=gen)
        start = (step % per_epoch) * batch_size
        idx = perm[start : start + batch_size]
        loss = model(inputs=x[idx], labels=y[idx]).loss
        value = float(loss.detach())
        if not math.isfinite(value):
            run.losses.append(math.inf)
            run.diverged = True
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        run.losses.append(value)
        epoch_sum, epoch_count = epoch_sum + value, epoch_count + 1
        if step % per_epoch == 0:
            run.epoch_losses.append(epoch_sum / epoch_count)
            epoch_sum, epoch_count = 0.0, 0
        if recorder is not None:
            recorder.maybe_record(step)
        if eval_every and step % eval_every == 0:
            run.eval_steps.append(step)
            run.eval_losses.append(evaluate(model, x, y)[0])
    if epoch_count:
        run.epoch_losses.append(epoch_sum / epoch_count)
    run.steps = step
    if recorder is not None:
        recorder.record(step)
        run.recorder, run.stats = recorder, recorder.arrays()
    if eval:
        run.final_train_loss = math.inf if run.diverged else evaluate(model, x, y)[0]
        run.test_loss, run.test_accuracy = evaluate(model, x_test, y_test)
    elif run.diverged:
        run.final_train_loss = math.inf
    return run


def run_stats(run: MLPRun, metadata: dict | None = None):
    """The recorded statistics of ``run`` as a `VarianceStats` (for `report.analyze` / `VarianceReport`)."""
    if run.recorder is None:
        raise ConfigError("this run recorded no statistics; pass record_every=N to train_mlp")
    meta = {**run.recorder.metadata(), **(metadata or {})}
    return VarianceStats(**run.recorder.arrays(), tracked=run.recorder.tracked(), metadata=meta)


def init_diagnostics(model: nn.Module, data, batch: int = 256) -> dict:
    """Forward activation statistics and per-layer gradient norms at init, from one batch.

    Uses the first ``batch`` training examples (deterministic). The model's ``.grad`` fields are left empty.

    Returns:
        dict with ``input_var`` and ``input_ms`` (variance / mean square of the inputs), ``act_var`` and
        ``act_ms`` (one float per hidden layer: variance and mean square of its post-activation output),
        ``grad_norm`` (Frobenius norm of the loss gradient w.r.t. each hidden layer's weight, then the head's),
        ``loss`` (the batch loss at init).
    """
    with _flush_denormal():
        return _diagnostics(model, data, batch)


def _diagnostics(model: nn.Module, data, batch: int) -> dict:
    x, y, _, _ = _tensors(data)
    x, y = x[:batch], y[:batch]
    was_training = model.training
    model.eval()
    for p in model.parameters():
        p.grad = None
    out = model(inputs=x, labels=y, output_hidden_states=True)
    out.loss.backward()
    hidden = out.hidden_states or ()
    weights = [layer.weight for layer in model.layers] + [model.classifier.weight]

    def _f(t: torch.Tensor) -> float:
        v = float(t)
        return v if math.isfinite(v) else math.inf

    diag = {
        "input_var": _f(x.var(unbiased=False)),
        "input_ms": _f(x.pow(2).mean()),
        "act_var": [_f(h.detach().double().var(unbiased=False)) for h in hidden],
        "act_ms": [_f(h.detach().double().pow(2).mean()) for h in hidden],
        "grad_norm": [_f(w.grad.double().norm()) if w.grad is not None else math.nan for w in weights],
        "loss": _f(out.loss.detach()),
    }
    for p in model.parameters():
        p.grad = None
    model.train(was_training)
    return diag
