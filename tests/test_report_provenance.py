"""What a report says about where its numbers come from and how sure they are: the commits
behind the runs (``--strict``), intervals, exact tests with Holm's correction, tuned values at
the edge of their range (records alone, no model)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from report_helpers import fake_record, with_examples, write
from scipy.stats import binomtest

from lofit_bench.cli import main
from lofit_bench.report.compare import compare_folders
from lofit_bench.report.write import build_report
from lofit_bench.search_space import Choice, IntRange, LogUniform, Uniform, range_edge

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")


def with_commit(record: dict, commit: str, dirty: bool = False, **environment) -> dict:
    record["environment"] = {"git_commit": commit + ("-dirty" if dirty else ""), "git_dirty": dirty,
                             "versions": {"torch": "2.13.0"}} | environment
    return record


# -- provenance -------------------------------------------------------------------------------------
def test_one_clean_commit_is_named_and_passes_strict(tmp_path):
    write(tmp_path, [with_commit(fake_record(method, 1, 0.5), "a" * 40) for method in ("lofit", "lora")])
    report = build_report(tmp_path, strict=True)
    code_lines = [line for line in report.header if line.text.startswith("code:")]
    assert [(line.text, line.warning) for line in code_lines] == [(f"code: lofit-bench commit {'a' * 12} (2 runs)", False)]


def test_every_commit_is_listed_with_its_runs_and_dirty_ones_are_marked(tmp_path):
    records = [with_commit(fake_record("lofit", seed, 0.5), "a" * 40) for seed in (1, 2, 3)]
    records += [with_commit(fake_record("lora", 1, 0.5), "b" * 40, dirty=True)]
    records += [with_commit(fake_record(f"m{index}", 1, 0.5), f"{index}" * 40) for index in range(4)]
    write(tmp_path, records)
    report = build_report(tmp_path)
    [line] = [line for line in report.header if line.text.startswith("code:")]
    assert line.warning
    assert line.text.startswith("code: the runs come from 6 code states: aaaaaaaaaaaa (3 runs), ")
    assert "bbbbbbbbbbbb-dirty (1 run, uncommitted changes)" in line.text
    assert all(f"{index}" * 12 + " (1 run" in line.text for index in range(4))  # none hidden as "N more values"
    assert "more values" not in line.text


@pytest.mark.parametrize("dirty", [True, False])
def test_strict_refuses_a_dirty_or_mixed_folder_in_one_line(tmp_path, capsys, dirty):
    records = [with_commit(fake_record("lofit", 1, 0.5), "a" * 40, dirty=dirty)]
    records += [with_commit(fake_record("lora", 1, 0.5), "a" * 40 if dirty else "b" * 40)]
    write(tmp_path, records)
    assert main(["report", str(tmp_path), "--strict"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--strict" in error
    assert ("uncommitted code" in error) if dirty else ("2 code states" in error)
    assert not (tmp_path / "report.md").exists()  # nothing written
    assert main(["report", str(tmp_path)]) == 0  # without --strict: written, with the warning
    assert "warning: code: the runs come from 2 code states" in (tmp_path / "report.md").read_text()


def test_compare_strict_refuses_folders_of_two_commits(tmp_path, capsys):
    write(tmp_path / "a", [with_commit(fake_record("lofit", 1, 0.5, model="model-a"), "a" * 40)])
    write(tmp_path / "b", [with_commit(fake_record("lofit", 1, 0.5, model="model-b"), "b" * 40)])
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--strict"]) == 2
    assert "2 code states" in capsys.readouterr().err
    comparison = compare_folders([tmp_path / "a", tmp_path / "b"])
    assert any(warning.startswith("code: the runs come from 2 code states") for warning in comparison.warnings)


def test_only_libraries_the_runs_imported_can_raise_a_version_warning(tmp_path):
    first = with_commit(fake_record("lofit", 1, 0.5), "a" * 40, used_libraries=["torch"],
                        versions={"torch": "2.13.0", "lm_eval": "0.4.8"})
    second = with_commit(fake_record("lora", 1, 0.5), "a" * 40, used_libraries=["torch"],
                         versions={"torch": "2.13.0", "lm_eval": "0.4.9"})
    write(tmp_path, [first, second])
    assert not [line for line in build_report(tmp_path).header if "different versions" in line.text]
    second["environment"]["used_libraries"] = ["torch", "lm_eval"]
    first["environment"]["used_libraries"] = ["torch", "lm_eval"]
    write(tmp_path, [first, second])
    [line] = [line for line in build_report(tmp_path).header if "different versions" in line.text]
    assert "lm_eval" in line.text and "0.4.8" in line.text


# -- uncertainty ------------------------------------------------------------------------------------
def right_wrong(reference: list[float], gains: int, losses: int) -> list[float]:
    """``reference`` with ``gains`` of its wrong examples right and ``losses`` of its right ones wrong."""
    values = list(reference)
    wrong = [index for index, value in enumerate(values) if value == 0.0]
    right = [index for index, value in enumerate(values) if value == 1.0]
    for index in wrong[:gains]:
        values[index] = 1.0
    for index in right[:losses]:
        values[index] = 0.0
    return values


def test_binary_scores_get_mcnemar_and_the_table_is_holm_adjusted(tmp_path):
    lofit = [1.0] * 30 + [0.0] * 30
    lora = right_wrong(lofit, gains=16, losses=6)  # the demo case: 16 vs 6 discordant pairs
    iti = right_wrong(lofit, gains=0, losses=20)
    write(tmp_path, [
        with_examples(fake_record("lofit", 1, 0.5), lofit),
        with_examples(fake_record("lora", 1, sum(lora) / 60), lora),
        with_examples(fake_record("iti", 1, sum(iti) / 60), iti),
    ])
    rows = {row.method: row for row in build_report(tmp_path, reference="lofit").summary}
    exact_lora = binomtest(6, 22, 0.5).pvalue
    exact_iti = binomtest(0, 20, 0.5).pvalue
    assert rows["lora"].p_test == "McNemar" and rows["lora"].p_raw == pytest.approx(exact_lora)
    assert rows["lora"].p_raw == pytest.approx(0.0525, abs=1e-4)  # the bootstrap said 0.040
    # Holm: the smaller p is doubled, the larger kept (and never below the smaller's adjusted value)
    assert rows["iti"].p_value == pytest.approx(2 * exact_iti)
    assert rows["lora"].p_value == pytest.approx(max(exact_lora, 2 * exact_iti))
    markdown = (tmp_path / "report.md").read_text()
    assert "p vs lofit (Holm)" in markdown and f"{rows['lora'].p_value:.3f} (McNemar)" in markdown


def test_averaged_seeds_are_not_binary_and_fall_back_to_the_bootstrap(tmp_path):
    lofit = [1.0] * 30 + [0.0] * 30
    records = [with_examples(fake_record("lofit", seed, 0.5), lofit) for seed in (1, 2)]
    records += [with_examples(fake_record("lora", 1, 0.5), right_wrong(lofit, 10, 0)),
                with_examples(fake_record("lora", 2, 0.5), right_wrong(lofit, 0, 10))]
    write(tmp_path, records)
    [lora] = [row for row in build_report(tmp_path, reference="lofit").summary if row.method == "lora"]
    assert lora.p_test == "bootstrap"


def test_every_row_carries_an_interval_that_covers_its_mean(tmp_path):
    values = [1.0] * 24 + [0.0] * 56  # 30 %
    write(tmp_path, [with_examples(fake_record("lofit", 1, 0.3), values)])
    [row] = build_report(tmp_path).summary
    low, high = row.interval
    assert low < 0.3 < high and 0.15 < low and high < 0.45
    assert f"[{100 * low:.1f}, {100 * high:.1f}]" in (tmp_path / "report.md").read_text()
    assert "exact_match 95 % CI" in (tmp_path / "report.md").read_text()


def test_stored_values_are_shown_beside_trainable_parameters(tmp_path):
    record = fake_record("iti", 1, 0.2)
    record["trainable_parameters"] = {"count": 0, "percent_of_base": 0.0, "stored_values": 512, "base_parameters": 134_515_008}
    write(tmp_path, [record])
    build_report(tmp_path)
    assert "0 (+512 stored)" in (tmp_path / "report.md").read_text()


# -- search ranges --------------------------------------------------------------------------------
@pytest.mark.parametrize(("space", "value", "edge"), [
    (LogUniform(1e-5, 1e-2), 7.9e-3, "upper"),  # the LoRA case: 2.9 of 3 decades
    (LogUniform(1e-6, 1e-4), 6.0e-5, None),  # full fine-tuning's: 1.78 of 2 decades, 0.89 of the range
    (LogUniform(1e-6, 1e-4), 8.0e-5, "upper"),  # 0.95 of the range
    (LogUniform(1e-3, 1.0), 0.46, None),  # LoFiT's: 2.66 of 3 decades, 0.89
    (LogUniform(1e-3, 1.0), 0.9, "upper"),
    (LogUniform(1e-5, 1e-2), 1.2e-5, "lower"),
    (Uniform(0.0, 1.0), 0.95, "upper"),
    (Uniform(0.0, 1.0), 0.5, None),
    (IntRange(0, 20), 1, "lower"),
    (Choice(0.01, 0.1), 0.1, None),
])
def test_a_value_within_a_tenth_of_its_range_is_at_the_edge(space, value, edge):
    assert range_edge(space, value) == edge


def test_the_report_flags_tuned_values_at_an_edge(tmp_path):
    record = fake_record("lora", 1, 0.5)
    record["folds"]["main"]["tuning"] = {"mode": "on", "trials_run": 4, "chosen": {"learning_rate": 7.9e-3},
                                         "range_edges": {"learning_rate": "upper"}}
    write(tmp_path, [record, fake_record("lofit", 1, 0.4)])
    report = build_report(tmp_path)
    [warning] = [line.text for line in report.header if "edge of their search range" in line.text]
    assert "lora learning_rate (upper edge) on clutrr" in warning
    assert "0.0079; at range edge: learning_rate (upper edge)" in (tmp_path / "report.md").read_text()


# -- small-model defaults ---------------------------------------------------------------------------
def test_lofit_uses_its_small_model_rate_below_a_billion_parameters():
    from lofit_bench.methods.lofit import LoFiT

    task = SimpleNamespace(name="mquake", objective="sft", method_values={})
    small = SimpleNamespace(parameter_count=134_515_008)
    large = SimpleNamespace(parameter_count=6_738_415_616)
    assert LoFiT.untuned_values(task, small)["stage2_learning_rate"][0] == 0.1
    assert LoFiT.untuned_values(task, large)["stage2_learning_rate"][0] == 1e-2  # paper Table 6
    assert LoFiT.untuned_values(task)["stage2_learning_rate"][0] == 1e-2  # no model: the paper's


def test_an_installed_release_is_one_clean_code_state(tmp_path):
    records = [fake_record(method, 1, 0.5) for method in ("lofit", "lora")]
    for record in records:
        record["environment"] = {"git_commit": None, "git_dirty": None, "versions": {"lofit-bench": "0.2.0"}}
    write(tmp_path, records)
    report = build_report(tmp_path, strict=True)
    assert [line.text for line in report.header if line.text.startswith("code:")] == ["code: lofit-bench release 0.2.0 (2 runs)"]
