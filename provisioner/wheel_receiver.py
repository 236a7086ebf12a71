"""Receive the runtime wheel on an exit server whose cloud's user-data cannot hold it.

EC2 takes 16 KiB of user-data and Hetzner 32 KiB: too little for the server's wheel. There
the user-data carries this script (the standard library only, run by the VM's python3)
with the wheel's SHA-256, and ``inletsctl create`` sends the wheel to it over the control
port: TLS with the exit server's own certificate (the one the client pins), the request
authorised by the tunnel token, and the file accepted only if its digest is the one in
the user-data. Then the boot goes on as with an embedded wheel. Nothing else is answered
(``/healthz`` says 503: the server is still being installed).

Each connection is served in a thread of its own and has CONNECTION_TIME seconds in all, one address
holds at most MAX_PER_PEER of them, and past MAX_CONNECTIONS a new one closes the oldest not yet
authorised, so that peers that connect and trickle bytes, or hold every place they can (the port faces
the internet), cannot hold off create's push.
"""

import argparse
import collections
import hashlib
import hmac
import ipaddress
import socket
import ssl
import sys
import threading
import time

PATH = "/inlets/runtime-wheel"
MAX_WHEEL = 16 * 1024 * 1024
MAX_HEAD = 8192
MAX_CONNECTIONS = 32  # served at once; more are closed unanswered
MAX_PER_PEER = 4  # of those from one address (an IPv6 /64): one peer alone cannot take every place
CONNECTION_TIME = 60.0  # seconds one connection may take in all: handshake, head and body


def answer(conn, status, text):
    body = (text + "\n").encode()
    head = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    conn.sendall(head.encode() + body)


def peer_key(addr):
    """The address a peer's connections are counted under: an IPv4 address, or an IPv6 address's /64 (its first
    four groups)."""
    ip = ipaddress.ip_address(addr.partition("%")[0])
    return ip.exploded[:19] if ip.version == 6 and not ip.ipv4_mapped else addr


def recv(conn, size, deadline):
    """At most ``size`` bytes, waiting no later than ``deadline`` (a per-recv timeout alone lets a peer
    sending a byte now and then hold the connection forever)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise ValueError("too slow")
    conn.settimeout(left)
    return conn.recv(size)


def read_head(conn, deadline):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = recv(conn, 4096, deadline)
        if not chunk or len(data) > MAX_HEAD:
            raise ValueError("incomplete request head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0].split(" "), headers, rest


def serve_one(conn, token, digest, deadline):
    """Handle one request; the wheel's bytes when it was accepted, else None."""
    request, headers, body = read_head(conn, deadline)
    if len(request) != 3 or request[0] != "PUT" or request[1] != PATH:
        answer(conn, "503 Service Unavailable", "the exit server is still being installed")
        return None
    length = headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()) or int(length) > MAX_WHEEL:
        answer(conn, "400 Bad Request", "Content-Length must be given, at most 16 MiB")
        return None
    offered = headers.get("authorization", "")
    authorised = hmac.compare_digest(offered.encode(), f"Bearer {token}".encode())
    threading.current_thread().authorised = authorised  # no longer the one a new connection may close
    chunks, size = [body], len(body)
    while size < int(length):  # read it all before answering, so the sender reads the answer
        chunk = recv(conn, 65536, deadline)
        if not chunk:
            raise ValueError("the request body ended early")
        if authorised:  # a peer without the token is read, not kept: MAX_CONNECTIONS of them held 16 MiB each
            chunks.append(chunk)
        size += len(chunk)
    if not authorised:
        answer(conn, "401 Unauthorized", "wrong token")
        return None
    body = b"".join(chunks)[: int(length)]
    if hashlib.sha256(body).hexdigest() != digest:
        answer(conn, "422 Unprocessable Content", "the wheel's SHA-256 is not the one in the user-data")
        return None
    answer(conn, "200 OK", "received")
    return body


def main():
    parser = argparse.ArgumentParser(description="Receive the inlets runtime wheel from inletsctl create.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--addr", default="", help="the address to listen on [all]")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--sha256", required=True)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("out")
    args = parser.parse_args()
    with open(args.token_file) as file:
        token = file.read().strip()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    if args.addr:
        server = socket.create_server((args.addr, args.port))
    elif socket.has_dualstack_ipv6():
        server = socket.create_server(("::", args.port), family=socket.AF_INET6, dualstack_ipv6=True)
    else:
        server = socket.create_server(("0.0.0.0", args.port))
    got = []  # (wheel, sender) once one was accepted
    failed = collections.Counter()  # connections that failed before showing the token, per address (at most 1,024)
    live = []  # the threads serving connections, each named by its peer's peer_key

    def handle(raw, peer):
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle wait on each TLS flight and answer
            raw.settimeout(CONNECTION_TIME)
            with context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False) as conn:
                threading.current_thread().sock = conn  # what a later connection closes to make room
                conn.do_handshake()
                data = serve_one(conn, token, args.sha256, time.monotonic() + CONNECTION_TIME)
            if data is not None:
                got.append((data, peer[0]))
        except (OSError, ValueError) as exc:
            if getattr(threading.current_thread(), "authorised", False):  # create's: worth a line
                print(f"receive-wheel: {peer[0]}: {exc}", file=sys.stderr)
            else:  # a flood's would fill the log (and block on a full pipe): counted, said once at the end
                if peer[0] in failed or len(failed) < 1024:  # a list of them grew by each: a flood's, without bound
                    failed[peer[0]] += 1
                else:
                    failed["other"] += 1
        finally:
            raw.close()

    deadline = time.monotonic() + args.timeout
    server.settimeout(1.0)
    while not got and time.monotonic() < deadline:
        try:
            raw, peer = server.accept()
        except socket.timeout:
            continue
        live = [thread for thread in live if thread.is_alive() and not thread.closed]
        key = peer_key(peer[0])
        waiting = [thread for thread in live if not thread.authorised]
        if sum(thread.name == key for thread in live) >= MAX_PER_PEER or (len(live) >= MAX_CONNECTIONS and not waiting):
            raw.close()
            continue
        if len(live) >= MAX_CONNECTIONS:  # the oldest not yet authorised makes room: its thread ends at once
            waiting[0].closed = True
            try:
                socket.socket.shutdown(waiting[0].sock, socket.SHUT_RDWR)
            except OSError:
                pass
        thread = threading.Thread(target=handle, args=(raw, peer), name=key, daemon=True)
        thread.sock, thread.authorised, thread.closed = raw, False, False
        live.append(thread)
        thread.start()
    if failed:
        print(f"receive-wheel: {sum(failed.values())} connections without the token failed or were closed "
              f"(from {len(failed)}{'+' if 'other' in failed else ''} addresses)", file=sys.stderr)
    if got:
        data, sender = got[0]
        with open(args.out, "wb") as file:
            file.write(data)
        print(f"receive-wheel: received {len(data)} bytes from {sender}", file=sys.stderr)
        return 0
    print(f"receive-wheel: no wheel arrived within {args.timeout:.0f}s: run inletsctl create again", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
