"""No module imports from a layer above its own: the layer table of docs/design.md, checked on every import."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lookalike"


def layer_table() -> dict[str, int]:
    """``{"lookalike.data": 1, "lookalike.io": 0, ...}`` from the rows of docs/design.md's layer table."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| `lookalike/([\w/.]+?)/?` \|", text, flags=re.M)
    return {"lookalike." + name.removesuffix(".py").replace("/", "."): int(layer) for layer, name in rows}


def unit_of(module: str, table: dict[str, int]) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in table:
            return ".".join(parts[:n])
    return None


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("lookalike")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lookalike"):
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def test_the_table_covers_every_module():
    table = layer_table()
    assert len(table) >= 15, "the layer table of docs/design.md could not be read"
    missing = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if unit_of(module, table) is None:
            missing.append(module)
    assert not missing, f"modules without a row in docs/design.md's layer table: {missing}"


def test_no_module_imports_a_layer_above_its_own():
    table = layer_table()
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = unit_of(module, table)
        if own is None:
            continue
        for line, name in imports_of(path):
            target = unit_of(name, table) or unit_of(name.rpartition(".")[0], table)
            if target is not None and table[target] > table[own]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} ({own}, layer {table[own]}) imports {name} "
                             f"(layer {table[target]})")
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)
