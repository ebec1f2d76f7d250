"""The plugin system, with the example plugin (examples/lofit-bench-bitfit) and broken ones.

Entry-point discovery is tested without pip: a fake ``<name>-<version>.dist-info`` folder
(METADATA plus entry_points.txt) on ``sys.path`` is all ``importlib.metadata`` needs. Each
test builds a fresh :class:`PluginHost`; the built-ins are cut down to zero-shot so these
tests do not depend on the task modules. The one test that really pip-installs the example
is marked ``slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import torch

from lofit_bench import hookimpl
from lofit_bench import plugins as plugins_module
from lofit_bench.budget import get_budget
from lofit_bench.engine.models import load_model
from lofit_bench.engine.scoring import Generation
from lofit_bench.errors import UserError
from lofit_bench.method import CONFIG_FILE, FitContext
from lofit_bench.methods.zero_shot import ZeroShot
from lofit_bench.plugins import ALLOWLIST_VARIABLE, PluginHost, PluginWarning

EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "lofit-bench-bitfit"
EXAMPLE_MODULE = "lofit_bench_bitfit"
FAKE_PREFIX = "fake_plugin_"
PROBE_TEXT = "Q: What is the capital of France?\nA: Paris"


# -- fixtures and helpers ----------------------------------------------------------------------
def _forget_plugin_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] == EXAMPLE_MODULE or name.startswith(FAKE_PREFIX):
            del sys.modules[name]


@pytest.fixture(autouse=True)
def isolated_plugins(monkeypatch):
    """No allowlist from the environment, zero-shot as the only built-in, no cached plugin modules."""
    monkeypatch.delenv(ALLOWLIST_VARIABLE, raising=False)
    monkeypatch.setattr(plugins_module, "BUILTIN_PLUGINS", ("lofit_bench.methods.zero_shot",))
    _forget_plugin_modules()
    yield
    _forget_plugin_modules()


def install_fake_distribution(
    root: Path,
    name: str,
    entry_points: dict[str, str],
    modules: dict[str, str] | None = None,
    version: str = "0.1.0",
) -> None:
    """Write a dist-info folder (and optional module files) under ``root``, as pip would."""
    dist_info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    )
    stanza = "".join(f"{key} = {value}\n" for key, value in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[lofit_bench]\n{stanza}")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    """An empty fake site-packages folder on sys.path (importlib.metadata rescans it when it changes)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    return root


@pytest.fixture
def example_source(monkeypatch):
    """The example plugin importable from its source folder; discovery also needs a dist-info."""
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))


def plugin_warnings(record) -> list[str]:
    return [str(item.message) for item in record if issubclass(item.category, PluginWarning)]


def in_process_plugin(name: str, **hooks) -> types.ModuleType:
    """A plugin module built in memory from hook functions."""
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        setattr(module, hook_name, hookimpl(function))
    return module


def probe_logits(lm) -> torch.Tensor:
    input_ids = lm.tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return lm.model.eval()(input_ids=input_ids).logits


def forward_hook_counts(model) -> dict[str, int]:
    return {name: len(module._forward_hooks) for name, module in model.named_modules()}


# -- entry-point discovery -----------------------------------------------------------------------
def test_entry_point_discovery_finds_the_example(site, example_source):
    install_fake_distribution(site, "lofit-bench-bitfit", {"bitfit": EXAMPLE_MODULE})
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        host = PluginHost().load()

    assert "bitfit" in host.methods and "local-qa" in host.tasks
    assert host.methods.owner("bitfit") == "bitfit" and host.tasks.owner("local-qa") == "bitfit"
    assert host.methods.get("zero-shot") is ZeroShot
    info = {plugin.name: plugin for plugin in host.plugins()}["bitfit"]
    assert (info.distribution, info.version, info.builtin) == ("lofit-bench-bitfit", "0.1.0", False)
    assert info.hooks == ["register_methods", "register_tasks"]
    assert [plugin.builtin for plugin in host.plugins()] == [True, False]  # built-ins listed first


def test_entry_points_can_be_skipped(site, example_source):
    install_fake_distribution(site, "lofit-bench-bitfit", {"bitfit": EXAMPLE_MODULE})
    host = PluginHost().load(entry_points=False)
    assert host.methods.names() == ["zero-shot"]
    assert EXAMPLE_MODULE not in sys.modules


# -- the example's method: BitFit ----------------------------------------------------------------
def _bitfit():
    from lofit_bench_bitfit import BitFit, BitFitConfig

    return BitFit, BitFitConfig


def _llama_added(config) -> int:
    return 2 * config.num_hidden_layers * config.hidden_size


def _qwen2_qkv(config) -> int:
    head_dim = config.hidden_size // config.num_attention_heads
    return config.num_hidden_layers * (
        config.num_attention_heads * head_dim + 2 * config.num_key_value_heads * head_dim
    )


# (model, options, closed-form count of trained values, trained names end with)
ATTACHMENT_CASES = [
    ("tiny-random-llama", {}, _llama_added, ("o_proj.bitfit_bias", "down_proj.bitfit_bias")),
    (
        "tiny-random-llama",
        {"added_biases": "mlp_output"},
        lambda c: c.num_hidden_layers * c.hidden_size,
        ("down_proj.bitfit_bias",),
    ),
    ("tiny-random-qwen2", {}, _qwen2_qkv, ("q_proj.bias", "k_proj.bias", "v_proj.bias")),
    (
        "tiny-random-qwen2",
        {"existing_biases": False, "added_biases": "attention_output, mlp_output"},
        _llama_added,
        ("o_proj.bitfit_bias", "down_proj.bitfit_bias"),
    ),
]


@pytest.mark.parametrize(("model_name", "options", "expected_count", "suffixes"), ATTACHMENT_CASES)
def test_bitfit_attaches_the_intended_biases_and_removes_them_exactly(
    example_source, model_name, options, expected_count, suffixes
):
    BitFit, BitFitConfig = _bitfit()
    lm = load_model(model_name, device="cpu")
    base_state = {name: tensor.clone() for name, tensor in lm.model.state_dict().items()}
    base_logits = probe_logits(lm)
    base_hooks = forward_hook_counts(lm.model)

    method = BitFit(BitFitConfig.from_dict(options))
    method.prepare(lm)
    trained = sorted(
        name for name, parameter in lm.model.named_parameters() if parameter.requires_grad
    )
    assert method.trainable_parameters() == expected_count(lm.model.config)
    assert sum(
        dict(lm.model.named_parameters())[name].numel() for name in trained
    ) == expected_count(lm.model.config)
    assert trained and all(name.endswith(suffixes) for name in trained)
    assert {name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1] for name in trained} == set(
        suffixes
    )
    # Added biases start at zero and existing ones untouched: the model is still the base model.
    assert torch.equal(probe_logits(lm), base_logits)

    with torch.no_grad():
        for name in trained:
            dict(lm.model.named_parameters())[name].add_(0.5)
    assert not torch.equal(probe_logits(lm), base_logits)

    method.remove()
    state = lm.model.state_dict()
    assert state.keys() == base_state.keys()
    assert all(torch.equal(state[name], base_state[name]) for name in base_state)
    assert not any(parameter.requires_grad for parameter in lm.model.parameters())
    assert forward_hook_counts(lm.model) == base_hooks
    assert torch.equal(probe_logits(lm), base_logits)


def test_bitfit_rejects_configs_with_nothing_to_train(example_source):
    BitFit, BitFitConfig = _bitfit()
    lm = load_model("tiny-random-llama", device="cpu")
    with pytest.raises(UserError, match="no bias to train"):
        BitFit(BitFitConfig(added_biases="none")).prepare(lm)
    with pytest.raises(UserError, match="Did you mean 'attention_output'"):
        BitFit(BitFitConfig(added_biases="attention_outptu")).prepare(lm)
    assert not any(name.endswith("bitfit_bias") for name, _ in lm.model.named_parameters())


def test_bitfit_trains_only_biases_and_round_trips(example_source, tmp_path):
    BitFit, BitFitConfig = _bitfit()
    from lofit_bench_bitfit import LocalQA

    lm = load_model("tiny-random-llama", device="cpu")
    base_state = {name: tensor.clone() for name, tensor in lm.model.state_dict().items()}
    base_logits = probe_logits(lm)

    method = BitFit(BitFitConfig(learning_rate=1e-2))
    method.prepare(lm)
    budget = get_budget("smoke").replace(train_examples=4, batch_size=2, epochs=1)
    context = FitContext(lm, LocalQA(), "main", budget, seed=0, work_dir=tmp_path / "work")
    fit = method.fit(context)
    assert fit["training"]["examples"] == 4 and fit["training"]["steps"] == 2
    assert fit["trained_tensors"] == 2 * lm.layout.n_layers

    state = lm.model.state_dict()
    added = set(state) - set(base_state)
    assert len(added) == 2 * lm.layout.n_layers and all(
        name.endswith(".bitfit_bias") for name in added
    )
    assert all(torch.equal(state[name], base_state[name]) for name in base_state), (
        "a base weight changed"
    )
    assert all(state[name].abs().sum() > 0 for name in added), "a bias did not train"
    assert method.trainable_parameters() == 2 * lm.layout.n_layers * lm.layout.hidden_size
    trained_logits = probe_logits(lm)
    assert not torch.equal(trained_logits, base_logits)

    method.save(tmp_path / "state")
    assert (
        json.loads((tmp_path / "state" / CONFIG_FILE).read_text())["config"]["learning_rate"]
        == 1e-2
    )
    fresh = load_model("tiny-random-llama", device="cpu")
    assert fresh.fingerprint == lm.fingerprint
    restored = BitFit()  # default config: load() re-attaches with the saved one
    restored.prepare(fresh)
    restored.load(tmp_path / "state")
    assert restored.config == method.config
    assert torch.equal(probe_logits(fresh), trained_logits)

    method.remove()
    assert torch.equal(probe_logits(lm), base_logits)
    assert lm.model.state_dict().keys() == base_state.keys()
    assert not any(parameter.requires_grad for parameter in lm.model.parameters())


# -- the example's task: local-qa ----------------------------------------------------------------
class PlantedScorer:
    """Replies with a planted text per prompt; records the generation length asked for."""

    def __init__(self, replies: dict[str, str]) -> None:
        self.replies = replies
        self.max_new_tokens: list[int] = []

    def generate(self, prompts, max_new_tokens=16, description=""):
        self.max_new_tokens.append(max_new_tokens)
        return [
            Generation(
                prompt, prompt + self.replies.get(prompt, ""), self.replies.get(prompt, ""), 1
            )
            for prompt in prompts
        ]


def test_local_qa_splits_and_training_examples(example_source):
    from lofit_bench_bitfit import LocalQA

    task = LocalQA()
    assert task.data_summary() == {"main": {"train": 30, "dev": 8, "test": 12}}
    ids = [
        identifier
        for split in ("train", "dev", "test")
        for identifier in task.split_ids("main", split)
    ]
    assert len(ids) == len(set(ids))
    first = task.training_examples("main")[0]
    assert (first.prompt, first.completion) == ("Q: What is the capital of France?\nA:", " Paris")
    train_questions = {example.prompt for example in task.training_examples("main")}
    assert not train_questions & {
        example.prompt for example in task.training_examples("main", "test")
    }
    with pytest.raises(UserError, match="no fold"):
        task.split_ids("fold_9", "train")


def test_local_qa_scores_exact_match_after_normalisation(example_source):
    from lofit_bench_bitfit import LocalQA
    from lofit_bench_bitfit.task import normalize_answer

    assert normalize_answer("  Paris\nQ: next") == "paris"
    assert normalize_answer("\n Rome \n") == "rome"
    task = LocalQA()
    examples = task.training_examples("main", "test")[:3]
    scorer = PlantedScorer(
        {
            # right once normalised: case, surrounding spaces and the rambling after a newline go
            examples[0].prompt: examples[0].completion.upper() + "\nQ: What",
            examples[1].prompt: " no idea",
        }
    )
    result = task.evaluate(scorer, "main", "test", limit=3)
    assert scorer.max_new_tokens == [8]
    assert result.example_ids == [example.id for example in examples]
    assert [entry["exact_match"] for entry in result.per_example] == [True, False, False]
    assert result.metrics == {"exact_match": pytest.approx(1 / 3)}


def test_local_qa_reads_a_data_dir_override(example_source, tmp_path):
    from lofit_bench_bitfit import LocalQA

    for split in ("train", "dev", "test"):
        record = {"id": f"mine-{split}", "question": "Is this mine?", "answer": "yes"}
        (tmp_path / f"{split}.jsonl").write_text(json.dumps(record) + "\n")
    task = LocalQA(data_dir=tmp_path)
    assert task.split_ids("main", "dev") == ["mine-dev"]
    (tmp_path / "test.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="malformed on line 1"):
        task.split_ids("main", "test")


# -- broken plugins ------------------------------------------------------------------------------
def test_a_plugin_that_fails_to_import_costs_one_warning(site, example_source):
    install_fake_distribution(
        site,
        "lofit-bench-broken",
        {"broken": f"{FAKE_PREFIX}broken"},
        {f"{FAKE_PREFIX}broken": "import a_dependency_that_is_not_installed\n"},
    )
    install_fake_distribution(site, "lofit-bench-bitfit", {"bitfit": EXAMPLE_MODULE})
    with pytest.warns(PluginWarning) as record:
        host = PluginHost().load()

    messages = plugin_warnings(record)
    assert len(messages) == 1
    assert "'broken' (lofit-bench-broken) failed to import" in messages[0]
    assert "a_dependency_that_is_not_installed" in messages[0]
    assert host.methods.names() == ["bitfit", "zero-shot"] and "local-qa" in host.tasks
    assert "broken" not in {plugin.name for plugin in host.plugins()}


def test_a_taken_name_keeps_the_first_registration():
    class Impostor(ZeroShot):
        description = "not the real zero-shot"

    host = PluginHost().load(entry_points=False)
    with pytest.warns(PluginWarning) as record:
        host.register(
            in_process_plugin("impostor", register_methods=lambda register: register(Impostor)),
            "impostor",
        )
    (message,) = plugin_warnings(record)
    assert (
        "'impostor' tried to register method 'zero-shot'" in message and "kept the first" in message
    )
    assert host.methods.get("zero-shot") is ZeroShot
    assert host.methods.owner("zero-shot") == "lofit_bench.methods.zero_shot"


def test_a_plugin_registered_before_load_is_collected_once_and_after_the_builtins():
    class Mine(ZeroShot):
        name = "mine"

    class Impostor(ZeroShot):
        pass

    host = PluginHost()
    host.register(
        in_process_plugin(
            "mine", register_methods=lambda register: (register(Mine), register(Impostor))
        ),
        "mine",
    )
    with pytest.warns(PluginWarning) as record:
        host.load(entry_points=False)
    (message,) = plugin_warnings(record)  # the clash only, no complaint that 'mine' is taken twice
    assert "'mine' tried to register method 'zero-shot'" in message
    assert host.methods.get("mine") is Mine and host.methods.get("zero-shot") is ZeroShot


def test_a_misspelled_hook_is_reported_and_the_cli_keeps_working(site, monkeypatch, capsys):
    install_fake_distribution(
        site,
        "lofit-bench-typo",
        {"typo": f"{FAKE_PREFIX}typo"},
        {
            f"{FAKE_PREFIX}typo": """
                from lofit_bench import hookimpl

                @hookimpl
                def register_method(register):  # the spec is register_methods
                    raise AssertionError("never called")
            """
        },
    )
    with pytest.warns(PluginWarning) as record:
        host = PluginHost().load()
    (message,) = plugin_warnings(record)
    assert "'typo' was skipped" in message and "unknown hook 'register_method'" in message
    assert [plugin.name for plugin in host.plugins()] == ["lofit_bench.methods.zero_shot"]
    assert host.methods.names() == ["zero-shot"]

    from lofit_bench import cli

    monkeypatch.setattr(plugins_module, "_host", None)  # the CLI's own host, restored afterwards
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # cli.main replaces it
    with pytest.warns(PluginWarning, match="unknown hook 'register_method'"):
        assert cli.main(["plugins"]) == 0
    output = capsys.readouterr().out
    assert "lofit_bench.methods.zero_shot" in output and "typo" not in output


def test_a_plugin_raising_in_a_hook_loses_only_that_hook(example_source):
    from lofit_bench_bitfit import LocalQA

    def register_methods(register):
        raise RuntimeError("boom")

    host = PluginHost().load(entry_points=False)
    plugin = in_process_plugin(
        "raiser",
        register_methods=register_methods,
        register_tasks=lambda register: register(LocalQA),
    )
    with pytest.warns(PluginWarning) as record:
        host.register(plugin, "raiser")
    (message,) = plugin_warnings(record)
    assert (
        message
        == "plugin 'raiser' (in-process) raised in register_methods and was skipped: RuntimeError: boom"
    )
    assert host.methods.names() == ["zero-shot"] and host.tasks.get("local-qa") is LocalQA


def test_hooks_are_called_through_pluggy_so_specname_works():
    class Renamed(ZeroShot):
        name = "renamed-hook-method"

    class Provider:
        @hookimpl(specname="register_methods")
        def provide_my_methods(self, register):
            register(Renamed)

    host = PluginHost().load(entry_points=False)
    host.register(Provider(), "specname-plugin")
    assert host.methods.get("renamed-hook-method") is Renamed
    assert host.methods.owner("renamed-hook-method") == "specname-plugin"
    [info] = [info for info in host.plugins() if info.name == "specname-plugin"]
    assert info.hooks == ["register_methods"]


@pytest.mark.parametrize(
    ("a_marks", "b_marks", "winner"),
    [({}, {}, "a-plugin"), ({"trylast": True}, {}, "b-plugin"), ({}, {"tryfirst": True}, "b-plugin")],
)
def test_tryfirst_and_trylast_order_plugins_that_contest_a_name(a_marks, b_marks, winner):
    """By distribution name (a before b) unless a hook says tryfirst or trylast; built-ins always first."""

    def provider(label: str, **options):
        class Contested(ZeroShot):
            name = "contested"
            description = label

        class Plugin:
            @hookimpl(**options)
            def register_methods(self, register):
                register(Contested)
                register(type("Impostor", (ZeroShot,), {"description": label}))  # zero-shot: taken

        return Plugin()

    host = PluginHost()
    host.register(provider("a-plugin", **a_marks), "a-plugin", distribution="a-dist")
    host.register(provider("b-plugin", **b_marks), "b-plugin", distribution="b-dist")
    with pytest.warns(PluginWarning):
        host.load(entry_points=False)
    assert host.methods.get("contested").description == winner
    assert host.methods.get("zero-shot") is ZeroShot


def test_a_nameless_class_or_a_bad_signature_is_reported():
    host = PluginHost().load(entry_points=False)
    with pytest.warns(PluginWarning, match="which has no `name`"):
        host.register(
            in_process_plugin("nameless", register_methods=lambda register: register(object)),
            "nameless",
        )

    def register_tasks(register, extra):  # pluggy rejects arguments the spec does not have
        pass

    with pytest.warns(PluginWarning, match="'bad-signature' could not be registered"):
        host.register(in_process_plugin("bad", register_tasks=register_tasks), "bad-signature")
    assert "bad-signature" not in {plugin.name for plugin in host.plugins()}


def test_an_entry_point_name_that_is_taken_is_reported(site, example_source):
    install_fake_distribution(site, "lofit-bench-bitfit", {"bitfit": EXAMPLE_MODULE})
    install_fake_distribution(  # distributions load in name order: this one comes second
        site,
        "zz-another-bitfit",
        {"bitfit": f"{FAKE_PREFIX}other"},
        {f"{FAKE_PREFIX}other": ""},
    )
    with pytest.warns(PluginWarning) as record:
        host = PluginHost().load()
    (message,) = plugin_warnings(record)
    assert "'bitfit'" in message and "the name is taken by" in message
    assert "bitfit" in host.methods


# -- the allowlist ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("allowlist", "expected_methods"), [("", ["zero-shot"]), ("bitfit", ["bitfit", "zero-shot"])]
)
def test_the_allowlist_chooses_entry_point_plugins(
    site, example_source, monkeypatch, allowlist, expected_methods
):
    install_fake_distribution(site, "lofit-bench-bitfit", {"bitfit": EXAMPLE_MODULE})
    install_fake_distribution(
        site,
        "lofit-bench-broken",
        {"broken": f"{FAKE_PREFIX}never"},
        {f"{FAKE_PREFIX}never": "raise ImportError"},
    )
    monkeypatch.setenv(ALLOWLIST_VARIABLE, allowlist)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)  # the broken plugin is never imported
        host = PluginHost().load()
    assert host.methods.names() == expected_methods
    assert f"{FAKE_PREFIX}never" not in sys.modules


# -- a real install ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_example_installs_with_pip_and_is_discovered(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(
        EXAMPLE_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = tmp_path / "site-packages"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    script = textwrap.dedent(
        """
        import json
        import lofit_bench_bitfit
        from lofit_bench.plugins import PluginHost
        host = PluginHost().load()
        info = {plugin.name: plugin for plugin in host.plugins()}["bitfit"]
        task = host.tasks.get("local-qa")()
        print(json.dumps({
            "module": lofit_bench_bitfit.__file__,
            "methods": host.methods.names(),
            "plugin": [info.distribution, info.version, info.hooks],
            "sizes": task.data_summary()["main"],
        }))
        """
    )
    environment = {key: value for key, value in os.environ.items() if key != ALLOWLIST_VARIABLE}
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=environment | {"PYTHONPATH": str(target)},
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(completed.stdout.strip().splitlines()[-1])
    assert Path(found["module"]).is_relative_to(target)
    assert "bitfit" in found["methods"]
    assert found["plugin"] == [
        "lofit-bench-bitfit",
        "0.1.0",
        ["register_methods", "register_tasks"],
    ]
    assert found["sizes"] == {"train": 30, "dev": 8, "test": 12}
