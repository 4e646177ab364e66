"""Every ```python sample of README.md and docs/*.md runs, against a real Redis.

Each sample is one test, named after its file and line (``docs/guide.md:14``); a traceback points at
the line of the page.  It runs in a namespace of its own, which holds ``dramatiq``, ``redis_client``
(a client of the test Redis) and, by default, ``broker``: a RedisBroker on a namespace of the test's own,
made the global broker, with a TrackerMiddleware added (``tracker``).  ``TrackerMiddleware()`` built by a
sample uses the test's own tracker namespace too.  Everything is closed and every key the sample wrote is
deleted after it.

An HTML comment on the line before a sample's fence changes that; it is invisible on GitHub, PyPI and
the site.  Values are double-quoted; hidden code uses single quotes:

``<!-- test: setup=broker -->``
  ``broker`` has no tracker yet: the sample adds one.
``<!-- test: setup=none -->``
  No ``broker``: the sample makes its own, which is closed after it.
``<!-- test: before="code" then="code" -->``
  Code run before / after the sample, in its namespace: it gives a sample what its page took from an
  earlier sample, or exercises what the sample declared.
``<!-- test: abortable -->``
  ``broker`` also has dramatiq-abort's ``Abortable`` (on the test's namespace); skipped without dramatiq-abort.
``<!-- test: worker -->``
  After the sample (and ``then``), a Dramatiq worker processes the broker's queues until they are empty.
``<!-- test: xfail="reason" raises=Error -->``
  The sample fails because of a known bug, named by the reason, with that exception (a builtin or a
  ``dramatiq_tracker`` error).  Strict: once the bug is fixed the test fails until the marker is removed.
``<!-- test: skip="reason" -->``
  Not run; only for samples that cannot run here.
"""

from __future__ import annotations

import builtins
import dataclasses
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import dramatiq.broker
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

import dramatiq_tracker
from dramatiq_tracker import TrackerMiddleware

from .conftest import Namespaces
from .support import ROOT, close_redis_broker

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SETUPS = ("tracker", "broker", "none")
KEYS = {"setup", "before", "then", "abortable", "worker", "xfail", "raises", "skip"}

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")
_DIRECTIVE = re.compile(r"^\s*<!--\s*test:(?P<body>.*?)-->\s*$", flags=re.DOTALL)
#: How long the worker of a ``worker`` sample may take to drain the queues, in milliseconds.
JOIN_TIMEOUT = 10_000


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    options: dict[str, str]

    @property
    def name(self) -> str:
        return "%s:%d" % (self.path.relative_to(ROOT).as_posix(), self.line)

    @property
    def setup(self) -> str:
        return self.options.get("setup", "tracker")


def parse_directive(text: str, where: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for word in shlex.split(text):
        key, _, value = word.partition("=")
        if key not in KEYS:
            raise ValueError("%s: unknown test directive %r (known: %s)" % (where, key, ", ".join(sorted(KEYS))))
        options[key] = " ".join(value.split()) if key in ("xfail", "skip") else value
    if options.get("setup", "tracker") not in SETUPS:
        raise ValueError("%s: setup must be one of %s" % (where, ", ".join(SETUPS)))
    return options


def find_samples(path: Path) -> Iterator[Sample]:
    """The ```python blocks of a Markdown file, with the test directive just before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(opening["fence"]):
            end += 1
        if opening["info"] in ("python", "py"):
            directive = _DIRECTIVE.match(_comment_before(lines, index))
            where = "%s:%d" % (path.relative_to(ROOT).as_posix(), index + 1)
            options = parse_directive(directive["body"], where) if directive else {}
            indent = len(opening["indent"])
            code = "\n".join(line[indent:] for line in lines[index + 1 : end])
            yield Sample(path, index + 1, code, options)
        index = end + 1


def _exception(name: str) -> type[BaseException]:
    found = getattr(dramatiq_tracker, name, None) or getattr(builtins, name, None)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ValueError("raises=%s is neither a dramatiq_tracker error nor a builtin exception" % name)
    return found


def _comment_before(lines: list[str], index: int) -> str:
    """The HTML comment ending on the last non-blank line before ``lines[index]``, or ""."""
    end = index - 1
    while end >= 0 and not lines[end].strip():
        end -= 1
    if end < 0 or not lines[end].rstrip().endswith("-->"):
        return ""
    start = end
    while start > 0 and "<!--" not in lines[start]:
        start -= 1
    return "\n".join(lines[start : end + 1])


def _params() -> list[Any]:
    params = []
    for page in PAGES:
        for sample in find_samples(page):
            marks = []
            if "skip" in sample.options:
                marks.append(pytest.mark.skip(reason=sample.options["skip"]))
            if "xfail" in sample.options:
                raises = _exception(sample.options["raises"]) if "raises" in sample.options else None
                marks.append(pytest.mark.xfail(reason=sample.options["xfail"], raises=raises, strict=True))
            params.append(pytest.param(sample, id=sample.name, marks=marks))
    return params


@pytest.fixture
def sample_scope(
    redis_url: str, redis_client: redis.Redis, namespaces: Namespaces, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    """What a sample starts with; everything it made is closed after it."""
    # Trackers a sample builds without a namespace use the test's; set_broker() is undone after the test.
    monkeypatch.setitem(TrackerMiddleware.__init__.__kwdefaults__, "namespace", namespaces.tracker)
    monkeypatch.setattr(dramatiq.broker, "global_broker", dramatiq.broker.global_broker)
    broker = RedisBroker(url=redis_url, namespace=namespaces.broker)
    scope: dict[str, Any] = {"__name__": "docs_sample", "dramatiq": dramatiq, "redis_client": redis_client}
    scope["broker"] = broker
    yield scope
    _close_everything([broker, *scope.values()])


def _close_everything(objects: list[Any]) -> None:
    brokers = {id(o): o for o in objects if isinstance(o, dramatiq.Broker)}
    trackers = {id(o): o for o in objects if isinstance(o, TrackerMiddleware)}
    for broker in brokers.values():
        trackers.update({id(m): m for m in broker.middleware if isinstance(m, TrackerMiddleware)})
    for tracker in trackers.values():
        tracker.close()
    for broker in brokers.values():
        if isinstance(broker, RedisBroker):
            close_redis_broker(broker)
        else:
            broker.close()


@pytest.mark.parametrize("sample", _params())
def test_the_code_sample_runs(sample: Sample, sample_scope: dict[str, Any]) -> None:
    scope = sample_scope
    if sample.setup == "none":
        del scope["broker"]
    else:
        broker = scope["broker"]
        if sample.setup == "tracker":
            scope["tracker"] = TrackerMiddleware()
            broker.add_middleware(scope["tracker"])
        if "abortable" in sample.options:
            broker.add_middleware(_abortable(broker))
        dramatiq.set_broker(broker)
    if "before" in sample.options:
        exec(compile(sample.options["before"], "%s (before)" % sample.name, "exec"), scope)

    # The sample's lines keep their line numbers in tracebacks.
    source = "\n" * sample.line + sample.code
    exec(compile(source, str(sample.path.relative_to(ROOT)), "exec"), scope)

    if "then" in sample.options:
        exec(compile(sample.options["then"], "%s (then)" % sample.name, "exec"), scope)
    if "worker" in sample.options:
        _drain(dramatiq.get_broker())


def _abortable(broker: RedisBroker) -> Any:
    pytest.importorskip("dramatiq_abort")
    from dramatiq_abort import Abortable
    from dramatiq_abort.backends import RedisBackend

    return Abortable(backend=RedisBackend(client=broker.client, namespace="%s:aborts:" % broker.namespace))


def _drain(broker: dramatiq.Broker) -> None:
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        for queue in sorted(broker.get_declared_queues()):
            broker.join(queue, timeout=JOIN_TIMEOUT)
        worker.join()
    finally:
        worker.stop()


def test_the_samples_are_found() -> None:
    # A fence the parser missed would silently leave a sample untested.
    found = {sample.path.name for page in PAGES for sample in find_samples(page)}
    assert {"README.md", "guide.md", "uniqueness.md", "getting-started.md"} <= found


def test_the_api_reference_documents_every_public_name() -> None:
    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: dramatiq_tracker\.(\w+)\s*$", reference, flags=re.MULTILINE))
    assert set(dramatiq_tracker.__all__) - documented == set()
