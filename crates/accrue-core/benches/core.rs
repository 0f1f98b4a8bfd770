//! Micro-benchmarks of the hot path's pure parts: deciding a usage event,
//! folding it, and encoding/decoding its payload.

use accrue_core::events::Plan;
use accrue_core::{
    decide, AccountEvent, AccountState, BillingFrequency, Command, Context, OpenAccount, UsageInput,
};
use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use rust_decimal::Decimal;
use std::hint::black_box;

fn opened(now: DateTime<Utc>) -> AccountState {
    let open = Command::Open(Box::new(OpenAccount {
        account_id: "acme".into(),
        name: "Acme".into(),
        serial_number: "SN".into(),
        billing_email: "b@acme.test".into(),
        email_language: "en".into(),
        address: None,
        currency: "USD".into(),
        billing_frequency: BillingFrequency::Monthly,
        anchor_day: None,
        plan: Plan {
            full_seats: 5,
            full_seat_price: Decimal::new(4900, 2),
            viewer_seats: 0,
            viewer_seat_price: Decimal::ZERO,
            data_management: false,
            data_management_price: Decimal::ZERO,
        },
        base_credits: Decimal::new(1_000_000, 0),
        credit_limit: Some(Decimal::new(500, 0)),
        invoice_number: "INV-2026-000001".into(),
        tax: None,
    }));
    decide(&AccountState::default(), open, &Context::at(now))
        .unwrap()
        .iter()
        .fold(AccountState::default(), accrue_core::evolve)
}

fn usage(now: DateTime<Utc>) -> Command {
    Command::Consume(UsageInput {
        usage_id: "ev-123456".into(),
        amount: Decimal::new(125, 4),
        occurred_at: now,
        product: Some("chat".into()),
        feature: Some("summarize".into()),
        metadata: None,
    })
}

fn benches(c: &mut Criterion) {
    let now: DateTime<Utc> = "2026-01-15T00:00:00Z".parse().unwrap();
    let state = opened(now);
    let ctx = Context::at(now);
    c.bench_function("decide_consume", |b| {
        b.iter(|| decide(black_box(&state), usage(now), &ctx).unwrap())
    });
    let events = decide(&state, usage(now), &ctx).unwrap();
    c.bench_function("apply_consumed", |b| {
        b.iter_batched(
            || state.clone(),
            |mut s| s.apply(black_box(&events[0])),
            criterion::BatchSize::SmallInput,
        )
    });
    c.bench_function("encode_consumed", |b| {
        b.iter(|| black_box(&events[0]).encode_payload())
    });
    let payload = events[0].encode_payload();
    c.bench_function("decode_consumed", |b| {
        b.iter(|| AccountEvent::decode("CreditsConsumed", 1, black_box(&payload)).unwrap())
    });
}

criterion_group!(core, benches);
criterion_main!(core);
