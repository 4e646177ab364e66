"""What the tracker writes to Redis, and how it reads it back.

Records are JSON objects.  Reading is defensive: Redis is shared, and a
record written by another version, by hand, or half-corrupted must be
reported and skipped, never crash a worker or a sweep.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import reprlib
from collections.abc import Mapping
from typing import Any

from dramatiq.message import Message

from .host import HostFacts
from .scripts import text, to_int

_REPR = reprlib.Repr()
_REPR.maxstring = 30
_REPR.maxother = 30
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2


class CorruptRecord(ValueError):
    """Raised when a record read back from Redis cannot be understood."""


def encode_payload(data: bytes) -> tuple[str, str]:
    """Turn an encoded message into text for a JSON record, with its encoding name."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def decode_payload(text: str, encoding: str) -> bytes:
    if encoding == "utf-8":
        return text.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as e:
            raise CorruptRecord("bad base64 payload: %s" % e) from None
    raise CorruptRecord("unknown payload encoding %r" % (encoding,))


def _load_object(raw: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptRecord("not JSON: %s" % e) from None
    if not isinstance(data, dict):
        raise CorruptRecord("not a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CorruptRecord("field %r is missing or not a %s" % (name, getattr(kind, "__name__", kind)))
    return value


def _optional_int(data: dict[str, Any], name: str) -> int:
    value = data.get(name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def dump(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """The registration of a worker process: who it is and what it consumes."""

    worker_id: str
    hostname: str
    pid: int
    process_started: str
    boot_id: str
    pid_namespace: str
    queues: tuple[str, ...]
    broker_kind: str
    broker_identity: str
    broker_id: str
    broker_namespace: str
    worker_threads: int
    started_at: int
    tracker_version: str
    dramatiq_version: str
    #: When it began a graceful shutdown (ms since the epoch), 0 while it runs.
    stopping_at: int = 0

    @property
    def host(self) -> HostFacts:
        """What identifies its process on its host."""
        return HostFacts(self.hostname, self.pid, self.process_started, self.boot_id, self.pid_namespace)

    @classmethod
    def unknown(cls, worker_id: str) -> WorkerInfo:
        """Stands for a worker whose registration is gone."""
        return cls(worker_id, "", 0, "", "", "", (), "", "", "", "", 0, 0, "", "")

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["queues"] = list(self.queues)
        return dump(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerInfo:
        data = _load_object(raw)
        queues = _field(data, "queues", list)
        if not all(isinstance(queue, str) for queue in queues):
            raise CorruptRecord("field 'queues' must hold strings")
        return cls(
            worker_id=_field(data, "worker_id", str),
            hostname=_field(data, "hostname", str),
            pid=_field(data, "pid", int),
            process_started=_field(data, "process_started", str),
            boot_id=_field(data, "boot_id", str),
            pid_namespace=_field(data, "pid_namespace", str),
            queues=tuple(queues),
            broker_kind=_field(data, "broker_kind", str),
            broker_identity=_field(data, "broker_identity", str),
            broker_id=_field(data, "broker_id", str),
            broker_namespace=_field(data, "broker_namespace", str),
            worker_threads=_field(data, "worker_threads", int),
            started_at=_field(data, "started_at", int),
            tracker_version=_field(data, "tracker_version", str),
            dramatiq_version=_field(data, "dramatiq_version", str),
            # Read by operators alone: a value that is not a time is theirs to report, not a corrupt record.
            stopping_at=_optional_int(data, "stopping_at"),
        )


@dataclasses.dataclass(frozen=True)
class LockInfo:
    """A uniqueness lock, as operators see it.

    Parameters:
      digest(str)
      message_id(str): The message that owns it.
      attempt(int): The owning attempt.
      mode(str): The lock mode.
      actor_name(str)
      queue_name(str)
      worker_id(str): The worker running the owner, or "" while it is queued.
      acquired_at(int): Server time, in ms since the epoch.
      ttl(int|None): Milliseconds until it expires; None when it never does.
    """

    digest: str
    message_id: str
    attempt: int
    mode: str
    actor_name: str
    queue_name: str
    worker_id: str
    acquired_at: int
    ttl: int | None

    @classmethod
    def from_redis(cls, digest: str, fields: Mapping[Any, Any], ttl: Any) -> LockInfo:
        """A lock as Redis holds it: its HASH's fields, and its ``PTTL``."""
        lock = {text(name): text(value) for name, value in fields.items()}
        remaining = to_int(ttl)
        return cls(
            digest=digest,
            message_id=lock.get("message_id", ""),
            attempt=to_int(lock.get("attempt")),
            mode=lock.get("mode", ""),
            actor_name=lock.get("actor", ""),
            queue_name=lock.get("queue", ""),
            worker_id=lock.get("worker", ""),
            acquired_at=to_int(lock.get("acquired_at")),
            ttl=remaining if remaining >= 0 else None,
        )


#: The fields of a record's JSON array, in order.
RECORD_FIELDS = (
    "actor_name",
    "queue_name",
    "started_at",
    "token",
    "max_recoveries",
    "preview",
    "attempt",
    "recoveries",
    "retries",
    "on_exhausted",
    "lock",
    "payload",
    "payload_encoding",
)


#: The type of each of them, and the value a record may leave out.
_RECORD_TYPES = (str, str, int, str, int, str, int, int, int, str, str, str, str)
_RECORD_DEFAULTS: list[Any] = ["", "", 0, "", 0, "", 0, 0, 0, "", "", "", ""]


@dataclasses.dataclass(frozen=True)
class AttemptName:
    """One attempt at processing a message, as the running index and the history name it:
    ``"<worker id>|<token>|<retries>"``.

    The token is unique within its worker (hexadecimal); ``retries`` is Dramatiq's retry count of
    the attempt, so that a retry is never taken for a duplicate of the attempt it follows.

    Parameters:
      worker_id(str)
      token(str)
      retries(int)
    """

    worker_id: str
    token: str
    retries: int = 0

    @classmethod
    def parse(cls, text: str) -> AttemptName:
        """Read a name back; a name without retries (``"<worker id>|<token>"``) has 0."""
        head, _, last = text.rpartition("|")
        worker_id, _, token = head.rpartition("|")
        if not worker_id or not last.isdigit():
            return cls(head, last, 0)
        return cls(worker_id, token, int(last))

    @property
    def text(self) -> str:
        return "%s|%s|%d" % (self.worker_id, self.token, self.retries)

    @property
    def attempt_id(self) -> str:
        """``"<worker id>|<token>"``: the attempt, whatever its retries."""
        return "%s|%s" % (self.worker_id, self.token)


@dataclasses.dataclass(frozen=True)
class InflightRecord:
    """One message being processed by one worker, as written to Redis.

    A JSON array by position keeps a record small (see docs/redis-data-model.md): where the broker
    keeps the message (RedisBroker, RabbitMQ), the record keeps metadata and a bounded
    preview of the arguments, never the payload.

    Parameters:
      message_id(str): Dramatiq's message id, stable across redeliveries (the record's hash field).
      worker_id(str): The worker running it (the record's hash key).
      actor_name(str)
      queue_name(str): The queue the message was consumed from.
      token(str): This attempt's token in its worker; "worker id|token" names the attempt.
      started_at(int): When processing began, the worker's clock, in ms since the epoch.
      attempt(int): The delivery attempt (raised each time recovery moves the message).
      recoveries(int): How many times the message had been recovered when this attempt began.
      retries(int): Dramatiq's retry count of this attempt.
      max_recoveries(int): The message's poison limit, resolved where its actor is known.
      on_exhausted(str): "actor|queue" of its ``on_recovery_exhausted`` actor, or "".
      lock(str): "digest|mode" of the uniqueness lock it holds or may hold, or "".
      preview(str): Its arguments, rendered and truncated, for operators.
      payload(str): The encoded message, only for brokers that do not keep it themselves.
      payload_encoding(str): "utf-8" or "base64" when there is a payload.
    """

    message_id: str
    worker_id: str
    actor_name: str
    queue_name: str
    token: str
    started_at: int
    attempt: int = 0
    recoveries: int = 0
    retries: int = 0
    max_recoveries: int = 0
    on_exhausted: str = ""
    lock: str = ""
    preview: str = ""
    payload: str = ""
    payload_encoding: str = ""

    @property
    def attempt_id(self) -> str:
        """``"<worker id>|<token>"``: this attempt, as the running index and the history name it."""
        return "%s|%s" % (self.worker_id, self.token)

    def to_json(self) -> str:
        """A JSON array, by position (see :data:`RECORD_FIELDS`), trailing defaults left out: records are
        many, and small ones fit Redis's compact hash encoding."""
        values: list[Any] = [
            self.actor_name,
            self.queue_name,
            self.started_at,
            self.token,
            self.max_recoveries,
            self.preview,
            self.attempt,
            self.recoveries,
            self.retries,
            self.on_exhausted,
            self.lock,
            self.payload,
            self.payload_encoding if self.payload else "",
        ]
        while len(values) > 5 and values[-1] in ("", 0):
            values.pop()
        return json.dumps(values, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: bytes | str, *, message_id: str, worker_id: str) -> InflightRecord:
        """Read a record back.

        Raises:
          CorruptRecord: When it is not a record this version understands.
        """
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptRecord("not JSON: %s" % e) from None
        if not isinstance(data, list) or len(data) < 5:
            raise CorruptRecord("not a record (a JSON array of at least 5 values)")
        values: list[Any] = data + _RECORD_DEFAULTS[len(data) :] if len(data) < len(RECORD_FIELDS) else data
        for index, kind in enumerate(_RECORD_TYPES):
            value = values[index]
            if type(value) is not kind:
                if kind is int and value == "":
                    values[index] = 0
                    continue
                expected = "a non-negative integer" if kind is int else "a string"
                raise CorruptRecord("field %r is not %s" % (RECORD_FIELDS[index], expected))
            if kind is int and values[index] < 0:
                raise CorruptRecord("field %r is not a non-negative integer" % RECORD_FIELDS[index])
        actor, queue, started_at, token, max_recoveries, preview, attempt, recoveries, retries = values[:9]
        on_exhausted, lock, payload, encoding = values[9:13]
        return cls(
            message_id=message_id,
            worker_id=worker_id,
            actor_name=actor,
            queue_name=queue,
            started_at=started_at,
            token=token,
            max_recoveries=max_recoveries,
            preview=preview,
            attempt=attempt,
            recoveries=recoveries,
            retries=retries,
            on_exhausted=on_exhausted,
            lock=lock,
            payload=payload,
            payload_encoding=encoding or ("utf-8" if payload else ""),
        )

    @property
    def lock_digest_and_mode(self) -> tuple[str, str]:
        """The digest and mode of the lock it names, or ("", "")."""
        digest, _, mode = self.lock.partition("|")
        return (digest, mode) if digest and mode else ("", "")

    @property
    def has_payload(self) -> bool:
        return bool(self.payload)

    def message(self) -> Message[Any]:
        """Decode the stored message.

        Raises:
          CorruptRecord: When there is no payload, or it cannot be decoded with the current encoder.
        """
        if not self.payload:
            raise CorruptRecord("the record keeps no payload")
        try:
            return Message.decode(decode_payload(self.payload, self.payload_encoding))
        except CorruptRecord:
            raise
        except Exception as e:
            raise CorruptRecord("payload does not decode: %s" % e) from None


def preview_of(args: tuple[Any, ...], kwargs: Mapping[str, Any], length: int) -> str:
    """The arguments of a message, rendered for operators and cut to ``length`` characters.

    Rendering never raises: an argument whose ``repr`` fails shows as its type name.
    """
    if length <= 0:
        return ""
    parts = [_safe_repr(arg, length) for arg in args]
    parts += ["%s=%s" % (name, _safe_repr(value, length)) for name, value in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= length else text[: max(0, length - 1)] + "\u2026"


def _safe_repr(value: Any, length: int) -> str:
    try:
        return _REPR.repr(value)[: length + 1]
    except Exception:
        return "<%s>" % type(value).__name__


def parse_outbox_entry(raw: str) -> tuple[int, str, str]:
    """An outbox entry's (parked_at, record JSON, dead worker id).

    Raises:
      ValueError: When it is not an outbox entry.
    """
    entry = json.loads(raw)
    if not isinstance(entry, dict):
        raise ValueError("not a JSON object")
    return int(entry["parked_at"]), str(entry["record"]), str(entry.get("worker", ""))
