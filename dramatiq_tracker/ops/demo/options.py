"""What a demo run may be asked for, and its limits."""

from __future__ import annotations

import dataclasses

#: Worker threads per demo worker.  Dramatiq prefetches twice as many messages.
THREADS = 4

#: The most messages worker A can hold at once: ``THREADS`` running and as many prefetched.
MAX_MESSAGES = 2 * THREADS

DEFAULT_MESSAGES = MAX_MESSAGES

#: How long each message's work takes by default, in milliseconds.
DEFAULT_DURATION = 3000

#: The shortest work the demo accepts, in milliseconds: A must still be busy when B has booted.
MIN_DURATION = 2000

#: The longest work the demo accepts, in milliseconds.
MAX_DURATION = 60_000


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What the user asked for.

    Parameters:
      url(str|None): The Redis URL; None to look at the environment, then start an embedded Redis.
      messages(int): How many messages to enqueue, at most :data:`MAX_MESSAGES`.
      duration(int): How long each message's work takes, in milliseconds.
    """

    url: str | None = None
    messages: int = DEFAULT_MESSAGES
    duration: int = DEFAULT_DURATION
