"""``vantage: "all"``: one check fanned out to every vantage with live workers.

The caller gets one id. Behind it, a small record in Redis lists one
ordinary check (an RQ job) per vantage; reading the id reads them all and
puts their verdicts side by side, which answers "is port 25 blocked only
from here?" in one call.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.client import Pipeline
from rq.job import Job

from smtpcheck.contract import ALL_VANTAGES, FANOUT_PREFIX, NO_LIVE_VANTAGE
from smtpcheck.document import (
    ENDED_STATUSES,
    TERMINAL,
    StoredCheck,
    isoformat,
    links,
    public_status,
)
from smtpcheck.report import render_text

from . import held, listing
from .jobstore import JobStore, Prepared, fetch_commands, mask_secrets, reads
from .problems import Problem
from .ratelimit import Command
from .schemas import check_id_is_valid

ALL = ALL_VANTAGES


@dataclass
class FanOut:
    id: str
    owner: str
    created_at: str
    request: dict[str, Any]
    members: list[dict[str, str]]  # [{"vantage": ..., "id": <check id>}]


def prepare(store: JobStore, request: dict[str, Any], owner: str) -> tuple[FanOut, list[Prepared]]:
    """One check per vantage that has a live worker, made but not written (503 if none)."""
    live = [v["name"] for v in store.vantages() if v["workers"] > 0]
    if not live:
        raise Problem(
            503,
            "Service Unavailable",
            "no vantage has a live worker, so vantage 'all' has nowhere to run",
            type=NO_LIVE_VANTAGE,
        )
    prepared = [store.prepare({**request, "vantage": vantage}, owner) for vantage in live]
    fanout = FanOut(
        id=str(uuid.uuid4()),
        owner=owner,
        created_at=isoformat(datetime.now(UTC)) or "",
        request={**mask_secrets(request)[0], "vantage": ALL},
        members=[{"vantage": v, "id": p.id} for v, p in zip(live, prepared, strict=True)],
    )
    return fanout, prepared


def writes(store: JobStore, fanout: FanOut, prepared: list[Prepared]) -> list[Command]:
    """The commands that write the members and the fan-out's record (run by the
    admission script, with the members' counting)."""

    def record(pipe: Pipeline) -> None:
        pipe.set(
            FANOUT_PREFIX + fanout.id,
            json.dumps(
                {
                    "owner": fanout.owner,
                    "created_at": fanout.created_at,
                    "request": fanout.request,
                    "members": fanout.members,
                }
            ),
            ex=store.settings.result_ttl,
        )
        listing.stage(pipe, fanout.owner, fanout.id, store.settings.result_ttl)

    return store.writes(prepared, fanout.owner, listed=False, also=record)


def load(store: JobStore, check_id: str, owner: str) -> FanOut | None:
    """The fan-out behind ``check_id`` if ``owner`` made it; None if it is no fan-out."""
    return _parsed(check_id, owner, store.connection.get(FANOUT_PREFIX + check_id))


def find(
    store: JobStore, check_id: str, owner: str, ask: held.Ask | None = None
) -> FanOut | StoredCheck:
    """The fan-out or the check behind ``check_id``, if ``owner`` made it (else 404):
    the fan-out's record and the check's job read in one round trip, with ``ask``'s
    take of a hold for its answer, if any."""
    if not check_id_is_valid(check_id):
        return store.load(check_id, owner)  # 404
    commands = _reads(check_id)
    take = None
    if ask is not None:
        take = ask.command(Job.key_for(check_id), FANOUT_PREFIX + check_id, ENDED_STATUSES)
    if take is not None:
        commands.append(take)
    record, raw, latest, *taken = reads(store.connection, commands)
    if ask is not None and taken:
        ask.answer(taken[0])
    return _found(store, check_id, owner, record, raw, latest)


def find_many(
    store: JobStore, check_ids: list[str], owner: str
) -> list[FanOut | StoredCheck | None]:
    """:func:`find` of each of ``check_ids`` (None for one that is gone or not the
    owner's), all read in one round trip, and the running ones tested for a gone
    worker in one more."""
    valid = [check_id for check_id in check_ids if check_id_is_valid(check_id)]
    commands = [command for check_id in valid for command in _reads(check_id)]
    replies = iter(reads(store.connection, commands) if valid else [])
    read = {check_id: (next(replies), next(replies), next(replies)) for check_id in valid}
    found: list[FanOut | StoredCheck | None] = []
    for check_id in check_ids:
        try:
            record, raw, latest = read[check_id]
            spread = _parsed(check_id, owner, record)
            found.append(spread or store.owned(check_id, owner, raw, latest))
        except (KeyError, Problem):  # not an id, gone, or another key's
            found.append(None)
    reaped = iter(store.reap_each([job for job in found if isinstance(job, StoredCheck)]))
    return [next(reaped) if isinstance(job, StoredCheck) else job for job in found]


def _reads(check_id: str) -> list[Command]:
    """The reads of what ``check_id`` names: a fan-out's record, or a check."""
    return [("GET", FANOUT_PREFIX + check_id), *fetch_commands(check_id)]


def _found(
    store: JobStore, check_id: str, owner: str, record: Any, raw: Any, latest: Any
) -> FanOut | StoredCheck:
    spread = _parsed(check_id, owner, record)
    return spread if spread is not None else store.loaded(check_id, owner, raw, latest)


def _parsed(check_id: str, owner: str, raw: bytes | str | None) -> FanOut | None:
    if raw is None:
        return None
    data = json.loads(raw)
    if data.get("owner") != owner:
        return None
    return FanOut(check_id, owner, data["created_at"], data["request"], data["members"])


def jobs(store: JobStore, fanout: FanOut) -> list[tuple[str, StoredCheck | None]]:
    """Each member's vantage and check (None once expired or deleted), all read
    in one round trip (:func:`find_many`)."""
    members = fanout.members
    found = find_many(store, [member["id"] for member in members], fanout.owner)
    return [
        (member["vantage"], job if isinstance(job, StoredCheck) else None)
        for member, job in zip(members, found, strict=True)
    ]


def wait(store: JobStore, fanout: FanOut, seconds: int) -> None:
    """Hold until every member has ended or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    for _, job in jobs(store, fanout):
        left = deadline - time.monotonic()  # not whole seconds: ?wait=1 waits too
        if job is not None and left > 0:
            store.wait(job, left)


def describe(store: JobStore, fanout: FanOut) -> dict[str, Any]:
    """The GET body: one status, and every vantage's verdict side by side."""
    rows = []
    statuses = []
    for vantage, job in jobs(store, fanout):
        if job is None:
            rows.append({"vantage": vantage, "status": "failed", "error": "the check expired"})
            statuses.append("failed")
            continue
        body = store.describe(job)
        status = body["status"]
        statuses.append(status)
        row: dict[str, Any] = {"vantage": vantage, "id": job.id, "status": status}
        result: Mapping[str, Any] | None = body["result"]
        if result is not None:
            target = result.get("target") or {}
            row.update(
                ok=result.get("ok"),
                outcome=result.get("outcome"),
                stage=result.get("stage"),
                summary=result.get("summary"),
                address=target.get("address"),
                worker=result.get("worker"),
            )
        if body.get("error"):
            row["error"] = body["error"]
        rows.append(row)
    if all(s in TERMINAL for s in statuses):
        status = "finished"
    elif any(s in ("running", "retrying") or s in TERMINAL for s in statuses):
        status = "running"
    else:
        status = "queued"
    return {
        "id": fanout.id,
        "status": status,
        "vantage": ALL,
        "created_at": fanout.created_at,
        "started_at": None,
        "ended_at": None,
        "request": fanout.request,
        "result": _verdict(rows) if status == "finished" else None,
        "error": None,
        "vantages": rows,
        "links": links(fanout.id),
    }


def _verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    outcomes = {row["vantage"]: row.get("outcome") or "not run" for row in rows}
    ok = all(row.get("ok") for row in rows)
    failing = [row for row in rows if not row.get("ok")]
    if len(set(outcomes.values())) == 1:
        summary = f"Every vantage ({', '.join(outcomes)}) says {next(iter(outcomes.values()))}"
    else:
        said = "; ".join(f"{outcome} from {vantage}" for vantage, outcome in outcomes.items())
        summary = (
            f"The vantages disagree: {said}. The difference lies in the networks between "
            "them and the server (a blocked port, a blocklist, a route)"
        )
    return {
        "ok": ok,
        "outcome": "ok" if ok else (failing[0].get("outcome") or "timeout"),
        "summary": summary,
        "vantages": rows,
    }


def transcript(store: JobStore, fanout: FanOut) -> str | None:
    """Every vantage's transcript, one after the other; None until all ended."""
    parts = []
    for vantage, job in jobs(store, fanout):
        if job is None or public_status(job) not in TERMINAL:
            return None
        result = store.result(job)
        parts.append(f"=== vantage {vantage} " + "=" * max(0, 60 - len(vantage)))
        parts.append(render_text(result) if result else "*** the check failed to run\n")
    return "\n".join(parts)


def delete(store: JobStore, fanout: FanOut) -> bool:
    """Delete every member and the fan-out itself in one transaction, or nothing:
    False when a member has not ended (cancel the fan-out first)."""
    members = [job for _, job in jobs(store, fanout) if job is not None]
    return store.delete_all(
        members, also=(FANOUT_PREFIX + fanout.id,), unlist=(fanout.owner, fanout.id)
    )
