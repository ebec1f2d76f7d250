"""Make lofit-bench importable on the lent GPU machine without network, changing nothing it has.

Installs into SITE (``--target``, put first on PYTHONPATH by gpu_check.sh) only the wheels of
.wheelhouse/ (benchmarks/gpu_check_wheels.sh) whose distribution is missing or older than the
wheel, then lofit-bench itself (built from this checkout, no dependencies) if it is not
importable. torch is never in the wheelhouse, so the machine's own CUDA build stays. Prints
one line per package it installed. Standard library and pip only.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path


def version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("+")[0].split("."))


def missing_wheels(wheelhouse: Path) -> list[Path]:
    chosen = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        try:
            have = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            have = None
        if have is None or version_key(have) < version_key(version):
            print(f"gpu_check setup: {name} {version} (machine has {have or 'none'})")
            chosen.append(wheel)
    return chosen


def main() -> int:
    repo, site = Path(sys.argv[1]), Path(sys.argv[2])
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--target", str(site), "--upgrade"]
    wheels = missing_wheels(repo / ".wheelhouse") if (repo / ".wheelhouse").is_dir() else []
    if wheels:
        subprocess.run([*pip, *map(str, wheels)], check=True)
    sys.path.insert(0, str(site))
    try:
        import lofit_bench.methods  # noqa: F401  (installed, or installed by an earlier call)
    except ImportError:
        print("gpu_check setup: lofit-bench from this checkout (no dependencies)")
        subprocess.run([*pip, "--no-build-isolation", str(repo)], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
