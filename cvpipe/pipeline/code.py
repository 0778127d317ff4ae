"""A step's own code: the modules its function's module imports from the project, transitively.

The cache key hashes these files only, so fixing a typo in a report module does not retrain a model whose
step never imports it. Imports are read from the source (the AST, imports inside functions included, since
steps import their heavy modules lazily), never executed. "The project" is the package the step lives in
plus cvpipe itself: a plugin step's own helpers count, third-party libraries do not (their versions are
recorded beside the fingerprint).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from functools import cache
from pathlib import Path


def _module_file(name: str) -> Path | None:
    """The .py file of a module (a package's __init__.py), or None when it has no source or is not found."""
    mod = sys.modules.get(name)
    path = getattr(mod, "__file__", None) if mod is not None else None
    if path is None:
        return _source_file(name)
    return Path(path) if path.endswith(".py") else None


def _source_file(name: str) -> Path | None:
    """The source file of a module not imported, found on disk without importing anything: `find_spec` of a
    dotted name imports its parent packages, and fingerprinting the data steps imported matplotlib and the
    vision stack that way (most of a no-change rerun)."""
    top, _, rest = name.partition(".")
    try:
        spec = importlib.util.find_spec(top)  # a top-level name imports nothing
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for base in spec.submodule_search_locations or []:
        stem = Path(base, *rest.split("."))
        for candidate in (stem.with_name(stem.name + ".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of the modules (or module attributes) a module's source imports."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base = ".".join(base_parts[: len(base_parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _parents(name: str) -> list[str]:
    """a.b.c -> [a, a.b]: the packages whose __init__ runs when a.b.c is imported."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


@cache
def module_closure(module: str) -> tuple[tuple[str, Path], ...]:
    """(name, file) of `module` and every project module it imports, transitively, sorted by name."""
    roots = {module.split(".")[0], "cvpipe"}
    seen: dict[str, Path] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in seen or name.split(".")[0] not in roots:
            continue
        found = _module_imports(name)
        if found is None:  # an attribute (from pkg import func), or not a source module
            continue
        seen[name], deps = found
        for dep in deps | {name}:
            pending.extend(n for n in [dep, *_parents(dep)] if n not in seen)
    return tuple(sorted(seen.items()))


@cache
def _module_imports(name: str) -> tuple[Path, frozenset[str]] | None:
    """(file, names it imports) of one module, parsed once per process: the steps of one run share most of
    their closures (the data steps: some sixty modules), and parsing them again cost seconds under load."""
    path = _module_file(name)
    if path is None:
        return None
    tree = ast.parse(path.read_bytes(), filename=str(path))
    return path, frozenset(_imported_names(tree, name, path.name == "__init__.py"))


def code_fingerprint(module: str) -> dict[str, object]:
    """sha256 (16 hex) over the names and bytes of the module's closure, and how many modules it covers."""
    h = hashlib.sha256()
    closure = module_closure(module)
    for name, path in closure:
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes())
    return {"fingerprint": h.hexdigest()[:16], "modules": len(closure)}
