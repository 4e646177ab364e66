"""Uniqueness locks for Dramatiq actors: modes, digests, conflicts and owner-checked release.

An actor declared with ``unique=...`` gets at most one message per *digest*
(its actor, queue and chosen arguments, canonically encoded and hashed)
holding a lock at a time.  Each lock records its owner: the message id and
the attempt (raised each time recovery moves the message), so that only the
owning attempt releases it; a zombie's late completion never releases its
successor's lock.  When a worker dies, the recovery claim releases exactly
the locks its orphans own, atomically with claiming them
(``lua/claim_orphans.lua``).

See docs/uniqueness.md.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import redis
from dramatiq.common import q_name
from dramatiq.logging import get_logger
from dramatiq.message import Message
from dramatiq.middleware import SkipMessage

from .errors import ConfigurationError, DuplicateMessage, UniqueKeyError
from .options import DIGEST_OPTION, DUPLICATE_OPTION, MODE_OPTION, attempt_of

if TYPE_CHECKING:
    from dramatiq import Broker, MessageProxy

    from .health import ConnectionHealth
    from .store import TrackerStore

#: Locked when sent, unlocked when a worker starts processing it.
UNTIL_EXECUTING = "until_executing"
#: Locked when sent, unlocked when it is done (acked or dead-lettered); kept across retries.
UNTIL_EXECUTED = "until_executed"
#: Locked while it is processed; duplicates may be queued, but never run at the same time.
WHILE_EXECUTING = "while_executing"
#: Locked when sent, unlocked only when ``unique_ttl`` expires.
UNTIL_EXPIRED = "until_expired"

MODES = (UNTIL_EXECUTING, UNTIL_EXECUTED, WHILE_EXECUTING, UNTIL_EXPIRED)
HELD_FROM_ENQUEUE = frozenset({UNTIL_EXECUTING, UNTIL_EXECUTED, UNTIL_EXPIRED})

#: Conflicts when sending (modes held from enqueue): raise DuplicateMessage, or drop the duplicate.
RAISE, DROP = "raise", "drop"
#: Conflicts when starting (while_executing): skip the duplicate (ack it), delay it, or fail it (dead-letter).
SKIP_DUPLICATE, DELAY_DUPLICATE, FAIL_DUPLICATE = "skip", "delay", "fail"
ENQUEUE_CONFLICTS = (RAISE, DROP)
EXECUTION_CONFLICTS = (SKIP_DUPLICATE, DELAY_DUPLICATE, FAIL_DUPLICATE)

#: How long a ``while_executing`` duplicate is delayed by default, in milliseconds.
DEFAULT_UNIQUE_DELAY = 1_000


@dataclasses.dataclass(frozen=True)
class UniquePolicy:
    """How an actor's messages are kept unique.

    Parameters:
      mode(str): One of :data:`MODES`.
      key(callable|str|None): What identifies a duplicate: called as ``key(*args, **kwargs)``,
        or a template formatted with them (``"{user_id}"``); None means all the arguments.
      ttl(int|None): A backstop expiry of the lock, in milliseconds; None for none.
      on_conflict(str): What happens to a duplicate (:data:`ENQUEUE_CONFLICTS` or :data:`EXECUTION_CONFLICTS`).
      delay(int): How long a delayed ``while_executing`` duplicate waits, in milliseconds.
    """

    mode: str
    key: Callable[..., Any] | str | None
    ttl: int | None
    on_conflict: str
    delay: int

    @property
    def held_from_enqueue(self) -> bool:
        return self.mode in HELD_FROM_ENQUEUE


def resolve_policy(*layers: Mapping[str, Any]) -> UniquePolicy | None:
    """The uniqueness policy from option layers, first found wins (message, actor, middleware).

    Raises:
      ConfigurationError: When an option is invalid; the error names it.
    """

    def lookup(name: str) -> Any:
        for layer in layers:
            if layer.get(name) is not None:
                return layer[name]
        return None

    unique = lookup("unique")
    if unique is None or unique is False:
        return None
    mode = UNTIL_EXECUTED if unique is True else unique
    if mode not in MODES:
        raise ConfigurationError("unique", "must be False, True or one of %s, got %r" % (", ".join(MODES), unique))

    key = lookup("unique_key")
    if key is not None and not callable(key) and not isinstance(key, str):
        raise ConfigurationError("unique_key", "must be a callable or a format string, got %r" % (key,))

    ttl = lookup("unique_ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0):
        raise ConfigurationError("unique_ttl", "must be a positive number of milliseconds or None, got %r" % (ttl,))
    if mode == UNTIL_EXPIRED and ttl is None:
        raise ConfigurationError("unique_ttl", "is required by unique=%r" % UNTIL_EXPIRED)

    allowed = ENQUEUE_CONFLICTS if mode in HELD_FROM_ENQUEUE else EXECUTION_CONFLICTS
    on_conflict = lookup("unique_on_conflict") or allowed[0 if mode in HELD_FROM_ENQUEUE else 1]
    if on_conflict not in allowed:
        raise ConfigurationError(
            "unique_on_conflict", "must be one of %s for unique=%r, got %r" % (", ".join(allowed), mode, on_conflict)
        )

    delay = lookup("unique_delay")
    delay = DEFAULT_UNIQUE_DELAY if delay is None else delay
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise ConfigurationError("unique_delay", "must be a number of milliseconds, got %r" % (delay,))
    return UniquePolicy(mode, key, ttl, on_conflict, delay)


def validate_defaults(defaults: Mapping[str, Any]) -> None:
    """Check the middleware's default uniqueness options.

    Raises:
      ConfigurationError: Naming the invalid setting.
    """
    if defaults.get("unique"):
        resolve_policy(defaults)
        return
    # Not unique by default: the other defaults must still be valid for actors that opt in.
    on_conflict = defaults.get("unique_on_conflict")
    if on_conflict is not None and on_conflict not in ENQUEUE_CONFLICTS + EXECUTION_CONFLICTS:
        allowed = ", ".join(ENQUEUE_CONFLICTS + EXECUTION_CONFLICTS)
        raise ConfigurationError("unique_on_conflict", "must be one of %s, got %r" % (allowed, on_conflict))
    resolve_policy({**defaults, "unique": WHILE_EXECUTING, "unique_on_conflict": None})


@functools.lru_cache(maxsize=1024)
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def bind_arguments(
    fn: Callable[..., Any] | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> inspect.BoundArguments | None:
    """The call bound to ``fn``'s signature, defaults applied (as celery-once's ``getcallargs``),
    so that ``send(1, 2)``, ``send(1, b=2)`` and ``send(a=1, b=2)`` are the same call.

    Returns:
      BoundArguments: None when ``fn`` is unknown or the call does not fit its signature.
    """
    signature = _signature(fn) if fn is not None else None
    if signature is None:
        return None
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return bound


def _call_key(key: Callable[..., Any], bound: inspect.BoundArguments) -> Any:
    # By name when the key takes the actor's parameter names, else positionally: both canonical.
    signature = _signature(key)
    if signature is not None:
        try:
            signature.bind(**bound.arguments)
        except TypeError:
            return key(*bound.args, **bound.kwargs)
    return key(**bound.arguments)


def compute_digest(
    actor_name: str,
    queue_name: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    key: Any = None,
    fn: Callable[..., Any] | None = None,
) -> str:
    """The digest that identifies duplicates: stable across processes and Python versions.

    The call is first bound to the actor's signature (``fn``), defaults applied, so that
    positional and keyword calls agree.  The key material is then: every argument by name (no
    ``key``); what a callable ``key`` returns, called with the arguments by name when it takes
    the actor's parameter names (``lambda account_id, **_: account_id``), else positionally in
    the actor's parameter order; or a format string ``key`` formatted with them, by name or by
    position (``"{account_id}"``, ``"{0}"``).  Where the actor's function is unknown (a process
    that sends by name), the call's own positional and keyword arguments are used.  The actor,
    the canonical queue and the material are encoded as canonical JSON (sorted keys, no
    whitespace, ASCII) and hashed with SHA-256.

    Raises:
      UniqueKeyError: When the key cannot be computed or is not JSON-encodable.
    """
    try:
        bound = bind_arguments(fn, args, kwargs)
        if key is None:
            material: Any = (
                {"arguments": bound.arguments} if bound is not None else {"args": list(args), "kwargs": dict(kwargs)}
            )
        elif callable(key):
            material = _call_key(key, bound) if bound is not None else key(*args, **kwargs)
        elif bound is not None:
            material = str(key).format(*bound.args, **bound.arguments)
        else:
            material = str(key).format(*args, **kwargs)
        canonical = json.dumps(
            [actor_name, q_name(queue_name), material], sort_keys=True, separators=(",", ":"), allow_nan=False
        )
    except Exception as e:
        raise UniqueKeyError("Cannot compute the uniqueness key of actor %r: %s" % (actor_name, e)) from None
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:32]


def lock_of(options: Mapping[str, Any]) -> tuple[str, str]:
    """The lock digest and mode a message carries, or ("", "")."""
    digest, mode = options.get(DIGEST_OPTION), options.get(MODE_OPTION)
    if isinstance(digest, str) and digest and mode in MODES:
        return digest, str(mode)
    return "", ""


@dataclasses.dataclass
class UniqueAttempt:
    """The lock state of a unique message being processed.

    Parameters:
      message_id(str)
      digest(str)
      mode(str)
      attempt(int): The delivery attempt that owns (or will own) the lock.
      worker_id(str): The worker running it.
    """

    message_id: str
    digest: str
    mode: str
    attempt: int
    worker_id: str = ""
    #: This attempt holds a while_executing lock to release when it ends.
    holds: bool = False
    #: The message was enqueued again while it ran (a retry): its lock stays.
    requeued: bool = False
    #: A duplicate dropped when it was sent, skipped unrun: it owns no lock, and its end stores the
    #: error that says so as its result again (Results before Dramatiq 1.17 overwrites it with None).
    dropped: DuplicateMessage | None = None


class DroppedDuplicate(SkipMessage):
    """Skips a message dropped as a duplicate when it was sent.

    Parameters:
      state(UniqueAttempt): What its end must do (see :attr:`UniqueAttempt.dropped`).
    """

    def __init__(self, state: UniqueAttempt) -> None:
        super().__init__()
        self.state = state


def _message_digest(broker: Broker, message: Message[Any] | MessageProxy, key: Any) -> str:
    """:func:`compute_digest` of a message, bound to its actor's function where ``broker`` declares it.

    Raises:
      UniqueKeyError: When the digest cannot be computed.
    """
    actor = broker.actors.get(message.actor_name)
    fn = actor.fn if actor is not None else None
    return compute_digest(message.actor_name, message.queue_name, message.args, message.kwargs, key, fn)


class Uniqueness:
    """Takes, checks and releases uniqueness locks from the middleware's hooks.

    Parameters:
      store(TrackerStore)
      health(ConnectionHealth): Where a lost tracker Redis is reported.

    A tracker Redis that cannot be reached does not stop messages: they are
    sent and run without their lock, and the outage is logged once.
    """

    def __init__(self, store: TrackerStore, health: ConnectionHealth) -> None:
        self.logger = get_logger(__name__, type(self))
        self.store = store
        self.health = health
        #: Releases that failed during an outage, retried when it ends (they are owner-checked).
        self._unreleased: list[UniqueAttempt] = []
        self._lock = threading.Lock()
        health.on_reconnect.append(self.retry_releases)

    # Sending -----------------------------------------------------------------------

    def before_enqueue(
        self, broker: Broker, message: Message[Any], policy: UniquePolicy, current: UniqueAttempt | None
    ) -> None:
        """Stamp a unique message with its digest and take its lock if the mode holds one from enqueue.

        A message that already carries its digest is being enqueued again (a retry, a delayed
        message moved to its queue, a put-off duplicate, a copy recovery or quarantine made): it
        is never refused, and takes no lock: its lock, if any, is already its own.

        Raises:
          DuplicateMessage: When the lock is held by another message and the actor raises on conflicts.
          UniqueKeyError: When the digest cannot be computed.
        """
        options = message.options
        if current is not None and current.message_id == message.message_id:
            current.requeued = True
        if DIGEST_OPTION in options:
            options.setdefault(MODE_OPTION, policy.mode)
            return
        digest = _message_digest(broker, message, policy.key)
        options[DIGEST_OPTION] = digest
        options[MODE_OPTION] = policy.mode
        if not policy.held_from_enqueue:
            return

        if not self.health.should_try():
            self.logger.debug("Message %r is sent without its uniqueness lock: the tracker's Redis is down.", digest)
            return
        started = time.monotonic()
        try:
            status, owner, _ = self.store.acquire_lock(
                digest,
                message.message_id,
                attempt_of(options),
                policy.mode,
                message.actor_name,
                q_name(message.queue_name),
                "",
                policy.ttl,
            )
        except redis.RedisError as e:
            self.health.failed("taking uniqueness lock %s" % digest, e)
            return
        self.health.succeeded(started)
        if status != "conflict":
            self.logger.debug("Message %r holds uniqueness lock %s (%s).", message.message_id, digest, status)
            return
        if policy.on_conflict == DROP:
            options[DUPLICATE_OPTION] = owner
            self.logger.info(
                "Dropping message %r of actor %r: it duplicates message %r (uniqueness lock %s).",
                message.message_id,
                message.actor_name,
                owner,
                digest,
            )
            _store_duplicate_result(broker, message, DuplicateMessage(message.message_id, digest, owner))
            return
        raise DuplicateMessage(message.message_id, digest, owner)

    # Processing --------------------------------------------------------------------

    def before_process(
        self, broker: Broker, message: MessageProxy, policy: UniquePolicy | None, attempt: int, worker_id: str
    ) -> UniqueAttempt | None:
        """Release an ``until_executing`` lock, or take a ``while_executing`` one.

        Parameters:
          policy(UniquePolicy|None): The message's policy here (None when its actor is not unique here).

        Raises:
          SkipMessage: For a dropped duplicate, or a ``while_executing`` duplicate
            that is skipped, delayed (enqueued again later) or failed.
        """
        if DUPLICATE_OPTION in message.options:
            owner = message.options[DUPLICATE_OPTION]
            self.logger.info(
                "Skipping message %r: it was dropped as a duplicate of message %r when it was sent.",
                message.message_id,
                owner,
            )
            quiet_skip(message)
            digest, mode = lock_of(message.options)
            dropped = DuplicateMessage(message.message_id, digest, str(owner))
            raise DroppedDuplicate(UniqueAttempt(message.message_id, digest, mode, attempt, worker_id, dropped=dropped))
        digest, mode = lock_of(message.options)
        if not digest:
            # Sent by a process that did not know the actor was unique: only while_executing still applies.
            if policy is None or policy.mode != WHILE_EXECUTING:
                return None
            digest = _message_digest(broker, message, policy.key)
            mode = WHILE_EXECUTING

        state = UniqueAttempt(message.message_id, digest, mode, attempt, worker_id)
        if mode == UNTIL_EXECUTING:
            self._release(state)
        elif mode == WHILE_EXECUTING and self.health.should_try():
            started = time.monotonic()
            try:
                self._take_while_executing(broker, message, state, policy)
            except redis.RedisError as e:
                self.health.failed("taking uniqueness lock %s" % digest, e)
            else:
                self.health.succeeded(started)
        return state

    def _take_while_executing(
        self, broker: Broker, message: MessageProxy, state: UniqueAttempt, policy: UniquePolicy | None
    ) -> None:
        status, owner, owner_worker = self.store.acquire_lock(
            state.digest,
            message.message_id,
            state.attempt,
            WHILE_EXECUTING,
            message.actor_name,
            q_name(message.queue_name),
            state.worker_id,
            policy.ttl if policy else None,
        )
        if status != "conflict":
            state.holds = True
            return
        on_conflict = policy.on_conflict if policy and policy.mode == WHILE_EXECUTING else DELAY_DUPLICATE
        delay = policy.delay if policy else DEFAULT_UNIQUE_DELAY
        described = "message %r: message %r (worker %r) is running its duplicate (uniqueness lock %s)" % (
            message.message_id,
            owner,
            owner_worker or "?",
            state.digest,
        )
        if on_conflict == FAIL_DUPLICATE:
            self.logger.warning("Failing %s.", described)
            message.fail()
        elif on_conflict == DELAY_DUPLICATE:
            self.logger.info("Delaying %s by %d ms.", described, delay)
            broker.enqueue(Message(**message.asdict()), delay=delay)
        else:
            self.logger.info("Skipping %s.", described)
        quiet_skip(message)
        raise SkipMessage()

    def retry_releases(self) -> None:
        """Release the locks whose release failed during an outage of the tracker's Redis."""
        with self._lock:
            pending, self._unreleased = self._unreleased, []
        for state in pending:
            self._release(state)
        if pending:
            self.logger.info("Released %d uniqueness locks held over the outage.", len(pending))

    def after_process(self, state: UniqueAttempt) -> None:
        """The actor returned or raised: release a ``while_executing`` lock."""
        if state.holds:
            state.holds = False
            self._release(state)

    def after_done(self, state: UniqueAttempt, broker: Broker, message: Message[Any]) -> None:
        """The message was acked or nacked: release an ``until_executed`` lock, unless it is retried."""
        if state.dropped is not None:
            _store_duplicate_result(broker, message, state.dropped)
            return
        self.after_process(state)
        if state.mode == UNTIL_EXECUTED and not state.requeued:
            self._release(state)

    def _release(self, state: UniqueAttempt) -> None:
        if not self.health.should_try():
            with self._lock:
                self._unreleased.append(state)
            return
        started = time.monotonic()
        try:
            released = self.store.release_lock(state.digest, state.message_id, state.attempt, state.worker_id)
        except redis.RedisError as e:
            with self._lock:
                self._unreleased.append(state)
            self.health.failed("releasing uniqueness lock %s" % state.digest, e)
            return
        self.health.succeeded(started)
        if not released:
            self.logger.debug(
                "Uniqueness lock %s is not released by attempt %d of message %r; left alone.",
                state.digest,
                state.attempt,
                state.message_id,
            )


#: The attribute a message proxy carries when the tracker skips it on purpose (see :func:`quiet_skip`).
QUIET_SKIP_ATTRIBUTE = "_tracker_quiet_skip"


def quiet_skip(message: MessageProxy) -> None:
    """Mark a message the tracker skips on purpose: Dramatiq's own "was skipped" warning is left out
    (see :class:`~dramatiq_tracker.wiring.QuietSkips`); the tracker says why itself."""
    setattr(message, QUIET_SKIP_ATTRIBUTE, True)


def _store_duplicate_result(broker: Broker, message: Message[Any], error: DuplicateMessage) -> None:
    """With Dramatiq's Results middleware, make a dropped duplicate's result the error that says so,
    instead of the ``None`` a skipped message leaves."""
    results: Any = next((m for m in broker.middleware if type(m).__name__ == "Results" and hasattr(m, "backend")), None)
    if results is None:
        return
    try:
        store_results, result_ttl = results._lookup_options(broker, message)
        if not store_results:
            return
        results.backend.store_exception(message, error, result_ttl)
        # Skipped unrun when it is processed: the worker must not overwrite the error with None.
        message.options["store_results"] = False
    except Exception:
        get_logger(__name__).warning(
            "Could not store the duplicate error as the result of message %r.", message.message_id, exc_info=True
        )
