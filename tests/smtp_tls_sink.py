"""An SMTP sink for tests/mail_tls.rs: aiosmtpd with TLS and AUTH.

    python3 smtp_tls_sink.py MODE PORT MAILDIR CERTDIR [USER PASSWORD [MECHANISM]]

MODE is `smtps` (TLS from the first byte), `starttls` (STARTTLS offered and
required before anything else) or `plain` (no TLS offered at all). With USER
and PASSWORD, AUTH is required before MAIL (over TLS in the TLS modes),
offering PLAIN and LOGIN, or only MECHANISM. CERTDIR gets a throw-away test CA (`ca.pem`) and a server
certificate for 127.0.0.1 and localhost signed by it, made on first use and
written before the port opens; a second CA (`other-ca.pem`) that signed
nothing is there for "wrong CA" cases.

Each accepted mail is stored in MAILDIR with headers saying how it came:
`X-Sink-Session` (the number of the SMTP session that carried it, to count
connection reuse), `X-Sink-Tls` (yes/no), `X-Sink-Auth` (mechanism and login, or -) and
`X-RcptTo`.
"""

import datetime
import ipaddress
import mailbox
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key_usage(**on):
    names = ["digital_signature", "content_commitment", "key_encipherment",
             "data_encipherment", "key_agreement", "key_cert_sign",
             "crl_sign", "encipher_only", "decipher_only"]
    return x509.KeyUsage(**{n: on.get(n, False) for n in names})


def _ca(name, now):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def make_certs(certdir):
    """A test CA and a server certificate it signed (idempotent)."""
    if os.path.exists(os.path.join(certdir, "server.key")):
        return
    os.makedirs(certdir, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ca = _ca("accrue test CA", now)
    _, other = _ca("accrue other test CA", now)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca.pem": _pem(ca),
        "other-ca.pem": _pem(other),
        "server.pem": _pem(cert),
        "server.key": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    }
    # server.key last: its presence says the set is complete.
    for name in ["ca.pem", "other-ca.pem", "server.pem", "server.key"]:
        tmp = os.path.join(certdir, "." + name)
        with open(tmp, "wb") as f:
            f.write(files[name])
        os.rename(tmp, os.path.join(certdir, name))


class Handler:
    def __init__(self, maildir):
        self.box = mailbox.Maildir(maildir)
        self.sessions = 0

    async def handle_DATA(self, server, session, envelope):
        if not hasattr(session, "sink_number"):
            self.sessions += 1
            session.sink_number = self.sessions
        tls = server.transport.get_extra_info("ssl_object") is not None
        login = (f"{session.sink_mechanism} {session.auth_data.login.decode()}"
                 if isinstance(session.auth_data, LoginPassword) else "-")
        head = (
            f"X-Sink-Session: {session.sink_number}\r\n"
            f"X-Sink-Tls: {'yes' if tls else 'no'}\r\n"
            f"X-Sink-Auth: {login}\r\n"
            f"X-RcptTo: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        self.box.add(head + envelope.original_content)
        return "250 OK"


def main():
    mode, port, maildir, certdir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    user, password = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else (None, None)
    only = sys.argv[7] if len(sys.argv) > 7 else None
    make_certs(certdir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(os.path.join(certdir, "server.pem"), os.path.join(certdir, "server.key"))

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login == user.encode()
              and auth_data.password == password.encode())
        session.sink_mechanism = mechanism
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    kwargs = {}
    if user is not None:
        kwargs.update(authenticator=authenticator, auth_required=True)
        if only is not None:
            kwargs.update(auth_exclude_mechanism=[m for m in ("PLAIN", "LOGIN") if m != only])
    if mode == "smtps":
        # The whole session is TLS: aiosmtpd's auth_require_tls only knows STARTTLS.
        kwargs.update(ssl_context=ctx, auth_require_tls=False)
    elif mode == "starttls":
        kwargs.update(tls_context=ctx, require_starttls=True, auth_require_tls=True)
    elif mode == "plain":
        kwargs.update(auth_require_tls=False)
    else:
        sys.exit(f"unknown mode {mode!r}")
    controller = Controller(Handler(maildir), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
