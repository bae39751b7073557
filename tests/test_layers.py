"""The import graph flows one way (DESIGN.md): a module never imports one of a higher layer, even lazily."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pixelwise"

# lowest first; a module may import its own layer and those below
LAYERS = [
    {"errors", "registry", "atomic", "geometry", "display", "progress", "safe_load", "memory", "hubfiles", "counts"},
    {"config", "config_sections", "config_keys", "data.classes"},  # the schema; the class table is part of it
    {"data", "models", "losses", "optim"},
    {"validate"},
    {"engine"},
    {"inference"},
    {"export", "report", "plan", "share"},
    {"serve"},
    {"api", "kfold"},
    {"tune"},
    {"demo", "cli", "cli_deploy", "cli_info", "cli_label", "cli_predict", "cli_share", "cli_trust", "cli_tune",
     "__main__", "__init__"},
]


def _layer(module: str) -> int:
    """'pixelwise.data.classes' -> its layer (the most specific entry wins)."""
    name = module.removeprefix("pixelwise.")
    for candidate in (name, ".".join(name.split(".")[:2]), name.split(".")[0]):
        for i, layer in enumerate(LAYERS):
            if candidate in layer:
                return i
    raise AssertionError(f"{module}: not placed in a layer of tests/test_layers.py")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pixelwise"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pixelwise")}
    return found


def test_imports_flow_one_way():
    problems = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__") if path.name == "__init__.py" else ".".join(rel.parts)
        if path.name == "__init__.py" and path.parent == SRC:
            module = "pixelwise.__init__"
        own = _layer(module)
        for imported in _imports(path):
            if imported != "pixelwise" and _layer(imported) > own:
                problems.append(f"{module} (layer {own}) imports {imported} (layer {_layer(imported)})")
    assert not problems, "\n".join(sorted(problems))


def test_config_is_a_pure_schema():
    schema = {"pixelwise.errors", "pixelwise.safe_load", "pixelwise.data.classes"}
    assert _imports(SRC / "config_sections.py") <= schema
    assert _imports(SRC / "config.py") <= schema | {"pixelwise.config_sections"}


def test_no_module_is_much_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long
