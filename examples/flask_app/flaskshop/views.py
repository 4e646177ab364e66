"""The views: a report is built in the background."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from dramatiq_tracker import DuplicateMessage

from .tasks import build_report

reports = Blueprint("reports", __name__)


@reports.post("/reports/<int:week>")
def build(week: int) -> ResponseReturnValue:
    """Queue the build of a week's report; 409 while one is queued or running."""
    try:
        message = build_report.send(week)
    except DuplicateMessage:
        return jsonify(error="the report of week %d is being built" % week), 409
    return jsonify(message_id=message.message_id), 202
