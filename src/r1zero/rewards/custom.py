"""Your own rewards: `path/to/file.py:function` or `package.module:function`, named in reward_weights.

    # my_rewards.py
    def brevity(completion: str, example) -> float:
        '''1.0 for an empty completion, falling linearly to 0.0 at 400 characters.'''
        return max(0.0, 1.0 - len(completion) / 400)

    r1zero train --reward-weights accuracy=1,format=0.5,my_rewards.py:brevity=0.2

The signature is (completion: str, example: r1zero.example.Example) -> float: completion is the model's text
after the prompt; example has .prompt, .answer and .metadata (every other field of the data row). It may return
a (float, reason) pair instead, and the reason shows in `r1zero score`. A reward that raises on a sample scores
it 0 and is counted in reward_health/<name>/exceptions; one that raises on every sample of a step stops training
with an error naming it. It runs in the trainer's process unless it sets `function.needs_isolation = True`, which
sends it to the scoring pool (worker processes with a hard time limit per sample) like the math and code rewards.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from r1zero.example import Example


def is_custom_reward_name(name: str) -> bool:
    """True for "file.py:function" and "module:function" names."""
    return ":" in name


def load_reward_function(spec: str):
    """The function named by `spec`, "path/to/file.py:function" (relative to the current directory) or
    "package.module:function" (importable); ValueError saying what is wrong otherwise. A function from a file is
    wrapped in a FileRewardFunction so that it can be sent to scoring worker processes."""
    location, _, name = spec.rpartition(":")
    if not location or not name.isidentifier():
        raise ValueError(f"custom reward {spec!r}: expected path/to/file.py:function or package.module:function")
    if location.endswith(".py") or "/" in location or "\\" in location:
        function = FileRewardFunction(location, name)
        function.load()
        return function
    try:
        module = importlib.import_module(location)
    except ImportError as error:
        raise ValueError(f"custom reward {spec!r}: cannot import module {location!r} ({error}); give an importable "
                         f"module or a path to a .py file") from None
    return _get_callable(module, name, spec)


class FileRewardFunction:
    """A reward function defined in a .py file, loaded on first use in each process (so it pickles by path)."""

    def __init__(self, path: str, name: str):
        self.path = str(Path(path).resolve())
        self.name = name
        self.spec = f"{path}:{name}"
        self._function = None

    def load(self):
        if self._function is None:
            path = Path(self.path)
            if not path.is_file():
                raise ValueError(f"custom reward {self.spec!r}: file not found: {path} (paths are relative to the "
                                 f"current directory)")
            digest = hashlib.sha256(self.path.encode()).hexdigest()[:12]
            module_name = f"r1zero_custom_reward_{path.stem}_{digest}"
            module = sys.modules.get(module_name)
            if module is None:
                specification = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(specification)
                try:
                    specification.loader.exec_module(module)
                except Exception as error:
                    raise ValueError(f"custom reward {self.spec!r}: loading {path} raised "
                                     f"{type(error).__name__}: {error}") from None
                sys.modules[module_name] = module
            self._function = _get_callable(module, self.name, self.spec)
        return self._function

    @property
    def needs_isolation(self) -> bool:
        return bool(getattr(self.load(), "needs_isolation", False))

    def __call__(self, completion: str, example: Example):
        return self.load()(completion, example)

    def __getstate__(self):
        return {"path": self.path, "name": self.name, "spec": self.spec, "_function": None}

    def __repr__(self) -> str:
        return f"FileRewardFunction({self.spec!r})"


def _get_callable(module, name: str, spec: str):
    function = getattr(module, name, None)
    if not callable(function):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"custom reward {spec!r}: no function {name!r} in {module.__name__}; callables there: "
                         f"{', '.join(found) or 'none'}")
    return function
