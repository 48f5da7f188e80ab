"""The README's commands and CI stay in step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()


def test_manifest_is_shipped_inside_the_package():
    linked = ROOT / "deblurcli" / "weights_manifest.toml"
    assert linked.resolve() == (ROOT / "weights_manifest.toml").resolve()


def _deblur_error_classes(trees: list) -> set[str]:
    """Names of DeblurError and every class that derives from it, in any module."""
    import ast

    bases = {
        node.name: {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }
    found = {"DeblurError"}
    while grown := {name for name, parents in bases.items() if parents & found} - found:
        found |= grown
    return found


_WRAPPERS = {"extended", "Note"}  # DeblurError.extended, errors.Note (logged warnings)


def _flag_spelling_errors(path: Path, tree, classes: set[str], root: Path = ROOT) -> list[str]:
    """``path:line`` of each DeblurError(...), ``exc.extended(...)`` or logged ``Note(...)``
    whose message text spells a flag."""
    import ast

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if getattr(node.func, "id", getattr(node.func, "attr", "")) not in {*classes, *_WRAPPERS}:
            continue
        parts = [*node.args, *(k.value for k in node.keywords)]
        texts = [c.value for part in parts for c in ast.walk(part) if isinstance(c, ast.Constant)]
        if any(isinstance(t, str) and re.search(r"(?<![\w-])--[a-z]", t) for t in texts):
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def _library_flag_spellings() -> list[str]:
    import ast

    library = sorted(p for p in (ROOT / "deblurcli").rglob("*.py") if "cli" not in p.parts)
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in library}
    classes = _deblur_error_classes(list(trees.values()))
    return [
        hit for path, tree in trees.items() for hit in _flag_spelling_errors(path, tree, classes)
    ]


def test_library_errors_name_parameters_not_flags():
    # The library does not know which command serves it: an error names parameters
    # (option=..., mentions=("init",) with "{init}" in the message) and the CLI spells them
    # as flags (errors.DeblurError.for_cli). Every DeblurError subclass, training/ included.
    assert _library_flag_spellings() == []


def test_flag_spelling_check_catches_a_flag_put_back(tmp_path):
    # The check above must be able to fail: a library module that raises a DeblurError
    # subclass spelling a flag is reported.
    import ast

    module = tmp_path / "deblurcli" / "training" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "from deblurcli.errors import TrainingDivergedError\n"
        "def f(lr):\n"
        "    raise TrainingDivergedError(f'loss is NaN; try a lower --lr than {lr}')\n"
        "def g(exc):\n"
        "    raise exc.extended(after='; try --precision fp32')\n"
        "def h(log):\n"
        "    log.warning(Note('%s: --degrade uses sharp images', mentions=()), 'x')\n",
        encoding="utf-8",
    )
    errors_tree = ast.parse((ROOT / "deblurcli" / "errors.py").read_text(encoding="utf-8"))
    classes = _deblur_error_classes([errors_tree])
    assert "TrainingDivergedError" in classes and "UnknownModelError" in classes
    tree = ast.parse(module.read_text(encoding="utf-8"))
    assert _flag_spelling_errors(module, tree, classes, tmp_path) == [
        f"deblurcli/training/bad.py:{line}" for line in (3, 5, 7)
    ]
