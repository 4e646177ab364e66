"""The Lua scripts: where they are, how they are loaded, and how their replies are read.

Each script in a package's ``lua/`` is one atomic operation, headed by its
KEYS/ARGV/return contract.  A line ``-- include: _name`` in a script stands
for the fragment ``lua/_name.lua``, code that several scripts share; Redis
sees one script.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any, get_args

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script


def text(value: Any) -> str:
    """Redis replies are bytes unless the client decodes them: make them str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


_allowed_replies: dict[int, frozenset[str]] = {}


def _allowed(contract: Any) -> frozenset[str]:
    # By identity: hashing a Literal type costs microseconds, and a sweep checks thousands of replies.
    allowed = _allowed_replies.get(id(contract))
    if allowed is None:
        allowed = _allowed_replies[id(contract)] = frozenset(get_args(contract))
    return allowed


def checked_reply(value: Any, contract: Any) -> Any:
    """A script's reply, checked against the ``Literal`` type of its contract.

    Raises:
      ValueError: When the script replied something its contract does not allow (a script of
        another version of the package runs under the same name).
    """
    allowed = _allowed(contract)
    if value in allowed:
        return value
    found = text(value) if value is not None else ""
    if found not in allowed:
        raise ValueError("unexpected script reply %r (expected one of %s)" % (found, ", ".join(sorted(allowed))))
    return found


def to_int(value: Any) -> int:
    """A Redis reply (or a text) as an int; 0 when it is none or not a number."""
    try:
        return int(text(value) if value is not None else 0)
    except ValueError:
        return 0


#: The package whose ``lua/`` holds the core's scripts.
CORE_SCRIPTS = "dramatiq_tracker"


#: A line of a script that stands for a fragment of ``lua/`` (a file whose name starts with "_"): code
#: that several scripts share, such as noticing that the server restarted or failed over.
_INCLUDE = re.compile(r"^-- include: (_\w+)$", re.MULTILINE)


@functools.cache
def script_source(name: str, package: str = CORE_SCRIPTS) -> str:
    """The text of ``lua/<name>.lua`` in ``package`` (the core's scripts, or those of the operator
    tools, ``dramatiq_tracker.ops``, which the core never runs), its fragments included."""
    scripts = resources.files(package).joinpath("lua")
    source = scripts.joinpath(name + ".lua").read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda found: scripts.joinpath(found[1] + ".lua").read_text(encoding="utf-8"), source)


class Scripts:
    """The scripts of one package's ``lua/`` registered on one Redis client.

    Registration only computes SHA1s; redis-py loads a script into the
    server on first use and again after a ``SCRIPT FLUSH`` or a restart.

    Parameters:
      client(redis.Redis)
      package(str): Whose scripts: the core's by default.
    """

    def __init__(self, client: redis.Redis, package: str = CORE_SCRIPTS) -> None:
        self._client = client
        self._package = package
        self._scripts: dict[str, Script] = {}

    def __call__(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self._client.register_script(script_source(name, self._package))
        return script(keys=list(keys), args=list(args))
