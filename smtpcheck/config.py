"""The one place that reads configuration from the environment.

Nothing reads the environment at import time: callers ask for
``Settings.from_env()`` when they start, and tests build ``Settings``
directly or pass their own mapping.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOWED_PORTS = (25, 465, 587, 2525)
DEFAULT_BIND = "127.0.0.1:8025"
DEFAULT_RESULT_TTL = 7 * 24 * 3600
DEFAULT_RATE_LIMIT = "60/minute;1000/hour"
DEFAULT_MAX_CONCURRENT_PER_KEY = 10
DEFAULT_MAX_CONCURRENT_PER_TARGET = 2
DEFAULT_CALLBACK_PORTS = (443,)
DEFAULT_MAX_HELD_PER_KEY = 20
DEFAULT_MAX_HELD = 500


REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


class ConfigError(ValueError):
    """An environment variable holds something we cannot use."""

    def __init__(self, variable: str, reason: str) -> None:
        super().__init__(f"{variable}: {reason}")
        self.variable = variable
        self.reason = reason


@dataclass(frozen=True)
class Timeouts:
    """Default and maximum per-check deadlines, in seconds."""

    connect: float = 10.0
    command: float = 30.0
    total: float = 60.0


@dataclass(frozen=True)
class Limits:
    """Caps a caller cannot lift; every one is visible in openapi.yaml."""

    max_recipients: int = 20
    max_message_bytes: int = 1024 * 1024
    max_body_bytes: int = 2 * 1024 * 1024
    max_wait: int = 60
    max_retry_attempts: int = 5
    max_retry_delay: float = 3600.0
    max_timeouts: Timeouts = Timeouts(connect=60.0, command=120.0, total=300.0)


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = None
    # TLS to Redis (rediss://, rediss+sentinel://): a private CA, a client certificate.
    redis_ca_file: str | None = None
    redis_cert_file: str | None = None
    redis_key_file: str | None = None
    secret_key: str | None = None
    api_keys: str = ""
    auth_enabled: bool = True
    allow_networks: tuple[IPNetwork, ...] = ()
    allowed_ports: frozenset[int] = frozenset(DEFAULT_ALLOWED_PORTS)
    helo_name: str = "smtpcheck.invalid"
    dns_servers: tuple[tuple[str, int], ...] = ()
    dns_timeout: float = 5.0
    # Seconds a worker waits for a Redis reply (SMTPCHECK_WORKER_REDIS_TIMEOUT):
    # workers/pool.py raises it to cover a blocking dequeue's own block.
    worker_redis_timeout: float = 5.0
    slow_banner: float = 5.0  # seconds; a slower greeting is a finding (tarpitting)
    vantage: str = "default"
    result_ttl: int = DEFAULT_RESULT_TTL
    bind: str = DEFAULT_BIND
    ca_file: str | None = None
    # Mail transport security (mx checks): how DNS answers are authenticated
    # for DANE, and where MTA-STS policies are fetched.
    dnssec: str = "off"  # off | trust-ad | validate
    dnssec_anchors: str | None = None  # a file of DS/DNSKEY records; None: the root's
    mta_sts_port: int = 443
    data_dir: Path = Path(".smtpcheck")
    log_level: str = "INFO"
    timeouts: Timeouts = Timeouts()
    limits: Limits = field(default_factory=Limits)
    # POST /v1/checks per API key, in the syntax of the `limits` package
    rate_limit: str = DEFAULT_RATE_LIMIT
    max_concurrent_per_key: int = DEFAULT_MAX_CONCURRENT_PER_KEY  # queued + running
    max_concurrent_per_target: int = DEFAULT_MAX_CONCURRENT_PER_TARGET  # per dialled IP
    # Webhooks (request field `callback`): the ports a callback URL may name,
    # and whether plain http:// is allowed besides https://.
    callback_ports: frozenset[int] = frozenset(DEFAULT_CALLBACK_PORTS)
    callback_http: bool = False
    # Responses held open (?wait, event streams): per key, and per API process
    max_held_per_key: int = DEFAULT_MAX_HELD_PER_KEY
    max_held: int = DEFAULT_MAX_HELD
    # For `smtpcheck check` as a client of a running service:
    service_url: str | None = None  # SMTPCHECK_URL
    client_api_key: str | None = None  # SMTPCHECK_API_KEY
    # SMTPCHECK_AUTH_PASSWORD: the AUTH password of `smtpcheck check --auth-user`
    client_auth_password: str | None = field(default=None, repr=False)
    # SMTPCHECK_CALLBACK_SECRET: the webhook secret of `smtpcheck check --callback-url`
    client_callback_secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            if value is None or not value.strip():
                return None
            return value.strip()

        kwargs: dict[str, Any] = {}
        kwargs["redis_url"] = get("REDIS_URL")
        if kwargs["redis_url"] is not None:
            parse_redis_url(kwargs["redis_url"])
        kwargs["redis_ca_file"] = get("SMTPCHECK_REDIS_CA_FILE")
        kwargs["redis_cert_file"] = get("SMTPCHECK_REDIS_CERT_FILE")
        kwargs["redis_key_file"] = get("SMTPCHECK_REDIS_KEY_FILE")
        kwargs["secret_key"] = get("SMTPCHECK_SECRET_KEY")
        kwargs["api_keys"] = get("SMTPCHECK_API_KEYS") or ""
        kwargs["auth_enabled"] = parse_switch("SMTPCHECK_AUTH", get("SMTPCHECK_AUTH") or "on")
        kwargs["allow_networks"] = parse_networks(
            "SMTPCHECK_ALLOW_NETWORKS", get("SMTPCHECK_ALLOW_NETWORKS")
        )
        ports = get("SMTPCHECK_ALLOWED_PORTS")
        if ports is not None:
            kwargs["allowed_ports"] = parse_ports("SMTPCHECK_ALLOWED_PORTS", ports)
        kwargs["helo_name"] = get("SMTPCHECK_HELO_NAME") or default_helo_name()
        kwargs["dns_servers"] = parse_dns_servers(
            "SMTPCHECK_DNS_SERVERS", get("SMTPCHECK_DNS_SERVERS")
        )
        dns_timeout = get("SMTPCHECK_DNS_TIMEOUT")
        if dns_timeout is not None:
            kwargs["dns_timeout"] = parse_seconds("SMTPCHECK_DNS_TIMEOUT", dns_timeout)
        worker_redis_timeout = get("SMTPCHECK_WORKER_REDIS_TIMEOUT")
        if worker_redis_timeout is not None:
            kwargs["worker_redis_timeout"] = parse_seconds(
                "SMTPCHECK_WORKER_REDIS_TIMEOUT", worker_redis_timeout
            )
        slow_banner = get("SMTPCHECK_SLOW_BANNER")
        if slow_banner is not None:
            kwargs["slow_banner"] = parse_seconds("SMTPCHECK_SLOW_BANNER", slow_banner)
        kwargs["vantage"] = get("SMTPCHECK_VANTAGE") or "default"
        ttl = get("SMTPCHECK_RESULT_TTL")
        if ttl is not None:
            kwargs["result_ttl"] = parse_positive_int("SMTPCHECK_RESULT_TTL", ttl)
        kwargs["bind"] = get("SMTPCHECK_BIND") or DEFAULT_BIND
        kwargs["ca_file"] = get("SMTPCHECK_CA_FILE")
        dnssec = (get("SMTPCHECK_DNSSEC") or "off").lower()
        if dnssec not in ("off", "trust-ad", "validate"):
            raise ConfigError(
                "SMTPCHECK_DNSSEC", f"must be 'off', 'trust-ad' or 'validate', not {dnssec!r}"
            )
        kwargs["dnssec"] = dnssec
        kwargs["dnssec_anchors"] = get("SMTPCHECK_DNSSEC_ANCHORS")
        mta_sts_port = get("SMTPCHECK_MTA_STS_PORT")
        if mta_sts_port is not None:
            if not mta_sts_port.isdigit() or not 1 <= int(mta_sts_port) <= 65535:
                raise ConfigError("SMTPCHECK_MTA_STS_PORT", f"{mta_sts_port!r} is not a TCP port")
            kwargs["mta_sts_port"] = int(mta_sts_port)
        kwargs["data_dir"] = Path(get("SMTPCHECK_DATA_DIR") or ".smtpcheck")
        kwargs["log_level"] = (get("SMTPCHECK_LOG_LEVEL") or "INFO").upper()
        kwargs["service_url"] = get("SMTPCHECK_URL")
        kwargs["client_api_key"] = get("SMTPCHECK_API_KEY")
        # Not stripped: a password may begin or end with a space.
        kwargs["client_auth_password"] = env.get("SMTPCHECK_AUTH_PASSWORD") or None
        kwargs["client_callback_secret"] = get("SMTPCHECK_CALLBACK_SECRET")
        rate_limit = get("SMTPCHECK_RATE_LIMIT")
        if rate_limit is not None:
            kwargs["rate_limit"] = parse_rate_limit("SMTPCHECK_RATE_LIMIT", rate_limit)
        for name, variable in (
            ("max_concurrent_per_key", "SMTPCHECK_MAX_CONCURRENT_PER_KEY"),
            ("max_concurrent_per_target", "SMTPCHECK_MAX_CONCURRENT_PER_TARGET"),
            ("max_held_per_key", "SMTPCHECK_MAX_HELD_PER_KEY"),
            ("max_held", "SMTPCHECK_MAX_HELD"),
        ):
            value = get(variable)
            if value is not None:
                kwargs[name] = parse_positive_int(variable, value)
        callback_ports = get("SMTPCHECK_CALLBACK_PORTS")
        if callback_ports is not None:
            kwargs["callback_ports"] = parse_ports("SMTPCHECK_CALLBACK_PORTS", callback_ports)
        kwargs["callback_http"] = parse_switch(
            "SMTPCHECK_CALLBACK_HTTP", get("SMTPCHECK_CALLBACK_HTTP") or "off"
        )
        return cls(**kwargs)

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def is_allowed_network(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in net for net in self.allow_networks if net.version == address.version)


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_redis_url(url: str) -> str | SentinelTarget:
    """Check ``url`` is one ``REDIS_URL`` takes; sentinel URLs come back parsed.

    Pure: no redis import, so reading the settings (gunicorn's config does,
    before gevent patches the standard library) loads no Redis client.

    Raises ``ConfigError`` naming ``REDIS_URL`` with what is wrong.
    """
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if not rest or scheme not in REDIS_SCHEMES:
        raise ConfigError(
            "REDIS_URL",
            f"must start with one of {', '.join(s + '://' for s in REDIS_SCHEMES)}",
        )
    if not scheme.endswith("+sentinel"):
        return url
    # urlsplit cannot read a netloc with several host:port pairs; split it ourselves.
    netloc, _, path = rest.partition("/")
    path, _, _query = path.partition("?")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            parsed = urlsplit("//" + item)
            host, port = parsed.hostname, parsed.port or SENTINEL_PORT
        except ValueError:
            host = None
        if not host:
            raise ConfigError("REDIS_URL", "a sentinel address is not host:port")
        sentinels.append((host, port))
    if not sentinels:
        raise ConfigError("REDIS_URL", "names no sentinel (redis+sentinel://host:port/service)")
    parts = [part for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise ConfigError(
            "REDIS_URL", "must end in /<service> or /<service>/<db> after the sentinels"
        )
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ConfigError("REDIS_URL", "the database after the service is not a number")
        db = int(parts[1])
    return SentinelTarget(
        sentinels=tuple(sentinels),
        service=unquote(parts[0]),
        db=db,
        username=username,
        password=password,
        tls=scheme == "rediss+sentinel",
    )


def default_helo_name() -> str:
    """This machine's fully qualified name, if it has one that looks like a FQDN."""
    name = socket.getfqdn()
    if "." in name and not name.endswith(".localdomain") and name != "localhost":
        return name
    return "smtpcheck.invalid"


def parse_networks(variable: str, value: str | None) -> tuple[IPNetwork, ...]:
    if not value:
        return ()
    networks = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ConfigError(variable, f"{item!r} is not a CIDR network ({exc})") from None
    return tuple(networks)


def parse_ports(variable: str, value: str) -> frozenset[int]:
    """``25,587,2601-2614``: ports and inclusive ranges of them."""
    ports: set[int] = set()
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        first, dash, last = item.partition("-")
        bounds = [first.strip(), last.strip()] if dash else [item]
        if not all(b.isdigit() and 1 <= int(b) <= 65535 for b in bounds):
            raise ConfigError(
                variable, f"{item!r} is not a TCP port (1-65535) or a range of them (2601-2614)"
            )
        low, high = int(bounds[0]), int(bounds[-1])
        if low > high:
            raise ConfigError(variable, f"{item!r} is an empty range: write it low-high")
        ports.update(range(low, high + 1))
    if not ports:
        raise ConfigError(variable, "lists no port")
    return frozenset(ports)


def parse_dns_servers(variable: str, value: str | None) -> tuple[tuple[str, int], ...]:
    if not value:
        return ()
    servers = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        host, port = item, 53
        if item.startswith("["):  # [2001:db8::1]:5353
            host, _, rest = item[1:].partition("]")
            if rest:
                if not rest.startswith(":") or not rest[1:].isdigit():
                    raise ConfigError(variable, f"{item!r} is not ip, ip:port or [ipv6]:port")
                port = int(rest[1:])
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
            if not port_text.isdigit():
                raise ConfigError(variable, f"{item!r} has a port that is not a number")
            port = int(port_text)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(variable, f"{host!r} is not an IP address") from None
        if not 1 <= port <= 65535:
            raise ConfigError(variable, f"{item!r} has a port outside 1-65535")
        servers.append((host, port))
    return tuple(servers)


def parse_switch(variable: str, value: str) -> bool:
    """``on`` or ``off``."""
    word = value.lower()
    if word not in ("on", "off"):
        raise ConfigError(variable, f"must be 'on' or 'off', not {value!r}")
    return word == "on"


def parse_positive_int(variable: str, value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise ConfigError(variable, f"{value!r} is not a positive whole number")
    return int(value)


def parse_rate_limit(variable: str, value: str) -> str:
    """``60/minute;1000/hour``: one or more limits in the `limits` package's syntax."""
    from limits import parse_many  # only when the variable is set

    try:
        parse_many(value)
    except ValueError as exc:
        raise ConfigError(
            variable, f"{value!r} is not a rate limit such as '60/minute;1000/hour' ({exc})"
        ) from None
    return value


def parse_seconds(variable: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(variable, f"{value!r} is not a number of seconds") from None
    if not 0 < seconds <= 3600:
        raise ConfigError(variable, f"{value!r} must be more than 0 and at most 3600 seconds")
    return seconds
