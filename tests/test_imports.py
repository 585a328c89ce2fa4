"""The import lines the architecture promises, each checked in a fresh interpreter.

- pure data code (DICOM, labels, folds, metrics, caches, OOF files, ensembles) imports without torch;
- inference (the Kaggle adapter included) imports no Lightning, Hydra, scikit-learn, SciPy or W&B;
- `iad.models` and `iad.data` never import each other: the config wires them.
"""

from __future__ import annotations

import ast
from pathlib import Path
import subprocess
import sys

import pytest

from iad.utils.env import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "iad"
TORCH_FREE = [
    "iad.contract", "iad.datasets", "iad.dicom", "iad.labels", "iad.boxes", "iad.folds", "iad.metrics",
    "iad.preprocessing", "iad.synthetic", "iad.evaluation", "iad.evaluation.cv", "iad.evaluation.oof",
    "iad.ensembling", "iad.ensembling.run", "iad.ensembling.optimize", "iad.ensembling.spec",
    "iad.data.slices", "iad.data.crops", "iad.data.masks", "iad.utils.io", "iad.utils.env", "iad.utils.config",
    "iad.detection.images", "iad.detection.labels", "iad.detection.data", "iad.detection.crops",
    "iad.detection.findings", "iad.preflight", "iad.external", "iad.external.bids", "iad.external.orientation",
    "iad.external.source", "iad.external.cache", "iad.external.truth", "iad.synthetic.bids",
    "iad.labelling", "iad.labelling.cleaning", "iad.labelling.clean",
    "ensemble",  # the entry point, before Hydra runs it
    "iad.labelling.pseudo_labels", "iad.labelling.pseudo",  # the pseudo-label rule; the stage imports torch when run
    "iad.pipeline.stages",
]
TORCH_MODULES = ("torch", "lightning", "pytorch_lightning")
INFERENCE = ["iad.inference", "iad.inference.kaggle", "iad.inference.loading", "iad.inference.predictor",
             "iad.inference.localize", "iad.detection.detector", "iad.utils.weights"]
NOT_AT_INFERENCE = ("lightning", "pytorch_lightning", "hydra", "sklearn", "scipy", "wandb", "torchmetrics", "iterstrat")


def imported_after(module: str, candidates: tuple[str, ...]) -> list[str]:
    code = f"import sys, {module}; print(' '.join(m for m in {candidates!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


@pytest.mark.parametrize("module", TORCH_FREE)
def test_data_code_imports_without_torch(module):
    assert imported_after(module, TORCH_MODULES) == []


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_imports_only_what_it_runs(module):
    assert imported_after(module, NOT_AT_INFERENCE) == []


def iad_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return {name for name in names if name.startswith("iad.")}


@pytest.mark.parametrize(("package", "other"), [("models", "data"), ("data", "models")])
def test_models_and_data_never_import_each_other(package, other):
    offenders = {path.name: sorted(name for name in iad_imports(path) if name.startswith(f"iad.{other}"))
                 for path in sorted((PACKAGE / package).glob("*.py"))}
    assert not {name: found for name, found in offenders.items() if found}
