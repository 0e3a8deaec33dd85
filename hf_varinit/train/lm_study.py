"""The multi-seed LM init study (``hf-varinit compare --study lm``): arms x seeds of ordinary pretraining runs.

    hf-varinit compare --study lm --config gpt2-12l-lm-study --arms gpt2 kaiming "optimal:report=R" \\
        --arm-names gpt2 kaiming optimal-pilot --seeds 5 --steps 600 --target-loss 5.5

Each (arm, seed) is the run of ``hf-varinit pretrain --config CFG --init SPEC --seed SEED --max-steps STEPS
--output-dir {output}/runs/{slug}/seed{seed} --disable-tqdm``, trained in this process through `run_pretrain`, one
after the other, seed by seed (after k seeds every arm has k runs, and a bad report fails at the first seed).
In-process rather than subprocesses: a run's errors arrive as the library's own exceptions, torch and
transformers load once, and `run_pretrain` seeds everything from the run's seed and resets Accelerate's
process-wide state after each run, so every run is the one its ``pretrain`` command makes on its own.

Resumable: a rerun skips finished runs (``final/config.json`` and statistics whose ``final_step`` is the asked
steps), continues runs with a complete checkpoint (``--resume``), and refuses a finished run of another init spec,
seed or step count (``--overwrite`` replaces the whole folder). ``study.json`` holds the settings: a rerun of
another config or step count is refused; new arms and seeds extend the study. The report
(`hf_varinit.train.lm_study_report`) is written at the end.

A study spans machines through its card: ``--runs-from <card>`` takes the runs an earlier card recorded (its
``runs.csv`` and ``curves.csv``) as finished, and trains only the rest (`hf_varinit.train.lm_study_runs`).
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from hf_varinit.errors import ConfigError, HFVarInitError, RuleError, StatsError
from hf_varinit.init.rules import get_rule
from hf_varinit.io_utils import atomic_write_json
from hf_varinit.record.stats_file import STATS_FILENAME, load_stats
from hf_varinit.report.cost import pilot_cost
from hf_varinit.train.checkpoint import find_latest_checkpoint
from hf_varinit.train.console import tqdm_disabled_by_env
from hf_varinit.train.lm_study_report import write_lm_report
from hf_varinit.train.lm_study_runs import canonical_spec, read_record, restore_runs, run_rows
from hf_varinit.train.loop import run_pretrain
from hf_varinit.train.run_config import PretrainOptions, build_options, config_values, resolve_config_path

__all__ = ["LMStudy", "LMStudyResult", "arm_slug", "run_lm_study", "study_seeds"]

STUDY_FILE = "study.json"
STUDY_FORMAT = "hf_varinit.lm_study"
RUN_LOG = "pretrain.log"  # a run's console output (its summary), kept beside its files
PER_RUN = ("init", "seed", "max_steps", "output_dir", "resume", "disable_tqdm")  # set per run, not by the config
RUNS = "runs"  # where study folders go by default (model_cards/ holds the committed evidence)


def arm_slug(label: str) -> str:
    """The folder name of an arm: ``label`` with runs of other characters than ``[A-Za-z0-9._-]`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_")[:60]


def study_seeds(seeds: list[int]) -> list[int]:
    """One integer N means seeds 0..N-1; several integers are the seeds themselves."""
    seeds = [int(s) for s in seeds]
    chosen = list(range(seeds[0])) if len(seeds) == 1 else seeds
    if not chosen or min(chosen) < 0 or len(set(chosen)) != len(chosen):
        raise ConfigError(f"--seeds {' '.join(map(str, seeds))}: give a count N >= 1 (seeds 0..N-1) or several "
                          "distinct seeds >= 0, e.g. --seeds 5 or --seeds 0 1 2")
    return chosen


@dataclass
class LMStudy:
    """Settings of the LM init study (see the module docstring).

    Args:
        config (`str`): a pretraining YAML path or bundled config name.
        arms (`list[str]`): init rule specs, the first the baseline of the tests.
        seeds (`list[int]`): the seeds (already expanded by `study_seeds`).
        steps (`int`): optimizer steps of every run (overrides the config's max_steps).
        target_loss (`float`): the eval loss of the steps-to-target column.
        arm_names (`list[str]`, *optional*): labels of the arms (default: the specs).
        horizons (`list[int]`, *optional*): eval steps of the table (default: every eval step all runs have).
        output (`str`, *optional*): the study folder (default ``runs/lm-<config stem>``).
        overwrite (`bool`): replace an existing study folder, runs included.
        progress (`bool`): a progress bar over the runs.
        report_only (`bool`): train nothing; write the report of the seeds every arm has finished (a partial card
            of a study that is still growing).
        command (`str`, *optional*): the command that regenerates the study, for the card.
        runs_from (`str`, *optional*): a card of this study (``study.json``, ``runs.csv``, ``curves.csv``) whose
            finished runs are taken instead of trained again (a study that spans machines).
    """

    config: str
    arms: list[str]
    seeds: list[int]
    steps: int
    target_loss: float
    arm_names: list[str] | None = None
    horizons: list[int] | None = None
    output: str | None = None
    overwrite: bool = False
    progress: bool = True
    report_only: bool = False
    command: str | None = None
    runs_from: str | None = None
    labelled: list[dict] = field(init=False)
    options: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        if not self.arms:
            raise ConfigError("--study lm needs --arms: one or more init rule specs, e.g. --arms gpt2 kaiming")
        names = self.arm_names or list(self.arms)
        if len(names) != len(self.arms):
            raise ConfigError(f"--arm-names has {len(names)} names for {len(self.arms)} --arms; give one per arm")
        for spec in self.arms:
            try:
                get_rule(spec)
            except RuleError as exc:
                raise RuleError(f"--arms {spec!r}: {exc}") from None
        self.labelled = [{"label": n, "spec": s, "slug": arm_slug(n)} for n, s in zip(names, self.arms)]
        slugs = [a["slug"] for a in self.labelled]
        if "" in slugs or len(set(slugs)) != len(slugs):
            raise ConfigError(f"arm labels {names} give folder names {slugs}: they must be non-empty and distinct; "
                              "give --arm-names")
        if self.steps is None or self.steps < 1:
            raise ConfigError(f"--steps {self.steps}: give the optimizer steps of every run, e.g. --steps 600")
        if self.target_loss is None or not self.target_loss > 0:
            raise ConfigError(f"--target-loss {self.target_loss}: give the eval loss to reach, e.g. 5.5")
        if self.horizons and (min(self.horizons) < 1 or max(self.horizons) > self.steps):
            raise ConfigError(f"--horizons {self.horizons} must lie in 1..{self.steps} (--steps)")
        self.options = {k: v for k, v in config_values(self.config).items() if k not in PER_RUN}
        if self.output is None:
            self.output = f"{RUNS}/lm-{resolve_config_path(self.config).stem}"

    def run_dir(self, arm: dict, seed: int) -> Path:
        """``{output}/runs/{slug}/seed{seed}``."""
        return Path(self.output) / "runs" / arm["slug"] / f"seed{seed}"

    def pretrain_args(self, arm: dict, seed: int) -> list[str]:
        """The ``hf-varinit pretrain`` arguments of one run."""
        return ["--config", self.config, "--init", arm["spec"], "--seed", str(seed), "--max-steps", str(self.steps),
                "--output-dir", str(self.run_dir(arm, seed)), "--disable-tqdm"]

    def pretrain_options(self, arm: dict, seed: int, *, resume: bool = False) -> PretrainOptions:
        """The options of one run: those of `pretrain_args` (and ``--resume``)."""
        return build_options(self.config, init=arm["spec"], seed=seed, max_steps=self.steps,
                             output_dir=str(self.run_dir(arm, seed)), disable_tqdm=True, resume=resume)

    def settings(self) -> dict[str, Any]:
        """The ``study.json`` document (without the wall times)."""
        return {"format": STUDY_FORMAT, "format_version": 1, "config": self.config, "options": self.options,
                "steps": self.steps, "arms": self.labelled, "seeds": self.seeds, "target_loss": self.target_loss,
                "horizons": self.horizons, "command": self.command or self.default_command()}

    def default_command(self) -> str:
        words = ["hf-varinit", "compare", "--study", "lm", "--config", self.config, "--arms", *self.arms,
                 "--arm-names", *[a["label"] for a in self.labelled], "--seeds", *map(str, self.seeds),
                 "--steps", str(self.steps), "--target-loss", f"{self.target_loss:g}", "--output", str(self.output)]
        return shlex.join(words + (["--horizons", *map(str, self.horizons)] if self.horizons else []))


@dataclass
class LMStudyResult:
    """What `run_lm_study` did: the folder, the printed table (None when stopped), what happened to each run."""

    output: Path
    table: str | None
    outcomes: dict[str, str]
    stopped_by: int | None = None

    @property
    def exit_code(self) -> int:
        return 0 if self.stopped_by is None else 128 + self.stopped_by


def _read_study(output: Path) -> dict | None:
    path = output / STUDY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is unreadable ({exc}); pass --overwrite to start the study again") from exc


def check_same_study(study: LMStudy, before: dict | None) -> dict[str, float]:
    """Refuse a study folder made with another config or step count, or another spec under an arm's label.

    Returns:
        The wall seconds recorded so far (``"<slug>/seed<N>"`` -> seconds).
    """
    if before is None:
        return {}
    where = f"{Path(study.output) / STUDY_FILE}"
    for key in ("options", "steps"):
        if before.get(key) != study.settings()[key]:
            raise ConfigError(f"{where} was made with {key}={before.get(key)!r}, now {study.settings()[key]!r}; "
                              "pass --overwrite to replace the study, or choose another --output")
    old_specs = {a["label"]: a["spec"] for a in before.get("arms", [])}
    for arm in study.labelled:
        if arm["label"] in old_specs and old_specs[arm["label"]] != arm["spec"]:
            raise ConfigError(f"{where}: arm {arm['label']!r} was {old_specs[arm['label']]!r}, now {arm['spec']!r}; "
                              "pass --overwrite, or give the new spec another --arm-names label")
    return dict(before.get("wall_seconds") or {})


def run_status(study: LMStudy, arm: dict, seed: int) -> str:
    """``finished`` (trained here, or restored from a card), ``resume`` (a complete checkpoint) or ``new``; a finished
    run of other settings is refused."""
    run_dir = study.run_dir(arm, seed)
    record = read_record(run_dir)
    if record is not None:
        _refuse_other_settings(run_dir, {"init": canonical_spec(record.get("spec")), "seed": record.get("seed"),
                                         "steps": record.get("steps")}, arm, seed, study.steps)
        return "finished"
    if (run_dir / "final" / "config.json").is_file() and (run_dir / STATS_FILENAME).is_file():
        try:
            metadata = load_stats(run_dir / STATS_FILENAME).metadata
        except StatsError as exc:
            raise ConfigError(f"{run_dir}: unreadable statistics ({exc}); pass --overwrite to rerun the study") from exc
        _refuse_other_settings(run_dir, {"init": canonical_spec(metadata.get("rule")), "seed": metadata.get("seed"),
                                         "steps": metadata.get("max_steps")}, arm, seed, study.steps)
        if metadata.get("final_step") == study.steps:
            return "finished"
    return "resume" if find_latest_checkpoint(run_dir) is not None else "new"


def _refuse_other_settings(run_dir: Path, recorded: dict, arm: dict, seed: int, steps: int) -> None:
    asked = {"init": canonical_spec(arm["spec"]), "seed": seed, "steps": steps}
    differ = [k for k in asked if recorded[k] != asked[k]]
    if differ:
        what = ", ".join(f"{k}={recorded[k]!r} (asked {asked[k]!r})" for k in differ)
        raise ConfigError(f"{run_dir} is a finished run with {what}; pass --overwrite to replace the study "
                          "folder, or choose another --output")


def run_lm_study(study: LMStudy) -> LMStudyResult:
    """Train every missing (arm, seed) run, then write the report into ``study.output``.

    Raises:
        RuleError / ReportError: a bad arm spec or an unreadable report, before any training.
        ConfigError: a folder of another study, or a finished run of other settings (without ``overwrite``).
    """
    output = Path(study.output)
    pilots = {}
    for arm in study.labelled:  # loads every report up front: a bad one fails before any training
        try:
            pilots[arm["label"]] = pilot_cost(arm["spec"])
        except HFVarInitError as exc:
            raise type(exc)(f"--arms {arm['spec']!r}: {exc}") from exc
    if study.overwrite and output.exists() and not study.report_only:
        shutil.rmtree(output)
    wall = check_same_study(study, _read_study(output))
    if study.runs_from:
        restored = restore_runs(study.runs_from, study.labelled, study.seeds, study.steps, study.options, study.run_dir,
                                lambda arm, seed: run_status(study, arm, seed) == "finished")
        wall.update({key: seconds for key, seconds in restored.items() if seconds is not None})
        print(f"restored {len(restored)} finished run(s) from {study.runs_from}: {', '.join(restored) or 'none'}",
              file=sys.stderr)
    pairs = [(arm, seed) for seed in study.seeds for arm in study.labelled]
    for arm, seed in pairs:  # runs restored by an earlier call (e.g. a --report-only look) keep their card's time
        record = read_record(study.run_dir(arm, seed))
        if record is not None and record.get("wall_seconds") is not None:
            wall.setdefault(f"{arm['slug']}/seed{seed}", record["wall_seconds"])
    statuses = {(arm["label"], seed): run_status(study, arm, seed) for arm, seed in pairs}
    settings = study.settings()
    if study.report_only:
        return _partial_report(study, output, statuses, settings, wall, pilots)
    atomic_write_json(output / STUDY_FILE, {**settings, "wall_seconds": wall})
    outcomes: dict[str, str] = {}
    bar = tqdm(pairs, desc="lm study", unit="run", disable=not study.progress or tqdm_disabled_by_env())
    for arm, seed in bar:
        key, run_dir = f"{arm['slug']}/seed{seed}", study.run_dir(arm, seed)
        status = statuses[arm["label"], seed]
        if status == "finished":
            outcomes[key] = "skipped (finished)"
            tqdm.write(f"{arm['label']} seed {seed}: finished already, skipped ({run_dir})")
            continue
        args = study.pretrain_args(arm, seed) + (["--resume"] if status == "resume" else [])
        result = _train(args, study.pretrain_options(arm, seed, resume=status == "resume"), run_dir, arm, seed)
        if result.stopped_by is not None:
            bar.close()
            print(f"stopped during {arm['label']} seed {seed}; rerun the same command to continue the study",
                  file=sys.stderr)
            return LMStudyResult(output, None, outcomes, result.stopped_by)
        wall[key] = round(wall.get(key, 0.0) + result.wall_s, 1)
        atomic_write_json(output / STUDY_FILE, {**settings, "wall_seconds": wall})
        outcomes[key] = "resumed" if status == "resume" else "trained"
        tqdm.write(f"{arm['label']} seed {seed}: {outcomes[key]} to step {result.step}, eval loss "
                   f"{result.eval_loss:.4f}, {result.wall_s:.0f} s ({run_dir})")
    bar.close()
    runs, metrics = run_rows(study.labelled, study.seeds, study.run_dir, study.target_loss, wall)
    _, table = write_lm_report(output, settings, runs, metrics, pilots)
    return LMStudyResult(output, table, outcomes)


def _partial_report(study: LMStudy, output: Path, statuses: dict, settings: dict, wall: dict,
                    pilots: dict) -> LMStudyResult:
    """The report of the seeds that every arm has finished, the study's settings untouched (``--report-only``)."""
    done = [s for s in study.seeds if all(statuses[a["label"], s] == "finished" for a in study.labelled)]
    if not done:
        raise ConfigError(f"{output}: no seed has finished in every arm yet; run the study without --report-only")
    settings = {**settings, "seeds": done}
    if len(done) < len(study.seeds):  # every seed finished: the card is the whole study's
        settings["partial"] = f"seeds {done} of {study.seeds} finished in every arm"
    runs, metrics = run_rows(study.labelled, done, study.run_dir, study.target_loss, wall)
    _, table = write_lm_report(output, settings, runs, metrics, pilots)
    return LMStudyResult(output, table, {f"{a['slug']}/seed{s}": "reported" for s in done for a in study.labelled})


def _train(args: list[str], options: PretrainOptions, run_dir: Path, arm: dict, seed: int):
    """One run through `run_pretrain`, its console output appended to ``run_dir/pretrain.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["hf-varinit", "pretrain", *[a for a in args if a != "--resume"]])
    with open(run_dir / RUN_LOG, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log):
        print(f"$ {command}{' --resume' if '--resume' in args else ''}", flush=True)
        try:
            return run_pretrain(options, command=command)
        except HFVarInitError as exc:
            raise type(exc)(f"{arm['label']} seed {seed} ({run_dir}): {exc}") from exc
