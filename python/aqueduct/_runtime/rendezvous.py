"""How processes forked from a flow's owner follow it onto fresh shared memory.

A flow with ``clients > 1`` serves processes forked from the one that started
it (a pre-fork web server's workers). They inherit its segments; when the flow
heals onto new ones (``_healing``) they must be handed the new ones, and fds
only travel over a Unix socket. So the owner listens on an abstract address
(no file to clean up; it goes with the owner) and each forked client connects
on its first call and stays connected. The owner tells it when the flow went
down (it fails what it waits for at once) and hands it the new segments once
the flow healed; a forked client tells the owner when it found the shared
memory corrupt itself. Only processes of the owner's user may connect.
"""

from __future__ import annotations

import array
import json
import os
import secrets
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..logger import log

if TYPE_CHECKING:
    from .._ipc.topology import Topology

__all__ = ["Announcement", "OwnerLink", "Rendezvous"]

#: Largest control message (JSON) either side sends.
MESSAGE_LIMIT = 64 * 1024
#: Most fds one message carries (the kernel's SCM_MAX_FD).
FD_LIMIT = 253
#: Bound on one send: a forked client that does not read is dropped, never waited for.
SEND_TIMEOUT = 1.0
_UCRED = struct.Struct("3i")  # pid, uid, gid


@dataclass
class Announcement:
    """What the owner says: ``down`` (the flow stopped serving: ``reason``,
    whether it is ``corrupt`` shared memory, whether it is ``final`` — no
    heal follows) or ``topology`` (the segments the flow runs on now, as
    ``fds``, and their ``generation``)."""

    kind: str
    generation: int = 0
    reason: str = ""
    corrupt: bool = False
    final: bool = False
    steps: int = 0
    clients: int = 0
    fds: list[int] = field(default_factory=list)

    def encode(self) -> bytes:
        fields = {k: v for k, v in vars(self).items() if k != "fds"}
        return json.dumps(fields).encode()

    @classmethod
    def decode(cls, data: bytes, fds: list[int]) -> Announcement:
        fields = json.loads(data)
        known = {k: v for k, v in fields.items() if k in cls.__dataclass_fields__}
        return cls(**known, fds=fds)

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class Rendezvous:
    """The owner's side: a thread that accepts forked clients, hands each
    the current segments, and relays what they report to ``on_report``."""

    def __init__(self, on_report: Callable[[str], None]) -> None:
        self._on_report = on_report
        self.address = f"\0aqueduct-{os.getpid()}-{secrets.token_hex(8)}"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(self.address)
        self._listener.listen(64)
        self._lock = threading.Lock()  # one sender at a time, and the peer list
        self._peers: list[socket.socket] = []
        self._current: Announcement | None = None
        self._down: Announcement | None = None  # since the current topology
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="aqueduct-rendezvous", daemon=True)
        self._thread.start()

    def publish(self, announcement: Announcement) -> None:
        """Tells every forked client, and each that connects later: a
        ``topology`` becomes the current one."""
        with self._lock:
            if announcement.kind == "topology":
                self._current, self._down = announcement, None
            else:
                self._down = announcement
            for peer in list(self._peers):
                self._send(peer, announcement)

    def announce(self, generation: int, topology: Topology) -> None:
        """The flow runs on ``topology`` now, its ``generation``-th set of segments."""
        said = Announcement("topology", generation, steps=topology.steps, clients=topology.clients)
        said.fds = topology.fds()
        self.publish(said)

    def close(self) -> None:
        """Forked clients see the connection end; the thread exits."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        os.write(self._wake_w, b"x")
        if self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self._release()

    def forget(self) -> None:
        """In a process forked from the owner: closes this process's copies
        of the owner's sockets (the owner's stay open), leaving the owner's
        thread, which did not fork, alone."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        for sock in [self._listener, *self._peers]:
            sock.close()
        self._peers = []
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._selector.close()

    def _serve(self) -> None:
        while not self._closed:
            for key, _events in self._selector.select():
                if self._closed:
                    return
                if key.fileobj is self._listener:
                    self._accept()
                elif isinstance(key.fileobj, socket.socket):
                    self._receive(key.fileobj)

    def _accept(self) -> None:
        try:
            peer, _ = self._listener.accept()
        except OSError:
            return
        creds = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        _pid, uid, _gid = _UCRED.unpack(creds)
        if uid != os.getuid():
            log.warning("refused a connection to the flow from user %d", uid)
            peer.close()
            return
        peer.settimeout(SEND_TIMEOUT)
        with self._lock:
            for said in (self._current, self._down):
                if said is not None and not self._send(peer, said):
                    return
            self._peers.append(peer)
        self._selector.register(peer, selectors.EVENT_READ)

    def _receive(self, peer: socket.socket) -> None:
        try:
            data = peer.recv(MESSAGE_LIMIT)
            report = json.loads(data) if data else None
        except (OSError, ValueError):
            data, report = b"", None
        if not data:
            self._drop(peer)
            return
        if isinstance(report, dict) and report.get("kind") == "corrupt":
            self._on_report(str(report.get("reason", "")))

    def _send(self, peer: socket.socket, announcement: Announcement) -> bool:
        """Under the lock. False (and the peer dropped) when it failed."""
        try:
            fds = [array.array("i", announcement.fds)] if announcement.fds else []
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, a) for a in fds]
            peer.sendmsg([announcement.encode()], ancillary)
            return True
        except OSError:
            self._drop(peer, locked=True)
            return False

    def _drop(self, peer: socket.socket, locked: bool = False) -> None:
        if not locked:
            with self._lock:
                self._drop(peer, locked=True)
            return
        if peer in self._peers:
            self._peers.remove(peer)
        try:
            self._selector.unregister(peer)
        except (KeyError, ValueError):
            pass
        peer.close()


class OwnerLink:
    """A forked client's connection to the owner's rendezvous."""

    def __init__(self, address: str, timeout: float) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._sock.settimeout(timeout)
        self._sock.connect(address)

    def fileno(self) -> int:
        return self._sock.fileno()

    def receive(self, timeout: float | None) -> Announcement | None:
        """The next announcement; None when ``timeout`` passed first (0: only
        what is there now). Raises EOFError once the owner closed the
        connection (it stopped the flow, or died)."""
        self._sock.settimeout(timeout)
        try:
            data, fds, _flags, _addr = socket.recv_fds(self._sock, MESSAGE_LIMIT, FD_LIMIT)
        except (TimeoutError, BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise EOFError(f"the connection to the flow's owner failed: {exc}") from exc
        if not data:
            for fd in fds:
                os.close(fd)
            raise EOFError("the flow's owner closed the connection")
        try:
            return Announcement.decode(data, list(fds))
        except (ValueError, TypeError):
            for fd in fds:
                os.close(fd)
            log.error("the flow's owner said what this process cannot read: %r", data[:100])
            return None

    def report(self, reason: str) -> None:
        """Tells the owner this process found the shared memory corrupt."""
        self._sock.settimeout(SEND_TIMEOUT)
        try:
            self._sock.send(json.dumps({"kind": "corrupt", "reason": reason}).encode())
        except OSError:
            log.exception("could not tell the flow's owner that its shared memory is corrupt")

    def close(self) -> None:
        self._sock.close()
