"""The lock of dependency versions: constraints.txt pins every direct dependency (with what a fresh environment
pulled beside them), each pin inside the open range pyproject.toml allows, and the README lists the same
versions; .ci/run and the README's commands use it."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins() -> dict[str, str]:
    found = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), start=1):
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
            assert match, f"constraints.txt:{number}: {line!r} is not NAME==VERSION"
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [item for group in project["optional-dependencies"].values() for item in group]
    return [Requirement(item) for item in project["dependencies"] + extras]


def test_every_dependency_is_pinned_inside_its_open_range():
    locked = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} (pyproject.toml) has no pin in constraints.txt"
        assert requirement.specifier.contains(locked[name], prereleases=True), \
            f"constraints.txt pins {name}=={locked[name]}, outside pyproject.toml's {requirement}"


def test_the_readme_lists_the_locked_versions_and_both_commands_use_the_lock():
    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| `([A-Za-z0-9_.\-]+)` \| ([A-Za-z0-9_.+\-]+) \|$", readme, flags=re.MULTILINE))
    locked = pins()
    direct = {canonicalize_name(r.name) for r in requirements()}
    assert {canonicalize_name(name) for name in table} == direct
    for name, version in table.items():
        assert locked[canonicalize_name(name)] == version, f"README says {name} {version}, the lock {locked[name]}"
    assert "pip install -e . -c constraints.txt && r1zero train" in readme
    assert 'pip install -e ".[test]" -c constraints.txt && python -m pytest -m "not slow"' in readme
    assert "-c constraints.txt" in (ROOT / ".ci" / "run").read_text()
    assert locked["torch"] == "2.13.0"  # the CPU wheel the machines hold (an unpinned torch pulls CUDA builds)
