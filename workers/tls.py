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
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DER = 2  # _ssl.ENCODING_DER


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


@functools.lru_cache(maxsize=8)
def trust_store(ca_file: str | None) -> verification.Store | None:
    """The system trust store, plus ``ca_file`` (SMTPCHECK_CA_FILE) when set."""
    pem = b""
    system = ssl.get_default_verify_paths().cafile
    for path in (system, ca_file):
        if path and Path(path).is_file():
            pem += Path(path).read_bytes() + b"\n"
    if not pem.strip():
        return None
    try:
        with warnings.catch_warnings():
            # Some roots in system bundles carry non-positive serial numbers.
            warnings.simplefilter("ignore")
            return verification.Store(x509.load_pem_x509_certificates(pem))
    except ValueError:
        return None


def _ee_policy() -> verification.ExtensionPolicy:
    """The leaf must name the server in a subjectAltName and, if it limits its
    key usage, allow serverAuth. Criticality is not judged: OpenSSL, and so
    the MTAs that will connect to this server, do not judge it either."""

    def server_auth(policy: Any, cert: x509.Certificate, eku: Any) -> None:
        if eku is not None and ExtendedKeyUsageOID.SERVER_AUTH not in eku:
            raise ValueError("extended key usage does not allow serverAuth")

    return (
        verification.ExtensionPolicy.permit_all()
        .require_present(x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None)
        .may_be_present(x509.ExtendedKeyUsage, verification.Criticality.AGNOSTIC, server_auth)
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


def verify(
    chain: list[x509.Certificate], name: str, ca_file: str | None, now: dt.datetime | None = None
) -> str | None:
    """``None`` when the chain is trusted and valid for ``name``, else why not."""
    if not chain:
        return "the server sent no certificate"
    store = trust_store(ca_file)
    if store is None:
        return "no trust store available on this worker"
    try:
        subject: verification.Subject = verification.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = verification.DNSName(name)
    now = now or dt.datetime.now(dt.UTC)
    leaf = chain[0]
    if leaf.not_valid_after_utc < now:
        return f"certificate expired on {_iso(leaf.not_valid_after_utc)}"
    if leaf.not_valid_before_utc > now:
        return f"certificate not valid before {_iso(leaf.not_valid_before_utc)}"
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(now)
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy()
        )
        .build_server_verifier(subject)
    )
    try:
        verifier.verify(leaf, chain[1:])
    except verification.VerificationError as exc:
        reason = str(exc).split(" (encountered processing")[0]
        if "no matching" in reason.lower() or ("subject" in reason.lower() and "match" in reason):
            return f"certificate is not valid for {name}: {reason}"
        if "candidates exhausted" in reason:
            reason = (
                "no chain leads to a trusted root (self-signed, private CA or missing intermediate)"
            )
        return f"certificate not trusted: {reason}"
    except ValueError as exc:  # malformed certificates
        return f"certificate cannot be verified: {exc}"
    return None


def session_facts(
    ssl_object: ssl.SSLSocket, verify_name: str, ca_file: str | None
) -> dict[str, Any]:
    """Version, cipher and certificate of an established TLS session."""
    cipher = ssl_object.cipher()
    facts: dict[str, Any] = {
        "established": True,
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        "bits": cipher[2] if cipher else None,
        "certificate": None,
        "chain_length": 0,
    }
    try:
        chain = peer_chain(ssl_object)
    except ValueError as exc:
        facts["verified"] = False
        facts["verify_error"] = f"certificate cannot be parsed: {exc}"
        return facts
    facts["chain_length"] = len(chain)
    if chain:
        facts["certificate"] = certificate_facts(chain[0])
    error = verify(chain, verify_name, ca_file)
    facts["verified"] = error is None
    facts["verify_error"] = error
    return facts
