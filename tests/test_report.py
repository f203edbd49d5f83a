"""The text form of a result, as support staff read it."""

from smtpcheck.report import render_text

RESULT = {
    "ok": False,
    "outcome": "relay_denied",
    "stage": "rcpt",
    "summary": "The server refuses to relay to <x@example.com> (554 5.7.1 ...)",
    "target": {"host": "mx.example.com", "port": 25, "address": "192.0.2.1"},
    "transcript": [
        {"t_ms": 0.1, "dir": "note", "text": "connecting to 192.0.2.1:25"},
        {"t_ms": 20.5, "dir": "server", "text": "220 mx.example.com ESMTP"},
        {"t_ms": 20.7, "dir": "client", "text": "EHLO checker.test"},
        {"t_ms": 30.0, "dir": "client", "text": "AUTH PLAIN ****", "tls": True},
        {"t_ms": 31.0, "dir": "server", "text": "235 ok", "tls": True},
        {"t_ms": 40.0, "dir": "error", "text": "relay_denied: x"},
        {"t_ms": 41.0, "dir": "note", "text": "line one\nline two"},
    ],
    "findings": [
        {"severity": "pass", "code": "banner_ok", "message": "greets"},
        {"severity": "fail", "code": "open_relay", "message": "relays"},
        {"severity": "warning", "code": "ptr_missing", "message": "no PTR"},
    ],
    "mx": {
        "domain": "example.com",
        "hosts": [{"preference": 10, "host": "mx.example.com", "implicit": False}],
    },
    "hosts": [{"target": {"host": "mx.example.com"}, "outcome": "relay_denied"}],
    "timings": {"connect": 12.0, "total": 41.2},
}


def test_markers_times_and_verdict():
    text = render_text(RESULT)
    lines = text.splitlines()
    assert lines[0] == "      0.1ms === connecting to 192.0.2.1:25"
    assert lines[1] == "     20.5ms <- 220 mx.example.com ESMTP"
    assert lines[2] == "     20.7ms -> EHLO checker.test"
    assert lines[3] == "     30.0ms ~> AUTH PLAIN ****"
    assert lines[4] == "     31.0ms <~ 235 ok"
    assert lines[5] == "     40.0ms *** relay_denied: x"
    assert lines[7] == "            === line two"  # continuation lines keep the marker
    assert "FAIL  relay_denied at stage rcpt  (mx.example.com [192.0.2.1]:25)" in text
    assert "TIME  connect 12ms, total 41ms" in text


def test_findings_block_lists_failures_first_and_mx_hosts():
    text = render_text(RESULT)
    block = text[text.index("Findings:") :].splitlines()
    assert block[0] == "Findings: 1 fail, 1 warning, 1 pass"
    assert block[1].startswith("  [FAIL] open_relay")
    assert block[2].startswith("  [WARN] ptr_missing")
    assert block[3].startswith("  [PASS] banner_ok")
    assert "MX    example.com: 1 host(s)" in text
    assert "   10 mx.example.com: relay_denied" in text


def test_an_ipv6_target_is_bracketed_in_the_verdict_line():
    result = {
        "ok": True,
        "outcome": "ok",
        "stage": "ehlo",
        "summary": "fine",
        "target": {"host": "::1", "port": 25, "address": "::1"},
        "transcript": [],
    }
    assert "([::1]:25)" in render_text(result)


def test_each_dane_status_reads_as_what_a_sender_would_do():
    from smtpcheck.report import policy_lines

    def host(name, status, reason):
        return {"host": name, "status": status, "reason": reason, "matched": None, "records": []}

    policy = {
        "mta_sts": {"record": None, "record_error": None, "policy": None},
        "tls_rpt": {"record": None, "error": None},
        "dane": {
            "dnssec": "validate",
            "mx_security": "insecure",
            "hosts": [
                host("a.example", "not_applicable", "the MX RRset of example is not signed"),
                host("b.example", "lookup_failed", "the TLSA answer does not validate"),
                host("c.example", "unverified", "DANE applies, but the check ended early"),
                host("d.example", "unusable", "none of the TLSA records is usable"),
            ],
        },
    }
    lines = policy_lines({"policy": policy})
    assert "DANE     a.example: not applicable: the MX RRset of example is not signed" in lines
    assert "DANE     b.example: LOOKUP FAILED: the TLSA answer does not validate" in lines
    assert "DANE     c.example: not verified: DANE applies, but the check ended early" in lines
    assert "DANE     d.example: no usable record: none of the TLSA records is usable" in lines
