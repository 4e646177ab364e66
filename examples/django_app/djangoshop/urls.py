"""The site's URLs: an invoice is rendered in the background."""

from django.urls import path
from invoices import views

urlpatterns = [path("invoices/<int:invoice_id>/render", views.render)]
