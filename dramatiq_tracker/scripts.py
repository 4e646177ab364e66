"""Load the Lua scripts shipped in ``dramatiq_tracker/lua``, one per atomic operation."""

from __future__ import annotations

import functools
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script


@functools.cache
def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files("dramatiq_tracker").joinpath("lua").joinpath(name + ".lua").read_text(encoding="utf-8")


class Scripts:
    """The tracker's scripts registered on one Redis client.

    Registration only computes SHA1s; redis-py loads a script into the
    server on first use and again after a ``SCRIPT FLUSH`` or a restart.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._scripts: dict[str, Script] = {}

    def __getitem__(self, name: str) -> Script:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._client.register_script(script_source(name))
        return script
