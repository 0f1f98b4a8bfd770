"""An HTTPS webhook receiver for tests/webhooks.rs: Python's http.server
behind the standard library's ssl module.

    python3 https_sink.py PORT OUTDIR CERTDIR

CERTDIR gets the throw-away test CA (`ca.pem`) and a server certificate for
127.0.0.1 and localhost signed by it, made by the SMTP sink's code
(tests/smtp_tls_sink.py) before the port opens. Every POST is answered 200
and kept in OUTDIR as one JSON file: `{"path", "headers", "body"}`, with the
body exactly as received.
"""

import http.server
import json
import os
import ssl
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smtp_tls_sink import make_certs  # noqa: E402


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        n = len(os.listdir(self.server.outdir))
        record = {
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8"),
        }
        tmp = os.path.join(self.server.outdir, f".{n:06}.json")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(self.server.outdir, f"{n:06}.json"))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    port, outdir, certdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.makedirs(outdir, exist_ok=True)
    make_certs(certdir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(certdir, "server.pem"), os.path.join(certdir, "server.key"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.outdir = outdir
    # A client that refuses the certificate fails the handshake in accept;
    # socketserver drops that connection (an OSError) and keeps serving.
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
