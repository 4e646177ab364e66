"""Django is set up before the tests are collected, as pytest-django does: the tasks modules the tests
import declare their actors on the broker of ``DRAMATIQ_BROKER``."""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoshop.settings")
django.setup()
