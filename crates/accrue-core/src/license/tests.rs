//! Given/when/then over the license rules.

use super::*;
use crate::account::{decide as decide_account, evolve, Command, OpenAccount, UsageInput};
use crate::events::Plan;
use crate::period::BillingFrequency;
use rust_decimal_macros::dec;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn ctx(now: &str) -> Context {
    Context::at(at(now))
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

const T0: &str = "2026-01-15T00:00:00Z";

struct Given(AccountState);

impl Given {
    fn licensed(full: u32, viewer: u32) -> Given {
        let open = Command::Open(Box::new(OpenAccount {
            account_id: "acme".into(),
            name: "Acme".into(),
            serial_number: "ACR-1".into(),
            billing_email: "billing@acme.test".into(),
            email_language: "en".into(),
            address: None,
            currency: "USD".into(),
            billing_frequency: BillingFrequency::Monthly,
            anchor_day: None,
            plan: Plan {
                full_seats: full,
                full_seat_price: dec!(10.00),
                viewer_seats: viewer,
                viewer_seat_price: dec!(2.00),
                data_management: false,
                data_management_price: dec!(0),
            },
            base_credits: dec!(10),
            credit_limit: None,
            invoice_number: "INV-2026-000001".into(),
            tax: None,
        }));
        Given(AccountState::default()).and(open, T0).and(
            lic(LicenseCommand::IssueControlNumber {
                control_number: "CN-SECRET".into(),
            }),
            T0,
        )
    }
    fn when(&self, cmd: Command, now: &str) -> Result<Vec<AccountEvent>, DomainError> {
        decide_account(&self.0, cmd, &ctx(now))
    }
    fn and(self, cmd: Command, now: &str) -> Given {
        let evs = self.when(cmd, now).unwrap();
        Given(evs.iter().fold(self.0, evolve))
    }
    fn license(&self) -> &LicenseState {
        self.0.license.as_deref().unwrap()
    }
}

fn lic(c: LicenseCommand) -> Command {
    Command::License(c)
}

fn activate(server: &str, id: &str) -> Command {
    lic(LicenseCommand::Activate {
        control_number: "CN-SECRET".into(),
        server_id: server.into(),
        hostname: Some(format!("{server}.local")),
        activation_id: id.into(),
    })
}

fn term(end: Option<&str>, max: Option<u32>) -> Command {
    lic(LicenseCommand::SetTerm {
        term_end: end.map(date),
        max_activations: max,
    })
}

fn session(id: &str, user: &str, t: UserType) -> Session {
    Session {
        id: id.into(),
        user_name: user.into(),
        user_type: t,
        module: None,
        client: SessionClient::Web,
        last_accessed_at: at(T0),
    }
}

fn sessions(activation: &str, s: Vec<Session>) -> Command {
    lic(LicenseCommand::ReportSessions {
        activation_id: activation.into(),
        sessions: s,
    })
}

fn license_err(r: Result<Vec<AccountEvent>, DomainError>) -> &'static str {
    r.unwrap_err().reason()
}

#[test]
fn the_control_number_is_issued_once() {
    let g = Given::licensed(1, 1);
    let again = g
        .when(
            lic(LicenseCommand::IssueControlNumber {
                control_number: "OTHER".into(),
            }),
            T0,
        )
        .unwrap();
    assert!(again.is_empty());
    assert_eq!(&*g.license().control_number, "CN-SECRET");
    assert_eq!(g.license().max_activations, DEFAULT_MAX_ACTIVATIONS);
}

#[test]
fn a_wrong_control_number_is_refused_without_an_event() {
    let g = Given::licensed(1, 1);
    let r = g.when(
        lic(LicenseCommand::Activate {
            control_number: "CN-SECREX".into(),
            server_id: "a".into(),
            hostname: None,
            activation_id: "act-1".into(),
        }),
        T0,
    );
    assert_eq!(r, Err(DomainError::License(LicenseError::BadCredentials)));
}

#[test]
fn activations_beyond_the_maximum_are_refused_and_the_same_server_is_the_same_activation() {
    let g = Given::licensed(1, 1).and(activate("srv-a", "act-1"), T0);
    assert_eq!(g.license().active_count(), 1);
    assert!(g.when(activate("srv-a", "act-x"), T0).unwrap().is_empty());
    assert_eq!(
        license_err(g.when(activate("srv-b", "act-2"), T0)),
        "activation_limit_reached"
    );
    // Released, its slot is free for the new server.
    let g = g
        .and(
            lic(LicenseCommand::Release {
                activation: ActivationRef::ServerId("srv-a".into()),
                reason: ReleaseReason::Server,
            }),
            T0,
        )
        .and(activate("srv-b", "act-2"), T0);
    assert_eq!(g.license().active().next().unwrap().id, "act-2");
}

#[test]
fn reset_releases_every_activation() {
    let g = Given::licensed(1, 1)
        .and(term(None, Some(2)), T0)
        .and(activate("a", "1"), T0)
        .and(activate("b", "2"), T0)
        .and(lic(LicenseCommand::Reset), T0);
    assert_eq!(g.license().active_count(), 0);
    assert!(g.when(lic(LicenseCommand::Reset), T0).unwrap().is_empty());
}

#[test]
fn churn_beyond_three_times_the_maximum_in_a_day_is_refused() {
    let mut g = Given::licensed(1, 1);
    for i in 0..3 {
        g = g
            .and(activate(&format!("s{i}"), &format!("a{i}")), T0)
            .and(lic(LicenseCommand::Reset), T0);
    }
    assert_eq!(
        license_err(g.when(activate("s9", "a9"), "2026-01-15T12:00:00Z")),
        "activation_churn"
    );
    // A day later the window has moved on.
    assert_eq!(
        g.when(activate("s9", "a9"), "2026-01-16T00:00:01Z")
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_term_end_in_the_past_is_refused() {
    let g = Given::licensed(1, 1);
    assert_eq!(
        license_err(g.when(term(Some("2026-01-14"), None), T0)),
        "term_end_in_past"
    );
    assert_eq!(g.when(term(Some("2026-01-15"), None), T0).unwrap().len(), 1);
}

#[test]
fn the_license_expires_once_by_the_clock_and_usage_is_then_refused() {
    let g = Given::licensed(1, 1).and(term(Some("2026-01-20"), None), T0);
    assert_eq!(g.license().next_due(0), Some(at("2026-01-21T00:00:00Z")));
    assert!(g
        .when(
            lic(LicenseCommand::Tick {
                release_after_days: 0
            }),
            "2026-01-20T23:59:59Z"
        )
        .unwrap()
        .is_empty());
    let g = g.and(
        lic(LicenseCommand::Tick {
            release_after_days: 0,
        }),
        "2026-01-21T00:00:00Z",
    );
    assert!(g.license().expired);
    assert_eq!(g.license().status(), "expired");
    assert_eq!(g.license().next_due(0), None);
    assert!(g
        .when(
            lic(LicenseCommand::Tick {
                release_after_days: 0
            }),
            "2026-01-22T00:00:00Z"
        )
        .unwrap()
        .is_empty());
    let usage = Command::Consume(UsageInput {
        usage_id: "u1".into(),
        amount: dec!(1),
        occurred_at: at("2026-01-21T10:00:00Z"),
        product: None,
        feature: None,
        metadata: None,
    });
    assert_eq!(
        license_err(g.when(usage.clone(), "2026-01-21T10:00:00Z")),
        "license_expired"
    );
    // Extending reactivates it, with a new definition version.
    let before = g.license().definition_version;
    let g = g.and(term(Some("2026-06-30"), None), "2026-01-21T10:00:00Z");
    assert!(!g.license().expired);
    assert!(g.license().definition_version > before);
    assert!(g.when(usage, "2026-01-21T10:00:00Z").is_ok());
}

#[test]
fn no_fee_is_billed_after_the_term_end_and_a_last_partial_period_is_prorated() {
    // Periods start on the 15th; the term ends inside the next billing period.
    let g = Given::licensed(1, 0).and(term(Some("2026-02-28"), None), T0);
    let close = Command::ClosePeriod {
        invoice_number: "INV-2026-000002".into(),
    };
    let evs = g.when(close.clone(), "2026-02-15T00:00:00Z").unwrap();
    let AccountEvent::InvoiceIssued(inv) = &evs[1] else {
        panic!("{evs:?}")
    };
    // 14 of 28 days (Feb 15 .. Mar 1) of 10.00.
    assert_eq!(inv.total, dec!(5.00));
    let g = g.and(close, "2026-02-15T00:00:00Z").and(
        lic(LicenseCommand::Tick {
            release_after_days: 0,
        }),
        "2026-03-01T00:00:00Z",
    );
    let evs = g
        .when(
            Command::ClosePeriod {
                invoice_number: "INV-2026-000003".into(),
            },
            "2026-03-15T00:00:00Z",
        )
        .unwrap();
    assert!(
        !evs.iter()
            .any(|e| matches!(e, AccountEvent::InvoiceIssued(_))),
        "{evs:?}"
    );
}

#[test]
fn sessions_beyond_the_licensed_seats_are_refused_across_servers() {
    let g = Given::licensed(2, 1)
        .and(term(None, Some(2)), T0)
        .and(activate("a", "1"), T0)
        .and(activate("b", "2"), T0)
        .and(
            sessions(
                "1",
                vec![
                    session("s1", "ann", UserType::Full),
                    session("s2", "ann", UserType::Full),
                    session("s3", "bob", UserType::Full),
                ],
            ),
            T0,
        );
    // ann again on server b: still two full users.
    assert!(g
        .when(
            sessions("2", vec![session("s4", "ann", UserType::Full)]),
            T0
        )
        .is_ok());
    assert_eq!(
        license_err(g.when(
            sessions("2", vec![session("s5", "cid", UserType::Full)]),
            T0
        )),
        "seat_limit_exceeded"
    );
    // After 30 silent minutes server a's sessions no longer count.
    let later = "2026-01-15T00:30:00Z";
    assert!(g
        .when(
            sessions("2", vec![session("s5", "cid", UserType::Full)]),
            later
        )
        .is_ok());
    let s = summarize(g.license(), at(T0), None);
    assert_eq!((s.total, s.by_type[0]), (3, (3, 2)));
    assert_eq!(summarize(g.license(), at(later), None).total, 0);
}

#[test]
fn a_silent_activation_is_released_after_the_window() {
    let g = Given::licensed(1, 1).and(activate("a", "1"), T0).and(
        lic(LicenseCommand::Sync {
            activation_id: "1".into(),
            at: at("2026-01-16T00:00:00Z"),
        }),
        "2026-01-16T00:00:00Z",
    );
    assert_eq!(g.license().next_due(14), Some(at("2026-01-30T00:00:00Z")));
    let evs = g
        .when(
            lic(LicenseCommand::Tick {
                release_after_days: 14,
            }),
            "2026-01-30T00:00:00Z",
        )
        .unwrap();
    assert!(matches!(
        &evs[..],
        [AccountEvent::ActivationReleased(ActivationReleased {
            reason: ReleaseReason::Inactive,
            ..
        })]
    ));
}

#[test]
fn license_events_round_trip_through_the_codec() {
    let e = AccountEvent::SessionsReported(SessionsReported {
        activation_id: "1".into(),
        sessions: vec![session("s", "ann", UserType::SystemManager)],
        reported_at: at(T0),
    });
    let back = AccountEvent::decode(e.type_name(), 1, &e.encode_payload()).unwrap();
    assert_eq!(back, e);
}
