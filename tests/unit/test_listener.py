"""The public port's shared listening socket (serving/front/listener.py): fronts that start together share one."""

from __future__ import annotations

import errno
import socket
import threading

import pytest

from serving.front import listener
from serving.front.listener import SharedListener
from serving.loopback import free_port


def _accepts(sock: socket.socket, port: int) -> bool:
    """Whether a connection to `port` lands in `sock`'s accept queue."""
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        sock.settimeout(2)
        conn, _ = sock.accept()
        conn.close()
        return True


def test_fronts_that_start_at_once_share_one_socket():
    port = free_port()
    got: list[SharedListener] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            got.append(SharedListener("127.0.0.1", port))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        assert sorted(x.taken for x in got) == [False, True, True, True]  # bound once, taken by the rest
        inodes = {socket.fromfd(x.fd, socket.AF_INET, socket.SOCK_STREAM).getsockname() for x in got}
        assert inodes == {("127.0.0.1", port)}
        for x in got:  # one queue: a connection is accepted by whichever front asks
            assert _accepts(x.sock, port)
    finally:
        for x in reversed(got):
            x.close()


def test_a_port_another_program_holds_fails_after_the_start_race_window(monkeypatch):
    monkeypatch.setattr(listener, "START_RACE_S", 0.3)
    port = free_port()
    other = socket.socket()
    other.bind(("127.0.0.1", port))
    other.listen(1)
    try:
        with pytest.raises(OSError) as e:
            SharedListener("127.0.0.1", port)
        assert e.value.errno == errno.EADDRINUSE
    finally:
        other.close()


def test_the_last_front_to_close_frees_the_port():
    port = free_port()
    first = SharedListener("127.0.0.1", port)
    second = SharedListener("127.0.0.1", port)
    assert second.taken and not first.taken
    first.close()
    assert _accepts(second.sock, port)  # the socket outlives the process that bound it
    second.close()
    again = SharedListener("127.0.0.1", port)  # nobody holds it: bound anew
    assert not again.taken
    again.close()
