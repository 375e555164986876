"""Small generic helpers shared by the benchmark scripts (tables, JSON, capped subprocesses).

Nothing here knows about a particular benchmark: keep it that way.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parent.parent


def mpiexec_cmd(ranks: int) -> list[str]:
    """``mpiexec -n ranks`` from this interpreter's environment (hpcql binds its ranks to cores
    itself: ``run.bind_cores``)."""
    exe = Path(sys.executable).parent / "mpiexec"
    return [str(exe) if exe.exists() else "mpiexec", "-n", str(ranks)]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A plain-text table in Markdown pipe syntax, columns padded to align."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"

    out = [title, ""] if title else []
    out.append(line(cells[0]))
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out.extend(line(r) for r in cells[1:])
    return "\n".join(out)


def fmt_num(x: float | None, digits: int = 3) -> str:
    """Compact number: None as '-', else `digits` significant digits."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def machine_info() -> dict[str, Any]:
    """Host facts worth recording next to timings."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_total_kb"] = int(line.split()[1])
                break
    except OSError:
        pass
    return info


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (creating parent folders), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    tmp.replace(path)
    return path


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


@dataclass
class CappedRun:
    """Outcome of ``run_capped``."""

    status: str  # "ok" | "failed" | "cap" | "setup-timeout"
    returncode: int | None
    elapsed: float
    """Seconds from launch to exit (or kill)."""
    solve_elapsed: float | None
    """Seconds from the start marker to exit (or kill); None when no marker was seen."""
    output: str
    extra: dict[str, Any] = field(default_factory=dict)


def run_capped(cmd: Sequence[str], cap: float, log_path: str | Path, start_marker: str | None = None,
               setup_limit: float = 300.0, env: dict[str, str] | None = None, cwd: str | Path | None = None,
               poll: float = 0.1, on_line: Callable[[str], None] | None = None) -> CappedRun:
    """Run ``cmd`` (stdout+stderr to ``log_path``) and kill its process group past the cap.

    With ``start_marker`` the cap counts from the first output line containing it
    (so model building / loading is not charged to the solve); before the marker
    the process gets ``setup_limit`` seconds. Without a marker the cap counts from launch.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    t_mark: float | None = None if start_marker else t0
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        status = None
        seen = 0
        while True:
            rc = proc.poll()
            now = time.perf_counter()
            if start_marker and t_mark is None or on_line is not None:
                text = log_path.read_bytes()[seen:].decode(errors="replace")
                if "\n" in text:
                    complete, _ = text.rsplit("\n", 1)
                    seen += len(complete.encode()) + 1
                    for ln in complete.split("\n"):
                        if on_line is not None:
                            on_line(ln)
                        if start_marker and t_mark is None and start_marker in ln:
                            t_mark = now
            if rc is not None:
                status = "ok" if rc == 0 else "failed"
                break
            if t_mark is None and now - t0 > setup_limit:
                status = "setup-timeout"
            elif t_mark is not None and now - t_mark > cap:
                status = "cap"
            if status:
                _kill_group(proc)
                break
            time.sleep(poll)
    end = time.perf_counter()
    output = log_path.read_text(errors="replace")
    return CappedRun(status, proc.returncode, end - t0, None if t_mark is None else end - t_mark, output)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's own process group (it was started in a new session), then SIGKILL."""
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
