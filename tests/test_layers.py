"""The layers a reader sees: engine <- attacks <- runs <- cli, read off the import statements."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = sorted(p for p in (ROOT / "sdo_adv").glob("*.py"))
LAYERS = {  # folder -> the sdo_adv subpackages it may not import
    "sdo_adv": ("sdo_adv.attacks", "sdo_adv.runs", "sdo_adv.cli"),
    "attacks": ("sdo_adv.runs", "sdo_adv.cli"),
    "sdo_adv/runs": ("sdo_adv.cli",),
}
MAX_LINES = 400


def imported(path: Path) -> set[str]:
    """Absolute names of the sdo_adv modules ``path`` imports (relative imports resolved)."""
    package = {"attacks": "sdo_adv.attacks", "cli": "sdo_adv.cli"}.get(path.parent.name, None)
    if package is None:
        package = ".".join(path.parent.relative_to(ROOT).parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return {n for n in names if n.startswith("sdo_adv")}


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_no_layer_imports_a_layer_above_it(folder):
    assert files(folder)
    for path in files(folder):
        bad = sorted(n for n in imported(path) for above in LAYERS[folder] if n == above or n.startswith(above + "."))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_rule_catches_an_upward_import(tmp_path):
    engine = tmp_path / "sdo_adv"
    engine.mkdir()
    (engine / "bad.py").write_text("from .runs import AttackRun\nimport sdo_adv.cli.main\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert imported(engine / "bad.py") >= {"sdo_adv.runs", "sdo_adv.cli.main"}
    finally:
        ROOT = saved


@pytest.mark.parametrize("folder", ["sdo_adv", "sdo_adv/runs", "attacks", "cli"])
def test_modules_stay_small(folder):
    long = {p.name: n for p in files(folder) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines in {folder}: {long}"
