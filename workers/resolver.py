"""DNS for a check: addresses, MX hosts and PTR names, every failure a fact.

With ``SMTPCHECK_DNS_SERVERS`` set, dnspython asks those servers; otherwise
addresses come from the system resolver (getaddrinfo, which honours
/etc/hosts) and MX/PTR from dnspython with the system's resolv.conf. Every
lookup is bounded by the check's deadline and ``SMTPCHECK_DNS_TIMEOUT``, and
given up at once when the caller cancels the check (workers/cancel.py).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.resolver

from smtpcheck.config import Settings
from smtpcheck.targetpolicy import IPAddress
from workers import cancel, dnsstub
from workers.errors import Canceled, DNSError

#: Said of a SERVFAIL or a timeout: the name may well resolve a minute later.
TEMPORARY = "a temporary DNS failure, try again later"
#: Seconds one server gets to answer one try of a lookup (the lifetime bounds them all).
TRY_TIMEOUT = 2.0

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MXHost:
    preference: int
    host: str
    implicit: bool = False  # no MX record: the domain itself, RFC 5321 5.1


class NullMX(DNSError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""


@functools.lru_cache(maxsize=1024)  # asked of the same host several times a check
def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells (``[..]`` and ``IPv6:`` forms too), or None for a name."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if text.lower().startswith("ipv6:"):  # RFC 5321 address-literal spelling
        text = text[5:]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class Resolver:
    def __init__(self, settings: Settings, deadline: float) -> None:
        self.settings = settings
        self.deadline = deadline
        self._resolver: dns.resolver.Resolver | None = None
        self._secure: dns.resolver.Resolver | None = None
        self._stub: dnsstub.Config | None = None
        self._stub_known = False

    def _timeout(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DNSError("no time left for DNS before the check's deadline")
        return min(left, self.settings.dns_timeout)

    def _dnspython(self, timeout: float) -> dns.resolver.Resolver:
        """One dnspython resolver per lookup chain (resolv.conf read once)."""
        resolver = self._resolver
        if resolver is None:
            if self.settings.dns_servers:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [ip for ip, _ in self.settings.dns_servers]
                resolver.nameserver_ports = dict(self.settings.dns_servers)
            else:
                try:
                    resolver = dns.resolver.Resolver(configure=True)
                except dns.resolver.NoResolverConfiguration as exc:
                    raise DNSError(f"no DNS resolver configured on this worker: {exc}") from None
            self._resolver = resolver
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, TRY_TIMEOUT)
        return resolver

    def _query(self, name: str | dns.name.Name, rdtype: str) -> dns.resolver.Answer | None:
        """One lookup by dnspython; ``None`` for NODATA, DNSError for everything that went wrong."""

        def resolve() -> dns.resolver.Answer:
            resolver = self._dnspython(self._timeout())
            return cancel.interruptible(lambda: resolver.resolve(name, rdtype, search=False))

        return self._guarded(str(name).rstrip("."), rdtype, resolve)

    def _records(self, name: str, labels: dnsstub.Labels | None, rdtype: str) -> list[str] | None:
        """The records' texts (as dnspython's ``to_text``) of an A, AAAA or
        PTR lookup: by :mod:`workers.dnsstub` when ``labels`` (the name on
        the wire) are given and the configuration allows, else by dnspython."""
        config = self._stub_config() if labels is not None else None
        if config is None or labels is None:
            answer = self._query(name, rdtype)
            return [r.to_text() for r in answer] if answer is not None else None
        asked = labels

        def lookup() -> list[bytes | dnsstub.Labels]:
            lifetime = self._timeout()
            cancel.stop_if_canceled()
            exchange = dnsstub.Exchange(config, asked, rdtype, lifetime, min(lifetime, TRY_TIMEOUT))
            _carry_out(exchange)
            return exchange.result()

        found = self._guarded(name.rstrip("."), rdtype, lookup)
        if found is None:
            return None
        if rdtype == "PTR":
            return [dnsstub.name_text(value) for value in found if isinstance(value, tuple)]
        family = socket.AF_INET6 if rdtype == "AAAA" else socket.AF_INET
        return [socket.inet_ntop(family, value) for value in found if isinstance(value, bytes)]

    def _stub_config(self) -> dnsstub.Config | None:
        """The lean lookups' configuration (None: this one needs dnspython)."""
        if not self._stub_known:
            servers = self.settings.dns_servers
            if servers:
                self._stub = dnsstub.Config.of_servers(tuple(servers))
            else:
                self._stub = dnsstub.Config.of(self._dnspython(self._timeout()))
            self._stub_known = True
        return self._stub

    def _guarded(self, shown: str, rdtype: str, call: Callable[[], T]) -> T | None:
        """``call()``, its dnspython outcomes as DNSError; ``None`` for NODATA."""
        try:
            return call()
        except dns.resolver.NXDOMAIN:
            raise DNSError(f"{shown} does not exist (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NoNameservers:
            raise DNSError(
                f"DNS servers failed on {rdtype} for {shown} (SERVFAIL); {TEMPORARY}",
                temporary=True,
            ) from None
        except dns.exception.Timeout:
            raise DNSError(
                f"DNS lookup of {rdtype} for {shown} timed out; {TEMPORARY}", temporary=True
            ) from None
        except dns.exception.DNSException as exc:
            raise DNSError(f"DNS lookup of {rdtype} for {shown} failed: {exc}") from None

    # -- addresses -----------------------------------------------------------

    def addresses(self, host: str, ip_version: int | None) -> list[IPAddress]:
        """The host's addresses (A, then AAAA), honouring ``ip_version``."""
        literal = ip_literal(host)
        if literal is not None:
            if ip_version and literal.version != ip_version:
                raise DNSError(
                    f"{host} is an IPv{literal.version} address but ip_version is {ip_version}"
                )
            return [literal]
        if self.settings.dns_servers:
            found = self._addresses_dns(host, ip_version)
        else:
            found = self._addresses_system(host, ip_version)
        if not found:
            kind, records = {4: ("IPv4 address", "A"), 6: ("IPv6 address", "AAAA")}.get(
                ip_version or 0, ("address", "A/AAAA")
            )
            raise DNSError(f"{host} has no {kind} (no {records} record)")
        return found

    def _addresses_dns(self, host: str, ip_version: int | None) -> list[IPAddress]:
        types = {4: ["A"], 6: ["AAAA"]}.get(ip_version or 0, ["A", "AAAA"])
        found: list[IPAddress] = []
        failed: list[DNSError] = []
        labels = dnsstub.plain_name(host)
        for rdtype in types:
            try:
                records = self._records(host, labels, rdtype)
            except DNSError as exc:
                if failed:
                    raise failed[0] from None  # the first failure, not "no time left"
                if not exc.temporary:
                    raise  # NXDOMAIN for one type is NXDOMAIN for all
                failed.append(exc)  # the other type may still answer
                continue
            if records is not None:
                found += [ipaddress.ip_address(text) for text in records]
        if failed and not found:
            raise failed[0]
        return found

    def _addresses_system(self, host: str, ip_version: int | None) -> list[IPAddress]:
        """getaddrinfo, bounded by running it in a thread."""
        family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(ip_version or 0, socket.AF_UNSPEC)
        outcome: dict[str, object] = {}

        def lookup() -> None:
            try:
                outcome["infos"] = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)
            except OSError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=lookup, daemon=True, name="smtpcheck-resolve")
        thread.start()
        cancel.join(thread, self._timeout())  # a DELETE ends the wait at once
        cancel.stop_if_canceled()
        if thread.is_alive():
            raise DNSError(f"DNS lookup of {host} timed out; {TEMPORARY}", temporary=True)
        error = outcome.get("error")
        if isinstance(error, socket.gaierror):
            if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
                raise DNSError(f"{host} does not resolve (no such name or no address)")
            if error.errno == socket.EAI_AGAIN:  # the resolver's SERVFAIL or timeout
                raise DNSError(
                    f"DNS lookup of {host} failed: {error.strerror}; {TEMPORARY}", temporary=True
                )
            raise DNSError(f"DNS lookup of {host} failed: {error.strerror}")
        if isinstance(error, OSError):
            raise DNSError(f"DNS lookup of {host} failed: {error}")
        infos = outcome.get("infos")
        found: list[IPAddress] = []
        for info in infos if isinstance(infos, list) else []:
            address = ipaddress.ip_address(info[4][0].split("%")[0])
            if address not in found:
                found.append(address)
        return found

    # -- MX ----------------------------------------------------------------

    def mx(self, domain: str) -> list[MXHost]:
        """The domain's mail hosts in preference order (ties kept, in the order
        given); the domain itself when it has no MX; NullMX for ``0 .``."""
        answer = self._query(domain, "MX")
        if answer is None:
            return [MXHost(0, domain.rstrip("."), implicit=True)]
        hosts = sorted(
            (MXHost(int(r.preference), r.exchange.to_text().rstrip(".")) for r in answer),
            key=lambda mx: mx.preference,
        )
        if any(mx.host == "" for mx in hosts):
            raise NullMX(f"{domain} publishes a null MX (RFC 7505): it accepts no mail")
        return hosts

    # -- TXT and DNSSEC-aware lookups (mail transport security) --------------

    def txt(self, name: str) -> list[str]:
        """The TXT records at ``name``, each record's strings joined (RFC 7208
        3.3 style); ``[]`` for NXDOMAIN or NODATA, DNSError otherwise."""
        try:
            answer = self._query(name, "TXT")
        except DNSError as exc:
            if "NXDOMAIN" in str(exc):
                return []
            raise
        if answer is None:
            return []
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]

    def secure(
        self, name: str | dns.name.Name, rdtype: str, *, denials: bool = False
    ) -> dns.message.Message | None:
        """The whole response to a query with the DNSSEC OK bit (RRSIGs
        included) and AD asked for; None for NXDOMAIN or NODATA (with
        ``denials``, the response then too: its NSEC/NSEC3 records prove the
        absence), DNSError for failures. What the signatures prove is
        :mod:`workers.dnssec`'s to judge."""
        try:
            resolver = self._secure_resolver()
            answer = cancel.interruptible(lambda: resolver.resolve(name, rdtype, search=False))
        except dns.resolver.NXDOMAIN as exc:
            return next(iter(exc.responses().values()), None) if denials else None
        except dns.resolver.NoAnswer as exc:
            return exc.response() if denials else None
        except dns.resolver.NoNameservers:
            shown = str(name).rstrip(".")
            raise DNSError(
                f"DNS servers failed on {rdtype} for {shown} (SERVFAIL: with DNSSEC, often a "
                f"validation failure); {TEMPORARY}",
                temporary=True,
            ) from None
        except dns.exception.Timeout:
            shown = str(name).rstrip(".")
            raise DNSError(
                f"DNS lookup of {rdtype} for {shown} timed out; {TEMPORARY}", temporary=True
            ) from None
        except dns.exception.DNSException as exc:
            raise DNSError(f"DNS lookup of {rdtype} for {name} failed: {exc}") from None
        return answer.response

    def _secure_resolver(self) -> dns.resolver.Resolver:
        """A second resolver on the same servers, asking with DO and AD."""
        base = self._dnspython(self._timeout())
        resolver = self._secure
        if resolver is None:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = base.nameservers
            resolver.nameserver_ports = dict(base.nameserver_ports)
            resolver.port = base.port
            resolver.use_edns(0, dns.flags.DO, 1232)
            resolver.flags = dns.flags.RD | dns.flags.AD
            self._secure = resolver
        resolver.lifetime, resolver.timeout = base.lifetime, base.timeout
        return resolver

    def cname(self, host: str) -> str | None:
        """The name ``host`` is an alias of, or None (also when the lookup fails)."""
        try:
            answer = self._query(host, "CNAME")
        except DNSError:
            return None
        return answer[0].to_text().rstrip(".") if answer is not None and len(answer) else None

    # -- PTR ---------------------------------------------------------------

    def ptr(self, address: IPAddress) -> list[str]:
        labels = dnsstub.reverse_name(address)
        records = self._records(dnsstub.name_text(labels), labels, "PTR")
        return [text.rstrip(".") for text in records] if records is not None else []

    # -- reverse DNS facts --------------------------------------------------

    def reverse(self, address: IPAddress) -> dict[str, object]:
        """PTR names of ``address`` and whether one resolves back to it
        (FCrDNS), on this thread (:class:`ReverseLookup`'s ``run``)."""
        return ReverseLookup(self, address).run()


def _carry_out(exchange: dnsstub.Exchange) -> None:
    """Wait ``exchange`` out on this thread, given up with Canceled as soon
    as the check is canceled (as cancel.interruptible does, without a
    thread for the lookup)."""
    try:
        while not exchange.done:
            exchange.wait(time.monotonic() + cancel.LOOKUP_SLICE)
            cancel.stop_if_canceled()
            exchange.step()
    finally:
        exchange.close()


class ReverseLookup:
    """The reverse DNS facts of an address: its PTR names, then the forward
    lookups of the first three of them until one gives the address back
    (FCrDNS). ``facts`` once done: the address, ``ptr`` (the names),
    ``ptr_error`` (a failed PTR lookup; NXDOMAIN is no error) and
    ``forward_confirmed`` (None without a name).

    Two ways to drive it:

    - ``run()`` makes every lookup on the calling thread (Resolver.reverse);
    - ``start()`` begins it for the check's thread to carry on while it
      waits for the server (workers.connection's ``sidecar``: ``waiting``,
      ``fileno()``, ``wake_at`` and ``step()`` as a
      :class:`workers.dnsstub.Exchange`'s), ``finish(until)`` after the
      dialogue.

    A lookup dnsstub makes is an exchange, stepped. The others (a
    configuration dnsstub leaves to dnspython, a PTR name that is not a
    plain host name, and the forward confirmation through the system
    resolver, which is getaddrinfo) are the Resolver's blocking calls: a
    started lookup hands itself over to a thread at the first of them, and
    that thread runs the rest.
    """

    def __init__(self, resolver: Resolver, address: IPAddress) -> None:
        self.resolver = resolver
        self.address = address
        self.facts: dict[str, object] | None = None
        self._partial: dict[str, object] = {
            "address": str(address),
            "ptr": [],
            "ptr_error": None,
            "forward_confirmed": None,
        }
        self._names: list[str] = []
        self._tried = 0
        self._config: dnsstub.Config | None = None
        self._exchange: dnsstub.Exchange | None = None
        self._rdtype = "PTR"
        self._shown = ""
        #: The next lookup when it is a blocking call, not an exchange.
        self._blocking: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None

    def run(self) -> dict[str, object]:
        """The whole lookup on this thread; Canceled when the check is canceled."""
        cancel.stop_if_canceled()
        self._begin()
        self._complete()
        assert self.facts is not None
        return self.facts

    def _complete(self) -> None:
        """Every lookup left, on this thread."""
        while self.facts is None:
            blocking, self._blocking = self._blocking, None
            if blocking is not None:
                blocking()
                continue
            assert self._exchange is not None
            _carry_out(self._exchange)
            self._step()

    # -- the sidecar's side --------------------------------------------------

    def start(self) -> None:
        """Begin: the PTR query goes out (or a thread takes the lookup over)."""
        try:
            self._begin()
        except Exception:  # a fault of ours: no facts, as when the lookup's thread died
            self._broke()
        self._hand_over()

    @property
    def waiting(self) -> bool:
        """Whether a lookup is under way that ``step()`` carries on."""
        return self._exchange is not None and self._thread is None

    @property
    def wake_at(self) -> float:
        return self._exchange.wake_at if self._exchange is not None else 0.0

    def fileno(self) -> int | None:
        return self._exchange.fileno() if self._exchange is not None else None

    def step(self) -> None:
        try:
            self._step()
        except Exception:  # a fault of ours: no facts, the check goes on
            self._broke()
        self._hand_over()

    def finish(self, until: float) -> None:
        """Carry the lookup on until it is done, ``until`` (monotonic) or a
        cancel of the check, whichever comes first; ``facts`` stays None
        when it did not end."""
        while self.facts is None:
            thread = self._thread
            if thread is not None:
                cancel.join(thread, max(0.0, until - time.monotonic()))
                return
            exchange = self._exchange
            if exchange is None or time.monotonic() >= until:
                return
            try:
                cancel.stop_if_canceled()
            except Canceled:
                return  # not past a DELETE
            exchange.wait(min(until, time.monotonic() + cancel.LOOKUP_SLICE))
            self.step()

    def close(self) -> None:
        """Give the stepped lookup up (a thread's ends by its own deadline)."""
        if self._thread is None and self._exchange is not None:
            self._exchange.close()

    def _hand_over(self) -> None:
        """A thread of its own for the rest, once the next lookup blocks."""
        if self._blocking is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._in_thread, daemon=True, name="smtpcheck-ptr")
        self._thread.start()

    def _in_thread(self) -> None:
        try:
            self._complete()
        except Exception:  # a fault of ours: no facts
            self._broke()

    def _broke(self) -> None:
        """A fault in the lookup's own code: it ends without facts (the result
        says it did not finish), the check goes on."""
        log.exception("the reverse DNS lookup of %s failed in smtpcheck itself", self.address)
        self._blocking = None
        if self._exchange is not None:
            self._exchange.close()
            self._exchange = None

    # -- the lookups -----------------------------------------------------------

    def _begin(self) -> None:
        """The PTR lookup: an exchange, or dnspython's."""
        try:
            self._config = self.resolver._stub_config()
            if self._config is None:
                self._blocking = self._ptr_by_resolver
                return
            labels = dnsstub.reverse_name(self.address)
            self._start(labels, "PTR", dnsstub.name_text(labels))
        except DNSError as exc:
            self._ptr_failed(exc)

    def _start(self, labels: dnsstub.Labels, rdtype: str, shown: str) -> None:
        assert self._config is not None
        lifetime = self.resolver._timeout()
        try_timeout = min(lifetime, TRY_TIMEOUT)
        self._rdtype, self._shown = rdtype, shown
        self._exchange = dnsstub.Exchange(self._config, labels, rdtype, lifetime, try_timeout)

    def _step(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        exchange.step()
        if not exchange.done:
            return
        self._exchange = None
        shown = self._shown.rstrip(".")
        try:
            found = self.resolver._guarded(shown, self._rdtype, exchange.result)
        except DNSError as exc:
            if self._rdtype == "PTR":
                self._ptr_failed(exc)
            else:
                self._forward_next()
            return
        if self._rdtype == "PTR":
            names = [dnsstub.name_text(v).rstrip(".") for v in found or () if isinstance(v, tuple)]
            self._ptr_found(names)
        else:
            self._forward_found(
                [ipaddress.ip_address(v) for v in found or () if isinstance(v, bytes)]
            )

    def _ptr_by_resolver(self) -> None:
        try:
            names = self.resolver.ptr(self.address)
        except DNSError as exc:
            self._ptr_failed(exc)
            return
        self._ptr_found(names)

    def _ptr_failed(self, exc: DNSError) -> None:
        if "NXDOMAIN" not in str(exc):
            self._partial["ptr_error"] = str(exc)
        self.facts = self._partial

    def _ptr_found(self, names: list[str]) -> None:
        self._partial["ptr"] = self._names = names
        self._forward_next()

    def _forward_next(self) -> None:
        """The forward lookup of the next of the first three PTR names (an
        address name is its own answer); done when one confirms or none is left."""
        address, names = self.address, self._names
        while self._tried < min(3, len(names)):
            name = names[self._tried]
            self._tried += 1
            literal = ip_literal(name)
            if literal is not None:
                if literal == address:
                    self._done(confirmed=True)
                    return
                continue
            labels = dnsstub.plain_name(name)
            if self._config is None or labels is None or not self.resolver.settings.dns_servers:
                self._blocking = functools.partial(self._forward_by_resolver, name)
                return
            try:
                self._start(labels, "A" if address.version == 4 else "AAAA", name)
            except DNSError:
                continue
            return
        self._done(confirmed=False)

    def _forward_by_resolver(self, name: str) -> None:
        try:
            found = self.resolver.addresses(name, self.address.version)
        except DNSError:
            found = []
        self._forward_found(found)

    def _forward_found(self, addresses: list[IPAddress]) -> None:
        if self.address in addresses:
            self._done(confirmed=True)
        else:
            self._forward_next()

    def _done(self, *, confirmed: bool) -> None:
        self._partial["forward_confirmed"] = confirmed if self._names else None
        self.facts = self._partial
