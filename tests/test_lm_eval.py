"""lm-eval adapters, both directions, with the harness's scorer cross-checked against lm-eval.

The cross-checks score the same documents twice on the same model: once through the harness
(our Scorer, with its shared-prefix KV cache, and our parsers) and once through lm-eval
(`lm_eval:NAME` tasks over the exported configs, i.e. lm-eval's HFLM, tokenisation, batching
and generation, with the exported utils.py). Per-answer log-probs must agree to float32
round-off, MC1 exactly, MC2 to 1e-4, exact match exactly.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tasks_helpers import FakeScorer

pytest.importorskip("lm_eval")

from lofit_bench import hookimpl, plugins  # noqa: E402
from lofit_bench.cli import main  # noqa: E402
from lofit_bench.errors import UserError  # noqa: E402
from lofit_bench.lmeval import INSTALL_HINT, task_functions  # noqa: E402
from lofit_bench.lmeval.export import export_lm_eval_tasks  # noqa: E402
from lofit_bench.lmeval.tasks import INCLUDE_VARIABLE, evaluate_model, lm_eval_task_class  # noqa: E402
from lofit_bench.models import load_model  # noqa: E402
from lofit_bench.registry import Registry  # noqa: E402
from lofit_bench.scoring import Scorer  # noqa: E402
from lofit_bench.tasks.clutrr import Clutrr  # noqa: E402
from lofit_bench.tasks.mquake import Mquake  # noqa: E402
from lofit_bench.tasks.truthfulqa import TruthfulQA, scoring_context  # noqa: E402

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
    export_lm_eval_tasks(folder)
    return folder


def close(ours: float, theirs: float) -> bool:
    return math.isclose(ours, theirs, rel_tol=LOG_PROB_TOLERANCE, abs_tol=LOG_PROB_TOLERANCE)


# -- cross-checks (shared by the fast and the slow tests) ------------------------------------
def crosscheck_truthfulqa(lm, limit: int) -> dict[str, float]:
    """Per-answer log-probs, MC1 and MC2 of fold 0's first ``limit`` questions, both ways."""
    ours = TruthfulQA().evaluate(Scorer(lm.model, lm.tokenizer, BATCH_SIZE), "fold_0", "test", limit)
    scorer = Scorer(lm.model, lm.tokenizer, BATCH_SIZE)
    theirs = {
        metric: lm_eval_task_class(f"lofit_truthfulqa_{metric}_fold0")().evaluate(scorer, "main", "test", limit)
        for metric in ("mc1", "mc2")
    }
    assert ours.example_ids == theirs["mc1"].example_ids == theirs["mc2"].example_ids
    worst = 0.0
    for mine, mc1, mc2 in zip(ours.per_example, theirs["mc1"].per_example, theirs["mc2"].per_example, strict=True):
        our_scores = mine["true_scores"] + mine["false_scores"]
        their_scores = [log_prob for log_prob, _ in mc2["response"]]
        their_mc1_scores = [log_prob for log_prob, _ in mc1["response"]]
        assert len(our_scores) == len(their_scores)
        for a, b in zip([*our_scores, mine["best_score"], *mine["false_scores"]], [*their_scores, *their_mc1_scores], strict=True):
            assert close(a, b), (mine["id"], a, b)
            worst = max(worst, abs(a - b))
        tied = mine["best_score"] == max(mine["false_scores"]) or their_mc1_scores[0] == max(their_mc1_scores[1:])
        if not tied:
            assert mine["mc1"] == mc1["mc1"]
        assert abs(mine["mc2"] - mc2["mc2"]) < MC2_TOLERANCE
    assert ours.metrics["mc1"] == theirs["mc1"].metrics["mc1"]
    assert abs(ours.metrics["mc2"] - theirs["mc2"].metrics["mc2"]) < MC2_TOLERANCE
    return {"max_abs_log_prob_diff": worst, "mc2_diff": abs(ours.metrics["mc2"] - theirs["mc2"].metrics["mc2"])}


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
    assert ours.metrics == theirs.metrics


# -- direction 2: our tasks -> lm-eval ------------------------------------------------------
def test_export_writes_absolute_paths_and_the_harness_documents(exported):
    names = sorted(path.stem for path in exported.glob("*.yaml"))
    assert names == [
        "lofit_clutrr", "lofit_mquake",
        "lofit_truthfulqa_mc1_fold0", "lofit_truthfulqa_mc1_fold1",
        "lofit_truthfulqa_mc2_fold0", "lofit_truthfulqa_mc2_fold1",
    ]  # fmt: skip
    config = (exported / "lofit_clutrr.yaml").read_text()
    data_file = Path(json.loads(config.split("test: ", 1)[1].splitlines()[0]))
    assert data_file.is_absolute() and data_file.exists()
    assert "process_results: !function utils.process_clutrr" in config
    assert (exported / "utils.py").read_text() == Path(task_functions.__file__).read_text()

    documents = [json.loads(line) for line in (exported / "data" / "truthfulqa_fold_1_test.jsonl").open()]
    questions = TruthfulQA().questions("fold_1", "test")
    assert [document["id"] for document in documents] == [question.id for question in questions]
    first, question = documents[0], questions[0]
    assert first["context"] == scoring_context(question.question)
    assert first["mc1_choices"] == [question.best, *question.false_answers]
    assert first["mc2_choices"][: first["n_true"]] == question.true_answers
    stories = [json.loads(line) for line in (exported / "data" / "clutrr_test.jsonl").open()]
    assert [story["prompt"] for story in stories] == [story.prompt for story in Clutrr().stories("main", "test")]


def test_export_command(tmp_path, capsys):
    assert main(["export-lm-eval", str(tmp_path / "out")]) == 0
    assert "lofit_clutrr" in capsys.readouterr().out
    assert (tmp_path / "out" / "lofit_mquake.yaml").exists() and (tmp_path / "out" / "utils.py").exists()


@pytest.mark.parametrize("task_name", ["clutrr", "mquake"])
def test_exported_scoring_functions_match_the_harness_on_planted_replies(exported, task_name):
    """No model: the same replies through the harness's task and through utils.py."""
    task = {"clutrr": Clutrr, "mquake": Mquake}[task_name]()
    documents = [json.loads(line) for line in (exported / "data" / f"{task_name}_test.jsonl").open()][:6]
    if task_name == "clutrr":
        gold = documents[0]["gold"]
        replies = [" " + gold + ".\nmore", gold.upper(), "'s\n nobody.", "", " x\n" + gold, " Son."]
    else:
        golds = [document["golds"] for document in documents]
        replies = [golds[0][0], " " + golds[1][0], golds[2][-1] + "\nA: no", "", "A: x", "x"]
    by_prompt = {document["prompt"]: reply for document, reply in zip(documents, replies, strict=True)}
    ours = task.evaluate(FakeScorer(reply=lambda prompt: by_prompt[prompt]), "main", "test", limit=6)
    process = {"clutrr": task_functions.process_clutrr, "mquake": task_functions.process_mquake}[task_name]
    for mine, document, reply in zip(ours.per_example, documents, replies, strict=True):
        theirs = process(document, [reply])
        assert theirs["exact_match"] == float(mine["exact_match"])
        if task_name == "mquake":
            assert theirs["exact_match_lenient"] == float(mine["exact_match_lenient"])
    assert 0 < ours.metrics["exact_match"] < 1  # the planted replies hit both outcomes


def test_exported_truthfulqa_scoring_matches_the_harness_on_planted_scores(exported):
    def score(context: str, continuation: str) -> float:
        return -float(len(continuation) % 7) - 0.1 * len(context) / 1000

    ours = TruthfulQA().evaluate(FakeScorer(score=score), "fold_0", "test", limit=20)
    documents = [json.loads(line) for line in (exported / "data" / "truthfulqa_fold_0_test.jsonl").open()][:20]
    for mine, document in zip(ours.per_example, documents, strict=True):
        for metric, process in (("mc1", task_functions.process_truthfulqa_mc1), ("mc2", task_functions.process_truthfulqa_mc2)):
            results = [(score(document["context"], " " + choice), False) for choice in document[f"{metric}_choices"]]
            assert process(document, results)[metric] == pytest.approx(mine[metric], abs=1e-12)


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
        results, _ = evaluate_model(tiny.model, tiny.tokenizer, "lofit_truthfulqa_mc2_fold0", limit=1, batch_size=BATCH_SIZE, **kwargs)
        return [log_prob for log_prob, _ in results["samples"]["lofit_truthfulqa_mc2_fold0"][0]["filtered_resps"]]

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
    assert set(record["metrics"]) == {"acc"} and 0 <= record["metrics"]["acc"] <= 1
    fold = record["folds"]["main"]
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
    from lofit_bench.runner import ModelSettings, plan_sweep

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
        monkeypatch.setattr("lofit_bench.models.hub_reachable", lambda timeout=3.0: False)
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
        "--include_path", str(tmp_path / "tasks"), "--tasks", "lofit_mquake,lofit_truthfulqa_mc2_fold0",
        "--limit", "2", "--output_path", str(tmp_path / "out"), "--log_samples",
    ]  # fmt: skip
    subprocess.run(command, check=True, cwd=tmp_path, capture_output=True)
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    ours_mquake = Mquake().evaluate(Scorer(lm.model, lm.tokenizer, 4), "main", "test", limit=2)
    ours_tqa = TruthfulQA().evaluate(Scorer(lm.model, lm.tokenizer, 4), "fold_0", "test", limit=2)
    assert results["lofit_mquake"]["exact_match,none"] == ours_mquake.metrics["exact_match"]
    assert results["lofit_truthfulqa_mc2_fold0"]["mc2,none"] == pytest.approx(ours_tqa.metrics["mc2"], abs=MC2_TOLERANCE)
