"""lm-eval adapters, both directions, with the harness's scorer cross-checked against lm-eval.

The cross-checks score the same documents twice on the same model: once through the harness
(our Scorer, with its shared-prefix KV cache, and our parsers) and once through lm-eval
(`lm_eval:NAME` tasks over the exported configs, i.e. lm-eval's HFLM, tokenisation, batching
and generation, with the exported utils.py). Per-answer log-probs must agree to float32
round-off, MC1 exactly, MC2 to 1e-4, exact match exactly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from plugin_helpers import install_entry_point_plugin
from tasks_helpers import FakeScorer

pytest.importorskip("lm_eval")

from lofit_bench import hookimpl, plugins  # noqa: E402
from lofit_bench.cli import main  # noqa: E402
from lofit_bench.engine.models import load_model  # noqa: E402
from lofit_bench.engine.scoring import Scorer  # noqa: E402
from lofit_bench.errors import UserError  # noqa: E402
from lofit_bench.lmeval import INCLUDE_VARIABLE, INSTALL_HINT  # noqa: E402
from lofit_bench.lmeval.export import export_lm_eval_tasks  # noqa: E402
from lofit_bench.lmeval.tasks import evaluate_model, lm_eval_task_class  # noqa: E402
from lofit_bench.registry import Registry  # noqa: E402
from lofit_bench.tasks.clutrr import Clutrr  # noqa: E402
from lofit_bench.tasks.mquake import Mquake  # noqa: E402
from lofit_bench.tasks.truthfulqa import TruthfulQA, scoring_context  # noqa: E402

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "lofit-bench-bitfit"
LOG_PROB_TOLERANCE = 1e-4  # absolute, or relative for sums of hundreds of token log-probs
MC2_TOLERANCE = 1e-4
BATCH_SIZE = 8


@pytest.fixture(autouse=True)
def builtin_plugins_only(monkeypatch):
    """The process-wide host with built-ins only, and no include paths left from other tests."""
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "")
    monkeypatch.delenv(INCLUDE_VARIABLE, raising=False)
    plugins.reset_host()
    yield
    plugins.reset_host()


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random-llama", device="cpu")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    export_lm_eval_tasks(folder, ["clutrr", "mquake", "truthfulqa"])
    return folder


def exported_utils(folder: Path):
    """The exported utils.py, imported from its file as lm-eval's ``!function`` does."""
    spec = importlib.util.spec_from_file_location("utils", folder / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documents(folder: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (folder / "data" / f"{name}_test.jsonl").open()]


def close(ours: float, theirs: float) -> bool:
    return math.isclose(ours, theirs, rel_tol=LOG_PROB_TOLERANCE, abs_tol=LOG_PROB_TOLERANCE)


# -- cross-checks (shared by the fast and the slow tests) ------------------------------------
def crosscheck_truthfulqa(lm, limit: int) -> dict[str, float]:
    """Per-answer log-probs, MC1 and MC2 of fold 0's first ``limit`` questions, both ways."""
    ours = TruthfulQA().evaluate(Scorer(lm.model, lm.tokenizer, BATCH_SIZE), "fold_0", "test", limit)
    theirs = lm_eval_task_class("lofit_truthfulqa_fold0")().evaluate(Scorer(lm.model, lm.tokenizer, BATCH_SIZE), "main", "test", limit)
    assert ours.example_ids == theirs.example_ids
    worst = 0.0
    for mine, other in zip(ours.per_example, theirs.per_example, strict=True):
        our_scores = mine["true_scores"] + mine["false_scores"]
        their_scores = [log_prob for log_prob, _ in other["response"]]
        assert len(our_scores) == len(their_scores)
        for a, b in zip(our_scores, their_scores, strict=True):
            assert close(a, b), (mine["id"], a, b)
            worst = max(worst, abs(a - b))
        if mine["best_score"] != max(mine["false_scores"]):  # a tie could go either way by round-off
            assert mine["mc1"] == other["mc1"]
        assert abs(mine["mc2"] - other["mc2"]) < MC2_TOLERANCE
    assert ours.metrics["mc1"] == theirs.metrics["mc1"]
    assert abs(ours.metrics["mc2"] - theirs.metrics["mc2"]) < MC2_TOLERANCE
    return {"max_abs_log_prob_diff": worst, "mc2_diff": abs(ours.metrics["mc2"] - theirs.metrics["mc2"])}


def crosscheck_generation(lm, task_name: str, limit: int) -> None:
    """Same generations, same parsed predictions, same exact match, example by example."""
    task = {"clutrr": Clutrr, "mquake": Mquake}[task_name]()
    ours = task.evaluate(Scorer(lm.model, lm.tokenizer, BATCH_SIZE), "main", "test", limit)
    theirs = lm_eval_task_class(f"lofit_{task_name}")().evaluate(Scorer(lm.model, lm.tokenizer, BATCH_SIZE), "main", "test", limit)
    assert ours.example_ids == theirs.example_ids
    for mine, other in zip(ours.per_example, theirs.per_example, strict=True):
        assert mine["generation"] == other["response"][0]
        assert float(mine["exact_match"]) == other["exact_match"]
        if task_name == "mquake":
            assert float(mine["exact_match_lenient"]) == other["exact_match_lenient"]
    assert {name: ours.metrics[name] for name in task.metrics} == theirs.metrics  # teacher-forced ones are ours only


# -- direction 2: our tasks -> lm-eval ------------------------------------------------------
BUILTIN_EXPORTS = ["lofit_clutrr", "lofit_mquake", "lofit_truthfulqa_fold0", "lofit_truthfulqa_fold1"]

QUIZ_PLUGIN = '''
"""A third party's tasks: a multiple-choice quiz, and a task with its own opaque evaluate."""
from dataclasses import dataclass

from lofit_bench import hookimpl
from lofit_bench.task import EvalResult, MultipleChoiceTask, Task

QUESTIONS = [
    ("quiz-0", "Grass is", (" green", " blue", " red")),
    ("quiz-1", "The sky is", (" blue", " green")),
    ("quiz-2", "Snow is", (" white", " black", " pink", " green")),
]


@dataclass(frozen=True)
class Question:
    id: str
    text: str
    answers: tuple


class ColourQuiz(MultipleChoiceTask):
    name = "colour-quiz"
    description = "three colour questions; the first answer is right"
    objective = "none"
    metrics = ("acc", "margin")
    primary_metric = "acc"

    def items(self, fold, split):
        self.check_fold(fold)
        return [Question(*question) for question in QUESTIONS] if split == "test" else []

    def training_examples(self, fold, split="train"):
        return []

    def choice_context(self, question):
        return question.text

    def choices(self, question):
        return list(question.answers)

    def score_choices(self, question, log_likelihoods):
        margin = log_likelihoods[0] - max(log_likelihoods[1:])
        return {"acc": float(margin > 0), "margin": margin}


class SameLmEvalName(ColourQuiz):
    name = "colour_quiz"  # lofit_colour_quiz too


class Opaque(Task):
    name = "opaque"
    objective = "none"
    evaluation = "generation"
    metrics = ("score",)
    primary_metric = "score"

    def split_ids(self, fold, split):
        return ["only"] if split == "test" else []

    def training_examples(self, fold, split="train"):
        return []

    def evaluate(self, scorer, fold, split="test", limit=None):
        return EvalResult({"score": 1.0}, ["only"])


@hookimpl
def register_tasks(register):
    register(ColourQuiz)
    register(SameLmEvalName)
    register(Opaque)
'''


@pytest.fixture
def local_qa(tmp_path, monkeypatch):
    """The example plugin (examples/lofit-bench-bitfit) installed as pip would, from its source."""
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    source = "from lofit_bench_bitfit import register_methods, register_tasks  # noqa: F401\n"
    install_entry_point_plugin(tmp_path, monkeypatch, "bitfit_entry", source, "lofit-bench-bitfit")
    assert "local-qa" in plugins.get_host().tasks


def test_export_writes_absolute_paths_and_the_tasks_own_documents(exported):
    assert sorted(path.stem for path in exported.glob("*.yaml")) == BUILTIN_EXPORTS
    config = (exported / "lofit_clutrr.yaml").read_text()
    data_file = Path(json.loads(config.split("test: ", 1)[1].splitlines()[0]))
    assert data_file.is_absolute() and data_file.exists()
    assert "process_results: !function utils.process_lofit_clutrr" in config
    utils = (exported / "utils.py").read_text()
    assert 'score_document("clutrr", "lofit_bench.tasks.clutrr:Clutrr", "main", "test", doc, results)' in utils

    truthfulqa = documents(exported, "lofit_truthfulqa_fold1")
    questions = TruthfulQA().questions("fold_1", "test")
    assert [document["id"] for document in truthfulqa] == [question.id for question in questions]
    first, question = truthfulqa[0], questions[0]
    assert first["context"] == scoring_context(question.question)
    assert first["choices"] == [" " + answer for answer in question.true_answers + question.false_answers]
    stories = documents(exported, "lofit_clutrr")
    assert [story["prompt"] for story in stories] == [story.prompt for story in Clutrr().stories("main", "test")]


def test_export_command_exports_every_registered_task(tmp_path, capsys):
    assert main(["export-lm-eval", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in BUILTIN_EXPORTS) and "skipped" not in out
    assert sorted(path.stem for path in (tmp_path / "out").glob("*.yaml")) == BUILTIN_EXPORTS


def test_export_command_with_named_tasks(tmp_path, capsys):
    assert main(["export-lm-eval", str(tmp_path / "out"), "--tasks", "mquake"]) == 0
    assert [path.stem for path in (tmp_path / "out").glob("*.yaml")] == ["lofit_mquake"]
    assert "def process_lofit_mquake(" in (tmp_path / "out" / "utils.py").read_text()
    assert main(["export-lm-eval", str(tmp_path / "bad"), "--tasks", "mquake,mquak"]) == 2
    error = capsys.readouterr().err
    assert "unknown task: mquak." in error and "Known tasks: clutrr, mquake, truthfulqa." in error
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("task_name", ["clutrr", "mquake"])
def test_exported_scoring_functions_match_the_harness_on_planted_replies(exported, task_name):
    """No model: the same replies through the harness's task and through utils.py."""
    task = {"clutrr": Clutrr, "mquake": Mquake}[task_name]()
    docs = documents(exported, f"lofit_{task_name}")[:6]
    if task_name == "clutrr":
        gold = task.stories("main", "test")[0].target_text
        replies = [" " + gold + ".\nmore", gold.upper(), "'s\n nobody.", "", " x\n" + gold, " Son."]
    else:
        golds = [case.golds for case in task.cases("main", "test")[:6]]
        replies = [golds[0][0], " " + golds[1][0], golds[2][-1] + "\nA: no", "", "A: x", "x"]
    by_prompt = {document["prompt"]: reply for document, reply in zip(docs, replies, strict=True)}
    ours = task.evaluate(FakeScorer(reply=lambda prompt: by_prompt[prompt]), "main", "test", limit=6)
    process = getattr(exported_utils(exported), f"process_lofit_{task_name}")
    for mine, document, reply in zip(ours.per_example, docs, replies, strict=True):
        assert process(document, [reply]) == {metric: float(mine[metric]) for metric in task.metrics}
    assert 0 < ours.metrics["exact_match"] < 1  # the planted replies hit both outcomes


def test_planted_answers_get_their_known_scores_through_the_exported_functions(exported):
    utils = exported_utils(exported)
    story, gold = documents(exported, "lofit_clutrr")[0], Clutrr().stories("main", "test")[0].target_text
    assert utils.process_lofit_clutrr(story, [f" {gold.capitalize()}.\nmore"]) == {"exact_match": 1.0}
    assert utils.process_lofit_clutrr(story, [" nobody."]) == {"exact_match": 0.0}
    case, answer = documents(exported, "lofit_mquake")[0], Mquake().cases("main", "test")[0].new_answer
    assert utils.process_lofit_mquake(case, [answer + "\nQ: next"]) == {"exact_match": 1.0, "exact_match_lenient": 1.0}
    assert utils.process_lofit_mquake(case, [" " + answer]) == {"exact_match": 0.0, "exact_match_lenient": 1.0}

    document, question = documents(exported, "lofit_truthfulqa_fold0")[0], TruthfulQA().questions("fold_0", "test")[0]
    n_true, n_all = len(question.true_answers), len(document["choices"])
    even = [(-2.0, False)] * n_all  # every answer equally likely: MC1 ties lose, MC2 = n_true / n_all
    assert utils.process_lofit_truthfulqa_fold0(document, even) == {"mc1": 0.0, "mc2": pytest.approx(n_true / n_all, abs=1e-12)}
    best = question.true_answers.index(question.best)
    favoured = [(0.0 if index == best else -1.0, False) for index in range(n_all)]
    mc2 = (1 + (n_true - 1) * math.exp(-1)) / (1 + (n_all - 1) * math.exp(-1))
    assert utils.process_lofit_truthfulqa_fold0(document, favoured) == {"mc1": 1.0, "mc2": pytest.approx(mc2, abs=1e-12)}


def test_exported_truthfulqa_scoring_matches_the_harness_on_planted_scores(exported):
    def score(context: str, continuation: str) -> float:
        return -float(len(continuation) % 7) - 0.1 * len(context) / 1000

    ours = TruthfulQA().evaluate(FakeScorer(score=score), "fold_0", "test", limit=20)
    process = exported_utils(exported).process_lofit_truthfulqa_fold0
    for mine, document in zip(ours.per_example, documents(exported, "lofit_truthfulqa_fold0")[:20], strict=True):
        results = [(score(document["context"], choice), False) for choice in document["choices"]]
        assert process(document, results) == {"mc1": mine["mc1"], "mc2": mine["mc2"]}


def test_a_document_that_no_longer_matches_its_task_is_refused(exported):
    process = exported_utils(exported).process_lofit_clutrr
    document = documents(exported, "lofit_clutrr")[0]
    with pytest.raises(UserError, match="no longer matches task 'clutrr'.*export-lm-eval"):
        process({**document, "prompt": document["prompt"] + " "}, ["x"])
    with pytest.raises(UserError, match="'nope' is not in task 'clutrr'"):
        process({**document, "id": "nope"}, ["x"])


def test_the_example_plugins_local_qa_is_exported_and_lm_eval_scores_it_as_the_harness(tiny, local_qa, tmp_path, monkeypatch):
    result = export_lm_eval_tasks(tmp_path / "out", ["local-qa"])
    (exported_task,) = result.tasks
    assert (exported_task.name, exported_task.class_path) == ("lofit_local_qa", "lofit_bench_bitfit.task:LocalQA")
    assert 'provided_by: "lofit-bench-bitfit 0.1"' in (tmp_path / "out" / "lofit_local_qa.yaml").read_text()
    task = plugins.get_host().tasks.get("local-qa")()
    ours = task.evaluate(Scorer(tiny.model, tiny.tokenizer, BATCH_SIZE), "main", "test")
    monkeypatch.setenv(INCLUDE_VARIABLE, str(tmp_path / "out"))
    theirs = lm_eval_task_class("lofit_local_qa")().evaluate(Scorer(tiny.model, tiny.tokenizer, BATCH_SIZE), "main", "test")
    assert theirs.example_ids == ours.example_ids == task.split_ids("main", "test")
    for mine, other in zip(ours.per_example, theirs.per_example, strict=True):
        assert other["response"][0] == mine["generation"]
        assert other["exact_match"] == float(mine["exact_match"])
    assert theirs.metrics == ours.metrics

    utils = exported_utils(tmp_path / "out")
    document = documents(tmp_path / "out", "lofit_local_qa")[0]
    assert document == {"id": "test-000", "prompt": "Q: What is the capital of Turkey?\nA:", "target": " Ankara"}
    assert utils.process_lofit_local_qa(document, [" Ankara\nQ: What is"]) == {"exact_match": 1.0}
    assert utils.process_lofit_local_qa(document, [" Ankara, Turkey"]) == {"exact_match": 0.0}


def test_a_plugin_multiple_choice_task_is_exported_and_lm_eval_scores_it_as_the_harness(tiny, tmp_path, monkeypatch, capsys):
    install_entry_point_plugin(tmp_path, monkeypatch, "quiz_plugin", QUIZ_PLUGIN, "quiz-plugin")
    assert main(["export-lm-eval", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "skipped opaque: task 'opaque' cannot be exported to lm-eval: it is neither a GenerationTask nor a MultipleChoiceTask" in out
    assert "skipped colour_quiz: task 'colour_quiz' cannot be exported: task 'colour-quiz' already exports as lm-eval task 'lofit_colour_quiz'" in out
    assert "lofit_colour_quiz" in out and "lofit_clutrr" in out
    assert 'task_class: "quiz_plugin:ColourQuiz"' in (tmp_path / "out" / "lofit_colour_quiz.yaml").read_text()

    ours = plugins.get_host().tasks.get("colour-quiz")().evaluate(Scorer(tiny.model, tiny.tokenizer, BATCH_SIZE), "main")
    results, _ = evaluate_model(tiny.model, tiny.tokenizer, "lofit_colour_quiz", include=[tmp_path / "out"], batch_size=BATCH_SIZE)
    samples = sorted(results["samples"]["lofit_colour_quiz"], key=lambda sample: sample["doc_id"])
    assert [sample["doc"]["id"] for sample in samples] == ours.example_ids == ["quiz-0", "quiz-1", "quiz-2"]
    for mine, sample in zip(ours.per_example, samples, strict=True):
        assert len(sample["filtered_resps"]) == len(sample["doc"]["choices"])
        assert sample["margin"] == pytest.approx(mine["margin"], abs=LOG_PROB_TOLERANCE)
        assert sample["acc"] == mine["acc"]
    table = results["results"]["lofit_colour_quiz"]
    assert table["acc,none"] == ours.metrics["acc"]
    assert table["margin,none"] == pytest.approx(ours.metrics["margin"], abs=LOG_PROB_TOLERANCE)
    with pytest.raises(UserError, match="^task 'opaque' cannot be exported to lm-eval: it is neither"):
        export_lm_eval_tasks(tmp_path / "named", ["colour-quiz", "opaque"])


# -- cross-checks on the tiny model ----------------------------------------------------------
def test_truthfulqa_log_probs_mc1_mc2_agree_with_lm_eval(tiny):
    agreement = crosscheck_truthfulqa(tiny, limit=3)
    assert agreement["max_abs_log_prob_diff"] < LOG_PROB_TOLERANCE * 10  # sums of ~1000-byte answers


@pytest.mark.parametrize("task_name", ["clutrr", "mquake"])
def test_generation_exact_match_agrees_with_lm_eval(tiny, task_name):
    crosscheck_generation(tiny, task_name, limit=3)


# -- direction 1: our (hooked) models -> lm-eval ---------------------------------------------
def test_hooks_stay_active_inside_lm_eval(tiny):
    """A pre-hook on o_proj (where LoFiT and ITI act) changes lm-eval's log-probs; the same hook
    given as an `intervention` context manager gives the same scores; the harness agrees."""
    o_proj = tiny.model.model.layers[0].self_attn.o_proj

    def shift(module, args):
        return (args[0] * 3.0 + 0.5,)

    def scores(**kwargs) -> list[float]:
        results, _ = evaluate_model(tiny.model, tiny.tokenizer, "lofit_truthfulqa_fold0", limit=1, batch_size=BATCH_SIZE, **kwargs)
        return [log_prob for log_prob, _ in results["samples"]["lofit_truthfulqa_fold0"][0]["filtered_resps"]]

    @contextlib.contextmanager
    def intervention():
        handle = o_proj.register_forward_pre_hook(shift)
        try:
            yield
        finally:
            handle.remove()

    plain = scores()
    handle = o_proj.register_forward_pre_hook(shift)
    try:
        hooked = scores()
        ours = TruthfulQA().evaluate(Scorer(tiny.model, tiny.tokenizer, BATCH_SIZE), "fold_0", "test", limit=1)
    finally:
        handle.remove()
    assert max(abs(a - b) for a, b in zip(plain, hooked, strict=True)) > 1e-2
    assert all(close(a, b) for a, b in zip(ours.per_example[0]["true_scores"] + ours.per_example[0]["false_scores"], hooked, strict=True))
    assert all(close(a, b) for a, b in zip(scores(intervention=intervention), hooked, strict=True))
    assert not o_proj._forward_pre_hooks  # the context manager left nothing behind


def test_run_command_with_an_lm_eval_task_from_an_include_path(tmp_path, monkeypatch, capsys):
    """`run --tasks lm_eval:NAME --lm-eval-include PATH` end to end, on a user's own MC task."""
    tasks = tmp_path / "my-tasks"
    tasks.mkdir()
    data = tasks / "colours.jsonl"
    data.write_text('{"q": "Grass is", "choices": ["green", "blue"], "gold": 0}\n{"q": "Sky is", "choices": ["red", "blue"], "gold": 1}\n')
    (tasks / "colours.yaml").write_text(
        "task: my_colours\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {json.dumps(str(data))}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n"
    )
    monkeypatch.setenv(INCLUDE_VARIABLE, "")  # the CLI sets it; restored after the test
    out = tmp_path / "runs"
    code = main([
        "run", "--methods", "zero-shot", "--tasks", "lm_eval:my_colours", "--model", "tiny-random-llama",
        "--budget", "smoke", "--lm-eval-include", str(tasks), "--out", str(out), "--quiet", "--executor", "inline",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (path,) = (out / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["task"]["name"] == "lm_eval:my_colours"
    assert record["task"]["objective"] == "none" and record["task"]["split_sizes"]["main"] == {"train": 0, "dev": 0, "test": 2}
    assert set(record["metrics"]) == {"acc"}
    fold = record["folds"]["main"]
    # acc is the share of questions whose gold choice (0, then 1) has the highest log-probability
    chosen = [max(range(2), key=lambda index: example["response"][index][0]) for example in fold["per_example"]]
    assert record["metrics"]["acc"] == sum(choice == gold for choice, gold in zip(chosen, [0, 1], strict=True)) / 2
    assert fold["eval_ids"] == ["0", "1"] and fold["eval_tokens"] > 0
    assert [len(example["response"]) for example in fold["per_example"]] == [2, 2]  # (log-prob, greedy) per choice
    details = fold["evaluation_details"]
    assert details["lm_eval_version"] == record["environment"]["versions"]["lm_eval"]
    assert details["include_paths"] == [str(tasks.resolve())]
    assert details["configs"]["my_colours"]["dataset_kwargs"]["data_files"]["test"] == str(data)
    assert "lm_eval:my_colours" in (out / "report.md").read_text()


def test_methods_that_train_are_refused_up_front():
    from lofit_bench.budget import get_budget
    from lofit_bench.method import Method
    from lofit_bench.sweep.runner import ModelSettings, plan_sweep

    class Trains(Method):
        name = "trains"

        def prepare(self, lm):
            self.lm = lm

        def trainable_parameters(self) -> int:
            return 0

        def remove(self) -> None:
            pass

    class Plugin:
        @hookimpl
        def register_methods(self, register):
            register(Trains)

    plugins.get_host().register(Plugin(), "trains-plugin")
    with pytest.raises(UserError, match="provides no training data, but method"):
        plan_sweep(["zero-shot", "trains"], ["lm_eval:lofit_clutrr"], get_budget("smoke"), ModelSettings("tiny-random-llama"))
    with pytest.raises(UserError, match="provides no training data"):
        lm_eval_task_class("lofit_clutrr")().training_examples("main")


# -- errors and offline ----------------------------------------------------------------------
HUB_TASK = """task: hub_truthfulqa
dataset_path: truthfulqa/truthful_qa
dataset_name: multiple_choice
test_split: validation
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{mc1_targets.choices}}"
doc_to_target: 0
metric_list:
  - metric: acc
"""


@pytest.mark.parametrize("offline_flags", [True, False], ids=["offline-flags", "no-network"])
def test_a_task_that_needs_a_download_fails_fast_and_says_so(tmp_path, monkeypatch, offline_flags):
    (tmp_path / "hub.yaml").write_text(HUB_TASK)
    monkeypatch.setenv(INCLUDE_VARIABLE, str(tmp_path))
    if not offline_flags:  # no switch set, and the hub does not answer
        for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setattr("lofit_bench.engine.models.hub_reachable", lambda timeout=3.0: False)
    started = time.monotonic()
    with pytest.raises(UserError, match="needs a download from the Hugging Face Hub") as error:
        plugins.get_host().tasks.get("lm_eval:hub_truthfulqa")
    assert "truthfulqa/truthful_qa" in str(error.value)
    assert time.monotonic() - started < 10  # datasets' own retries take over 20 s


def test_unknown_lm_eval_task_names_get_a_hint():
    with pytest.raises(UserError, match="Did you mean 'lofit_clutrr'.*--lm-eval-include"):
        plugins.get_host().tasks.get("lm_eval:lofit_clutr")


def test_missing_lm_eval_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    with pytest.raises(UserError, match=INSTALL_HINT.replace("[", r"\[").replace("]", r"\]")):
        lm_eval_task_class("lofit_clutrr")


def test_loading_plugins_does_not_import_lm_eval():
    """`lofit-bench --help` and `list` stay fast: lm-eval is imported only when used."""
    code = "import sys; from lofit_bench.plugins import get_host; get_host(); assert 'lm_eval' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_prefixes():
    registry: Registry[str] = Registry("task")
    registry.add("plain", "PLAIN", owner="a")
    assert registry.add_prefix("ext", lambda rest: f"EXT({rest})", "external tasks", owner="b")
    assert not registry.add_prefix("ext", lambda rest: rest)
    assert registry.get("ext:x") == "EXT(x)" and registry.resolve(["plain", "ext:y"]) == ["PLAIN", "EXT(y)"]
    assert "ext:x" in registry and "ext:" not in registry and "other:x" not in registry
    assert registry.owner("ext:x") == "b" and registry.names() == ["plain"]
    with pytest.raises(UserError, match=r"unknown task: other:x\..*ext:NAME: external tasks"):
        registry.get("other:x")


# -- the bundled model (slow) ----------------------------------------------------------------
@pytest.mark.slow
def test_crosscheck_on_the_bundled_model():
    lm = load_model("smollm2-135m", device="cpu")
    agreement = crosscheck_truthfulqa(lm, limit=2)
    assert agreement["max_abs_log_prob_diff"] < LOG_PROB_TOLERANCE * 10
    for task_name in ("clutrr", "mquake"):
        crosscheck_generation(lm, task_name, limit=3)


@pytest.mark.slow
def test_lm_eval_command_line_on_exported_tasks(tmp_path):
    """What a user without lofit-bench's runner does: `lm_eval --model hf --include_path OUT`."""
    lm = load_model("smollm2-135m", device="cpu")
    folder = lm.source.split("(", 1)[1].rstrip(")")
    export_lm_eval_tasks(tmp_path / "tasks")
    command = [
        str(Path(sys.executable).with_name("lm_eval")), "--model", "hf",
        "--model_args", f"pretrained={folder},dtype=float32", "--device", "cpu", "--batch_size", "4",
        "--include_path", str(tmp_path / "tasks"), "--tasks", "lofit_mquake,lofit_truthfulqa_fold0",
        "--limit", "2", "--output_path", str(tmp_path / "out"), "--log_samples",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    ours_mquake = Mquake().evaluate(Scorer(lm.model, lm.tokenizer, 4), "main", "test", limit=2)
    ours_tqa = TruthfulQA().evaluate(Scorer(lm.model, lm.tokenizer, 4), "fold_0", "test", limit=2)
    assert results["lofit_mquake"]["exact_match,none"] == ours_mquake.metrics["exact_match"]
    assert results["lofit_truthfulqa_fold0"]["mc2,none"] == pytest.approx(ours_tqa.metrics["mc2"], abs=MC2_TOLERANCE)


def test_export_refuses_an_lm_eval_name_before_resolving_it(monkeypatch, tmp_path):
    """`export-lm-eval --tasks lm_eval:X` says no at once: resolving the name would build lm-eval's
    task index (and export every task of ours) just to learn it cannot be exported."""
    import lofit_bench.lmeval.lookup as lookup

    def never(*_args, **_kwargs):
        raise AssertionError("the lm-eval name was resolved")

    monkeypatch.setattr(lookup, "task_manager", never)
    monkeypatch.setattr(lookup, "exported_tasks_folder", never)
    with pytest.raises(UserError, match=r"'lm_eval:hellaswag' cannot be exported to lm-eval: it is an lm-eval task already"):
        export_lm_eval_tasks(tmp_path / "out", ["lm_eval:hellaswag"])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("filters", [None, [{"name": "strict", "filter": [{"function": "take_first"}]},
                                            {"name": "loose", "filter": [{"function": "take_first"}]}]])
def test_filter_names_match_the_pipelines_lm_eval_builds(tmp_path, filters):
    """Our metric keys read the filter names from the task config (public) instead of the task's
    private ``_filters``; this fails loudly if lm-eval stops building one pipeline per entry."""
    import yaml

    from lofit_bench.lmeval.lookup import task_manager
    from lofit_bench.lmeval.tasks import filter_names

    data = tmp_path / "items.jsonl"
    data.write_text('{"q": "Two and two make", "a": "four"}\n')
    config = {
        "task": "my_filtered", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test", "output_type": "generate_until", "doc_to_text": "q", "doc_to_target": "a",
        "metric_list": [{"metric": "exact_match"}],
    }
    if filters:
        config["filter_list"] = filters
    (tmp_path / "my_filtered.yaml").write_text(yaml.safe_dump(config))
    [leaf] = task_manager(["my_filtered"], [tmp_path]).load(["my_filtered"])["tasks"].values()
    assert filter_names(leaf) == [pipeline.name for pipeline in leaf._filters]
    assert filter_names(leaf) == (["strict", "loose"] if filters else ["none"])


def test_a_changed_include_folder_changes_the_run_key(tmp_path, monkeypatch):
    """`--lm-eval-include` changes results, so its content is part of the run's identity: editing
    a task file there runs again instead of being skipped as done; built-in tasks keep their keys."""
    from lofit_bench.budget import get_budget
    from lofit_bench.lmeval import lookup, tasks
    from lofit_bench.sweep.runner import ModelSettings, plan_sweep

    folder = tmp_path / "my-tasks"
    folder.mkdir()
    data = folder / "colours.jsonl"
    data.write_text('{"q": "Grass is", "choices": ["green", "blue"], "gold": 0}\n')
    (folder / "colours.yaml").write_text(
        "task: my_colours2\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {json.dumps(str(data))}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: q\ndoc_to_choice: choices\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n"
    )
    monkeypatch.setenv(INCLUDE_VARIABLE, str(folder))
    monkeypatch.setattr(tasks, "_task_classes", {})
    model = ModelSettings("tiny-random-llama", device="cpu")

    def key() -> tuple[str, str]:
        [spec] = plan_sweep(["zero-shot"], ["lm_eval:my_colours2"], get_budget("smoke"), model)
        return spec.key, spec.identity["task_source"]

    first_key, first_source = key()
    data.write_text('{"q": "Grass is", "choices": ["green", "blue"], "gold": 1}\n')
    second_key, second_source = key()
    assert first_source != second_source and first_key != second_key
    [builtin] = plan_sweep(["zero-shot"], ["clutrr"], get_budget("smoke"), model)
    assert "task_source" not in builtin.identity
    assert lookup.user_include_paths() == [folder.resolve()]
