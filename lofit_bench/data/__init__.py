"""The data lofit-bench ships: the LoFiT paper's exact splits (see DATA.md and LICENSES.md)."""

from pathlib import Path

DATA_ROOT = Path(__file__).resolve().parent
