"""TLS for the checker: a context that completes a handshake with any
server, and the certificate facts, verified separately so that they are
reported whether or not the chain or the name checks out.

CPython's smtplib verifies nothing by default and says nothing about what it
saw; a diagnostic tool must connect anyway and then say exactly what is wrong.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import ssl
import warnings
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DER = 2  # _ssl.ENCODING_DER
#: A certificate this close to its end is reported (a warning, still verified).
EXPIRING_DAYS = 30
#: Problems that leave the certificate verified.
WARNINGS_ONLY = frozenset({"certificate_expiring"})


@functools.lru_cache(maxsize=1)
def client_context() -> ssl.SSLContext:
    """Handshake with anything, old servers included; verification is ours.

    One context per process: it holds no per-connection state.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 is deprecated: we report it
            context.minimum_version = ssl.TLSVersion.TLSv1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):  # pragma: no cover - depends on the OpenSSL build
        pass
    return context


@functools.lru_cache(maxsize=4)
def _store_certificates(ca_file: str | None) -> tuple[x509.Certificate, ...]:
    """The system trust store, plus ``ca_file`` (SMTPCHECK_CA_FILE) when set."""
    pem = b""
    system = ssl.get_default_verify_paths().cafile
    for path in (system, ca_file):
        if path and Path(path).is_file():
            pem += Path(path).read_bytes() + b"\n"
    if not pem.strip():
        return ()
    try:
        with warnings.catch_warnings():
            # Some roots in system bundles carry non-positive serial numbers.
            warnings.simplefilter("ignore")
            return tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        return ()


def trust_store(ca_file: str | None, extra_pem: str | None = None) -> verification.Store | None:
    """The system store and ``ca_file``, plus the request's own ``tls_ca``
    (PEM the API has already parsed once)."""
    roots = list(_store_certificates(ca_file))
    if extra_pem:
        roots += x509.load_pem_x509_certificates(extra_pem.encode("ascii"))
    return verification.Store(roots) if roots else None


def _ee_policy() -> verification.ExtensionPolicy:
    """The leaf may limit its key usage only to something that allows
    serverAuth. Its names are matched separately (:func:`name_problem`), so
    that an untrusted chain and a wrong name are both reported. Criticality
    is not judged: OpenSSL, and so the MTAs that will connect to this
    server, do not judge it either."""

    def server_auth(policy: Any, cert: x509.Certificate, eku: Any) -> None:
        if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH not in eku:
            raise ValueError("extended key usage does not allow serverAuth")

    return verification.ExtensionPolicy.permit_all().may_be_present(
        x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, server_auth
    )


def peer_chain(ssl_object: ssl.SSLSocket) -> list[x509.Certificate]:
    """The certificates the server sent, leaf first."""
    sslobj = getattr(ssl_object, "_sslobj", None)
    chain: list[x509.Certificate] = []
    getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is not None:
        for cert in getter() or []:
            chain.append(x509.load_der_x509_certificate(cert.public_bytes(_DER)))
    if not chain:
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            chain.append(x509.load_der_x509_certificate(der))
    return chain


def _name(name: x509.Name) -> str:
    return name.rfc4514_string()


def _common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else None


def _sans(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names = [f"DNS:{n}" for n in ext.value.get_values_for_type(x509.DNSName)]
    names += [f"IP:{ip}" for ip in ext.value.get_values_for_type(x509.IPAddress)]
    return names


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_facts(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "subject": _name(cert.subject),
        "common_name": _common_name(cert.subject),
        "sans": _sans(cert),
        "issuer": _name(cert.issuer),
        "not_before": _iso(cert.not_valid_before_utc),
        "not_after": _iso(cert.not_valid_after_utc),
        "serial": format(cert.serial_number, "x"),
        "sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
    }


def chain_facts(chain: list[x509.Certificate]) -> list[dict[str, Any]]:
    """Each certificate the server sent, leaf first, as DANE needs it
    (:mod:`workers.dane`): SHA-256 and SHA-512 of the certificate and of its
    SubjectPublicKeyInfo, and whether it is signed by the next one."""
    facts = []
    for index, cert in enumerate(chain):
        der = cert.public_bytes(serialization.Encoding.DER)
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        issued_by_next = False
        if index + 1 < len(chain):
            try:
                cert.verify_directly_issued_by(chain[index + 1])
                issued_by_next = True
            except (ValueError, TypeError, InvalidSignature):
                issued_by_next = False
        facts.append(
            {
                "subject": _name(cert.subject),
                "issuer": _name(cert.issuer),
                "cert_sha256": hashlib.sha256(der).hexdigest(),
                "cert_sha512": hashlib.sha512(der).hexdigest(),
                "spki_sha256": hashlib.sha256(spki).hexdigest(),
                "spki_sha512": hashlib.sha512(spki).hexdigest(),
                "issued_by_next": issued_by_next,
            }
        )
    return facts


def _problem(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def name_matches(pattern: str, name: str) -> bool:
    """RFC 6125 DNS-ID matching: exact, or a wildcard as the whole leftmost label."""
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern == name:
        return True
    if not pattern.startswith("*."):
        return False
    head, _, parent = name.partition(".")
    return bool(head) and parent == pattern[2:] and "." in parent


def name_problem(leaf: x509.Certificate, name: str) -> str | None:
    """Why ``leaf`` is not valid for ``name`` (a host name or IP address), or None."""
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return f"certificate is not valid for {name}: it has no subjectAltName"
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if any(name_matches(dns, name) for dns in sans.get_values_for_type(x509.DNSName)):
            return None
    else:
        if address in sans.get_values_for_type(x509.IPAddress):
            return None
    listed = ", ".join(_sans(leaf)) or "none"
    return f"certificate is not valid for {name} (it names {listed})"


def _trust_problem(
    chain: list[x509.Certificate], store: verification.Store, now: dt.datetime
) -> str | None:
    """Why the chain does not lead to a trusted root, judged at a moment
    inside the leaf's validity, so that a date problem (reported on its own)
    does not hide an untrusted issuer."""
    leaf = chain[0]
    moment = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(moment)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy()
        )
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, chain[1:])
    except verification.VerificationError as exc:
        reason = str(exc).split(" (encountered processing")[0]
        if "candidates exhausted" in reason:
            reason = (
                "no chain leads to a trusted root (self-signed, private CA or missing intermediate)"
            )
        return f"certificate not trusted: {reason}"
    except ValueError as exc:  # malformed certificates
        return f"certificate cannot be verified: {exc}"
    return None


def certificate_problems(
    chain: list[x509.Certificate],
    name: str | None,
    store: verification.Store | None,
    now: dt.datetime | None = None,
) -> list[dict[str, str]]:
    """Every problem with the certificate at once, each ``{"code", "message"}``
    (the codes are finding codes): an untrusted chain, a name the certificate
    does not carry (``name`` None: not checked), expired, not yet valid, and
    expiring within :data:`EXPIRING_DAYS` (a warning; it does not make the
    certificate unverified)."""
    if not chain:
        return [_problem("certificate_missing", "the server sent no certificate")]
    now = now or dt.datetime.now(dt.UTC)
    leaf = chain[0]
    problems: list[dict[str, str]] = []
    if store is None:
        problems.append(
            _problem("certificate_untrusted", "no trust store available on this worker")
        )
    else:
        trust = _trust_problem(chain, store, now)
        if trust is not None:
            problems.append(_problem("certificate_untrusted", trust))
    if name is not None:
        mismatch = name_problem(leaf, name)
        if mismatch is not None:
            problems.append(_problem("certificate_name_mismatch", mismatch))
    not_after, not_before = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    if not_after < now:
        problems.append(
            _problem("certificate_expired", f"certificate expired on {_iso(not_after)}")
        )
    elif not_before > now:
        problems.append(
            _problem(
                "certificate_not_yet_valid", f"certificate not valid before {_iso(not_before)}"
            )
        )
    elif not_after - now < dt.timedelta(days=EXPIRING_DAYS):
        days = int((not_after - now).total_seconds() // 86400)
        problems.append(
            _problem(
                "certificate_expiring",
                f"certificate expires in {days} days ({_iso(not_after)})",
            )
        )
    return problems


def session_facts(
    ssl_object: ssl.SSLSocket,
    verify_name: str | None,
    ca_file: str | None,
    *,
    extra_ca: str | None = None,
) -> dict[str, Any]:
    """Version, cipher and certificate of an established TLS session, with
    every certificate problem found (``verify_name`` None: no name checked)."""
    cipher = ssl_object.cipher()
    facts: dict[str, Any] = {
        "established": True,
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        "bits": cipher[2] if cipher else None,
        "verify_name": verify_name,
        "certificate": None,
        "chain_length": 0,
    }
    try:
        chain = peer_chain(ssl_object)
    except ValueError as exc:
        problem = _problem("certificate_unparseable", f"certificate cannot be parsed: {exc}")
        facts.update(verified=False, verify_error=problem["message"], problems=[problem])
        return facts
    facts["chain_length"] = len(chain)
    facts["chain"] = chain_facts(chain)
    if chain:
        facts["certificate"] = certificate_facts(chain[0])
    problems = certificate_problems(chain, verify_name, trust_store(ca_file, extra_ca))
    failed = [p["message"] for p in problems if p["code"] not in WARNINGS_ONLY]
    facts["verified"] = not failed
    facts["verify_error"] = "; ".join(failed) or None
    facts["problems"] = problems
    return facts
