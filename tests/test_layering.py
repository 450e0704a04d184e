"""Layers never reach up: the model, data, format, kernel, evaluation and MoE packages import nothing from the
benchmark, the studies or the commands (function-level imports included), and loading an artifact imports the
model's own module and nothing above it."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import qwave

PACKAGE = Path(qwave.__file__).parent
LOWER = ("formats", "kernels", "nn", "data", "eval", "moe")
UPPER = ("bench", "studies", "commands")


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports, at any depth of its syntax tree (lazy imports in functions included), with
    relative imports resolved; ``from a import b`` yields ``a`` and ``a.b`` (b may be a submodule)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def upward_imports(root: Path) -> list[str]:
    """``file:line -> module`` for each import from a LOWER package into an UPPER one."""
    bad = []
    for layer in LOWER:
        for path in sorted((root / layer).rglob("*.py")):
            for name, line in imported_modules(path, root):
                parts = name.split(".")
                if parts[0] == "qwave" and len(parts) > 1 and parts[1] in UPPER:
                    bad.append(f"{path.relative_to(root.parent)}:{line} -> {name}")
    return bad


def test_no_lower_package_imports_bench_studies_or_commands():
    assert upward_imports(PACKAGE) == []


def test_the_walk_finds_lazy_and_relative_upward_imports(tmp_path):
    """The checker itself: a function-level import and a relative one into bench/ are both reported."""
    root = tmp_path / "qwave"
    for layer in (*LOWER, *UPPER):
        (root / layer).mkdir(parents=True)
        (root / layer / "__init__.py").write_text("")
    (root / "nn" / "lazy.py").write_text("def f():\n    from qwave.bench.runner import plan\n    return plan\n")
    (root / "moe" / "rel.py").write_text("from ..studies import common\n")
    (root / "eval" / "fine.py").write_text("from qwave.nn import lazy\nimport numpy\n")
    assert upward_imports(root) == [
        "qwave/nn/lazy.py:2 -> qwave.bench.runner",
        "qwave/nn/lazy.py:2 -> qwave.bench.runner.plan",
        "qwave/moe/rel.py:1 -> qwave.studies",
        "qwave/moe/rel.py:1 -> qwave.studies.common",
    ]


LOAD_AND_LIST = """
import json, sys
import qwave
model = qwave.load(sys.argv[1])
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("qwave", "matplotlib"))))
"""


@pytest.mark.parametrize("kind", ["moe", "mlp"])
def test_loading_an_artifact_imports_nothing_above_the_model(tmp_path, kind):
    """In a fresh interpreter, ``qwave.load`` of a saved MoE (or MLP) leaves the benchmark, the studies, the
    commands and matplotlib unimported."""
    import torch

    from qwave import artifact
    from qwave.moe.model import MoEClassifier, quantize_moe
    from qwave.nn import MLPClassifier, pack_model, quantize_model

    torch.manual_seed(0)
    if kind == "moe":
        model = pack_model(quantize_moe(MoEClassifier(12, 3, ["bitnet", "int8"], hidden=(8,))))
    else:
        model = pack_model(quantize_model(MLPClassifier(12, 3, (8,)), "int4"))
    artifact.save(model, tmp_path / "art", classes=["a", "b", "c"])
    done = subprocess.run([sys.executable, "-c", LOAD_AND_LIST, str(tmp_path / "art")], capture_output=True,
                          text=True, check=True, cwd=tmp_path, env={"PYTHONPATH": str(PACKAGE.parent),
                                                                     "PATH": "/usr/bin:/bin"})
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert ("qwave.moe.model" in loaded) == (kind == "moe")
    above = [m for m in loaded if m.startswith(("qwave.bench", "qwave.studies", "qwave.commands", "matplotlib"))]
    assert above == []
