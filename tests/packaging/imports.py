"""Which third-party modules an image's code imports: a walk over the source files' syntax.

From each entry module, every `import` anywhere in the file (module level or inside a function,
where the commands keep their heavy imports) is followed through modelship's own modules; what
is not ours is what the image's venv must be able to import. `if TYPE_CHECKING:` blocks are
skipped: they never run.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = (REPO / "operator", REPO / "server_image")
FIRST_PARTY = ("modelship", "modelship_server")

# What each image runs: its entry points and the commands the operator renders into its pods.
ENTRIES: dict[str, tuple[str, ...]] = {
    # `modelship run` (ENTRYPOINT/CMD), `modelship render` and `modelship --help` (cli imports each
    # subcommand module to ask for its flags).
    "operator": ("modelship.cli", "modelship.run_command", "modelship.render_command", "modelship.demo_command",
                 "modelship.devcluster.command", "modelship.bench_command"),
    # modelship-server, `modelship optimize` (the Job and apply-variant), `python -m modelship.fetch`.
    "server": ("modelship.cli", "modelship_server.cli", "modelship_server.__main__",
               "modelship_server.optimize.command", "modelship.fetch.__main__"),
}
# Of the operator image's `modelship` subcommands, only these run there; the rest are for a
# development checkout (demo, dev-cluster) or the serving image (bench, optimize). Their modules
# must import (for --help), but what their `run` imports need not.
MODULE_LEVEL_ONLY: dict[str, tuple[str, ...]] = {
    "operator": ("modelship.demo_command", "modelship.devcluster.command", "modelship.bench_command"),
    "server": (),
}


def module_file(name: str) -> Path | None:
    """The source file of one of our modules (a package's __init__.py), or None if not ours."""
    if name.split(".")[0] not in FIRST_PARTY:
        return None
    for root in SOURCE_ROOTS:
        base = root.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, *, module_level_only: bool = False) -> set[str]:
    """Absolute names a module imports (`from a import b` gives a.b when that is a module of
    ours, else a), relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            inside = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if module_level_only and not inside:
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                found.add(base)
                for alias in child.names:
                    if module_file(f"{base}.{alias.name}") is not None:
                        found.add(f"{base}.{alias.name}")
            visit(child, inside)

    visit(tree, True)
    return found


def third_party(entries: tuple[str, ...], module_level_only: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Every non-standard, non-first-party module reachable from `entries`, with the modules of
    ours that import it."""
    seen: set[str] = set()
    todo = list(entries)
    needed: dict[str, set[str]] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        assert path is not None, f"{name} is not one of our modules"
        # a package's parents run first on import
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += [p for p in parents if module_file(p) is not None]
        for imported in imports_of(name, path, module_level_only=name in module_level_only):
            top = imported.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if top in FIRST_PARTY:
                if module_file(imported) is not None:
                    todo.append(imported)
                continue
            needed.setdefault(imported, set()).add(name)
    return needed


def every_module() -> tuple[str, ...]:
    """All of our modules (for the development venv, which must import everything)."""
    names = []
    for root in SOURCE_ROOTS:
        for top in FIRST_PARTY:
            for path in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else []:
                parts = path.relative_to(root).with_suffix("").parts
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return tuple(names)


# Run inside an image's venv: import each module, print the ones that fail and why.
CHECK_SCRIPT = """
import importlib, json, sys
failed = {}
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""
