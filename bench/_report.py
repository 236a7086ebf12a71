"""The printed report: environment header, ratio table and the issues' target verdicts."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from _util import MIB, steal_seconds

RSS_LIMIT_MIB = 60.0  # issue 2: each side, with 1,000 idle streams
RSS_IDLE_MIB = {"server": 30.0, "client": 20.0}  # issue 17: idle, no streams
SSH_CIPHER = "aes128-gcm@openssh.com"  # issue 17: the baseline, OpenSSH's fastest cipher with AES-NI
SSH_CIPHER2 = "chacha20-poly1305@openssh.com"  # OpenSSH's default, the second column
COLUMNS = ["direct", "tunnel", "py relay", "ssh -R", "ssh -L", "ssh -R alt", "ssh -L alt"]
#: ratio columns: tunnel against each reference
RATIOS = ["ssh -R", "ssh -L", "ssh -R alt", "py relay", "direct"]


@dataclass
class Config:
    seconds: float
    max_bytes: int
    repeat: int
    conns: int
    idle: int
    ssh_cipher: str | None
    ssh_cipher2: str | None = None
    settle: float = 1.0
    quiet_wait: float = 0.0
    quiet_share: float = 0.15


@dataclass
class Result:
    name: str
    note: str = ""
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)


# (key, label, better) in table order; "higher"/"lower" says which way is good.
# "down": server->client websocket frames (unmasked); "up": client->server (masked).
ROWS = [
    ("thr1_down", "down 1-stream throughput, Gbit/s", "higher"),
    ("thr1_down_best", "  best of {r}", "higher"),
    ("thr4_down", "down 4-stream throughput, Gbit/s", "higher"),
    ("thr4_down_best", "  best of {r}", "higher"),
    ("thr1_up", "up 1-stream throughput, Gbit/s", "higher"),
    ("thr1_up_best", "  best of {r}", "higher"),
    ("thr4_up", "up 4-stream throughput, Gbit/s", "higher"),
    ("thr4_up_best", "  best of {r}", "higher"),
    ("cpu1_down", "path CPU per GiB, down 1 stream, ms", "lower"),
    ("cpu4_down", "path CPU per GiB, down 4 streams, ms", "lower"),
    ("cpu1_up", "path CPU per GiB, up 1 stream, ms", "lower"),
    ("cpu4_up", "path CPU per GiB, up 4 streams, ms", "lower"),
    ("conns_total", "{n} sequential conns, total s", "lower"),
    ("conns_p50", "  connect+echo p50, ms", "lower"),
    ("conns_p99", "  connect+echo p99, ms", "lower"),
    ("rss_server_idle", "server RSS idle, MiB", "lower"),
    ("rss_client_idle", "client RSS idle, MiB", "lower"),
    ("rss_server_loaded", "server RSS after load, MiB", "lower"),
    ("rss_client_loaded", "client RSS after load, MiB", "lower"),
    ("rss_server_streams", "server RSS {i} idle streams, MiB", "lower"),
    ("rss_client_streams", "client RSS {i} idle streams, MiB", "lower"),
    ("kib_server_stream", "  server KiB per idle stream", "lower"),
    ("kib_client_stream", "  client KiB per idle stream", "lower"),
    ("rss_server_closed", "server RSS streams closed, MiB", "lower"),
    ("rss_client_closed", "client RSS streams closed, MiB", "lower"),
    ("rss_server_peak", "server RSS peak (VmHWM), MiB", "lower"),
    ("rss_client_peak", "client RSS peak (VmHWM), MiB", "lower"),
]


def _fmt(v: float | None, key: str) -> str:
    if v is None:
        return "-"
    if key.startswith("cpu"):
        return f"{v:.0f}"
    if key.startswith("thr") or key.startswith("conns_p"):
        return f"{v:.2f}"
    if key == "conns_total":
        return f"{v:.3f}"
    return f"{v:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _short(cipher: str | None) -> str:
    """aes128-gcm@openssh.com -> aes128-gcm, chacha20-poly1305@openssh.com -> chacha20: narrow columns."""
    return (cipher or "default").split("@")[0].removesuffix("-poly1305")


def column_names(cfg: Config) -> dict[str, str]:
    """Header of each column: the ssh ones say their cipher."""
    names = {c: c for c in COLUMNS}
    for kind in ("-R", "-L"):
        names[f"ssh {kind}"] = f"ssh{kind} {_short(cfg.ssh_cipher)}"
        names[f"ssh {kind} alt"] = f"ssh{kind} {_short(cfg.ssh_cipher2)}"
    return names


def table(results: dict[str, Result], cfg: Config) -> str:
    cols = [c for c in COLUMNS if c in results]
    refs = [c for c in RATIOS if c in results]
    names = column_names(cfg)
    # "/X" columns: the tunnel's value divided by column X's
    head = ["metric", "better"] + [names[c] for c in cols] + [f"/{names[c]}" for c in refs]
    lines = []
    for key, label, better in ROWS:
        vals = {c: results[c].metrics.get(key) for c in cols}
        if all(v is None for v in vals.values()):
            continue
        tun = vals.get("tunnel")
        lines.append([label.format(n=cfg.conns, i=cfg.idle, r=cfg.repeat), better]
                     + [_fmt(vals[c], key) for c in cols]
                     + [_ratio(tun, vals[c]) for c in refs])
    widths = [max(len(row[i]) for row in [head] + lines) for i in range(len(head))]
    out = []
    for n, row in enumerate([head] + lines):
        out.append("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def targets(results: dict[str, Result], cfg: Config) -> list[tuple[str, bool | None, str]]:
    """Issue 17's targets (and issue 2's RSS bound with idle streams), judged on medians.

    None means the numbers to judge it are missing.
    """
    tm = results["tunnel"].metrics if "tunnel" in results else {}
    rm = results["ssh -R"].metrics if "ssh -R" in results else {}
    lm = results["ssh -L"].metrics if "ssh -L" in results else {}
    ssh_r, ssh_l = f"ssh -R {_short(cfg.ssh_cipher)}", f"ssh -L {_short(cfg.ssh_cipher)}"
    out: list[tuple[str, bool | None, str]] = []

    def judge(label: str, key: str, ref: dict[str, float], higher: bool) -> None:
        if key in tm and key in ref and ref[key]:
            ok = tm[key] >= ref[key] if higher else tm[key] <= ref[key]
            out.append((label, ok, f"{tm[key] / ref[key]:.2f}x ({_fmt(tm[key], key)} vs {_fmt(ref[key], key)})"))
        else:
            out.append((label, None, "not measured"))

    for way in ("down", "up"):
        for streams in (1, 4):
            judge(f"{way} {streams}-stream throughput >= 1.0x {ssh_r}", f"thr{streams}_{way}", rm, True)
    for way in ("down", "up"):
        judge(f"path CPU per GiB, {way} 1 stream <= 1.0x {ssh_r}", f"cpu1_{way}", rm, False)
    judge(f"{cfg.conns} sequential connections <= 1.0x {ssh_l}", "conns_total", lm, False)
    for side, limit in RSS_IDLE_MIB.items():
        key = f"rss_{side}_idle"
        label = f"{side} RSS idle <= {limit:.0f} MiB"
        out.append((label, tm[key] <= limit, f"{tm[key]:.1f} MiB") if key in tm else (label, None, "not measured"))
    for side in ("server", "client"):
        key = f"rss_{side}_streams"
        label = f"{side} RSS with {cfg.idle} idle streams < {RSS_LIMIT_MIB:.0f} MiB (issue 2)"
        out.append((label, tm[key] < RSS_LIMIT_MIB, f"{tm[key]:.1f} MiB") if key in tm else (label, None, "not measured"))
    if cfg.idle < 1000 or cfg.conns < 1000:
        out.append(("counts as in the issues (1,000 conns, 1,000 idle streams)", None,
                    f"--quick or overridden: {cfg.conns} conns, {cfg.idle} idle streams"))
    return out


def _cmd(argv: list[str]) -> str:
    """First line of a command's output, "" when it printed nothing, "?" when it failed."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    if p.returncode != 0:
        return "?"
    lines = (p.stdout + p.stderr).strip().splitlines()
    return lines[0] if lines else ""


def machine_line() -> str:
    """The machine a table was measured on (issue 17: stated in every table's header)."""
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return f"machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"


@dataclass
class StealMark:
    """Where a run began, for ``steal_line``."""

    steal: float = field(default_factory=steal_seconds)
    wall: float = field(default_factory=time.monotonic)


def steal_line(mark: StealMark) -> str:
    """The share of the CPUs the hypervisor took since ``mark``: a noisy run says so in its header."""
    wall = time.monotonic() - mark.wall
    share = (steal_seconds() - mark.steal) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0
    warn = "  WARNING: figures are slower and noisier than on a quiet host; compare ratios" if share > 0.05 else ""
    return f"CPU taken by the hypervisor (steal) during the run: {share:.0%} of the machine{warn}"


def environment(cfg: Config, foreign: float | None, started: datetime.datetime, mark: StealMark) -> str:
    root = Path(__file__).resolve().parent.parent
    rev = _cmd(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    if _cmd(["git", "-C", str(root), "status", "--porcelain", "--", "runtime"]) not in ("", "?"):
        rev += " + uncommitted runtime/ changes"
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    lines = [
        machine_line(),
        f"started {started:%Y-%m-%d %H:%M UTC} on {platform.node()}",
        f"runtime at git {rev}",
        f"{loop} in target  {_cmd(['ssh', '-V'])}  "
        f"ssh ciphers: {cfg.ssh_cipher or 'OpenSSH default'}, second column {cfg.ssh_cipher2 or 'OpenSSH default'}",
        f"bounds: {cfg.seconds:g} s or {cfg.max_bytes / MIB:.0f} MiB per throughput run, {cfg.repeat} runs "
        f"interleaved across paths, median reported; {cfg.conns} sequential conns; {cfg.idle} idle streams",
    ]
    if foreign is not None:
        warn = "  WARNING: the machine was not quiet, ratios are noisy" if foreign > 0.10 else ""
        lines.append(f"CPU used by other processes during throughput runs: {foreign:.0%} of the machine{warn}")
    lines.append(steal_line(mark))
    return "\n".join(lines)
