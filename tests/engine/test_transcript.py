"""A transcript entry's JSON (what the worker publishes of each line) is
the standard encoder's, byte for byte."""

from __future__ import annotations

import json
import time

from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from smtpcheck.contract import check_request
from workers.engine import run_check
from workers.transcript import CLIENT, ERROR, NOTE, SERVER, Transcript, entry_json, listening

ENCODE = json.JSONEncoder(ensure_ascii=False).encode


@hypothesis_settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([NOTE, SERVER, CLIENT, ERROR]),
    st.text(max_size=1200),
    st.booleans(),
    st.floats(min_value=0, max_value=1e9, allow_nan=False),
)
def test_an_entry_is_encoded_as_json_encodes_it(direction, text, tls, seconds):
    transcript = Transcript(started=time.monotonic() - seconds / 1000)
    transcript.record(direction, text, tls=tls)
    transcript.record(direction, text)
    for entry in transcript.entries:
        assert entry_json(entry) == ENCODE(entry)
    (truncated,) = [e for e in Transcript(dropped=1).as_list() if e["dir"] == NOTE]
    assert entry_json(truncated) == ENCODE(truncated)


def test_the_entries_of_a_check_are_encoded_as_json_encodes_them(settings, smtp_target):
    heard: list[dict[str, object]] = []
    target = smtp_target(tls="starttls")
    request = check_request(settings, host="127.0.0.1", port=target.port, tls="starttls")
    with listening(heard.append):
        result = run_check(request, settings)
    assert result["ok"] is True, result["summary"]
    assert any(entry.get("tls") for entry in heard)
    assert [entry_json(entry) for entry in heard] == [ENCODE(entry) for entry in heard]
