"""The arrows of docs/architecture.md hold: cli -> ceremony -> service/backup/repository ->
signing -> keystore -> secrets/config -> keys/pkcs8/fsutil/hashchain -> canonical -> errors,
and no import cycles.

Read from the source with `ast` (imports inside functions too; those only for type checking
aside), so a new upward import fails here, not in a review."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hsmsign"

# A part may import the parts of lower layers only.
LAYERS = [
    {"errors", "hsmsign", "data"},  # "hsmsign": the package itself (__version__); data: files
    {"canonical"},
    {"keys", "pkcs8", "fsutil", "hashchain"},
    {"config", "secrets"},
    {"keystore"},
    {"signing"},
    {"repository", "backup", "service"},
    {"ceremony"},  # a ceremony makes a repository and a backup
    {"cli"},
    {"__main__"},
]
LAYER = {part: n for n, parts in enumerate(LAYERS) for part in parts}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The hsmsign modules `path` imports (`from pkg import sub` names the submodule)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "hsmsign")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "hsmsign":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return out


def part(module: str) -> str:
    names = module.split(".")
    return names[1] if len(names) > 1 else "hsmsign"


def test_every_part_has_a_layer():
    missing = {part(m) for m in modules()} - set(LAYER)
    assert not missing, f"add {sorted(missing)} to LAYERS (and to docs/architecture.md)"


def upward_imports(known: dict[str, Path]) -> list[str]:
    found = []
    for name, path in known.items():
        for target in imports(path, known):
            a, b = part(name), part(target)
            if a != b and LAYER[b] >= LAYER[a]:
                found.append(f"{name} imports {target}")
    return sorted(found)


def cycles(known: dict[str, Path]) -> list[str]:
    graph = {name: imports(path, known) & set(known) for name, path in known.items()}
    # A package's __init__ re-exporting its modules is not a cycle with them.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                found.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


def test_imports_run_one_way():
    upward = upward_imports(modules())
    assert not upward, "imports against the arrows:\n" + "\n".join(upward)


def test_no_import_cycles():
    found = cycles(modules())
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checks themselves can fail: a key store that imports the signing layer (even
    inside a function), and two modules that import each other."""
    store = tmp_path / "store.py"
    store.write_text("def signer():\n    from hsmsign.signing import SigningService\n")
    known = {**modules(), "hsmsign.keystore.upward": store}
    assert upward_imports(known) == ["hsmsign.keystore.upward imports hsmsign.signing"]
    (tmp_path / "a.py").write_text("from hsmsign.keys import b\n")
    (tmp_path / "b.py").write_text("import hsmsign.keys.a\n")
    known = {**modules(), "hsmsign.keys.a": tmp_path / "a.py", "hsmsign.keys.b": tmp_path / "b.py"}
    assert cycles(known) == ["hsmsign.keys.a -> hsmsign.keys.b -> hsmsign.keys.a"]
