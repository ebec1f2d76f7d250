"""The HTML page and its plots: one style per method, no colliding text, curves drawn from the
records, the report formats registry, and ``report --out`` leaving the run folder untouched."""

from __future__ import annotations

import hashlib
import itertools

import matplotlib
import pytest
from matplotlib.colors import to_hex
from report_helpers import fake_record, write

from lofit_bench import hookimpl, plugins
from lofit_bench.cli import main
from lofit_bench.errors import UserError
from lofit_bench.report.formats import ReportFormat
from lofit_bench.report.plot_style import BUILTIN_STYLES, method_styles
from lofit_bench.report.write import build_report

matplotlib.use("Agg")

pytestmark = pytest.mark.usefixtures("builtin_plugins_only")

EIGHT_METHODS = ["full-ft", "iti", "lofit", "lora", "loreft", "red", "repe", "zero-shot"]
THREE_TASKS = ["clutrr", "mquake", "truthfulqa"]


def tuned(record: dict, trials: list[dict], losses: list[float] | None = None) -> dict:
    """``record`` with one tuned fold holding ``trials`` and, when given, the final fit's losses."""
    fold = record["folds"]["main"]
    fold["tuning"] = {"mode": "on", "metric": "exact_match", "trials": trials, "trials_run": len(trials),
                      "trials_pruned": sum(trial["state"] == "pruned" for trial in trials), "trials_failed": 0,
                      "chosen": {"learning_rate": 0.01}}
    if losses is not None:
        fold["fit"] = {"training": {"losses": losses}}
    return record


def trial(number: int, state: str, dev: float | None = None, intermediate: dict | None = None) -> dict:
    return {"number": number, "state": state, "values": {"learning_rate": 0.01 * (number + 1)},
            "dev": None if dev is None else {"exact_match": dev}, "intermediate": intermediate or {}}


def full_folder(tmp_path, methods=EIGHT_METHODS, tasks=THREE_TASKS):
    """Every method on every task, tuned over four trials (one pruned), with training losses."""
    records = []
    for (index, method), task in itertools.product(enumerate(methods), tasks):
        score = 0.0 if method in ("repe", "zero-shot") else 0.1 * index + 0.05
        trials = [trial(0, "complete", score), trial(1, "pruned", intermediate={"1": score / 2}),
                  trial(2, "complete", min(1.0, score + 0.1)), trial(3, "complete", score)]
        losses = [4.0 / (step + 1) + 0.01 * index for step in range(40)]
        records.append(tuned(fake_record(method, 1, score, task=task), trials, losses))
    write(tmp_path, records)
    return build_report(tmp_path, write=False)


def all_figures(report):
    from lofit_bench.report.html import (
        Page,
        bars_figure,
        scatter_figure,
        training_figure,
        tuning_figure,
    )

    page = Page.of(report)
    return [
        bars_figure(report.summary, page.styles),
        scatter_figure(report.summary, lambda row: row.trainable_parameters, "trainable parameters", True, page.styles),
        scatter_figure(report.summary, lambda row: row.peak_memory_mib, "peak memory", False, page.styles),
        tuning_figure(report.finished, page.styles),
        training_figure(report.finished, page.styles),
    ]


def _colour(artist) -> str:
    if hasattr(artist, "get_facecolor") and not isinstance(artist, matplotlib.lines.Line2D):
        colours = artist.get_facecolor()
        colour = colours[0] if getattr(colours, "ndim", 1) == 2 and len(colours) else colours
        if hasattr(artist, "get_edgecolor") and getattr(colour, "__len__", None) and len(colour) == 4 and colour[3] == 0:
            colour = artist.get_edgecolor()[0]  # an unfilled marker ("x") is drawn in its edge colour
        return to_hex(colour, keep_alpha=False)
    return to_hex(artist.get_color(), keep_alpha=False)


def test_the_same_method_has_the_same_colour_in_every_plot(tmp_path):
    figures = all_figures(full_folder(tmp_path))
    assert all(figure is not None for figure in figures)
    colours: dict[str, set[str]] = {}
    plots_of: dict[str, int] = {}
    for figure in figures:
        seen = set()
        for artist in figure.findobj(lambda artist: artist.get_gid() in EIGHT_METHODS):
            colours.setdefault(artist.get_gid(), set()).add(_colour(artist))
            seen.add(artist.get_gid())
        for method in seen:
            plots_of[method] = plots_of.get(method, 0) + 1
    assert {method: len(found) for method, found in colours.items()} == dict.fromkeys(EIGHT_METHODS, 1)
    assert colours["lora"] == {BUILTIN_STYLES["lora"][0]} and colours["lofit"] == {BUILTIN_STYLES["lofit"][0]}
    assert plots_of == dict.fromkeys(EIGHT_METHODS, 5)  # every method is drawn in every plot
    assert len({found.pop() for found in colours.values()}) == 8  # and no two methods share a colour


def test_styles_are_stable_and_configs_keep_their_method_colour():
    styles = method_styles(["my-plugin", "lofit", "lofit [learning_rate=0.1]", "other"])
    assert styles["lofit"].colour == styles["lofit [learning_rate=0.1]"].colour == BUILTIN_STYLES["lofit"][0]
    assert styles["lofit"].marker != styles["lofit [learning_rate=0.1]"].marker
    assert styles["my-plugin"] != styles["other"]
    assert method_styles(["lofit", "lora"])["lora"] == method_styles(["lora", "z"])["lora"]


def _text_boxes(figure):
    """(text, extent) of every text the figure draws: tick labels inside their axis's span (a
    locator also makes labels for ticks out of view, which are not drawn), titles, axis labels,
    annotations and legend entries."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    texts = []
    for axes in (axes for axes in figure.axes if axes.get_visible()):
        span = axes.get_window_extent(renderer)
        for label in axes.xaxis.get_ticklabels(which="both"):
            box = label.get_window_extent(renderer)
            if span.x0 - 1 <= (box.x0 + box.x1) / 2 <= span.x1 + 1:
                texts.append(label)
        for label in axes.yaxis.get_ticklabels(which="both"):
            box = label.get_window_extent(renderer)
            if span.y0 - 1 <= (box.y0 + box.y1) / 2 <= span.y1 + 1:
                texts.append(label)
        texts += [axes.title, axes.xaxis.label, axes.yaxis.label, *axes.texts]
        if axes.get_legend():
            texts += axes.get_legend().get_texts()
    for legend in figure.legends:
        texts += legend.get_texts()
    return [(text.get_text(), text.get_window_extent(renderer).shrunk(0.98, 0.9))
            for text in texts if text.get_visible() and text.get_text().strip()]


def test_eight_methods_on_three_tasks_draw_no_overlapping_text(tmp_path):
    for figure in all_figures(full_folder(tmp_path)):
        boxes = _text_boxes(figure)
        assert len(boxes) > 10
        overlapping = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]
        assert overlapping == [], f"{figure.axes[0].get_title()}: {overlapping[:5]}"


def test_curves_are_drawn_from_planted_trials_and_losses(tmp_path):
    from lofit_bench.report.html import (
        Page,
        best_so_far,
        training_figure,
        tuning_figure,
        tuning_points,
    )

    trials = [trial(0, "complete", 0.5), trial(1, "pruned", intermediate={"1": 0.3, "2": 0.2}),
              trial(3, "complete", 0.6), trial(2, "complete", 0.7), trial(4, "failed")]
    write(tmp_path, [tuned(fake_record("lofit", 1, 0.5), trials, [4.0, 3.0, 2.0, 1.0]), fake_record("zero-shot", 1, 0.1)])
    report = build_report(tmp_path, write=False)
    record = next(record for record in report.finished if record.method.name == "lofit")
    points = tuning_points(record, "main")
    assert [(p.trial, p.score, p.state) for p in points] == [
        (1, 50.0, "complete"), (2, 20.0, "pruned"), (3, 70.0, "complete"), (4, 60.0, "complete"), (5, None, "failed")]
    assert best_so_far(points) == [50.0, 50.0, 70.0, 70.0, 70.0]
    assert tuning_points(next(r for r in report.finished if r.method.name == "zero-shot"), "main") is None

    page = Page.of(report)
    tuning = tuning_figure(report.finished, page.styles)
    (axes,) = [axes for axes in tuning.axes if axes.get_visible()]
    (step,) = [line for line in axes.get_lines() if line.get_gid() == "lofit"]
    assert list(step.get_ydata()) == [50.0, 50.0, 70.0, 70.0, 70.0]
    markers = {collection.get_offsets().data.tobytes(): collection for collection in axes.collections}
    offsets = sorted(tuple(map(float, point)) for collection in markers.values() for point in collection.get_offsets())
    assert offsets == [(1, 50.0), (2, 20.0), (3, 70.0), (4, 60.0)]  # the failed trial has no point
    training = training_figure(report.finished, page.styles)
    (axes,) = [axes for axes in training.axes if axes.get_visible()]
    raw = [list(line.get_ydata()) for line in axes.get_lines() if line.get_gid() == "lofit"]
    assert [4.0, 3.0, 2.0, 1.0] in raw and axes.get_yscale() == "log"
    assert axes.get_title() == "clutrr"


def test_summary_marks_the_best_of_each_column(tmp_path):
    from lofit_bench.report.html import summary_table

    write(tmp_path, [fake_record("lofit", 1, 0.5), fake_record("iti", 1, 0.5), fake_record("zero-shot", 1, 0.1),
                     fake_record("lofit", 1, 0.2, task="mquake"), fake_record("iti", 1, 0.3, task="mquake")])
    headers, rows, best = summary_table(build_report(tmp_path, write=False))
    assert headers == ["method", "clutrr (exact_match)", "mquake (exact_match)"]
    assert rows == [["iti", "50.0", "30.0"], ["lofit", "50.0", "20.0"], ["zero-shot", "10.0", "not run"]]
    assert best == {(0, 1), (1, 1), (0, 2)}  # a tie marks both


def test_the_page_has_a_toc_short_warnings_the_time_table_and_every_section(tmp_path):
    from lofit_bench.budget import get_budget
    from lofit_bench.records.store import write_json_atomic
    from lofit_bench.report.html import SECTIONS, render_html

    full_folder(tmp_path, methods=["lofit", "zero-shot"], tasks=["clutrr"])
    write_json_atomic(tmp_path / "records" / "extra.json", fake_record("iti", 1, 0.2, budget=get_budget("paper")))
    page = render_html(build_report(tmp_path, write=False))
    for anchor in ("summary", "tables", "plots", "tuning", "training", "time", "details", "warnings"):
        assert f'id="{anchor}"' in page
    assert '<a href="#tuning">Tuning curves</a>' in page and '<a href="#heads">' not in page  # no heads: no entry
    top = page[: page.index('id="summary"')]
    assert "runs in this folder used different budgets: epochs</li>" in top  # short at the top, in full below
    assert "different budgets: epochs = " not in top and "different budgets: epochs = " in page[page.index('id="warnings"'):]
    assert page.index('id="summary"') < page.index('id="tables"') < page.index('id="plots"') < page.index('id="details"')
    assert [section.anchor for section in SECTIONS][-1] == "details"


def test_a_section_is_one_entry_in_the_list(tmp_path, monkeypatch):
    from lofit_bench.report import html as report_html

    monkeypatch.setattr(report_html, "SECTIONS", list(report_html.SECTIONS))
    report_html.add_section(report_html.Section("side-effects", "Side effects", lambda page: "<p>planted</p>"), after="plots")
    write(tmp_path, [fake_record("lofit", 1, 0.5)])
    page = report_html.render_html(build_report(tmp_path, write=False))
    assert '<a href="#side-effects">Side effects</a>' in page and "<p>planted</p>" in page
    assert page.index('id="plots"') < page.index('id="side-effects"') < page.index('id="time"')
    with pytest.raises(ValueError, match="exists already"):
        report_html.add_section(report_html.Section("plots", "again", lambda page: None))


def _tree(folder) -> dict[str, tuple[str, int]]:
    return {str(path.relative_to(folder)): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_report_out_leaves_the_run_folder_byte_identical(tmp_path, capsys):
    from lofit_bench.engine.heads import HEADS_FILE, HeadSelection

    runs = tmp_path / "runs"
    record = fake_record("lofit", 1, 0.5)
    record["artifacts"] = "artifacts/lofit-1"
    (runs / record["artifacts"] / "main").mkdir(parents=True)
    HeadSelection(source="lofit", chosen=[(0, 1)], shape={"n_layers": 2, "n_heads": 4, "head_dim": 8},
                  ranking=[(0, 1, 1.0)]).save(runs / record["artifacts"] / "main" / HEADS_FILE)
    write(runs, [record, fake_record("zero-shot", 1, 0.1)])
    assert main(["report", str(runs)]) == 0  # an earlier report in the folder, as after a run
    before = _tree(runs)
    out = tmp_path / "elsewhere"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    assert _tree(runs) == before
    assert sorted(path.name for path in out.iterdir()) == ["report.html", "report.md", "results.csv", "results.json"]
    assert (out / "report.md").read_text() == (runs / "report.md").read_text()
    assert "data:image/png;base64," in (out / "report.html").read_text()  # the heatmap, read from the run folder
    assert f"in {out}" in capsys.readouterr().out


def test_formats_choose_the_files_and_an_unknown_one_is_one_line(tmp_path, capsys):
    write(tmp_path, [fake_record("lofit", 1, 0.5)])
    assert main(["report", str(tmp_path), "--formats", "md,csv"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_file()) == ["report.md", "results.csv"]
    capsys.readouterr()
    assert main(["report", str(tmp_path), "--formats", "htm"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "unknown report format: htm" in error and "html" in error


def test_a_plugin_adds_a_report_format_without_a_core_change(tmp_path, capsys):
    def latex(report) -> str:
        return "".join(f"{row.method} & {100 * row.primary:.1f} \\\\\n" for row in report.summary)

    class Plugin:
        @hookimpl
        def register_report_formats(self, register):
            register(ReportFormat("tex", "table.tex", latex, "the summary as LaTeX rows"))
            register(ReportFormat("md2", "report.md", latex))  # a file another format writes: skipped

    with pytest.warns(plugins.PluginWarning, match="whose file report.md another format already writes"):
        plugins.get_host().register(Plugin(), "latex-plugin")
    write(tmp_path, [fake_record("lofit", 1, 0.5), fake_record("iti", 1, 0.25)])
    build_report(tmp_path)
    assert (tmp_path / "table.tex").read_text() == "iti & 25.0 \\\\\nlofit & 50.0 \\\\\n"
    assert (tmp_path / "report.html").exists()
    assert main(["list", "formats"]) == 0
    listing = capsys.readouterr().out
    assert "tex" in listing and "table.tex" in listing and "latex-plugin" in listing and "md2" not in listing
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "tex (table.tex)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(UserError, match="unknown report format"):
        build_report(tmp_path, formats=["pdf"])


def test_a_plugin_format_that_raises_is_one_line_and_replaces_no_file(tmp_path, capsys):
    def broken(report):
        raise KeyError("summary")

    class Plugin:
        @hookimpl
        def register_report_formats(self, register):
            register(ReportFormat("broken", "broken.txt", broken))

    plugins.get_host().register(Plugin(), "broken-plugin")
    write(tmp_path, [fake_record("lofit", 1, 0.5)])
    assert main(["report", str(tmp_path), "--formats", "md,broken"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "report format 'broken' (plugin 'broken-plugin') failed: KeyError" in error
    assert not (tmp_path / "report.md").exists()  # every format is drawn before any file is written


def test_the_readme_report_format_plugin_runs(tmp_path):
    import types
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### A report-format plugin"):]
    code = section[section.index("```python") + len("```python"): section.index("```", section.index("```python") + 9)]
    module = types.ModuleType("readme_latex_plugin")
    exec(compile(code, "README.md", "exec"), module.__dict__)
    plugins.get_host().register(module, "readme-latex")
    write(tmp_path, [fake_record("lofit", 1, 0.5), fake_record("iti", 1, 0.25)])
    assert main(["report", str(tmp_path), "--formats", "latex"]) == 0
    assert (tmp_path / "table.tex").read_text() == "clutrr & iti & 25.0 \\\\\nclutrr & lofit & 50.0 \\\\\n"


def with_kl(record: dict, kl: float) -> dict:
    """``record`` whose fold measured ``kl`` nats of KL from the base model on held-out text."""
    record["folds"]["main"]["side_effects"] = {"kl_from_base": kl, "cross_entropy_base": 2.0, "cross_entropy_fitted": 2.0 + kl,
                                               "cross_entropy_change": kl, "texts": 2, "tokens": 64}
    return record


def test_accuracy_vs_kl_is_drawn_in_the_methods_styles_through_the_shared_figure_markup(tmp_path, monkeypatch):
    """The beyond-accuracy plot is the cost scatter of every other plot: each method in its report
    style, named in the legend (no annotations), the front outlined; its markup is figure_html's."""
    from matplotlib.colors import to_rgba

    from lofit_bench.report import html as page_module

    write(tmp_path, [with_kl(fake_record("lofit", 1, 0.5), 0.02), with_kl(fake_record("lora", 1, 0.4), 0.05),
                     with_kl(fake_record("zero-shot", 1, 0.1), 0.0)])
    page = page_module.Page.of(build_report(tmp_path, write=False))
    drawn = []
    monkeypatch.setattr(page_module, "figure_html", lambda figure, caption: drawn.append((figure, caption)) or "<figure>spy</figure>")
    section = page_module._beyond_accuracy(page)

    [(figure, caption)] = drawn
    assert "<figure>spy</figure>" in section and caption.startswith("Accuracy vs KL from the base model")
    (axes,) = figure.axes
    assert axes.get_xlabel() == "KL from base model (nats/token)" and axes.get_ylabel() == "exact_match (%)"
    points = {collection.get_gid(): collection for collection in axes.collections}
    assert set(points) == {"lofit", "lora", "zero-shot"} and not axes.texts
    for method, collection in points.items():
        assert tuple(collection.get_facecolor()[0]) == to_rgba(page.styles[method].colour)
        assert collection.get_offsets().tolist() == [[{"lofit": 0.02, "lora": 0.05, "zero-shot": 0.0}[method],
                                                       100 * {"lofit": 0.5, "lora": 0.4, "zero-shot": 0.1}[method]]]
    # lora has more KL and less accuracy than lofit: off the front, the only one not outlined in black.
    outlined = {method for method, collection in points.items() if tuple(collection.get_edgecolor()[0]) == to_rgba("black")}
    assert outlined == {"lofit", "zero-shot"}
    (legend,) = figure.legends
    assert [text.get_text() for text in legend.get_texts()] == ["lofit", "lora", "zero-shot"]
