#!/usr/bin/env python3
"""Set up and run the project with nothing but Python.

    python3 dev.py demo    # watch a worker get SIGKILLed and its messages recovered
    python3 dev.py test    # run the whole test suite
    python3 dev.py lint    # ruff and mypy

The first run creates ``.venv`` and installs the package with its test and
dev extras into it; later runs reuse it until setup.cfg or pyproject.toml
change.  Extra arguments go to the command (``python3 dev.py test -k redis``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("DEV_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _fingerprint() -> str:
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def ensure_environment() -> Path:
    """Create the virtualenv and install the package into it, if not done for this configuration."""
    python = BIN / "python"
    stamp = VENV / (".installed-" + _fingerprint())
    if not python.exists():
        print("Creating %s ..." % VENV, flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not stamp.exists():
        print("Installing dramatiq-tracker with its test and dev extras ...", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-e", ".[dev]"], cwd=ROOT, check=True)
        for old in VENV.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return python


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "lint"):
        print(__doc__)
        return 2
    command, extra = argv[0], argv[1:]
    python = ensure_environment()
    if command == "demo":
        return subprocess.call([str(BIN / "dramatiq-tracker"), "demo", *extra], cwd=ROOT)
    if command == "test":
        return subprocess.call([str(python), "-m", "pytest", *extra], cwd=ROOT)
    for step in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        code = subprocess.call([str(python), "-m", *step, *extra], cwd=ROOT)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
