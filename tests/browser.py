"""Opening a page in headless Chromium (Debian's ``chromium``, installed by ``make setup``):
the DOM after its scripts ran, and every console message it logged."""

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

CONSOLE = re.compile(r":CONSOLE[:(]\d+\)?\] (.*)$")


class Rendered(NamedTuple):
    dom: str
    """The document after its scripts ran (``--dump-dom``)."""
    console: list[str]
    """Every console message (logs, errors, uncaught exceptions), in order."""


def chromium() -> str | None:
    return shutil.which("chromium")


def render(page: Path, budget_ms: int = 20_000) -> Rendered:
    """Load ``page`` offline in headless Chromium, let its scripts run for up to
    ``budget_ms`` of virtual time, and return the DOM and the console messages."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium() or "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                f"--virtual-time-budget={budget_ms}",
                "--dump-dom",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    console = [m.group(1) for line in done.stderr.splitlines() if (m := CONSOLE.search(line))]
    return Rendered(done.stdout, console)


def figures_rendered(dom: str) -> list[bool]:
    """For each report figure (``<div class="figure">``), whether plotly drew its SVG."""
    chunks = dom.split('<div class="figure">')[1:]
    return ['class="main-svg"' in chunk.split('<div class="figure">')[0] for chunk in chunks]
