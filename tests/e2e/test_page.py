"""The page at / in a real headless Chromium against a real API, worker and SMTP servers.

A person's path: give the API key, type a host, open the advanced drawer,
run a STARTTLS check and watch its transcript arrive while the server is
still holding back its banner, read the verdict, then paste the page's
copy-as-curl command into a shell and get the same check. Also: a 422 shown
field by field, a failing check and its copied smtpcheck command, a
permalink, an address checked from every vantage, Cancel, and /docs.

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them):
skipped, saying so, where they are missing, and an error under CI=true. With
``SMTPCHECK_SCREENSHOTS=DIR`` it saves its screenshots in DIR
(docs/screenshots holds the committed ones).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from smtpcheck.embedded_redis import EmbeddedRedis
from tests.dns_server import DNSServer
from tests.e2e.conftest import API_KEY, LOCAL_ZONE, Service, running_service
from tests.smtp_servers import USERS, Certificates, ScriptedServer, SMTPTarget

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    MISSING = (
        "needs Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver; .ci/run installs them)"
    )
    if os.environ.get("CI"):  # CI installs them: a missing browser there is a failure
        raise RuntimeError(MISSING)
    pytest.skip(MISSING, allow_module_level=True)

from selenium import webdriver  # noqa: E402  (only where a browser exists)
from selenium.webdriver.chrome.service import Service as DriverService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

#: How long the slow server holds its banner back: the page must show lines before it.
BANNER_DELAY = 3.0
WAIT = 30.0  # generous: the machine is shared


def slow_banner(upstream_port: int, delay: float) -> Callable[[socket.socket], None]:
    """Relay to the STARTTLS server, holding its banner back for ``delay`` seconds."""

    def script(client: socket.socket) -> None:
        with socket.create_connection(("127.0.0.1", upstream_port), timeout=10) as upstream:
            # Hold the banner back; a client that gives up meanwhile ends it early.
            if select.select([client], [], [], delay)[0] and not client.recv(1, socket.MSG_PEEK):
                return
            peers = {client: upstream, upstream: client}
            while True:
                ready, _, _ = select.select(list(peers), [], [], 10)
                if not ready:
                    return
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)

    return script


@dataclass
class PageTargets:
    starttls: SMTPTarget
    slow: ScriptedServer


@pytest.fixture(scope="module")
def page_targets(e2e_certificates: Certificates) -> Iterator[PageTargets]:
    starttls = SMTPTarget(e2e_certificates, tls="starttls").start()
    slow = ScriptedServer(slow_banner(starttls.port, BANNER_DELAY)).start()
    try:
        yield PageTargets(starttls, slow)
    finally:
        slow.stop()
        starttls.stop()


#: The e2e zone plus an MX for local.test, so an address typed in the box has MX hosts.
PAGE_ZONE = {**LOCAL_ZONE, "local.test.": {"MX": ["10 mail.local.test."]}}


@pytest.fixture(scope="module")
def page_dns() -> Iterator[DNSServer]:
    server = DNSServer(PAGE_ZONE).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def page_service(
    redis_server: EmbeddedRedis,
    page_targets: PageTargets,
    page_dns: DNSServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    ports = [page_targets.starttls.port, page_targets.slow.port]
    tmp = tmp_path_factory.mktemp("page-service")
    with running_service(
        redis_server.url, tmp, ports, page_dns, gunicorn_workers=1, workers=1
    ) as svc:
        yield svc


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # chromedriver and the browser in a session of their own, so teardown can end them all.
    service = DriverService(str(CHROMEDRIVER), popen_kw={"start_new_session": True})
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    session = service.process.pid
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(session, signal.SIGKILL)


# -- what a person sees ---------------------------------------------------------


def wait_for(browser: WebDriver, what: str, condition: Callable[[], Any]) -> Any:
    try:
        return WebDriverWait(browser, WAIT, poll_frequency=0.05).until(lambda _: condition())
    except Exception as error:
        raise AssertionError(f"{what}; the page says:\n{page_text(browser)}") from error


def page_text(browser: WebDriver) -> str:
    return str(browser.find_element(By.TAG_NAME, "main").text)


def shown(browser: WebDriver, element_id: str) -> bool:
    return bool(browser.find_element(By.ID, element_id).is_displayed())


def transcript(browser: WebDriver) -> list[str]:
    return [str(e.text) for e in browser.find_elements(By.CSS_SELECTOR, "#transcripts .line")]


def verdict(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "verdict").text)


def fill(browser: WebDriver, element_id: str, text: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def open_page(browser: WebDriver, url: str) -> None:
    browser.get(url)
    wait_for(browser, "the page's script ran", lambda: browser.execute_script("return true"))


def open_check_page(browser: WebDriver, service: Service) -> None:
    """Load / and wait until it has asked for the key (then give it) or listed the vantages."""
    open_page(browser, service.url + "/")

    def settled() -> bool:
        vantages = browser.find_element(By.ID, "f-vantage-help").get_attribute("textContent")
        return shown(browser, "key-section") or "vantage point" in str(vantages)

    wait_for(browser, "the page settles", settled)
    if shown(browser, "key-section"):
        give_key(browser)


def give_key(browser: WebDriver) -> None:
    wait_for(browser, "the page asks for the API key", lambda: shown(browser, "key-section"))
    assert browser.switch_to.active_element.get_attribute("id") == "api-key"
    fill(browser, "api-key", API_KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait_for(browser, "the key is taken", lambda: not shown(browser, "key-section"))


def set_check(
    browser: WebDriver, host: str, port: int, *, verify: bool = False, ca: str = ""
) -> None:
    fill(browser, "target", host)
    drawer = browser.find_element(By.ID, "advanced")
    if not drawer.get_attribute("open"):
        drawer.find_element(By.TAG_NAME, "summary").click()
    fill(browser, "f-port", str(port))
    Select(browser.find_element(By.ID, "f-tls")).select_by_value("starttls")
    box = browser.find_element(By.ID, "f-tls_verify")
    if box.is_selected() != verify:
        box.click()
    browser.execute_script("document.getElementById('f-tls_ca').value = arguments[0]", ca)
    fill(browser, "f-mail_from", "support@local.test")
    fill(browser, "f-rcpt_to", "bob@local.test")


def check_id(browser: WebDriver) -> str:
    return str(browser.execute_script("return location.hash.slice(1)"))


def screenshot(browser: WebDriver, name: str) -> None:
    """With SMTPCHECK_SCREENSHOTS=DIR, save the whole page (not only the window) as DIR/name.png."""
    folder = os.environ.get("SMTPCHECK_SCREENSHOTS")
    if not folder:
        return
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(900, min(int(height) + 40, 4000)))
    Path(folder).mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(Path(folder) / f"{name}.png"))
    browser.set_window_size(1280, 1600)


def console_errors(browser: WebDriver) -> list[str]:
    """Script errors and CSP refusals; an HTTP error status the page handles is none."""
    return [
        str(entry["message"])
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]
    ]


def run_in_shell(command: str, **exported: str) -> subprocess.CompletedProcess[str]:
    """``command`` as pasted into bash, with smtpcheck on PATH and the key exported."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/"), "SMTPCHECK_API_KEY": API_KEY}
    env.update(exported)
    return subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=60
    )


# -- the tests --------------------------------------------------------------------


def test_starttls_check_live_then_verdict_then_the_same_check_from_curl(
    browser: WebDriver,
    page_service: Service,
    page_targets: PageTargets,
    e2e_certificates: Certificates,
) -> None:
    open_page(browser, page_service.url + "/")
    give_key(browser)
    ca = Path(e2e_certificates.ca_file).read_text()
    set_check(browser, "127.0.0.1", page_targets.slow.port, verify=True, ca=ca)
    browser.find_element(By.ID, "run").click()

    # The first lines show while the server still holds its banner back.
    lines = wait_for(browser, "transcript lines arrive live", lambda: transcript(browser))
    first_id = check_id(browser)
    status = page_service.client.request("GET", f"/v1/checks/{first_id}").json()["status"]
    assert status in ("queued", "running"), (status, lines)
    assert not verdict(browser), "the verdict came with the first line: nothing was live"
    assert any("connect" in line and "===" in line for line in lines), lines
    assert "running" in browser.find_element(By.ID, "status").text

    wait_for(browser, "the verdict shows", lambda: "PASS" in verdict(browser))
    assert "ok" in verdict(browser)
    lines = transcript(browser)
    assert any("<- " in line and "220" in line for line in lines), lines
    assert any("-> " in line and "STARTTLS" in line for line in lines), lines
    assert any("~> " in line and "RCPT TO:<bob@local.test>" in line for line in lines), lines
    assert "TLSv1." in page_text(browser)  # the TLS facts
    assert "NOT verified" not in page_text(browser)  # trusted through tls_ca
    assert "STARTTLS is offered" in page_text(browser)  # a finding
    assert "finished" in browser.find_element(By.ID, "status").text
    screenshot(browser, "check-pass")

    # The copy-as-curl command, pasted in a shell, makes the same check.
    curl = browser.find_element(By.ID, "curl-command").get_attribute("value")
    assert curl and "$SMTPCHECK_API_KEY" in curl and API_KEY not in curl
    shell = run_in_shell(curl)
    assert shell.returncode == 0, shell.stderr
    created = json.loads(shell.stdout)
    assert created["status"] == "queued"
    again = page_service.client.wait(created["id"])
    first = page_service.client.wait(first_id)
    assert again["request"] == first["request"]
    assert again["status"] == "finished"
    assert again["result"]["outcome"] == first["result"]["outcome"] == "ok"
    assert again["result"]["target"]["port"] == page_targets.slow.port
    assert not console_errors(browser)


def test_a_refused_request_is_shown_field_by_field(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    open_check_page(browser, page_service)
    set_check(browser, "127.0.0.1", 26)
    fill(browser, "f-timeouts-total", "-1")
    browser.find_element(By.ID, "run").click()
    wait_for(browser, "the problem shows", lambda: shown(browser, "problem"))
    problem = browser.find_element(By.ID, "problem").text
    assert "422" in problem and "port" in problem and "timeouts.total" in problem
    port_error = browser.find_element(By.ID, "f-port-error")
    assert port_error.is_displayed() and "26" in port_error.text
    assert browser.find_element(By.ID, "f-port").get_attribute("aria-invalid") == "true"
    assert browser.find_element(By.ID, "f-timeouts-total-error").is_displayed()
    assert browser.switch_to.active_element.get_attribute("id") == "problem"


def test_a_failing_check_and_its_permalink(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    open_check_page(browser, page_service)
    with contextlib.suppress(Exception):
        browser.find_element(By.ID, "f-timeouts-total").clear()
    set_check(browser, "127.0.0.1", page_targets.starttls.port, verify=True)
    browser.find_element(By.ID, "run").click()
    wait_for(browser, "the verdict shows", lambda: "FAIL" in verdict(browser))
    assert "tls_untrusted" in verdict(browser)
    assert "certificate_untrusted" in page_text(browser)
    failed_id = check_id(browser)
    wait_for(
        browser,
        "the check is listed among the recent ones",
        lambda: browser.find_elements(By.CSS_SELECTOR, f'#recent-list a[href="#{failed_id}"]'),
    )
    screenshot(browser, "check-fail")

    # The copy-as-smtpcheck-check command, pasted in a shell, says the same.
    command = str(browser.find_element(By.ID, "cli-command").get_attribute("value"))
    assert command.startswith("smtpcheck check 127.0.0.1 ") and "--tls-verify" in command
    shell = run_in_shell(command)
    assert "tls_untrusted" in shell.stdout, (shell.stdout, shell.stderr)
    assert shell.returncode != 0

    # A fresh load of the permalink shows that check again, its form filled in.
    browser.get("about:blank")
    open_page(browser, f"{page_service.url}/#{failed_id}")
    wait_for(browser, "the permalink loads", lambda: "FAIL" in verdict(browser))
    assert browser.find_element(By.ID, "f-port").get_attribute("value") == str(
        page_targets.starttls.port
    )
    assert browser.find_element(By.ID, "f-tls_verify").is_selected()
    assert "--tls-verify" in str(browser.find_element(By.ID, "cli-command").get_attribute("value"))
    assert not console_errors(browser)


def test_docs_render_the_spec_in_the_browser(browser: WebDriver, page_service: Service) -> None:
    open_page(browser, page_service.url + "/docs")
    wait_for(
        browser,
        "Swagger UI shows the operations",
        lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"),
    )
    paths = {
        str(e.get_attribute("data-path"))
        for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    }
    assert {"/v1/checks", "/v1/checks/{check_id}", "/docs", "/"} <= paths, paths
    assert "smtpcheck" in browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert not console_errors(browser)
    screenshot(browser, "docs")


def test_an_address_checks_its_domain_mx_from_every_vantage(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    open_check_page(browser, page_service)
    # Keyboard only: Enter opens the drawer, Enter in the box runs the check.
    browser.find_element(By.CSS_SELECTOR, "#advanced > summary").send_keys(Keys.ENTER)
    assert browser.find_element(By.ID, "advanced").get_attribute("open") is not None
    fill(browser, "f-port", str(page_targets.starttls.port))
    Select(browser.find_element(By.ID, "f-vantage")).select_by_value("all")
    target = browser.find_element(By.ID, "target")
    target.send_keys("bob@local.test", Keys.TAB)  # focus moves on, and shows where it is
    focused = browser.switch_to.active_element
    assert focused.get_attribute("id") == "run"
    assert focused.value_of_css_property("outline-style") == "solid"
    assert focused.value_of_css_property("outline-width") == "3px"
    target.send_keys(Keys.ENTER)
    wait_for(browser, "the verdict shows", lambda: "PASS" in verdict(browser))
    grid = browser.find_element(By.CSS_SELECTOR, "table.stage-grid").text
    assert f"mail.local.test [127.0.0.1]:{page_targets.starttls.port} default" in grid, grid
    assert "MX hosts of local.test" in page_text(browser)
    security = browser.find_element(By.XPATH, "//table[caption='Mail transport security']").text
    assert "MTA-STS none published" in security and "DANE no TLSA records" in security, security
    hint = browser.find_element(By.ID, "target-hint").text
    assert "MX hosts of local.test" in hint and "bob@local.test" in hint
    screenshot(browser, "check-mx-all")
    created = page_service.client.wait(check_id(browser))
    assert created["vantage"] == "all"
    assert created["request"]["mx"] is True
    assert created["request"]["rcpt_to"] == ["bob@local.test"]
    assert created["request"]["mail_from"] == ""
    assert "--mx --port" in str(browser.find_element(By.ID, "cli-command").get_attribute("value"))


def test_cancel_a_running_check_from_the_page(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    open_check_page(browser, page_service)
    set_check(browser, "127.0.0.1", page_targets.slow.port)
    browser.find_element(By.ID, "run").click()
    wait_for(browser, "the check runs", lambda: transcript(browser) and shown(browser, "cancel"))
    asked = time.monotonic()
    browser.find_element(By.ID, "cancel").click()
    wait_for(browser, "the verdict shows", lambda: "CANCELED" in verdict(browser))
    assert time.monotonic() - asked < BANNER_DELAY  # before the banner would have come
    assert "canceled" in browser.find_element(By.ID, "status").text
    assert not shown(browser, "cancel")
    document = page_service.client.request("GET", f"/v1/checks/{check_id(browser)}").json()
    assert document["status"] == "canceled"


def test_an_auth_check_copied_as_curl_takes_the_password_from_the_shell(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    ((user, password),) = USERS.items()
    open_check_page(browser, page_service)
    set_check(browser, "127.0.0.1", page_targets.starttls.port)
    fill(browser, "f-auth-username", user)
    fill(browser, "f-auth-password", password)
    browser.find_element(By.ID, "run").click()
    wait_for(browser, "the verdict shows", lambda: "PASS" in verdict(browser))
    auth_row = browser.find_element(By.XPATH, "//tbody/tr[th='AUTH']/td").text
    assert auth_row.endswith("accepted"), auth_row
    curl = str(browser.find_element(By.ID, "curl-command").get_attribute("value"))
    assert password not in curl and "$SMTPCHECK_AUTH_PASSWORD" in curl
    assert "SMTPCHECK_AUTH_PASSWORD" in browser.find_element(By.ID, "cli-note").text

    shell = run_in_shell(curl, SMTPCHECK_AUTH_PASSWORD=password)
    again = page_service.client.wait(json.loads(shell.stdout)["id"])
    assert again["result"]["auth"]["accepted"] is True, again["result"]["summary"]
    assert again["request"]["auth"]["password"] == "****"
