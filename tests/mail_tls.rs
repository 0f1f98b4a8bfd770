//! Mail over TLS and AUTH to a real SMTP server (aiosmtpd, driven by
//! `tests/smtp_tls_sink.py`, with a test CA made at start) from the real
//! binary: `smtps://`, `?tls=required`, AUTH from the environment, an extra
//! CA from `ACCRUE_SMTP_CA_FILE`, one pooled session for many mails, and the
//! failures that must keep the mail (no STARTTLS, a wrong password, an
//! untrusted certificate). On SQLite, or PostgreSQL with
//! `ACCRUE_TEST_BACKEND=postgres`.

mod common;
use common::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

const TOKEN: &str = "mail-tls-test-admin";
const USER: &str = "billing-relay";
const PASSWORD: &str = "correct horse battery staple";
const WRONG_PASSWORD: &str = "Tr0ub4dor&3";

fn python() -> &'static str {
    common::python_with("aiosmtpd, cryptography")
}

struct Sink {
    child: Child,
    maildir: PathBuf,
    ca: PathBuf,
    other_ca: PathBuf,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the sink in `mode` (`smtps`, `starttls`, `plain`), requiring AUTH
/// as `USER`/`PASSWORD` when `auth` is `Some`: offering PLAIN and LOGIN
/// (`Some("")`), or only the one named.
fn start_sink(mode: &str, dir: &Path, auth: Option<&str>) -> (Sink, u16) {
    let port = free_port();
    let maildir = dir.join(format!("maildir-{mode}"));
    let certs = dir.join("certs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/smtp_tls_sink.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script)
        .args([mode, &port.to_string()])
        .arg(&maildir)
        .arg(&certs);
    match auth {
        None => {}
        Some("") => {
            cmd.args([USER, PASSWORD]);
        }
        Some(only) => {
            cmd.args([USER, PASSWORD, only]);
        }
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the SMTP sink");
    let sink = Sink {
        child,
        maildir,
        ca: certs.join("ca.pem"),
        other_ca: certs.join("other-ca.pem"),
    };
    // The certificates are written before the port opens.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the SMTP sink did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (sink, port)
}

impl Sink {
    fn mails(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(self.maildir.join("new"))
            .map(|d| {
                d.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

fn header<'a>(mail: &'a str, name: &str) -> &'a str {
    mail.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("no {name} header in {mail}"))
}

struct Accrue {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
    client: reqwest::blocking::Client,
}

impl Drop for Accrue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops the test's PostgreSQL schema once the test is over.
struct Store(PathBuf);

impl Drop for Store {
    fn drop(&mut self) {
        common::drop_test_store(&self.0);
    }
}

fn start_accrue(data: &Path, smtp: &str, env: &[(&str, &str)]) -> Accrue {
    let (child, base, log) = common::serve_binary_env(data, TOKEN, &["--smtp", smtp], env);
    Accrue {
        child,
        base,
        log,
        client: reqwest::blocking::Client::new(),
    }
}

impl Accrue {
    fn account(&self, id: &str) {
        let acct = json!({"id": id, "name": format!("{id} GmbH"), "billing_email": format!("billing@{id}.test"),
                          "plan": {"full_seats": 1, "full_seat_price": "10.00"}});
        let r = self
            .client
            .post(format!("{}/v1/accounts", self.base))
            .bearer_auth(TOKEN)
            .json(&acct)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text());
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

    /// Waits (bounded) until the log holds `needle`; returns the log.
    fn logged(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log.lock().unwrap().clone();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "the log never said {needle:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn smtps_with_auth_delivers_every_mail_over_one_pooled_session() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, port) = start_sink("smtps", dir.path(), Some(""));
    let data = dir.path().join("data");
    let _store = Store(data.clone());
    let a = start_accrue(
        &data,
        &format!("smtps://127.0.0.1:{port}"),
        &[
            ("ACCRUE_SMTP_USER", USER),
            ("ACCRUE_SMTP_PASSWORD", PASSWORD),
            ("ACCRUE_SMTP_CA_FILE", path(&sink.ca)),
        ],
    );
    const MAILS: usize = 5;
    for i in 0..MAILS {
        a.account(&format!("acct{i}"));
    }
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    let all = sink.mails();
    assert_eq!(all.len(), MAILS, "one opening-invoice mail each: {all:#?}");
    let mut sessions: Vec<&str> = all.iter().map(|m| header(m, "X-Sink-Session")).collect();
    sessions.sort();
    sessions.dedup();
    assert!(
        sessions.len() < MAILS,
        "the SMTP session is reused: {MAILS} mails over {} sessions",
        sessions.len()
    );
    for m in &all {
        assert_eq!(header(m, "X-Sink-Tls"), "yes");
        assert_eq!(header(m, "X-Sink-Auth"), format!("PLAIN {USER}"));
        // The ledger's (manual) clock, not the wall clock.
        assert_eq!(header(m, "Date"), "Thu, 15 Jan 2026 00:00:00 +0000");
    }
    let log = a.log.lock().unwrap().clone();
    assert!(!log.contains(PASSWORD), "the password is never logged");
}

#[test]
fn starttls_required_with_auth_login_delivers() {
    let dir = tempfile::tempdir().unwrap();
    // A relay that offers AUTH LOGIN only (and only after STARTTLS).
    let (sink, port) = start_sink("starttls", dir.path(), Some("LOGIN"));
    let data = dir.path().join("data");
    let _store = Store(data.clone());
    let a = start_accrue(
        &data,
        &format!("smtp://127.0.0.1:{port}?tls=required"),
        &[
            ("ACCRUE_SMTP_USER", USER),
            ("ACCRUE_SMTP_PASSWORD", PASSWORD),
            ("ACCRUE_SMTP_CA_FILE", path(&sink.ca)),
        ],
    );
    a.account("starttls");
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    let all = sink.mails();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(header(&all[0], "X-Sink-Tls"), "yes");
    assert_eq!(header(&all[0], "X-Sink-Auth"), format!("LOGIN {USER}"));
    assert_eq!(header(&all[0], "X-RcptTo"), "billing@starttls.test");
}

#[test]
fn tls_required_never_falls_back_to_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    // A server that offers no STARTTLS and takes any mail in clear text.
    let (sink, port) = start_sink("plain", dir.path(), None);
    let data = dir.path().join("data");
    let _store = Store(data.clone());
    let a = start_accrue(
        &data,
        &format!("smtp://127.0.0.1:{port}?tls=required"),
        &[("ACCRUE_SMTP_CA_FILE", path(&sink.ca))],
    );
    a.account("cleartext");
    a.logged("does not offer STARTTLS", Duration::from_secs(20));
    assert!(
        !a.mailer_caught_up(Duration::from_millis(300)),
        "the mail stays pending"
    );
    assert_eq!(sink.mails().len(), 0, "nothing went in clear text");
}

#[test]
fn a_wrong_password_is_reported_and_the_mail_goes_once_it_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, port) = start_sink("smtps", dir.path(), Some(""));
    let data = dir.path().join("data");
    let _store = Store(data.clone());
    let url = format!("smtps://127.0.0.1:{port}");
    let ca = path(&sink.ca).to_string();
    let a = start_accrue(
        &data,
        &url,
        &[
            ("ACCRUE_SMTP_USER", USER),
            ("ACCRUE_SMTP_PASSWORD", WRONG_PASSWORD),
            ("ACCRUE_SMTP_CA_FILE", &ca),
        ],
    );
    a.account("authfail");
    let log = a.logged("authentication failed", Duration::from_secs(20));
    assert!(log.contains("535"), "{log}");
    assert!(log.contains("ACCRUE_SMTP_PASSWORD"), "{log}");
    assert!(
        !log.contains(WRONG_PASSWORD),
        "no password in the log: {log}"
    );
    assert!(!log.contains("bounced"), "not recorded as a bounce: {log}");
    assert_eq!(a.metric("accrue_mails_bounced_total"), 0);
    assert!(!a.mailer_caught_up(Duration::from_millis(300)));
    assert_eq!(sink.mails().len(), 0);
    drop(a);
    // The operator fixes the password and restarts: the kept mail goes, once.
    let a = start_accrue(
        &data,
        &url,
        &[
            ("ACCRUE_SMTP_USER", USER),
            ("ACCRUE_SMTP_PASSWORD", PASSWORD),
            ("ACCRUE_SMTP_CA_FILE", &ca),
        ],
    );
    assert!(a.mailer_caught_up(Duration::from_secs(30)));
    let all = sink.mails();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(header(&all[0], "X-RcptTo"), "billing@authfail.test");
}

#[test]
fn an_untrusted_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (sink, port) = start_sink("smtps", dir.path(), None);
    let url = format!("smtps://127.0.0.1:{port}");
    // Without a CA file (Mozilla's roots only), then with the wrong CA.
    for (name, env) in [
        ("noca", vec![]),
        (
            "otherca",
            vec![("ACCRUE_SMTP_CA_FILE", path(&sink.other_ca))],
        ),
    ] {
        let data = dir.path().join(name);
        let _store = Store(data.clone());
        let a = start_accrue(&data, &url, &env);
        a.account(name);
        let log = a.logged("TLS with 127.0.0.1", Duration::from_secs(20));
        assert!(log.contains("ACCRUE_SMTP_CA_FILE"), "{log}");
        assert!(!a.mailer_caught_up(Duration::from_millis(300)));
        assert_eq!(sink.mails().len(), 0, "{name}");
    }
}
