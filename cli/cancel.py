"""``smtpcheck cancel ID``: stop a check on the service, or delete an ended one."""

from __future__ import annotations

import argparse
import urllib.parse

from cli.client import http_call, raise_for_problem, service_of
from cli.errors import EXIT_OK, reported
from smtpcheck.config import Settings


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    base, api_key = service_of(args, settings)
    url = f"{base}/v1/checks/{urllib.parse.quote(args.check_id, safe='')}"

    def delete() -> int:
        status, _, payload = http_call("DELETE", url, api_key)
        if status == 202:
            print(f"check {args.check_id} canceled (a running check stops within a second)")
        elif status == 204:
            print(f"check {args.check_id} had ended: deleted")
        else:
            raise_for_problem(status, payload, f"canceling check {args.check_id}")
        return EXIT_OK

    return reported(delete)
