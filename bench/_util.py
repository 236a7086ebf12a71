"""Shared plumbing for the benchmarks: processes, ports, memory readings, statistics.

Kept free of any path-specific logic so that bench_tcp.py (and the HTTP bench later)
can reuse it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NoReturn

LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024


class BenchError(RuntimeError):
    """A path could not be set up or measured; the message says what was observed."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, as the ``inlets`` CLI gives them: the usage block above buried the line
    that says what was wrong."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def at_least(low: float, kind: type = int, above: bool = False) -> Callable[[str], float]:
    """An argparse type for a count or a bound: ``--repeat 0`` fell back to the default unnoticed (``or``), and
    ``--repeat -1`` or ``--seconds -1`` ran and printed empty or zero rows with exit 0."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"must be {'above' if above else 'at least'} {low:g} (got {text})")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def round_order(items: list, round_no: int) -> list:
    """The order of one round of interleaved runs: each round starts with the next item, and every other
    round runs in reverse. Turning alone changes which item runs first, not which runs before which: ssh -L
    always ran right after ssh -R, and paid for the idle its rounds left (bench_tcp), as the case after another
    paid up to 25% more CPU per GiB (bench_ha). With the reversal each item has two predecessors."""
    if not items:
        return []
    turn = round_no % len(items)
    order = items[turn:] + items[:turn]
    return order[::-1] if round_no % 2 else order


def nodelay(sock: socket.socket) -> socket.socket:
    """Every socket in the bench gets TCP_NODELAY (developer guide), so small writes are not delayed."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect(port: int, timeout: float = 10.0, host: str = LOOPBACK) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    nodelay(sock)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (the OS picks it; races are unlikely on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct free ports: all held bound until chosen, so two calls cannot return the same one."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def raise_nofile() -> int:
    """1,000 idle streams need ~4,000 descriptors across the processes; children inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def wait_until(pred, timeout: float, what: str, interval: float = 0.05, proc: "Proc | None" = None) -> None:
    """Poll ``pred`` with a deadline; fail with the process log if the process died meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n{proc.tail()}")
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(interval)
    extra = f"\n{proc.name} log:\n{proc.tail()}" if proc is not None else ""
    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")


def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    try:
        with connect(port, timeout=1.0, host=host):
            return True
    except OSError:
        return False


@dataclass
class Proc:
    """A child process with its combined output in a log file (read back when it misbehaves)."""

    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text[-lines:]) or "    (empty log)"

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)


def spawn(name: str, argv: list[str], logdir: Path, **kw) -> Proc:
    log = logdir / f"{name.replace(' ', '_')}.log"
    fh = open(log, "wb")
    try:
        popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    finally:
        fh.close()
    return Proc(name, popen, log)


@dataclass
class Procs:
    """Processes started for one path, stopped in reverse order whatever happens."""

    items: list[Proc] = field(default_factory=list)

    def add(self, proc: Proc) -> Proc:
        self.items.append(proc)
        return proc

    def stop_all(self) -> None:
        """A Ctrl-C or SIGTERM (run_main's SystemExit) landing while this waits on one process used to end
        the loop there and leave the rest running (bench_ha's teardown between rounds: 2 of 4 interrupts
        left 2-8 tunnel processes); now the rest are killed at once and the interrupt goes on afterwards."""
        interrupt: BaseException | None = None
        for proc in reversed(self.items):
            try:
                if interrupt is None:
                    proc.stop()
                else:
                    proc.popen.kill()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"warning: stopping {proc.name}: {exc}", file=sys.stderr)
            except BaseException as exc:  # KeyboardInterrupt, SystemExit
                interrupt = interrupt or exc
                proc.popen.kill()
        self.items.clear()
        if interrupt is not None:
            raise interrupt


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """pid and all its descendants (sshd forks a monitor and a session child per login)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mib(pids: list[int], key: str = "VmRSS") -> float:
    """Resident memory (VmRSS, or VmHWM for the peak) summed over ``pids``, in MiB."""
    total = 0
    for pid in pids:
        try:
            total += _status_kib(pid, key)
        except (OSError, ValueError):
            pass
    return total / 1024


def fd_count(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU consumed so far by ``pids`` (utime + stime from /proc/PID/stat)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            pass
    return total / tick


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat), to spot load from other processes."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:7]) - idle) / os.sysconf("SC_CLK_TCK")  # steal (the 8th) is no process's: see below


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave other guests while this machine's CPUs wanted to run (/proc/stat's
    steal), since boot: on a shared host every figure of a run slows by about this share, ssh's too."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()[1:]
    return (int(fields[7]) if len(fields) > 7 else 0) / os.sysconf("SC_CLK_TCK")


def foreign_share(our_pids: list[int], window: float = 1.0) -> float:
    """Share of the machine's CPU used by processes other than ``our_pids`` over ``window`` seconds."""
    busy0, ours0, t0 = machine_busy_seconds(), cpu_seconds(our_pids), time.monotonic()
    time.sleep(window)
    busy, ours, wall = machine_busy_seconds() - busy0, cpu_seconds(our_pids) - ours0, time.monotonic() - t0
    return max(0.0, busy - ours) / (wall * (os.cpu_count() or 1))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: p99 of 1,000 samples is the 990th smallest, no interpolation."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    """The middle value; with an even count the mean of the two middle ones (nearest-rank p50 would be the
    lower one: with --repeat 2 the "median" throughput was the worse run and the CPU per GiB the better)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def run_main(main, name: str) -> None:
    """Run a bench's ``main`` and exit: SIGTERM (``kill``, a CI timeout) unwinds like Ctrl-C, so the
    context managers stop every child process and remove the temp dir (by default Python dies at once and
    leaves them all running); a BenchError or an interrupt ends with one line, not a traceback."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        code = main()
    except BenchError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted; child processes stopped", file=sys.stderr)
        code = 130
    sys.exit(code)


def which(cmd: str, *extra_dirs: str) -> str | None:
    path = shutil.which(cmd)
    if path:
        return path
    for d in extra_dirs:
        candidate = Path(d) / cmd
        if candidate.exists():
            return str(candidate)
    return None
