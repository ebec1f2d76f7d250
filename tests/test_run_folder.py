"""The run folder's layout has one owner: every path a sweep writes comes from RunFolder."""

from __future__ import annotations

import pickle

import pytest

from lofit_bench.errors import UserError
from lofit_bench.records.run_folder import RunFolder


def test_the_layout_of_a_run_folder(tmp_path):
    folder = RunFolder(tmp_path)
    record = folder.record("lofit", "lm_eval:hellaswag", 42, "0123456789abcdef")
    assert record == tmp_path / "records" / "lofit--lm_eval%3Ahellaswag--seed42--01234567.json"
    stem = record.stem
    assert folder.artifacts(stem) == tmp_path / "artifacts" / stem
    assert folder.log(stem) == tmp_path / "logs" / f"{stem}.log"
    assert folder.status(stem) == tmp_path / ".status" / f"{stem}.json"
    assert folder.tuning_database(stem) == tmp_path / "tuning" / f"{stem}.sqlite3"
    assert folder.tuning_state(stem, "fold_0", "best") == tmp_path / "tuning" / stem / "fold_0" / "best"
    assert folder.lock_file == tmp_path / ".lofit-bench.lock"
    assert folder.relative(folder.log(stem)) == f"logs/{stem}.log"


def test_a_name_cannot_lead_out_of_the_folder(tmp_path):
    with pytest.raises(UserError, match="outside the output folder"):
        RunFolder(tmp_path / "out").artifacts("../../elsewhere")


def test_a_run_folder_crosses_process_boundaries_and_takes_a_path(tmp_path):
    folder = RunFolder(str(tmp_path))
    assert pickle.loads(pickle.dumps(folder)) == folder
    assert RunFolder.of(tmp_path) == folder and RunFolder.of(folder) is folder
