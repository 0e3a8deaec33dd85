"""Shareable variance reports: a run's steady-state V(W) as a folder (model card, JSON, plots) or hub repo.

The analysis itself (definitions and tolerances) lives in `hf_varinit.report.steady_state`.

Example:
    >>> report = VarianceReport.from_stats("runs/gpt2/variance.safetensors")  # doctest: +SKIP
    >>> report.save("reports/gpt2")  # doctest: +SKIP
    >>> VarianceReport.load("reports/gpt2").variances()["layers.0.q"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from hf_varinit.errors import ReportError, StatsError
from hf_varinit.init.table import VarianceTable
from hf_varinit.init.transfer import TransferFit
from hf_varinit.io_utils import atomic_write_json, atomic_write_text, json_safe, write_folder
from hf_varinit.record.recipe import RunRecipe
from hf_varinit.record.stats_file import STATS_FILENAME, VarianceStats, load_stats, save_stats
from hf_varinit.reference_reports import bundled_report
from hf_varinit.report import plots, steady_state
from hf_varinit.report.card import build_card, layer_table
from hf_varinit.report.options import DEFAULT_LICENSE, AnalysisOptions
from hf_varinit.report.publish import (
    check_dataset_ids,
    download_folder,
    hub_dataset_ids,
    push_folder,
    push_written,
)
from hf_varinit.report.schema import (
    STEADY_FILENAME,
    STEADY_FORMAT,
    STEADY_VERSION,
    parse_steady_state,
    validate_steady_state,
)
from hf_varinit.report.steady_state import KeyAnalysis, analyze
from hf_varinit.report.transfer import transfer_section

__all__ = ["VarianceReport"]

CARD_FILENAME = "README.md"
CONFIG_FILENAME = "config.json"


class VarianceReport:
    """Steady-state variances of a training run, with plots and a model card; shareable on the hub.

    Attributes:
        tensors (`dict[str, KeyAnalysis]`): per tracked key.
        model_type (`str`), n_layer (`int` or `None`), config (`dict`), rule (`str` or `None`).
        options (`AnalysisOptions`), stats (`VarianceStats` or `None`), metadata (`dict`): run metadata.
        datasets (`list[str]`): hub dataset ids of the run (the card's ``datasets``); a local corpus is only
            described in the card's text (metadata ``dataset``).
        license (`str`): the card's license (the run's ``license`` metadata, else ``apache-2.0``).
        base_model (`str` or `None`): the hub model id a report of one set of weights was made from.
        transfer (`TransferFit` or `None`): a multi-run report's runs and width fit (``hf-varinit report A B``).
    """

    def __init__(
        self, tensors: dict[str, KeyAnalysis], *, options: AnalysisOptions, model_type: str | None,
        n_layer: int | None, config: dict, rule: str | None, metadata: dict | None = None,
        stats: VarianceStats | None = None, title: str | None = None, datasets: list[str] | None = None,
        origin: str | None = None, license: str | None = None, base_model: str | None = None,
        transfer: TransferFit | None = None,
    ) -> None:
        self.tensors, self.options, self.model_type, self.n_layer = tensors, options, model_type or "unknown", n_layer
        self.config, self.rule, self.metadata = dict(config), rule, dict(metadata or {})
        self.stats, self.title, self.transfer = stats, title, transfer
        self.datasets = check_dataset_ids(datasets) if datasets else hub_dataset_ids(self.metadata)
        self.origin = origin
        self.license = license or _str_or_none(self.metadata.get("license")) or DEFAULT_LICENSE
        self.base_model = base_model or _str_or_none(self.metadata.get("hub_id"))

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_stats(
        cls, stats_or_path: VarianceStats | str | os.PathLike[str], options: AnalysisOptions | None = None,
        *, title: str | None = None, datasets: list[str] | None = None, license: str | None = None,
    ) -> VarianceReport:
        """Analyse a record (a :class:`VarianceStats` or a path to ``variance.safetensors``).

        Args:
            stats_or_path (`VarianceStats`, `str` or `os.PathLike`): the record.
            options (`AnalysisOptions`, *optional*): the steady-state tolerances.
            title (`str`, *optional*): the card's heading.
            datasets (`list[str]`, *optional*): hub dataset ids (default: the ``hub:`` dataset of the run's metadata).
            license (`str`, *optional*): the card's license (default: the run's, else ``apache-2.0``).
        """
        stats = stats_or_path if isinstance(stats_or_path, VarianceStats) else load_stats(stats_or_path)
        if isinstance(options, dict):
            options = AnalysisOptions.from_dict(options)
        elif options is not None and not isinstance(options, AnalysisOptions):
            raise ReportError(f"options={options!r} must be an AnalysisOptions (or a dict of its fields)")
        if isinstance(datasets, str):  # one id, not its characters
            datasets = [datasets]
        opts = options or AnalysisOptions()
        return cls(
            analyze(stats, opts), options=opts, model_type=stats.model_type, n_layer=stats.n_layer,
            config=stats.config, rule=stats.rule, metadata=stats.metadata, stats=stats, title=title,
            datasets=datasets, origin=str(stats.path) if stats.path else None, license=license,
        )

    @classmethod
    def load(cls, source: str | os.PathLike[str]) -> VarianceReport:
        """Load a report: a folder, a ``steady_state.json``, a ``variance.safetensors``, the name of a report bundled
        with the package (``gpt2-12l-tiny-qkv-dynamics``) or a hub repo id, tried in that order.

        Raises:
            ReportError: missing or malformed files, a V(W) that is not finite and > 0, a pickle file,
                or a hub id while the hub is unreachable.
        """
        if not isinstance(source, (str, os.PathLike)):
            raise ReportError(f"report source {source!r} is not a folder, a file or a hub id (a str or Path)")
        path = Path(source)
        try:
            is_dir, is_file = path.is_dir(), path.is_file()
        except OSError as exc:  # a name too long, no permission...
            raise ReportError(f"report {reprlib.repr(os.fspath(source))} cannot be read: {exc.strerror or exc}; "
                              "give a report folder, a steady_state.json / variance.safetensors file, or a hub id"
                              ) from None
        if is_dir:
            if (path / STEADY_FILENAME).is_file():
                return cls._from_json(path / STEADY_FILENAME)
            if (path / STATS_FILENAME).is_file():
                return cls._from_safetensors(path / STATS_FILENAME)
            raise ReportError(f"{path}: not a variance report (no {STEADY_FILENAME} or {STATS_FILENAME})")
        if is_file:
            if path.suffix == ".json":
                return cls._from_json(path)
            if path.suffix == ".safetensors":
                return cls._from_safetensors(path)
            raise ReportError(f"{path}: not a report file; expected a folder, {STEADY_FILENAME} or "
                              f"{STATS_FILENAME} (pickle and other formats are never loaded)")
        if (bundled := bundled_report(source)) is not None:  # a reference report shipped with the package
            return cls.load(bundled)
        return cls._from_hub(str(source))

    @classmethod
    def _from_safetensors(cls, path: Path) -> VarianceReport:
        try:
            report = cls.from_stats(path)
        except StatsError as exc:
            raise ReportError(f"cannot load report: {exc}") from exc
        _validate_v_w(report.tensors, str(path))
        return report

    @classmethod
    def _from_json(cls, path: Path) -> VarianceReport:
        try:
            doc = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ReportError(f"{path}: cannot read {STEADY_FILENAME}: {exc}") from exc
        validate_steady_state(doc, str(path))  # every field's type, the bad one named by its path
        try:
            fields = parse_steady_state(doc)
        except ReportError as exc:
            raise ReportError(f"{path}: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise ReportError(f"{path}: malformed {STEADY_FILENAME}: {type(exc).__name__}: {exc}") from exc
        _validate_v_w(fields["tensors"], str(path))
        stats = None
        if (path.parent / STATS_FILENAME).is_file():
            try:
                stats = load_stats(path.parent / STATS_FILENAME)
            except StatsError as exc:
                raise ReportError(f"{path.parent}: the report's statistics are unreadable: {exc}") from exc
        return cls(**fields, stats=stats, origin=str(path.parent if path.name == STEADY_FILENAME else path))

    @classmethod
    def _from_hub(cls, repo_id: str) -> VarianceReport:
        report = cls.load(download_folder(repo_id, [STEADY_FILENAME, STATS_FILENAME, CARD_FILENAME]))
        report.origin = repo_id
        return report

    # --- queries ------------------------------------------------------------------------------
    def variances(self, nonstationary: str = "last") -> dict[str, float]:
        """``{key: V(W)}``.

        Args:
            nonstationary (`str`): what to do with tensors that never settled: ``"last"`` keep their
                last recorded value, ``"skip"`` drop them, ``"error"`` raise ReportError listing them.
        """
        if nonstationary not in ("last", "skip", "error"):
            raise ReportError(f"nonstationary={nonstationary!r}; choose 'last', 'skip' or 'error'")
        bad = self.nonstationary_keys
        if bad and nonstationary == "error":
            raise ReportError(f"{self.source_description}: not stationary: {bad}; use nonstationary='last' "
                              "or 'skip', or record a longer run")
        return {k: float(a.v_w) for k, a in self.tensors.items()  # a snapshot's tensors are not judged (None)
                if a.v_w is not None and (a.stationary is not False or nonstationary == "last")}

    def variance_table(self, nonstationary: str = "last") -> VarianceTable:
        """What the optimal rule reads of this report: `variances` with the measured model's description."""
        return VarianceTable(self.variances(nonstationary), self.origin or self.source_description,
                             model_type=self.model_type, config=self.config, n_layer=self.n_layer,
                             transfer=self.transfer, recipe=self.recipe, keys=frozenset(self.tensors))

    @property
    def layers(self) -> dict[int, int | None]:
        """``{layer: equilibration step}`` (the latest over the layer's tensors)."""
        return steady_state.layer_equilibration(self.tensors)

    @property
    def recipe(self) -> RunRecipe:
        """How the run V(W) was measured on was trained; a field the record does not give is None (unknown), and
        every field is for a snapshot of weights."""
        return RunRecipe.from_metadata({**(self.stats.metadata if self.stats is not None else {}), **self.metadata})

    @property
    def nonstationary_keys(self) -> list[str]:
        """Keys judged not stationary (a snapshot's tensors are not judged, so it has none)."""
        return [k for k, a in self.tensors.items() if a.stationary is False]

    @property
    def is_snapshot(self) -> bool:
        """Whether this report is of one set of weights (``report --from-model``), not of a training record."""
        return steady_state.is_snapshot(self.metadata)

    @property
    def source_description(self) -> str:
        """One line saying where this report comes from, for error messages and logs."""
        parts = [self.model_type]
        if self.n_layer is not None:
            parts.append(f"{self.n_layer} layers")
        if self.rule:
            parts.append(f"rule {self.rule!r}")
        if self.stats is not None and len(self.stats):
            parts.append(f"steps {int(self.stats.step[0])}-{int(self.stats.step[-1])}")
        if self.is_snapshot:
            parts.append("one set of weights, not a training record")
        where = f" from {self.origin}" if self.origin else ""
        return f"variance report{where} ({', '.join(parts)})"

    def to_markdown_table(self) -> str:
        """Per-layer markdown table: layer, V(W) per role, stationary?, equilibration step."""
        return layer_table(self.tensors)

    def to_model_card(self, reference: str, extra_sections: Sequence[str] = ()) -> ModelCard:
        """The model card (``README.md``).

        Args:
            reference (`str`): what the card's usage snippet passes as ``report=`` (a folder or a hub repo id).
            extra_sections (`Sequence[str]`): markdown sections added after the caveats.
        """
        return build_card(
            self.tensors, reference=reference, options=self.options, model_type=self.model_type,
            n_layer=self.n_layer, rule=self.rule, metadata=self.metadata, datasets=self.datasets, stats=self.stats,
            title=self.title, extra_sections=[*transfer_section(self.transfer), *extra_sections],
            license=self.license, base_model=self.base_model, recipe=self.recipe,
        )

    def to_steady_state(self) -> dict:
        """The ``steady_state.json`` document."""
        return {
            "format": STEADY_FORMAT, "format_version": STEADY_VERSION, "model_type": self.model_type,
            "n_layer": self.n_layer, "config": self.config, "rule": self.rule,
            "options": dataclasses.asdict(self.options),
            "source": self.metadata.get("source"), "datasets": self.datasets, "title": self.title,
            "license": self.license, "base_model": self.base_model,
            "dataset_description": _str_or_none(self.metadata.get("dataset")),
            "checkpoint": _str_or_none(self.metadata.get("checkpoint")),
            "tensors": {k: a.to_dict() for k, a in self.tensors.items()},
            "layers": {} if self.is_snapshot else {
                str(layer): {"equilibration_step": s} for layer, s in self.layers.items()},
            "recipe": self.recipe.to_dict(), **({"transfer": self.transfer.to_dict()} if self.transfer else {}),
        }

    # --- writing ------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str], *, reference: str | None = None,
             extra_sections: Sequence[str] = (), overwrite: bool = False) -> Path:
        """Write the report folder; returns it.

        Files: ``README.md`` (model card), ``steady_state.json``, ``config.json`` (the model config, when
        known), ``variance.safetensors`` (when the record is known), ``qkv_variance.png``,
        ``qkv_variance_vs_cumulative_lr.png`` (when the lr schedule is known), ``equilibration.png``,
        ``steady_state_vs_depth.png`` (a report of one set of weights has only the last plot). Everything is
        written into a temporary folder first, which is then renamed into place. Folders get mode 0o755 and
        files 0o644 (under the usual umask 022).

        Args:
            folder (`str` or `os.PathLike`): destination folder.
            reference (`str`, *optional*): what the card's snippet passes as ``report=`` (default: folder).
            extra_sections (`Sequence[str]`): markdown sections added to the card after its caveats.
            overwrite (`bool`): replace an existing, non-empty ``folder`` whole (none of its old files stay).

        Raises:
            ReportError: ``folder`` exists, is not empty and ``overwrite`` is False (nothing is written).
        """
        reference = reference or str(folder)
        extra_sections = [extra_sections] if isinstance(extra_sections, str) else (
            list(extra_sections) if isinstance(extra_sections, (list, tuple)) else extra_sections)
        if not isinstance(extra_sections, list) or not all(isinstance(x, str) for x in extra_sections):
            raise ReportError(f"extra_sections={extra_sections!r} must be a list of markdown strings")
        return write_folder(folder, {"": lambda tmp: self._write_files(tmp, reference, extra_sections)},
                            overwrite=overwrite)

    def _write_files(self, folder: Path, reference: str, extra_sections: Sequence[str] = ()) -> None:
        if self.stats is not None:
            s = self.stats
            save_stats(folder / STATS_FILENAME, step=s.step, mean=s.mean, var=s.var,
                       second_moment=s.second_moment, tracked=s.tracked, metadata=s.metadata)
        atomic_write_json(folder / STEADY_FILENAME, self.to_steady_state())
        if self.config:
            atomic_write_json(folder / CONFIG_FILENAME, json_safe(json.loads(json.dumps(self.config, default=str))))
        plots.write_plots(folder, self.tensors, self.stats, self.options.band, snapshot=self.is_snapshot)
        atomic_write_text(folder / CARD_FILENAME, str(self.to_model_card(reference, extra_sections)))

    def push_to_hub(
        self, repo_id: str, *, token: str | None = None, private: bool = False,
        commit_message: str | None = None, _folder: Path | None = None,
    ) -> str:
        """Upload the report to a hub model repo (created if needed); returns the repo URL.

        Raises:
            ReportError: a bad repo id, offline, unauthenticated or any network failure (nothing partial is left).
        """
        where = (f"the report was written to {_folder}; push later with `hf upload {repo_id} {_folder}`"
                 if _folder else "save it with report.save(folder) and push later with "
                 f"`hf upload {repo_id} <folder>`")
        options = dict(token=token, private=private, where=where,
                       commit_message=commit_message or f"Upload hf_varinit variance report ({self.model_type})")
        if _folder is not None:
            return push_folder(_folder, repo_id, **options)
        return push_written(lambda tmp: self._write_files(tmp, repo_id), repo_id, **options)

    def save_and_push(self, folder: str | os.PathLike[str], repo_id: str, *, overwrite: bool = False,
                      **kwargs: Any) -> str:
        """Write ``folder`` first (its card pointing at ``repo_id``), then push it; returns the repo URL."""
        dest = self.save(folder, reference=repo_id, overwrite=overwrite)
        return self.push_to_hub(repo_id, _folder=dest, **kwargs)

    def __repr__(self) -> str:
        return f"VarianceReport({self.source_description}, {len(self.tensors)} tensors)"


def _validate_v_w(tensors: dict[str, KeyAnalysis], where: str) -> None:
    for key, v in ((k, a.v_w) for k, a in tensors.items()):
        if v is None or not math.isfinite(v) or v <= 0:
            raise ReportError(f"{where}: tensor {key!r} has V(W) = {v!r}; every v_w must be finite and > 0 "
                              "(a diverged or empty record cannot define an init)")


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
