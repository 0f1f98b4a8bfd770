"""Sends usage to accrue with OpenMeter's own Python client (PyPI
`openmeter`, its `events.ingest_event` / `ingest_events`), as a product
already metering with OpenMeter would, for tests/integrations.rs.
Arguments: endpoint, token, account. Prints one line per call: ok or the
error's class and HTTP status."""

import datetime
import sys

from openmeter import Client
from openmeter._generated.models._models import Event

endpoint, token, account = sys.argv[1:4]
client = Client(endpoint=endpoint, headers={"Authorization": f"Bearer {token}"})
at = datetime.datetime(2026, 1, 15, tzinfo=datetime.timezone.utc)


def event(i, amount):
    return Event(id=f"om-{i}", source="my-product", specversion="1.0", type="chat",
                 subject=account, time=at, data={"amount": amount})


def call(what, f):
    try:
        f()
        print(f"{what} ok")
    except Exception as e:  # the SDK raises on any non-2xx answer
        status = getattr(getattr(e, "response", None), "status_code", "?")
        print(f"{what} {type(e).__name__} {status}")


call("one", lambda: client.events.ingest_event(event(1, "1.25")))
call("batch", lambda: client.events.ingest_events([event(2, "0.50"), event(3, "0.25")]))
call("retry", lambda: client.events.ingest_event(event(1, "1.25")))
call("over", lambda: client.events.ingest_event(event(4, "999.00")))
