"""The `lofit-bench` command line. Heavy libraries are imported inside commands, so `--help`
answers at once; every user error becomes one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lofit_bench.errors import UserError, install_warning_format

EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1
EXIT_DISK_FULL = 3  # lofit_bench.errors.DiskFull.exit_code


def _formats_help() -> str:
    from lofit_bench.report.formats import formats_help

    return f"comma-separated report formats to write (default: all): {formats_help()}"


def _trackers(value: str) -> list[str]:
    from lofit_bench.sweep.tracking import parse_trackers

    return _checked(parse_trackers, value)


def _split_names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def _seeds(value: str) -> list[int]:
    from lofit_bench.sweep import settings as validate

    return _checked(validate.seeds, value)


def _checked(check, value: str, *arguments: Any) -> Any:
    """A sweep-file check (:mod:`lofit_bench.sweep.settings`) as an argparse type: the same message."""
    try:
        return check(value, *arguments)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _jobs(value: str) -> int:
    from lofit_bench.sweep import settings as validate

    return _checked(validate.jobs, value)


def _folder(value: str) -> Path:
    """A folder argument: an empty one would silently mean the current folder."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must name a folder, got an empty string (use . for the current folder)")
    return Path(value)


def _device(value: str) -> str:
    from lofit_bench.sweep import settings as validate

    return _checked(validate.device, value)


def _top(value: str) -> int:
    from lofit_bench.sweep import settings as validate

    return _checked(validate.positive_count, value, "--top")


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (usage stays in --help), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"lofit-bench: error: {message} (see `{self.prog} --help`)\n")

    def format_help(self) -> str:
        """Help texts that name registered things (``late_help``) are filled in only when asked for,
        so plugins load for `--help` of that command, never for every command line."""
        for action in self._actions:
            late_help = getattr(action, "late_help", None)
            if late_help is not None:
                action.help = late_help()
        return super().format_help()


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(items: list[str], what: str) -> dict[str, Any]:
    result = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise UserError(f"{what} {item!r} must look like KEY=VALUE")
        result[key.strip()] = _parse_value(value.strip())
    return result


def _method_options(items: list[str]) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    for key, value in _key_values(items, "--method-set").items():
        method, separator, field = key.partition(".")
        if not separator or not field:
            raise UserError(f"--method-set {key}=... must name METHOD.FIELD, e.g. lofit.learning_rate=0.01")
        options.setdefault(method, {})[field] = value
    return options


def _grid(items: list[str], what: str, dotted: bool) -> dict[str, Any]:
    """``--grid METHOD.FIELD=[v1,v2]`` (method -> field -> values) or ``--budget-axis FIELD=[v1,v2]``."""
    from lofit_bench.sweep.grid import check_axis_values

    result: dict[str, Any] = {}
    for key, values in _key_values(items, what).items():
        check_axis_values(key, values, what)
        if not dotted:
            result[key] = values
            continue
        method, separator, field = key.partition(".")
        if not separator or not field:
            raise UserError(f"{what} {key}=[...] must name METHOD.FIELD, e.g. lofit.heads=[0.03,0.1,0.2]")
        result.setdefault(method, {})[field] = values
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="lofit-bench",
        description="Compare LoFiT and other ways of steering or fine-tuning a language model "
        "under identical data splits and budgets.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    run = commands.add_parser(
        "run",
        help="train/fit methods on tasks and evaluate them; one JSON record per (method, task, seed)",
        description="Run every method on every task and seed under one budget, writing one JSON "
        "record per run into OUT/records and a report into OUT.",
    )
    run.add_argument("--methods", type=_split_names, default=None, help="comma-separated method names (`lofit-bench list methods`); required unless --config gives them")
    run.add_argument("--tasks", type=_split_names, default=None, help="comma-separated task names (`lofit-bench list tasks`); required unless --config gives them")
    run.add_argument("--model", type=_split_names, default=None, help="model short name, local Hugging Face folder or hub id; comma-separated for several (default: smollm2-135m, bundled)")
    run.add_argument("--budget", default=None, help="budget preset: paper (default), demo or smoke (`lofit-bench list budgets`)")
    run.add_argument("--budget-set", action="append", default=[], metavar="FIELD=VALUE", help="override one budget field for the whole sweep, e.g. eval_examples=50 (repeatable)")
    run.add_argument("--also-eval", type=_split_names, default=None, metavar="TASK,...", help="after each fit, also score these tasks with no training on them (built-in, plugin or lm_eval:NAME) against the base model (retention; the budget field also_eval)")
    run.add_argument("--tune", choices=["on", "off"], default=None, help="tune every method's declared search space on the dev split with the budget's trials (on, the paper budget's default: the same tuning effort for every method) or use the paper's / methods' default values (off); a budget field, so reports flag a mix")
    run.add_argument("--tune-storage", default=None, metavar="URL", help="Optuna storage URL for the tuning trials, e.g. postgresql://user@host/db when runs spread over a Ray cluster (default: one SQLite file per run under OUT/tuning/)")
    run.add_argument("--tune-per", choices=["fold", "seed"], default=None, help="fold (default): tune each (method, task, fold) once, on the first seed's run, and train every other seed once with those values (the paper's protocol; a second seed costs one fit, not a second search); seed: every seed tunes its own values")
    run.add_argument("--no-shared-work", action="store_true", help="every run computes its frozen-model work itself (activations, ITI probes, LoFiT stage 1) instead of sharing it through OUT/shared/ (the results are the same; for measuring or debugging)")
    run.add_argument("--method-set", action="append", default=[], metavar="METHOD.FIELD=VALUE", help="set a method config field, e.g. bitfit.learning_rate=0.001 (repeatable)")
    run.add_argument("--grid", action="append", default=[], metavar="METHOD.FIELD=[V1,V2,...]", help="run one config per value (a JSON list) of a method field, e.g. lofit.heads=[0.03,0.1,0.2]; several --grid give every combination; each config is its own record and report row, and the report plots along the field (repeatable)")
    run.add_argument("--budget-axis", action="append", default=[], metavar="FIELD=[V1,V2,...]", help="vary a budget field on purpose, e.g. train_examples=[16,32,64]: one run per value, plotted against it in the report instead of flagged as a mixed budget (repeatable)")
    run.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (default: the budget's, 42)")
    run.add_argument("--out", type=_folder, default=None, help="output folder (default: runs/<timestamp>)")
    run.add_argument("--dtype", default=None, choices=["auto", "fp32", "bf16", "fp16"], help="model weights' dtype (default auto: fp32 on CPU; on CUDA fp32 under --precision bf16-mixed, else bf16)")
    run.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16-mixed"], help="how the frozen model computes: bf16-mixed runs its matmuls in bf16 under autocast, trained tensors and optimizer state fp32 (default auto: bf16-mixed on CUDA, fp32 on CPU)")
    run.add_argument("--device", type=_device, default=None, help="auto (default), cpu, mps, cuda or cuda:N")
    run.add_argument("--study", default=None, metavar="NAME|FILE", help="run one of the paper's experiments (`lofit-bench list studies`: table1, table2, figure2, table3, figure4, figure5, appendix-g) or a study file; the report opens with its table beside the paper's numbers; --model, --budget, --seeds and the other flags override the study's values")
    run.add_argument("--config", type=Path, default=None, metavar="SWEEP.toml", help="a sweep described in a TOML/YAML/JSON file (per-method options, several models); flags given here override it")
    run.add_argument("--executor", default=None, metavar="NAME", help="where runs execute (`lofit-bench list executors`): process (default): each run in its own child process; inline: in this process (debugging); ray: on a Ray cluster (pip install 'lofit-bench[ray]'); or a plugin's")
    run.add_argument("--jobs", type=_jobs, default=None, help="runs at a time for the process and ray executors (default 1; on GPUs each run takes its own free GPU(s), and waits for one when none is free)")
    run.add_argument("--ray-address", default=None, help="address of an existing Ray cluster (default: start a local one)")
    run.add_argument("--trust-remote-code", action="store_true", help="allow a local/hub model's own modeling code")
    run.add_argument("--model-args", default=None, metavar="KEY=VALUE,...", help="model options in one place, as lm-eval: pretrained, revision, dtype, device, trust_remote_code, attn_implementation, gpus_per_run, device_map, precision (e.g. pretrained=org/name,revision=main,attn_implementation=sdpa); the flags above override them")
    run.add_argument("--gpus-per-run", type=int, default=None, metavar="N", help="GPUs each run takes from the free ones (default 1); above 1 the frozen model is sharded over them (accelerate device_map=auto)")
    run.add_argument("--force", action="store_true", help="rerun runs whose record already exists")
    run.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
    run.add_argument("--verbose", action="store_true", help="show the runs' own output (library progress bars, logs) instead of writing it to OUT/logs/")
    run.add_argument("--reference", default=None, metavar="METHOD", help="method the report's p-values compare against, e.g. lofit (default: none, no p-values)")
    run.add_argument("--report-to", type=_trackers, default=None, metavar="TRACKER,...", help="also send each finished run to experiment trackers: mlflow (file store OUT/mlruns, or MLFLOW_TRACKING_URI), tensorboard (OUT/tensorboard), wandb (offline, OUT/wandb); comma-separated; off by default (pip install 'lofit-bench[mlflow]' etc.)")
    run.add_argument("--lm-eval-include", action="append", default=[], type=Path, metavar="PATH", help="a folder of lm-eval task YAMLs for lm_eval:NAME tasks (repeatable)")

    report = commands.add_parser(
        "report",
        help="tables from the records of a run folder; writes report.md, report.html, results.csv and results.json",
        description="Print markdown comparison tables (one per model and task) from OUT/records and write "
        "the report in every registered format (report.md, report.html, results.csv, results.json and any a "
        "plugin adds; `lofit-bench list formats`) into RUNS_DIR, or into --out DIR.",
    )
    report.add_argument("runs_dir", type=Path, metavar="RUNS_DIR", help="the --out folder of a run")
    report.add_argument("--reference", default=None, metavar="METHOD", help="method the p-values compare against, e.g. lofit (default: none, no p-values)")
    report.add_argument("--out", type=Path, default=None, metavar="DIR", help="write the report files into DIR instead of RUNS_DIR (RUNS_DIR is left untouched)")
    report.add_argument("--strict", action="store_true", help="refuse a folder whose runs do not all come from one clean commit (mixed commits, uncommitted code)")
    formats = report.add_argument("--formats", type=_split_names, default=None, metavar="NAME,...", help="report formats")
    formats.late_help = _formats_help

    compare = commands.add_parser(
        "compare",
        help="rank the methods of each task on several models side by side (one run folder per model): Kendall's tau and every reversal",
        description="Read the records of several run folders (e.g. one per model) and print, per task, every method's "
        "primary metric and rank on each model side by side, Kendall's tau-b between the models' rankings and each "
        "pair of methods whose order reverses, with its paired bootstrap p-value on each model.",
    )
    compare.add_argument("runs_dirs", type=Path, nargs="+", metavar="RUNS_DIR", help="--out folders of runs (two models or more in all)")
    compare.add_argument("--tasks", type=_split_names, default=None, help="comma-separated tasks to compare (default: every task in the folders)")
    compare.add_argument("--out", type=Path, default=None, metavar="DIR", help="also write comparison.md, comparison.json and comparison.html (with a rank plot) into DIR")
    compare.add_argument("--strict", action="store_true", help="refuse folders whose runs do not all come from one clean commit")

    listing = commands.add_parser("list", help="list methods, tasks, models, budgets, studies, executors or report formats", description="List what lofit-bench knows.")
    listing.add_argument("what", choices=["methods", "tasks", "models", "budgets", "studies", "executors", "formats"], help="what to list")
    listing.add_argument("-v", "--verbose", action="store_true", help="show config fields (methods), fields (budgets) or each model's Hugging Face folder (models)")

    heads = commands.add_parser(
        "heads",
        help="the attention heads LoFiT chose in a run: ranking, chosen heads, a layer x head heatmap and their overlap across seeds and tasks",
        description="Print the head ranking and chosen heads of every LoFiT run in RUN_DIR, write "
        "a layer x head heatmap (heads_heatmap.png) next to each saved heads.json, and print the mean Jaccard "
        "similarity of the chosen head sets across seeds and tasks (paper Appendix G).",
    )
    heads.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the --out folder of a run (or one heads.json)")
    heads.add_argument("--top", type=_top, default=20, help="how many ranked heads to print (default 20)")

    export = commands.add_parser(
        "export-lm-eval",
        help="write lm-eval task configs (YAML + data + utils.py) that score with our tasks' own code, plugin tasks included",
        description="Write lm-eval task YAMLs, their test data (absolute paths) and utils.py into OUT_DIR for every "
        "registered task lm-eval can score as the harness does (generation and multiple-choice tasks, built-in or "
        "from a plugin), or for the tasks named with --tasks: lofit_<task> (lofit_<task>_<fold> for several folds), "
        "e.g. lofit_clutrr, lofit_truthfulqa_fold0. Then: lm_eval --model hf --model_args pretrained=DIR "
        "--include_path OUT_DIR --tasks lofit_clutrr",
    )
    export.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="folder to write the task configs into")
    export.add_argument("--tasks", type=_split_names, default=None, help="comma-separated task names (`lofit-bench list tasks`; default: every task that can be exported)")

    commands.add_parser(
        "plugins",
        help="installed plugins: distribution, version and the hooks they implement",
        description="Show every registered plugin (built-ins included), its distribution, version and hooks.",
    )
    return parser


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM: the command stops the way Ctrl-C always did (its cleanup runs, the
    runs' processes are ended, finished records are kept), then exits with 128 + the signal."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal_number)
        self.signal_number = signal_number


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _stop(signal_number: int, _frame: Any) -> None:
    for number in STOP_SIGNALS:  # a second Ctrl-C (or a kill) must not cut the cleanup short with a traceback
        signal.signal(number, signal.SIG_IGN)
    raise Interrupted(signal_number)


@contextlib.contextmanager
def _stopping_on_signals():
    """SIGINT and SIGTERM raise :class:`Interrupted` while a command runs (main thread only).
    The previous handlers come back after a command that was not interrupted (e.g. pytest's
    when the tests call :func:`main`); after an interrupt both stay ignored, so a second Ctrl-C
    while the process exits cannot kill it with a traceback or by the signal itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, _stop) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        if all(signal.getsignal(number) is _stop for number in STOP_SIGNALS):  # not interrupted
            for number, handler in previous.items():
                signal.signal(number, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    install_warning_format()
    with _stopping_on_signals():
        return _run_command(arguments)


def _run_command(arguments: argparse.Namespace) -> int:
    try:
        with contextlib.ExitStack() as cleanup:  # what a command holds (the --out lock) ends with it
            arguments.cleanup = cleanup
            return COMMANDS[arguments.command](arguments)
    except UserError as error:
        if arguments.debug:
            raise
        print(f"lofit-bench: error: {' '.join(str(error).split())}", file=sys.stderr)
        return getattr(error, "exit_code", EXIT_USER_ERROR)
    except OSError as error:  # the environment (disk, permissions), not a bug: one line, not a traceback
        if arguments.debug:
            raise
        where = f" ({error.filename})" if error.filename else ""
        print(f"lofit-bench: error: {error.strerror or error}{where}", file=sys.stderr)
        return EXIT_DISK_FULL if error.errno in (errno.ENOSPC, errno.EDQUOT) else EXIT_USER_ERROR
    except KeyboardInterrupt as interrupt:
        number = getattr(interrupt, "signal_number", signal.SIGINT)
        what = "interrupted" if number == signal.SIGINT else f"stopped by {signal.Signals(number).name}"
        print(f"lofit-bench: {what}; finished runs are saved in their records", file=sys.stderr)
        return 128 + number


# -- commands --------------------------------------------------------------------------------
def command_run(arguments: argparse.Namespace) -> int:
    from lofit_bench.progress import QUIET_VARIABLE
    from lofit_bench.sweep.console import VERBOSE_VARIABLE, quiet_libraries

    if arguments.verbose:
        os.environ[VERBOSE_VARIABLE] = "1"
    if arguments.quiet:
        os.environ[QUIET_VARIABLE] = "1"
    quiet_libraries()  # before transformers or tqdm are imported: they read it once
    say = (lambda *_: None) if arguments.quiet else print

    from lofit_bench.engine.models import check_model
    from lofit_bench.report.build import render_markdown
    from lofit_bench.report.model import budget_name
    from lofit_bench.report.write import build_report, write_report
    from lofit_bench.sweep.overrides import merge_sweep_settings
    from lofit_bench.sweep.preflight import check_reference, check_tune_storage
    from lofit_bench.sweep.runner import check_output_folder, run_sweep
    from lofit_bench.sweep.sweep_file import load_sweep_config

    if arguments.lm_eval_include:
        os.environ["LOFIT_BENCH_LM_EVAL_INCLUDE"] = os.pathsep.join(str(path.resolve()) for path in arguments.lm_eval_include)
    study = None
    if arguments.study:
        from lofit_bench.sweep.studies import find_study

        if arguments.config:
            raise UserError("--study and --config both describe the sweep; give one (a study is a sweep file with a [study] table)")
        study = find_study(arguments.study)
        config = study.config
    else:
        config = load_sweep_config(arguments.config) if arguments.config else None
    settings = merge_sweep_settings(config, _sweep_overrides(arguments))
    methods, models, budget = settings.methods, settings.models, settings.budget
    _check_executor(settings.executor, arguments.ray_address)
    if arguments.tune_storage is not None:
        check_tune_storage(arguments.tune_storage)
    if arguments.reference is not None:
        check_reference(arguments.reference, methods, settings.out)
    specs = settings.plan(tune_storage=arguments.tune_storage, share_work=not arguments.no_shared_work)
    from lofit_bench.records.run_folder import RunFolder

    folder = RunFolder(settings.out or Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    check_output_folder(folder)
    from lofit_bench.sweep.folder_lock import out_folder_lock

    arguments.cleanup.enter_context(out_folder_lock(folder))  # before the models are checked: a second sweep on OUT refuses at once
    if study is not None:
        study.write(folder.root)  # the report shows the study's table and the paper's numbers
    # Check each model before any run, from its config alone: an unknown, unreachable or unsupported
    # model fails here, with exit code 2, instead of as N failed runs (and the bundled model's cache is
    # built once). Nothing is loaded and CUDA is never initialised in this process: runs load the
    # model in their own processes, on their own GPUs.
    for model in models:
        check_model(model.name, model.trust_remote_code, model.revision)
    if arguments.report_to:
        from lofit_bench.sweep.tracking import check_trackers

        check_trackers(arguments.report_to)
    names = ", ".join(model.name for model in models)
    say(f"lofit-bench: {len(specs)} run(s) on {names} with budget {budget_name(budget.to_dict())} -> {folder}")
    outcomes = run_sweep(
        specs, folder, force=arguments.force, progress=arguments.verbose,
        executor=settings.executor, jobs=settings.jobs, ray_address=arguments.ray_address, quiet=arguments.quiet,
        trackers=arguments.report_to,
    )
    saved = [outcome for outcome in outcomes if outcome.path == outcome.spec.record_path(folder)]
    if any(outcome.status in ("ok", "skipped") for outcome in saved):
        report = build_report(folder.root, reference=arguments.reference, write=False)
        say()
        say(render_markdown(report))  # the summary comes first: a report file that cannot be written loses nothing
        write_report(report, folder.root, runs_dir=folder.root)
        say(f"records: {folder.records}; also report.md, results.csv, results.json")
        say(f"open the report: {folder.root / 'report.html'}")
    unsaved = [outcome for outcome in outcomes if outcome.path != outcome.spec.record_path(folder)]
    if unsaved:
        print(f"lofit-bench: {len(unsaved)} record(s) could not be written into {folder.records}; "
              "their results were kept elsewhere (see above)", file=sys.stderr)
        return EXIT_RUN_FAILED
    failed = [outcome for outcome in outcomes if outcome.status == "failed"]
    if failed:
        print(f"lofit-bench: {len(failed)} of {len(outcomes)} run(s) failed; see their records", file=sys.stderr)
        return EXIT_RUN_FAILED
    return 0


def _check_executor(name: str, address: str | None) -> None:
    """The executor exists, and takes ``--ray-address`` if one is given (never ignored silently)."""
    from lofit_bench.plugins import get_host

    executors = get_host().executors
    executor = executors.get(name)
    if address and not executor.takes_address:
        takers = [other for other in executors if executors.get(other).takes_address]
        raise UserError(
            f"--ray-address is for {' or '.join(f'--executor {other}' for other in takers) or 'an executor that joins a cluster'}; "
            f"the {name} executor does not use it (drop it, or choose that executor)"
        )


def _sweep_overrides(arguments: argparse.Namespace) -> Any:
    """The flags of ``run`` that override the sweep file (:mod:`lofit_bench.sweep.overrides`)."""
    from lofit_bench.sweep.overrides import SweepOverrides

    budget_overrides = _key_values(arguments.budget_set, "--budget-set")
    if arguments.tune is not None:
        budget_overrides["tune"] = arguments.tune == "on"
    if arguments.also_eval is not None:
        budget_overrides["also_eval"] = arguments.also_eval
    model_fields = {"dtype": arguments.dtype, "device": arguments.device, "gpus_per_run": arguments.gpus_per_run,
                    "precision": arguments.precision, "trust_remote_code": arguments.trust_remote_code or None}
    return SweepOverrides(
        methods=arguments.methods, tasks=arguments.tasks, budget=arguments.budget, budget_overrides=budget_overrides,
        method_options=_method_options(arguments.method_set), method_grid=_grid(arguments.grid, "--grid", dotted=True),
        budget_axis=_grid(arguments.budget_axis, "--budget-axis", dotted=False), models=arguments.model,
        model_args=arguments.model_args, model_fields={key: value for key, value in model_fields.items() if value is not None},
        seeds=arguments.seeds, tune_per=arguments.tune_per, out=arguments.out, executor=arguments.executor, jobs=arguments.jobs,
    )


def command_report(arguments: argparse.Namespace) -> int:
    from lofit_bench.report.build import render_markdown
    from lofit_bench.report.formats import report_formats
    from lofit_bench.report.write import build_report, write_report

    registry = report_formats()
    names = arguments.formats if arguments.formats is not None else registry.names()
    files = ", ".join(format_.file_name for format_ in registry.resolve(names))
    out_dir = arguments.out or arguments.runs_dir
    report = build_report(arguments.runs_dir, reference=arguments.reference, write=False, strict=arguments.strict)
    print(render_markdown(report))
    write_report(report, out_dir, names, runs_dir=arguments.runs_dir)
    print(f"\nwrote {files} in {out_dir}")
    return 0


def command_compare(arguments: argparse.Namespace) -> int:
    from lofit_bench.report.compare import compare_folders, render_markdown
    from lofit_bench.report.compare_html import write_comparison

    comparison = compare_folders(arguments.runs_dirs, arguments.tasks, strict=arguments.strict)
    print(render_markdown(comparison))
    if arguments.out is not None:
        write_comparison(comparison, arguments.out)
        print(f"\nwrote comparison.md, comparison.json and comparison.html in {arguments.out}")
    return 0


def command_list(arguments: argparse.Namespace) -> int:
    from tabulate import tabulate

    if arguments.what == "models":
        from lofit_bench.engine.models import MODELS

        rows = [[entry.name, entry.description] for entry in MODELS.values()]
        print(tabulate(rows, headers=["model", "description"], tablefmt="simple"))
        if arguments.verbose:
            print("\nHugging Face folders (for lm-eval's pretrained=..., or any transformers code):")
            for entry in MODELS.values():
                folder = entry.folder()
                where = "built in memory, no folder" if folder is None else (
                    f"{folder}" + ("" if (folder / "config.json").is_file() else " (built on the first run)")
                )
                print(f"  {entry.name}: {where}")
        print("\n--model also takes a local Hugging Face folder or a hub id (needs network access).")
        return 0
    if arguments.what == "budgets":
        from lofit_bench.budget import BUDGETS

        rows = [[name, *(_show_budget_field(key, value) for key, value in budget.to_dict().items() if key != "name")] for name, budget in BUDGETS.items()]
        headers = ["budget", *(key for key in next(iter(BUDGETS.values())).to_dict() if key != "name")]
        print(tabulate(rows, headers=headers, tablefmt="simple"))
        return 0
    from lofit_bench.plugins import get_host

    host = get_host()
    if arguments.what == "executors":
        rows = [[name, host.executors.get(name).description, host.executors.owner(name)] for name in host.executors]
        print(tabulate(rows, headers=["executor", "description", "plugin"], tablefmt="simple"))
        return 0
    if arguments.what == "formats":
        rows = [[name, host.report_formats.get(name).file_name, host.report_formats.get(name).description,
                 host.report_formats.owner(name)] for name in host.report_formats]
        print(tabulate(rows, headers=["format", "file", "description", "plugin"], tablefmt="simple"))
        return 0
    if arguments.what == "studies":
        from lofit_bench.sweep.studies import load_study, registered_studies

        rows = []
        for name, (path, owner) in registered_studies().items():
            study = load_study(path)
            config = study.config
            rows.append([name, study.title, ", ".join(config.methods), ", ".join(config.tasks), config.budget or "paper",
                         ",".join(map(str, config.seeds or [])) or "budget's", owner])
        print(tabulate(rows, headers=["study", "what it reproduces", "methods", "tasks", "budget", "seeds", "plugin"], tablefmt="simple"))
        print("\nrun one: lofit-bench run --study NAME [--model M] [--budget B] --out DIR (a study file path works too)")
        return 0
    if arguments.what == "methods":
        for name in host.methods:
            cls = host.methods.get(name)
            print(f"{name:<16} {cls.description}  [{host.methods.owner(name)}]")
            if arguments.verbose:
                for field in cls.config_class.describe_fields():
                    tuned = f" [tuned: {field['tune']}]" if field.get("tune") else ""
                    print(f"    {field['name']} = {field['default']!r}: {field['help']}{tuned}")
        return 0
    rows = []
    for name in host.tasks:
        cls = host.tasks.get(name)
        rows.append([name, cls.objective, cls.evaluation, ", ".join(cls.metrics), ", ".join(cls.folds), cls.license, cls.description])
    print(tabulate(rows, headers=["task", "training", "evaluation", "metrics", "folds", "license", "description"], tablefmt="simple"))
    for prefix in host.tasks.prefixes():
        print(f"\n{prefix.prefix}:NAME  {prefix.description}  [{prefix.owner}]")
    return 0


def _show_budget_field(name: str, value: Any) -> str:
    """A budget field as `list budgets` prints it: an unset size is the whole split, but an
    unset ``prune_examples`` means no pruning at all."""
    if value is None:
        return "off" if name == "prune_examples" else "all"
    return str(value)


def command_plugins(arguments: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lofit_bench.plugins import get_host

    rows = [
        [info.name, info.distribution, info.version, ", ".join(info.hooks), "built-in" if info.builtin else "installed"]
        for info in get_host().plugins()
    ]
    print(tabulate(rows, headers=["plugin", "distribution", "version", "hooks", "kind"], tablefmt="simple"))
    return 0


def command_heads(arguments: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lofit_bench.engine.heads import HEATMAP_FILE, HeadSelection, describe, draw_heatmap
    from lofit_bench.records.store import load_records
    from lofit_bench.report.head_overlap import overlap_tables
    from lofit_bench.report.run_heads import selections_in

    tables = overlap_tables(load_records(arguments.run_dir)) if arguments.run_dir.is_dir() else []
    try:
        found = selections_in(arguments.run_dir)
    except UserError:
        if not tables:
            raise
        found = []
    for label, path in found:
        selection = HeadSelection.load(path)
        print(f"## {label}\n{describe(selection, arguments.top)}")
        print(f"heatmap: {draw_heatmap(selection, path.parent / HEATMAP_FILE, title=label)}\n")
    for table in tables:  # paper Appendix G
        print(f"## {table.caption}\n{tabulate(table.rows, headers=table.headers, tablefmt='simple', disable_numparse=True)}\n")
    return 0


def command_export_lm_eval(arguments: argparse.Namespace) -> int:
    from lofit_bench.lmeval.export import export_lm_eval_tasks

    result = export_lm_eval_tasks(arguments.out_dir, arguments.tasks)
    for name, reason in result.skipped.items():
        print(f"skipped {name}: {reason}")
    if not result.tasks:
        raise UserError("no task could be exported to lm-eval" + ("; see the reasons above" if result.skipped else ""))
    names = [task.name for task in result.tasks]
    print(f"wrote {len(names)} lm-eval task(s) into {result.out_dir}: {', '.join(names)}")
    print(f"run one with: lm_eval --model hf --model_args pretrained=MODEL_DIR --include_path {result.out_dir} --tasks {names[0]}")
    return 0


COMMANDS = {
    "run": command_run,
    "report": command_report,
    "compare": command_compare,
    "list": command_list,
    "plugins": command_plugins,
    "heads": command_heads,
    "export-lm-eval": command_export_lm_eval,
}
