"""Parallel runs start longest first; the order the user gave stands for ties and for one job."""

from __future__ import annotations

import pytest

from lofit_bench.budget import get_budget
from lofit_bench.sweep import runner
from lofit_bench.sweep.runner import ModelSettings, plan_sweep, run_sweep
from lofit_bench.sweep.schedule import expected_cost, longest_first, training_characters

TINY = ModelSettings("tiny-random-llama", device="cpu")


def names(specs):
    return [(spec.method, spec.task) for spec in specs]


def test_longest_first_puts_trained_methods_on_the_largest_task_first():
    specs = plan_sweep(["zero-shot", "iti", "lora", "lofit"], ["mquake", "clutrr"], get_budget("paper").replace(seeds=(42,)), TINY)
    order = names(longest_first(specs))
    assert training_characters("clutrr", None) > training_characters("mquake", None)
    # LoFiT trains twice (head selection, then biases): it outlasts LoRA on the same task.
    assert order[:2] == [("lofit", "clutrr"), ("lora", "clutrr")]
    assert order.index(("lora", "mquake")) < order.index(("iti", "mquake"))
    # zero-shot never trains: last, in the order it was given.
    assert order[-2:] == [("zero-shot", "mquake"), ("zero-shot", "clutrr")]


def test_cost_grows_with_trials_only_for_tuned_methods():
    tuned = get_budget("paper").replace(seeds=(42,))  # one seed: the costs of one run
    untuned = tuned.replace(tune=False)
    (lora_tuned,) = plan_sweep(["lora"], ["mquake"], tuned, TINY)
    (lora_untuned,) = plan_sweep(["lora"], ["mquake"], untuned, TINY)
    assert expected_cost(lora_tuned) == pytest.approx(tuned.trials * expected_cost(lora_untuned))
    # A user-fixed learning rate leaves LoRA nothing to tune: one fit's cost.
    (lora_fixed,) = plan_sweep(["lora"], ["mquake"], tuned, TINY, method_options={"lora": {"learning_rate": 1e-3}})
    assert expected_cost(lora_fixed) == pytest.approx(expected_cost(lora_untuned))
    # The budget's train_examples caps the text a run reads.
    (lora_small,) = plan_sweep(["lora"], ["mquake"], untuned.replace(train_examples=10), TINY)
    assert 0 < expected_cost(lora_small) < expected_cost(lora_untuned)


class Submitted(Exception):
    pass


@pytest.mark.parametrize(("jobs", "longest"), [(2, True), (1, False)])
def test_sweep_submits_longest_first_only_when_runs_go_in_parallel(monkeypatch, tmp_path, jobs, longest):
    specs = plan_sweep(["zero-shot", "lora"], ["mquake", "clutrr"], get_budget("smoke"), TINY)
    seen = []

    def fake_execute(pending, *args, **kwargs):
        seen.extend(pending)
        raise Submitted
        yield  # a generator, like the real one

    monkeypatch.setattr(runner, "execute", fake_execute)
    with pytest.raises(Submitted):
        run_sweep(specs, tmp_path / "out", progress=False, echo=lambda _: None, executor="process", jobs=jobs)
    expected = longest_first(specs) if longest else specs
    assert names(seen) == names(expected)
    if longest:
        assert names(seen)[0] == ("lora", "clutrr") and names(seen) != names(specs)


def test_with_tune_per_fold_the_first_seed_tunes_and_starts_before_the_others():
    tuned = get_budget("paper").replace(seeds=(42,))  # one seed: the costs of one run
    (untuned,) = plan_sweep(["lora"], ["mquake"], tuned.replace(tune=False), TINY)
    first, second = plan_sweep(["lora"], ["mquake"], tuned, TINY, seeds=[42, 43])
    assert expected_cost(first) == pytest.approx(tuned.trials * expected_cost(untuned))
    assert expected_cost(second) == pytest.approx(expected_cost(untuned))  # one fit with the first seed's values
    assert [spec.seed for spec in longest_first([second, first])] == [42, 43]
    per_seed = plan_sweep(["lora"], ["mquake"], tuned, TINY, seeds=[42, 43], tune_per="seed")
    assert [expected_cost(spec) for spec in per_seed] == pytest.approx([expected_cost(first)] * 2)
