"""The process lifecycle every ``inlets`` command shares.

Servers: SIGTERM/SIGINT drain (no new connections, open ones get ``--drain-timeout``),
SIGHUP re-reads ``--token-file`` (clients whose token was removed are disconnected) and
``--tls-cert``/``--tls-key`` (new handshakes get the new pair).
Clients: SIGTERM/SIGINT drain the same way; SIGHUP reconnects make-before-break,
re-reading the token file (token rotation without downtime).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

from ..core.logs import logfmt
from ..core.auth import TokenError, read_tokens, warn_loose_on_reload
from ..core.heap import IdleTrim, keep_freed_heap
from . import handoff
from .config import fail

if TYPE_CHECKING:
    from ..client.dialer import TunnelClient
    from ..client.group import ClientGroup

log = logging.getLogger("inlets")


def _on_stop_signal(stopping: asyncio.Event, sig: signal.Signals) -> None:
    """The first SIGTERM/SIGINT drains; a second one while draining exits at once (as most servers do):
    the operator has decided not to wait for --drain-timeout."""
    if not stopping.is_set():  # said: else a client's log ended on its last connect_failed, as after a crash
        log.info("event=stopping signal=%s", sig.name)
        stopping.set()
        return
    log.warning("event=forced_exit signal=%s reason=%s", sig.name,
                logfmt("a second signal while draining: open connections cut"))
    logging.shutdown()
    reset_on_exit()
    os._exit(1)


def reset_on_exit() -> None:
    """Every TCP connection the process holds closes with a reset when it exits, not a FIN: a user or upstream
    reading until the close took the part a forced exit cut for the whole transfer (the drain timeout aborts them
    so already). SO_LINGER 0 is the socket's own, so a duplicate descriptor sets it; the exit then closes each."""
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # not Linux: the exit closes them as it does
        return
    linger = struct.pack("ii", 1, 0)
    for descriptor in descriptors:
        try:
            copy = os.dup(descriptor)
        except OSError:  # closed since the listing (the listing's own)
            continue
        try:
            sock = socket.socket(fileno=copy)
        except OSError:  # not a socket: the log file, a pipe
            os.close(copy)
            continue
        with sock:
            if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)


def raise_open_files_limit() -> None:
    """Take the hard limit on open files as the soft one, as Go's runtime does for Go's inlets. A shell's soft
    limit is 1,024 (systemd's too, without LimitNOFILE): one client advertising 1,000 ports, or 1,000 users, took
    every descriptor, and each connection after was closed unanswered and unlogged, other clients' users too."""
    try:
        import resource
    except ImportError:  # not a Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        return  # Linux has no unlimited descriptors; elsewhere, leave the operator's choice
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as exc:
        log.debug("event=nofile_unchanged soft=%d hard=%d error=%s", soft, hard, logfmt(exc))


def run_until_signalled(
    start: Callable[[], Awaitable[None]],
    main: Callable[[], Awaitable[None]] | None = None,
    stop: Callable[[], Awaitable[None]] | None = None,
    reload: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run on uvloop when installed. SIGTERM/SIGINT: ``stop`` then exit 0; SIGHUP: ``reload``."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_stop_signal, stopping, sig)
        if reload is not None:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload()))
        await start()
        if reload is not None and handoff.sighup_noted():  # sent while starting (main held it): answered now
            asyncio.ensure_future(reload())
        idle_trim = IdleTrim.for_this_process()
        if idle_trim is not None:
            idle_trim.start()
        waiters = [asyncio.ensure_future(stopping.wait())]
        if main is not None:
            waiters.append(asyncio.ensure_future(main()))
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if stop is not None:
            await stop()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if idle_trim is not None:
            idle_trim.stop()
        for task in done:
            task.result()  # re-raise a failure of main

    keep_freed_heap()
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:
        uvloop = None  # run the loop outside the except block: everything raised in it would carry the ImportError
    if uvloop is None:
        asyncio.run(runner())
    else:
        uvloop.run(runner())


#: the flag that sets each of a server's listeners (``core.listen.BindError.role``)
LISTEN_FLAGS = {"control": "--control-port", "data": "--port", "https": "--https-port"}
ADDR_FLAGS = {"control": "--control-addr", "data": "--data-addr", "https": "--data-addr"}


def listen_failure(exc: OSError) -> str:
    """Why a listen failed, in words: a name lookup's own message (os.strerror says "Unknown error -2")."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the address ({exc.strerror})"
    return os.strerror(exc.errno) if exc.errno else str(exc)


#: How often ``run_server``'s ``daily`` runs.
DAY = 24 * 3600.0


def every_day(loop: asyncio.AbstractEventLoop, job: Callable[[], None]) -> None:
    """``job`` once a DAY from now, for as long as the loop runs."""
    def run() -> None:
        job()
        loop.call_later(DAY, run)

    loop.call_later(DAY, run)


def run_server(
    server,
    *,
    describe: str,
    drain_timeout: float,
    token: str | None,
    token_file: Path | None,
    started: Callable[[], None] | None = None,
    reload_tls: Callable[[], None] | None = None,
    daily: Callable[[], None] | None = None,
) -> None:
    """Start ``server`` (then ``started``); SIGHUP re-reads the token file and calls ``reload_tls`` (given by the
    caller, which has the server's modules: a client's lifecycle imports none); ``daily`` runs every DAY from the
    start (the certificate's end, warned of); SIGTERM drains then exits 0."""

    from ..core.listen import BindError  # here: a client has no use for it

    async def start() -> None:
        try:
            await server.start()
        except BindError as exc:  # which port, and the flag that moves it
            flag = LISTEN_FLAGS.get(exc.role, "")
            step = (f": another program uses it: stop it, or give another {flag}"
                    if exc.cause.errno == errno.EADDRINUSE and flag else "")
            if exc.cause.errno == errno.EADDRNOTAVAIL and exc.role in ADDR_FLAGS:
                step = (f": it is not an address of this machine: give one of its own in {ADDR_FLAGS[exc.role]}, "
                        "or leave it out for every interface")
            elif exc.cause.errno == errno.EINVAL and exc.role in ADDR_FLAGS:  # the kernel's bare "Invalid argument"
                step = f": {unbindable(exc.host or '', ADDR_FLAGS[exc.role])}"
            fail(f"cannot listen on {exc.where} ({exc.role} port): {listen_failure(exc.cause)}{step}", 1)
        except OSError as exc:  # the OS's reason: asyncio's wrapper repeats the address as a Python tuple
            fail(f"cannot listen ({describe}): {listen_failure(exc)}", 1)
        if started is not None:
            started()
        if daily is not None:
            every_day(asyncio.get_running_loop(), daily)

    async def reload() -> None:
        if reload_tls is not None:
            reload_tls()
        if token or token_file is None:
            if reload_tls is None:
                log.warning("event=reload_ignored reason=%s", logfmt(
                    "nothing to re-read: tokens come from --token/$INLETS_TOKEN, not a file, and TLS from no --tls-cert"))
            return
        try:
            tokens = read_tokens(None, token_file)
        except TokenError as exc:
            log.error("event=reload_failed error=%s keeping=current_tokens", logfmt(exc))
            return
        server.control.config.tokens.replace(tokens)
        revoked = server.control.revoke_stale_tokens(drain_timeout)
        log.info("event=tokens_reloaded count=%d clients_revoked=%d", len(tokens), revoked)
        # not token_file_readable: a client says that when its token file can be read again
        warn_loose_on_reload(Path(token_file), "token_file_loose", "the tokens")

    async def stop() -> None:
        log.info("event=draining timeout=%.1fs", drain_timeout)
        await server.drain(drain_timeout)

    run_until_signalled(start, stop=stop, reload=reload)


def unbindable(host: str, flag: str) -> str:
    """Why the kernel takes no socket bound to ``host`` (EINVAL, "Invalid argument"), and what to give ``flag``."""
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"an IPv4-mapped address cannot be listened on: give {address.ipv4_mapped} in {flag}"
    if isinstance(address, ipaddress.IPv6Address) and address.is_link_local:
        return f"a link-local address needs its interface: give {host}%IFACE (eth0, say) in {flag}"
    return f"this address cannot be listened on: give one of this machine's in {flag}"


def run_client(client: TunnelClient | ClientGroup, start: Callable[[], Awaitable[None]] | None = None,
               stopping: Callable[[], None] | None = None) -> None:
    """Run ``client`` until signalled: SIGHUP reconnects make-before-break, SIGTERM drains (``stopping`` first:
    the --local listeners close, so users are refused rather than accepted and reset while it drains)."""
    from ..client.dialer import FatalClientError

    async def begin() -> None:
        if start is not None:
            await start()

    async def stop() -> None:
        if stopping is not None:
            stopping()
        await client.shutdown()

    try:
        run_until_signalled(begin, client.run_forever, stop=stop, reload=client.rotate)
    except FatalClientError as exc:
        fail(str(exc), 1)
