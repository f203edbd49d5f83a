"""Real SMTP peers for the tests: aiosmtpd with trustme certificates, and
small scripted socket servers that misbehave on purpose.

All of them listen on 127.0.0.1 only and are stopped by the fixtures that
start them.
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hmac
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from smtpcheck.embedded_redis import free_port

LOCAL_DOMAIN = "local.test"
USERS = {"alice": "s3cret-Pa55"}


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class TargetHandler:
    """An MTA for LOCAL_DOMAIN: relays nothing unless authenticated."""

    users: dict[str, str] = field(default_factory=lambda: dict(USERS))
    known_recipients: set[str] = field(
        default_factory=lambda: {f"postmaster@{LOCAL_DOMAIN}", f"bob@{LOCAL_DOMAIN}"}
    )
    greylist: bool = False
    open_relay: bool = False  # accept any recipient from anyone: a misconfigured MTA
    reject_senders: set[str] = field(default_factory=set)
    reject_data: bool = False
    received: list[Received] = field(default_factory=list)
    _greylisted: set[str] = field(default_factory=set)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.reject_senders:
            return "550 5.7.1 Sender address rejected: access denied"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        domain = address.rpartition("@")[2].lower()
        if domain != LOCAL_DOMAIN and not session.authenticated and not self.open_relay:
            return f"554 5.7.1 <{address}>: Relay access denied"
        if domain == LOCAL_DOMAIN and address.lower() not in self.known_recipients:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if self.greylist and address not in self._greylisted:
            self._greylisted.add(address)
            return f"450 4.7.1 <{address}>: Recipient address rejected: Greylisted, try again"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.reject_data:
            return "554 5.6.0 Message content rejected"
        assert isinstance(envelope.content, bytes)
        self.received.append(
            Received(str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content)
        )
        return "250 2.0.0 Ok: queued as 4F2A1"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if self.users.get(user) == password:
                return AuthResult(success=True, auth_data=user)
        return AuthResult(success=False, handled=False)

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        challenge = f"<{time.time_ns()}@{LOCAL_DOMAIN}>".encode()
        response = await server.challenge_auth(challenge)
        if not isinstance(response, bytes):
            return AuthResult(success=False, handled=True)  # aborted with "*"
        user, _, digest = response.decode().rpartition(" ")
        password = self.users.get(user)
        expected = hmac.new((password or "").encode(), challenge, "md5").hexdigest()
        if password is None or not hmac.compare_digest(expected, digest):
            return AuthResult(success=False, handled=False)
        return AuthResult(success=True, auth_data=user)


class Certificates:
    """A trustme CA and a server certificate for mail.local.test and 127.0.0.1
    (or ``names``, valid from ``not_before`` to ``not_after``). The server
    context records the SNI name of every handshake in ``sni_seen``."""

    def __init__(
        self,
        tmp_dir: Any,
        names: tuple[str, ...] = ("mail.local.test", "127.0.0.1"),
        **validity: Any,
    ):
        self.ca = trustme.CA()
        self.server_cert = self.ca.issue_cert(*names, **validity)
        self.ca_file = str(tmp_dir / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.sni_seen: list[str | None] = []

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(ctx)
        ctx.sni_callback = lambda _sock, name, _ctx: self.sni_seen.append(name)
        return ctx


class SMTPTarget:
    """aiosmtpd on 127.0.0.1 at a free port.

    tls: "none", "starttls" (offered), "starttls_required" (530 before it),
    or "implicit" (TLS on connect, as on 465).
    """

    def __init__(
        self,
        certificates: Certificates | None = None,
        *,
        tls: str = "none",
        auth: bool = True,
        auth_required: bool = False,
        handler: TargetHandler | None = None,
        hostname: str = "mail.local.test",
    ) -> None:
        self.handler = handler or TargetHandler()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls = tls
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "server_hostname": hostname,
            "ident": "smtpcheck-test-target",
            "auth_required": auth_required,
            # aiosmtpd warns (an error here) when AUTH is required without TLS
            "auth_require_tls": auth_required,
            "authenticator": self.handler.authenticate,
            "data_size_limit": 10 * 1024 * 1024,
            "decode_data": False,
        }
        if not auth:
            kwargs["auth_exclude_mechanism"] = ["PLAIN", "LOGIN", "CRAM-MD5"]
        if tls in ("starttls", "starttls_required"):
            assert certificates is not None
            kwargs["tls_context"] = certificates.server_context()
            kwargs["require_starttls"] = tls == "starttls_required"
        elif tls == "implicit":
            assert certificates is not None
            kwargs["ssl_context"] = certificates.server_context()
        self.controller = Controller(self.handler, **kwargs)

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def start(self) -> SMTPTarget:
        self.controller.start()
        return self

    def stop(self) -> None:
        # aiosmtpd's loop may stop before it has closed a session whose client
        # just went away; that socket is the test server's, not ours, so its
        # ResourceWarning is collected here rather than in some later test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            with contextlib.suppress(Exception):
                self.controller.stop()
            gc.collect()


# ---------------------------------------------------------------------------
# Scripted misbehaving servers
# ---------------------------------------------------------------------------

Script = Callable[[socket.socket], None]


class ScriptedServer:
    """A one-thread TCP server on 127.0.0.1 that runs ``script`` per client."""

    def __init__(self, script: Script, host: str = "127.0.0.1") -> None:
        self.script = script
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(8)
        self.host = host
        self.port = int(self.listener.getsockname()[1])
        self.received = bytearray()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clients: list[socket.socket] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def start(self) -> ScriptedServer:
        self._acceptor.start()
        return self

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._clients.append(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError), client:
            self.script(client)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        for client in self._clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                client.close()
        self._acceptor.join(2)
        for thread in self._threads:
            thread.join(2)


def read_line(sock: socket.socket, limit: int = 4096) -> bytes:
    """Read one client line (for scripts); b"" when the client went away."""
    data = bytearray()
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def canned(
    replies: dict[str, bytes | list[bytes]],
    *,
    banner: bytes = b"220 mx.local.test ESMTP\r\n",
    ehlo: bytes = b"250-mx.local.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
    heard: list[bytes] | None = None,
) -> Script:
    """A scripted MTA: the banner, then per command the reply of the longest
    key the line starts with (a list: one reply per use, the last repeated);
    EHLO gets ``ehlo``, QUIT 221, anything else 250. After ``354`` to DATA it
    reads the message up to the final dot and answers with ``replies["."]``.
    Every line the client sent is kept in ``heard``."""

    def reply_for(line: bytes, used: dict[str, int]) -> bytes:
        text = line.decode("utf-8", "replace")
        keys = sorted((k for k in replies if text.upper().startswith(k.upper())), key=len)
        if keys:
            key = keys[-1]
            answer = replies[key]
            if isinstance(answer, list):
                index = min(used.get(key, 0), len(answer) - 1)
                used[key] = used.get(key, 0) + 1
                return answer[index]
            return answer
        verb = text.split(" ")[0].strip().upper()
        if verb in ("EHLO", "HELO"):
            return ehlo if verb == "EHLO" else b"250 mx.local.test\r\n"
        if verb == "QUIT":
            return b"221 2.0.0 Bye\r\n"
        if verb == "DATA":
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        return b"250 2.0.0 Ok\r\n"

    def script(sock: socket.socket) -> None:
        used: dict[str, int] = {}
        sock.sendall(banner)
        while True:
            line = read_line(sock)
            if not line:
                return
            if heard is not None:
                heard.append(line.rstrip(b"\r\n"))
            answer = reply_for(line.rstrip(b"\r\n"), used)
            sock.sendall(answer)
            if answer.startswith(b"354"):
                while read_line(sock, 100_000) not in (b".\r\n", b""):
                    pass
                final = replies.get(".", b"250 2.0.0 Ok: queued as 4F2A1\r\n")
                sock.sendall(final if isinstance(final, bytes) else final[0])
            if line.upper().startswith(b"QUIT") or answer.startswith(b"421"):
                return

    return script
