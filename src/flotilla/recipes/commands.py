"""Saturn's list commands and `extra_packages`, turned into shell text. Pure: no I/O.

Called by `recipes/job.py` (`JobSpec.argv_or_shell`, for the task's command) and by
the services that create runs (`services/runs/jobs.py`, `services/serving/deployments.py`), which
put `install_script` in front of the run's start script.

A list `command` means two things. Flotilla's own API and `flo` send a JSON list and
mean argv: the program and its arguments, no shell (`command_list: argv`, the
default). saturn-client sends a list JSON-encoded as a string and means Saturn's
semantics: commands run one after another (`command_list: sequence`), as `sc split`
writes them (`["sc batch 0.json", "sc batch 1.json", ...]`). With `scale` tasks, task
RANK runs commands RANK, RANK+scale, ... in order, so each runs exactly once; a
failing command stops its task with its exit status.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

PACKAGE_MANAGERS = ("apt", "conda", "pip")
# Saturn's flag for conda installs; the only other key `extra_packages` may hold.
USE_MAMBA = "use_mamba"


def sequence_script(commands: Sequence[str], scale: int = 1) -> str:
    """Shell text running `commands` in order, split across `scale` ranks by
    `$SATURN_JOB_RANK`; it stops at the first one that fails."""
    if scale <= 1:
        return _chain(commands)
    cases = [
        f"  {rank}) {_chain(commands[rank::scale]) if commands[rank::scale] else 'true'} ;;"
        for rank in range(scale)
    ]
    return 'case "${SATURN_JOB_RANK:-0}" in\n' + "\n".join(cases) + "\nesac"


def _chain(commands: Sequence[str]) -> str:
    # A brace group per command keeps its own `;` and `&&` inside it.
    return " && ".join(f"{{ {command}\n}}" for command in commands)


def package_lists(extra: Mapping[str, object]) -> dict[str, list[str]]:
    """`extra_packages` as lists of package specs per manager. Each manager's value is
    Saturn's string ("numpy pandas>=2"), a list, or `{install: ...}`; anything else
    raises ValueError naming the key."""
    unknown = [k for k in extra if k not in (*PACKAGE_MANAGERS, USE_MAMBA)]
    if unknown:
        expected = ", ".join((*PACKAGE_MANAGERS, USE_MAMBA))
        raise ValueError(f"unknown key {unknown[0]!r}; expected one of: {expected}")
    out: dict[str, list[str]] = {}
    for manager in PACKAGE_MANAGERS:
        value = extra.get(manager)
        if isinstance(value, dict):
            value = value.get("install")
        if value is None or value == "":
            continue
        if isinstance(value, str):
            packages = shlex.split(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            packages = [p for v in value for p in shlex.split(v)]
        else:
            raise ValueError(f"{manager}: give packages as a string or a list of strings")
        if any(p.startswith("-") for p in packages):
            raise ValueError(f"{manager}: package names must not start with '-'")
        if packages:
            out[manager] = packages
    return out


def install_script(extra: Mapping[str, object] | None) -> str | None:
    """Shell text installing `extra_packages` (apt, then conda, then pip, as Saturn
    does), each failing the task's setup with a line saying what is missing; None
    when there is nothing to install."""
    lists = package_lists(extra or {})
    if not lists:
        return None
    lines = ["# extra_packages (installed by Flotilla before the start script)"]
    if apt := lists.get("apt"):
        names = " ".join(shlex.quote(p) for p in apt)
        lines += [
            _require("apt-get", "apt"),
            'SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"',
            f"$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get "
            f"install -y -q {names}",
        ]
    if conda := lists.get("conda"):
        tool = "mamba" if (extra or {}).get(USE_MAMBA) else "conda"
        lines += [_require(tool, "conda"), f"{tool} install -y {_quoted(conda)}"]
    if pip := lists.get("pip"):
        lines += [
            'PY="$(command -v python3 || command -v python)"',
            '[ -n "$PY" ] || { echo "extra_packages.pip: no python3 on PATH" >&2; exit 1; }',
            f'"$PY" -m pip install {_quoted(pip)}',
        ]
    return "set -e\n" + "\n".join(lines) + "\nset +e\n"


def _require(program: str, key: str) -> str:
    return (
        f"command -v {program} >/dev/null || "
        f'{{ echo "extra_packages.{key}: no {program} on PATH here" >&2; exit 1; }}'
    )


def _quoted(packages: list[str]) -> str:
    return " ".join(shlex.quote(p) for p in packages)


def with_packages(start_script: str | None, extra: Mapping[str, object] | None) -> str | None:
    """The start script a run gets: the package installs, then the recipe's own."""
    install = install_script(extra)
    if install is None:
        return start_script
    return install + (start_script or "")
