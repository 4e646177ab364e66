"""The site's WSGI application, with the tracker's dashboard mounted under /tracker/.

The dashboard reads the Redis and the namespace of the broker's tracker (``DRAMATIQ_BROKER``).  It
trusts whoever reaches it: here it asks for the token in ``DRAMATIQ_TRACKER_DASHBOARD_TOKEN``; put your
own authentication (a proxy, a WSGI middleware) in front of the prefix in production.
"""

import os

import dramatiq
from django.core.wsgi import get_wsgi_application

from dramatiq_tracker.ops import make_wsgi_middleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoshop.settings")

django_application = get_wsgi_application()  # sets Django up, and so the broker
dashboard = make_wsgi_middleware(
    "/tracker", broker=dramatiq.get_broker(), token=os.environ.get("DRAMATIQ_TRACKER_DASHBOARD_TOKEN")
)
application = dashboard(django_application)
