"""fedlab in a real browser: JupyterLab on localhost, driven through headless Chromium.

The recipe (NOTES, "JupyterLab in a real browser"): Debian's ``chromium`` driven by PyPI
``playwright`` (its driver ships in the wheel; ``playwright install`` is never used).
JupyterLab runs as a subprocess on a free port with a random token, in a temporary
workspace, with ``FEDLAB_DEMO_DIR`` pointing at a temporary directory so the demo is
built there. Two checks:

* ``01_quickstart`` run with Run → Run All Cells renders a result table and a chart image,
  and no output is an error;
* ``fl.explore``: choosing another strategy in the rendered widget changes the plan
  shown (naive: whole-table reads) and the chart.

Skips with a clear reason without ``/usr/bin/chromium`` or playwright, except under
``CI=true`` or ``FEDLAB_REQUIRE_BROWSER=1``, where that is a failure. Screenshots go to
``$FEDLAB_ARTIFACTS`` (default: the test's tmp dir); ``FEDLAB_UPDATE_SCREENSHOT=1`` also
refreshes the README's ``docs/img/quickstart.png``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SCREENSHOT = ROOT / "docs" / "img" / "quickstart.png"
CHROMIUM = os.environ.get("FEDLAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: bounds (seconds): server start, one notebook's Run All, one widget update
START_S, RUN_S, UPDATE_S = 40, 120, 30
MAX_SCREENSHOT_BYTES = 300_000
#: a fragment box of the plan that reads a whole table ("pushed  whole table")
WHOLE_TABLE = re.compile(r"pushed\s+(?:nothing \()?whole table")
#: the notebook on show (other tabs stay in the DOM, hidden)
NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"


def _require_browser() -> bool:
    return (
        os.environ.get("CI", "").lower() == "true"
        or os.environ.get("FEDLAB_REQUIRE_BROWSER") == "1"
    )


def _missing() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing (apt-get install chromium, or bash scripts/setup.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"playwright is not importable ({e}; pip install -c constraints.txt -e '.[dev]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
        "name": "python3",
    }
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)


class Lab:
    """A JupyterLab server (a subprocess in its own process group) and one Chromium."""

    def __init__(self, workspace: Path, url: str, token: str, browser: Any, artifacts: Path):
        self.workspace, self.url, self.token = workspace, url, token
        self.browser, self.artifacts = browser, artifacts
        self.page: Any = None

    def open(self, name: str) -> None:
        """Open notebook ``name`` alone in a fresh page (``reset``: no tabs restored)."""
        if self.page is not None:
            self.page.close()
        self.page = page = self.browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(UPDATE_S * 1000)
        page.goto(
            f"{self.url}/lab/tree/{name}?reset&token={self.token}", wait_until="domcontentloaded"
        )
        page.wait_for_selector(f"{NOTEBOOK} .jp-Cell", timeout=START_S * 1000)
        # the notebooks declare python3, so no "Select Kernel" dialog should block; accept
        # one if it appears anyway
        with contextlib.suppress(Exception):
            page.locator(".jp-Dialog button.jp-mod-accept").click(timeout=1500)
        # wait until a kernel is connected and idle (the status bar says "Python 3
        # (ipykernel) | Idle"; before that: "No Kernel", "Initializing", "Busy"): a Run All
        # sent earlier runs nothing
        page.wait_for_function(
            """() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(
                e => /^(?!No Kernel).+\\| Idle$/.test(e.textContent.trim()))""",
            timeout=START_S * 1000,
        )

    def run_all(self) -> dict[str, Any]:
        """Run → Run All Cells; wait until every code cell ran (or one failed)."""
        page = self.page
        page.locator("#jp-menu-panel").get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        state: dict[str, Any] = {}
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            state = self.state()
            if state["errors"] or (state["cells"] and state["done"] == state["cells"]):
                return state
            page.wait_for_timeout(500)
        self.screenshot("timeout")
        pytest.fail(f"Run All did not finish in {RUN_S}s: {state}")

    def state(self) -> dict[str, Any]:
        """Code cells, how many have an execution count, and the error outputs shown."""
        return self.page.evaluate(
            """(notebook) => {
                const nb = document.querySelector(notebook);
                const cells = nb ? [...nb.querySelectorAll('.jp-CodeCell')] : [];
                const prompts = cells.map(c => {
                    const p = c.querySelector('.jp-InputArea-prompt');
                    return p ? p.textContent.trim() : '';
                });
                const errors = !nb ? [] : [...nb.querySelectorAll(
                    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
                )].map(e => e.textContent).filter(
                    t => /Traceback|Error\\b|Exception\\b/.test(t)
                ).map(t => t.slice(0, 2000));
                return {
                    cells: cells.length,
                    done: prompts.filter(p => /^\\[\\d+\\]:?$/.test(p)).length,
                    busy: prompts.filter(p => p.includes('*')).length,
                    errors: errors,
                };
            }""",
            NOTEBOOK,
        )

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        with contextlib.suppress(Exception):
            self.page.screenshot(path=str(path))
        return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _missing()
    if reason is not None:
        if _require_browser():
            pytest.fail(reason + " (CI=true / FEDLAB_REQUIRE_BROWSER=1: the browser is required)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    base = tmp_path_factory.mktemp("browser")
    workspace, home = base / "workspace", base / "jupyter"
    workspace.mkdir()
    artifacts = Path(os.environ.get("FEDLAB_ARTIFACTS") or base / "artifacts")
    artifacts.mkdir(parents=True, exist_ok=True)
    # a quiet, private JupyterLab: no news toast, no saved layout, nothing from ~/.jupyter
    settings = home / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),  # the kernel's python
        "FEDLAB_DEMO_DIR": str(base / "demo"),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "IPYTHONDIR": str(home / "ipython"),
        "MPLBACKEND": "agg",
    }
    port, token = _free_port(), secrets.token_hex(16)
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={workspace}",
        "--ServerApp.port_retries=0",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (base / "jupyterlab.log").open("wb")
    server = subprocess.Popen(
        cmd, cwd=workspace, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited ({server.returncode}): {_tail(base)}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in {START_S}s: {_tail(base)}")
                time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                yield Lab(workspace, url, token, browser, artifacts)
            finally:
                browser.close()
    finally:
        _stop(server, url, token)
        log.close()


def _tail(base: Path) -> str:
    text = (base / "jupyterlab.log").read_text(errors="replace")
    return text[-3000:]


def _descendants(pid: int) -> list[int]:
    """PIDs started by ``pid``, children first (Linux /proc; kernels run in their own
    session, so the server's process group does not hold them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop(server: subprocess.Popen[bytes], url: str, token: str) -> None:
    """Stop JupyterLab: ask it to shut down (it stops its kernels), then terminate its
    process group, then kill whatever it started that is still there."""
    started = _descendants(server.pid)
    with contextlib.suppress(OSError):
        req = urllib.request.Request(f"{url}/api/shutdown?token={token}", method="POST")
        urllib.request.urlopen(req, timeout=5).close()
    for sig, wait in ((None, 10), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, sig)
        try:
            server.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _save_small_png(png: bytes, path: Path) -> None:
    """Write ``png`` to ``path``, quantized to a palette when that keeps it small."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if len(png) > MAX_SCREENSHOT_BYTES:
        img = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128)
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        png = buf.getvalue()
    path.write_bytes(png)


def test_quickstart_runs_all_and_renders_a_table_and_a_chart(lab: Lab) -> None:
    shutil.copy(NOTEBOOKS / "01_quickstart.ipynb", lab.workspace / "01_quickstart.ipynb")
    lab.open("01_quickstart.ipynb")
    state = lab.run_all()
    lab.screenshot("01_quickstart-end")
    assert not state["errors"], "an output shows an error:\n" + "\n---\n".join(state["errors"])
    assert state["busy"] == 0 and state["done"] == state["cells"], state

    outputs = lab.page.locator(f"{NOTEBOOK} .jp-OutputArea-output")
    tables = outputs.locator("table")
    images = outputs.locator("img")
    assert outputs.count() > 0
    assert tables.count() >= 1, "no result table rendered"
    assert images.count() >= 1, "no chart image rendered"
    # the first chart (res.plot()) is drawn and has a size
    chart = images.first
    chart.scroll_into_view_if_needed()
    box = chart.bounding_box()
    assert box is not None and box["width"] > 100 and box["height"] > 50, box

    # a picture for people: the trace table and res.plot()'s chart under it
    tables.first.scroll_into_view_if_needed()
    lab.screenshot("01_quickstart-top")
    chart.scroll_into_view_if_needed()
    shot = lab.page.screenshot()
    (lab.artifacts / "01_quickstart.png").write_bytes(shot)
    if os.environ.get("FEDLAB_UPDATE_SCREENSHOT") == "1":
        _save_small_png(shot, SCREENSHOT)
        assert SCREENSHOT.stat().st_size <= MAX_SCREENSHOT_BYTES


def test_explore_widget_follows_the_strategy_chosen_in_the_browser(lab: Lab) -> None:
    _write_notebook(
        lab.workspace / "explore.ipynb",
        [
            "import fedlab as fl\n"
            "fed = fl.demo.federation()\n"
            "ex = fl.explore(fed, fl.demo.SEED_QUERY)\n"
            "ex.widget"
        ],
    )
    lab.open("explore.ipynb")
    state = lab.run_all()
    assert not state["errors"], "an output shows an error:\n" + "\n---\n".join(state["errors"])

    page = lab.page
    widget = page.locator(f"{NOTEBOOK} .jp-OutputArea-output .widget-vbox").first
    widget.wait_for(state="visible", timeout=UPDATE_S * 1000)
    select = widget.locator(".widget-dropdown select").first
    assert select.input_value() == "auto"
    chart = widget.locator(".widget-image").first
    chart.wait_for(state="visible")
    before_text = widget.inner_text()
    before_chart = chart.get_attribute("src")
    assert "Plan [auto]" in before_text, before_text[:2000]
    assert WHOLE_TABLE.search(before_text) is None  # auto pushes projections and the filter
    assert re.search(r"pushed\s+projection", before_text), before_text[:2000]
    lab.screenshot("explore-auto")

    select.select_option("naive")
    page.wait_for_function(
        """(el) => el.innerText.includes('Plan [naive]')""",
        arg=widget.element_handle(),
        timeout=UPDATE_S * 1000,
    )
    page.wait_for_function(
        """([img, before]) => img.getAttribute('src') !== before""",
        arg=[chart.element_handle(), before_chart],
        timeout=UPDATE_S * 1000,
    )
    after_text = widget.inner_text()
    lab.screenshot("explore-naive")
    assert after_text != before_text
    # naive reads every column of both tables, and filters locally
    assert len(WHOLE_TABLE.findall(after_text)) == 2, after_text[:3000]
    assert "[naive]" in after_text  # the summary line names the strategy that ran
    assert "Plan [auto]" not in after_text
    assert not lab.state()["errors"]
