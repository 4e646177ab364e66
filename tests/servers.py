"""Real Redis servers of the special kinds the tracker must run on: a Redis Cluster, a
Sentinel-managed master, a TLS-only server, and a server with an ACL user limited to some keys.

Each kind is a context manager class that starts real ``redis-server`` processes on free ports
of 127.0.0.1, in a temporary directory of its own, and always stops them and removes the
directory, on failure too:

- :class:`RedisClusterServers`: three masters joined with ``redis-cli --cluster create``, with
  helpers to find a key's slot and owner and to migrate one slot to another master mid-run;
- :class:`RedisSentinelServers`: a master, a replica and three Sentinels (quorum 2), with helpers
  to force a failover, and to freeze the master so that writes it accepts are lost;
- :class:`TlsRedisServer`: TLS only (``--port 0``), with a throwaway CA and certificates made by
  ``openssl`` when it starts (no key is committed);
- :class:`AclRedisServer`: a server on which ACL users restricted to key patterns are created.

The pytest fixtures at the bottom wrap them (``tests/conftest.py`` loads this module as a
plugin). When a binary or a feature is missing (``redis-server``, ``redis-cli``, ``openssl``, a
``redis-server`` built without TLS) the fixtures skip the test with the reason, except when the
``CI`` environment variable is set: there it is a failure.

Nothing here sends ``FLUSHALL`` or ``FLUSHDB``: every server is started empty for the purpose and
thrown away with its directory. Waits are bounded, poll for the awaited state and derive their
bounds from the configured timings; none is a fixed sleep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
import redis.sentinel

from .support import free_port, wait_for

#: How long a redis-server process may take to answer its first PING, in milliseconds.
START_TIMEOUT = 10_000
#: How often the waits below poll, in milliseconds.
POLL_INTERVAL = 20
#: How many times a server is started again on new ports when its port was taken meanwhile.
PORT_ATTEMPTS = 3
#: The host every server listens on.
HOST = "127.0.0.1"

#: An address: (host, port).
Address = tuple[str, int]


class ServerUnavailable(RuntimeError):
    """A binary or a server feature needed here is missing on this machine.

    The fixtures turn it into a skip, or into a failure when ``CI`` is set.
    """


def find_binary(name: str) -> str:
    """The path of executable ``name`` on ``PATH``.

    Parameters:
      name(str): ``redis-server``, ``redis-cli`` or ``openssl``.

    Raises:
      ServerUnavailable: If it is not on ``PATH``.
    """
    found = shutil.which(name)
    if found is None:
        raise ServerUnavailable("%s is not installed (not found on PATH)" % name)
    return found


def _seconds(milliseconds: int | float) -> float:
    return milliseconds / 1000


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def _address(found: Any) -> Address:
    """An address as Sentinel answers it, bytes or str."""
    host = found[0].decode() if isinstance(found[0], bytes) else str(found[0])
    return host, int(found[1])


def _info_field(info: dict[str, Any], name: str) -> str:
    return str(info.get(name, ""))


#: What a redis-server built without TLS says when given TLS options (with "TLS" in the line).
_NO_TLS_SIGNS = ("not supported", "Bad directive", "Unrecognized")


class _PortTaken(Exception):
    """The port chosen for a server was taken by someone else between choosing and binding."""


class ServerProcess:
    """One ``redis-server`` process (a Redis node or a Sentinel), its output in ``<directory>/<name>.log``.

    Parameters:
      name(str): A name for its log file and messages.
      port(int): The port it serves on (a TLS-only server's TLS port).
      arguments(list[str]): The command line after the binary.
      directory(Path): Where it keeps its files and its log.
    """

    def __init__(self, name: str, port: int, arguments: list[str], directory: Path) -> None:
        self.name = name
        self.port = port
        self.arguments = arguments
        self.directory = directory
        self.log_path = directory / ("%s.log" % name)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> Address:
        return HOST, self.port

    @property
    def pid(self) -> int:
        assert self.process is not None, "%s is not running" % self.name
        return self.process.pid

    def start(self, ready: Callable[[], bool], timeout: int = START_TIMEOUT) -> None:
        """Start the process and wait until ``ready()`` says it serves.

        Parameters:
          ready(Callable[[], bool]): Whether the server answers (a PING that works).
          timeout(int): How long to wait, in milliseconds.

        Raises:
          ServerUnavailable: If the binary is missing, or the server refuses a feature (TLS).
          RuntimeError: If it exits or does not answer in time; its log is in the message.
        """
        command = [find_binary("redis-server"), *self.arguments]
        with open(self.log_path, "ab") as log:
            # A session of its own: a Ctrl-C in the terminal does not reach it; close() stops it.
            self.process = subprocess.Popen(
                command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + _seconds(timeout)
        while not ready():
            code = self.process.poll()
            if code is not None:
                self.process = None
                output = self.log()
                if "Address already in use" in output:
                    raise _PortTaken(output)
                if "TLS" in output and any(sign in output for sign in _NO_TLS_SIGNS):
                    raise ServerUnavailable("redis-server was built without TLS support:\n%s" % output[-2000:])
                raise RuntimeError("%s exited with code %s:\n%s" % (self.name, code, output[-4000:]))
            if time.monotonic() > deadline:
                raise RuntimeError("%s did not answer within %d ms:\n%s" % (self.name, timeout, self.log()[-4000:]))
            time.sleep(_seconds(POLL_INTERVAL))

    def log(self) -> str:
        """Everything the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pause(self) -> None:
        """SIGSTOP: the process is frozen, as a stalled VM would be; its sockets stay open."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: the process carries on as if no time had passed."""
        os.kill(self.pid, signal.SIGCONT)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGKILL the process and reap it (its data is thrown away anyway)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        self.process = None


def _redis_arguments(port: int, directory: Path) -> list[str]:
    """Arguments that every throwaway node gets: loopback only, no persistence, log to stdout."""
    return [
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--logfile", "",
    ]  # fmt: skip


class _Servers:
    """What the server kinds share: a temporary directory, processes, and a close() that removes both."""

    #: The prefix of the temporary directory.
    prefix = "tracker-servers-"

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=self.prefix))
        self.processes: list[ServerProcess] = []
        self._clients: dict[tuple[Address, tuple[tuple[str, Any], ...]], redis.Redis] = {}

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self: _S) -> _S:  # pragma: no cover - each kind has its own
        raise NotImplementedError

    def _start_process(
        self, name: str, arguments: Callable[[int, Path], list[str]], ready: Callable[[int], bool]
    ) -> ServerProcess:
        """Start one process on a free port, trying new ports if the chosen one is taken meanwhile.

        Parameters:
          name(str): Its name (and the name of its subdirectory).
          arguments(Callable[[int, Path], list[str]]): The command line for a port and a directory.
          ready(Callable[[int], bool]): Whether the process on that port answers.
        """
        directory = self.directory / name
        directory.mkdir(exist_ok=True)
        for attempt in range(PORT_ATTEMPTS):
            port = free_port()
            process = ServerProcess(name, port, arguments(port, directory), directory)
            self.processes.append(process)
            try:
                process.start(functools.partial(ready, port))
            except _PortTaken:
                self.processes.remove(process)
                if attempt == PORT_ATTEMPTS - 1:
                    raise RuntimeError("%s: no free port after %d attempts" % (name, PORT_ATTEMPTS)) from None
                continue
            return process
        raise AssertionError("unreachable")

    def _client(self, address: Address, **kwargs: Any) -> redis.Redis:
        """A plain client of one process (one per address and arguments), closed by close().

        Parameters:
          address(Address): The process's address.
          **kwargs: More arguments of ``redis.Redis``; ``socket_timeout`` is 5 s by default.
        """
        kwargs.setdefault("socket_timeout", 5)
        cache_key = (address, tuple(sorted(kwargs.items())))
        client = self._clients.get(cache_key)
        if client is None:
            client = self._clients[cache_key] = redis.Redis(host=address[0], port=address[1], **kwargs)
        return client

    def close(self) -> None:
        """Stop every process and remove the directory; safe to call twice, and after a failed start."""
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        for process in self.processes:
            process.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _pings(self, port: int, **kwargs: Any) -> bool:
        with contextlib.closing(redis.Redis(host=HOST, port=port, socket_timeout=1, **kwargs)) as client:
            return _answers(client)

    def _started(self, start: Callable[[], None]) -> None:
        """Run ``start``; on any failure, stop what it started before raising."""
        try:
            start()
        except BaseException:
            self.close()
            raise


_S = TypeVar("_S", bound=_Servers)


# Redis Cluster ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClusterNode:
    """A master of a :class:`RedisClusterServers`.

    Parameters:
      host(str)
      port(int)
      node_id(str): Its cluster node id (``CLUSTER MYID``).
    """

    host: str
    port: int
    node_id: str

    @property
    def address(self) -> Address:
        return self.host, self.port

    @property
    def url(self) -> str:
        """``redis://host:port/0``: a plain client of this node alone, or a startup node of RedisCluster."""
        return "redis://%s:%d/0" % (self.host, self.port)


class RedisClusterServers(_Servers):
    """A Redis Cluster of ``masters`` masters and no replicas, on 127.0.0.1.

    Each node is ``redis-server --cluster-enabled yes --cluster-config-file nodes.conf`` with its
    bus on a port of its own (``--cluster-port``); ``redis-cli --cluster create ...
    --cluster-replicas 0 --cluster-yes`` spreads the 16384 slots over them. start() returns when
    every node says ``cluster_state:ok`` and all nodes agree on who owns which slot.

    Parameters:
      masters(int): How many masters (``redis-cli --cluster create`` needs at least 3).
      node_timeout(int): ``cluster-node-timeout``, in milliseconds.

    Example:
      >>> with RedisClusterServers() as cluster:
      ...     client = cluster.client()
      ...     owner = cluster.namespace_owner("my-namespace")
      ...     cluster.migrate_slot(cluster.namespace_slot("my-namespace"), cluster.other_master(owner))
    """

    prefix = "tracker-cluster-"

    def __init__(self, *, masters: int = 3, node_timeout: int = 5000) -> None:
        super().__init__()
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters, got %d" % masters)
        self.masters = masters
        self.node_timeout = node_timeout
        self.nodes: list[ClusterNode] = []

    @property
    def convergence_timeout(self) -> int:
        """How long the nodes may take to agree after a change, in milliseconds: a few gossip rounds
        (a node pings a random node every 100 ms and any node not heard of in node_timeout / 2)."""
        return 2 * self.node_timeout + START_TIMEOUT

    def start(self) -> RedisClusterServers:
        """Start the nodes, create the cluster and wait until it serves every slot.

        Raises:
          ServerUnavailable: If ``redis-server`` or ``redis-cli`` is missing.
          RuntimeError: If a node does not start or the cluster does not converge in time.
        """
        self._started(self._start)
        return self

    def _start(self) -> None:
        cli = find_binary("redis-cli")
        find_binary("redis-server")
        for index in range(self.masters):
            self._start_process("node-%d" % index, self._node_arguments, self._pings)
        addresses = ["%s:%d" % process.address for process in self.processes]
        created = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=_seconds(self.convergence_timeout),
        )
        if created.returncode != 0:
            raise RuntimeError("redis-cli --cluster create failed:\n%s%s" % (created.stdout, created.stderr))
        self.nodes = [
            ClusterNode(HOST, process.port, self._client(process.address).execute_command("CLUSTER", "MYID").decode())
            for process in self.processes
        ]
        self.wait_converged()

    def _node_arguments(self, port: int, directory: Path) -> list[str]:
        # The bus port is chosen with the port, so that a retry after "Address already in use" changes both.
        return [
            *_redis_arguments(port, directory),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout),
            "--cluster-port", str(free_port()),
        ]  # fmt: skip

    # Addresses ---------------------------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Every node's ``redis://`` URL."""
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """A startup node's URL, for ``redis.RedisCluster.from_url``."""
        return self.nodes[0].url

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        """A new ``redis.RedisCluster`` client of this cluster (the caller closes it).

        Parameters:
          **kwargs: More arguments of ``redis.RedisCluster``.
        """
        return redis.RedisCluster(host=HOST, port=self.nodes[0].port, **kwargs)

    def node_client(self, node: ClusterNode) -> redis.Redis:
        """A plain client of one node (it gets MOVED/ASK errors instead of following them)."""
        return self._client(node.address)

    def node(self, node_id: str) -> ClusterNode:
        """The node with id ``node_id``."""
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(node_id)

    # Slots -------------------------------------------------------------------------------------------------

    def keyslot(self, key: str) -> int:
        """The hash slot of ``key``, as the server computes it (``CLUSTER KEYSLOT``)."""
        return int(self.node_client(self.nodes[0]).execute_command("CLUSTER", "KEYSLOT", key))

    def namespace_slot(self, namespace: str) -> int:
        """The slot of every key of a tracker namespace: they all share the hash tag ``{namespace}``."""
        return self.keyslot("{%s}:v1:workers" % namespace)

    def slot_map(self, node: ClusterNode | None = None) -> dict[int, str]:
        """Who owns what according to ``node`` (the first node by default): slot range start -> node id.

        Parameters:
          node(ClusterNode): Whose view (``CLUSTER SHARDS`` is 7.0+, ``CLUSTER SLOTS`` works everywhere).
        """
        view: dict[int, str] = {}
        for start, _end, master, *_replicas in self.node_client(node or self.nodes[0]).execute_command(
            "CLUSTER", "SLOTS"
        ):
            view[int(start)] = master[2].decode()
        return view

    def slot_owner(self, slot: int, node: ClusterNode | None = None) -> ClusterNode:
        """The master that owns ``slot``, according to ``node`` (the first node by default)."""
        client = self.node_client(node or self.nodes[0])
        for start, end, master, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return self.node(master[2].decode())
        raise KeyError("slot %d is not assigned" % slot)

    def key_owner(self, key: str) -> ClusterNode:
        """The master that owns the slot of ``key``."""
        return self.slot_owner(self.keyslot(key))

    def namespace_owner(self, namespace: str) -> ClusterNode:
        """The master that owns every key of a tracker namespace."""
        return self.slot_owner(self.namespace_slot(namespace))

    def other_master(self, node: ClusterNode) -> ClusterNode:
        """A master other than ``node`` (the first one in port order, so the choice is stable)."""
        return next(other for other in self.nodes if other.node_id != node.node_id)

    def node_not_owning_namespace(self, namespace: str) -> ClusterNode:
        """A master that does *not* own the namespace's slot: a startup node, or a migration target."""
        return self.other_master(self.namespace_owner(namespace))

    def wait_converged(self, timeout: int | None = None) -> None:
        """Wait until every node serves (``cluster_state:ok``, all slots assigned) and all agree on owners.

        Parameters:
          timeout(int): In milliseconds; :attr:`convergence_timeout` by default.

        Raises:
          AssertionError: If they do not agree in time.
        """

        def converged() -> bool:
            views = []
            for node in self.nodes:
                info = self.node_client(node).execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info or "cluster_slots_assigned:16384" not in info:
                    return False
                views.append(self.slot_map(node))
            return all(view == views[0] for view in views)

        wait_for(converged, _seconds(timeout or self.convergence_timeout), _seconds(POLL_INTERVAL), "cluster")

    def migrate_slot(
        self,
        slot: int,
        target: ClusterNode,
        *,
        batch: int = 100,
        timeout: int = 5000,
        during: Callable[[int], None] | None = None,
    ) -> int:
        """Move ``slot`` and its keys from its owner to ``target``, while clients keep working.

        The documented manual resharding (``CLUSTER SETSLOT`` in the Redis manual), which
        ``redis-cli --cluster reshard`` also does but cannot aim at one given slot:

        1. on the target: ``CLUSTER SETSLOT <slot> IMPORTING <source id>``;
        2. on the source: ``CLUSTER SETSLOT <slot> MIGRATING <target id>``; from here on the source
           answers ``ASK`` for keys it no longer has, and ``TRYAGAIN`` for multi-key commands and
           scripts whose keys are split between the two nodes;
        3. until ``CLUSTER GETKEYSINSLOT <slot> <batch>`` on the source is empty:
           ``MIGRATE <target> "" 0 <timeout> KEYS <keys...>`` (atomic per batch);
        4. ``CLUSTER SETSLOT <slot> NODE <target id>`` on the target, then on the source, then on the
           other masters; then wait until every node agrees.

        If a step fails, the slot is set ``STABLE`` again on both nodes and the error raised.

        Parameters:
          slot(int): The hash slot.
          target(ClusterNode): The master that will own it.
          batch(int): How many keys one MIGRATE moves.
          timeout(int): MIGRATE's timeout, in milliseconds.
          during(Callable[[int], None]): Called while the slot is half-migrated (MIGRATING on the
            source, IMPORTING on the target) with how many keys moved so far: once before the first
            batch, then after each batch. A test uses it to act mid-migration.

        Returns:
          int: How many keys were moved.

        Raises:
          ValueError: If ``target`` already owns the slot.
        """
        source = self.slot_owner(slot)
        if source.node_id == target.node_id:
            raise ValueError("node %s already owns slot %d" % (target.node_id, slot))
        source_client, target_client = self.node_client(source), self.node_client(target)
        moved = 0
        try:
            target_client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
            source_client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
            if during is not None:
                during(moved)
            while True:
                keys = source_client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                source_client.execute_command("MIGRATE", target.host, target.port, "", 0, timeout, "KEYS", *keys)
                moved += len(keys)
                if during is not None:
                    during(moved)
        except BaseException:
            for client in (source_client, target_client):
                with contextlib.suppress(redis.RedisError):
                    client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
            raise
        others = [node for node in self.nodes if node.node_id not in (source.node_id, target.node_id)]
        for node in (target, source, *others):
            self.node_client(node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        wait_for(
            lambda: all(self.slot_owner(slot, node).node_id == target.node_id for node in self.nodes),
            _seconds(self.convergence_timeout),
            _seconds(POLL_INTERVAL),
            "every node to see slot %d on %s" % (slot, target.node_id),
        )
        return moved


# Sentinel --------------------------------------------------------------------------------------------------

#: Sentinel's fixed periods (sentinel.c), in milliseconds: hello messages on ``__sentinel__:hello``
#: (how Sentinels and replicas are discovered) every SENTINEL_PUBLISH_PERIOD; a Sentinel turns an old
#: master that reports itself master into a replica only after it has reported that role for
#: 4 x SENTINEL_PUBLISH_PERIOD; INFO every SENTINEL_INFO_PERIOD (every second during a failover).
SENTINEL_PUBLISH_PERIOD = 2000
SENTINEL_INFO_PERIOD = 10_000
SENTINEL_DEMOTION_WAIT = 4 * SENTINEL_PUBLISH_PERIOD


class RedisSentinelServers(_Servers):
    """A master, one replica and three Sentinels monitoring them as ``service_name`` with quorum 2.

    start() returns when the replica is in sync and every Sentinel knows the master, the replica
    and the two other Sentinels, so that a failover can start at once.

    Parameters:
      service_name(str): The monitored master's name.
      down_after(int): ``down-after-milliseconds``: how long the master may be silent before a
        Sentinel considers it down, in milliseconds.
      failover_timeout(int): ``failover-timeout``, in milliseconds (a Sentinel does not try a
        failover of the same master again within twice that).
      quorum(int): How many Sentinels must agree the master is down.

    Example:
      >>> with RedisSentinelServers() as sentinel:
      ...     client = sentinel.sentinel().master_for(sentinel.service_name)
      ...     old, new = sentinel.failover()
    """

    prefix = "tracker-sentinel-"

    def __init__(
        self, *, service_name: str = "mymaster", down_after: int = 1000, failover_timeout: int = 3000, quorum: int = 2
    ) -> None:
        super().__init__()
        self.service_name = service_name
        self.down_after = down_after
        self.failover_timeout = failover_timeout
        self.quorum = quorum
        self.data_nodes: list[ServerProcess] = []
        self.sentinels: list[ServerProcess] = []

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL of its Sentinels and service, as the tracker takes it."""
        hosts = ",".join("%s:%d" % address for address in self.sentinel_addresses)
        return "redis+sentinel://%s/%s" % (hosts, self.service_name)

    @property
    def failover_bound(self) -> int:
        """How long a failover may take, in milliseconds, from the master's death (or SENTINEL
        FAILOVER) until every Sentinel names the new master: detection (down_after), agreement
        (a Sentinel asks the others every second), possibly one election lost to a split vote
        (retried after 2 x failover_timeout), the promotion itself, and the new configuration's
        propagation (hello messages)."""
        return self.down_after + 2 * self.failover_timeout + self.failover_timeout + 4 * SENTINEL_PUBLISH_PERIOD

    @property
    def demotion_bound(self) -> int:
        """How long until a resumed old master has become a replica of the new one, in milliseconds:
        Sentinel's fixed wait before reconfiguring it, an INFO period, and the resynchronisation."""
        return SENTINEL_DEMOTION_WAIT + SENTINEL_INFO_PERIOD + 2 * self.failover_timeout + START_TIMEOUT

    def start(self) -> RedisSentinelServers:
        """Start the master, the replica and the Sentinels, and wait until the Sentinels know them all.

        Raises:
          ServerUnavailable: If ``redis-server`` is missing.
          RuntimeError: If a process does not start, or the Sentinels do not discover each other in time.
        """
        self._started(self._start)
        return self

    def _start(self) -> None:
        master = self._start_process("master", self._data_arguments, self._pings)
        self.data_nodes.append(master)

        def replica_arguments(port: int, directory: Path) -> list[str]:
            return [*self._data_arguments(port, directory), "--replicaof", HOST, str(master.port)]

        replica = self._start_process("replica", replica_arguments, self._pings)
        self.data_nodes.append(replica)
        wait_for(
            lambda: self.replication(replica.address).get("master_link_status") == "up",
            _seconds(START_TIMEOUT),
            _seconds(POLL_INTERVAL),
            "the replica to sync",
        )
        for index in range(3):
            self.sentinels.append(self._start_process("sentinel-%d" % index, self._sentinel_arguments, self._pings))
        wait_for(
            self._sentinels_ready,
            _seconds(START_TIMEOUT + 4 * SENTINEL_PUBLISH_PERIOD),
            _seconds(POLL_INTERVAL),
            "the Sentinels to discover each other and the replica",
        )

    @staticmethod
    def _data_arguments(port: int, directory: Path) -> list[str]:
        # A full sync starts at once instead of waiting 5 s for more replicas (repl-diskless-sync-delay).
        return [*_redis_arguments(port, directory), "--repl-diskless-sync-delay", "0"]

    def _sentinel_arguments(self, port: int, directory: Path) -> list[str]:
        # A Sentinel rewrites its configuration file, so it must be a file of its own.
        config = directory / "sentinel.conf"
        master = self.data_nodes[0]
        config.write_text(
            "\n".join(
                [
                    "port %d" % port,
                    "bind %s" % HOST,
                    'dir "%s"' % directory,
                    'logfile ""',
                    "sentinel monitor %s %s %d %d" % (self.service_name, HOST, master.port, self.quorum),
                    "sentinel down-after-milliseconds %s %d" % (self.service_name, self.down_after),
                    "sentinel failover-timeout %s %d" % (self.service_name, self.failover_timeout),
                    "sentinel parallel-syncs %s 1" % self.service_name,
                    "",
                ]
            )
        )
        return [str(config), "--sentinel"]

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            try:
                state: dict[str, Any] = self._client(sentinel.address).sentinel_master(self.service_name)  # type: ignore[assignment]
            except redis.RedisError:
                return False
            if int(state.get("num-slaves", 0)) < 1 or int(state.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    # Addresses ---------------------------------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[Address]:
        """``(host, port)`` of each Sentinel, as ``redis.sentinel.Sentinel`` takes them."""
        return [sentinel.address for sentinel in self.sentinels]

    def sentinel(self, **kwargs: Any) -> redis.sentinel.Sentinel:
        """A new ``redis.sentinel.Sentinel`` of these Sentinels (the caller closes its clients).

        Parameters:
          **kwargs: Connection arguments for the master and replica clients it makes.
        """
        return redis.sentinel.Sentinel(self.sentinel_addresses, sentinel_kwargs={"socket_timeout": 1}, **kwargs)

    def master_address(self) -> Address:
        """The master's address on which most Sentinels agree.

        Raises:
          RuntimeError: If no majority of Sentinels names the same master.
        """
        votes: dict[Address, int] = {}
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError):
                found = self._client(sentinel.address).sentinel_get_master_addr_by_name(self.service_name)
                if found:
                    address = _address(found)
                    votes[address] = votes.get(address, 0) + 1
        for address, count in votes.items():
            if count > len(self.sentinels) // 2:
                return address
        raise RuntimeError("the Sentinels do not agree on a master: %r" % votes)

    def master_url(self) -> str:
        """``redis://`` URL of the current master (a plain client: it does not follow failovers)."""
        return "redis://%s:%d/0" % self.master_address()

    def data_addresses(self) -> list[Address]:
        """The master's and the replica's addresses, in start order (roles change with failovers)."""
        return [node.address for node in self.data_nodes]

    def process_at(self, address: Address) -> ServerProcess:
        """The master or replica process listening at ``address``."""
        for node in self.data_nodes:
            if node.address == address:
                return node
        raise KeyError(address)

    def replication(self, address: Address) -> dict[str, Any]:
        """``INFO replication`` of the node at ``address``, straight from it ({} if it does not answer)."""
        try:
            return dict(self._client(address, socket_timeout=1).info("replication"))
        except (redis.RedisError, OSError):
            return {}

    def role(self, address: Address) -> str:
        """What the node at ``address`` says it is: ``"master"``, ``"slave"``, or ``""`` if it does not answer."""
        return _info_field(self.replication(address), "role")

    # Failovers ---------------------------------------------------------------------------------------------

    def failover(self, timeout: int | None = None) -> tuple[Address, Address]:
        """Force a failover with ``SENTINEL FAILOVER`` and wait until it is complete.

        ``SENTINEL FAILOVER`` promotes the replica without asking the other Sentinels (no quorum, no
        election) while the old master keeps running. Complete means: every Sentinel names the new
        master, the new master says ``role:master``, and the old master says ``role:slave`` of the
        new one with its link up. Between the promotion and that last step (Sentinel waits
        :data:`SENTINEL_DEMOTION_WAIT` before demoting it) the old master still accepts writes from
        clients connected to it, and those writes are lost when it resynchronises: a failover loses
        writes, as a real one does.

        Parameters:
          timeout(int): In milliseconds; by default :attr:`failover_bound` + :attr:`demotion_bound`.

        Returns:
          tuple[Address, Address]: The old and the new master.

        Raises:
          AssertionError: If it does not complete in time.
        """
        budget = _seconds(timeout or (self.failover_bound + self.demotion_bound))
        deadline = time.monotonic() + budget
        old = self.master_address()
        client = self._client(self.sentinels[0].address)

        def started() -> bool:
            try:
                return bool(client.execute_command("SENTINEL", "FAILOVER", self.service_name))
            except redis.ResponseError as error:
                # NOGOODSLAVE: the replica's INFO is not fresh enough yet; INPROG: one is running.
                if "NOGOODSLAVE" in str(error) or "INPROG" in str(error):
                    return False
                raise

        wait_for(started, budget, 0.1, "SENTINEL FAILOVER to be accepted")
        new = self.wait_new_master(old, max(0.0, deadline - time.monotonic()) * 1000)
        self.wait_demoted(old, new, max(0.0, deadline - time.monotonic()) * 1000)
        return old, new

    def wait_new_master(self, old: Address, timeout: float | None = None) -> Address:
        """Wait until every Sentinel names a master other than ``old``, and it says it is master.

        Parameters:
          old(Address): The master before the failover.
          timeout(float): In milliseconds; :attr:`failover_bound` by default.

        Returns:
          Address: The new master.
        """

        def promoted() -> Address | None:
            answers = set()
            for sentinel in self.sentinels:
                try:
                    found = self._client(sentinel.address).sentinel_get_master_addr_by_name(self.service_name)
                except redis.RedisError:
                    return None
                answers.add(_address(found) if found else None)
            if len(answers) != 1:
                return None
            (address,) = answers
            if address is None or address == old or self.role(address) != "master":
                return None
            return address

        result: Address = wait_for(
            promoted, _seconds(timeout or self.failover_bound), _seconds(POLL_INTERVAL), "a new master"
        )
        return result

    def wait_demoted(self, old: Address, new: Address, timeout: float | None = None) -> None:
        """Wait until the old master is a replica of the new one, in sync (``master_link_status:up``).

        Parameters:
          old(Address): The old master.
          new(Address): The new master.
          timeout(float): In milliseconds; :attr:`demotion_bound` by default.
        """

        def demoted() -> bool:
            info = self.replication(old)
            return (
                _info_field(info, "role") == "slave"
                and int(info.get("master_port", 0)) == new[1]
                and _info_field(info, "master_link_status") == "up"
            )

        wait_for(
            demoted, _seconds(timeout or self.demotion_bound), _seconds(POLL_INTERVAL), "the old master to be a replica"
        )

    def freeze_master(self) -> tuple[Address, Address]:
        """SIGSTOP the master and wait until the Sentinels have promoted the replica.

        The frozen process keeps its sockets open but answers nothing, as a stalled VM or a
        partitioned host: its clients' commands time out. The Sentinels find it down after
        ``down_after``, agree (quorum), elect a leader and promote the replica. Writes the old
        master accepted but had not replicated before the freeze are lost. It stays frozen until
        :meth:`thaw`.

        Returns:
          tuple[Address, Address]: The frozen old master and the new master.
        """
        old = self.master_address()
        self.process_at(old).pause()
        new = self.wait_new_master(old)
        return old, new

    def thaw(self, old: Address) -> None:
        """SIGCONT a master frozen by :meth:`freeze_master`.

        It resumes believing it is still the master and accepts writes (its clients' connections
        are still open) until a Sentinel turns it into a replica of the new master, after
        :data:`SENTINEL_DEMOTION_WAIT` at least; it then resynchronises from the new master and
        every write it accepted in between is lost. :meth:`wait_demoted` waits for that.
        """
        self.process_at(old).resume()

    @contextlib.contextmanager
    def split_brain(self) -> Iterator[tuple[Address, Address]]:
        """Two masters at once, and the old one's writes lost: the lost-writes case.

        Freezes the master (:meth:`freeze_master`) until the replica is promoted, then resumes it
        (:meth:`thaw`). Inside the block the old master is up and still believes it is master:
        writes sent to it (by a client connected to it before the freeze, or connected by address)
        are accepted. On leaving the block, waits (:meth:`wait_demoted`) until Sentinel has made it
        a replica of the new master: by then every write it accepted inside the block is gone.
        The block should last less than :data:`SENTINEL_DEMOTION_WAIT` for all its writes to land
        on the old master.

        Yields:
          tuple[Address, Address]: The old and the new master.
        """
        old, new = self.freeze_master()
        self.thaw(old)
        try:
            yield old, new
        finally:
            self.wait_demoted(old, new)

    def close(self) -> None:
        super().close()
        self.data_nodes.clear()
        self.sentinels.clear()


# TLS -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Certificates:
    """A throwaway CA and the server and client certificates it signed, as PEM files.

    Parameters:
      ca_file(Path): The CA certificate (what clients trust).
      server_cert_file(Path): The server's certificate, for ``127.0.0.1`` and ``localhost``.
      server_key_file(Path)
      client_cert_file(Path): A client certificate, for servers that authenticate clients.
      client_key_file(Path)
    """

    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path


def make_certificates(directory: Path, *, days: int = 1) -> Certificates:
    """Make a CA, and a server and a client certificate signed by it, with ``openssl`` (P-256 keys).

    Parameters:
      directory(Path): Where to write them.
      days(int): How long they are valid.

    Raises:
      ServerUnavailable: If ``openssl`` is missing.
      subprocess.CalledProcessError: If ``openssl`` fails.
    """
    openssl = find_binary("openssl")
    directory.mkdir(parents=True, exist_ok=True)

    def run(*arguments: str) -> None:
        subprocess.run([openssl, *arguments], cwd=directory, check=True, capture_output=True, timeout=60)

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", str(days),
        "-subj", "/CN=dramatiq-tracker test CA")  # fmt: skip
    for name, usage, names in (
        ("server", "serverAuth", "IP:127.0.0.1,DNS:localhost"),
        ("client", "clientAuth", "DNS:dramatiq-tracker-test-client"),
    ):
        (directory / ("%s.ext" % name)).write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=%s\nsubjectAltName=%s\n" % (usage, names)
        )
        run("req", "-new", *key, "-keyout", "%s.key" % name, "-out", "%s.csr" % name,
            "-subj", "/CN=dramatiq-tracker test %s" % name)  # fmt: skip
        run("x509", "-req", "-in", "%s.csr" % name, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "%s.crt" % name, "-days", str(days), "-extfile", "%s.ext" % name)  # fmt: skip
    return Certificates(
        ca_file=directory / "ca.crt",
        server_cert_file=directory / "server.crt",
        server_key_file=directory / "server.key",
        client_cert_file=directory / "client.crt",
        client_key_file=directory / "client.key",
    )


class TlsRedisServer(_Servers):
    """A redis-server that speaks TLS only (``--port 0 --tls-port <port>``), with a throwaway CA.

    The CA, the server certificate (for ``127.0.0.1``) and a client certificate are made by
    ``openssl`` in the server's temporary directory when it starts, and removed with it.

    Parameters:
      auth_clients(str): ``tls-auth-clients``: ``"no"`` (clients need no certificate),
        ``"optional"`` (a certificate is checked if given) or ``"yes"`` (one is required).

    Example:
      >>> with TlsRedisServer() as server:
      ...     redis.Redis.from_url(server.url).ping()
    """

    prefix = "tracker-tls-"

    def __init__(self, *, auth_clients: str = "no") -> None:
        super().__init__()
        if auth_clients not in ("no", "optional", "yes"):
            raise ValueError("auth_clients must be 'no', 'optional' or 'yes', got %r" % (auth_clients,))
        self.auth_clients = auth_clients
        self.certificates: Certificates | None = None
        self.port = 0

    def start(self) -> TlsRedisServer:
        """Make the certificates, start the server and wait until a TLS client gets an answer.

        Raises:
          ServerUnavailable: If ``redis-server`` or ``openssl`` is missing, or the server has no TLS.
          RuntimeError: If the server does not start.
        """
        self._started(self._start)
        return self

    def _start(self) -> None:
        find_binary("redis-server")
        certificates = self.certificates = make_certificates(self.directory / "certificates")

        def arguments(port: int, directory: Path) -> list[str]:
            return [
                *_redis_arguments(0, directory),
                "--tls-port", str(port),
                "--tls-cert-file", str(certificates.server_cert_file),
                "--tls-key-file", str(certificates.server_key_file),
                "--tls-ca-cert-file", str(certificates.ca_file),
                "--tls-auth-clients", self.auth_clients,
            ]  # fmt: skip

        def ready(port: int) -> bool:
            return self._pings(port, **self.ssl_kwargs(client_certificate=self.auth_clients == "yes"))

        self.port = self._start_process("tls", arguments, ready).port

    @property
    def ca_file(self) -> str:
        """The CA certificate file that clients must trust."""
        assert self.certificates is not None, "the server is not started"
        return str(self.certificates.ca_file)

    @property
    def client_cert_file(self) -> str:
        """A client certificate signed by the CA (for ``auth_clients`` "optional" or "yes")."""
        assert self.certificates is not None, "the server is not started"
        return str(self.certificates.client_cert_file)

    @property
    def client_key_file(self) -> str:
        assert self.certificates is not None, "the server is not started"
        return str(self.certificates.client_key_file)

    @property
    def address(self) -> Address:
        return HOST, self.port

    @property
    def bare_url(self) -> str:
        """``rediss://127.0.0.1:<port>/0`` alone: the CA must be given to the client separately."""
        return "rediss://%s:%d/0" % self.address

    @property
    def url(self) -> str:
        """A ``rediss://`` URL that names the CA file (``ssl_ca_certs``), and the client certificate
        when the server requires one: ``redis.Redis.from_url(url)`` connects with nothing else."""
        return self.url_for(client_certificate=self.auth_clients == "yes")

    def url_for(self, *, client_certificate: bool) -> str:
        """A ``rediss://`` URL with the CA file, and with the client certificate if asked.

        Parameters:
          client_certificate(bool): Whether the client presents the certificate signed by the CA.
        """
        query = "ssl_ca_certs=%s&ssl_cert_reqs=required" % self.ca_file
        if client_certificate:
            query += "&ssl_certfile=%s&ssl_keyfile=%s" % (self.client_cert_file, self.client_key_file)
        return "%s?%s" % (self.bare_url, query)

    def ssl_kwargs(self, *, client_certificate: bool = False) -> dict[str, Any]:
        """The arguments of ``redis.Redis`` for a TLS connection to this server.

        Parameters:
          client_certificate(bool): Whether the client presents the certificate signed by the CA.
        """
        kwargs: dict[str, Any] = {"ssl": True, "ssl_ca_certs": self.ca_file, "ssl_cert_reqs": "required"}
        if client_certificate:
            kwargs.update(ssl_certfile=self.client_cert_file, ssl_keyfile=self.client_key_file)
        return kwargs


# ACL -------------------------------------------------------------------------------------------------------

#: The command rules of a restricted user: everything but the dangerous commands (FLUSHALL,
#: FLUSHDB, KEYS, CONFIG, DEBUG, SHUTDOWN, MONITOR, INFO, ...).
DEFAULT_ACL_RULES = ("+@all", "-@dangerous")


class AclRedisServer(_Servers):
    """A throwaway redis-server on which tests create ACL users limited to key patterns.

    The default user stays open (no password) for the tests' own checks; :meth:`add_user` creates
    restricted users and returns URLs with their credentials.

    Example:
      >>> with AclRedisServer() as server:
      ...     url = server.tracker_url("my-namespace")  # ~{my-namespace}:* ~dramatiq:*
    """

    prefix = "tracker-acl-"

    def __init__(self) -> None:
        super().__init__()
        self.port = 0

    def start(self) -> AclRedisServer:
        """Start the server and wait until it answers.

        Raises:
          ServerUnavailable: If ``redis-server`` is missing.
        """
        self._started(self._start)
        return self

    def _start(self) -> None:
        self.port = self._start_process("acl", _redis_arguments, self._pings).port

    @property
    def url(self) -> str:
        """The default (unrestricted) user's URL."""
        return "redis://%s:%d/0" % (HOST, self.port)

    def admin(self) -> redis.Redis:
        """A client of the default, unrestricted user (closed by close())."""
        return self._client((HOST, self.port))

    def add_user(
        self,
        username: str,
        *,
        key_patterns: tuple[str, ...],
        rules: tuple[str, ...] = DEFAULT_ACL_RULES,
        password: str | None = None,
    ) -> str:
        """Create (or reset) an ACL user allowed only ``key_patterns`` and ``rules``.

        Runs ``ACL SETUSER <username> reset on ><password> ~<pattern>... <rules...>``: no Pub/Sub
        channel, only the listed keys (checked inside Lua scripts too), only the listed commands.

        Parameters:
          username(str)
          key_patterns(tuple[str, ...]): Glob patterns of the keys it may touch (``{ns}:*``). The
            braces of a hash tag are literal in a glob, as long as no ``[`` follows.
          rules(tuple[str, ...]): Command rules, ``+@all -@dangerous`` by default.
          password(str): A random one by default.

        Returns:
          str: ``redis://<username>:<password>@127.0.0.1:<port>/0``.
        """
        password = password or secrets.token_hex(12)
        patterns = ["~%s" % pattern for pattern in key_patterns]
        self.admin().execute_command("ACL", "SETUSER", username, "reset", "on", ">%s" % password, *patterns, *rules)
        return "redis://%s:%s@%s:%d/0" % (username, password, HOST, self.port)

    def tracker_url(self, namespace: str, *, broker_namespace: str = "dramatiq", username: str = "tracker") -> str:
        """A user limited to a tracker namespace's keys and a RedisBroker namespace's keys.

        ``ACL SETUSER tracker reset on >pw ~{namespace}:* ~<broker_namespace>:* +@all -@dangerous``.

        Parameters:
          namespace(str): The tracker namespace.
          broker_namespace(str): The RedisBroker namespace.
          username(str)

        Returns:
          str: The user's URL.
        """
        return self.add_user(username, key_patterns=("{%s}:*" % namespace, "%s:*" % broker_namespace))

    def delete_user(self, username: str) -> None:
        """``ACL DELUSER``: the user's open connections are closed."""
        self.admin().execute_command("ACL", "DELUSER", username)


# Fixtures --------------------------------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    """Skip the test for ``reason``, or fail it when the ``CI`` environment variable is set."""
    if os.environ.get("CI"):
        pytest.fail("%s (CI is set: missing tools fail instead of skipping)" % reason, pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def running(servers: _S) -> Iterator[_S]:
    """Start ``servers`` for a fixture: skip (or fail on CI) when unavailable; always stop them."""
    try:
        servers.start()
    except ServerUnavailable as error:
        servers.close()
        unavailable(str(error))
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of three masters, shared by the session: tests use their own namespaces."""
    with running(RedisClusterServers()) as cluster:
        yield cluster


@pytest.fixture
def fresh_redis_cluster() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of the test's own, for tests that break it."""
    with running(RedisClusterServers()) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelServers]:
    """A Sentinel-managed master and replica, shared by the session; failovers leave it usable."""
    with running(RedisSentinelServers()) as sentinel:
        yield sentinel


@pytest.fixture
def fresh_redis_sentinel() -> Iterator[RedisSentinelServers]:
    """A Sentinel-managed master and replica of the test's own."""
    with running(RedisSentinelServers()) as sentinel:
        yield sentinel


@pytest.fixture(scope="session")
def tls_redis() -> Iterator[TlsRedisServer]:
    """A TLS-only redis-server that does not ask clients for certificates (``tls-auth-clients no``)."""
    with running(TlsRedisServer(auth_clients="no")) as server:
        yield server


@pytest.fixture(scope="session")
def tls_redis_client_auth() -> Iterator[TlsRedisServer]:
    """A TLS-only redis-server that checks a client certificate when one is given (``optional``)."""
    with running(TlsRedisServer(auth_clients="optional")) as server:
        yield server


@pytest.fixture(scope="session")
def acl_redis() -> Iterator[AclRedisServer]:
    """A redis-server on which tests create restricted ACL users (see :func:`acl_user`)."""
    with running(AclRedisServer()) as server:
        yield server


@pytest.fixture
def acl_user(acl_redis: AclRedisServer) -> Iterator[Callable[..., str]]:
    """Create restricted users on :func:`acl_redis`; they are deleted after the test.

    Call it as ``acl_user(namespace, broker_namespace="dramatiq")`` for a tracker user (see
    :meth:`AclRedisServer.tracker_url`); it returns the user's URL.
    """
    created: list[str] = []

    def create(namespace: str, *, broker_namespace: str = "dramatiq") -> str:
        username = "tracker-%s" % secrets.token_hex(4)
        created.append(username)
        return acl_redis.tracker_url(namespace, broker_namespace=broker_namespace, username=username)

    yield create
    for username in created:
        with contextlib.suppress(redis.RedisError):
            acl_redis.delete_user(username)
