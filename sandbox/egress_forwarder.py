"""Runs inside a `proxy`-network sandbox (any python3 >= 3.7, stdlib only): listens on
127.0.0.1:PORT and splices each connection to the service's egress proxy socket mounted into the
container. It binds first, then forks into the background and exits 0, so the `docker exec`
that starts it returns once the port accepts connections (readiness without polling).

Usage: python3 -c SOURCE SOCKET_PATH PORT
"""

import contextlib
import errno
import os
import socket
import sys
import threading
import time

REFUSED = (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 52\r\n"
           b"Connection: close\r\n\r\nhosted-agents: the egress proxy is not reachable now\n")


def pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def serve(conn: socket.socket, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        try:
            upstream.connect(path)
        except OSError:
            with contextlib.suppress(OSError):
                conn.sendall(REFUSED)
            return
        back = threading.Thread(target=pipe, args=(upstream, conn))
        back.daemon = True
        back.start()
        pipe(conn, upstream)
        back.join()
    finally:
        upstream.close()
        conn.close()


def main() -> None:
    path, port = sys.argv[1], int(sys.argv[2])
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("127.0.0.1", port))
    except OSError as exc:
        sys.stdout.write("cannot listen on 127.0.0.1:%d: %s\n" % (port, exc))
        sys.exit(3 if exc.errno == errno.EADDRINUSE else 1)
    listener.listen(128)
    if os.fork():
        sys.stdout.write("listening on 127.0.0.1:%d\n" % port)
        sys.stdout.flush()
        os._exit(0)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            time.sleep(0.1)  # out of file descriptors or threads: try again shortly
            continue
        try:
            worker = threading.Thread(target=serve, args=(conn, path))
            worker.daemon = True
            worker.start()
        except RuntimeError:
            conn.close()


if __name__ == "__main__":
    main()
