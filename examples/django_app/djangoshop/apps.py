"""django_dramatiq's AppConfig, with the tracker's options the environment cannot give."""

from typing import Any

from django_dramatiq.apps import DjangoDramatiqConfig


class DramatiqConfig(DjangoDramatiqConfig):
    """Listed in INSTALLED_APPS instead of "django_dramatiq".

    django_dramatiq builds each middleware of ``DRAMATIQ_BROKER["MIDDLEWARE"]`` with the keyword
    arguments of the classmethod ``middleware_<class name in lower case>_kwargs``, if there is one.
    """

    @classmethod
    def middleware_trackermiddleware_kwargs(cls) -> dict[str, Any]:
        from .alerts import on_tracker_event

        return {"on_event": on_tracker_event}
