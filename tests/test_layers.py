"""The layers hold where it matters at run time, beyond what `lint-imports` checks statically."""

from __future__ import annotations

import subprocess
import sys


def imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_a_run_spec_is_plain_data_that_imports_no_torch_and_no_plugin():
    """Specs cross process boundaries: a worker unpickles one before it may import torch (it must
    first hide the other runs' GPUs), so the spec's module brings neither torch nor the plugins."""
    modules = imported_after("import lofit_bench.sweep.spec, lofit_bench.sweep.executors")
    assert "torch" not in modules
    assert "lofit_bench.plugins" not in modules


def test_the_command_line_answers_help_without_heavy_libraries():
    modules = imported_after("import lofit_bench.cli")
    assert not {"torch", "transformers", "lm_eval", "matplotlib"} & modules


def test_every_module_path_of_the_flat_layout_still_imports_as_the_same_module():
    """Plugins and scripts written against 0.1's paths (``lofit_bench.training``) keep working."""
    import importlib

    import lofit_bench

    for old, new in lofit_bench.MOVED_MODULES.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
