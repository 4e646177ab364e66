"""What the demo actor did, where the runner can read it: a Redis list of JSON events."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

#: The actor began processing a message.
STARTED = "started"
#: The actor finished processing a message.
DONE = "done"


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing the demo actor did.

    Parameters:
      kind(str): :data:`STARTED` or :data:`DONE`.
      message_id(str): Dramatiq's message id.
      pid(int): The worker process that did it.
      at(float): When, in seconds since the epoch.
    """

    kind: str
    message_id: str
    pid: int
    at: float

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event | None:
        """The event in ``raw``, or None when ``raw`` is not one."""
        try:
            data = json.loads(raw)
            return cls(str(data["kind"]), str(data["message_id"]), int(data["pid"]), float(data["at"]))
        except (ValueError, TypeError, KeyError):
            return None


def record(client: redis.Redis, key: str, kind: str, message_id: str) -> None:
    """Append an event of this process to the list at ``key``."""
    client.rpush(key, Event(kind, message_id, os.getpid(), time.time()).to_json())


class Journal:
    """Read the events at ``key`` as they are appended.

    Parameters:
      client(redis.Redis)
      key(str): The list the actor appends to.
    """

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key
        self.events: list[Event] = []
        self._read = 0

    def poll(self) -> list[Event]:
        """The events appended since the last call, oldest first; they are also added to :attr:`events`."""
        raw = self.client.lrange(self.key, self._read, -1)
        self._read += len(raw)
        found = [event for event in map(Event.from_json, raw) if event is not None]
        self.events += found
        return found

    def count(self, kind: str, *, after: float = 0.0) -> dict[str, int]:
        """How many events of ``kind`` each message had, from time ``after`` on."""
        counts: dict[str, int] = {}
        for event in self.events:
            if event.kind == kind and event.at >= after:
                counts[event.message_id] = counts.get(event.message_id, 0) + 1
        return counts
