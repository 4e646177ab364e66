"""Fencing the sweepers: a sweeper's claim on one dead worker's recovery.

A sweeper stalls as a worker does (SIGSTOP, a GIL hold, a paused VM), or is
killed in the middle of a recovery.  :class:`RecoveryClaim` is its hold on one
dead worker's recovery, with a token: it is taken when the worker is declared
dead (``lua/declare_dead.lua``), renewed before every step, and another sweeper
takes it over only once it went ``takeover_after`` without renewal (see
``lua/_recovery.lua``).  Then:

- the steps that happen in the tracker's Redis check the token atomically:
  claiming orphans (``lua/claim_orphans.lua``), taking one from the outbox
  right before enqueueing it again (``lua/repark_outbox.lua``), forgetting the
  worker (``lua/finish_recovery.lua``); a sweeper whose claim was taken over
  is refused, raises :class:`~dramatiq_tracker.errors.RecoveryTakenOver`, and
  does nothing more for that worker;
- each lock cleaner call is noted under the claim before it is made
  (``lua/renew_recovery.lua``): the sweeper that takes over makes the calls
  that were not made, and never one twice;
- the steps elsewhere (a lock cleaner, the broker) are made only while the
  claim is known to be held: for ``takeover_after`` from when its last renewal
  was sent; a cleaner runs on a thread of its own, with a deadline, while its
  caller renews the claim;
- the work done under one claim is bounded: past half its lease, the sweeper
  lets the claim go and the next sweep goes on.

What remains: a sweeper that stalls after its last check and before the step
it guarded (a few microseconds apart) makes that step late, and a cleaner call
in progress when its process stalls finishes when it resumes.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

from .errors import RecoveryTakenOver
from .scripts import RenewStatus, checked_reply

if TYPE_CHECKING:
    from .settings import TrackerSettings
    from .store import TrackerStore

#: What ``lua/renew_recovery.lua`` replies, by status.
_RENEWED: dict[int, RenewStatus] = {0: "lost", 1: "renewed", 2: "called"}


class RecoveryClaim:
    """A sweeper's hold on one dead worker's recovery (see the module's documentation).

    The sweeper holds it for ``takeover_after`` after each renewal, counted from when the renewal
    was sent: a renewal that comes back later than that proves nothing, and the claim counts as lost.

    Parameters:
      store(TrackerStore)
      settings(TrackerSettings)
      identity(str): The digest of the dead worker's broker identity.
      worker_id(str): The dead worker.
      token(str): The claim's token (:meth:`new_token`).
      taken_at(float): ``time.monotonic()`` when the call that took it was sent.
    """

    def __init__(
        self, store: TrackerStore, settings: TrackerSettings, identity: str, worker_id: str, token: str, taken_at: float
    ) -> None:
        self.store, self.settings = store, settings
        self.identity, self.worker_id, self.token = identity, worker_id, token
        #: How long a renewal holds, in seconds.
        self.lease = settings.takeover_after / 1000
        self._valid_until = taken_at + self.lease
        #: The work done under one claim is bounded: past half the lease, the sweeper lets it go.
        self._budget_until = taken_at + self.lease / 2

    @staticmethod
    def new_token() -> str:
        return uuid.uuid4().hex

    @classmethod
    def take(
        cls, store: TrackerStore, settings: TrackerSettings, identity: str, worker_id: str, holder: str = ""
    ) -> RecoveryClaim | None:
        """Claim a worker's recovery outside a declaration of its death (``lua/take_recovery.lua``):
        None when another sweeper holds it."""
        token, sent = cls.new_token(), time.monotonic()
        if not store.take_recovery(worker_id, token, holder, settings.takeover_after, settings.history_ttl):
            return None
        return cls(store, settings, identity, worker_id, token, sent)

    @property
    def over_budget(self) -> bool:
        """Whether the sweeper did as much as it may under this claim (it then lets it go)."""
        return time.monotonic() > self._budget_until

    def renew(self, call: str = "") -> bool:
        """Renew the claim (``lua/renew_recovery.lua``), noting the lock cleaner call ``call``
        ("<message id>|<cleaner>") about to be made.

        Returns:
          bool: False when that call was made already, under this claim or the one it took over.

        Raises:
          RecoveryTakenOver: When another sweeper holds the claim now.
          redis.RedisError: When the tracker's Redis fails (the claim runs out: nothing more is done).
        """
        sent = time.monotonic()
        settings = self.settings
        reply = self.store.renew_recovery(
            self.identity, self.worker_id, self.token, settings.takeover_after, settings.history_ttl, call
        )
        status: RenewStatus = checked_reply(_RENEWED.get(reply), RenewStatus)
        if status == "lost":
            raise RecoveryTakenOver(self.worker_id)
        self._renewed(sent)
        return status == "renewed"

    def note_call(self, message_id: str, cleaner: str) -> bool:
        """Renew the claim and note a lock cleaner call about to be made; False when it was made."""
        return self.renew("%s|%s" % (message_id, cleaner))

    def check(self) -> None:
        """Before a step outside the tracker's Redis: make sure the claim is held for at least half
        its lease, renewing it if needed.

        Raises:
          RecoveryTakenOver: When it is not held any more.
        """
        if time.monotonic() > self._valid_until - self.lease / 2:
            self.renew()

    def take_parked(self, message_id: str) -> str | None:
        """Take one of the worker's orphans parked in the outbox, right before enqueueing it again.

        Returns:
          str|None: Its entry, or None when it is not there any more (it was enqueued).

        Raises:
          RecoveryTakenOver: When another sweeper holds the claim now.
        """
        sent = time.monotonic()
        entry = self.store.repark(self.identity, message_id, self.worker_id, self.token)
        self._renewed(sent)
        return entry

    def release(self) -> None:
        """Let another sweeper go on with the recovery at once (``lua/release_recovery.lua``)."""
        self.store.release_recovery(self.identity, self.worker_id, self.token)

    def _renewed(self, sent: float) -> None:
        self._valid_until = sent + self.lease
        if time.monotonic() >= self._valid_until:
            # The answer took a whole lease to come back: another sweeper may hold the claim by now.
            raise RecoveryTakenOver(self.worker_id)

    def __repr__(self) -> str:
        return "RecoveryClaim(%r, token=%s)" % (self.worker_id, self.token[:8])
