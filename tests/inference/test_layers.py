"""Imports point down (docs/layout.md): no module imports, or names by string, a floor above its own."""
import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "convnext"
# floor -> the packages it must not reach
FORBIDDEN = {
    "models": ("weights", "data", "train", "dense", "bench", "roadmap", "inference", "deploy", "cli", "api"),
    "data": ("train", "dense", "bench", "roadmap", "cli", "inference", "api"),
    "weights": ("train", "dense", "bench", "roadmap", "cli", "inference", "api"),
    "train": ("dense", "inference", "cli", "api"),
}
# compatibility shims that re-export what moved up (documented in the module)
SHIMS = {"train/evaluate.py", "train/robustness.py"}


def _targets(path: Path) -> set[str]:
    """The `convnext.X` packages a module imports (relative imports resolved) or names in a module-path string."""
    tree = ast.parse(path.read_text())
    package = ["convnext", *path.relative_to(SRC).parent.parts]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names] if not node.module and node.level else [mod]
            out.update(names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                re.fullmatch(r"convnext(\.[a-z_]+)+(:\w+)?", node.value):  # a module named to import by string
            out.add(node.value.split(":")[0])
    return {t.split(".")[1] for t in out if t.startswith("convnext.") and t.count(".") >= 1}


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_no_import_points_up(floor):
    bad = []
    for path in sorted((SRC / floor).rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in SHIMS:
            continue
        hit = _targets(path) & set(FORBIDDEN[floor])
        if hit:
            bad.append(f"{rel} -> {sorted(hit)}")
    assert not bad, bad
