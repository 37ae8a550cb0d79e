"""Atomic outputs: nothing half-written, and the permissions the umask allows (not mkstemp's 0600)."""
import os
import stat

import pytest

from llm_edit.core.files import atomic_directory, write_json


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_directory(tmp_path / "out") as d:
            write_json(d / "b.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "b.json").st_mode) == 0o644


def test_failed_directory_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "out") as d:
            write_json(d / "b.json", {})
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_overwriting_a_file_leaves_no_stray_old_copy(tmp_path):
    (tmp_path / "out").write_text("a file where the directory goes")
    with atomic_directory(tmp_path / "out", overwrite=True) as d:
        write_json(d / "b.json", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "b.json").is_file()


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, monkeypatch):
    from llm_edit.core.files import OutputPathError, check_output_dir

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    for bad in (".", "..", str(tmp_path), "afile/out", "afile/deeper/out"):
        with pytest.raises(OutputPathError):
            check_output_dir(bad, overwrite=True)
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output_dir("exists", overwrite=False)
    assert check_output_dir("exists", overwrite=True) and check_output_dir("new/nested/out", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "exists"]  # probes leave nothing


def test_a_parent_that_refuses_writes_is_reported(tmp_path, monkeypatch):
    # root writes in a 0555 directory, so a read-only mount is imitated at the probe itself
    import tempfile

    import llm_edit.core.files as io_module
    from llm_edit.core.files import OutputPathError, check_output_dir

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert io_module.tempfile is tempfile
    with pytest.raises(OutputPathError, match=r"cannot write in .* \(Read-only file system\)"):
        check_output_dir(tmp_path / "out", overwrite=False)
