#!/usr/bin/env python3
"""Checks a running node's HTTP surface with independent tools.

Starts `threadline serve` (the development node) from the binary given as
the first argument in a fresh directory, sends it a message, then:

- validates the served OpenAPI document (/api/v1/openapi.json) with
  openapi-spec-validator (OpenAPI 3.1);
- parses /metrics with prometheus_client's parser for the format its
  Content-Type names (OpenMetrics), and checks every counter is one family
  and the build, HTTP and process series are there.

Exit 0 when every check passes.
"""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request

from openapi_spec_validator import validate
from prometheus_client.openmetrics import parser as om_parser


def main() -> int:
    binary = os.path.abspath(sys.argv[1])
    with tempfile.TemporaryDirectory() as d:
        node = subprocess.Popen(
            [binary, "serve", "--http", "127.0.0.1:0"],
            cwd=d,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        try:
            base = None
            for line in node.stdout:
                if line.startswith("threadline listening on "):
                    base = line.split()[-1]
                    break
            assert base, "the node did not say where it listens"
            return check(base)
        finally:
            node.terminate()
            node.wait(timeout=30)


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


def check(base: str) -> int:
    body = json.dumps({
        "tenant": "demo", "channel": "sms", "from": "+15551234567",
        "to": "+15550000100", "text": "Hi, I need a cleaning next week",
    }).encode()
    req = urllib.request.Request(
        base + "/api/v1/inbound", data=body, method="POST",
        headers={"Authorization": "Bearer gw-demo",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 202, r.status

    ctype, text = get(base + "/api/v1/openapi.json")
    assert ctype.startswith("application/json"), ctype
    doc = json.loads(text)
    validate(doc)
    ops = sum(len(v) for v in doc["paths"].values())
    print(f"openapi: {doc['openapi']} valid, {len(doc['paths'])} paths, {ops} operations")

    ctype, text = get(base + "/metrics")
    assert ctype.startswith("application/openmetrics-text"), ctype
    families = list(om_parser.text_string_to_metric_families(text))
    names = [f.name for f in families]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"families split: {dupes}"
    counters = [f for f in families if f.type == "counter"]
    for f in counters:
        for s in f.samples:
            assert s.name in (f.name + "_total", f.name + "_created"), (f.name, s.name)
    for want in ["threadline_build", "threadline_http_requests",
                 "threadline_http_request_duration_seconds",
                 "process_cpu_seconds", "process_resident_memory_bytes",
                 "threadline_messages_ingested"]:
        assert want in names, f"{want} missing from /metrics"
    print(f"metrics: {len(families)} families ({len(counters)} counters), "
          "OpenMetrics parser, each counter one family")
    return 0


if __name__ == "__main__":
    sys.exit(main())
