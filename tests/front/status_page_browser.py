"""Headless Chromium against the head's /status page: the DOM after its scripts ran, and a screenshot.

Debian's `chromium` (images/local/install.sh installs it) runs headless as root with --no-sandbox.
It has no option to trust a CA file, so these helpers pass --ignore-certificate-errors, and only
for loopback URLs (the tests' own fronts and the local cluster's published port). Each run gets a
fresh profile directory, removed afterwards; the process is killed by its PID on timeout.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from lxml import html as lxml_html

BROWSER_TIMEOUT = 90
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def chromium() -> str:
    """Path of the chromium binary; the test fails (never skips) without it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed (images/local/install.sh installs Debian's chromium)")
    return path


def _run(url: str, *args: str) -> subprocess.CompletedProcess:
    host = urlsplit(url).hostname
    assert host in LOOPBACK, f"certificate checks are skipped only for loopback, not {host}"
    profile = tempfile.mkdtemp(prefix="conclave-chromium-")
    argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
            f"--user-data-dir={profile}", *args, url]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"chromium did not finish within {BROWSER_TIMEOUT}s: {err.decode(errors='replace')[-2000:]}")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def dump_dom(url: str, *, budget_ms: int = 8000) -> str:
    """The serialized DOM once the page's scripts ran for `budget_ms` of virtual time."""
    done = _run(url, "--dump-dom", f"--virtual-time-budget={budget_ms}")
    dom = done.stdout.decode(errors="replace")
    assert done.returncode == 0 and "<html" in dom, \
        f"chromium --dump-dom failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}"
    return dom


def screenshot(url: str, path: Path, *, size: str = "1280,900", budget_ms: int = 8000) -> Path:
    """A PNG of the page after `budget_ms` of virtual time."""
    path = Path(path)
    done = _run(url, f"--screenshot={path}", f"--window-size={size}", "--hide-scrollbars",
                f"--virtual-time-budget={budget_ms}")
    assert done.returncode == 0 and path.is_file(), \
        f"chromium --screenshot failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}"
    return path


class StatusDom:
    """What the drawn page shows: per node its pipeline box and table row, and the figures."""

    def __init__(self, dom: str):
        self.dom = dom
        self.tree = lxml_html.fromstring(dom)

    def polls(self) -> int:
        return int(self.tree.body.get("data-polls") or 0)

    def figure(self, name: str) -> str:
        found = self.tree.xpath(f'//*[@id="fig-{name}"]')
        assert found, f"no figure {name} in the DOM"
        return found[0].text_content().strip()

    def number(self, name: str) -> float:
        value = self.figure(name)
        assert value not in ("", "-"), f"figure {name} has no value: {value!r}"
        return float(value)

    def pipeline(self) -> dict[str, dict]:
        """node -> {"layers", "state", "text"} from the SVG stage boxes."""
        out = {}
        for g in self.tree.xpath('//*[@id="pipeline-svg"]//*[local-name()="g"][@data-node]'):
            out[g.get("data-node")] = {"layers": g.get("data-layers"), "state": g.get("data-state"),
                                       "text": " ".join(t.text_content() for t in g.xpath('.//*[local-name()="text"]'))}
        return out

    def rows(self) -> dict[str, list[str]]:
        """node -> the cells of its row in the nodes table."""
        return {tr.get("data-node"): [td.text_content() for td in tr.xpath("./td")]
                for tr in self.tree.xpath('//table[@id="nodes"]/tbody/tr')}


def png_colours(path: Path) -> int:
    """How many distinct colours the PNG holds (a blank or error page has very few)."""
    from PIL import Image
    with Image.open(path) as img:
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours or ())
