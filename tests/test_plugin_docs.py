"""The plugin author's documents stay true: signatures, links, the heads format and the example's README."""

from __future__ import annotations

import importlib
import inspect
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest

from lofit_bench import plugins, testing
from lofit_bench.cli import main
from lofit_bench.engine.heads import SCHEMA_FILE, HeadSelection

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-plugin.md"
EXAMPLE_DIR = ROOT / "examples" / "lofit-bench-bitfit"
EXAMPLE_README = EXAMPLE_DIR / "README.md"


class _Raw(str):
    """An annotation shown as written (``from __future__ import annotations`` keeps them as text)."""

    def __repr__(self) -> str:
        return str(self)


def public_signature(target: object) -> str:
    signature = inspect.signature(target)

    def plain(annotation):
        return _Raw(annotation) if isinstance(annotation, str) else annotation

    parameters = [parameter.replace(annotation=plain(parameter.annotation)) for parameter in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=plain(signature.return_annotation)))


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(dotted)


def documented_signatures() -> list[tuple[str, str]]:
    section = GUIDE.read_text().split("## Public API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^- `(lofit_bench(?:\.\w+)+)(\([^`]*\)(?: -> [^`]+)?)`", section, flags=re.MULTILINE)


def test_the_public_api_section_lists_signatures():
    assert len(documented_signatures()) >= 25


@pytest.mark.parametrize(("name", "documented"), documented_signatures(), ids=[name for name, _ in documented_signatures()])
def test_every_documented_signature_matches_the_code(name, documented):
    assert public_signature(resolve(name)) == documented, f"{name}: update docs/writing-a-plugin.md"


@pytest.mark.parametrize("document", [GUIDE, EXAMPLE_README], ids=["guide", "example-readme"])
def test_relative_links_lead_to_files_and_headings(document):
    readme_anchors = {
        re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        for heading in re.findall(r"^#+ (.*)$", (ROOT / "README.md").read_text(), flags=re.MULTILINE)
    }
    for target in re.findall(r"\]\(([^)#:]+)(?:#([^)]+))?\)", document.read_text()):
        path, anchor = target
        assert (document.parent / path).exists(), f"{document.name} links to {path}, which does not exist"
        if anchor and path.endswith("README.md") and (document.parent / path).resolve() == ROOT / "README.md":
            assert anchor in readme_anchors, f"{document.name} links to README.md#{anchor}, which is no heading"


# -- the heads format -----------------------------------------------------------------------------
def heads_schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def test_the_guides_heads_example_is_valid_for_the_schema_and_the_reader():
    example = json.loads(GUIDE.read_text().split("```json", 1)[1].split("```", 1)[0])
    jsonschema.validate(example, heads_schema())
    selection = HeadSelection.from_dict(example)
    assert selection.chosen == [(0, 1), (1, 3)]


@pytest.mark.parametrize("path", sorted((ROOT / "reports").glob("*/artifacts/*/*/heads.json"))[:6], ids=str)
def test_committed_heads_files_follow_the_schema(path):
    jsonschema.validate(json.loads(path.read_text()), heads_schema())


def test_a_repeated_head_breaks_the_schema_as_it_breaks_the_reader():
    example = json.loads(GUIDE.read_text().split("```json", 1)[1].split("```", 1)[0])
    example["chosen"] = [[0, 1], [0, 1]]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example, heads_schema())


# -- the example plugin's README ------------------------------------------------------------------
def example_commands() -> list[list[str]]:
    """The `lofit-bench ...` lines of the README's bash blocks (pip installs are the test's setup)."""
    blocks = re.findall(r"```bash\n(.*?)```", EXAMPLE_README.read_text(), flags=re.DOTALL)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("lofit-bench ")]


def test_the_example_readme_commands_run(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    info = site / "lofit_bench_bitfit-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lofit-bench-bitfit\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[lofit_bench]\nbitfit = lofit_bench_bitfit\n")  # what pip writes from the toml below
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, "bitfit")
    monkeypatch.chdir(tmp_path)
    plugins.reset_host()
    toml = re.findall(r"```toml\n(.*?)```", EXAMPLE_README.read_text(), flags=re.DOTALL)[0]
    assert toml in (EXAMPLE_DIR / "pyproject.toml").read_text()  # the entry point it shows is the real one
    ran = []
    try:
        for arguments in example_commands():
            if arguments[0] == "run" and "tiny-random-llama" not in arguments:
                continue  # a run on the bundled model: minutes, not a fast test
            if arguments[0] == "run":
                arguments += ["--executor", "inline", "--quiet", "--budget-set", "train_examples=4", "--budget-set", "eval_examples=2"]
            assert main(arguments) == 0, arguments
            ran.append(arguments[0])
    finally:
        plugins.reset_host()
    shown = capsys.readouterr().out
    assert ran == ["plugins", "list", "list", "run"]
    assert "lofit-bench-bitfit" in shown and "bitfit" in shown and "local-qa" in shown
    assert sorted((tmp_path / "runs" / "bitfit-smoke" / "records").glob("*.json"))


# -- the guide's complete plugin, installed as written ----------------------------------------------
def guide_plugin_blocks() -> tuple[str, str, str]:
    """The section's pyproject.toml, its module and its contract test, as the guide shows them."""
    section = GUIDE.read_text().split("## A complete plugin on one page", 1)[1].split("\n## ", 1)[0]
    (toml,) = re.findall(r"```toml\n(.*?)```", section, flags=re.DOTALL)
    module, contract = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return toml, module, contract


@pytest.fixture
def guide_plugin(tmp_path, monkeypatch):
    """The guide's plugin on sys.path behind a dist-info as pip writes it from its pyproject.toml."""
    toml, module, contract = guide_plugin_blocks()
    project = tomllib.loads(toml)
    ((entry_name, module_name),) = project["project"]["entry-points"]["lofit_bench"].items()
    assert project["tool"]["setuptools"]["py-modules"] == [module_name]
    site = tmp_path / "site"
    info = site / f"{module_name}-{project['project']['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['project']['name']}\nVersion: {project['project']['version']}\n"
    )
    (info / "entry_points.txt").write_text(f"[lofit_bench]\n{entry_name} = {module_name}\n")
    (site / f"{module_name}.py").write_text(module)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, entry_name)
    monkeypatch.chdir(tmp_path)
    plugins.reset_host()
    namespace: dict = {}
    exec(compile(contract, "tests/test_contract.py (guide)", "exec"), namespace)
    yield namespace
    plugins.reset_host()
    sys.modules.pop(module_name, None)


def test_the_guides_plugin_passes_its_contract(guide_plugin, tmp_path):
    method_contract, task_contract = guide_plugin["TestScaledBiasContract"], guide_plugin["TestArithContract"]
    life = testing.live_method(method_contract, tmp_path / "contract")
    testing.check_identity_at_start(life)
    testing.check_removal(life)
    testing.check_round_trip(method_contract, life)
    testing.check_trainable_count(life)
    testing.check_test_split_untouched(life)
    testing.check_capabilities(life)
    assert life.trainable == 2 * 64  # one bias of hidden_size 64 per layer of the tiny Llama's 2
    checks = task_contract()
    for name in dir(checks):
        if name.startswith("test_"):
            getattr(checks, name)()


def test_the_guides_plugin_runs_tunes_and_checks_its_bounds(guide_plugin, tmp_path, capsys):
    common = ["--tasks", "arith", "--model", "tiny-random-llama", "--budget", "smoke", "--executor", "inline", "--quiet",
              "--budget-set", "train_examples=4", "--budget-set", "eval_examples=2", "--budget-set", "dev_examples=2"]
    assert main(["run", "--methods", "scaled-bias", "--budget-set", "trials=2", "--out", str(tmp_path / "runs"), *common]) == 0
    (path,) = (tmp_path / "runs" / "records").glob("scaled-bias--*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    assert record["method"]["plugin_distribution"]["name"] == record["task"]["plugin_distribution"]["name"] == "lofit-bench-extras"
    assert record["trainable_parameters"]["count"] == 128
    fold = record["folds"]["main"]
    assert fold["tuning"]["trials_run"] == 2 and fold["tuning"]["trials"][0]["values"] == {"learning_rate": 1e-2}
    assert all("answer_log_prob" in trial["dev"] for trial in fold["tuning"]["trials"])
    assert {"prediction", "gold", "generation", "exact_match", "answer_log_prob"} <= set(fold["per_example"][0])
    capsys.readouterr()
    bad = ["run", "--methods", "scaled-bias", "--method-set", "scaled-bias.learning_rate=-1", "--out", str(tmp_path / "bad"), *common]
    assert main(bad) == 2
    assert "scaled-bias.learning_rate must be > 0, got -1" in capsys.readouterr().err
