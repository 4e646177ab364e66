"""What the dashboard may change when its actions are enabled: delete a uniqueness lock, recover dead
workers now, cancel or abort a message.  Each is a GET that shows what it would do and asks to confirm,
then a POST (with a CSRF token, checked by the application) that does it through
:class:`~dramatiq_tracker.ops.actions.Operator`, which writes it to the event stream with who did it."""

from __future__ import annotations

from typing import Any

from .pages import Pages, Rendered
from .wsgi import Request

#: The modes of an abort: dramatiq-abort's.
ABORT_MODES = ("cancel", "abort")


def _unavailable(reason: str) -> Rendered:
    return Rendered("refused.html", {"reason": reason}, status=409, live=False)


def delete_lock(pages: Pages, request: Request) -> Rendered:
    digest = request.arg("digest") or request.form.get("digest", "")
    if request.method == "GET":
        lock = pages.inspector.lock(digest) if digest else None
        if lock is None:
            return Rendered("missing.html", {"what": "lock", "name": digest}, status=404, live=False)
        context = {"action": "delete-lock", "lock": lock, "now": pages.inspector.server_time()}
        return Rendered("confirm.html", context, live=False)
    deleted = pages.operator(request).delete_lock(digest)
    return Rendered("done.html", {"action": "delete-lock", "digest": digest, "lock": deleted}, live=False)


def recover(pages: Pages, request: Request) -> Rendered:
    if not pages.can_recover:
        return _unavailable("Recovering needs the application's broker: start the dashboard with --broker.")
    operator = pages.operator(request)
    if request.method == "GET":
        plan = operator.recover(dry_run=True)
        context = {"action": "recover", "plan": plan, "left_out": operator.left_out(plan)}
        return Rendered("confirm.html", context, live=False)
    return Rendered("done.html", {"action": "recover", "report": operator.recover()}, live=False)


def abort(pages: Pages, request: Request) -> Rendered:
    if not pages.can_abort:
        return _unavailable(
            "Cancelling and aborting need the application's broker (--broker) with dramatiq-abort's Abortable."
        )
    message_id = request.arg("id") or request.form.get("id", "")
    mode = request.arg("mode") or request.form.get("mode", "")
    if not message_id or mode not in ABORT_MODES:
        return Rendered("refused.html", {"reason": "Say which message, and 'cancel' or 'abort'."}, 400, live=False)
    operator = pages.operator(request)
    known = operator.knows(message_id)
    if request.method == "GET":
        view = pages.inspector.message(message_id)
        context: dict[str, Any] = {"action": "abort", "message_id": message_id, "mode": mode, "view": view}
        context.update(known=known, lookup=operator.broker_lookup, now=pages.inspector.server_time())
        return Rendered("confirm.html", context, live=False)
    if not known and request.form.get("force") != "1":
        # The confirmation said it is unknown, and asked to tick that it may be queued out of sight.
        return Rendered("missing.html", {"what": "message", "name": message_id}, status=404, live=False)
    operator.abort(message_id, mode=mode)
    return Rendered("done.html", {"action": "abort", "message_id": message_id, "mode": mode}, live=False)
