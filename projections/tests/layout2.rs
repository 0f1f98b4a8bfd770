//! Layout 2 (documents issued with legal facts before layout 3) renders
//! byte for byte as it was issued: the SHA-256 of each document below was
//! taken from the renderer before layout 3 existed (commit 3b3161a), so a
//! change that moves one byte of a layout-2 document fails here.

use accrue_core::events::{
    CreditNoteIssued, CreditNoteLine, DocumentLegal, InvoiceIssued, InvoiceLine, LineKind,
};
use accrue_core::tax::{InvoiceTax, Issuer, TaxAmount, TaxTreatment};
use accrue_core::Period;
use rust_decimal::Decimal;

fn issuer() -> Issuer {
    Issuer {
        legal_name: "Nordlicht Software GmbH".into(),
        address: vec!["Leopoldstraße 7".into(), "80802 München".into()],
        country: "DE".into(),
        tax_id: Some("DE123456789".into()),
        registration: Some("Amtsgericht München HRB 12345".into()),
        payment_instructions: Some("IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX".into()),
        iban: Some("DE89370400440532013000".into()),
        email: Some("billing@nordlicht.example".into()),
        logo_png: None,
    }
}

fn tax(treatment: TaxTreatment, rate: &str, net: Decimal, amount: Decimal) -> InvoiceTax {
    InvoiceTax {
        treatment,
        country: "DE".into(),
        customer_tax_id: (treatment == TaxTreatment::ReverseCharge).then(|| "ATU12345678".into()),
        exempt_reason: (treatment == TaxTreatment::Exempt).then(|| "Art. 132 MwStSystRL".into()),
        net,
        rates: vec![TaxAmount {
            rate: rate.parse().unwrap(),
            taxable: net,
            amount,
        }],
    }
}

pub(crate) fn invoice(language: &str, treatment: TaxTreatment) -> InvoiceIssued {
    let start = "2026-01-15T00:00:00Z".parse().unwrap();
    let end = "2026-02-15T00:00:00Z".parse().unwrap();
    let lines = vec![
        InvoiceLine {
            kind: LineKind::AiCredits,
            description: "AI credits beyond base, 2026-01-15 – 2026-02-14 (used 1234.984375)"
                .into(),
            quantity: Decimal::ONE,
            unit_price: Decimal::new(1_234_984_375, 6),
            amount: Decimal::new(123_498, 2),
            prorated: None,
        },
        InvoiceLine {
            kind: LineKind::Subscription,
            description: "Full seats, 2026-02-15 – 2026-03-14".into(),
            quantity: Decimal::from(3),
            unit_price: Decimal::new(4900, 2),
            amount: Decimal::new(14700, 2),
            prorated: None,
        },
        InvoiceLine {
            kind: LineKind::Proration,
            description: "Full seats 1 → 3, upgrade, prorated 16/31 days from 2026-01-30".into(),
            quantity: Decimal::from(2),
            unit_price: Decimal::new(4900, 2),
            amount: Decimal::new(5058, 2),
            prorated: None,
        },
    ];
    let net: Decimal = lines.iter().map(|l| l.amount).sum();
    let (rate, amount) = match treatment {
        TaxTreatment::Standard => ("19", (net * Decimal::new(19, 2)).round_dp(2)),
        _ => ("0", Decimal::ZERO),
    };
    InvoiceIssued {
        number: "INV-2026-000042".into(),
        issued_at: start,
        due_date: end,
        credit_period: Some(Period { start, end }),
        billing_period: Some(Period { start, end }),
        total: net + amount,
        lines,
        currency: "EUR".into(),
        customer_name: "Müller & Söhne 株式会社".into(),
        customer_address: Some("Hauptstraße 1\n1010 Wien\nÖsterreich".into()),
        serial_number: "ACR-7".into(),
        legal: Some(Box::new(DocumentLegal {
            layout: 2,
            language: language.into(),
            issuer: Some(issuer()),
            tax: Some(tax(treatment, rate, net, amount)),
        })),
    }
}

fn credit_note(language: &str) -> CreditNoteIssued {
    let net = Decimal::new(1000, 2);
    CreditNoteIssued {
        number: "CN-2026-000003".into(),
        invoice_number: "INV-2026-000042".into(),
        issued_at: "2026-01-20T00:00:00Z".parse().unwrap(),
        reason: "goodwill".into(),
        lines: vec![CreditNoteLine {
            description: "Goodwill".into(),
            amount: net,
            usage_id: None,
        }],
        total: Decimal::new(1190, 2),
        currency: "EUR".into(),
        customer_name: "Müller GmbH".into(),
        customer_address: None,
        serial_number: "ACR-2".into(),
        legal: Some(Box::new(DocumentLegal {
            layout: 2,
            language: language.into(),
            issuer: Some(issuer()),
            tax: Some(tax(TaxTreatment::Standard, "19", net, Decimal::new(190, 2))),
        })),
    }
}

fn sha(pdf: &[u8]) -> String {
    accrue_projections::pdf::sha256_hex(pdf)
}

#[test]
fn layout_2_documents_render_to_the_hashes_they_were_issued_with() {
    let cases = [
        (
            "de",
            TaxTreatment::ReverseCharge,
            "60bed414aa0bd4b556d60dc2ea6dd57d7c6e5517a6c90c3122ac3cc17797142b",
        ),
        (
            "en",
            TaxTreatment::Standard,
            "d65a29bee2382b29ddbbbb57c24dbe5b89feda83951cc5f069d99e2e7e0f93dc",
        ),
        (
            "ja",
            TaxTreatment::Exempt,
            "70c6701abf91dbbacd6e6abf7d764033cfdde363df6b95ab55e31c732705eeab",
        ),
        (
            "fr",
            TaxTreatment::Standard,
            "d751ff69935490f47bd38b46c85be15f3fc732382ea6d9732512182fe6934435",
        ),
    ];
    let mut got = Vec::new();
    let mut want = Vec::new();
    for (lang, t, hash) in cases {
        let h = sha(&accrue_projections::pdf::render(&invoice(lang, t)).unwrap());
        got.push(format!("{lang} {t:?}: {h}"));
        want.push(format!("{lang} {t:?}: {hash}"));
    }
    let h = sha(&accrue_projections::pdf::render_credit_note(&credit_note("de")).unwrap());
    got.push(format!("credit note de: {h}"));
    want.push(
        "credit note de: d81a8df8c69a5021e73600e1a05fe2efe5180c0afc23bd3db072ee171dd3e7fb"
            .to_string(),
    );
    assert_eq!(got, want);
}
