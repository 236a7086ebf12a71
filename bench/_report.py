"""The printed report: environment header, ratio table and issue 2's target verdicts."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from _util import MIB

RSS_LIMIT_MIB = 60.0
COLUMNS = ["direct", "tunnel", "ssh -R", "ssh -L"]


@dataclass
class Config:
    seconds: float
    max_bytes: int
    repeat: int
    conns: int
    idle: int
    ssh_cipher: str | None
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
ROWS = [
    ("thr1", "1-stream throughput, Gbit/s", "higher"),
    ("thr1_best", "  best of {r}", "higher"),
    ("thr4", "4-stream throughput, Gbit/s", "higher"),
    ("thr4_best", "  best of {r}", "higher"),
    ("cpu1", "path CPU per GiB, 1 stream, ms", "lower"),
    ("cpu4", "path CPU per GiB, 4 streams, ms", "lower"),
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


def table(results: dict[str, Result], cfg: Config) -> str:
    head = ["metric", "better"] + COLUMNS + ["tunnel/ssh-R", "tunnel/ssh-L", "tunnel/direct"]
    lines = []
    for key, label, better in ROWS:
        vals = [results[c].metrics.get(key) if c in results else None for c in COLUMNS]
        if all(v is None for v in vals):
            continue
        lines.append([label.format(n=cfg.conns, i=cfg.idle, r=cfg.repeat), better]
                     + [_fmt(v, key) for v in vals]
                     + [_ratio(vals[1], vals[2]), _ratio(vals[1], vals[3]), _ratio(vals[1], vals[0])])
    widths = [max(len(row[i]) for row in [head] + lines) for i in range(len(head))]
    out = []
    for n, row in enumerate([head] + lines):
        out.append("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def targets(results: dict[str, Result], cfg: Config) -> list[tuple[str, bool | None, str]]:
    """Issue 2's targets, judged on medians; None means the numbers to judge it are missing."""
    tm = results["tunnel"].metrics if "tunnel" in results else {}
    sm = results["ssh -R"].metrics if "ssh -R" in results else {}
    out: list[tuple[str, bool | None, str]] = []
    for key, label in (("thr1", "1-stream throughput >= 1.0x ssh -R"), ("thr4", "4-stream throughput >= 1.0x ssh -R")):
        if key in tm and key in sm:
            out.append((label, tm[key] >= sm[key], f"{tm[key] / sm[key]:.2f}x (medians)"))
        else:
            out.append((label, None, "not measured"))
    label = f"{cfg.conns} sequential connections no slower than ssh -R"
    if "conns_total" in tm and "conns_total" in sm:
        out.append((label, tm["conns_total"] <= sm["conns_total"],
                    f"{tm['conns_total']:.3f} s vs {sm['conns_total']:.3f} s"))
    else:
        out.append((label, None, "not measured"))
    for key, label in (("rss_server_idle", "server RSS idle"), ("rss_client_idle", "client RSS idle"),
                       ("rss_server_streams", f"server RSS with {cfg.idle} idle streams"),
                       ("rss_client_streams", f"client RSS with {cfg.idle} idle streams")):
        label += f" < {RSS_LIMIT_MIB:.0f} MiB"
        if key in tm:
            out.append((label, tm[key] < RSS_LIMIT_MIB, f"{tm[key]:.1f} MiB"))
        else:
            out.append((label, None, "not measured"))
    if cfg.idle < 1000 or cfg.conns < 1000:
        out.append(("counts as in issue 2 (1,000 conns, 1,000 idle streams)", None,
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


def environment(cfg: Config, foreign: float | None, started: datetime.datetime) -> str:
    root = Path(__file__).resolve().parent.parent
    rev = _cmd(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    if _cmd(["git", "-C", str(root), "status", "--porcelain", "--", "runtime"]) not in ("", "?"):
        rev += " + uncommitted runtime/ changes"
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    lines = [
        f"started {started:%Y-%m-%d %H:%M UTC}  {platform.node()}  "
        f"{cpu} x{os.cpu_count()}  Linux {platform.release()}",
        f"runtime at git {rev}",
        f"python {platform.python_version()} ({loop} in target)  {_cmd(['ssh', '-V'])}  "
        f"ssh cipher: {cfg.ssh_cipher or 'OpenSSH default'}",
        f"bounds: {cfg.seconds:g} s or {cfg.max_bytes / MIB:.0f} MiB per throughput run, {cfg.repeat} runs "
        f"interleaved across paths, median reported; {cfg.conns} sequential conns; {cfg.idle} idle streams",
    ]
    if foreign is not None:
        warn = "  WARNING: the machine was not quiet, ratios are noisy" if foreign > 0.10 else ""
        lines.append(f"CPU used by other processes during throughput runs: {foreign:.0%} of the machine{warn}")
    return "\n".join(lines)
