"""The settings of the example site: Dramatiq on Redis through django_dramatiq, with the tracker.

The tracker reads its Redis and namespace (and its timings) from the environment, as the
``dramatiq-tracker`` command and the dashboard do: set ``DRAMATIQ_TRACKER_NAMESPACE`` (and
``DRAMATIQ_TRACKER_REDIS_URL`` for a Redis other than the broker's) in the environment of the web
processes, the workers and the operators' shells alike.  What the environment cannot say (a callback)
comes from the AppConfig, ``djangoshop.apps.DramatiqConfig``.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    # django_dramatiq's AppConfig, subclassed to give the tracker options (instead of "django_dramatiq")
    "djangoshop.apps.DramatiqConfig",
    "invoices",
]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "djangoshop.urls"
WSGI_APPLICATION = "djangoshop.wsgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
USE_TZ = True

DRAMATIQ_BROKER = {
    "BROKER": "dramatiq.brokers.redis.RedisBroker",
    "OPTIONS": {
        "url": os.environ.get("REDIS_URL", "redis://localhost:6379/0"),
        "namespace": os.environ.get("DJANGOSHOP_BROKER_NAMESPACE", "djangoshop"),
    },
    "MIDDLEWARE": [
        "dramatiq.middleware.AgeLimit",
        "dramatiq.middleware.TimeLimit",
        "dramatiq.middleware.Callbacks",
        "dramatiq.middleware.Retries",
        "dramatiq.middleware.CurrentMessage",
        "django_dramatiq.middleware.DbConnectionsMiddleware",
        # Built as TrackerMiddleware(**DramatiqConfig.middleware_trackermiddleware_kwargs()); the rest
        # of its settings from the environment.
        "dramatiq_tracker.TrackerMiddleware",
    ],
}
# rundramatiq imports each app's tasks module.
DRAMATIQ_AUTODISCOVER_MODULES = ["tasks"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"dramatiq_tracker": {"handlers": ["console"], "level": "INFO"}},
}
