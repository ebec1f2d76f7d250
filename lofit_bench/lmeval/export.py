"""Our tasks -> lm-eval: task configs that reproduce the harness's protocol, for `lm_eval` itself.

`lofit-bench export-lm-eval OUT_DIR` writes, into OUT_DIR:

- ``data/*.jsonl``: the test split of each task, one document per line, built by the task
  plugins themselves (so prompts, answer sets and golds are byte-for-byte the harness's);
- ``utils.py``: the scoring functions (a copy of :mod:`lofit_bench.lmeval.task_functions`);
- one YAML per task, with the ABSOLUTE path of its data file (lm-eval hands ``data_files``
  to ``datasets.load_dataset`` unchanged, so a relative path would resolve against the
  working directory, not the YAML):

  ``lofit_truthfulqa_mc1_fold{0,1}``, ``lofit_truthfulqa_mc2_fold{0,1}`` (tag
  ``lofit_truthfulqa``), ``lofit_clutrr`` and ``lofit_mquake``; every one is tagged ``lofit``.

Then ``lm_eval --model hf --model_args pretrained=DIR --include_path OUT_DIR --tasks lofit_clutrr``
scores any Hugging Face model with our protocol. lm-eval needs lofit-bench importable (the
scoring functions use :mod:`lofit_bench.metrics`); lm-eval itself is not needed to export.

TruthfulQA: the context is the instruction + six-shot primer + ``Q: <question>\\nA:``, and each
choice is scored as ``" " + answer`` (lm-eval's target delimiter is the space), as the harness
does. MC1 choices are [best, *incorrect]; MC2 choices are [*correct, *incorrect] from the CSV
cells (not the official ``mc2_targets``). CLUTRR and MQuAKE: greedy, 16 new tokens, stopping
only at EOS, parsed by the harness's parsers from prompt + generated text.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lofit_bench import __version__
from lofit_bench.errors import UserError

UTILS_MODULE = "utils"
DATA_FOLDER = "data"
EXPORT_VERSION = 1  # bump when the exported protocol changes (lm-eval records metadata.version)


@dataclass(frozen=True)
class ExportedTask:
    """One lm-eval task config: where its documents come from and how they are scored."""

    name: str
    summary: str
    tags: tuple[str, ...]
    data_file: str
    source: Path
    output_type: str  # "multiple_choice" or "generate_until"
    fields: dict[str, str]  # doc_to_text / doc_to_choice / doc_to_target -> document column
    process_results: str
    metrics: tuple[str, ...]
    max_gen_toks: int | None = None


def export_lm_eval_tasks(out_dir: Path) -> list[ExportedTask]:
    """Write the task configs, their data and ``utils.py`` into ``out_dir``; return the tasks."""
    out_dir = Path(out_dir).expanduser().resolve()
    try:
        (out_dir / DATA_FOLDER).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write to {out_dir}: {error.strerror or error}; choose another folder") from None
    tasks: list[ExportedTask] = []
    for documents, exported in _truthfulqa() + _clutrr() + _mquake():
        _write_jsonl(out_dir / DATA_FOLDER / exported.data_file, documents)
        (out_dir / f"{exported.name}.yaml").write_text(_task_yaml(exported, out_dir), encoding="utf-8")
        tasks.append(exported)
    shutil.copyfile(Path(__file__).with_name("task_functions.py"), out_dir / f"{UTILS_MODULE}.py")
    return tasks


# -- the tasks -----------------------------------------------------------------------------
def _truthfulqa() -> list[tuple[list[dict[str, Any]], ExportedTask]]:
    from lofit_bench.tasks.truthfulqa import SPLIT_FILES, TruthfulQA, scoring_context

    task = TruthfulQA()
    exported = []
    for fold in task.folds:
        short_fold = fold.replace("_", "")  # fold_0 -> fold0
        data_file = f"truthfulqa_{fold}_test.jsonl"
        documents = []
        for question in task.questions(fold, "test"):
            documents.append(
                {
                    "id": question.id,
                    "question": question.question,
                    "context": scoring_context(question.question),
                    "mc1_choices": [question.best, *question.false_answers],
                    "mc2_choices": [*question.true_answers, *question.false_answers],
                    "n_true": len(question.true_answers),
                }
            )
        source = task.data_dir / f"{fold}_{SPLIT_FILES['test']}_seed_42.csv"
        for metric in ("mc1", "mc2"):
            exported.append(
                (
                    documents,
                    ExportedTask(
                        name=f"lofit_truthfulqa_{metric}_{short_fold}",
                        summary=f"TruthfulQA {metric.upper()}, LoFiT/ITI protocol, {fold} test split ({len(documents)} questions)",
                        tags=("lofit", "lofit_truthfulqa"),
                        data_file=data_file,
                        source=source,
                        output_type="multiple_choice",
                        fields={"doc_to_text": "context", "doc_to_choice": f"{metric}_choices", "doc_to_target": "0"},
                        process_results=f"process_truthfulqa_{metric}",
                        metrics=(metric,),
                    ),
                )
            )
    return exported


def _clutrr() -> list[tuple[list[dict[str, Any]], ExportedTask]]:
    from lofit_bench.tasks.clutrr import MAX_NEW_TOKENS, SPLIT_FILES, Clutrr

    task = Clutrr()
    documents = [
        {"id": story.id, "prompt": story.prompt, "gold": story.target_text}
        for story in task.stories("main", "test")
    ]
    return [
        (
            documents,
            ExportedTask(
                name="lofit_clutrr",
                summary=f"CLUTRR 2-hop, LoFiT protocol, test split ({len(documents)} stories)",
                tags=("lofit",),
                data_file="clutrr_test.jsonl",
                source=task.data_dir / SPLIT_FILES["test"],
                output_type="generate_until",
                fields={"doc_to_text": "prompt", "doc_to_target": "gold"},
                process_results="process_clutrr",
                metrics=("exact_match",),
                max_gen_toks=MAX_NEW_TOKENS,
            ),
        )
    ]


def _mquake() -> list[tuple[list[dict[str, Any]], ExportedTask]]:
    from lofit_bench.tasks.mquake import MAX_NEW_TOKENS, SPLIT_FILES, Mquake

    task = Mquake()
    documents = [
        {"id": case.id, "prompt": case.prompt, "golds": case.golds} for case in task.cases("main", "test")
    ]
    return [
        (
            documents,
            ExportedTask(
                name="lofit_mquake",
                summary=f"MQuAKE-CF-3k single-edit, LoFiT protocol, test split ({len(documents)} cases)",
                tags=("lofit",),
                data_file="mquake_test.jsonl",
                source=task.data_dir / SPLIT_FILES["test"],
                output_type="generate_until",
                fields={"doc_to_text": "prompt", "doc_to_target": "golds"},
                process_results="process_mquake",
                metrics=("exact_match", "exact_match_lenient"),
                max_gen_toks=MAX_NEW_TOKENS,
            ),
        )
    ]


# -- writing -------------------------------------------------------------------------------
def _write_jsonl(path: Path, documents: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(document, ensure_ascii=False) + "\n" for document in documents)
    path.write_text(text, encoding="utf-8")


def _quote(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string escapes are YAML's)."""
    return json.dumps(value, ensure_ascii=True)


def _task_yaml(task: ExportedTask, out_dir: Path) -> str:
    lines = [
        f"# Generated by lofit-bench {__version__} (`lofit-bench export-lm-eval`); regenerate rather than edit.",
        f"# {task.summary}.",
        "# Scoring reuses lofit_bench.metrics, so lofit-bench must be importable where lm-eval runs.",
        f"task: {task.name}",
        "tag:",
        *[f"  - {tag}" for tag in task.tags],
        "dataset_path: json",
        "dataset_name: null",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {_quote(str(out_dir / DATA_FOLDER / task.data_file))}",
        "test_split: test",
        f"output_type: {task.output_type}",
        "num_fewshot: 0",
        *[f"{key}: {value}" for key, value in task.fields.items()],
    ]
    if task.output_type == "multiple_choice":
        lines.append('target_delimiter: " "')
    else:
        # Greedy, stopping only at EOS (lm-eval always adds it), as the harness generates.
        lines += [
            "generation_kwargs:",
            "  until: []",
            f"  max_gen_toks: {task.max_gen_toks}",
            "  do_sample: false",
            "  temperature: 0.0",
        ]
    lines += [
        f"process_results: !function {UTILS_MODULE}.{task.process_results}",
        "metric_list:",
    ]
    for metric in task.metrics:
        lines += [f"  - metric: {metric}", "    aggregation: mean", "    higher_is_better: true"]
    lines += [
        "metadata:",
        f"  version: {EXPORT_VERSION}.0",
        f"  lofit_bench_version: {_quote(__version__)}",
        f"  source: {_quote(str(task.source))}",
        f"  source_sha256: {_quote(_sha256(task.source))}",
    ]
    return "\n".join(lines) + "\n"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
