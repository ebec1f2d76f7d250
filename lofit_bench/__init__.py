"""lofit-bench: compare LoFiT and other ways of steering or fine-tuning a language model
under identical data splits and budgets.

The package's folders are its layers, top to bottom (``.importlinter`` enforces them):
``cli`` > ``sweep`` (plan, execute, tune) and ``report`` (from records only) > ``lmeval`` >
the built-in plugins ``methods`` and ``tasks`` > ``engine`` (the model side: loading, hook
sites, edits, training, scoring) > the plugin API at the top of the package (``method``,
``task``, ``budget``, ``search_space``, ``hookspecs``, ``plugins``) > ``records`` > foundations
(``errors``, ``names``, ``progress``, ``measure``, ``prompt_positions``).

The Python API is importable from here: ``from lofit_bench import plan_sweep, run_sweep``
(imported on first use, so ``import lofit_bench`` stays light).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from lofit_bench.hookspecs import hookimpl

__version__ = "0.1.0"

#: The Python API: name -> the module that defines it (imported on first use).
API = {
    "ModelSettings": "lofit_bench.sweep.spec",
    "RunSpec": "lofit_bench.sweep.spec",
    "plan_sweep": "lofit_bench.sweep.runner",
    "run_sweep": "lofit_bench.sweep.runner",
    "load_sweep_config": "lofit_bench.sweep.sweep_file",
    "SweepOverrides": "lofit_bench.sweep.overrides",
    "merge_sweep_settings": "lofit_bench.sweep.overrides",
    "Budget": "lofit_bench.budget",
    "get_budget": "lofit_bench.budget",
    "build_report": "lofit_bench.report.write",
    "render_markdown": "lofit_bench.report.build",
    "load_records": "lofit_bench.records.store",
    "RunRecord": "lofit_bench.records.record",
    "Method": "lofit_bench.method",
    "MethodConfig": "lofit_bench.method",
    "FitContext": "lofit_bench.method",
    "Task": "lofit_bench.task",
    "UserError": "lofit_bench.errors",
}

#: Module paths of lofit-bench 0.1 (one flat folder) -> where the module lives now. Plugins and
#: scripts written against the old paths keep working: ``import lofit_bench.training`` is
#: ``lofit_bench.engine.training``, the same module object.
MOVED_MODULES = {
    "lofit_bench.models": "lofit_bench.engine.models",
    "lofit_bench.architectures": "lofit_bench.engine.architectures",
    "lofit_bench.interventions": "lofit_bench.engine.interventions",
    "lofit_bench.training": "lofit_bench.engine.training",
    "lofit_bench.scoring": "lofit_bench.engine.scoring",
    "lofit_bench.activations": "lofit_bench.engine.activations",
    "lofit_bench.heads": "lofit_bench.engine.heads",
    "lofit_bench.run_record": "lofit_bench.records.record",
    "lofit_bench.runner": "lofit_bench.sweep.runner",
    "lofit_bench.run_spec": "lofit_bench.sweep.spec",
    "lofit_bench.run_one": "lofit_bench.sweep.worker",
    "lofit_bench.executors": "lofit_bench.sweep.executors",
    "lofit_bench.schedule": "lofit_bench.sweep.schedule",
    "lofit_bench.lock": "lofit_bench.sweep.folder_lock",
    "lofit_bench.console": "lofit_bench.sweep.console",
    "lofit_bench.sweep_config": "lofit_bench.sweep.sweep_file",
    "lofit_bench.tuning": "lofit_bench.sweep.tuning",
    "lofit_bench.preflight": "lofit_bench.sweep.preflight",
    "lofit_bench.validate": "lofit_bench.sweep.settings",
    "lofit_bench.faults": "lofit_bench.sweep.faults",
    "lofit_bench.report_model": "lofit_bench.report.model",
    "lofit_bench.report_html": "lofit_bench.report.html",
    "lofit_bench.compare": "lofit_bench.report.compare",
    "lofit_bench.stats": "lofit_bench.report.stats",
    "lofit_bench.run_folder": "lofit_bench.records.run_folder",
    "lofit_bench.side_effects": "lofit_bench.engine.side_effects",
    "lofit_bench.retention": "lofit_bench.engine.retention",
    "lofit_bench.locality": "lofit_bench.engine.locality",
    "lofit_bench.inference_speed": "lofit_bench.engine.inference_speed",
    "lofit_bench.fit_effects": "lofit_bench.engine.fit_effects",
    "lofit_bench.precision": "lofit_bench.engine.precision",
    "lofit_bench.gpu_environment": "lofit_bench.engine.gpu_environment",
    "lofit_bench.standin_model": "lofit_bench.engine.standin_model",
    "lofit_bench.model_integrity": "lofit_bench.engine.model_integrity",
    "lofit_bench.report_side_effects": "lofit_bench.report.side_effects",
    "lofit_bench.report_sections": "lofit_bench.report.sections",
    "lofit_bench.report_axes": "lofit_bench.report.axes",
    "lofit_bench.report_paper_tables": "lofit_bench.report.paper_tables",
    "lofit_bench.head_overlap": "lofit_bench.report.head_overlap",
    "lofit_bench.plot_style": "lofit_bench.report.plot_style",
    "lofit_bench.report_formats": "lofit_bench.report.formats",
    "lofit_bench.compare_html": "lofit_bench.report.compare_html",
    "lofit_bench.tune_per_fold": "lofit_bench.sweep.tune_per_fold",
    "lofit_bench.sweep_grid": "lofit_bench.sweep.grid",
    "lofit_bench.run_inputs": "lofit_bench.sweep.run_inputs",
    "lofit_bench.studies": "lofit_bench.sweep.studies",
    "lofit_bench.tracking": "lofit_bench.sweep.tracking",
}



class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers an old module path with the module at its new place (see :data:`MOVED_MODULES`)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module: Any) -> None:
        """The module ran when it was imported at its new place."""


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str) -> Any:
    if name in API:
        return getattr(importlib.import_module(API[name]), name)
    raise AttributeError(f"module 'lofit_bench' has no attribute {name!r}")


__all__ = ["hookimpl", "__version__", *API]
