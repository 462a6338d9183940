"""A real headless Chromium for the web page's tests (issue 15), and ``curation web`` as a
subprocess. Debian's ``chromium`` and ``chromium-driver`` are used as installed: no driver
download (the machines have no internet), so Selenium is given both paths."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = "CURATION_BROWSER_TESTS"  # "required" (set by .ci/run): no browser fails, not skips
SCREENSHOTS = "CURATION_SCREENSHOTS"  # a folder: the tests write their screenshots there
SIGN_IN_LINE = re.compile(r"^curation web: (?P<url>(?P<base>https?://[^/\s]+)/\?token=\S+)$")
WAIT = 10.0  # seconds for the page to react; generous for a 2-core machine shared by many


def executables() -> tuple[str, str] | None:
    """Chromium and its driver, where the machine has both."""
    browser = next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p),
        None,
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def missing() -> str | None:
    """Why the browser tests cannot run here, if they cannot."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra has it)"
    return None if executables() else "no chromium and chromedriver on PATH"


def required() -> bool:
    return os.environ.get(REQUIRED) == "required"


def unavailable(reason: str) -> None:
    """Skip on a developer's machine without a browser; fail where CI demands one."""
    if required():
        pytest.fail(f"{reason} ({REQUIRED}=required)", pytrace=False)
    pytest.skip(
        f"{reason}: apt-get install chromium chromium-driver (CI installs them)",
        allow_module_level=True,
    )


def new_driver(paths: tuple[str, str]) -> Any:
    """One headless Chromium; its console log is kept for the CSP checks."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in containers
        "--disable-dev-shm-usage",  # small /dev/shm in containers
        "--disable-gpu",
        "--window-size=1280,900",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=paths[1]))


class WebServer:
    """``curation web`` in its own process, as a curator starts it."""

    def __init__(self, db_url: str, log_path: Path, curator: str = "tester") -> None:
        self.db_url = db_url
        self.curator = curator
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.sign_in_url = ""
        self.base = ""

    def start(self, timeout: float = 30.0) -> WebServer:
        env = {**os.environ, "DATABASE_URL": self.db_url}
        env.pop("CURATION_CURATOR", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "curation",
                    "web",
                    "--listen",
                    "127.0.0.1:0",
                    "--curator",
                    self.curator,
                    "--allow-passwordless-logins",  # the test server trusts 127.0.0.1
                ],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self.sign_in_url:
            first = self.log().splitlines()[:1]
            match = SIGN_IN_LINE.match(first[0]) if first else None
            if match:
                self.sign_in_url, self.base = match["url"], match["base"]
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"`curation web` printed no sign-in line:\n{self.log()}")
            else:
                time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, as a service manager stops it; its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Page:
    """A browser tab on one ``curation web``: the few moves the tests make."""

    def __init__(self, driver: Any, server: WebServer) -> None:
        self.driver = driver
        self.server = server

    def open(self, path: str) -> Page:
        self.driver.get(self.server.base + path)
        return self

    def sign_in_with_token(self) -> Page:
        self.driver.get(self.server.sign_in_url)
        self.wait("table#namespaces")
        return self

    def sign_in(self, user: str, password: str) -> Page:
        self.open("/login")
        self.one("form#login input[name=user]").send_keys(user)
        self.one("form#login input[name=password]").send_keys(password)
        self.one("form#login button[type=submit]").click()
        return self

    def one(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def wait(self, css: str, visible: bool = False, timeout: float = WAIT) -> Any:
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        condition = ec.visibility_of_element_located if visible else ec.presence_of_element_located
        try:
            return WebDriverWait(self.driver, timeout).until(condition(("css selector", css)))
        except Exception as e:
            raise AssertionError(
                f"no {css!r} on {self.driver.current_url} after {timeout}s:\n"
                f"{self.driver.find_element('tag name', 'body').text[:2000]}"
            ) from e

    def until(self, check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException

        deadline = time.monotonic() + timeout
        while True:
            try:
                result = check()
            except StaleElementReferenceException:  # the page changed under the check
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.05)

    def press(self, keys: str) -> None:
        """Keys typed on the page itself (not in a form field), as a curator reviews."""
        from selenium.webdriver.common.action_chains import ActionChains

        self.driver.execute_script("document.activeElement && document.activeElement.blur()")
        ActionChains(self.driver).send_keys(keys).perform()

    def row_id(self) -> int:
        return int(self.wait("#row[data-row-id]").get_attribute("data-row-id"))

    def console(self) -> list[dict[str, Any]]:
        """The console entries since the last call (Chromium hands each out once)."""
        return list(self.driver.get_log("browser"))

    def screenshot(self, name: str) -> None:
        """Into $CURATION_SCREENSHOTS/NAME.png when set: a plain test run leaves the tree clean."""
        folder = os.environ.get(SCREENSHOTS)
        if folder:
            path = Path(folder)
            path.mkdir(parents=True, exist_ok=True)
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            size = self.driver.get_window_size()
            self.driver.set_window_size(1440, min(max(height, 600), 1400) + 140)
            try:
                self.driver.save_screenshot(str(path / f"{name}.png"))
            finally:
                self.driver.set_window_size(size["width"], size["height"])


def reset(driver: Any) -> None:
    """A fresh profile's state between tests: cookies are per host, not per port."""
    driver.get("about:blank")
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    deadline = time.monotonic() + WAIT  # done in the network process: wait until it is
    while driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]:
        assert time.monotonic() < deadline, "the browser kept its cookies"
        time.sleep(0.05)
    driver.get_log("browser")


@contextmanager
def drivers(paths: tuple[str, str]) -> Iterator[Callable[[], Any]]:
    """Start browsers on demand; all quit at the end."""
    started: list[Any] = []

    def start() -> Any:
        started.append(new_driver(paths))
        return started[-1]

    try:
        yield start
    finally:
        for driver in started:
            with contextlib.suppress(Exception):  # a test may have quit it already
                driver.quit()
