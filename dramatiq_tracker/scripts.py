"""The Lua scripts: where they are, how they are loaded, and the typed contract of their replies.

Each script in a package's ``lua/`` is one atomic operation, headed by its
KEYS/ARGV/return contract.  A line ``-- include: _name`` in a script stands
for the fragment ``lua/_name.lua``, code that several scripts share; Redis
sees one script.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script


def text(value: Any) -> str:
    """Redis replies are bytes unless the client decodes them: make them str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


_allowed_replies: dict[int, frozenset[str]] = {}


def _allowed(contract: Any) -> frozenset[str]:
    # By identity: hashing a Literal type costs microseconds, and a sweep checks thousands of replies.
    allowed = _allowed_replies.get(id(contract))
    if allowed is None:
        allowed = _allowed_replies[id(contract)] = frozenset(get_args(contract))
    return allowed


def checked_reply(value: Any, contract: Any) -> Any:
    """A script's reply, checked against the ``Literal`` type of its contract.

    Raises:
      ValueError: When the script replied something its contract does not allow (a script of
        another version of the package runs under the same name).
    """
    allowed = _allowed(contract)
    if value in allowed:
        return value
    found = text(value) if value is not None else ""
    if found not in allowed:
        raise ValueError("unexpected script reply %r (expected one of %s)" % (found, ", ".join(sorted(allowed))))
    return found


def to_int(value: Any) -> int:
    """A Redis reply (or a text) as an int; 0 when it is none or not a number."""
    try:
        return int(text(value) if value is not None else 0)
    except ValueError:
        return 0


#: The package whose ``lua/`` holds the core's scripts.
CORE_SCRIPTS = "dramatiq_tracker"


#: A line of a script that stands for a fragment of ``lua/`` (a file whose name starts with "_"): code
#: that several scripts share, such as noticing that the server restarted or failed over.
_INCLUDE = re.compile(r"^-- include: (_\w+)$", re.MULTILINE)


@functools.cache
def script_source(name: str, package: str = CORE_SCRIPTS) -> str:
    """The text of ``lua/<name>.lua`` in ``package`` (the core's scripts, or those of the operator
    tools, ``dramatiq_tracker.ops``, which the core never runs), its fragments included."""
    scripts = resources.files(package).joinpath("lua")
    source = scripts.joinpath(name + ".lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda found: scripts.joinpath(found[1] + ".lua").read_text(encoding="utf-8"), source)


class Scripts:
    """The scripts of one package's ``lua/`` registered on one Redis client.

    Registration only computes SHA1s; redis-py loads a script into the
    server on first use and again after a ``SCRIPT FLUSH`` or a restart.

    Parameters:
      client(redis.Redis)
      package(str): Whose scripts: the core's by default.
    """

    def __init__(self, client: redis.Redis, package: str = CORE_SCRIPTS) -> None:
        self._client = client
        self._package = package
        self._scripts: dict[str, Script] = {}

    def __call__(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._client.register_script(script_source(name, self._package))
        return script(keys=list(keys), args=list(args))


# The contract of the scripts ---------------------------------------------------------------

#: What a write of a worker's records says about the worker.
WriteStatus = Literal["ok", "fenced", "unknown", "diverged"]
#: What registering says: "fenced" when the worker id was declared dead.
RegisterStatus = Literal["ok", "fenced"]
#: What a heartbeat or a registration says of the worker's presence: "seen" (the server has its
#: subscriber), "unseen" (it claimed one and the server has none), "" (it claimed none).
PresenceSeen = Literal["seen", "unseen", ""]
#: Why a worker would be dead: its process was seen gone on this host, its presence is gone, or its
#: heartbeat expired (see ``lua/declare_dead.lua``).
DeathReason = Literal["process", "presence", "heartbeat"]
#: What declaring a worker dead found; "unsure" when the server is new to the namespace or the
#: caller's own heartbeat is not on it; "claimed" when it is dead and another sweeper is recovering it.
DeathStatus = Literal["dead", "alive", "gone", "unsure", "claimed"]
#: What renewing a recovery claim said: "renewed"; "called" when the lock cleaner call it was to note
#: was made already; "lost" when another sweeper took the claim over (see ``lua/renew_recovery.lua``).
RenewStatus = Literal["renewed", "called", "lost"]
#: What a presence check found (see :meth:`TrackerStore.check_presence`).
PresenceStatus = Literal["ok", "settling", "unsure"]
#: How ``lua/claim_orphans.lua`` claims a broker's orphans (see the script).
ClaimMode = Literal["deliver", "park", "await"]
#: The fate of an orphan, decided when it is claimed; "" while its broker's redelivery is awaited.
Outcome = Literal["deliver", "quarantine", "drop", ""]
#: What a claim did to an orphan's uniqueness lock.
LockOutcome = Literal["deleted", "transferred", ""]
#: How an attempt ended, for a duplicate waiting behind it ("void": a zombie's failure, which decides nothing).
Completion = Literal["ack", "nack", "void"]
#: What taking a uniqueness lock found.
LockStatus = Literal["acquired", "owned", "conflict"]


# The contract of the scripts ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeclaredDead:
    """What :meth:`TrackerStore.declare_dead` found.

    Parameters:
      status(str): "dead" (its recovery claimed by the caller, if it asked), "alive" (heartbeat fresh),
        "gone" (not registered), "unsure" (see :data:`DeathStatus`) or "claimed" (another sweeper
        holds its recovery).
      registration(str): The raw registration JSON of a dead worker.
      records(dict[str, str]): The raw in-flight records of a dead worker, by message id.
      dead_since(int): When a dead worker died, as far as the server can tell (its presence lost, else
        its last heartbeat), in server ms.
      reason(str): Why it was first declared dead ("process", "presence" or "heartbeat"): a start at a
        RabbitMQ redelivery may declare it, and a sweep recover it later.
    """

    status: DeathStatus
    registration: str = ""
    records: dict[str, str] = dataclasses.field(default_factory=dict)
    dead_since: int = 0
    reason: DeathReason = "heartbeat"


@dataclasses.dataclass(frozen=True)
class ClaimRequest:
    """One orphan to claim, with what ``lua/claim_orphans.lua`` needs to decide its fate.

    Parameters:
      message_id(str)
      attempt(int): The attempt of the copy found (0 when unknown).
      digest(str): Its uniqueness lock digest, or "".
      mode(str): Its lock mode, or "".
      max_recoveries(int): Its poison limit.
      aborted(bool): dramatiq-abort holds a cancel or abort request for it.
    """

    message_id: str
    attempt: int = 0
    digest: str = ""
    mode: str = ""
    max_recoveries: int = 2**31
    aborted: bool = False


@dataclasses.dataclass(frozen=True)
class ClaimReply:
    """What claiming one orphan decided (see ``lua/claim_orphans.lua``).

    Parameters:
      running(bool): It was being processed, not only prefetched.
      taken(bool): This call took its record.
      recoveries(int): Its recovery count.
      attempt(int): The attempt of its next delivery.
      by_start(bool): A starting copy took it earlier, and runs it: the dead worker's copies are stale.
      awaiting(bool): Its recovery is counted when the broker redelivers it.
      lock(str): What happened to its uniqueness lock.
      outcome(str): Its fate, "" while awaiting.
    """

    running: bool
    taken: bool
    recoveries: int
    attempt: int
    by_start: bool
    awaiting: bool
    lock: LockOutcome
    outcome: Outcome


@dataclasses.dataclass(frozen=True)
class AtRiskStart:
    """What :meth:`TrackerStore.begin_at_risk` found.

    Parameters:
      previous_owner(str): "worker id|token|retries" of another attempt recorded running the message, or "".
      history(dict[str, str]): The message's history (recoveries, attempt, awaiting_from, abort, ...).
    """

    previous_owner: str
    history: dict[str, str]


#: An in-flight record as scripts take it: message id, "token|retries" (the running index's
#: owner, after the worker id), the record's JSON.
RecordEntry = tuple[str, str, str]
