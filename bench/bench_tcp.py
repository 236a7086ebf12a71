#!/usr/bin/env python3
"""TCP tunnel benchmark: direct loopback vs this tunnel vs OpenSSH ``ssh -R`` / ``ssh -L``.

One run measures every path on this machine against the same target service and
prints a table of ratios, so results compare within a run rather than across machines
(developer guide: performance is measured here, not asserted in timed tests).

    .venv/bin/python bench/bench_tcp.py            # full run (a few minutes)
    .venv/bin/python bench/bench_tcp.py --quick    # smoke run (< 30 s)

See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath

sys.path.insert(0, str(FsPath(__file__).resolve().parent))

import _load  # noqa: E402
import _paths  # noqa: E402
from _util import MIB, BenchError, cpu_seconds, fd_count, median, raise_nofile, rss_mib  # noqa: E402

RSS_LIMIT_MIB = 60.0
PATHS = ("direct", "tunnel", "ssh-R", "ssh-L")


@dataclass
class Config:
    seconds: float
    max_bytes: int
    repeat: int
    conns: int
    idle: int
    ssh_cipher: str | None
    settle: float = 1.0


@dataclass
class Result:
    name: str
    note: str = ""
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)


def measure(path: _paths.Path, cfg: Config, target_pid: int, log) -> Result:
    """All metrics for one path; memory only where the path has processes of its own."""
    r = Result(path.name, path.note)
    m = r.metrics
    has_procs = bool(path.server_pids())
    time.sleep(cfg.settle if has_procs else 0)
    if has_procs:
        m["rss_server_idle"] = rss_mib(path.server_pids())
        m["rss_client_idle"] = rss_mib(path.client_pids())
    for streams in (1, 4):
        key = f"thr{streams}"
        r.samples[key] = []
        r.samples[f"cpu{streams}"] = []
        for _ in range(cfg.repeat):
            pids = path.server_pids() + path.client_pids()
            cpu0, self0, tgt0 = cpu_seconds(pids), cpu_seconds([os.getpid()]), cpu_seconds([target_pid])
            res = _load.throughput(path.sink_port, streams, cfg.max_bytes, cfg.seconds)
            cpu = cpu_seconds(pids) - cpu0
            gen, tgt = cpu_seconds([os.getpid()]) - self0, cpu_seconds([target_pid]) - tgt0
            r.samples[key].append(res.gbits)
            gib = res.bytes / (1024 * MIB)
            if pids:
                r.samples[f"cpu{streams}"].append(cpu * 1e3 / gib)
            log(f"  {path.name}: {streams} stream(s) {res.gbits:.2f} Gbit/s "
                f"({res.bytes / MIB:.0f} MiB in {res.seconds:.2f} s; CPU s: path {cpu:.2f}, "
                f"generator {gen:.2f}, target {tgt:.2f})")
        m[key] = median(r.samples[key])
        if r.samples[f"cpu{streams}"]:
            m[f"cpu{streams}"] = median(r.samples[f"cpu{streams}"])
    sc = _load.short_connections(path.echo_port, cfg.conns, max_seconds=max(60.0, cfg.conns * 0.2))
    log(f"  {path.name}: {sc.count} sequential connections in {sc.total_s:.2f} s, "
        f"p50 {sc.p50_ms:.2f} ms, p99 {sc.p99_ms:.2f} ms, failures {sc.failures}")
    if sc.failures:
        raise BenchError(f"{sc.failures} of {sc.count} short connections failed; first: {sc.first_error}")
    m.update(conns_total=sc.total_s, conns_p50=sc.p50_ms, conns_p99=sc.p99_ms)
    t = time.monotonic()
    socks = _load.open_idle(path.echo_port, cfg.idle, max_seconds=max(60.0, cfg.idle * 0.2))
    log(f"  {path.name}: {cfg.idle} idle streams opened in {time.monotonic() - t:.2f} s")
    try:
        if has_procs:
            time.sleep(cfg.settle)
            m["rss_server_streams"] = rss_mib(path.server_pids())
            m["rss_client_streams"] = rss_mib(path.client_pids())
            m["fds_server_streams"] = fd_count(path.server_pids())
            m["fds_client_streams"] = fd_count(path.client_pids())
    finally:
        _load.close_all(socks)
    if has_procs:
        time.sleep(cfg.settle)
        m["rss_server_closed"] = rss_mib(path.server_pids())
        m["rss_client_closed"] = rss_mib(path.client_pids())
        m["rss_server_peak"] = rss_mib(path.server_pids(), "VmHWM")
        m["rss_client_peak"] = rss_mib(path.client_pids(), "VmHWM")
    return r


# (key, label, better) in table order; "higher"/"lower" says which way is good.
ROWS = [
    ("thr1", "1-stream throughput, Gbit/s", "higher"),
    ("thr4", "4-stream throughput, Gbit/s", "higher"),
    ("cpu1", "  path CPU per GiB, 1 stream, ms", "lower"),
    ("cpu4", "  path CPU per GiB, 4 streams, ms", "lower"),
    ("conns_total", "{n} sequential conns, total s", "lower"),
    ("conns_p50", "  connect+echo p50, ms", "lower"),
    ("conns_p99", "  connect+echo p99, ms", "lower"),
    ("rss_server_idle", "server RSS idle, MiB", "lower"),
    ("rss_client_idle", "client RSS idle, MiB", "lower"),
    ("rss_server_streams", "server RSS {i} idle streams, MiB", "lower"),
    ("rss_client_streams", "client RSS {i} idle streams, MiB", "lower"),
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
    cols = ["direct", "tunnel", "ssh -R", "ssh -L"]
    head = ["metric", "better"] + cols + ["tunnel/ssh-R", "tunnel/ssh-L", "tunnel/direct"]
    lines = []
    for key, label, better in ROWS:
        vals = [results[c].metrics.get(key) if c in results else None for c in cols]
        if all(v is None for v in vals):
            continue
        lines.append([label.format(n=cfg.conns, i=cfg.idle), better] + [_fmt(v, key) for v in vals]
                     + [_ratio(vals[1], vals[2]), _ratio(vals[1], vals[3]), _ratio(vals[1], vals[0])])
    widths = [max(len(row[i]) for row in [head] + lines) for i in range(len(head))]
    out = []
    for n, row in enumerate([head] + lines):
        out.append("  ".join(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def targets(results: dict[str, Result], cfg: Config) -> list[tuple[str, bool | None, str]]:
    """Issue 2's targets; None means the numbers to judge it are missing."""
    t = results.get("tunnel")
    s = results.get("ssh -R")
    tm = t.metrics if t else {}
    sm = s.metrics if s else {}
    out: list[tuple[str, bool | None, str]] = []
    for key, label in (("thr1", "1-stream throughput >= 1.0x ssh -R"), ("thr4", "4-stream throughput >= 1.0x ssh -R")):
        if key in tm and key in sm:
            out.append((label, tm[key] >= sm[key], f"{tm[key] / sm[key]:.2f}x"))
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


def environment(cfg: Config) -> str:
    def cmd(argv: list[str]) -> str:
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    root = FsPath(__file__).resolve().parent.parent
    rev = cmd(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    dirty = cmd(["git", "-C", str(root), "status", "--porcelain", "--", "runtime"])
    rev += " + uncommitted runtime/ changes" if dirty not in ("?", "") and not dirty.startswith("fatal") else ""
    cpu = "?"
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}  {platform.node()}  "
            f"{cpu} x{os.cpu_count()}  Linux {platform.release()}\n"
            f"runtime at git {rev}\n"
            f"python {platform.python_version()} ({loop} in target)  {cmd(['ssh', '-V'])}  "
            f"ssh cipher: {cfg.ssh_cipher or 'OpenSSH default'}\n"
            f"bounds: {cfg.seconds:g} s or {cfg.max_bytes / MIB:.0f} MiB per throughput run, "
            f"median of {cfg.repeat}; {cfg.conns} sequential conns; {cfg.idle} idle streams")


def run_path(name: str, target: _paths.Target, tmp: FsPath, cfg: Config, get_sshd, log) -> Result:
    label = {"ssh-R": "ssh -R", "ssh-L": "ssh -L"}.get(name, name)
    log(f"[{label}] setting up")
    path: _paths.Path | None = None
    try:
        with contextlib.ExitStack() as inner:
            if name == "direct":
                path = inner.enter_context(_paths.direct(target))
            elif name == "tunnel":
                path = inner.enter_context(_paths.tunnel(target, tmp))
            else:
                path = inner.enter_context(_paths.ssh_forward("-" + name[-1], target, get_sshd(),
                                                              cfg.ssh_cipher))
            return measure(path, cfg, target.proc.popen.pid, log)
    except Exception as exc:  # noqa: BLE001 - one failed path must not hide the others
        msg = str(exc) if isinstance(exc, BenchError) else traceback.format_exc()
        if path is not None and path.procs:
            msg += "\n" + path.logs()
        log(f"[{label}] FAILED: {msg}")
        return Result(label, error=msg)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 s, 512 MiB, 1 repeat, 200 conns/streams")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {','.join(PATHS)}")
    ap.add_argument("--seconds", type=float, help="time bound per throughput run (default 5)")
    ap.add_argument("--max-mib", type=int, help="byte bound per throughput run, MiB (default 2048)")
    ap.add_argument("--repeat", type=int, help="throughput runs per path and stream count; median reported (default 3)")
    ap.add_argument("--conns", type=int, help="sequential short connections (default 1000)")
    ap.add_argument("--idle", type=int, help="idle streams held open for the memory reading (default 1000)")
    ap.add_argument("--ssh-cipher", help="force an ssh cipher, e.g. aes128-gcm@openssh.com (default: OpenSSH's)")
    ap.add_argument("--json", type=FsPath, help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    q = args.quick
    cfg = Config(
        seconds=args.seconds or (1.0 if q else 5.0),
        max_bytes=(args.max_mib or (512 if q else 2048)) * MIB,
        repeat=args.repeat or (1 if q else 3),
        conns=args.conns or (200 if q else 1000),
        idle=args.idle or (200 if q else 1000),
        ssh_cipher=args.ssh_cipher,
        settle=0.5 if q else 1.0,
    )
    wanted = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in PATHS]
    if unknown:
        ap.error(f"unknown path(s) {unknown}; choose from {PATHS}")
    raise_nofile()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.monotonic()
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="inlets-bench-") as tmpname, contextlib.ExitStack() as stack:
        tmp = FsPath(tmpname)
        target = stack.enter_context(_paths.target(tmp))
        sshd_box: list[_paths.Sshd] = []

        def get_sshd() -> _paths.Sshd:
            """One sshd serves both ssh paths; started on first use."""
            if not sshd_box:
                sshd_box.append(stack.enter_context(_paths.sshd(tmp)))
            return sshd_box[0]

        for name in PATHS:
            if name in wanted:
                r = run_path(name, target, tmp, cfg, get_sshd, log)
                results[r.name] = r
    print()
    print(environment(cfg))
    print()
    print(table(results, cfg))
    print()
    print("targets (issue 2):")
    for label, ok, detail in targets(results, cfg):
        mark = "PASS" if ok else ("n/a " if ok is None else "FAIL")
        print(f"  [{mark}] {label}: {detail}")
    failed = [r for r in results.values() if r.error]
    for r in failed:
        first = r.error.strip().splitlines()
        print(f"\n{r.name} FAILED: {first[0] if first else ''}")
        for line in first[1:40]:
            print(f"  {line}")
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"config": asdict(cfg), "results": {k: asdict(v) for k, v in results.items()}},
                                        indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
