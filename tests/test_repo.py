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


def _flag_spelling_usage_errors(path: Path) -> list[str]:
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "UsageError"):
            continue
        texts = [c.value for c in ast.walk(node.args[0]) if isinstance(c, ast.Constant)]
        if any(isinstance(t, str) and re.search(r"(?<![\w-])--[a-z]", t) for t in texts):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_library_usage_errors_name_parameters_not_flags():
    # The library does not know which command serves it: UsageError(option=...) names the
    # parameter, and the CLI spells it as a flag (errors.UsageError.for_cli).
    # training/ still advises flags in places (its own rewording is a separate change).
    library = [
        p for p in (ROOT / "deblurcli").rglob("*.py") if not {"cli", "training"} & set(p.parts)
    ]
    offenders = [hit for path in sorted(library) for hit in _flag_spelling_usage_errors(path)]
    assert offenders == []
