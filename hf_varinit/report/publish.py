"""Where a report goes besides a local folder (`hf_varinit.io_utils.write_folder`): a hub model repo.

Repo ids are checked with `huggingface_hub.utils.validate_repo_id` and offline mode is huggingface_hub's own
flag (``HF_HUB_OFFLINE=1``), so the rules are the hub's, not a copy of them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, is_offline_mode, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id

from hf_varinit.errors import ReportError

__all__ = ["check_dataset_ids", "check_repo_id", "download_folder", "hub_dataset_ids", "hub_offline", "is_repo_id",
           "push_folder", "push_written"]


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE=1`` when it was imported)."""
    return bool(is_offline_mode())


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a valid hub repo id (``name`` or ``namespace/name``).

    Raises:
        ReportError: naming the id and what is wrong with it.
    """
    if not isinstance(repo_id, str):
        raise ReportError(f"{repo_id!r} is not a hub repo id ('name' or 'namespace/name'): not a string")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ReportError(f"{repo_id!r} is not a hub repo id ('name' or 'namespace/name'): {exc}") from None
    return repo_id


def push_folder(
    folder: str | os.PathLike[str], repo_id: str, *, token: str | None = None, private: bool = False,
    commit_message: str, where: str,
) -> str:
    """Upload ``folder`` to the hub model repo ``repo_id`` (created if needed); returns the repo URL.

    Args:
        folder (`str` or `os.PathLike`): the report folder.
        repo_id (`str`): ``namespace/name``.
        token (`str`, *optional*): a hub token (default: the logged-in one).
        private (`bool`): create the repo private.
        commit_message (`str`): the hub commit's message.
        where (`str`): appended to every error: where the report is and how to push it later.

    Raises:
        ReportError: a bad repo id, offline mode, or any hub failure (auth, network, ...).
    """
    _check_push(repo_id, where)
    try:
        api = HfApi(token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=commit_message)
    except Exception as exc:  # network, auth, offline mode, validation...
        raise ReportError(f"could not push to {repo_id}: {type(exc).__name__}: {exc}; {where}") from exc
    return str(url)


def push_written(write: Callable[[Path], None], repo_id: str, *, where: str, **kwargs: Any) -> str:
    """Write a report into a temporary folder with ``write(folder)`` and push it; ``kwargs`` go to `push_folder`.

    The repo id and offline mode are checked before anything is written.
    """
    _check_push(repo_id, where)
    with tempfile.TemporaryDirectory(prefix="hf_varinit_report_") as tmp:
        folder = Path(tmp) / "report"
        folder.mkdir()
        write(folder)
        return push_folder(folder, repo_id, where=where, **kwargs)


def is_repo_id(value: Any) -> bool:
    """Whether ``value`` is a valid hub repo id."""
    try:
        return isinstance(value, str) and bool(check_repo_id(value))
    except ReportError:
        return False


def check_dataset_ids(datasets: Sequence[str]) -> list[str]:
    """``datasets`` as a list if every entry is a hub repo id; otherwise a ReportError naming the entry."""
    for d in datasets:
        if not is_repo_id(d):
            raise ReportError(f"datasets={list(datasets)!r}: {d!r} is not a hub dataset id ('name' or "
                              "'namespace/name'); the card's `datasets` lists hub datasets only, and a local "
                              "corpus is described in the card's text (the run's `dataset` metadata)")
    return list(datasets)


def hub_dataset_ids(metadata: dict) -> list[str]:
    """The hub dataset ids of a run's metadata: its ``dataset`` when it names a hub dataset (``hub:<id>[:config]``,
    as `hf_varinit.train.data` describes one); a local corpus (the Python standard library, a file or a folder)
    gives none."""
    described = metadata.get("dataset")
    items = described if isinstance(described, list) else [described]
    ids = []
    for item in items:
        if isinstance(item, str) and item.startswith("hub:"):
            repo_id = item[len("hub:"):].split(":", 1)[0].strip()
            if is_repo_id(repo_id):
                ids.append(repo_id)
    return list(dict.fromkeys(ids))


def _check_push(repo_id: str, where: str) -> None:
    try:
        check_repo_id(repo_id)
    except ReportError as exc:
        raise ReportError(f"could not push: {exc}; {where}") from None
    if hub_offline():
        raise ReportError(f"could not push to {repo_id}: offline (HF_HUB_OFFLINE=1); {where}")


def download_folder(repo_id: str, files: Sequence[str]) -> Path:
    """Download ``files`` of the hub model repo ``repo_id``; returns the local snapshot folder.

    Raises:
        ReportError: ``repo_id`` is not a repo id, the hub is offline, or the download fails.
    """
    try:
        check_repo_id(repo_id)
    except ReportError:
        raise ReportError(f"{repo_id!r}: no such file or folder, and not a hub repo id") from None
    if hub_offline():
        raise ReportError(f"{repo_id!r} is not a local path and the hub is unreachable "
                          "(HF_HUB_OFFLINE=1); download the report folder and pass its path")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(files)))
    except Exception as exc:  # offline, missing repo, auth...
        raise ReportError(f"{repo_id!r} is not a local path and could not be downloaded from the hub: "
                          f"{type(exc).__name__}: {exc}") from exc
