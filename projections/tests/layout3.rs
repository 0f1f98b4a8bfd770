//! Layout 3 (SPEC §14 item 5): figures a reader can check. Quantity × unit
//! price = amount (a proration shows its share of the period), one
//! AI-credit charge in cents for its period, amounts grouped the customer's
//! way, a right edge that is straight, the issuer's logo, and no AI-credit
//! period on an invoice without an AI line. Checked on the rendered PDF
//! with poppler's `pdftotext` (text and word boxes) and `qpdf --check`.

use std::process::Command;

use accrue_core::events::{DocumentLegal, InvoiceIssued, InvoiceLine, LineKind, Prorated};
use accrue_core::tax::{InvoiceTax, Issuer, TaxAmount, TaxTreatment};
use accrue_core::Period;
use rust_decimal::Decimal;

fn period(a: &str, b: &str) -> Period {
    Period {
        start: a.parse().unwrap(),
        end: b.parse().unwrap(),
    }
}

fn issuer(logo: Option<String>) -> Issuer {
    Issuer {
        legal_name: "Nordlicht Software GmbH".into(),
        address: vec!["Leopoldstraße 7".into(), "80802 München".into()],
        country: "DE".into(),
        tax_id: Some("DE123456789".into()),
        registration: None,
        payment_instructions: None,
        iban: None,
        email: None,
        logo_png: logo,
    }
}

fn line(
    kind: LineKind,
    d: &str,
    q: i64,
    p: i64,
    a: i64,
    prorated: Option<Prorated>,
) -> InvoiceLine {
    InvoiceLine {
        kind,
        description: d.into(),
        quantity: Decimal::from(q),
        unit_price: Decimal::new(p, 2),
        amount: Decimal::new(a, 2),
        prorated,
    }
}

fn invoice(layout: u32, language: &str, with_ai: bool, logo: Option<String>) -> InvoiceIssued {
    let mut lines = vec![
        line(
            LineKind::Proration,
            "Full seats 1 → 3, upgrade, prorated 16/31 days from 2026-01-30",
            2,
            4900,
            5058,
            Some(Prorated {
                remaining: 16,
                days: 31,
            }),
        ),
        line(
            LineKind::Subscription,
            "Full seats, 2026-02-15 – 2026-03-14",
            30,
            4900,
            147_000,
            None,
        ),
    ];
    if with_ai {
        lines.insert(
            0,
            InvoiceLine {
                kind: LineKind::AiCredits,
                description: "AI credits beyond base, 2026-01-15 – 2026-02-14 (used 11.750001)"
                    .into(),
                quantity: Decimal::ONE,
                unit_price: Decimal::new(11_750_001, 6),
                amount: Decimal::new(1175, 2),
                prorated: None,
            },
        );
    }
    let net: Decimal = lines.iter().map(|l| l.amount).sum();
    let tax = (net * Decimal::new(19, 2)).round_dp(2);
    InvoiceIssued {
        number: "INV-2026-000077".into(),
        issued_at: "2026-02-15T00:00:00Z".parse().unwrap(),
        due_date: "2026-03-01T00:00:00Z".parse().unwrap(),
        credit_period: Some(period("2026-01-15T00:00:00Z", "2026-02-15T00:00:00Z")),
        billing_period: Some(period("2026-02-15T00:00:00Z", "2026-03-15T00:00:00Z")),
        total: net + tax,
        lines,
        currency: "EUR".into(),
        customer_name: "Weber KG".into(),
        customer_address: Some("Hauptstraße 1\n10115 Berlin".into()),
        serial_number: "ACR-9".into(),
        legal: Some(Box::new(DocumentLegal {
            layout,
            language: language.into(),
            issuer: Some(issuer(logo)),
            tax: Some(InvoiceTax {
                treatment: TaxTreatment::Standard,
                country: "DE".into(),
                customer_tax_id: None,
                exempt_reason: None,
                net,
                rates: vec![TaxAmount {
                    rate: Decimal::from(19),
                    taxable: net,
                    amount: tax,
                }],
            }),
        })),
    }
}

fn poppler(args: &[&str], pdf: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("doc.pdf");
    std::fs::write(&path, pdf).unwrap();
    let out = Command::new("pdftotext")
        .args(args)
        .arg(&path)
        .arg("-")
        .output()
        .expect("pdftotext (poppler-utils) is installed");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// The right edges (pt) of the words in the amount column: figures whose
/// box ends right of the unit-price column.
fn amount_column_edges(pdf: &[u8]) -> Vec<f32> {
    poppler(&["-bbox"], pdf)
        .lines()
        .filter(|l| l.trim_start().starts_with("<word"))
        .filter_map(|l| {
            let x_max: f32 = l.split("xMax=\"").nth(1)?.split('"').next()?.parse().ok()?;
            let word = l.split('>').nth(1)?.split('<').next()?;
            // An amount ends in its decimals (`1.470,00`, `470,00` after a
            // French group space); the group before a space is not one.
            let b = word.as_bytes();
            let figure = b.len() >= 4
                && word
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == ',' || c == '.')
                && matches!(b[b.len() - 3], b',' | b'.');
            (figure && x_max > 500.0).then_some(x_max)
        })
        .collect()
}

#[test]
fn layout_3_prints_checkable_figures_in_the_customers_language() {
    let pdf = accrue_projections::pdf::render(&invoice(3, "de", true, None)).unwrap();
    let text = poppler(&["-layout"], &pdf);
    // The proration reads as its share of the period × quantity × price.
    assert!(text.contains("16/31 × 2"), "{text}");
    assert!(text.contains("anteilig 16/31 Tage ab 30.01.2026"), "{text}");
    assert!(text.contains("Vollnutzer-Plätze 1 → 3, Upgrade"), "{text}");
    // One AI-credit charge in cents for its period, no six-decimal price.
    assert!(
        text.contains("KI-Credits über das Basisguthaben hinaus"),
        "{text}"
    );
    assert!(
        !text.contains("11,750001") && !text.contains("11.750001"),
        "{text}"
    );
    assert!(!text.contains("used"), "{text}");
    // Thousands grouped the German way, in the lines and the total.
    assert!(text.contains("1.470,00"), "{text}");
    assert!(text.contains("EUR 1.823,47"), "{text}");
    assert!(text.contains("KI-Guthaben-Zeitraum"), "{text}");
    // Without an AI line, no AI-credit period.
    let pdf = accrue_projections::pdf::render(&invoice(3, "de", false, None)).unwrap();
    let text = poppler(&["-layout"], &pdf);
    assert!(!text.contains("KI-Guthaben-Zeitraum"), "{text}");
    assert!(text.contains("Abonnementzeitraum"), "{text}");
}

#[test]
fn layout_3_has_a_straight_right_edge_where_layout_2_was_ragged() {
    let right_pt = 190.0 / 25.4 * 72.0;
    for lang in ["de", "en", "ja", "fr"] {
        let edges = amount_column_edges(
            &accrue_projections::pdf::render(&invoice(3, lang, true, None)).unwrap(),
        );
        assert!(edges.len() >= 6, "{lang}: {edges:?}");
        for e in &edges {
            assert!(
                (e - right_pt).abs() < 0.3,
                "{lang}: {e} vs {right_pt}: {edges:?}"
            );
        }
    }
    // The same document in layout 2 (as issued before): the estimate of
    // its widths leaves the edge ragged — what this test would catch.
    let edges = amount_column_edges(
        &accrue_projections::pdf::render(&invoice(2, "de", true, None)).unwrap(),
    );
    let spread = edges.iter().cloned().fold(f32::MIN, f32::max)
        - edges.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1.0, "layout 2 was ragged: {edges:?}");
}

#[test]
fn the_issuers_logo_is_embedded_deterministically() {
    use base64::Engine as _;
    let png = accrue_projections::logo::encode_rgba(
        40,
        20,
        |x, y| {
            [
                (x * 6) as u8,
                (y * 12) as u8,
                180,
                if x < 2 { 0 } else { 255 },
            ]
        },
        1,
    );
    let logo = base64::engine::general_purpose::STANDARD.encode(png);
    let inv = invoice(3, "en", true, Some(logo));
    let one = accrue_projections::pdf::render(&inv).unwrap();
    let two = accrue_projections::pdf::render(&inv).unwrap();
    assert_eq!(one, two, "byte-identical re-render with a logo");
    let without = accrue_projections::pdf::render(&invoice(3, "en", true, None)).unwrap();
    let raw = String::from_utf8_lossy(&one);
    assert!(
        raw.contains("/Subtype /Image") || raw.contains("/Subtype/Image"),
        "an image XObject"
    );
    assert!(raw.contains("/SMask"), "its transparency kept");
    assert!(!String::from_utf8_lossy(&without).contains("/Subtype /Image"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logo.pdf");
    std::fs::write(&path, &one).unwrap();
    let out = Command::new("qpdf")
        .arg("--check")
        .arg(&path)
        .output()
        .expect("qpdf");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The text is still there and still extractable.
    assert!(poppler(&["-layout"], &one).contains("Nordlicht Software GmbH"));
}
