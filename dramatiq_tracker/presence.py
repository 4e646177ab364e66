"""A worker process's presence: one connection whose existence other clients see at once.

When a process dies, whatever killed it (SIGKILL, the OOM killer, a crash in a
C extension), the kernel closes its sockets, and Redis drops the connection at
once, wherever the process ran.  Each tracked worker process therefore keeps a
subscription to a channel of its own on a dedicated connection; sweepers ask
``PUBSUB NUMSUB`` for many workers in one command (``SHARDNUMSUB`` on a Redis
Cluster, whose sharded channels live in the namespace's slot), and a worker
whose presence stayed gone for ``presence_grace`` while its heartbeat was not
renewed is dead, without waiting for ``heartbeat_timeout``.

Presence cannot see what sends no FIN (a lost node, a partition): heartbeat
expiry stays the rule for those.  A stall (SIGSTOP, a GIL hold) keeps the
socket open: presence says alive, as it should.

This thread keeps the subscription: it re-establishes it at once when it drops,
and then asks the recorder to heartbeat at once, so that a sweeper that saw
the gap also sees the heartbeat renewed and does not take the gap for a death.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.cluster
from dramatiq.logging import get_logger

#: How long one wait for the connection to say something lasts, in seconds: a dropped connection is
#: noticed within it.
WATCH_INTERVAL = 0.1

#: How often the connection is pinged, in seconds, to notice a connection that a proxy keeps open
#: towards the worker after losing it towards Redis.
PING_INTERVAL = 0.25

#: How long a ping may go unanswered before the connection is taken for lost, in seconds: as long as any
#: command may take (the clients' socket timeout), so that a slow or paused server (a long script,
#: ``CLIENT PAUSE``) does not make the worker drop a subscription that is still there.
PONG_TIMEOUT = 5.0

#: How long to wait for the server to confirm a subscription, in seconds.
CONFIRM_TIMEOUT = 5.0

#: How long to wait before trying to subscribe again after a failure, in seconds (doubling up to the cap).
RETRY_DELAYS = (0.02, 0.05, 0.1, 0.2)

#: How many times in a row the server may not see a subscription this worker holds before presence
#: is given up for this worker process (a proxy between it and Redis, say): heartbeats then decide alone.
UNSEEN_LIMIT = 3

#: How many times the subscription may drop within :data:`FLAP_WINDOW` seconds before presence is given
#: up for this worker process: something between it and Redis (a proxy, a load balancer) cuts it.
FLAP_LIMIT = 5
FLAP_WINDOW = 60.0


class Presence(threading.Thread):
    """Keeps this worker process subscribed to its presence channel.

    Parameters:
      client(redis.Redis): The tracker's Redis client (a ``RedisCluster`` works too: the
        subscription is then sharded).
      channel_of(callable): The presence channel of a worker id.
      on_change(callable): Called (from this thread) when the subscription was made, dropped, or
        made again: the recorder heartbeats at once.
    """

    def __init__(self, client: redis.Redis, channel_of: Callable[[str], str], on_change: Callable[[], None]) -> None:
        super().__init__(name="dramatiq-tracker-presence", daemon=True)
        self.logger = get_logger(__name__, type(self))
        self.client = client
        self.channel_of = channel_of
        self.on_change = on_change
        self.sharded = isinstance(client, redis.cluster.RedisCluster)
        #: The worker id whose channel this process should be subscribed to, None when stopped.
        self._wanted: str | None = None
        #: The channel the server confirmed this process is subscribed to.
        self._confirmed: str | None = None
        #: Why presence is off for this process, or "" while it is on.
        self.disabled = ""
        #: Only this thread touches the connection: a PubSub is not thread-safe, and one closed under
        #: its reader goes back to the client's pool while still read here, where it would swallow
        #: another thread's reply.  Other threads ask for a new connection through this flag.
        self._pubsub: Any = None
        self._renew = False
        self._unseen = 0
        self._failures = 0
        self._drops: list[float] = []
        self._last_ping = 0.0
        self._pinged_at: float | None = None
        self._stopping = threading.Event()
        self._changed = threading.Event()
        self._lock = threading.Lock()

    # What others ask -------------------------------------------------------------------

    @property
    def subscribed(self) -> bool:
        """Whether the server confirmed this process's subscription to the current worker's channel."""
        wanted = self._wanted
        return (
            not self.disabled and not self._renew and wanted is not None and self._confirmed == self.channel_of(wanted)
        )

    def follow(self, worker_id: str) -> None:
        """Be present as ``worker_id`` (at start, and when the worker continues under a new id)."""
        with self._lock:
            self._wanted = worker_id
        self._changed.set()

    def reconnect(self) -> None:
        """Subscribe again on a new connection: the server this one reaches is no longer the master.
        (This thread drops the old one, within a :data:`WATCH_INTERVAL`.)"""
        with self._lock:
            self._renew = True
        self._changed.set()

    def unseen(self) -> None:
        """A heartbeat found no subscriber on this worker's channel although the server confirmed one:
        the subscription reaches another server, or a proxy holds it.  Subscribe again; after
        ``UNSEEN_LIMIT`` times in a row, give presence up for this process (heartbeats decide alone)."""
        self._unseen += 1
        if self._unseen >= UNSEEN_LIMIT and not self.disabled:
            self.disable(
                "the tracker's Redis did not see this worker's presence subscription %d times in a row, "
                "although the connection confirmed it (a proxy between the worker and Redis?)" % self._unseen
            )
            return
        self.reconnect()

    def seen(self) -> None:
        """A heartbeat found this worker's subscription on the server."""
        self._unseen = 0

    def disable(self, reason: str) -> None:
        """Give presence up for this process, logging why once: death is then judged by heartbeats."""
        if self.disabled:
            return
        self.disabled = reason
        self.logger.warning(
            "Presence is off for this worker process: %s.  Its death is known when its heartbeat expires "
            "(heartbeat_timeout), not within about a second.",
            reason,
        )
        with self._lock:
            self._renew = True
        self._changed.set()
        self.on_change()

    def close_inherited(self) -> None:
        """In a child process forked from this one: close the child's copy of the presence connection's
        socket, without a word on it, so that the connection ends when this process dies, however long
        the child lives.  (Only the last copy of a socket to close ends the connection.)"""
        pubsub = self._pubsub
        if pubsub is None:
            return
        connections = [getattr(pubsub, "connection", None)]
        connections += [
            getattr(node, "connection", None) for node in getattr(pubsub, "node_pubsub_mapping", {}).values()
        ]
        for connection in connections:
            sock = getattr(connection, "_sock", None)
            if sock is not None:
                sock.close()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Unsubscribe and close the connection (at shutdown)."""
        with self._lock:
            self._wanted = None
        self._stopping.set()
        self._changed.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
        if not self.is_alive() or threading.current_thread() is self:
            # (Else the thread is stuck in a read: it drops the connection when it comes out.)
            with self._lock:
                self._drop()

    # The thread ------------------------------------------------------------------------

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception:
                self.logger.exception("Unexpected error in the presence thread; it keeps running.")
                with self._lock:
                    self._drop()
                self._stopping.wait(RETRY_DELAYS[-1])
        with self._lock:
            self._drop()

    def _step(self) -> None:
        with self._lock:
            wanted = self._wanted
            if self._renew:
                self._renew = False
                self._drop()
        if wanted is None or self.disabled:
            self._changed.wait(1.0)
            self._changed.clear()
            return
        channel = self.channel_of(wanted)
        if self._pubsub is None or self._confirmed != channel:
            self._subscribe(channel)
            return
        self._watch(channel)

    def _subscribe(self, channel: str) -> None:
        self._changed.clear()
        try:
            with self._lock:
                self._drop()
                self._pubsub = self.client.pubsub()
                if self.sharded:
                    self._pubsub.ssubscribe(channel)
                else:
                    self._pubsub.subscribe(channel)
            # The server's confirmation comes first on the connection.
            deadline = time.monotonic() + CONFIRM_TIMEOUT
            while self._confirmed != channel:
                if self._stopping.is_set():
                    return
                if time.monotonic() > deadline:
                    raise redis.ConnectionError("no confirmation of the subscription to %s" % channel)
                message = self._read(WATCH_INTERVAL)
                if message is not None and message.get("type") in ("subscribe", "ssubscribe"):
                    self._confirmed = channel
        except redis.exceptions.NoPermissionError as e:
            self.disable("the tracker's Redis user may not subscribe to %s (%s); allow its channels" % (channel, e))
            return
        except redis.ResponseError as e:
            self.disable(
                "the tracker's Redis refused the subscription to %s (%s): a proxy without pub/sub?" % (channel, e)
            )
            return
        except (redis.RedisError, OSError) as e:
            self._lost("subscribing to %s failed: %s" % (channel, e))
            return
        if self._failures:
            self.logger.info("Presence subscription to %s made again.", channel)
        self._failures = 0
        self._last_ping = time.monotonic()
        self._pinged_at = None
        self.on_change()

    def _watch(self, channel: str) -> None:
        try:
            # Read first: after a stall (a GIL hold, SIGSTOP), the pong is there to be read.
            message = self._read(WATCH_INTERVAL)
            kind = message.get("type") if message is not None else None
            if kind == "pong":
                self._pinged_at = None
            elif kind in ("subscribe", "ssubscribe"):
                # redis-py reconnected and subscribed again by itself: there was a gap.
                self.logger.debug("Presence connection to %s made again by the client.", channel)
                self._pinged_at = None
                self._dropped()
                self.on_change()
            elif kind in ("unsubscribe", "sunsubscribe"):
                # The server ended it (a slot that moved to another node, say): subscribe again.
                raise redis.ConnectionError("the server ended the presence subscription to %s" % channel)
            now = time.monotonic()
            if self._pinged_at is not None and now - self._pinged_at > PONG_TIMEOUT:
                raise redis.ConnectionError("the presence connection did not answer a ping")
            # (A Cluster client pings on a connection of its own, not the shard's: its sharded
            # subscription is watched through its reads only.)
            if not self.sharded and self._pinged_at is None and now - self._last_ping >= PING_INTERVAL:
                self._pubsub.ping()
                self._pinged_at = self._last_ping = now
        except (redis.RedisError, OSError) as e:
            self._dropped()
            self._lost("the presence connection dropped: %s" % e)

    def _dropped(self) -> None:
        now = time.monotonic()
        self._drops = [at for at in self._drops if now - at < FLAP_WINDOW] + [now]
        if len(self._drops) >= FLAP_LIMIT:
            self.disable(
                "its presence connection dropped %d times within %d s (a proxy or a load balancer between "
                "the worker and Redis that cuts it?)" % (len(self._drops), FLAP_WINDOW)
            )

    def _read(self, timeout: float) -> dict[str, Any] | None:
        if self.sharded:
            message: dict[str, Any] | None = self._pubsub.get_sharded_message(timeout=timeout)
        else:
            message = self._pubsub.get_message(timeout=timeout)
        return message

    def _lost(self, why: str) -> None:
        if self.disabled:
            return
        with self._lock:
            self._drop()
        self._failures += 1
        if self._failures == 1:
            self.logger.debug("Presence lost (%s); subscribing again.", why)
        self.on_change()
        self._changed.wait(RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS)) - 1])
        self._changed.clear()

    def _drop(self) -> None:
        # Called with the lock held.
        pubsub, self._pubsub, self._confirmed = self._pubsub, None, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception as e:  # closing a broken connection must not stop anything
                self.logger.debug("Closing the presence connection failed: %s", e)
