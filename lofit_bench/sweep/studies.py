"""Studies: the paper's experiments as data, one command each (``lofit-bench run --study table3``).

A study is a sweep file (:mod:`lofit_bench.sweep.sweep_file`) plus a ``[study]`` table saying
what it reproduces and the paper's own numbers for the same rows::

    methods = ["zero-shot", "lofit"]
    tasks = ["clutrr"]
    seeds = [42, 43]
    budget = "paper"

    [study]
    name = "my-study"
    title = "LoFiT vs 0-shot on CLUTRR"
    description = "..."
    compare_against = "lofit"        # optional: significance marks against this row

    [study.paper]                    # optional: shown beside ours in the report
    cite = "Yin et al. 2024, Table 1"
    model = "Llama-2-7B"
    [study.paper.rows]
    "zero-shot" = { "clutrr exact_match" = 64.7 }
    lofit = { "clutrr exact_match" = 89.7 }

The built-in studies live in ``lofit_bench/data/studies/``; a plugin ships its own through
the ``register_studies`` hook (``register(path_to_toml)``), the way it ships methods.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lofit_bench import hookimpl
from lofit_bench.errors import UserError, did_you_mean
from lofit_bench.names import name_problem
from lofit_bench.records.run_folder import RunFolder
from lofit_bench.records.store import write_json_atomic
from lofit_bench.sweep.sweep_file import SweepConfig, read_sweep_data, sweep_config_from_data

#: What a run folder keeps of the study it was run as (its report reads it).
BUILTIN_FOLDER = Path(__file__).resolve().parents[1] / "data" / "studies"
STUDY_KEYS = ("name", "title", "description", "compare_against", "paper")


@dataclass
class Study:
    name: str
    title: str
    description: str
    path: Path
    config: SweepConfig
    compare_against: str | None = None
    paper: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What the run folder keeps (``study.json``), for its report."""
        return {"name": self.name, "title": self.title, "description": self.description, "source": str(self.path),
                "compare_against": self.compare_against, "paper": self.paper}

    def write(self, out_dir: Path) -> Path:
        path = RunFolder(out_dir).study
        write_json_atomic(path, self.to_dict())
        return path


def load_study(path: Path) -> Study:
    """Read and check a study file: its ``[study]`` table, then the rest as a sweep file."""
    data = read_sweep_data(path)
    meta = data.pop("study", None)
    if not isinstance(meta, dict):
        raise UserError(f"study file {path} needs a [study] table with at least name = \"...\"")
    unknown = sorted(set(meta) - set(STUDY_KEYS))
    if unknown:
        raise UserError(f"unknown keys in [study] of {path}: {', '.join(unknown)}. Known: {', '.join(STUDY_KEYS)}")
    name = meta.get("name")
    problem = name_problem(name) if isinstance(name, str) else "it must be a string"
    if problem:
        raise UserError(f"study file {path}: name {name!r} cannot be used: {problem}")
    paper = meta.get("paper") or {}
    if not isinstance(paper, dict) or not isinstance(paper.get("rows", {}), dict):
        raise UserError(f"study file {path}: [study.paper] must be a table with cite, model and [study.paper.rows]")
    config = sweep_config_from_data(data, path)
    if not config.methods or not config.tasks:
        raise UserError(f"study file {path} must name its methods and tasks")
    return Study(name=name, title=str(meta.get("title", "")), description=str(meta.get("description", "")), path=path,
                 config=config, compare_against=meta.get("compare_against"), paper=json.loads(json.dumps(paper)))


def registered_studies() -> dict[str, tuple[Path, str]]:
    """Study name -> (file, plugin that registered it), built-ins first. A file that does not
    load, or whose name another study took first, costs a warning naming it."""
    from lofit_bench.plugins import get_host, warn_plugin

    studies: dict[str, tuple[Path, str]] = {}
    for path, plugin_name in get_host().study_files:
        try:
            study = load_study(path)
        except (UserError, TypeError) as error:
            warn_plugin(f"plugin {plugin_name!r} registered study file {str(path)!r}, which was skipped: {error}")
            continue
        if study.name in studies:
            warn_plugin(f"plugin {plugin_name!r} tried to register study {study.name!r}, which is taken; kept the first")
            continue
        studies[study.name] = (path, plugin_name)
    return studies


def find_study(name_or_path: str) -> Study:
    """A registered study by name, or a study file by path."""
    path = Path(name_or_path).expanduser()
    if path.suffix in (".toml", ".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise UserError(f"study file {path} does not exist")
        return load_study(path)
    studies = registered_studies()
    if name_or_path not in studies:
        raise UserError(f"unknown study {name_or_path!r}.{did_you_mean(name_or_path, studies)} "
                        f"Known: {', '.join(studies) or '(none)'} (`lofit-bench list studies`), or pass a study file")
    return load_study(studies[name_or_path][0])


@hookimpl
def register_studies(register):
    for path in sorted(BUILTIN_FOLDER.glob("*.toml")):
        register(path)
