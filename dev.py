#!/usr/bin/env python3
"""Set up and run the project with nothing but Python.

    python3 dev.py demo          # watch a worker get SIGKILLed and its messages recovered
    python3 dev.py test          # run the whole test suite (in parallel)
    python3 dev.py test-examples # each example application's own tests (examples/*, pytest plugin)
    python3 dev.py lint          # ruff and mypy
    python3 dev.py test-newest   # the suite against the newest releases of dramatiq, redis-py, dramatiq-abort
    python3 dev.py docs          # build the documentation site into site/ (strict)
    python3 dev.py build         # build the sdist and the wheel into dist/, check them
    python3 dev.py check-wheel   # install the wheel in a fresh virtualenv and run it
    python3 dev.py test-sdist    # the sdist's core tests, installed from it, lowest versions, no dramatiq-abort
    python3 dev.py lock          # resolve the newest releases and pin them in constraints/pinned.txt

Every environment is pinned by ``constraints/pinned.txt`` (the lint and test
toolchain and the dependencies alike), so that an upstream release cannot
turn main red; ``test-newest`` lets dramatiq, redis-py and dramatiq-abort
float to their newest releases, and ``test-sdist`` pins them to the lowest
that setup.cfg accepts.  The first run creates ``.venv`` and installs the
package with its dev extra into it; later runs reuse it until setup.cfg,
pyproject.toml or the constraints change (``test-newest`` uses
``.venv-newest``, re-resolved each day; ``docs`` uses ``.venv-docs``).
``check-wheel`` and ``test-sdist`` build dist/ first when it is missing, and
use throwaway virtualenvs.  Extra arguments go to the command
(``python3 dev.py test -k redis``; ``-n 0`` runs the suite in one process).
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
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
BIN_DIR = "Scripts" if os.name == "nt" else "bin"
DIST = ROOT / "dist"
#: Exact versions of everything the environments install (``python3 dev.py lock`` writes it).
CONSTRAINTS = ROOT / "constraints" / "pinned.txt"
#: The dependencies whose newest releases ``test-newest`` tests; the toolchain stays pinned.
FLOATING = ("dramatiq", "redis", "dramatiq-abort", "hiredis", "pika")
#: The lowest releases setup.cfg accepts, which ``test-sdist`` tests.
LOWEST = {"dramatiq": "1.14.0", "redis": "4.5.0"}
#: The test modules the sdist run covers: what only it proves is that the package, installed from its
#: sdist with the lowest dependencies and without dramatiq-abort, tracks, recovers and reports.
SDIST_TESTS = (
    "tests/test_settings_and_keys.py",
    "tests/test_recovery_redis.py",
    "tests/test_recovery_rabbitmq.py",
    "tests/test_recovery_stub.py",
    "tests/test_recovery_edges.py",
    "tests/test_recovery_race.py",
    "tests/test_fencing.py",
    "tests/test_zombies.py",
    "tests/test_outage.py",
    "tests/test_unique.py",
    "tests/test_unique_recovery.py",
    "tests/test_poison.py",
    "tests/test_policy_and_identity.py",
    "tests/test_corrupt_records.py",
    "tests/test_docs.py",
)
#: The test modules ``test-newest`` runs against newer releases than the pinned ones (``--all``: the whole
#: suite): those that lean on what dramatiq, redis-py, pika and dramatiq-abort do inside (the hooks and
#: threads, RedisBroker's keys and Lua, RabbitMQ's redelivery, abort, redis-py's clients and pub/sub), so
#: that a new release's break shows within CI's ten minutes.
NEWEST_TESTS = (
    "tests/test_settings_and_keys.py",
    "tests/test_recovery_redis.py",
    "tests/test_recovery_rabbitmq.py",
    "tests/test_rabbitmq_channels.py",
    "tests/test_recovery_stub.py",
    "tests/test_abort_and_zombies.py",
    "tests/test_unique.py",
    "tests/test_presence.py",
    "tests/test_redis_deployments.py",
    "tests/test_pytest_plugin.py",
)
#: Test processes (pytest-xdist) of ``test``: the tests mostly wait on worker processes.
TEST_PROCESSES = os.environ.get("DEV_TEST_PROCESSES", "8")
#: A line of the build's output that warns: "warning: ...", "WARNING ...", "SetuptoolsDeprecationWarning: ...".
BUILD_WARNING = re.compile(r"(?i:\bwarning\b)|\w+Warning\b")
#: Exits non-zero when dramatiq-abort can be imported.
NO_ABORT_CHECK = "import importlib.util, sys; sys.exit(importlib.util.find_spec('dramatiq_abort') is not None)"
COMMANDS = (
    "demo",
    "test",
    "test-examples",
    "lint",
    "test-newest",
    "docs",
    "build",
    "check-wheel",
    "test-sdist",
    "lock",
)


def _name(requirement: str) -> str:
    """The normalised project name of a ``name==version`` line."""
    return re.sub(r"[-_.]+", "-", re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0]).lower()


def pinned_versions() -> dict[str, str]:
    """Project name -> version, from ``constraints/pinned.txt``."""
    versions = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            versions[_name(line)] = line.partition("==")[2].strip()
    return versions


def constraints(overrides: dict[str, str | None]) -> str:
    """The pinned constraints, with some projects pinned elsewhere (a version) or let float (None)."""
    lines = ["%s==%s" % (name, version) for name, version in pinned_versions().items() if name not in overrides]
    lines += ["%s==%s" % (name, version) for name, version in overrides.items() if version is not None]
    return "\n".join(lines) + "\n"


def _fingerprint(*extra: str) -> str:
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml", "constraints/pinned.txt"):
        digest.update((ROOT / name).read_bytes())
    for value in extra:
        digest.update(value.encode())
    return digest.hexdigest()[:16]


def pip_install(python: Path, requirements: Sequence[str], overrides: dict[str, str | None], cwd: Path) -> None:
    """``pip install`` under the pinned constraints (with ``overrides``): floating projects are upgraded."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="constraints-", delete=False) as f:
        f.write(constraints(overrides))
    floating = [name for name, version in overrides.items() if version is None]
    try:
        command = [str(python), "-m", "pip", "install", "--quiet", "-c", f.name, *requirements]
        if floating:
            command += ["--upgrade", *floating]
        subprocess.run(command, cwd=cwd, check=True)
    finally:
        os.unlink(f.name)


def ensure_environment(venv_dir: Path, extras: str, overrides: dict[str, str | None] | None = None) -> Path:
    """Create a virtualenv and install the package into it, if not done for this configuration.

    ``overrides``: projects pinned elsewhere than in constraints/pinned.txt (a version) or let float to
    their newest release (None); an environment with floating projects is resolved again each day."""
    overrides = overrides or {}
    python = venv_dir / BIN_DIR / "python"
    day = time.strftime("%Y-%m-%d") if None in overrides.values() else ""
    stamp = venv_dir / (".installed-" + _fingerprint(extras, repr(sorted(overrides.items())), day))
    if not python.exists():
        print("Creating %s ..." % venv_dir, flush=True)
        venv.EnvBuilder(with_pip=True).create(venv_dir)
    if not stamp.exists():
        print("Installing dramatiq-tracker[%s] into %s ..." % (extras, venv_dir.name), flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        pip_install(python, ["-e", ".[%s]" % extras], overrides, ROOT)
        for old in venv_dir.glob(".installed-*"):
            old.unlink()
        stamp.touch()
    return python


def installed_versions(python: Path, names: Sequence[str]) -> dict[str, str]:
    """Project name -> version installed in an environment (absent ones left out)."""
    script = (
        "import importlib.metadata as m, sys\n"
        "for name in sys.argv[1:]:\n"
        "    try: print(name, m.version(name))\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    listed = subprocess.run([str(python), "-c", script, *names], capture_output=True, text=True, check=True)
    return dict(line.split() for line in listed.stdout.splitlines())


def pytest_command(python: Path, extra: Sequence[str]) -> list[str]:
    """pytest, in parallel (an idle process takes over the queued tests of a busy one): ``-n`` given in
    ``extra`` wins (it comes last)."""
    return [str(python), "-m", "pytest", "-n", TEST_PROCESSES, "--dist", "worksteal", *extra]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__)
        return 2
    command, extra = argv[0], argv[1:]
    if command == "lock":
        return lock()
    if command == "test-newest":
        return test_newest(extra)
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
        return subprocess.call(pytest_command(python, extra), cwd=ROOT)
    if command == "test-examples":
        return test_examples(python, extra)
    if command == "build":
        return build(python)
    for step in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        code = subprocess.call([str(python), "-m", *step, *extra], cwd=ROOT)
        if code:
            return code
    return 0


def test_examples(python: Path, extra: list[str]) -> int:
    """Each example's own suite, one pytest session per example: each is a project of its own (its own
    pytest.ini, which the root suite does not collect).  An example's ``requirements.txt`` (Django,
    Flask) is installed first, under the pinned constraints, when it changed."""
    examples = sorted(path.parent for path in (ROOT / "examples").glob("*/pytest.ini"))
    requirements = [example / "requirements.txt" for example in examples if (example / "requirements.txt").exists()]
    stamp = python.parent.parent / (".examples-" + _fingerprint(*(r.read_text() for r in requirements)))
    if requirements and not stamp.exists():
        print("Installing the examples' requirements ...", flush=True)
        pip_install(python, [argument for r in requirements for argument in ("-r", str(r))], {}, ROOT)
        for old in stamp.parent.glob(".examples-*"):
            old.unlink()
        stamp.touch()
    failed = []
    for example in examples:
        print("::: %s" % example.relative_to(ROOT), flush=True)
        if subprocess.call([str(python), "-m", "pytest", "-p", "no:cacheprovider", str(example), *extra], cwd=ROOT):
            failed.append(example.name)
    if failed:
        print("Failed: %s." % ", ".join(failed))
    return 1 if failed else 0


def test_newest(extra: list[str]) -> int:
    """The tests of ``NEWEST_TESTS`` (the whole suite with ``--all``) against the newest releases of
    the floating dependencies, the toolchain pinned.

    When they resolve to the pinned versions, this run would repeat ``test``: it says so and stops,
    unless ``--always`` is given."""
    always, whole = "--always" in extra, "--all" in extra
    extra = [argument for argument in extra if argument not in ("--always", "--all")]
    python = ensure_environment(ROOT / ".venv-newest", "dev", dict.fromkeys(FLOATING))
    newest = installed_versions(python, FLOATING)
    pinned = pinned_versions()
    changed = {name: version for name, version in newest.items() if pinned.get(_name(name)) != version}
    print("Newest releases: %s." % ", ".join("%s %s" % item for item in sorted(newest.items())), flush=True)
    if not changed and not always:
        print("They are the pinned versions: `python3 dev.py test` tests them (--always runs the suite again).")
        return 0
    if changed:
        print("Newer than pinned: %s." % ", ".join(sorted(changed)), flush=True)
    return subprocess.call([*pytest_command(python, extra), *(() if whole else NEWEST_TESTS)], cwd=ROOT)


def lock() -> int:
    """Resolve the dev and docs extras and the examples' requirements afresh in a throwaway virtualenv
    and pin every release in constraints/pinned.txt."""
    with tempfile.TemporaryDirectory(prefix="dramatiq-tracker-lock-") as temporary:
        python = Path(temporary) / "venv" / BIN_DIR / "python"
        venv.EnvBuilder(with_pip=True).create(python.parent.parent)
        print("Resolving the newest releases of the dev and docs extras and the examples' requirements ...", flush=True)
        examples = [argument for r in sorted(ROOT.glob("examples/*/requirements.txt")) for argument in ("-r", str(r))]
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", ".[dev,docs]", *examples], cwd=ROOT, check=True)
        frozen = subprocess.run(
            [str(python), "-m", "pip", "freeze", "--exclude", "dramatiq-tracker"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    pins = sorted((line for line in frozen.splitlines() if "==" in line), key=_name)
    header = (
        "# Every release the project's environments install, pinned: `python3 dev.py lock` rewrites\n"
        "# this file from a fresh resolution of the dev and docs extras and the examples' requirements.\n"
        "# `python3 dev.py test-newest` lets %s float to their newest releases.\n" % ", ".join(FLOATING)
    )
    CONSTRAINTS.parent.mkdir(exist_ok=True)
    CONSTRAINTS.write_text(header + "\n".join(pins) + "\n", encoding="utf-8")
    print("Wrote %d pins to %s." % (len(pins), CONSTRAINTS.relative_to(ROOT)))
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


def _fresh_environment(directory: Path, requirement: str, overrides: dict[str, str | None]) -> Path:
    """A new virtualenv in ``directory`` with only ``requirement`` installed (not editable), under the
    pinned constraints with ``overrides`` (see :func:`ensure_environment`)."""
    venv.EnvBuilder(with_pip=True).create(directory)
    python = directory / BIN_DIR / "python"
    print("Installing %s into a fresh virtualenv ..." % requirement, flush=True)
    pip_install(python, [requirement], overrides, directory)
    return python


def _run(step: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    print("$ %s" % " ".join(step), flush=True)
    started = time.monotonic()
    subprocess.run(step, cwd=cwd, env=env, check=True)
    print("  (%.1f s)" % (time.monotonic() - started), flush=True)


def check_wheel(extra: list[str]) -> int:
    """Install the wheel, with its ``embedded`` extra, in a fresh virtualenv outside the checkout, with
    the newest releases of its dependencies (what a user installs today), and run it: the import, the
    console script and the demo (extra arguments go to the demo)."""
    wheel = _artifact("*.whl")
    with tempfile.TemporaryDirectory(prefix="dramatiq-tracker-wheel-") as temporary:
        workdir = Path(temporary)
        python = _fresh_environment(workdir / "venv", "%s[embedded]" % wheel, dict.fromkeys(FLOATING))
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
    extra and the lowest releases of dramatiq and redis-py that setup.cfg accepts) in a fresh
    virtualenv, and run the sdist's own core tests (``SDIST_TESTS``; arguments go to pytest) against
    the installed package: the unpacked source package is removed first, so that nothing but the
    installed one can be imported.  test-core leaves out dramatiq-abort (and the exporter's client):
    this run proves that the package works without them; the main suite runs the tests that need them."""
    sdist = _artifact("*.tar.gz")
    with tempfile.TemporaryDirectory(prefix="dramatiq-tracker-sdist-") as temporary:
        workdir = Path(temporary)
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
                archive.extractall(workdir, filter="data")
            else:
                archive.extractall(workdir)  # our own sdist
        (tree,) = [path for path in workdir.iterdir() if path.is_dir()]
        python = _fresh_environment(workdir / "venv", "%s[test-core]" % sdist, dict(LOWEST))
        shutil.rmtree(tree / "dramatiq_tracker")
        try:
            installed = "import dramatiq_tracker; print(dramatiq_tracker.__file__)"
            _run([str(python), "-c", installed], cwd=tree)
            _run([str(python), "-c", NO_ABORT_CHECK], cwd=tree)
            _run(
                [str(python), "-c", "import dramatiq, redis; print(dramatiq.__version__, redis.__version__)"], cwd=tree
            )
            _run([*pytest_command(python, ["-p", "no:cacheprovider", *extra]), *SDIST_TESTS], cwd=tree)
        except subprocess.CalledProcessError as e:
            print("test-sdist failed: %s" % e)
            return e.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
