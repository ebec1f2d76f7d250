"""Installing a test plugin the way pip would, so that child processes discover it too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lofit_bench import plugins


def install_entry_point_plugin(
    root: Path, monkeypatch: pytest.MonkeyPatch, module: str, source: str, distribution: str, version: str = "0.1"
) -> Path:
    """Write ``module.py`` and a dist-info declaring it in the ``lofit_bench`` entry-point group
    under ``root/site``, put that folder on this process's and child processes' path, allow only
    this plugin and reset the plugin host. Returns the folder."""
    site = root / "site"
    site.mkdir()
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    entry_name = distribution.split("-")[0]
    (info / "entry_points.txt").write_text(f"[lofit_bench]\n{entry_name} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv(plugins.ALLOWLIST_VARIABLE, entry_name)
    plugins.reset_host()
    return site
