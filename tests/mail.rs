//! Mail through a real SMTP server (Python aiosmtpd, started by the test on
//! loopback) and the real binary: language, content, exactly-once effect.

mod common;
use common::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const TOKEN: &str = "mail-test-admin";

fn python() -> &'static str {
    common::python_with("aiosmtpd")
}

struct Smtp {
    child: Child,
    maildir: PathBuf,
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_smtp(port: u16, maildir: &Path) -> Smtp {
    let child = Command::new(python())
        .args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aiosmtpd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Smtp {
        child,
        maildir: maildir.to_path_buf(),
    }
}

fn mails(maildir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(maildir.join("new"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

struct Accrue {
    child: Child,
    base: String,
    client: reqwest::blocking::Client,
}

impl Drop for Accrue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_accrue(data: &Path, smtp_port: u16) -> Accrue {
    let smtp = format!("smtp://127.0.0.1:{smtp_port}");
    let (child, base) = common::serve_binary(data, TOKEN, &["--smtp", &smtp]);
    Accrue {
        child,
        base,
        client: reqwest::blocking::Client::new(),
    }
}

impl Accrue {
    fn call(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", self.base),
            )
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().unwrap_or(Value::Null))
    }

    fn metric(&self, name: &str) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Waits (bounded) until the mailer has handled every event so far.
    fn mailer_caught_up(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let head = self.metric("accrue_head_position");
            if self.metric("accrue_projector_checkpoint{name=\"mailer\"}") >= head {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn german_customer_with_failed_payment(&self) {
        let acct = json!({"id": "mueller", "name": "Müller & Söhne GmbH", "billing_email": "info@mueller.test", "email_language": "de",
                          "plan": {"full_seats": 2, "full_seat_price": "70.00"}});
        assert_eq!(self.call("POST", "/v1/accounts", acct).0, 201);
        let pm = json!({"billing_email": "rechnung@mueller.test", "email_language": "de", "token": "tok_1", "brand": "visa", "last4": "4242", "exp_month": 1, "exp_year": 2030});
        assert_eq!(
            self.call("PUT", "/v1/accounts/mueller/payment-method", pm)
                .0,
            200
        );
        let fail = json!({"invoice_number": "INV-2026-000001", "outcome": "failed", "reference": "ch_9", "failure_reason": "Karte abgelehnt"});
        assert_eq!(self.call("POST", "/v1/payments", fail.clone()).0, 200);
        // The processor retries the same outcome.
        assert_eq!(self.call("POST", "/v1/payments", fail).0, 200);
    }
}

fn count(mails: &[String], subject: &str) -> usize {
    mails.iter().filter(|m| m.contains(subject)).count()
}

#[test]
fn the_failure_alert_arrives_in_german_once_naming_the_invoice() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let smtp = start_smtp(port, &dir.path().join("maildir"));
    let a = start_accrue(&dir.path().join("data"), port);
    a.german_customer_with_failed_payment();
    assert!(a.mailer_caught_up(Duration::from_secs(60)));
    let all = mails(&smtp.maildir);
    assert_eq!(
        count(
            &all,
            "Subject: Zahlung fehlgeschlagen: Rechnung INV-2026-000001"
        ),
        1,
        "{all:#?}"
    );
    let alert = all
        .iter()
        .find(|m| m.contains("Zahlung fehlgeschlagen"))
        .unwrap();
    assert!(alert.contains("X-RcptTo: rechnung@mueller.test"), "{alert}");
    assert!(alert.contains("Content-Language: de"), "{alert}");
    assert!(
        alert.contains("USD 140.00"),
        "names the amount due: {alert}"
    );
    assert!(
        alert.contains("Karte abgelehnt"),
        "names the reason: {alert}"
    );
    // The opening invoice mail carries its PDF.
    let invoice = all
        .iter()
        .find(|m| m.contains("Subject: Ihre Rechnung INV-2026-000001"))
        .expect("invoice mail");
    assert!(
        invoice.contains("application/pdf") && invoice.contains("INV-2026-000001.pdf"),
        "{invoice}"
    );
}

#[test]
fn mail_waits_for_smtp_to_come_back_and_a_restart_sends_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let a = start_accrue(&data, port);
    a.german_customer_with_failed_payment();
    // Nothing listens yet: the mailer cannot get past the first mail.
    assert!(!a.mailer_caught_up(Duration::from_millis(700)));
    let smtp = start_smtp(port, &dir.path().join("maildir"));
    assert!(
        a.mailer_caught_up(Duration::from_secs(60)),
        "delivered once the server is back"
    );
    let first = mails(&smtp.maildir);
    assert_eq!(count(&first, "Zahlung fehlgeschlagen"), 1);
    assert_eq!(count(&first, "Subject: Ihre Rechnung"), 1);
    drop(a);
    let a = start_accrue(&data, port);
    assert!(a.mailer_caught_up(Duration::from_secs(60)));
    // One more event to be sure the restarted mailer is live and past the old ones.
    assert_eq!(
        a.call(
            "PUT",
            "/v1/accounts/mueller/credit-subscription",
            json!({"limit": "25.00"})
        )
        .0,
        200
    );
    assert!(a.mailer_caught_up(Duration::from_secs(60)));
    let after = mails(&smtp.maildir);
    assert_eq!(
        after.len(),
        first.len() + 1,
        "only the new subscription mail: {after:#?}"
    );
    assert_eq!(count(&after, "Zahlung fehlgeschlagen"), 1);
}

/// An SMTP server that refuses one address for good (550) and keeps the
/// rest in a maildir: aiosmtpd with a handler of its own.
fn start_bouncing_smtp(port: u16, maildir: &Path) -> Smtp {
    let script = r#"
import sys, time, mailbox
from aiosmtpd.controller import Controller
class Handler:
    def __init__(self, d):
        self.box = mailbox.Maildir(d)
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith('bounce@'):
            return '550 5.1.1 <%s>: mailbox unavailable' % address
        envelope.rcpt_tos.append(address)
        return '250 OK'
    async def handle_DATA(self, server, session, envelope):
        self.box.add(envelope.content)
        return '250 OK'
c = Controller(Handler(sys.argv[2]), hostname='127.0.0.1', port=int(sys.argv[1]))
c.start()
while True:
    time.sleep(1)
"#;
    let child = Command::new(python())
        .args(["-c", script, &port.to_string()])
        .arg(maildir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aiosmtpd");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "aiosmtpd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Smtp {
        child,
        maildir: maildir.to_path_buf(),
    }
}

#[test]
fn one_bouncing_address_never_holds_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let smtp = start_bouncing_smtp(port, &dir.path().join("maildir"));
    let a = start_accrue(&dir.path().join("data"), port);
    // The bouncing customer first: its invoice mail is the first in line.
    for (id, email) in [
        ("bouncy", "bounce@bouncy.test"),
        ("fine", "billing@fine.test"),
    ] {
        let acct = json!({"id": id, "name": id, "billing_email": email,
                          "plan": {"full_seats": 1, "full_seat_price": "10.00"}});
        assert_eq!(a.call("POST", "/v1/accounts", acct).0, 201);
    }
    assert!(
        a.mailer_caught_up(Duration::from_secs(30)),
        "the mailer is stuck behind the bounce"
    );
    let all = mails(&smtp.maildir);
    assert_eq!(
        count(&all, "<billing@fine.test>"),
        1,
        "the other customer's invoice mail went out"
    );
    assert_eq!(count(&all, "bounce@bouncy.test"), 0);
    assert_eq!(a.metric("accrue_mails_bounced_total"), 1);
    assert_eq!(
        a.metric("accrue_projector_lag_events{projector=\"mailer\"}"),
        0
    );
    // Support sees the bounce on the overview ...
    let (_, o) = a.call("GET", "/v1/accounts/bouncy", Value::Null);
    assert_eq!(o["mail_bounces"][0]["to"], "bounce@bouncy.test", "{o}");
    assert_eq!(o["mail_bounces"][0]["kind"], "invoice_issued", "{o}");
    assert_eq!(o["mail_bounces"][0]["resent"], false, "{o}");
    // ... and once the address is corrected, the mail goes out again, once.
    let (s, b) = a.call(
        "PATCH",
        "/v1/accounts/bouncy",
        json!({"billing_email": "billing@bouncy.test"}),
    );
    assert_eq!(s, 200, "{b}");
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while count(&mails(&smtp.maildir), "<billing@bouncy.test>") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the bounced mail was not resent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, o) = a.call("GET", "/v1/accounts/bouncy", Value::Null);
    assert_eq!(o["mail_bounces"][0]["resent"], true, "{o}");
    let (s, _) = a.call(
        "PATCH",
        "/v1/accounts/bouncy",
        json!({"name": "Bouncy GmbH"}),
    );
    assert_eq!(s, 200);
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        count(&mails(&smtp.maildir), "<billing@bouncy.test>"),
        1,
        "resent once"
    );
}

/// SPEC §8 end to end over real SMTP: a reminder per failure naming the
/// next retry and the suspension date, a suspension mail at day 14 with
/// usage refused, a reinstatement mail when paid, and nothing twice across
/// restarts in the middle.
#[test]
fn dunning_reminds_suspends_and_reinstates_once_each_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let smtp = start_smtp(port, &dir.path().join("maildir"));
    let data = dir.path().join("data");
    let a = start_accrue(&data, port);
    let acct = json!({"id": "late", "name": "Late Payer Ltd", "billing_email": "ap@late.test",
                      "email_language": "en", "credit_limit": "10.00",
                      "plan": {"full_seats": 1, "full_seat_price": "10.00"}});
    assert_eq!(a.call("POST", "/v1/accounts", acct).0, 201);
    let pay = |a: &Accrue, reference: &str, outcome: &str| {
        let body = json!({"invoice_number": "INV-2026-000001", "outcome": outcome, "reference": reference});
        let (s, b) = a.call("POST", "/v1/payments", body);
        assert_eq!(s, 200, "{b}");
    };
    let clock = |a: &Accrue, now: &str| {
        let (s, b) = a.call("POST", "/v1/clock", json!({ "now": now }));
        assert_eq!(s, 200, "{b}");
    };
    let usage = |a: &Accrue, id: &str| {
        let (_, b) = a.call(
            "POST",
            "/v1/usage",
            json!({"events": [{"id": id, "account_id": "late", "amount": "1.00"}]}),
        );
        b["results"][0].clone()
    };
    pay(&a, "ch_1", "failed");
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    let m = mails(&smtp.maildir);
    assert_eq!(
        count(&m, "Subject: Payment failed: invoice INV-2026-000001"),
        1
    );
    assert_eq!(count(&m, "retry the payment on 2026-01-16"), 1, "{m:#?}");
    assert_eq!(count(&m, "still unpaid on 2026-01-29"), 1);

    clock(&a, "2026-01-16T00:00:00Z");
    pay(&a, "ch_2", "failed");
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    assert_eq!(
        count(&mails(&smtp.maildir), "retry the payment on 2026-01-18"),
        1
    );
    drop(a);
    let a = start_accrue(&data, port);
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    assert_eq!(
        count(&mails(&smtp.maildir), "Subject: Payment failed"),
        2,
        "nothing sent twice after a restart"
    );

    clock(&a, "2026-01-29T00:00:00Z");
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    assert_eq!(
        count(&mails(&smtp.maildir), "Subject: Your license is suspended"),
        1
    );
    assert_eq!(usage(&a, "u1")["reason"], "license_suspended");

    pay(&a, "ch_3", "succeeded");
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    assert_eq!(usage(&a, "u2")["status"], "accepted");
    drop(a);
    let a = start_accrue(&data, port);
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    let m = mails(&smtp.maildir);
    assert_eq!(count(&m, "Subject: Your license is active again"), 1);
    assert_eq!(count(&m, "Subject: Your license is suspended"), 1);
    assert_eq!(count(&m, "Subject: Payment failed"), 2);
}

/// The decoded `text/plain` part of a raw message (quoted-printable or
/// base64, as lettre chose), so assertions see what the customer reads.
fn text_part(raw: &str) -> String {
    use base64::Engine as _;
    let lines: Vec<&str> = raw.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.eq_ignore_ascii_case("Content-Type: text/plain; charset=utf-8"))
        .expect("a text/plain part");
    let mut i = start;
    let mut encoding = String::new();
    while i < lines.len() && !lines[i].trim().is_empty() {
        if let Some(e) = lines[i].strip_prefix("Content-Transfer-Encoding: ") {
            encoding = e.trim().to_ascii_lowercase();
        }
        i += 1;
    }
    let body: Vec<&str> = lines[i + 1..]
        .iter()
        .take_while(|l| !l.starts_with("--=_"))
        .copied()
        .collect();
    let bytes = match encoding.as_str() {
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(body.concat().trim())
            .unwrap(),
        "quoted-printable" => {
            let joined = body.join("\n").replace("=\n", "");
            let b = joined.as_bytes();
            let mut out = Vec::new();
            let mut k = 0;
            while k < b.len() {
                if b[k] == b'=' && k + 2 < b.len() {
                    out.push(u8::from_str_radix(&joined[k + 1..k + 3], 16).unwrap());
                    k += 3;
                } else {
                    out.push(b[k]);
                    k += 1;
                }
            }
            out
        }
        _ => body.join("\n").into_bytes(),
    };
    String::from_utf8(bytes).unwrap().replace("\r\n", "\n")
}

fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
}

#[test]
fn the_failure_alert_reads_in_the_customers_language_and_is_signed_by_the_issuer() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let smtp = start_smtp(port, &dir.path().join("maildir"));
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    let (child, base, _log) = common::serve_binary_env(
        &dir.path().join("data"),
        TOKEN,
        &["--smtp", &smtp_url],
        &[
            ("ACCRUE_PUBLIC_URL", "https://billing.nordlicht.example/"),
            ("ACCRUE_ISSUER_LEGAL_NAME", "Nordlicht Software GmbH"),
            ("ACCRUE_ISSUER_COUNTRY", "DE"),
            (
                "ACCRUE_MAIL_FROM",
                "Nordlicht Billing <rechnung@nordlicht.example>",
            ),
        ],
    );
    let a = Accrue {
        child,
        base,
        client: reqwest::blocking::Client::new(),
    };
    let acct = json!({"id": "weber", "name": "Weber KG", "billing_email": "buchhaltung@weber.test", "email_language": "de",
                      "plan": {"full_seats": 20, "full_seat_price": "70.00"}});
    assert_eq!(a.call("POST", "/v1/accounts", acct).0, 201);
    let fail = json!({"invoice_number": "INV-2026-000001", "outcome": "failed", "reference": "ch_1", "failure_reason": "insufficient_funds"});
    assert_eq!(a.call("POST", "/v1/payments", fail).0, 200);
    assert!(a.mailer_caught_up(Duration::from_secs(60)));
    let all = mails(&smtp.maildir);
    let alert = all
        .iter()
        .find(|m| m.contains("Subject: Zahlung fehlgeschlagen"))
        .expect("the failure alert");
    let text = text_part(alert);
    // The amount as a German reader writes it; the plain one in a header.
    assert!(text.contains("USD 1.400,00"), "{text}");
    assert_eq!(header(alert, "X-Accrue-Amount"), Some("USD 1400.00"));
    // The processor's code as a sentence in German, the code kept.
    assert!(
        text.contains("Die Karte ist nicht ausreichend gedeckt. (insufficient_funds)"),
        "{text}"
    );
    // Where to update the payment method: the customer's own page.
    assert!(
        text.contains("https://billing.nordlicht.example/#account=weber"),
        "{text}"
    );
    // Signed by the issuer, not by the built-in team name.
    assert!(
        text.contains("Mit freundlichen Grüßen\nNordlicht Software GmbH"),
        "{text}"
    );
    assert!(!text.contains("accrue-Abrechnungsteam"), "{text}");
    // The customer's name in `To:`, a Message-ID under the sender's domain.
    assert_eq!(
        header(alert, "To"),
        Some("\"Weber KG\" <buchhaltung@weber.test>")
    );
    let id = header(alert, "Message-ID").expect("a Message-ID");
    assert!(id.ends_with("@nordlicht.example>"), "{id}");
    // The invoice mail is signed the same way and its amount localized.
    let invoice = all
        .iter()
        .find(|m| m.contains("Subject: Ihre Rechnung INV-2026-000001"))
        .expect("the invoice mail");
    let text = text_part(invoice);
    assert!(text.contains("USD 1.400,00"), "{text}");
    assert!(text.contains("Nordlicht Software GmbH"), "{text}");
}
