//! Invoices as legal documents (SPEC §14), end to end through the real
//! binary: the issuer from `accrue.toml`, tax per account, the PDF in the
//! customer's language (checked with `pdftotext` and `qpdf --check`), the
//! embedded Factur-X XML (checked with the PyPI `factur-x` library), the
//! books (`tax_payable`), and an issuer changed later leaving issued
//! invoices alone.

mod common;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "legal-admin-token";

const CONFIG: &str = r#"
[issuer]
legal_name = "accrue Billing B.V."
address = "Keizersgracht 1; 1015 CJ Amsterdam; Netherlands"
country = "NL"
tax_id = "NL123456789B01"
registration = "KvK 12345678"
payment_instructions = "IBAN NL91 ABNA 0417 1643 00 · BIC ABNANL2A"
iban = "NL91ABNA0417164300"
email = "billing@accrue.example"

[tax_rates]
NL = "21"
DE = "19"
"US-CA" = "7.25"
JP = 10
"#;

struct Server {
    child: std::process::Child,
    base: String,
    client: reqwest::blocking::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(data: &std::path::Path, env: &[(&str, &str)]) -> Server {
        let (child, base, _log) = serve_binary_env(data, TOKEN, &[], env);
        Server {
            child,
            base,
            client: reqwest::blocking::Client::new(),
        }
    }
    fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Vec<u8>) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self
            .client
            .request(m, format!("{}{}", self.base, path))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.bytes().unwrap().to_vec())
    }
    fn json(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, bytes) = self.send(method, path, body);
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(status < 300, "{method} {path}: {status} {v}");
        v
    }
    fn bytes(&self, path: &str) -> Vec<u8> {
        let (status, bytes) = self.send("GET", path, None);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&bytes));
        bytes
    }
}

fn account(id: &str, lang: &str, name: &str, tax: Option<Value>) -> Value {
    let mut b = json!({
        "id": id,
        "name": name,
        "billing_email": format!("billing@{id}.test"),
        "email_language": lang,
        "address": "Hauptstraße 5\n10115 Berlin",
        "billing_frequency": "monthly",
        "plan": {
            "full_seats": 5, "full_seat_price": "246.90",
            "viewer_seats": 0, "viewer_seat_price": "0.00",
            "data_management": false, "data_management_price": "0.00"
        },
        "base_credits": "0.00"
    });
    if let Some(t) = tax {
        b["tax"] = t;
    }
    b
}

/// Runs tests/facturx_check.py (the PyPI `factur-x` library) on the PDF
/// and the served XML; returns what it read from the XML.
fn facturx(pdf: &[u8], xml: &[u8]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (p, mut x) = (dir.path().join("i.pdf"), dir.path().join("i.xml"));
    std::fs::write(&p, pdf).unwrap();
    if xml.is_empty() {
        x = "-".into();
    } else {
        std::fs::write(&x, xml).unwrap();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/facturx_check.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&p)
        .arg(&x)
        .output()
        .expect("python3 with `pip install factur-x`");
    assert!(
        out.status.success(),
        "factur-x refused it: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(xml)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    accrue_projections::pdf::sha256_hex(b)
}

/// The hash the PDF projector recorded, once it has rendered the invoice.
fn recorded_hash(s: &Server, number: &str) -> String {
    for _ in 0..400 {
        let inv = s.json("GET", &format!("/v1/invoices/{number}"), None);
        if let Some(h) = inv["pdf_sha256"].as_str() {
            return h.to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("{number}: no PDF hash recorded after 10 s");
}

fn number_of(s: &Server, account: &str) -> String {
    let list = s.json("GET", &format!("/v1/accounts/{account}/invoices"), None);
    list["invoices"][0]["number"].as_str().unwrap().to_string()
}

struct Checked {
    json: Value,
    text: String,
    pdf: Vec<u8>,
    fx: Value,
}

/// One invoice through JSON, PDF text and XML: all three agree to the cent.
fn check(s: &Server, number: &str, amount_in_pdf: &str) -> Checked {
    let json = s.json("GET", &format!("/v1/invoices/{number}"), None);
    let pdf = s.bytes(&format!("/v1/invoices/{number}/pdf"));
    let xml = s.bytes(&format!("/v1/invoices/{number}/xml"));
    let text = pdftotext(&pdf);
    let fx = facturx(&pdf, &xml);
    assert_eq!(fx["level"], "en16931");
    assert_eq!(fx["xsd"], "passed");
    // The EN 16931 Schematron of factur-x, run by saxonche (.ci/run
    // installs it; without it the script says "not run").
    assert_eq!(fx["schematron"], "passed", "{fx}");
    let tax: rust_decimal::Decimal = json["tax"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["amount"]
                .as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(fx["net"], json["net"], "{json}");
    assert_eq!(fx["tax"].as_str().unwrap(), format!("{tax:.2}"));
    assert_eq!(fx["gross"], json["total"]);
    assert!(
        text.contains(amount_in_pdf),
        "{amount_in_pdf} not in the PDF:\n{text}"
    );
    // Re-rendering gives the bytes whose hash was recorded at issue.
    assert_eq!(pdf, s.bytes(&format!("/v1/invoices/{number}/pdf")));
    assert_eq!(sha256_hex(&pdf), recorded_hash(s, number));
    Checked {
        json,
        text,
        pdf,
        fx,
    }
}

#[test]
fn legal_invoices_carry_issuer_tax_language_and_a_valid_e_invoice() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("accrue.toml"), CONFIG).unwrap();
    let s = Server::start(dir.path(), &[]);

    // A German GmbH billed from the Netherlands: reverse charge, in German.
    s.json(
        "POST",
        "/v1/accounts",
        Some(account(
            "gmbh",
            "de",
            "Müller Maschinenbau GmbH",
            Some(json!({"country": "DE", "customer_tax_id": "DE123456789", "treatment": "reverse_charge"})),
        )),
    );
    let n = number_of(&s, "gmbh");
    let de = check(&s, &n, "USD 1.234,50");
    // 5 × 246.90 = 1234.50 net, no tax.
    assert_eq!(de.json["net"], "1234.50");
    assert_eq!(de.json["total"], "1234.50");
    assert_eq!(de.json["tax"][0]["amount"], "0.00");
    assert_eq!(de.json["tax_treatment"]["treatment"], "reverse_charge");
    assert_eq!(de.json["language"], "de");
    assert_eq!(de.fx["category"], "AE");
    for want in [
        "RECHNUNG",
        "Rechnungsempfänger",
        "Müller Maschinenbau GmbH",
        "USt-IdNr. des Kunden: DE123456789",
        "Steuerschuldnerschaft des Leistungsempfängers",
        "USD 1.234,50",
        "15.01.2026",
        "accrue Billing B.V.",
        "Keizersgracht 1",
        "USt-IdNr.: NL123456789B01",
        "KvK 12345678",
        "IBAN NL91 ABNA 0417 1643 00",
    ] {
        assert!(de.text.contains(want), "{want:?} not in:\n{}", de.text);
    }
    assert!(!de.text.contains("1,234.50"), "{}", de.text);
    assert!(!de.text.contains("accrue Billing Ltd."), "{}", de.text);
    let _ = de.pdf;

    // A Californian customer: the state's 7.25 %, in English.
    s.json(
        "POST",
        "/v1/accounts",
        Some(account(
            "calif",
            "en",
            "Sunset Labs Inc.",
            Some(json!({"country": "US-CA", "treatment": "standard"})),
        )),
    );
    let n = number_of(&s, "calif");
    let us = check(&s, &n, "USD 1,324.00");
    // 1234.50 × 7.25 % = 89.50125 → 89.50; gross 1324.00.
    assert_eq!(us.json["tax"][0]["rate"], "7.25");
    assert_eq!(us.json["tax"][0]["amount"], "89.50");
    assert_eq!(us.json["total"], "1324.00");
    assert_eq!(us.fx["category"], "S");
    for want in [
        "INVOICE",
        "Net amount",
        "VAT 7.25 %",
        "USD 89.50",
        "USD 1,324.00",
        "15 Jan 2026",
    ] {
        assert!(us.text.contains(want), "{want:?} not in:\n{}", us.text);
    }

    // An exempt French charity, in French.
    s.json(
        "POST",
        "/v1/accounts",
        Some(account(
            "charity",
            "fr",
            "Les Amis du Code",
            Some(json!({"country": "FR", "treatment": "exempt", "exempt_reason": "Article 261-7-1° du CGI"})),
        )),
    );
    let n = number_of(&s, "charity");
    let fr = check(&s, &n, "USD 1 234,50");
    assert_eq!(fr.json["total"], "1234.50");
    assert_eq!(fr.fx["category"], "E");
    for want in [
        "FACTURE",
        "Exonération de TVA : Article 261-7-1° du CGI",
        "15/01/2026",
    ] {
        assert!(fr.text.contains(want), "{want:?} not in:\n{}", fr.text);
    }

    // A Japanese customer: consumption tax 10 %, Japanese labels.
    s.json(
        "POST",
        "/v1/accounts",
        Some(account(
            "tokyo",
            "ja",
            "株式会社さくらテック",
            Some(json!({"country": "JP", "treatment": "standard"})),
        )),
    );
    let n = number_of(&s, "tokyo");
    let ja = check(&s, &n, "USD 1,357.95");
    assert_eq!(ja.json["tax"][0]["amount"], "123.45");
    for want in [
        "請求書",
        "株式会社さくらテック",
        "合計",
        "消費税等 10%",
        "2026年1月15日",
        "請求先",
    ] {
        assert!(ja.text.contains(want), "{want:?} not in:\n{}", ja.text);
    }

    // Without tax facts an invoice is still in the customer's language,
    // but carries no e-invoice (EN 16931 needs the buyer's country).
    s.json(
        "POST",
        "/v1/accounts",
        Some(account("plain", "es", "Plain S.L.", None)),
    );
    let n = number_of(&s, "plain");
    let text = pdftotext(&s.bytes(&format!("/v1/invoices/{n}/pdf")));
    assert!(
        text.contains("FACTURA") && text.contains("USD 1.234,50"),
        "{text}"
    );
    let (status, _) = s.send("GET", &format!("/v1/invoices/{n}/xml"), None);
    assert_eq!(status, 404);

    // The books: tax_payable holds what was invoiced in tax.
    let tb = s.json("GET", "/v1/audit/trial-balance", None);
    let row = tb
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_array())
        .flatten()
        .find(|r| r["account"] == "tax_payable")
        .cloned()
        .unwrap_or_else(|| panic!("no tax_payable in {tb}"));
    assert_eq!(row["credits"], "212.95", "89.50 + 123.45: {row}");
    assert_eq!(tb["balanced"], true, "{tb}");

    // A credit note carries its invoice's rate: 100.00 net + 7.25 % = 107.25.
    let calif = number_of(&s, "calif");
    let cn = s.json(
        "POST",
        &format!("/v1/invoices/{calif}/credit-notes"),
        Some(json!({"reason": "goodwill", "lines": [{"description": "Goodwill", "amount": "100.00"}]})),
    );
    assert_eq!(cn["total"], "107.25", "{cn}");
    assert_eq!(cn["net"], "100.00", "{cn}");
    assert_eq!(cn["tax"][0]["amount"], "7.25", "{cn}");
    // Its PDF carries its own e-invoice (type 381), valid as well.
    let cn_number = cn["number"].as_str().unwrap();
    let cn_pdf = s.bytes(&format!("/v1/credit-notes/{cn_number}/pdf"));
    let cn_fx = facturx(&cn_pdf, b"");
    assert_eq!(
        (cn_fx["gross"].as_str(), cn_fx["tax"].as_str()),
        (Some("107.25"), Some("7.25"))
    );
    assert!(pdftotext(&cn_pdf).contains("VAT 7.25 %"));
    let tb = s.json("GET", "/v1/audit/trial-balance", None);
    let text = tb.to_string();
    let tax_row = tb
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_array())
        .flatten()
        .find(|r| r["account"] == "tax_payable")
        .cloned()
        .unwrap();
    // 89.50 + 123.45 invoiced − 7.25 credited.
    assert_eq!(tax_row["balance"], "-205.70", "{text}");
    let inv = s.json("GET", &format!("/v1/invoices/{calif}"), None);
    assert_eq!(inv["amount_due"], "1216.75");

    // The XML of an invoice that does not exist is a 404 problem.
    let (status, _) = s.send("GET", "/v1/invoices/INV-2026-999999/xml", None);
    assert_eq!(status, 404);
    drop(s);
    drop_test_store(dir.path());
}

#[test]
fn an_issuer_changed_later_leaves_issued_invoices_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("accrue.toml"), CONFIG).unwrap();
    let s = Server::start(dir.path(), &[]);
    s.json(
        "POST",
        "/v1/accounts",
        Some(account("acme", "en", "Acme Ltd.", None)),
    );
    let first = number_of(&s, "acme");
    let pdf = s.bytes(&format!("/v1/invoices/{first}/pdf"));
    let hash = recorded_hash(&s, &first);
    assert!(pdftotext(&pdf).contains("accrue Billing B.V."));
    drop(s);

    // The environment overrides the file: a new name from now on.
    let s = Server::start(
        dir.path(),
        &[("ACCRUE_ISSUER_LEGAL_NAME", "accrue Europe SE")],
    );
    let again = s.bytes(&format!("/v1/invoices/{first}/pdf"));
    assert_eq!(again, pdf, "an issued invoice never changes");
    assert_eq!(sha256_hex(&again), hash);
    let json = s.json("GET", &format!("/v1/invoices/{first}"), None);
    assert_eq!(json["issuer"]["legal_name"], "accrue Billing B.V.");

    // The tax treatment is settable later too, for the invoices to come.
    s.json(
        "PATCH",
        "/v1/accounts/acme",
        Some(json!({"tax": {"country": "NL", "treatment": "standard"}})),
    );
    let (status, body) = s.send(
        "PATCH",
        "/v1/accounts/acme",
        Some(json!({"tax": {"country": "NL", "treatment": "standard", "rate": "5"}})),
    );
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    let (status, body) = s.send(
        "PATCH",
        "/v1/accounts/acme",
        Some(json!({"tax": {"country": "ES", "treatment": "standard"}})),
    );
    assert_eq!(
        status,
        422,
        "no rate for ES: {}",
        String::from_utf8_lossy(&body)
    );
    // The preview says what the close will issue, tax included.
    let up = s.json("GET", "/v1/accounts/acme/upcoming-invoice", None);
    assert_eq!(
        (up["net"].as_str(), up["total"].as_str()),
        (Some("1234.50"), Some("1493.75")),
        "{up}"
    );
    s.json(
        "POST",
        "/v1/clock",
        Some(json!({"now": "2026-02-15T00:00:00Z"})),
    );
    let second = number_of(&s, "acme");
    assert_ne!(second, first);
    let c = check(&s, &second, "accrue Europe SE");
    // 1234.50 + 21 % = 259.245 → 259.25; 1493.75.
    assert_eq!(c.json["tax"][0]["amount"], "259.25");
    assert_eq!(c.json["total"], "1493.75");
    assert!(c.text.contains("VAT 21 %"), "{}", c.text);
    // The first invoice still says what it said.
    assert_eq!(s.bytes(&format!("/v1/invoices/{first}/pdf")), pdf);
    drop(s);
    drop_test_store(dir.path());
}
