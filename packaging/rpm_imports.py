"""Each third-party module an installed program imports must be a Requires of its RPM.

    rpm -qp --requires RPM | python packaging/rpm_imports.py PACKAGE_DIR

PACKAGE_DIR: the program's installed package (in a throw-away root). Every ``import`` in its
``.py`` files is read (no code runs). A module from the standard library or the package itself
needs nothing. Any other module is mapped to its distribution with
``importlib.metadata.packages_distributions()`` of the Python that runs this script (one that
has every dependency installed), and that distribution must appear among the RPM's Requires
(read from standard input) as ``python3dist(NAME)`` or ``python3.Xdist(NAME)``. An import
inside ``try`` that catches ``ImportError`` (or a broader exception) is optional and is
listed, not required; one under ``if TYPE_CHECKING:`` never runs. Exit status 1 when
something is missing.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

_CATCHES_IMPORT = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def _handler_names(node: ast.Try) -> set[str]:
    names: set[str] = set()
    for handler in node.handlers:
        kinds = handler.type
        if kinds is None:
            names.add("BaseException")
            continue
        items = kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]
        names.update(item.id for item in items if isinstance(item, ast.Name))
    return names


def _imports(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(required, optional) top-level module names imported by ``tree``."""
    required: set[str] = set()
    optional: set[str] = set()

    def walk(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for branch in node.orelse:
                walk(branch, guarded)
            return
        if isinstance(node, ast.Try) and _handler_names(node) & _CATCHES_IMPORT:
            for tried in node.body:
                walk(tried, True)
            rest: list[ast.AST] = [*node.handlers, *node.orelse, *node.finalbody]
            for other in rest:
                walk(other, guarded)
            return
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            (optional if guarded else required).add(name.split(".")[0])
        for child in ast.iter_child_nodes(node):
            walk(child, guarded)

    walk(tree, False)
    return required, optional


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(package_dir: str) -> int:
    package = Path(package_dir)
    required: set[str] = set()
    optional: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        need, may = _imports(ast.parse(path.read_text(), str(path)))
        required |= need
        optional |= may
    ignore = set(sys.stdlib_module_names) | {package.name, "__future__"}
    required -= ignore
    optional -= ignore | required
    lines = sys.stdin.read()
    wanted = {
        _normalise(m[1]) for m in re.finditer(r"^python3(?:\.\d+)?dist\(([^)]+)\)", lines, re.M)
    }
    owners = importlib.metadata.packages_distributions()
    missing = []
    for module in sorted(required):
        dists = {_normalise(d) for d in owners.get(module, [module])}
        found = sorted(dists & wanted)
        if found:
            sys.stdout.write(f"  import {module}: Requires python3dist({found[0]})\n")
        else:
            missing.append(module)
            sys.stdout.write(f"  import {module}: NO Requires for {', '.join(sorted(dists))}\n")
    for module in sorted(optional):
        sys.stdout.write(f"  import {module}: optional (guarded), not required\n")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
