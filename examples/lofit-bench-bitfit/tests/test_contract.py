"""BitFit and local-qa against lofit-bench's method and task contracts (lofit_bench.testing).

Run from this folder with the plugin installed (``pip install -e .``) or from its source
(``python -m pytest tests``; pyproject's ``pythonpath`` puts the package on the path).
lofit-bench's own suite runs these classes too (``tests/test_contracts.py``).
"""

from lofit_bench_bitfit import BitFit, LocalQA

from lofit_bench.testing import MethodContract, TaskContract


class TestBitFitContract(MethodContract):
    method_class = BitFit
    options = {"learning_rate": 1e-2}
    task = LocalQA


class TestLocalQAContract(TaskContract):
    task_class = LocalQA
