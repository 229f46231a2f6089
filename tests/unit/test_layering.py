"""The package's layering, read from the source: who may import whom.

- No framework module imports the ShapesWorld testbed (`mitune_ray.shapes`): it plugs in through
  `mitune_ray.registry`, wired by the CLI.
- A stage (`mitune_ray.stages.*`) imports neither the driver nor another stage.
- No module imports a name another module keeps private (`_name`), and no module of the package
  is imported under a path that no longer exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mitune_ray"
# May import the testbed: the composition root, and the testbed itself.
SHAPES_ALLOWED = {"mitune_ray.cli"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, name: str) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in the file, at any depth."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, [alias.name for alias in node.names]))
    return found


def test_no_framework_module_imports_the_shapes_testbed():
    offenders = []
    for name, path in modules().items():
        if name.startswith("mitune_ray.shapes") or name in SHAPES_ALLOWED:
            continue
        for module, names in imports(path, name):
            targets = [module] + [f"{module}.{n}" for n in names]
            if any(t == "mitune_ray.shapes" or t.startswith("mitune_ray.shapes.") for t in targets):
                offenders.append(f"{name} imports {module}")
    assert not offenders, offenders


def test_stages_import_neither_the_driver_nor_each_other():
    offenders = []
    for name, path in modules().items():
        if not name.startswith("mitune_ray.stages."):
            continue
        for module, names in imports(path, name):
            targets = [module] + [f"{module}.{n}" for n in names]
            for t in targets:
                if t == "mitune_ray.driver" or t.startswith("mitune_ray.driver."):
                    offenders.append(f"{name} imports the driver")
                if t.startswith("mitune_ray.stages.") and t.split(".")[2] != name.split(".")[2]:
                    offenders.append(f"{name} imports {t}")
    assert not offenders, offenders



def test_no_private_name_is_imported_from_another_module():
    known = modules()
    offenders = []
    for name, path in known.items():
        for module, names in imports(path, name):
            if not module.startswith("mitune_ray"):
                continue
            if module not in known and not any(f"{module}.{n}" in known for n in names):
                offenders.append(f"{name} imports {module}, which does not exist")
            same_package = module.rsplit(".", 1)[0] == name.rsplit(".", 1)[0]
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    # A package's private module (metrics._weights) serves that package alone.
                    if f"{module}.{n}" in known and same_package or module == name.rsplit(".", 1)[0]:
                        continue
                    offenders.append(f"{name} imports {n} from {module}")
            if any(part.startswith("_") and not part.startswith("__")
                   for part in module.split(".")) and not same_package:
                offenders.append(f"{name} imports the private module {module}")
    assert not offenders, offenders

