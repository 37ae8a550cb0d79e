"""Atomic outputs: nothing half-written, and the permissions the umask allows (not mkstemp's 0600)."""
import os
import stat

import pytest

from llm_edit.io import atomic_directory, write_json


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
