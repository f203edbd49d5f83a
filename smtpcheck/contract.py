"""The words of the contract (DESIGN.md) that API and workers both speak.

The API validates and documents with them; the workers produce them. Kept
in one place so a stage, outcome or probe can only change on purpose, with
openapi.yaml and the tests in the same commit.
"""

from __future__ import annotations

STAGES = ("connect", "banner", "ehlo", "tls", "auth", "mail", "rcpt", "data")

OUTCOMES = (
    "ok",
    "dns_error",
    "target_forbidden",
    "connect_refused",
    "connect_timeout",
    "network_unreachable",
    "banner_timeout",
    "service_unavailable",
    "connection_closed",
    "protocol_error",
    "ehlo_rejected",
    "starttls_unavailable",
    "tls_error",
    "tls_untrusted",
    "auth_unavailable",
    "auth_failed",
    "tls_required",
    "auth_required",
    "sender_rejected",
    "relay_denied",
    "recipient_rejected",
    "temporary_failure",
    "data_rejected",
    "timeout",
)

PROBES = ("open_relay", "starttls_required", "vrfy", "expn")

#: Finding severities, in the order a person reads them: failures first.
SEVERITIES = ("fail", "warning", "info", "pass")

#: A vantage point's name (a worker pool's, and the queue ``vantage:<name>``).
VANTAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
#: Not a vantage: a check with ``vantage: "all"`` runs at every vantage.
ALL_VANTAGES = "all"
