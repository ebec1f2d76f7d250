"""Plugin loading: built-ins first, then installed packages from the ``lofit_bench`` entry points.

Follows simonw/llm's design: built-in methods and tasks are ordinary plugins, installed
plugins are found through the entry-point group ``lofit_bench``, and the environment
variable ``LOFIT_BENCH_LOAD_PLUGINS`` is an allowlist of entry-point names (``""`` loads
none). A plugin that fails to import, raises inside a hook, or registers a taken name costs
one warning line, never the CLI.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from lofit_bench import hookspecs
from lofit_bench.errors import LofitBenchWarning
from lofit_bench.names import name_problem
from lofit_bench.registry import Registry

ENTRY_POINT_GROUP = "lofit_bench"
ALLOWLIST_VARIABLE = "LOFIT_BENCH_LOAD_PLUGINS"

BUILTIN_PLUGINS = (
    "lofit_bench.methods.zero_shot",
    "lofit_bench.methods.lofit",
    "lofit_bench.methods.iti",
    "lofit_bench.methods.repe",
    "lofit_bench.methods.lora",
    "lofit_bench.methods.full_ft",
    "lofit_bench.methods.red",
    "lofit_bench.methods.loreft",
    "lofit_bench.tasks.truthfulqa",
    "lofit_bench.tasks.clutrr",
    "lofit_bench.tasks.mquake",
    "lofit_bench.lmeval.tasks",  # the `lm_eval:` task-name prefix (lm-eval imported on use)
    "lofit_bench.sweep.executors",  # process, inline, ray
    "lofit_bench.report.formats",  # md, csv, json, html
    "lofit_bench.sweep.studies",  # the paper's experiments (lofit_bench/data/studies/*.toml)
)


class PluginWarning(LofitBenchWarning):
    """A plugin misbehaved; lofit-bench skipped the broken part and went on."""


@dataclass
class PluginInfo:
    """What `lofit-bench plugins` shows about one registered plugin."""

    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    builtin: bool = False


def warn_plugin(message: str) -> None:
    warnings.warn(message, PluginWarning, stacklevel=3)


class PluginHost:
    """The plugin manager plus the method, task and executor registries it fills."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)
        self.methods: Registry[type] = Registry("method")
        self.tasks: Registry[type] = Registry("task")
        self.executors: Registry[type] = Registry("executor")
        self.report_formats: Registry = Registry("report format")
        #: (study file, plugin that registered it), in registration order (built-ins first).
        self.study_files: list[tuple[Path, str]] = []
        self._info: dict[str, PluginInfo] = {}
        self._loaded = False

    # -- loading -------------------------------------------------------------------------
    def load(self, entry_points: bool = True) -> PluginHost:
        """Register built-ins and installed plugins, then fill the registries (idempotent)."""
        if self._loaded:
            return self
        self._loaded = True
        for module_name in BUILTIN_PLUGINS:
            module = importlib.import_module(module_name)
            self._register_plugin(module, module_name, "lofit-bench", _own_version(), True)
        if entry_points:
            self._load_entry_points()
        self._check_pending()
        self._collect()
        return self

    def register(self, plugin: object, name: str, distribution: str = "(in-process)") -> None:
        """Register an in-process plugin object (tests, notebooks) and refill the registries."""
        self._register_plugin(plugin, name, distribution, "", False)
        self._check_pending()
        if self._loaded:  # otherwise load() collects it, after the built-ins
            self._collect_from(name)

    def _load_entry_points(self) -> None:
        allowlist = os.environ.get(ALLOWLIST_VARIABLE)
        allowed = None if allowlist is None else {n.strip() for n in allowlist.split(",") if n.strip()}
        # A fixed order (distribution name, then entry-point name), not install order: which of two
        # plugins wins a contested name must not depend on which was installed first.
        found = sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=_entry_point_order)
        if allowed:
            missing = sorted(allowed - {entry_point.name for entry_point in found})
            if missing:
                installed = ", ".join(sorted({entry_point.name for entry_point in found})) or "(none)"
                warn_plugin(
                    f"{ALLOWLIST_VARIABLE} names {', '.join(missing)}, which no installed plugin provides "
                    f"(installed plugins: {installed})"
                )
        for entry_point in found:
            if allowed is not None and entry_point.name not in allowed:
                continue
            distribution = getattr(entry_point, "dist", None)
            dist_name = distribution.metadata["Name"] if distribution else "?"
            if self.manager.has_plugin(entry_point.name):
                owner = self._info.get(entry_point.name)
                warn_plugin(
                    f"plugin {entry_point.name!r} ({dist_name}) was skipped: the name is taken by "
                    f"{owner.distribution if owner else 'another plugin'}"
                )
                continue
            dist_version = distribution.version if distribution else "?"
            try:
                plugin = entry_point.load()
            except Exception as error:  # noqa: BLE001 - any import failure must not stop the CLI
                warn_plugin(
                    f"plugin {entry_point.name!r} ({dist_name}) failed to import and was skipped: "
                    f"{type(error).__name__}: {error}"
                )
                continue
            self._register_plugin(plugin, entry_point.name, dist_name, dist_version, False)

    def _register_plugin(
        self, plugin: object, name: str, distribution: str, version: str, builtin: bool
    ) -> None:
        try:
            self.manager.register(plugin, name=name)
        except Exception as error:  # noqa: BLE001
            warn_plugin(f"plugin {name!r} could not be registered and was skipped: {error}")
            return
        hooks = sorted(hook.name for hook in self.manager.get_hookcallers(plugin) or [])
        self._info[name] = PluginInfo(name, distribution, version, hooks, builtin)

    def _check_pending(self) -> None:
        """Unregister plugins whose hook names match no spec (a misspelled hook)."""
        try:
            self.manager.check_pending()
        except pluggy.PluginValidationError as error:
            plugin = error.plugin
            name = self.manager.get_name(plugin) or repr(plugin)
            warn_plugin(f"plugin {name!r} was skipped: {error}")
            self.manager.unregister(plugin)
            self._info.pop(name, None)
            self._check_pending()

    # -- registries ------------------------------------------------------------------------
    def _collect(self) -> None:
        # Built-ins first (in their listed order), so a plugin never takes a built-in's name; then
        # installed plugins: those whose hooks say `tryfirst` first and `trylast` last (pluggy's own
        # ordering), then by distribution name and plugin name, so the winner of a contested name is
        # the same on every machine whatever the install order.
        def order(info: PluginInfo) -> tuple:
            if info.builtin:
                return (False, 0, "", "")
            return (True, self._priority(info.name), info.distribution.lower(), info.name)

        for info in sorted(self._info.values(), key=order):
            self._collect_from(info.name)

    def _priority(self, plugin_name: str) -> int:
        """0 when a hook of the plugin is marked ``tryfirst``, 2 when ``trylast``, else 1."""
        implementations = [
            implementation
            for caller in self.manager.get_hookcallers(self.manager.get_plugin(plugin_name)) or []
            for implementation in caller.get_hookimpls() if implementation.plugin_name == plugin_name
        ]
        if any(implementation.tryfirst for implementation in implementations):
            return 0
        return 2 if any(implementation.trylast for implementation in implementations) else 1

    def distribution_of(self, plugin_name: str) -> dict[str, str] | None:
        """The distribution (name and version) that provides a registered plugin, for the record."""
        info = self._info.get(plugin_name)
        return None if info is None else {"name": info.distribution, "version": info.version}

    def installed_packages(self) -> dict[str, str]:
        """The top-level package of each installed (not built-in) plugin -> the plugin's name:
        a frame of a traceback whose module is under it ran that plugin's code."""
        packages = {}
        for info in self._info.values():
            plugin = self.manager.get_plugin(info.name)
            if info.builtin or plugin is None:
                continue
            module = getattr(plugin, "__name__", None) if isinstance(plugin, type(os)) else type(plugin).__module__
            if module and module.split(".")[0] != "lofit_bench":
                packages.setdefault(module.split(".")[0], info.name)
        return packages

    def is_builtin(self, plugin_name: str) -> bool:
        info = self._info.get(plugin_name)
        return info is not None and info.builtin

    def describe(self, plugin_name: str) -> str:
        """The plugin's name and, for an installed one, its distribution and version."""
        info = self._info.get(plugin_name)
        if info is None or info.builtin:
            return repr(plugin_name)
        if info.distribution.startswith("("):  # "(in-process)"
            return f"{plugin_name!r} {info.distribution}"
        return f"{plugin_name!r} ({info.distribution} {info.version})".replace(" )", ")")

    def _hook_caller(self, plugin_name: str, hook_name: str) -> Callable[..., Any] | None:
        """pluggy's caller of ``hook_name`` for this one plugin (None if it does not implement
        it): every pluggy feature applies (``specname=``, hook wrappers), and a plugin that
        raises is known by name and stops no other plugin's registration."""
        plugin = self.manager.get_plugin(plugin_name)
        callers = {caller.name for caller in self.manager.get_hookcallers(plugin) or []}
        if plugin is None or hook_name not in callers:
            return None
        others = [other for other in self.manager.get_plugins() if other is not plugin]
        return self.manager.subset_hook_caller(hook_name, remove_plugins=others)

    def _collect_from(self, plugin_name: str) -> None:
        plugin = self.manager.get_plugin(plugin_name)
        if plugin is None:
            return
        registries = (("register_methods", self.methods), ("register_tasks", self.tasks), ("register_executors", self.executors))
        for hook_name, registry in registries:
            caller = self._hook_caller(plugin_name, hook_name)
            if caller is None:
                continue

            def register(cls: type, _registry: Registry = registry) -> None:
                name = getattr(cls, "name", None)
                if not isinstance(name, str) or not name:
                    warn_plugin(f"plugin {plugin_name!r} registered {cls!r}, which has no `name`")
                    return
                problem = name_problem(name)
                if problem is not None:
                    warn_plugin(
                        f"plugin {self.describe(plugin_name)} registered {_registry.kind} {name!r}, which was "
                        f"skipped: {problem}"
                    )
                    return
                if not _registry.add(name, cls, owner=plugin_name):
                    warn_plugin(
                        f"plugin {plugin_name!r} tried to register {_registry.kind} {name!r}, which plugin "
                        f"{self.describe(_registry.owner(name))} already registered; kept the first (built-ins "
                        f"first, then plugins by distribution name) and skipped the one from {self.describe(plugin_name)}"
                    )

            self._call_hook(plugin_name, hook_name, caller, register)
        self._collect_prefixes(plugin_name)
        self._collect_report_formats(plugin_name)
        self._collect_studies(plugin_name)

    def _collect_studies(self, plugin_name: str) -> None:
        caller = self._hook_caller(plugin_name, "register_studies")
        if caller is None:
            return

        def register(path: str | Path) -> None:
            # Read (and named) on use, by lofit_bench.sweep.studies: the host only keeps who registered what.
            if not isinstance(path, str | Path):
                warn_plugin(f"plugin {plugin_name!r} registered study file {path!r}, which is not a path")
                return
            self.study_files.append((Path(path), plugin_name))

        self._call_hook(plugin_name, "register_studies", caller, register)

    def _collect_prefixes(self, plugin_name: str) -> None:
        caller = self._hook_caller(plugin_name, "register_task_prefixes")
        if caller is None:
            return

        def register(prefix: str, resolve, description: str = "") -> None:
            if not isinstance(prefix, str) or not prefix.isidentifier() or not callable(resolve):
                warn_plugin(f"plugin {plugin_name!r} registered task prefix {prefix!r}, which is not a name with a resolver")
            elif not self.tasks.add_prefix(prefix, resolve, description, owner=plugin_name):
                warn_plugin(f"plugin {plugin_name!r} tried to register task prefix {prefix!r}, which is taken; kept the first")

        self._call_hook(plugin_name, "register_task_prefixes", caller, register)

    def _call_hook(self, plugin_name: str, hook_name: str, caller: Callable[..., Any], register) -> None:
        """Call one plugin's hook with ``register``; a plugin's bug costs a warning, not the CLI."""
        try:
            caller(register=register)
        except Exception as error:  # noqa: BLE001 - a plugin's bug must not stop the CLI
            warn_plugin(
                f"plugin {self.describe(plugin_name)} raised in {hook_name} and was skipped: "
                f"{type(error).__name__}: {error}"
            )

    def _collect_report_formats(self, plugin_name: str) -> None:
        caller = self._hook_caller(plugin_name, "register_report_formats")
        if caller is None:
            return
        def register(report_format: Any) -> None:
            # Read by its fields (lofit_bench.report.formats.ReportFormat's), so the plugin host, below
            # the report layer, never imports it.
            if not all(isinstance(getattr(report_format, field, None), str) for field in ("name", "file_name")) \
                    or not callable(getattr(report_format, "render", None)):
                warn_plugin(f"plugin {plugin_name!r} registered {report_format!r}, which is not a ReportFormat with a render function")
                return
            problem = name_problem(report_format.name) or name_problem(report_format.file_name)
            if problem is not None:
                warn_plugin(f"plugin {self.describe(plugin_name)} registered report format {report_format.name!r}, which was skipped: {problem}")
            elif any(self.report_formats.get(name).file_name == report_format.file_name for name in self.report_formats):
                warn_plugin(f"plugin {plugin_name!r} registered report format {report_format.name!r}, whose file "
                            f"{report_format.file_name} another format already writes; kept the first")
            elif not self.report_formats.add(report_format.name, report_format, owner=plugin_name):
                warn_plugin(f"plugin {plugin_name!r} tried to register report format {report_format.name!r}, which plugin "
                            f"{self.describe(self.report_formats.owner(report_format.name))} already registered; kept the first")

        self._call_hook(plugin_name, "register_report_formats", caller, register)

    def plugins(self) -> list[PluginInfo]:
        return sorted(self._info.values(), key=lambda info: (not info.builtin, info.name))


def _entry_point_order(entry_point) -> tuple[str, str, str]:
    distribution = getattr(entry_point, "dist", None)
    name = distribution.metadata["Name"] if distribution else ""
    return ((name or "").lower(), entry_point.name, entry_point.value)


def _own_version() -> str:
    try:
        return importlib.metadata.version("lofit-bench")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use."""
    global _host
    if _host is None:
        _host = PluginHost().load()
    return _host


def reset_host() -> None:
    """Forget the loaded plugins (tests use this to reload with another allowlist)."""
    global _host
    _host = None


def get_method_class(name: str) -> type:
    return get_host().methods.get(name)


def get_task_class(name: str) -> type:
    return get_host().tasks.get(name)
