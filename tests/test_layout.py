"""The package's layout: imports only go down the activities, and the top-level API loads lazily."""
import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "llm_edit"
LAYERS = ["core", "locating", "editing", "unlearning", "evaluating", "auditing", "cli"]


def _imports(path: Path):
    """(line, target module under llm_edit) of every llm_edit import in ``path``, lazy ones too."""
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                if not node.module:  # from . import x: x is a module of that package
                    for alias in node.names:
                        yield node.lineno, target + [alias.name]
                    continue
                yield node.lineno, target
            elif node.module and node.module.startswith("llm_edit."):
                yield node.lineno, node.module.split(".")[1:]


def test_imports_only_go_down_the_layers():
    upward = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] not in LAYERS:
            continue  # llm_edit/__init__.py and __main__.py sit above everything
        mine = LAYERS.index(rel.parts[0])
        for line, target in _imports(path):
            if target and target[0] in LAYERS and LAYERS.index(target[0]) > mine:
                upward.append(f"{rel}:{line} imports llm_edit.{'.'.join(target)}")
    assert not upward, "\n".join(upward)


def test_importing_the_package_does_not_import_torch():
    code = "import sys, llm_edit; assert 'torch' not in sys.modules; llm_edit.edit; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PKG.parent)


def test_the_public_api_stays_at_the_top():
    import llm_edit

    for name in ("load_model", "edit", "forget", "apply_patch", "audit", "EditSession", "WeightDelta", "EditRequest",
                 "ForgetItem", "FactFileError", "read_requests", "read_items"):
        assert callable(getattr(llm_edit, name)), name
    assert llm_edit.__version__
