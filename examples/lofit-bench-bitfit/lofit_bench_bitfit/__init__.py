"""lofit-bench-bitfit: an example third-party plugin for lofit-bench.

It adds the method ``bitfit`` (train only bias terms) and the task ``local-qa`` (a small
local QA set). lofit-bench finds this module through the entry point declared in
``pyproject.toml``::

    [project.entry-points.lofit_bench]
    bitfit = "lofit_bench_bitfit"

and calls the two hooks below, the same hooks lofit-bench's built-in methods and tasks use.
"""

from lofit_bench import hookimpl
from lofit_bench_bitfit.method import BitFit, BitFitConfig
from lofit_bench_bitfit.task import LocalQA

__version__ = "0.1.0"

__all__ = ["BitFit", "BitFitConfig", "LocalQA", "register_methods", "register_tasks"]


@hookimpl
def register_methods(register):
    register(BitFit)


@hookimpl
def register_tasks(register):
    register(LocalQA)
