"""
The package layout is the architecture: each subpackage may import only
the ones below it (README "How the code is laid out"), and no module is
part of an import cycle.  This test reads the source; it imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "mxpolicyd"

# What each subpackage may import, besides itself.  Read bottom-up: ops is
# used by all; policy decides over evidence's data and is pure; the cache
# holds evidence, judged by policy, in the store; the answers render what
# the cache knows for the wire codecs; config builds the settings of all.
ALLOWED: dict[str, set[str]] = {
    "ops": set(),
    "net": {"ops"},
    "evidence": {"net", "ops"},
    "policy": {"evidence", "ops"},
    "store": {"evidence", "net", "ops"},
    "cache": {"policy", "evidence", "store", "ops"},
    "protocols": {"ops"},
    "answers": {"protocols", "cache", "policy", "evidence", "ops"},
    "config": {"answers", "policy", "evidence", "ops"},
}
# The top: the command line and the assembly may import anything.
TOP = {"cli", "tap", "__init__", "__main__"}
# Pure: decisions over plain data, no I/O, no reactor.
PURE = {"policy"}
IMPURE_IMPORTS = ("twisted.internet", "twisted.web", "twisted.application", "treq",
                  "socket", "sqlite3", "os", "subprocess")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every module of the package that C{path} imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + ["%s.%s" % (node.module, a.name) for a in node.names]
        else:
            continue
        for name in names:
            if name in known and name != "mxpolicyd":
                found.add(name)
    return found


def role(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


class LayoutTests(SynchronousTestCase):
    """Imports go one way, from the assembly down."""

    def setUp(self) -> None:
        self.modules = modules()
        self.graph = {m: imports(p, self.modules) for m, p in self.modules.items()}

    def test_every_module_has_a_role(self) -> None:
        """Every module lives in a subpackage with a rule, or is one of the top's."""
        for module in self.modules:
            r = role(module)
            self.assertTrue(r in ALLOWED or r in TOP, "%s is in no known subpackage" % module)

    def test_subpackages_say_what_they_own(self) -> None:
        """Each subpackage's docstring says what it owns and what it may import."""
        for name in ALLOWED:
            doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
            self.assertTrue(doc and "May import" in doc, "mxpolicyd/%s/__init__.py" % name)

    def test_imports_go_down(self) -> None:
        """No subpackage imports one that is not below it."""
        wrong = []
        for module, targets in sorted(self.graph.items()):
            source = role(module)
            if source in TOP:
                continue
            for target in sorted(targets):
                dest = role(target)
                if dest != source and dest not in ALLOWED[source]:
                    wrong.append("%s imports %s" % (module, target))
        self.assertEqual(wrong, [])

    def test_no_cycles(self) -> None:
        """No module imports itself through others, even lazily."""
        cycles = []
        state: dict[str, int] = {}

        def visit(module: str, stack: list[str]) -> None:
            state[module] = 1
            for target in sorted(self.graph[module]):
                if state.get(target) == 1:
                    cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
                elif target not in state:
                    visit(target, stack + [target])
            state[module] = 2

        for module in sorted(self.graph):
            if module not in state:
                visit(module, [module])
        self.assertEqual(cycles, [])

    def test_policy_is_pure(self) -> None:
        """The decision code imports no I/O: table tests cover it without a reactor."""
        impure = []
        for module, path in sorted(self.modules.items()):
            if role(module) not in PURE:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                impure.extend("%s imports %s" % (module, n) for n in names
                              if n.startswith(IMPURE_IMPORTS))
        self.assertEqual(impure, [])
