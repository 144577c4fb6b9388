"""report.html in a real headless browser (Debian's chromium): it opens offline, as one file, with no console
errors, and every plot on it loads and shows; a full-page screenshot is kept (tests/artifacts/, or
$PEFTBENCH_TEST_ARTIFACTS).

The browser is driven over the Chrome DevTools Protocol on --remote-debugging-pipe (fd 3 and 4, messages
ended by NUL): no websocket, no dependency. The page is opened from an empty folder, with every host name
unresolvable and a dead proxy, and any request other than the page itself or a data: URL counts as a
problem. A plot is visible when it loaded, has a size, is not hidden by CSS, is what the browser finds
at its centre (nothing covers it), and is more than one colour in the screenshot. Planted faults (a
broken, hidden, covered or blank plot, a script error, a console.error, a plot not inlined, a request to
the internet) must each be caught on the real page, and a hung browser must fail in time.

Chromium, if missing, is installed by scripts/install_chromium.sh only with PEFTBENCH_TEST_INSTALL=1.
"""
import base64
import fcntl
import html.parser
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from peftbench.compare import compare
from peftbench.config import load_config
from peftbench.report import build_report
from system_installs import skip_unless_opted_in
from test_compare import degraded, write_run
from test_report import MANIFEST, selection, train_metrics

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALLER = ROOT / "scripts" / "install_chromium.sh"
TIMEOUT = 60  # seconds for one page, launch to screenshot: a hung browser fails the test
WIDTH, HEIGHT = 1280, 900


def find_browser():
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


@pytest.fixture(scope="module")
def browser():
    """The chromium executable: installed here where missing, if the tests may install system packages."""
    path = find_browser()
    if path:
        return path
    missing = subprocess.run([str(INSTALLER), "missing"], capture_output=True, text=True).stdout.strip()
    skip_unless_opted_in(missing or "chromium", f"{INSTALLER.relative_to(ROOT)}, with apt-get")
    started = time.monotonic()
    installed = subprocess.run([str(INSTALLER)], capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, f"installing chromium failed:\n{installed.stderr[-3000:]}"
    print(f"installed chromium in {time.monotonic() - started:.0f} s")
    path = find_browser()
    assert path, f"{INSTALLER.name} ran, and still no {' or '.join(BROWSERS)} on PATH"
    return path


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    """report.html of a real report: three variants over seeds, tuned rates, and so every kind of plot."""
    tmp = tmp_path_factory.mktemp("browser")
    paths = [write_run(tmp, "base", None, degraded(4))]
    paths += [write_run(tmp, m, seed, degraded(1 + seed)) for m in ("lora", "hybrid") for seed in (0, 1)]
    comparison = compare(paths, samples=100)
    comparison.update(bleu_signature="nrefs:1", rouge={"type": "rougeL", "use_stemmer": True})
    config = {**load_config(ROOT / "config.yaml", ROOT / "configs" / "demo.yaml"),
              "compare": ["base", "lora", "hybrid"], "seeds": [0, 1]}
    metrics = {m: [train_metrics(m, s) for s in (0, 1)] for m in ("lora", "hybrid")}
    for m, rates in (("lora", {"lr": 1e-3}), ("hybrid", {"lr": 2.5e-4, "galore_lr": 5e-5})):
        for run in metrics[m]:
            run.update(learning_rates=rates, tuned=True, validation_loss=1.9, validation_examples=16,
                       validation=[{"step": 2, "loss": 2.1}, {"step": 3, "loss": 1.9}])
    selections = [selection("lora", [2.5e-4, 5e-4, 1e-3], [2.4, 2.2, 2.0], 1e-3, edge="highest"),
                  selection("hybrid", [2.5e-4, 5e-4, 1e-3], [2.1, 2.3, 2.5], 2.5e-4, edge="lowest",
                            learning_rates=("lr", "galore_lr"))]
    out = tmp / "report" / "report.md"
    build_report(config, comparison, metrics, MANIFEST, [], out, selections)
    return out.with_name("report.html")


# --- what the page loads, read from its HTML ------------------------------------------------------------

class _Loads(html.parser.HTMLParser):
    """Every URL the page would load by itself (not the links a reader may follow)."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "poster", "data", "background"):
            if attrs.get(name):
                self.urls.append(attrs[name])
        for name in ("srcset", "imagesrcset"):
            if attrs.get(name):
                self.urls += [part.split()[0] for part in attrs[name].split(",") if part.strip()]
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])
        if tag in ("image", "use") and (attrs.get("href") or attrs.get("xlink:href")):
            self.urls.append(attrs.get("href") or attrs.get("xlink:href"))
        self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", attrs.get("style") or "")

    def handle_data(self, data):  # <style> text: url(...) and @import
        self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)|@import\s+['\"]([^'\"]+)", data)


def not_inlined(page_html):
    """The URLs the page loads that are not inside it (anything but data:)."""
    parser = _Loads()
    parser.feed(page_html)
    urls = [u if isinstance(u, str) else "".join(u) for u in parser.urls]
    return [u for u in urls if not u.strip().lower().startswith("data:")]


# --- the browser, over the DevTools protocol -------------------------------------------------------------

class DevTools:
    """A headless chromium driven over --remote-debugging-pipe, every wait bounded by one deadline."""

    def __init__(self, executable, profile, timeout=TIMEOUT):
        self.deadline = time.monotonic() + timeout
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()

        def fds_3_and_4():  # in the child: the protocol's pipe ends at the numbers chromium expects
            read, write = fcntl.fcntl(to_browser, fcntl.F_DUPFD, 10), fcntl.fcntl(from_browser, fcntl.F_DUPFD, 10)
            os.dup2(read, 3)
            os.dup2(write, 4)

        flags = ["--headless", "--no-sandbox", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                 "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
                 "--force-device-scale-factor=1",
                 "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",  # offline
                 f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        Path(profile).mkdir(parents=True, exist_ok=True)
        self.log = open(Path(profile) / "chromium.log", "w+")
        self.process = subprocess.Popen([executable, *flags], stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT, pass_fds=(3, 4), preexec_fn=fds_3_and_4,
                                        start_new_session=True)  # its own group: killed whole on a hang
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._next_id, self.events = b"", 0, []

    def close(self):
        try:
            if self.process.poll() is None and time.monotonic() < self.deadline:
                try:
                    self.send("Browser.close", timeout=5)
                    self.process.wait(timeout=10)
                except Exception:
                    pass
            if self.process.poll() is None:  # hung: the browser and every process it started
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        finally:
            os.close(self._write)
            os.close(self._read)
            self.log.close()

    def _left(self, timeout=None):
        left = self.deadline - time.monotonic()
        if timeout is not None:
            left = min(left, timeout)
        if left <= 0:
            self.log.seek(0)
            raise TimeoutError(f"chromium did not answer in time; its log:\n{self.log.read()[-3000:]}")
        return left

    def _message(self, timeout=None):
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._read], [], [], self._left(timeout))
            if not ready:
                continue
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                self.log.seek(0)
                raise RuntimeError(f"chromium exited ({self.process.poll()}); its log:\n{self.log.read()[-3000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method, params=None, session=None, timeout=None):
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message(timeout)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method, timeout=None):
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._message(timeout))


IMAGES = """(async () => {
  await document.fonts.ready;
  await Promise.all(Array.from(document.images, img => img.decode().catch(() => null)));
  const shown = [];
  for (const [i, img] of Array.from(document.images).entries()) {
    img.scrollIntoView({block: "center", inline: "center"});
    const r = img.getBoundingClientRect();
    const x = Math.min(Math.max(r.left + r.width / 2, 0), innerWidth - 1);
    const y = Math.min(Math.max(r.top + r.height / 2, 0), innerHeight - 1);
    shown.push({index: i + 1, alt: img.alt, src: (img.getAttribute("src") || "").slice(0, 60),
                loaded: img.complete && img.naturalWidth > 0 && img.naturalHeight > 0,
                width: r.width, height: r.height, left: r.left + scrollX, top: r.top + scrollY,
                styled_visible: img.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}),
                on_top: document.elementFromPoint(x, y) === img});
  }
  scrollTo(0, 0);
  return shown;
})()"""


def open_page(executable, page, workdir, timeout=TIMEOUT):
    """Open `page` alone in an empty folder, offline: its images, console errors, requests, screenshot."""
    folder = workdir / "alone"
    folder.mkdir()
    alone = folder / "report.html"
    shutil.copy(page, alone)
    browser = DevTools(executable, workdir / "profile", timeout)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False}, session=session)
        browser.events.clear()
        navigated = browser.send("Page.navigate", {"url": alone.as_uri()}, session=session)
        assert not navigated.get("errorText"), navigated
        browser.wait_for("Page.loadEventFired")
        images = browser.send("Runtime.evaluate", {"expression": IMAGES, "awaitPromise": True, "returnByValue": True},
                              session=session)
        assert "exceptionDetails" not in images, images
        size = browser.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}, session=session)
        time.sleep(0.2)  # a late event (a console message, a request): read while waiting for this answer
        browser.send("Runtime.evaluate", {"expression": "1"}, session=session)
    finally:
        browser.close()
    return {"url": alone.as_uri(), "html": alone.read_text(), "images": images["result"]["value"],
            "events": browser.events, "screenshot": base64.b64decode(shot["data"])}


def console_errors(events):
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            errors.append("console." + params["type"] + ": " +
                          " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append("uncaught: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"{params['entry']['source']}: {params['entry']['text']} {params['entry'].get('url', '')}")
    return errors


def requests_elsewhere(events, page_url):
    urls = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return [u for u in urls if u != page_url and not u.startswith("data:")]


def painted(screenshot, image):
    """Whether the screenshot shows more than one colour where the image is."""
    from PIL import Image

    shot = Image.open(io.BytesIO(screenshot)).convert("RGB")
    box = [round(image["left"]), round(image["top"]), round(image["left"] + image["width"]),
           round(image["top"] + image["height"])]
    if box[2] <= box[0] or box[3] <= box[1] or box[2] > shot.width or box[3] > shot.height:
        return False
    extrema = shot.crop(box).getextrema()
    return any(low != high for low, high in extrema)


def problems(result):
    """Everything wrong with an opened page, one line each; none for a good page."""
    found = [f"loads {url}: not inside the page" for url in not_inlined(result["html"])]
    found += [f"requested {url}" for url in requests_elsewhere(result["events"], result["url"])]
    found += console_errors(result["events"])
    if not result["images"]:
        found.append("no images on the page")
    for image in result["images"]:
        name = f"image {image['index']} ({image['alt'] or image['src']})"
        if not image["loaded"]:
            found.append(f"{name} did not load")
        elif not (image["width"] >= 1 and image["height"] >= 1 and image["styled_visible"] and image["on_top"]):
            found.append(f"{name} is not visible: {image}")
        elif not painted(result["screenshot"], image):
            found.append(f"{name} is blank in the screenshot")
    return found


def artifact_path(name):
    folder = Path(os.environ.get("PEFTBENCH_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_the_report_page_renders_offline_with_every_plot_visible(browser, report_page, tmp_path, record_property):
    result = open_page(browser, report_page, tmp_path)
    screenshot = artifact_path("report-browser.png")
    screenshot.write_bytes(result["screenshot"])
    record_property("artifact", str(screenshot))  # listed at the end of the run (conftest.py)
    assert problems(result) == []
    plots = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", report_page.with_name("report.md").read_text())  # every image
    assert len(plots) >= 4 and len(result["images"]) == len(plots), (plots, result["images"])
    assert result["screenshot"].startswith(b"\x89PNG")


def _plant_broken(page):
    return re.sub(r"(data:image/png;base64,)[A-Za-z0-9+/]{200}", r"\1" + "A" * 200, page, count=1)


def _white_png():
    from PIL import Image

    data = io.BytesIO()
    Image.new("RGB", (600, 400), "white").save(data, format="PNG")
    return "data:image/png;base64," + base64.b64encode(data.getvalue()).decode()


PLANTS = {  # a change to the real page, and the problems (regular expressions) it must be reported with
    "broken plot": (_plant_broken, [r"^image 1 .* did not load$"]),
    "script error": (lambda page: page.replace("</body>", "<script>noSuchFunction()</script></body>"),
                     [r"^uncaught: ReferenceError: noSuchFunction is not defined"]),
    "console.error": (lambda page: page.replace("</body>", "<script>console.error('planted')</script></body>"),
                      [r"^console.error: planted$"]),
    "hidden plot": (lambda page: page.replace("<img ", '<img style="visibility: hidden" ', 1),
                    [r"^image 1 .* is not visible"]),
    "covered plot": (lambda page: page.replace(
        "</body>", '<div style="position: fixed; inset: 0; background: white"></div></body>'),
        [r"^image 1 .* is not visible"]),
    "blank plot": (lambda page: re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", _white_png(), page, count=1),
                   [r"^image 1 .* is blank in the screenshot$"]),
    "plot not inlined": (lambda page: page.replace("</body>", '<img alt="extra" src="loss.png"></body>'),
                         [r"^loads loss.png: not inside the page$", r"^requested file://.*/alone/loss.png$",
                          r"^image \d+ \(extra\) did not load$"]),
    "internet request": (lambda page: page.replace(
        "</body>", "<script>fetch('https://example.com/x').catch(() => null)</script></body>"),
        [r"^requested https://example.com/x$"]),
}


@pytest.mark.parametrize("plant", PLANTS)
def test_a_planted_fault_is_caught(plant, browser, report_page, tmp_path):
    change, expected = PLANTS[plant]
    page = report_page.read_text()
    planted = change(page)
    assert planted != page
    (tmp_path / "planted.html").write_text(planted)
    (tmp_path / "planted").mkdir()
    found = problems(open_page(browser, tmp_path / "planted.html", tmp_path / "planted"))
    for problem in expected:
        assert any(re.search(problem, line) for line in found), (problem, found)


def test_a_hung_browser_fails_the_test_in_time(tmp_path):
    hung = tmp_path / "hung-browser"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    (tmp_path / "page.html").write_text("<html><body>a page</body></html>")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer in time"):
        open_page(str(hung), tmp_path / "page.html", tmp_path, timeout=2)
    assert time.monotonic() - started < 30
