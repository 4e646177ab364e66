"""The invoices' views."""

from django.http import HttpRequest, JsonResponse

from dramatiq_tracker import DuplicateMessage

from .tasks import render_invoice


def render(request: HttpRequest, invoice_id: int) -> JsonResponse:
    """Queue the rendering of an invoice; 409 while one is queued or running."""
    try:
        message = render_invoice.send(invoice_id)
    except DuplicateMessage:
        return JsonResponse({"error": "invoice %d is being rendered" % invoice_id}, status=409)
    return JsonResponse({"message_id": message.message_id}, status=202)
