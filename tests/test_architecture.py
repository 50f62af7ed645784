"""The shape of the code, checked from the sources with `ast` (nothing is imported or executed).

- No import cycle among jaxens modules (imports inside functions count too).
- The config schema, its choice names and `ConfigError` import no JAX.
- Every map over the member axis goes through `jaxens.members.map_members`: no other `jax.vmap`
  call in the trainer's modules.
- No library module over 500 lines, no function over 80, the orchestration module at most 300.
- Nothing in the repository points to a document outside it.
"""

from __future__ import annotations

import ast
import pathlib
import re

from conftest import REPO

PACKAGE = pathlib.Path(REPO) / "jaxens"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
    """The jaxens modules `path` (module `name`) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # `from jaxens import x` imports the module jaxens.x when there is one.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # jaxens.data.registry.load → jaxens.data.registry
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the jaxens modules it imports (a package's __init__ counts as the package)."""
    modules = _modules()
    return {name: _imports(path, name, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done.
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            # A module importing its own package (for a sibling) is the package's __init__, not a cycle
            # unless that __init__ imports the module back.
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one_and_names_it():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_jaxens_modules():
    graph = import_graph()
    assert "jaxens.members" in graph["jaxens.trainer.spec"] | graph["jaxens.train_chunk"]  # The graph sees imports.
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_config_schema_imports_no_jax():
    tree = ast.parse((PACKAGE / "config.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    heavy = {m for m in imported if m.split(".")[0] in ("jax", "jaxlib", "flax", "optax", "orbax", "numpy", "jaxens")}
    assert not heavy, f"jaxens/config.py imports {sorted(heavy)}"
    assert "jaxens.config" not in import_graph()["jaxens.steps"] and not import_graph()["jaxens.steps"]


def test_the_member_axis_is_mapped_by_map_members_only():
    """`jax.vmap` appears in the library only inside `map_members` itself and over other axes (the λ
    groups' losses, images within one member's batch), listed here."""
    allowed = {"members.py", "train_step.py", "data/augment.py"}  # map_members; groups' losses; crops.
    trainer_core = [
        "ensemble.py", "train_step.py", "train_chunk.py", "spawn.py", "coupling.py", "rng.py", "data/order.py",
        "data/batch.py", *[f"trainer/{p.name}" for p in (PACKAGE / "trainer").glob("*.py")], "run.py",
    ]  # fmt: skip
    found = []
    for rel in trainer_core:
        text = (PACKAGE / rel).read_text()
        calls = len(re.findall(r"\bjax\.vmap\(", text))
        if calls and rel not in allowed:
            found.append(f"{rel}: {calls}")
    assert not found, f"jax.vmap over the members outside map_members: {found}"
    assert len(re.findall(r"\bjax\.vmap\(", (PACKAGE / "train_step.py").read_text())) == 1  # The λ groups.


def _function_lengths(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_modules_and_functions_stay_small():
    long_modules, long_functions = [], []
    for name, path in _modules().items():
        lines = len(path.read_text().splitlines())
        if lines > 500:
            long_modules.append(f"{name}: {lines} lines")
        long_functions += [f"{name}.{f} (line {at}): {n} lines" for f, at, n in _function_lengths(path) if n > 80]
    assert not long_modules, long_modules
    assert not long_functions, long_functions
    assert len((PACKAGE / "run.py").read_text().splitlines()) <= 300


def test_nothing_points_outside_the_repository():
    pattern = re.compile(r"DESIGN(\.md| §| invariant)|\.\./shared|/work/")
    offenders = []
    root = pathlib.Path(REPO)
    for path in [*root.glob("*.md"), *root.glob("*.toml"), *root.glob("*.sh"), *root.glob(".ci/*")]:
        offenders += [f"{path.name}: {m.group(0)}" for m in pattern.finditer(path.read_text())]
    for folder in ("jaxens", "tests", "configs", "experiments", "benchmarks", "docs"):
        for path in (root / folder).rglob("*"):
            if path.suffix in (".py", ".md") and path.name != "test_architecture.py":
                offenders += [f"{path.relative_to(root)}: {m.group(0)}" for m in pattern.finditer(path.read_text())]
    assert not offenders, offenders
