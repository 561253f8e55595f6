"""`python -m tests.graph_standin [--grant OBJECT_ID TOKEN]...`: run the stand-in Graph API for a manual try.

Prints its URL (set INBOX_META_GRAPH_URL to it) and every request it receives; Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import json
import time

from tests.graph_standin.server import GraphStandin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grant", nargs=2, action="append", default=[], metavar=("OBJECT_ID", "TOKEN"),
                        help="let TOKEN read and send for OBJECT_ID (repeatable)")
    args = parser.parse_args()
    with GraphStandin() as standin:
        for object_id, token in args.grant:
            standin.grant(object_id, token, name=object_id, verified_name=object_id, display_phone_number="+1",
                          username=object_id)
        print(f"stand-in Graph API on {standin.url}  (export INBOX_META_GRAPH_URL={standin.url})", flush=True)
        seen = 0
        try:
            while True:
                requests = standin.requests
                for r in requests[seen:]:
                    print(f"{r.method} {r.path} {json.dumps(r.json) if r.json is not None else ''}", flush=True)
                seen = len(requests)
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
