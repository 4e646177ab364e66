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
from typing import Any

from dramatiq.message import Message


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
        )


@dataclasses.dataclass(frozen=True)
class InflightRecord:
    """One message being processed by one worker.

    Parameters:
      message_id(str): Dramatiq's message id, stable across redeliveries.
      actor_name(str)
      queue_name(str): The queue the message was consumed from.
      redis_message_id(str): RedisBroker's id of this copy; "" on other brokers.
      worker_id(str): The worker running it.
      token(str): This attempt's token; a later attempt of the same message has another.
      started_at(int): When processing began, client clock, in ms since the epoch.
      recoveries(int): How many times the message had been recovered when this attempt began.
      payload(str): The full encoded message, as text.
      payload_encoding(str): "utf-8", or "base64" for binary encoders.
    """

    message_id: str
    actor_name: str
    queue_name: str
    redis_message_id: str
    worker_id: str
    token: str
    started_at: int
    recoveries: int
    payload: str
    payload_encoding: str

    def to_json(self) -> str:
        return dump(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> InflightRecord:
        data = _load_object(raw)
        return cls(
            message_id=_field(data, "message_id", str),
            actor_name=_field(data, "actor_name", str),
            queue_name=_field(data, "queue_name", str),
            redis_message_id=_field(data, "redis_message_id", str),
            worker_id=_field(data, "worker_id", str),
            token=_field(data, "token", str),
            started_at=_field(data, "started_at", int),
            recoveries=_field(data, "recoveries", int),
            payload=_field(data, "payload", str),
            payload_encoding=_field(data, "payload_encoding", str),
        )

    def message(self) -> Message[Any]:
        """Decode the stored message.

        Raises:
          CorruptRecord: When the payload cannot be decoded with the current encoder.
        """
        try:
            return Message.decode(decode_payload(self.payload, self.payload_encoding))
        except CorruptRecord:
            raise
        except Exception as e:
            raise CorruptRecord("payload does not decode: %s" % e) from None
