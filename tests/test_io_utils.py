"""The one folder writer and the one overwrite rule (`hf_varinit.io_utils`): an absent or empty folder is written,
a non-empty one only with overwrite=True, a file is refused, and a failed write leaves nothing behind."""

import os

import pytest

from hf_varinit.errors import ConfigError, ReportError, WriteError
from hf_varinit.io_utils import check_overwrite, write_folder


def _write(text):
    return {"README.md": lambda p: p.write_text(text), "sub/a.txt": lambda p: p.write_text("a")}


def test_an_absent_folder_may_be_written(tmp_path):
    assert check_overwrite(tmp_path / "new", overwrite=False) == tmp_path / "new"


def test_an_empty_existing_folder_is_accepted_like_save_pretrained(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_overwrite(tmp_path / "empty", overwrite=False) == tmp_path / "empty"


def test_a_non_empty_folder_needs_overwrite_and_the_message_names_path_and_fix(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(ReportError, match=f"{tmp_path / 'full'} already exists; pass --overwrite"):
        check_overwrite(tmp_path / "full", overwrite=False)
    assert check_overwrite(tmp_path / "full", overwrite=True) == tmp_path / "full"


def test_a_file_at_the_destination_is_refused_even_with_overwrite(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ReportError, match="afile exists and is not a folder"):
        check_overwrite(tmp_path / "afile", overwrite=True)
    with pytest.raises(ReportError, match="is a file, so no folder can be made inside it"):
        check_overwrite(tmp_path / "afile" / "report", overwrite=True)


def test_the_error_type_is_the_callers(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(ConfigError, match="--overwrite"):
        check_overwrite(tmp_path / "full", overwrite=False, error=ConfigError)


def test_write_folder_writes_every_file_into_an_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    out = write_folder(tmp_path / "out", _write("new"))
    assert (out / "README.md").read_text() == "new" and (out / "sub" / "a.txt").read_text() == "a"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_write_folder_refuses_a_non_empty_folder_and_replaces_it_whole_with_overwrite(tmp_path):
    write_folder(tmp_path / "out", _write("old"))
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(ReportError, match="--overwrite"):
        write_folder(tmp_path / "out", _write("new"))
    assert (tmp_path / "out" / "README.md").read_text() == "old"
    write_folder(tmp_path / "out", _write("new"), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["README.md", "sub"]
    assert (tmp_path / "out" / "README.md").read_text() == "new"


def test_a_failing_writer_leaves_the_folder_untouched_and_no_staging_folder(tmp_path):
    write_folder(tmp_path / "out", _write("old"))

    def fail(path):
        path.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_folder(tmp_path / "out", {"README.md": fail}, overwrite=True)
    assert (tmp_path / "out" / "README.md").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_the_empty_name_hands_the_writer_the_folder_itself(tmp_path):
    out = write_folder(tmp_path / "out", {"": lambda d: (d / "a.txt").write_text("a")})
    assert (out / "a.txt").read_text() == "a"


def test_a_writers_full_disk_is_a_write_error_naming_the_folder_and_a_refusal_is_the_callers(tmp_path, monkeypatch):
    import hf_varinit.io_utils as io_utils

    def disk_full(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match=r"cannot write the folder .*out: No space left on device "
                                         r"\[Errno 28: ENOSPC\]; free space on that file system") as caught:
        write_folder(tmp_path / "out", {"a.txt": disk_full})
    assert caught.value.errno == 28 and os.listdir(tmp_path) == []

    def refused(dest):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(io_utils, "staging_folder", refused)
    with pytest.raises(ReportError, match="cannot write the report folder .*out: Permission denied"):
        write_folder(tmp_path / "out", {"a.txt": lambda p: p.write_text("a")})
    assert os.listdir(tmp_path) == []
