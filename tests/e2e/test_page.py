"""The page at / in a real headless Chromium against a real API, worker and SMTP servers.

A person's path: give the API key, type a host, open the advanced drawer,
run a STARTTLS check and watch its transcript arrive while the server is
still holding back its banner, read the verdict, then paste the page's
copy-as-curl command into a shell and get the same check. Also: a 422 shown
field by field, a failing check and its copied smtpcheck command, a
permalink, an address checked from every vantage (live, through the
fan-out's one event stream), Cancel, AUTH, the message, probe, retry and
webhook controls with their copied commands, one check per click, and /docs.

One browser, one service and one page load serve the whole module: each
test starts from the loaded page with its form reset (``ready``), and only
the tests that are about loading (the permalink, /docs) load again.

Needs Debian's ``chromium`` and ``chromium-driver`` (.ci/run installs them):
skipped, saying so, where they are missing, and an error under CI=true. With
``SMTPCHECK_SCREENSHOTS=DIR`` it saves its screenshots in DIR
(docs/screenshots holds the committed ones).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from smtpcheck.embedded_redis import EmbeddedRedis
from tests.dns_server import DNSServer
from tests.e2e.conftest import API_KEY, LOCAL_ZONE, Service, base_env
from tests.smtp_servers import USERS, Certificates, ScriptedServer, SMTPTarget
from tests.webhook_receiver import Receiver, verify

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
BANNER_DELAY = 2.0
#: Held back this long, a banner never comes before a test cancels the check.
FOREVER = 20.0
WAIT = 30.0  # generous: the machine is shared
# Chromium's first start on a loaded machine has taken over 30 s; chromedriver itself gives
# the browser 60 s to come up, so the test waits a little longer than that, not less.
LAUNCH_WAIT = 75.0
WEBHOOK_SECRET = "page-webhook-secret-0123456789"


@dataclass
class Delay:
    """How long the slow server holds back each banner from now on (tests change it)."""

    seconds: float = BANNER_DELAY


def slow_banner(upstream_port: int, delay: Delay) -> Callable[[socket.socket], None]:
    """Relay to the STARTTLS server, holding its banner back for ``delay.seconds``."""

    def script(client: socket.socket) -> None:
        with socket.create_connection(("127.0.0.1", upstream_port), timeout=10) as upstream:
            # Hold the banner back; a client that gives up meanwhile ends it early.
            held = delay.seconds
            if select.select([client], [], [], held)[0] and not client.recv(1, socket.MSG_PEEK):
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
    delay: Delay
    hook: Receiver  # takes the checks' webhooks

    @contextlib.contextmanager
    def banner_delay(self, seconds: float) -> Iterator[None]:
        self.delay.seconds = seconds
        try:
            yield
        finally:
            self.delay.seconds = BANNER_DELAY


@pytest.fixture(scope="module")
def page_targets(e2e_certificates: Certificates) -> Iterator[PageTargets]:
    starttls = SMTPTarget(e2e_certificates, tls="starttls").start()
    delay = Delay()
    slow = ScriptedServer(slow_banner(starttls.port, delay)).start()
    hook = Receiver([(200, {})]).start()
    try:
        yield PageTargets(starttls, slow, delay, hook)
    finally:
        hook.stop()
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


@dataclass
class Launch:
    """Chromium starting in the background (it takes a second or two) while the service does."""

    done: threading.Event
    driver: list[WebDriver]
    failure: list[BaseException]
    session: list[int]  # chromedriver's process group: it and the browser

    def wait(self) -> WebDriver:
        assert self.done.wait(LAUNCH_WAIT), f"Chromium did not start within {LAUNCH_WAIT:.0f} s"
        if self.failure:
            raise self.failure[0]
        return self.driver[0]


@pytest.fixture(scope="module")
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # a container's small /dev/shm makes Chromium hang or crash
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
    launched = Launch(threading.Event(), [], [], [])

    def start() -> None:
        try:
            # chromedriver and the browser in a session of their own, so teardown can end them all.
            service = DriverService(str(CHROMEDRIVER), popen_kw={"start_new_session": True})
            driver = webdriver.Chrome(options=options, service=service)
            launched.session.append(service.process.pid)
            driver.set_page_load_timeout(WAIT)
            launched.driver.append(driver)
        except BaseException as error:
            launched.failure.append(error)
        finally:
            launched.done.set()

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    try:
        yield launched
    finally:
        starter.join(LAUNCH_WAIT)
        for session in launched.session:  # whatever quit() left (it runs in ``browser``)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(session, signal.SIGKILL)


@pytest.fixture(scope="module")
def page_service(
    launch: Launch,
    redis_server: EmbeddedRedis,
    page_targets: PageTargets,
    page_dns: DNSServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    """One API process and one worker, on a fresh database; webhooks may go to ``hook``."""
    ports = [page_targets.starttls.port, page_targets.slow.port]
    tmp = tmp_path_factory.mktemp("page-service")
    connection = redis.Redis.from_url(redis_server.url)
    connection.flushall()
    connection.close()
    env = base_env(tmp, redis_server.url, ports, page_dns)
    env.update(SMTPCHECK_CALLBACK_PORTS=str(page_targets.hook.port), SMTPCHECK_CALLBACK_HTTP="on")
    svc = Service(tmp, env, redis_server.url)
    try:
        svc.start_api(1).start_workers(1)
        yield svc
    except BaseException:
        print(svc.logs())
        raise
    finally:
        # The API and the workers stop at the same time: neither waits on the other.
        stopping = [threading.Thread(target=proc.stop) for proc in svc.procs]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
        svc.stop()


@pytest.fixture(scope="module")
def browser(launch: Launch, page_service: Service) -> Iterator[WebDriver]:
    """One Chromium for the module. It quits before the service stops, so the
    service's graceful stop waits on no connection of the browser's."""
    driver = launch.wait()
    try:
        yield driver
    finally:
        driver.quit()


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


def ready(browser: WebDriver, service: Service) -> None:
    """The check page with a fresh form: the one already loaded where it is, else a load."""
    on_page = browser.current_url.split("#")[0] == service.url + "/"
    if not on_page or not browser.execute_script(
        "return !!sessionStorage.getItem('smtpcheck.apiKey')"
    ):
        open_check_page(browser, service)
        return
    browser.execute_script(
        "document.getElementById('check-form').reset();"
        "for (const box of document.querySelectorAll('.field-error')) box.hidden = true;"
        "document.getElementById('problem').hidden = true;"
        "performance.clearResourceTimings();"  # requested() then says what this test fetched
    )


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


def run_and_wait(browser: WebDriver, badge: str, *, after: str | None = None) -> str:
    """Click Run check and wait for a new check's verdict ``badge``; its id."""
    before = after if after is not None else check_id(browser)
    browser.find_element(By.ID, "run").click()
    wait_for(
        browser,
        f"a new check's verdict shows {badge}",
        lambda: check_id(browser) != before and badge in verdict(browser),
    )
    return check_id(browser)


def value(browser: WebDriver, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).get_attribute("value"))


def requested(browser: WebDriver) -> list[str]:
    """The URLs the page has fetched (the browser's resource timing)."""
    names = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
    )
    return [str(name) for name in names]


def screenshot(browser: WebDriver, name: str, element_id: str | None = None) -> None:
    """With SMTPCHECK_SCREENSHOTS=DIR, save the whole page (not only the window), or
    only the element ``element_id``, as DIR/name.png."""
    folder = os.environ.get("SMTPCHECK_SCREENSHOTS")
    if not folder:
        return
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, max(900, min(int(height) + 40, 4000)))
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = str(Path(folder) / f"{name}.png")
    if element_id is None:
        browser.save_screenshot(path)
    else:
        browser.execute_script("window.scrollTo(0, 0)")
        browser.find_element(By.ID, element_id).screenshot(path)
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
    return finish(start_in_shell(command, **exported))


def start_in_shell(command: str, **exported: str) -> subprocess.Popen[str]:
    """``command`` pasted into a bash of its own, running while the test goes on."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/"), "SMTPCHECK_API_KEY": API_KEY}
    env.update(exported)
    return subprocess.Popen(
        ["bash", "-c", command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(shell: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = shell.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        shell.kill()
        stdout, stderr = shell.communicate()
    return subprocess.CompletedProcess(shell.args, shell.returncode, stdout, stderr)


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

    # The copy-as-curl command (there since the check was accepted), pasted in a
    # shell, makes the same check; it runs while the page's goes on, with no banner
    # held back for it (being live was the page's part).
    curl = value(browser, "curl-command")
    assert "$SMTPCHECK_API_KEY" in curl and API_KEY not in curl
    with page_targets.banner_delay(0):
        copy = start_in_shell(curl)
        wait_for(browser, "the verdict shows", lambda: "PASS" in verdict(browser))
        shell = finish(copy)
        assert shell.returncode == 0, shell.stderr
        created = json.loads(shell.stdout)
        assert created["status"] == "queued"
        again = page_service.client.wait(created["id"])
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
    first = page_service.client.wait(first_id)
    assert again["request"] == first["request"]
    assert again["status"] == "finished"
    assert again["result"]["outcome"] == first["result"]["outcome"] == "ok"
    assert again["result"]["target"]["port"] == page_targets.slow.port
    assert not console_errors(browser)


def test_a_refused_request_is_shown_field_by_field(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    ready(browser, page_service)
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

    # A built message and a whole one at once: the API's word shows beside the message.
    fill(browser, "f-port", str(page_targets.starttls.port))
    fill(browser, "f-timeouts-total", "")
    fill(browser, "f-message-subject", "both kinds of message")
    fill(browser, "f-data", "Subject: a whole one\n\nHello.\n")
    browser.find_element(By.ID, "run").click()
    subject_error = browser.find_element(By.ID, "f-message-subject-error")
    wait_for(browser, "the message's problem shows", lambda: subject_error.is_displayed())
    assert "either data or message" in subject_error.text
    assert not browser.find_element(By.ID, "f-port-error").is_displayed()  # the old ones go

    # A header line that is not "Name: value" is the form's to say: nothing is sent.
    checks = len(page_service.client.request("GET", "/v1/checks?limit=100").json()["items"])
    fill(browser, "f-data", "")
    fill(browser, "f-message-headers", "X-Ticket: 1\nnot a header")
    browser.find_element(By.ID, "run").click()
    wait_for(
        browser,
        "the form's own problem shows",
        lambda: "line 2" in browser.find_element(By.ID, "f-message-headers-error").text,
    )
    assert browser.find_element(By.ID, "f-message-headers").get_attribute("aria-invalid") == "true"
    assert len(page_service.client.request("GET", "/v1/checks?limit=100").json()["items"]) == checks


def test_a_failing_check_and_its_permalink(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    ready(browser, page_service)
    set_check(browser, "127.0.0.1", page_targets.starttls.port, verify=True)
    failed_id = run_and_wait(browser, "FAIL")
    assert "tls_untrusted" in verdict(browser)
    assert "certificate_untrusted" in page_text(browser)
    wait_for(
        browser,
        "the check is listed among the recent ones",
        lambda: browser.find_elements(By.CSS_SELECTOR, f'#recent-list a[href="#{failed_id}"]'),
    )
    screenshot(browser, "check-fail")

    # The copy-as-smtpcheck-check command, pasted in a shell, says the same
    # (it runs while the permalink loads).
    command = value(browser, "cli-command")
    assert command.startswith("smtpcheck check 127.0.0.1 ") and "--tls-verify" in command
    copy = start_in_shell(command)

    # A fresh load of the permalink shows that check again, its form filled in.
    browser.get("about:blank")
    open_page(browser, f"{page_service.url}/#{failed_id}")
    wait_for(browser, "the permalink loads", lambda: "FAIL" in verdict(browser))
    assert value(browser, "f-port") == str(page_targets.starttls.port)
    assert browser.find_element(By.ID, "f-tls_verify").is_selected()
    assert "--tls-verify" in value(browser, "cli-command")
    assert not console_errors(browser)
    shell = finish(copy)
    assert "tls_untrusted" in shell.stdout, (shell.stdout, shell.stderr)
    assert shell.returncode != 0


def test_an_address_checks_its_domain_mx_from_every_vantage_live(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    ready(browser, page_service)
    # Keyboard only: Enter opens the drawer, Enter in the box runs the check.
    drawer = browser.find_element(By.ID, "advanced")
    if drawer.get_attribute("open") is not None:
        drawer.find_element(By.TAG_NAME, "summary").send_keys(Keys.ENTER)  # closed first
    browser.find_element(By.CSS_SELECTOR, "#advanced > summary").send_keys(Keys.ENTER)
    assert drawer.get_attribute("open") is not None
    fill(browser, "f-port", str(page_targets.slow.port))  # live: the banner is held back
    Select(browser.find_element(By.ID, "f-vantage")).select_by_value("all")
    target = browser.find_element(By.ID, "target")
    target.send_keys("bob@local.test", Keys.TAB)  # focus moves on, and shows where it is
    focused = browser.switch_to.active_element
    assert focused.get_attribute("id") == "run"
    assert focused.value_of_css_property("outline-style") == "solid"
    assert focused.value_of_css_property("outline-width") == "3px"
    before = check_id(browser)
    target.send_keys(Keys.ENTER)

    # Lines come into the vantage's pane while the server holds its banner back.
    pane = "#transcripts .pane"
    wait_for(
        browser,
        "a vantage's lines arrive live",
        lambda: (
            check_id(browser) != before and browser.find_elements(By.CSS_SELECTOR, f"{pane} .line")
        ),
    )
    fan_out = check_id(browser)
    assert page_service.client.request("GET", f"/v1/checks/{fan_out}").json()["status"] != (
        "finished"
    )
    assert not verdict(browser)
    heading = browser.find_element(By.CSS_SELECTOR, f"{pane} h4").text
    assert heading.startswith("Vantage default") and "running" in heading, heading

    wait_for(browser, "the verdict shows", lambda: "PASS" in verdict(browser))
    # It came through the fan-out's own merged stream, not one stream per vantage.
    streams = [url for url in requested(browser) if url.endswith("/events")]
    assert streams and all(f"/v1/checks/{fan_out}/events" in url for url in streams), streams
    grid = browser.find_element(By.CSS_SELECTOR, "table.stage-grid").text
    assert f"mail.local.test [127.0.0.1]:{page_targets.slow.port} default" in grid, grid
    assert "finished" in browser.find_element(By.CSS_SELECTOR, f"{pane} h4").text
    assert "MX hosts of local.test" in page_text(browser)
    security = browser.find_element(By.XPATH, "//table[caption='Mail transport security']").text
    assert "MTA-STS none published" in security, security
    assert "DANE mail.local.test not applicable: no TLSA records at" in security, security
    hint = browser.find_element(By.ID, "target-hint").text
    assert "MX hosts of local.test" in hint and "bob@local.test" in hint
    screenshot(browser, "check-mx-all")
    created = page_service.client.wait(fan_out)
    assert created["vantage"] == "all"
    assert created["request"]["mx"] is True
    assert created["request"]["rcpt_to"] == ["bob@local.test"]
    assert created["request"]["mail_from"] == ""
    assert "--mx --port" in value(browser, "cli-command")
    assert not console_errors(browser)


def test_cancel_a_running_check_from_the_page(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    ready(browser, page_service)
    set_check(browser, "127.0.0.1", page_targets.slow.port)
    with page_targets.banner_delay(FOREVER):
        before = check_id(browser)
        browser.find_element(By.ID, "run").click()
        wait_for(
            browser,
            "the check runs",
            lambda: (
                check_id(browser) != before and transcript(browser) and shown(browser, "cancel")
            ),
        )
        asked = time.monotonic()
        # A double click sends one DELETE: a second, once the check has ended
        # canceled, would have deleted it.
        still = browser.execute_script(
            "const b = document.getElementById('cancel'); b.click(); b.click(); return b.disabled"
        )
        assert still is True
        wait_for(browser, "the verdict shows", lambda: "CANCELED" in verdict(browser))
        assert time.monotonic() - asked < FOREVER  # long before the banner would have come
    assert "canceled" in browser.find_element(By.ID, "status").text
    assert not shown(browser, "cancel")
    document = page_service.client.request("GET", f"/v1/checks/{check_id(browser)}")
    assert document.status == 200 and document.json()["status"] == "canceled"


def test_an_auth_check_copied_as_curl_takes_the_password_from_the_shell(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    ((user, password),) = USERS.items()
    ready(browser, page_service)
    set_check(browser, "127.0.0.1", page_targets.starttls.port)
    fill(browser, "f-auth-username", user)
    fill(browser, "f-auth-password", password)
    run_and_wait(browser, "PASS")
    auth_row = browser.find_element(By.XPATH, "//tbody/tr[th='AUTH']/td").text
    assert auth_row.endswith("accepted"), auth_row
    curl = value(browser, "curl-command")
    assert password not in curl and "$SMTPCHECK_AUTH_PASSWORD" in curl
    assert "SMTPCHECK_AUTH_PASSWORD" in browser.find_element(By.ID, "cli-note").text

    shell = run_in_shell(curl, SMTPCHECK_AUTH_PASSWORD=password)
    again = page_service.client.wait(json.loads(shell.stdout)["id"])
    assert again["result"]["auth"]["accepted"] is True, again["result"]["summary"]
    assert again["request"]["auth"]["password"] == "****"


def test_message_probe_retry_and_webhook_controls_and_their_copied_commands(
    browser: WebDriver, page_service: Service, page_targets: PageTargets
) -> None:
    ready(browser, page_service)
    set_check(browser, "127.0.0.1", page_targets.starttls.port)
    fill(browser, "f-message-subject", "from the page")
    fill(browser, "f-message-headers", "X-Ticket: 4711\nReply-To: help@local.test")
    fill(browser, "f-message-body", "Sent by the page test.")
    # Keyboard only, like the rest of the drawer: Space ticks a box.
    browser.find_element(By.ID, "f-probe-vrfy").send_keys(Keys.SPACE)
    browser.find_element(By.ID, "f-retry_temporary").send_keys(Keys.SPACE)
    fill(browser, "f-retry-attempts", "2")
    fill(browser, "f-retry-delay", "1")
    fill(browser, "f-callback-url", page_targets.hook.url())
    fill(browser, "f-callback-secret", WEBHOOK_SECRET)
    unlabelled = browser.execute_script(
        "return [...document.querySelectorAll('#advanced :is(input, select, textarea)')]"
        ".filter((e) => ![...e.labels].some((l) => l.textContent.trim())).map((e) => e.id)"
    )
    assert unlabelled == []  # every control of the drawer says what it is
    screenshot(browser, "advanced", "check-form")  # the drawer open, filled in
    delivered = len(page_targets.hook.received)
    sent = len(page_targets.starttls.received)
    first_id = run_and_wait(browser, "PASS")

    first = page_service.client.wait(first_id)
    request = first["request"]
    assert request["message"]["subject"] == "from the page"
    assert request["message"]["headers"] == {"X-Ticket": "4711", "Reply-To": "help@local.test"}
    assert request["probes"] == ["vrfy"]
    assert request["retry_temporary"] is True and request["retry"] == {"attempts": 2, "delay": 1}
    assert request["callback"] == {"url": page_targets.hook.url(), "secret": "****"}
    assert "vrfy" in first["result"]["probes"]
    message = page_targets.starttls.received[sent].data
    assert b"Subject: from the page" in message and b"X-Ticket: 4711" in message
    wait_for(browser, "the webhook arrives", lambda: len(page_targets.hook.received) > delivered)
    got = page_targets.hook.received[delivered]
    assert json.loads(got.body)["id"] == first_id and verify(WEBHOOK_SECRET, got)

    # Copied as curl and as smtpcheck check, the secret comes from the shell.
    curl, cli = value(browser, "curl-command"), value(browser, "cli-command")
    for command in (curl, cli):
        assert WEBHOOK_SECRET not in command
    assert "$SMTPCHECK_CALLBACK_SECRET" in curl
    for option in ("--header 'X-Ticket: 4711'", "--probe vrfy", "--retry-temporary",
                   "--retry-attempts 2", "--retry-delay 1", "--callback-url"):  # fmt: skip
        assert option in cli, (option, cli)
    assert "SMTPCHECK_CALLBACK_SECRET" in browser.find_element(By.ID, "cli-note").text
    # Both run in shells while the page goes on to a check with a whole message.
    copies = [start_in_shell(c, SMTPCHECK_CALLBACK_SECRET=WEBHOOK_SECRET) for c in (curl, cli)]

    # A whole message instead of a built one: the smtpcheck command carries it exactly.
    for control in ("f-message-subject", "f-message-headers", "f-message-body", "f-callback-url"):
        fill(browser, control, "")
    whole = "Subject: a whole message\nX-Whole: yes\n\nPasted into the page.\n"
    browser.execute_script("document.getElementById('f-data').value = arguments[0]", whole)
    # Run by a double click on Run again, and Enter in the form, while the POST is out:
    # one click, one check.
    before = check_id(browser)
    busy = browser.execute_script(
        "const again = document.getElementById('again');"
        "again.click(); const busy = again.disabled && document.getElementById('run').disabled;"
        "again.click();"
        "document.getElementById('check-form').requestSubmit();"
        "return busy;"
    )
    assert busy is True
    wait_for(
        browser,
        "the check with the whole message ends",
        lambda: check_id(browser) != before and "PASS" in verdict(browser),
    )
    data_id = check_id(browser)
    assert not browser.find_element(By.ID, "again").get_attribute("disabled")
    data_cli = value(browser, "cli-command")
    assert "--data-file <(printf %s " in data_cli
    data_copy = start_in_shell(data_cli)

    curled, shell = (finish(copy) for copy in copies)
    assert curled.returncode == 0 and shell.returncode == 0, (shell.stdout, shell.stderr)
    made = [json.loads(curled.stdout)["id"], *re.findall(r"=== check (\S+) at ", shell.stdout)]
    assert len(made) == 2, shell.stdout
    for copy_id in made:
        again = page_service.client.wait(copy_id)
        assert again["request"] == request and again["result"]["outcome"] == "ok"
    wait_for(
        browser, "their webhooks arrive", lambda: len(page_targets.hook.received) >= delivered + 3
    )
    assert all(verify(WEBHOOK_SECRET, got) for got in page_targets.hook.received[delivered:])

    shell = finish(data_copy)
    assert shell.returncode == 0, (shell.stdout, shell.stderr)
    (copy_id,) = re.findall(r"=== check (\S+) at ", shell.stdout)
    whole_request = page_service.client.wait(data_id)["request"]
    assert page_service.client.wait(copy_id)["request"] == whole_request
    assert whole_request["data"].replace("\r\n", "\n") == whole
    messages = [r.data for r in page_targets.starttls.received[sent:]]
    assert sum(b"X-Whole: yes" in m and b"Pasted into the page." in m for m in messages) == 2
    # The page's and the shell's, and no second one from the page.
    listed = page_service.client.request("GET", "/v1/checks?limit=100").json()["items"]
    assert sorted(i["id"] for i in listed if i["request"]["data"]) == sorted([data_id, copy_id])
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
