"""The run folder (``--out``): one owner for its layout, so every module asks for the path it
needs instead of composing it from a bare folder.

    OUT/
      records/<method>--<task>--seed<N>--<key>.json   one record per run (written atomically)
      artifacts/<record stem>/<fold>/                 what a method saved (heads.json, weights)
      logs/<record stem>.log                          a run's own output (library bars, logs)
      tuning/<record stem>.sqlite3                    its tuning trials (Optuna); and
      tuning/<record stem>/<fold>/best/               the best trial's state until it is tested
      shared/<kind>/<content hash>/                   frozen-model work computed once per sweep
      .status/<record stem>.json                      a running run's phase, for the console
      .lofit-bench.lock                               the sweep holding the folder
      study.json                                      the study the sweep ran (run --study)
      report.md, report.html, results.csv, results.json

Names become file-name parts through :func:`lofit_bench.names.file_part` (``lm_eval:x`` ->
``lm_eval%3Ax``) and every path is checked to stay inside the folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lofit_bench.names import file_part, inside


@dataclass(frozen=True)
class RunFolder:
    """A sweep's output folder. Plain data: it crosses process boundaries with the runs."""

    root: Path

    RECORDS = "records"
    ARTIFACTS = "artifacts"
    LOGS = "logs"
    TUNING = "tuning"
    SHARED = "shared"
    STATUS = ".status"
    LOCK = ".lofit-bench.lock"
    STUDY = "study.json"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of(cls, folder: RunFolder | Path | str) -> RunFolder:
        """``folder`` as a RunFolder (the Python API takes a path too)."""
        return folder if isinstance(folder, RunFolder) else cls(Path(folder))

    def inside(self, path: Path) -> Path:
        """``path``, checked to stay inside the folder (symlinks and ``..`` resolved)."""
        return inside(self.root, path)

    @property
    def records(self) -> Path:
        return self.root / self.RECORDS

    def record(self, method: str, task: str, seed: int, key: str) -> Path:
        """``records/METHOD--TASK--seedN--KEY.json`` (the key's first 8 characters)."""
        name = f"{file_part(method)}--{file_part(task)}--seed{seed}--{key[:8]}.json"
        return self.inside(self.records / name)

    def artifacts(self, stem: str) -> Path:
        return self.inside(self.root / self.ARTIFACTS / stem)

    def log(self, stem: str) -> Path:
        return self.inside(self.root / self.LOGS / f"{stem}.log")

    @property
    def logs(self) -> Path:
        return self.root / self.LOGS

    def status(self, stem: str) -> Path:
        return self.root / self.STATUS / f"{stem}.json"

    def tuning_database(self, stem: str) -> Path:
        return self.inside(self.root / self.TUNING / f"{stem}.sqlite3")

    def tuning_state(self, stem: str, fold: str, state: str) -> Path:
        return self.inside(self.root / self.TUNING / stem / fold / state)

    @property
    def study(self) -> Path:
        """The study a folder's sweep ran (``run --study``), for the report's paper tables."""
        return self.root / self.STUDY

    @property
    def shared(self) -> Path:
        """Where runs of the sweep keep work they share (:mod:`lofit_bench.shared_work`)."""
        return self.inside(self.root / self.SHARED)

    @property
    def lock_file(self) -> Path:
        return self.root / self.LOCK

    def relative(self, path: Path) -> str:
        """``path`` as the record stores it: relative to the folder."""
        return str(path.relative_to(self.root))

    def __str__(self) -> str:
        return str(self.root)
