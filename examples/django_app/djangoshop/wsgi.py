"""The site's WSGI application, with the tracker's dashboard mounted under /tracker/.

The dashboard reads the Redis and the namespace of the broker's tracker (``DRAMATIQ_BROKER``).  It
trusts whoever reaches it: here it asks for the token in ``DRAMATIQ_TRACKER_DASHBOARD_TOKEN``; put your
own authentication (a proxy, a WSGI middleware) in front of the prefix in production.
"""

import os

import dramatiq
from django.conf import settings
from django.core.wsgi import get_wsgi_application

from dramatiq_tracker.ops import make_wsgi_middleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoshop.settings")

django_application = get_wsgi_application()  # sets Django up, and so the broker
# The dashboard answers only the host names it is served as: the site's (exact names; a Django pattern
# such as ".example.com" is refused at start-up).
dashboard = make_wsgi_middleware(
    "/tracker",
    broker=dramatiq.get_broker(),
    token=os.environ.get("DRAMATIQ_TRACKER_DASHBOARD_TOKEN"),
    allowed_hosts=settings.ALLOWED_HOSTS,
)
application = dashboard(django_application)
