"""Encodes CloudEvents with the CloudEvents SDK (PyPI `cloudevents`) for
tests/integrations.rs: reads {"mode": "structured"|"binary"|"batch",
"events": [{"attributes": {...}, "data": {...}}]} on stdin, prints a JSON
list of {"headers": {...}, "body": "..."} messages as the SDK writes them."""

import json
import sys
from datetime import datetime

from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

spec = json.load(sys.stdin)
fmt = JSONFormat()
def attributes(a):
    a = dict(a)
    a.setdefault("specversion", "1.0")
    if "time" in a:
        a["time"] = datetime.fromisoformat(a["time"].replace("Z", "+00:00"))
    return a


events = [CloudEvent(attributes(e["attributes"]), e.get("data")) for e in spec["events"]]
out = []
if spec["mode"] == "batch":
    bodies = [json.loads(to_structured(e, fmt).body) for e in events]
    out.append({
        "headers": {"content-type": "application/cloudevents-batch+json"},
        "body": json.dumps(bodies),
    })
else:
    write = to_binary if spec["mode"] == "binary" else to_structured
    for e in events:
        m = write(e, fmt)
        out.append({"headers": dict(m.headers), "body": m.body.decode()})
print(json.dumps(out))
