"""What both reports share: the machine's facts, number formatting, atomic result files.

Kept apart from ``run.py`` (the foundation benchmark) and ``cluster.py`` (the cluster benchmark)
so that neither imports the other's module for them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def fmt(value: float | None, spec: str = ",.0f") -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return format(value, spec)


def machine_facts() -> dict[str, str]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = []
    for pkg in ("Django", "djangorestframework", "gunicorn", "gevent", "redis", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions.append(f"{pkg} {metadata.version(pkg)}")
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model or platform.processor() or "?",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "packages": ", ".join(versions),
    }


def loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine_table(
    started: dt.datetime, load_before: str, load_after: str, extra: Sequence[str] = ()
) -> list[str]:
    """The machine-facts table both reports open with (``extra``: more table rows)."""
    facts = machine_facts()
    return [
        "| machine | |",
        "| --- | --- |",
        f"| date (UTC) | {started:%Y-%m-%d %H:%M:%S} |",
        f"| nproc | {facts['nproc']} ({facts['cpu']}) |",
        f"| python | {facts['python']} ({sys.executable}) |",
        f"| os | {facts['os']} |",
        f"| packages | {facts['packages']} |",
        *extra,
        f"| load average 1/5/15 min | before {load_before}, after {load_after} |",
    ]


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command that reproduces this run, as the reports print it."""
    return f"cd {ROOT} && .venv/bin/python {script}" + "".join(" " + shlex.quote(x) for x in argv)


def shown(path: Path) -> str:
    """``path`` relative to the project when it is inside it (for "wrote ..." lines)."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_bytes(path: Path, data: bytes) -> None:
    """Write through a temp file, so a reader never sees half a result file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode())


def save_figure(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG (through a temp file) and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    tmp.replace(path)


def publish(out: Path, name: str, plot: Callable[[Path], None], text: Callable[[Path], str]) -> int:
    """Draw ``out/name.png``, write ``out/name.md`` (which shows it) and print the table."""
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{name}.png"
    plot(png)
    body = text(png)
    write_text(out / f"{name}.md", body)
    print(body)
    return 0
