"""The public port's listening socket, held by the ingress process rather than by HAProxy.

HAProxy gets the socket as an inherited descriptor (`bind fd@N`), so:
- an HAProxy that dies is started again on the same socket, and connections that arrived meanwhile wait in
  its accept queue instead of being refused;
- the next front on this port (an update starts a new ingress beside the old one) asks this process for the
  socket over a private unix socket (SCM_RIGHTS), and both fronts then accept from one queue: when the old
  one stops, no connection waiting there is lost (two sockets bound with SO_REUSEPORT would drop it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

logger = logging.getLogger("tide.front")
BACKLOG = 4096
START_RACE_S = 10.0  # two fronts starting together: the one that lost the bind waits this long for the other


def _folder(port: int) -> Path:
    """A folder only this user may enter, for the socket that hands the listener out."""
    path = Path(tempfile.gettempdir()) / f"tide-front-{port}.d"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(f"{path} must belong to this user alone (mode 700)")
    return path


def _take(path: Path) -> socket.socket | None:
    """The listener another process on this port holds, if one answers at `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2.0)
            s.connect(str(path))
            _, fds, _, _ = socket.recv_fds(s, 16, 1)
    except OSError:
        return None
    if not fds:
        return None
    return socket.socket(fileno=fds[0])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _take_or_bind(path: Path, host: str, port: int) -> tuple[socket.socket, bool]:
    """The socket another front holds (and True), else a new one. Two fronts that start at once
    (`ingress_replicas` > 1 on one node) race: the one whose bind finds the port taken asks the winner until it
    answers."""
    deadline = time.monotonic() + START_RACE_S
    while True:
        sock = _take(path)
        if sock is not None:
            return sock, True
        try:
            return _bind(host, port), False
        except OSError as e:
            if e.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
        time.sleep(0.1)


class SharedListener:
    """The listening socket of `host:port`: taken from the process that holds it already, else bound here; then
    handed to whichever process asks next."""

    def __init__(self, host: str, port: int):
        self.path = _folder(port) / "listener.sock"
        self.sock, self.taken = _take_or_bind(self.path, host, port)
        self.sock.set_inheritable(True)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Bound under a name of its own, then renamed over the shared one in one step: fronts that take the socket
        # at once would otherwise both unlink the old name and race to bind it (the loser gets EADDRINUSE).
        mine = self.path.with_name(f"listener.{os.getpid()}.{threading.get_ident()}.sock")
        with contextlib.suppress(FileNotFoundError):
            mine.unlink()
        self._server.bind(str(mine))
        self._server.listen(8)
        self._inode = mine.stat().st_ino
        os.replace(mine, self.path)  # the process that had it keeps its socket open; asks now come here
        self._closed = threading.Event()
        threading.Thread(target=self._hand_out, name="tide-front-listener", daemon=True).start()

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def _hand_out(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                with contextlib.suppress(OSError):
                    socket.send_fds(conn, [b"L"], [self.sock.fileno()])

    def close(self) -> None:
        """Stop handing the socket out and close this process's copy (others that hold it keep it open)."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:  # still ours, not a newer front's
                self.path.unlink()
                self.path.parent.rmdir()
        self.sock.close()
