"""The import-linter contracts in pyproject.toml (`[tool.importlinter]`) hold, so a
layering mistake fails the suite wherever it runs, not only in `scripts/test`. And
the contracts bite: a copy of the package with one forbidden import breaks them.

`lint-imports` runs as a subprocess (the CLI, as CI runs it) on the working tree's
`src/`. Without import-linter the test skips, except under CI (`CI` set), where the
dev extras install it and a missing tool is a failure."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 60


def lint_imports() -> str:
    """The `lint-imports` of this interpreter's environment (or on PATH)."""
    beside = Path(sys.executable).parent / "lint-imports"
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    if found is not None and importlib.util.find_spec("importlinter") is not None:
        return found
    reason = "import-linter is not installed (pip install -e '.[dev]')"
    if os.environ.get("CI"):
        pytest.fail(f"CI installs the dev extras: {reason}")
    pytest.skip(reason)


def run_contracts(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH: the contracts are checked on this tree's source, whatever copy of
    # flotilla the environment has installed.
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [lint_imports(), "--no-cache", "--no-logo"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_the_layer_contracts_hold() -> None:
    done = run_contracts(ROOT, ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kept, 0 broken." in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract", "chain"),
    [
        (
            "core/units.py",
            "import flotilla.errors",
            "core imports nothing of Flotilla's outside itself",
            "flotilla.core.units -> flotilla.errors",
        ),
        (
            "compute/agents/remote.py",
            "import flotilla.compute.local",
            "backends and providers are independent of each other",
            "flotilla.compute.agents.remote -> flotilla.compute.local",
        ),
        (
            "compute/launch.py",
            "import flotilla.compute.local",
            "compute's shared modules import no backend or provider",
            "flotilla.compute.launch -> flotilla.compute.local",
        ),
        (
            "recipes/fleet.py",
            "import flotilla.compute.sim",
            "control plane layers",
            "flotilla.recipes.fleet -> flotilla.compute.sim",
        ),
        (
            "server/services/runs/jobs.py",
            "import flotilla.server.kinds",
            "server layers: app > routers > kinds > services",
            "flotilla.server.services.runs.jobs -> flotilla.server.kinds",
        ),
        (
            "client/calls.py",
            "import flotilla.server",
            "the SDK and the API models import nothing of the server side",
            "flotilla.client.calls -> flotilla.server",
        ),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str, chain: str
) -> None:
    shutil.copytree(
        ROOT / "src" / "flotilla",
        tmp_path / "src" / "flotilla",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "src" / "flotilla" / module).open("a") as source:
        source.write(f"\n{line}  # the mistake\n")
    done = run_contracts(tmp_path, tmp_path / "src")
    assert done.returncode == 1, done.stdout + done.stderr
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and chain in broken, done.stdout
