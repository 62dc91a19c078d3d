"""The public surface exists, and the core never imports the layers above it."""

from __future__ import annotations

import ast
from pathlib import Path

import bea

CORE = ["_tree", "_checks", "functional", "derivatives", "modified", "expansion", "ode", "verify"]
FORBIDDEN = (
    "bea.experiments",
    "bea.report",
    "bea.cli",
    "bea.commands",
    "bea.diagnostics",
    "matplotlib",
    "sklearn",
    "mlxtend",
    "torchjd",
    "pandas",
    "json",
    "csv",
    "pickle",
)
ALLOWED_ROOTS = {
    "torch",
    "numpy",
    "scipy",
    "bea",
    "__future__",
    "collections",
    "dataclasses",
    "typing",
    "math",
    "functools",
    "itertools",
    "contextlib",
    "weakref",
    "warnings",
    "time",
    "abc",
    "operator",
    "enum",
    "numbers",
}

PUBLIC = [
    "bind",
    "params_of",
    "grad",
    "value_and_grad",
    "hvp",
    "gram",
    "lie_bracket",
    "vector_field_bracket",
    "igr",
    "modified_loss",
    "multitask_terms",
    "sequential_modified_field",
    "sequential_modified_terms",
    "order_effect",
]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_public_names_exist():
    missing = [name for name in PUBLIC if not callable(getattr(bea, name, None))]
    assert not missing, f"bea is missing public names {missing}"
    assert set(PUBLIC) <= set(bea.__all__)


def test_core_imports_only_downward():
    root = Path(bea.__file__).parent
    offenders = []
    for module in CORE:
        path = root / f"{module}.py"
        assert path.exists(), f"core module {module}.py is missing: update CORE in this test"
        for name in _imports(path):
            if name.startswith(FORBIDDEN) or name.split(".")[0] not in ALLOWED_ROOTS:
                offenders.append(f"{module}.py imports {name}")
    assert not offenders, "core modules must not import upper layers or IO: " + "; ".join(offenders)


def test_diagnostics_do_no_file_io():
    root = Path(bea.__file__).parent / "diagnostics"
    offenders = []
    for path in root.glob("*.py"):
        text = path.read_text()
        for marker in ("open(", "write_text", "torch.save", "json.dump", "np.save"):
            if marker in text:
                offenders.append(f"{path.name}: {marker}")
        for name in _imports(path):
            if name.startswith(("bea.experiments", "bea.report", "bea.cli", "bea.commands")):
                offenders.append(f"{path.name} imports {name}")
    assert not offenders, "; ".join(offenders)


def test_layers_above_the_core_never_import_the_command_line():
    root = Path(bea.__file__).parent
    offenders = []
    for folder in ("experiments", "report", "diagnostics"):
        for path in (root / folder).glob("*.py"):
            for name in _imports(path):
                if name.startswith(("bea.commands", "bea.cli")):
                    offenders.append(f"{folder}/{path.name} imports {name}")
    for path in (root / "diagnostics").glob("*.py"):
        for name in _imports(path):
            if name.startswith(("bea.experiments", "bea.report", "matplotlib")):
                offenders.append(f"diagnostics/{path.name} imports {name}")
    assert not offenders, "; ".join(offenders)
