"""The reverse DNS facts of an address (the PTR lookup and its forward
confirmation), blocking (Resolver.reverse) and carried on by the check's own
thread (ReverseLookup), are the same, key order included, whatever the DNS
says, also where dnspython or getaddrinfo make a lookup in a thread; and a
check serves the lookup while it waits."""

from __future__ import annotations

import ipaddress
import time

import pytest

from smtpcheck.contract import check_request
from workers.engine import run_check
from workers.resolver import Resolver, ReverseLookup

ZONE = {
    # confirmed
    "1.0.0.127.in-addr.arpa.": {"PTR": ["mail.local.test."]},
    "mail.local.test.": {"A": ["127.0.0.1"]},
    # not confirmed: the name has another address, or none
    "2.0.0.127.in-addr.arpa.": {"PTR": ["elsewhere.local.test."]},
    "elsewhere.local.test.": {"A": ["192.0.2.1"]},
    "3.0.0.127.in-addr.arpa.": {"PTR": ["nowhere.local.test."]},
    # the second name confirms; only the first three names are tried
    "4.0.0.127.in-addr.arpa.": {"PTR": ["nowhere.local.test.", "four.local.test."]},
    "four.local.test.": {"A": ["192.0.2.9", "127.0.0.4"]},
    "5.0.0.127.in-addr.arpa.": {
        "PTR": ["n1.local.test.", "n2.local.test.", "n3.local.test.", "five.local.test."]
    },
    "five.local.test.": {"A": ["127.0.0.5"]},
    # classless delegation (RFC 2317): the PTR behind a CNAME
    "6.0.0.127.in-addr.arpa.": {"CNAME": ["6.0-25.0.0.127.in-addr.arpa."]},
    "6.0-25.0.0.127.in-addr.arpa.": {"PTR": ["six.local.test."]},
    "six.local.test.": {"A": ["127.0.0.6"]},
    # a PTR name dnsstub leaves to dnspython, and one that is an address
    "7.0.0.127.in-addr.arpa.": {"PTR": ["we\\.ird.local.test."]},
    "we\\.ird.local.test.": {"A": ["127.0.0.7"]},
    "8.0.0.127.in-addr.arpa.": {"PTR": ["127.0.0.8."]},
    # NODATA
    "9.0.0.127.in-addr.arpa.": {"TXT": ["no PTR here"]},
    # IPv6
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa.": {
        "PTR": ["mail.local.test."]
    },
    "mail6.local.test.": {"AAAA": ["::1"]},
}

TEMPORARY = "a temporary DNS failure, try again later"
#: The facts of each address, from ZONE.
EXPECTED: dict[str, tuple[list[str], str | None, bool | None]] = {
    "127.0.0.1": (["mail.local.test"], None, True),
    "127.0.0.2": (["elsewhere.local.test"], None, False),
    "127.0.0.3": (["nowhere.local.test"], None, False),
    "127.0.0.4": (["nowhere.local.test", "four.local.test"], None, True),
    "127.0.0.5": (
        ["n1.local.test", "n2.local.test", "n3.local.test", "five.local.test"],
        None,
        False,
    ),
    "127.0.0.6": (["six.local.test"], None, True),
    "127.0.0.7": (["we\\.ird.local.test"], None, True),  # confirmed by dnspython
    "127.0.0.8": (["127.0.0.8"], None, True),
    "127.0.0.9": ([], None, None),  # NODATA
    "127.0.0.10": ([], None, None),  # NXDOMAIN is no error
    "127.0.0.11": (
        [],
        f"DNS servers failed on PTR for 11.0.0.127.in-addr.arpa (SERVFAIL); {TEMPORARY}",
        None,
    ),
    "127.0.0.12": (
        [],
        f"DNS lookup of PTR for 12.0.0.127.in-addr.arpa timed out; {TEMPORARY}",
        None,
    ),
    "::1": (["mail.local.test"], None, False),
}
ADDRESSES = list(EXPECTED)


def facts(text: str) -> list[tuple[str, object]]:
    ptr, error, confirmed = EXPECTED[text]
    return [("address", text), ("ptr", ptr), ("ptr_error", error), ("forward_confirmed", confirmed)]


def stepped(resolver: Resolver, address) -> dict[str, object] | None:
    """The lookup as a check drives it: begun, then finished after the dialogue."""
    lookup = ReverseLookup(resolver, address)
    lookup.start()
    lookup.finish(time.monotonic() + 5)
    lookup.close()
    return lookup.facts


def blocking(resolver: Resolver, address) -> dict[str, object] | None:
    return resolver.reverse(address)


@pytest.fixture
def dns_settings(settings, dns_server):
    server = dns_server(
        ZONE, servfail=["11.0.0.127.in-addr.arpa."], silent=["12.0.0.127.in-addr.arpa."]
    )
    return settings.replace(dns_servers=(("127.0.0.1", server.port),), dns_timeout=0.5)


@pytest.mark.parametrize("drive", [stepped, blocking])
@pytest.mark.parametrize("text", ADDRESSES)
def test_the_facts_are_what_the_dns_says(dns_settings, text, drive):
    found = drive(Resolver(dns_settings, time.monotonic() + 5), ipaddress.ip_address(text))
    assert found is not None
    assert list(found.items()) == facts(text)


@pytest.mark.parametrize("drive", [stepped, blocking])
@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.5", "127.0.0.7", "127.0.0.10", "::1"])
def test_a_configuration_dnsstub_leaves_to_dnspython_gets_the_same_facts(
    dns_settings, monkeypatch, text, drive
):
    from workers import dnsstub

    monkeypatch.setattr(dnsstub.Config, "of_servers", classmethod(lambda cls, servers: None))
    found = drive(Resolver(dns_settings, time.monotonic() + 5), ipaddress.ip_address(text))
    assert found is not None
    assert list(found.items()) == facts(text)


@pytest.mark.parametrize("drive", [stepped, blocking])
def test_without_dns_servers_the_forward_lookup_is_the_system_resolvers(
    settings, dns_server, monkeypatch, drive
):
    """No SMTPCHECK_DNS_SERVERS: the PTR goes to resolv.conf's servers (here
    the test's), the forward confirmation to getaddrinfo (/etc/hosts)."""
    from workers import dnsstub

    server = dns_server({"1.0.0.127.in-addr.arpa.": {"PTR": ["localhost.", "elsewhere.test."]}})
    config = dnsstub.Config.of_servers((("127.0.0.1", server.port),))
    monkeypatch.setattr(dnsstub.Config, "of", classmethod(lambda cls, resolver: config))
    found = drive(Resolver(settings, time.monotonic() + 5), ipaddress.ip_address("127.0.0.1"))
    assert found == {
        "address": "127.0.0.1",
        "ptr": ["localhost", "elsewhere.test"],
        "ptr_error": None,
        "forward_confirmed": True,
    }


def test_stepping_while_waiting_elsewhere_gets_the_same_facts(dns_settings):
    """The way a check drives it: step() whenever its socket may have an answer."""
    address = ipaddress.ip_address("127.0.0.4")
    lookup = ReverseLookup(Resolver(dns_settings, time.monotonic() + 5), address)
    lookup.start()
    ends = time.monotonic() + 5
    steps = 0
    while lookup.waiting and time.monotonic() < ends:
        time.sleep(0.001)
        lookup.step()
        steps += 1
    assert lookup.facts is not None and steps >= 2  # the PTR, then the forward lookups
    assert lookup.facts["forward_confirmed"] is True


def test_a_lookup_with_no_time_left_says_so(dns_settings):
    address = ipaddress.ip_address("127.0.0.1")
    lookup = ReverseLookup(Resolver(dns_settings, time.monotonic() - 1), address)
    lookup.start()
    lookup.finish(time.monotonic() + 1)
    expected = {
        "address": "127.0.0.1",
        "ptr": [],
        "ptr_error": "no time left for DNS before the check's deadline",
        "forward_confirmed": None,
    }
    assert lookup.facts == expected
    assert Resolver(dns_settings, time.monotonic() - 1).reverse(address) == expected


def test_a_check_carries_the_lookup_on_while_the_server_is_slow(
    scripted_server, dns_settings, monkeypatch
):
    """The banner comes 0.3 s after the connect: the PTR and its forward
    lookup end during that wait, on the check's thread (no thread started)."""

    def no_thread(self):
        raise AssertionError("a thread was started for the lookup")

    monkeypatch.setattr(ReverseLookup, "_in_thread", no_thread)

    def slow(sock):
        time.sleep(0.3)
        sock.sendall(b"220 mail.local.test ESMTP\r\n")
        sock.recv(100)  # QUIT
        sock.sendall(b"221 bye\r\n")

    server = scripted_server(slow)
    result = run_check(
        check_request(
            dns_settings, host="127.0.0.1", port=server.port, tls="none", stop_after="banner"
        ),
        dns_settings,
    )
    assert result["dns"]["ptr"] == ["mail.local.test"]
    assert result["dns"]["forward_confirmed"] is True
    assert result["dns"]["banner_matches_ptr"] is True
    assert result["timings"]["banner"] >= 250


class _NoWatcher:
    """Stands in for the process's cancel watcher: the test marks the watch itself."""

    def add(self, watch: object) -> None:
        pass

    def discard(self, watch: object) -> None:
        pass


def test_a_cancel_ends_a_name_lookup_at_once_without_a_thread(dns_settings, monkeypatch):
    """A host name's A lookup to a server that never answers ends with
    Canceled within a slice of the DELETE, not at its timeout, and runs in
    the check's thread (cancel.interruptible's thread is not used)."""
    import threading

    from workers import cancel
    from workers.errors import Canceled

    def no_thread(*args, **kwargs):
        raise AssertionError("interruptible was used")

    monkeypatch.setattr(cancel, "interruptible", no_thread)
    settings = dns_settings.replace(dns_timeout=5.0)
    resolver = Resolver(settings, time.monotonic() + 10)
    with cancel.watching(None, "check-1", watcher=_NoWatcher()) as watch:  # type: ignore[arg-type]
        threading.Timer(0.2, watch.mark).start()
        started = time.monotonic()
        with pytest.raises(Canceled):
            resolver.addresses("12.0.0.127.in-addr.arpa", 4)  # silent: never answered
    assert time.monotonic() - started < 1.5


def test_a_fault_in_the_lookup_leaves_the_check_whole(smtp_target, dns_settings, monkeypatch):
    """A bug in the lookup's own code costs the DNS facts (as when the
    lookup's thread died), never the check."""
    from workers import dnsstub

    def broken(self):
        raise RuntimeError("a bug")

    monkeypatch.setattr(dnsstub.Exchange, "step", broken)
    target = smtp_target(tls="none")
    result = run_check(
        check_request(dns_settings, host="127.0.0.1", port=target.port, tls="none"),
        dns_settings,
    )
    assert result["ok"] is True, result["summary"]
    assert result["dns"]["ptr_error"] == "the PTR lookup did not finish before the check's deadline"
