"""The shared metric functions against the LoFiT authors' own output files, plus edge cases."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from lofit_bench.metrics import (
    close_answer,
    logsumexp,
    matches_any_lenient,
    matches_any_strict,
    mean,
    normalize_lenient,
    parse_clutrr_answer,
    parse_mquake_answer_strict,
    split_answers,
    truthfulqa_mc1,
    truthfulqa_mc2,
)

FIXTURES = Path(__file__).parent / "fixtures"
TQA_RUNS = ("llama2-7b-base", "llama2-13b-base", "gemma-7b-base")
MQUAKE_OUTPUTS = (
    FIXTURES / "mquake_reference_outputs" / "gemma-7b-base_mquake_lofit_seed42" / "outputs.json"
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def parse_scores(cell: str) -> list[float]:
    return [float(value) for value in cell.split(",")]


# -- TruthfulQA against the reference answer dumps ---------------------------------------------


@pytest.mark.parametrize("run", TQA_RUNS)
def test_mc1_mc2_reproduce_every_row_and_the_summary(run: str) -> None:
    rows = read_csv(
        FIXTURES
        / "truthfulqa_reference_outputs"
        / "answer_dump"
        / f"{run}_truthfulqa_lofit_seed42.csv"
    )
    tag = next(column for column in rows[0] if column.endswith(" MC1"))[: -len(" MC1")]
    mc1_values, mc2_values = [], []
    for row in rows:
        true_answers = split_answers(row["Correct Answers"])
        false_answers = split_answers(row["Incorrect Answers"])
        true_scores = parse_scores(row[f"{tag} lprob scores-true"])
        false_scores = parse_scores(row[f"{tag} lprob scores-false"])
        assert (len(true_scores), len(false_scores)) == (len(true_answers), len(false_answers))
        best_score = true_scores[true_answers.index(close_answer(row["Best Answer"]))]
        mc1 = truthfulqa_mc1(best_score, false_scores)
        mc2 = truthfulqa_mc2(true_scores, false_scores)
        assert mc1 == float(row[f"{tag} MC1"]), row["Question"]
        assert mc2 == pytest.approx(float(row[f"{tag} MC2"]), abs=1e-6), row["Question"]
        mc1_values.append(mc1)
        mc2_values.append(mc2)
    (summary,) = read_csv(
        FIXTURES
        / "truthfulqa_reference_outputs"
        / "summary_dump"
        / f"{run}_truthfulqa_lofit_seed42.csv"
    )
    assert mean(mc1_values) == pytest.approx(float(summary["MC1"]), abs=1e-9)
    assert mean(mc2_values) == pytest.approx(float(summary["MC2"]), abs=1e-6)


def test_answers_are_split_stripped_and_closed() -> None:
    assert split_answers(" No, pigs cannot fly; Pigs can fly when transported.;;  x ") == [
        "No, pigs cannot fly.",
        "Pigs can fly when transported.",
        "x.",
    ]
    assert close_answer(" Yes ") == "Yes."


def test_mc1_counts_a_tie_as_wrong() -> None:
    assert truthfulqa_mc1(-2.0, [-3.0, -2.5]) == 1.0
    assert truthfulqa_mc1(-2.0, [-3.0, -2.0]) == 0.0


def test_mc2_is_stable_for_very_negative_scores() -> None:
    # exp(-2000) underflows to 0.0, so a naive ratio would be 0/0.
    expected = 1 / (1 + math.exp(-1.0))
    assert truthfulqa_mc2([-2000.0], [-2001.0]) == pytest.approx(expected, rel=1e-12)
    assert truthfulqa_mc2([-1.0, -2.0], [-1.5]) == pytest.approx(
        (math.exp(-1) + math.exp(-2)) / (math.exp(-1) + math.exp(-2) + math.exp(-1.5))
    )
    assert logsumexp([]) == -math.inf


# -- exact-match parsers -----------------------------------------------------------------------


def test_mquake_strict_parser_reproduces_the_reference_accuracy() -> None:
    records = json.loads(MQUAKE_OUTPUTS.read_text(encoding="utf-8"))
    assert len(records) == 864
    strict = []
    for record in records:
        prediction = parse_mquake_answer_strict(record["response"])
        assert prediction == record["pred"]
        correct = matches_any_strict(prediction, record["label"])
        assert int(correct) == record["correct"]
        strict.append(correct)
    assert mean(strict) == pytest.approx(27 / 864)  # the stored 3.1 %
    lenient = mean(matches_any_lenient(record["pred"], record["label"]) for record in records)
    assert 0.358 <= lenient <= 0.360


def test_mquake_parsers_on_planted_text() -> None:
    text = "Q: Imagine that X. Where? A: Canberra.\nQ: next A: ignored"
    assert parse_mquake_answer_strict(text) == " ignored"
    assert parse_mquake_answer_strict("Q: Where? A: Canberra.\nQ: more") == " canberra."
    assert parse_mquake_answer_strict("Q: Where? A:Canberra") == "canberra"
    assert not matches_any_strict(" canberra", ["Canberra"])
    assert matches_any_lenient(" canberra", ["Canberra"])
    assert matches_any_lenient(" CANBERRA.", ["canberra"])
    assert normalize_lenient("  U.S.  ") == "u.s"


def test_clutrr_parser_follows_lo_fit() -> None:
    prompt = "Answer:  Roy is Cleo 's\n"
    assert parse_clutrr_answer(prompt + "grandfather. blah") == "grandfather"
    assert parse_clutrr_answer(prompt + " Grandfather \n.") == "grandfather"
    assert parse_clutrr_answer(prompt + "grandfather\nblah") == "grandfather\nblah"
    # lo-fit takes split("'s\n")[1]: a second marker ends the answer too
    assert parse_clutrr_answer(prompt + "uncle's\nfather.") == "uncle"
    assert parse_clutrr_answer("no marker at all") == ""


def test_mean_of_nothing_is_nan() -> None:
    assert math.isnan(mean([]))
    assert mean([True, False, True, True]) == 0.75


def test_fractions_print_in_percent_and_log_probabilities_as_they_are():
    from lofit_bench.metrics import format_metric

    assert format_metric("exact_match", 0.3) == "30.0 %"
    assert format_metric("efficacy", 0.7) == "70.0 %"
    assert format_metric("new_answer_log_prob", -6.249) == "-6.25"  # not "-624.9 %"
