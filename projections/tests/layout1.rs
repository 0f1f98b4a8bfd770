//! Layout 1 (documents issued before SPEC §14, without legal facts) renders
//! byte for byte as the renderer shipped before it did: their recorded
//! hashes must keep matching.

use accrue_core::events::{CreditNoteIssued, CreditNoteLine, InvoiceIssued, InvoiceLine, LineKind};
use accrue_core::Period;
use rust_decimal::Decimal;

/// The renderer as shipped before SPEC §14 (commit d02c816), frozen.
#[path = "layout1/renderer_before_legal.rs"]
#[allow(dead_code)]
mod old;

pub(crate) fn invoice(n: usize, address: bool) -> InvoiceIssued {
    let start = "2026-01-15T00:00:00Z".parse().unwrap();
    let end = "2026-02-15T00:00:00Z".parse().unwrap();
    let lines: Vec<InvoiceLine> = (0..n)
        .map(|i| InvoiceLine {
            kind: LineKind::Subscription,
            description: format!(
                "Full seats, 2026-02-15 – 2026-03-14, line {i} with Müller 株式会社"
            ),
            quantity: Decimal::from(i as u32 + 1),
            unit_price: Decimal::new(19_984_375, 6),
            amount: Decimal::new(1999 * (i as i64 + 1), 2),
            prorated: None,
        })
        .collect();
    InvoiceIssued {
        number: format!("INV-2026-{n:06}"),
        issued_at: start,
        due_date: end,
        credit_period: Some(Period { start, end }),
        billing_period: Some(Period { start, end }),
        total: lines.iter().map(|l| l.amount).sum(),
        lines,
        currency: "USD".into(),
        customer_name: "株式会社さくらテック".into(),
        customer_address: address
            .then(|| "東京都渋谷区道玄坂1-2-3, Shibuya, Tokyo 150-0043, Japan".into()),
        serial_number: "ACR-1".into(),
        legal: None,
    }
}

pub(crate) fn credit_note() -> CreditNoteIssued {
    CreditNoteIssued {
        number: "CN-2026-000001".into(),
        invoice_number: "INV-2026-000001".into(),
        issued_at: "2026-01-20T00:00:00Z".parse().unwrap(),
        reason: "goodwill".into(),
        lines: vec![CreditNoteLine {
            description: "Goodwill".into(),
            amount: Decimal::new(1000, 2),
            usage_id: None,
        }],
        total: Decimal::new(1000, 2),
        currency: "USD".into(),
        customer_name: "Müller GmbH".into(),
        customer_address: None,
        serial_number: "ACR-2".into(),
        legal: None,
    }
}

#[test]
fn layout_1_is_byte_identical_to_the_renderer_before_legal_documents() {
    for (n, addr) in [(1, false), (4, true), (40, true)] {
        let inv = invoice(n, addr);
        assert_eq!(
            accrue_projections::pdf::render(&inv).unwrap(),
            old::render(&inv).unwrap(),
            "{n} lines"
        );
    }
    let cn = credit_note();
    assert_eq!(
        accrue_projections::pdf::render_credit_note(&cn).unwrap(),
        old::render_credit_note(&cn).unwrap()
    );
}
