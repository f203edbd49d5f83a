"""Liveness and readiness probes; no API key needed."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> Response:
    """The process answers; touches nothing else."""
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz() -> Response:
    """Ready when Redis answers a PING; otherwise the store handler makes it a 503."""
    current_app.extensions["smtpcheck"].ping()
    return jsonify(status="ok")
