"""Run Python code in a fresh process that cannot import this repository, as a Hub user's machine would.

The project is installed in editable mode in the test environment, so `cwd` and `PYTHONPATH` alone do not hide it:
the child installs an import blocker for the project's top-level packages before running the code. Remote code is
still importable, because transformers loads it from the checkpoint folder as `transformers_modules.<...>`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


PROJECT_PACKAGES = ("llama_mtsk", "mtsk_data", "mtsk_convert", "mtsk_train", "train", "tests")

_BLOCKER = f"""
import importlib.abc, sys
class _BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {PROJECT_PACKAGES!r}:
            raise ImportError(f"{{name}} is part of the llama-mtsk repository and must not be importable here")
        return None
sys.meta_path.insert(0, _BlockProject())
"""


def run_isolated(code: str, workdir: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs `code` in a new interpreter with `workdir` as cwd, its own HF module cache and no access to the repo.
    Raises `AssertionError` with the child's output if it fails."""
    script = Path(workdir) / "isolated_script.py"
    script.write_text(_BLOCKER + textwrap.dedent(code))
    environment = {
        key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    environment.update(
        HF_MODULES_CACHE=str(Path(workdir) / "hf_modules"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        OMP_NUM_THREADS="1",
    )
    completed = subprocess.run(
        [sys.executable, str(script)],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if completed.returncode != 0:
        raise AssertionError(
            f"isolated process failed ({completed.returncode})\nstdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
        )
    return completed
