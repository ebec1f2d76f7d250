"""The sweep-file-vs-explicit-values rule (lofit_bench.sweep.overrides), without the command
line: explicit values replace the file's, mappings merge key by key, defaults fill the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from lofit_bench.errors import UserError
from lofit_bench.sweep.overrides import SweepOverrides, merge_sweep_settings
from lofit_bench.sweep.sweep_file import load_sweep_config

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")

SWEEP = """
methods = ["zero-shot", "lofit", "iti"]
tasks = ["clutrr"]
models = ["tiny-random-llama"]
budget = "smoke"
seeds = [1, 2]
tune_per = "seed"
out = "runs/from-file"
executor = "inline"
jobs = 3
dtype = "fp32"

[budget_overrides]
eval_examples = 7
train_examples = 5

[method_options.lofit]
l1_lambda = 0.001
stage2_learning_rate = 0.02

[method_options.iti]
alpha = 5.0

[method_grid.lofit]
heads = [0.05, 0.1]

[budget_axis]
dev_examples = [4, 8]
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(SWEEP)
    return load_sweep_config(path)


def test_without_overrides_the_file_decides_everything(config):
    settings = merge_sweep_settings(config)

    assert (settings.methods, settings.tasks, settings.seeds) == (["zero-shot", "lofit", "iti"], ["clutrr"], [1, 2])
    assert (settings.budget.name, settings.budget.eval_examples, settings.budget.train_examples) == ("smoke", 7, 5)
    assert settings.method_options == {"lofit": {"l1_lambda": 0.001, "stage2_learning_rate": 0.02}, "iti": {"alpha": 5.0}}
    assert settings.method_grid == {"lofit": {"heads": [0.05, 0.1]}}
    assert settings.budget_axis == {"dev_examples": [4, 8]}
    assert [(model.name, model.dtype) for model in settings.models] == [("tiny-random-llama", "fp32")]
    assert (settings.tune_per, settings.out, settings.executor, settings.jobs) == ("seed", Path("runs/from-file"), "inline", 3)
    assert settings.given == frozenset()


def test_explicit_values_replace_the_files_and_mappings_merge_key_by_key(config):
    overrides = SweepOverrides(
        methods=["lofit"], seeds=[9], budget_overrides={"eval_examples": 11, "tune": False},
        method_options={"lofit": {"l1_lambda": 0.002}}, method_grid={"lofit": {"stage1_learning_rate": [0.1, 0.3]}},
        budget_axis={"train_examples": [2, 4]}, model_fields={"dtype": "bf16"}, out=Path("elsewhere"), jobs=1,
    )
    settings = merge_sweep_settings(config, overrides)

    assert (settings.methods, settings.seeds) == (["lofit"], [9])
    # --budget-set eval_examples wins; the file's train_examples stays; tune is added.
    assert (settings.budget.eval_examples, settings.budget.train_examples, settings.budget.tune) == (11, 5, False)
    # --methods narrowing the file drops iti's options; lofit's merge, the explicit value winning.
    assert settings.method_options == {"lofit": {"l1_lambda": 0.002, "stage2_learning_rate": 0.02}}
    assert settings.method_grid == {"lofit": {"heads": [0.05, 0.1], "stage1_learning_rate": [0.1, 0.3]}}
    assert settings.budget_axis == {"dev_examples": [4, 8], "train_examples": [2, 4]}
    assert [model.dtype for model in settings.models] == ["bf16"]
    assert (settings.out, settings.jobs, settings.executor) == (Path("elsewhere"), 1, "inline")
    assert settings.given == {"methods", "seeds", "budget_overrides", "method_options", "method_grid", "budget_axis",
                              "model_fields", "out", "jobs"}


def test_model_arguments_rank_file_then_explicit_arguments_then_single_fields(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('methods = ["zero-shot"]\ntasks = ["clutrr"]\ndevice = "cpu"\n'
                    '[model_args]\npretrained = "tiny-random-llama"\nrevision = "file"\ndtype = "fp16"\n')
    config = load_sweep_config(path)

    from_file = merge_sweep_settings(config).models[0]
    assert (from_file.name, from_file.revision, from_file.dtype, from_file.device) == ("tiny-random-llama", "file", "fp16", "cpu")
    explicit = merge_sweep_settings(config, SweepOverrides(model_args="revision=flag,dtype=bf16", model_fields={"dtype": "fp32"}))
    assert (explicit.models[0].revision, explicit.models[0].dtype) == ("flag", "fp32")
    with pytest.raises(UserError, match="both name the model"):
        merge_sweep_settings(config, SweepOverrides(models=["a"], model_args="pretrained=b"))


def test_no_file_takes_the_defaults_and_needs_methods_and_tasks():
    with pytest.raises(UserError, match="name the methods and tasks"):
        merge_sweep_settings(None, SweepOverrides(methods=["zero-shot"]))
    settings = merge_sweep_settings(None, SweepOverrides(methods=["zero-shot"], tasks=["clutrr"]))
    assert (settings.budget.name, settings.executor, settings.jobs, settings.tune_per, settings.out) == ("paper", "process", 1, "fold", None)


def test_the_merged_sweep_plans_one_run_per_config_budget_and_seed(config):
    """2 lofit grid points x 2 budget-axis points x 2 seeds, plus 2 axis points x 2 seeds of zero-shot and of iti."""
    specs = merge_sweep_settings(config).plan()

    assert len(specs) == 16
    assert {spec.method_options.get("heads") for spec in specs if spec.method == "lofit"} == {0.05, 0.1}
    assert {spec.seed for spec in specs} == {1, 2}
    assert {spec.method_options.get("alpha") for spec in specs if spec.method == "iti"} == {5.0}
