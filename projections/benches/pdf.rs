//! Micro-benchmark of rendering one invoice PDF (font parsed once, outside).

use accrue_core::events::{InvoiceIssued, InvoiceLine, LineKind};
use accrue_core::Period;
use criterion::{criterion_group, criterion_main, Criterion};
use rust_decimal::Decimal;
use std::hint::black_box;

fn invoice() -> InvoiceIssued {
    let t = "2026-02-15T00:00:00Z".parse().unwrap();
    let period = Period {
        start: "2026-01-15T00:00:00Z".parse().unwrap(),
        end: t,
    };
    InvoiceIssued {
        number: "INV-2026-000042".into(),
        issued_at: t,
        due_date: "2026-03-01T00:00:00Z".parse().unwrap(),
        credit_period: Some(period),
        billing_period: Some(period),
        lines: vec![InvoiceLine {
            kind: LineKind::Subscription,
            description: "Full seats, 2026-02-15 – 2026-03-14".into(),
            quantity: Decimal::from(5),
            unit_price: Decimal::new(4900, 2),
            amount: Decimal::new(24500, 2),
            prorated: None,
        }],
        total: Decimal::new(24500, 2),
        currency: "USD".into(),
        customer_name: "株式会社さくらテック".into(),
        customer_address: Some("東京都渋谷区道玄坂1-2-3".into()),
        serial_number: "ACR-1".into(),
        legal: None,
    }
}

fn benches(c: &mut Criterion) {
    let inv = invoice();
    accrue_projections::pdf::render(&inv).unwrap();
    c.bench_function("render_invoice_pdf", |b| {
        b.iter(|| accrue_projections::pdf::render(black_box(&inv)).unwrap())
    });
}

criterion_group!(pdf, benches);
criterion_main!(pdf);
