"""The layers of src/r1zero: no import circles (lazy imports inside functions included), pure math importing only
torch, and no function longer than 100 lines."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "r1zero"
LONGEST_FUNCTION = 100  # lines, docstring included


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node) -> bool:
    return isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The r1zero modules `path` imports anywhere (top level or inside functions), but not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(sub) for node in ast.walk(tree) if is_type_checking_block(node) for sub in ast.walk(node)}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parents = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parents + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in graph[node]:
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_circle_finder_finds_a_circle():
    # a -> b -> c -> a is one circle; d -> a is not part of it
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_package():
    graph = import_graph()
    assert "r1zero.trainer" in graph["r1zero.cli"]  # a lazy import, found too
    assert circles(graph) == []


def test_lower_layers_never_import_higher_ones():
    graph = import_graph()
    assert graph["r1zero.algorithms"] == set()  # pure math: torch only
    assert "r1zero.trainer" not in graph["r1zero.update"] | graph["r1zero.distributed"] | graph["r1zero.critic"]
    assert "r1zero.update" in graph["r1zero.critic"] and "r1zero.update" in graph["r1zero.distributed"]
    assert "r1zero.config" not in graph["r1zero.models"] | graph["r1zero.update"]
    rewards = {name for name in graph if name.startswith("r1zero.rewards")}
    assert all(not (graph[name] & {"r1zero.models", "r1zero.trainer", "r1zero.update"}) for name in rewards)
    source = (PACKAGE / "algorithms.py").read_text(encoding="utf-8")
    imports = {node.names[0].name.split(".")[0] if isinstance(node, ast.Import) else (node.module or "").split(".")[0]
               for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))}
    assert imports <= {"__future__", "math", "typing", "torch"}


def test_no_function_is_longer_than_100_lines():
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    too_long.append(f"{module_name(path)}.{node.name}: {lines} lines")
    assert too_long == []
