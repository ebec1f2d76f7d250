"""lofit-bench: compare LoFiT and other ways of steering or fine-tuning a language model
under identical data splits and budgets."""

from lofit_bench.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["hookimpl", "__version__"]
