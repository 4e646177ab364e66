#!/usr/bin/env python3
"""Set up and run the project with nothing but Python.

    python3 dev.py demo                  # watch a worker get SIGKILLed and its messages recovered
    python3 dev.py test                  # run the whole test suite
    python3 dev.py lint                  # ruff and mypy
    python3 dev.py test-without-abort    # the suite where dramatiq-abort is not installed

The first run creates ``.venv`` and installs the package with its test and
dev extras into it; later runs reuse it until setup.cfg or pyproject.toml
change (``test-without-abort`` uses ``.venv-noabort``, without dramatiq-abort).
Extra arguments go to the command (``python3 dev.py test -k redis``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BIN_DIR = "Scripts" if os.name == "nt" else "bin"


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def ensure_environment(venv_dir: Path, extras: str) -> Path:
    """Create a virtualenv and install the package into it, if not done for this configuration."""
    python = venv_dir / BIN_DIR / "python"
    stamp = venv_dir / (".installed-" + _fingerprint())
    if not python.exists():
        print("Creating %s ..." % venv_dir, flush=True)
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    if not stamp.exists():
        print("Installing dramatiq-tracker[%s] into %s ..." % (extras, venv_dir.name), flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", ".[%s]" % extras], cwd=ROOT, check=True)
        for old in venv_dir.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "lint", "test-without-abort"):
        print(__doc__)
        return 2
    command, extra = argv[0], argv[1:]
    if command == "test-without-abort":
        python = ensure_environment(ROOT / ".venv-noabort", "test-core")
        check = "import importlib.util, sys; sys.exit(importlib.util.find_spec('dramatiq_abort') is not None)"
        if subprocess.call([str(python), "-c", check]):
            print("dramatiq-abort is installed in .venv-noabort; remove it to run this command.")
            return 1
        return subprocess.call([str(python), "-m", "pytest", *extra], cwd=ROOT)
    venv_dir = Path(os.environ.get("DEV_VENV", ROOT / ".venv"))
    python = ensure_environment(venv_dir, "dev")
    if command == "demo":
        return subprocess.call([str(venv_dir / BIN_DIR / "dramatiq-tracker"), "demo", *extra], cwd=ROOT)
    if command == "test":
        return subprocess.call([str(python), "-m", "pytest", *extra], cwd=ROOT)
    for step in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        code = subprocess.call([str(python), "-m", *step, *extra], cwd=ROOT)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
