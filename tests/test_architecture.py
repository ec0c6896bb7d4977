"""The package's shape, as docs/architecture.md draws it: no module of mora/ imports, even inside a
function, a module that imports it back."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "mora").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The mora modules `module` imports anywhere in its file (a package counts as its __init__)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_reads_the_imports():
    """The control: the graph sees lazy imports, relative imports and packages."""
    known = modules()
    graph = {m: imported(m, p, known) for m, p in known.items()}
    assert "mora.kernels" in graph["mora.adapters.layer"]  # `from ..kernels import fast_forward`
    assert "mora.adapters" in graph["mora.identity"]  # inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_mora():
    known = modules()
    graph = {m: imported(m, p, known) for m, p in known.items()}
    assert cycles(graph) == []


def test_every_data_builder_gives_what_training_and_its_evaluators_need():
    """mora.interfaces: every registered builder is a Task; corpora have the held-out rows Perplexity
    scores, the UUID task the pairs and prompts CharAccuracy asks for."""
    from mora.data import TASKS, build_task
    from mora.interfaces import HeldOutTask, KeyValueTask, Task
    from mora.models import char_tokenizer

    assert not issubclass(object, Task)  # the control: the check can fail
    for name in TASKS.names():
        assert issubclass(TASKS.get(name), Task), name
    assert {n for n in TASKS.names() if issubclass(TASKS.get(n), HeldOutTask)} >= {"c4", "biomed_cpt", "finance_cpt"}
    assert isinstance(build_task("uuid", char_tokenizer(), n_pairs=2), KeyValueTask)
