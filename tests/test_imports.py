"""The app's modules import one another without cycles, and ml/ imports no Django.

Imports inside functions count too: they hide a cycle from Python at import time, not
from the reader who has to hold both modules in mind at once.
"""

import ast
from pathlib import Path

import recommender

PACKAGE = Path(recommender.__file__).parent


def module_names():
    """{dotted name: path} of every module of the app, packages as their ``__init__``."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported(module, source, known, is_package=False):
    """Every module that ``module`` (its ``source``) imports, anywhere in it, as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # ``from . import serving`` imports the module serving; ``from .x import f``, x.
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found


def imports_of(module, path, known):
    return imported(module, path.read_text(), known, is_package=path.name == "__init__.py")


def import_graph():
    known = module_names()
    return {
        module: {name for name in imports_of(module, path, known) if name in known} - {module}
        for module, path in known.items()
    }


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_app_has_no_import_cycles():
    graph = import_graph()
    assert graph["recommender.serving"], "the graph found no imports: the test is broken"
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_sees_imports_inside_functions():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    known = {"recommender.training", "recommender.tasks", "recommender.ml.artifact"}
    source = "def send():\n    from .tasks import train\n    from .ml.artifact import load\n"
    assert imported("recommender.training", source, known) == {
        "recommender.tasks",
        "recommender.ml.artifact",
    }


def test_ml_imports_no_django_and_nothing_of_the_app_outside_ml():
    graph = import_graph()
    known = module_names()
    for module, path in known.items():
        if not module.startswith("recommender.ml"):
            continue
        outside = {
            name
            for name in imports_of(module, path, known)
            if name.split(".")[0] == "django"
            or (name.startswith("recommender") and not name.startswith("recommender.ml"))
        }
        assert not outside, f"{module} imports {sorted(outside)}"
        assert all(target.startswith("recommender.ml") for target in graph[module])
