"""The checkpoint package imports one way: each module only those before it in ORDER, and the
.dcp module (which imports torch.distributed.checkpoint, seconds) never at another's module level."""
import ast
import os

ORDER = ("format", "single", "run_files", "sharded", "load", "__init__")
PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoint")  # not imported: a
# cycle would fail the import before this test could name it


def imports(name: str) -> list:
    """(module imported, at module level?) for each import in the package's module name, wherever it sits."""
    with open(os.path.join(PACKAGE, name + ".py")) as f:
        tree = ast.parse(f.read())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not node.level, f"{name}: absolute imports only"
            # `from checkpoint import single` imports checkpoint.single
            found += [(f"checkpoint.{a.name}" if node.module == "checkpoint" else node.module, id(node) in top)
                      for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
    return found


def test_modules_import_only_those_before_them():
    assert sorted(ORDER) == sorted(f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py"))
    for name in ORDER:
        for module, at_top in imports(name):
            if module.startswith("checkpoint."):
                dep = module.split(".")[1]
                assert dep in ORDER and ORDER.index(dep) < ORDER.index(name), f"{name} imports {dep}"
                assert dep != "sharded" or not at_top, f"{name} imports checkpoint.sharded at module level"
            if module.startswith("torch.distributed.checkpoint"):
                assert name == "sharded", f"{name} imports {module}"
