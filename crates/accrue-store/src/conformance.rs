//! The conformance suite every backend runs. A backend's test module calls
//! [`conformance_suite!`](crate::conformance_suite) with a factory that opens
//! a fresh store in a given empty folder; each check below becomes a test.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use crate::hash::{recorded_hash, GENESIS};
use crate::{EventStore, ExpectedVersion, NewEvent, StoreError, StreamAppend};

pub fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + secs, 0).unwrap()
}

pub fn event(n: u64) -> NewEvent {
    NewEvent {
        type_name: "CreditsConsumed",
        schema: 1,
        occurred_at: t(n as i64),
        payload: format!("{{\"n\":{n}}}").into_bytes(),
    }
}

/// Appends `n` events to `stream` expecting `version`; panics on failure.
pub fn append_n(store: &dyn EventStore, stream: &str, version: u64, n: u64) {
    let events = (0..n).map(|i| event(version + i)).collect();
    store
        .append(
            &[StreamAppend {
                stream: stream.into(),
                expected: ExpectedVersion::Exact(version),
                events,
            }],
            t(1000),
        )
        .unwrap();
}

pub fn appends_get_gapless_positions_and_versions(store: &dyn EventStore) {
    append_n(store, "account-a", 0, 3);
    append_n(store, "account-b", 0, 2);
    append_n(store, "account-a", 3, 1);
    let all = store.read_all(0, 100).unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![1, 2, 3, 4, 5, 6]);
    let a: Vec<u64> = store
        .read_stream("account-a", 0, 100)
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(a, vec![1, 2, 3, 4]);
    assert_eq!(store.head_position().unwrap(), 6);
    assert_eq!(store.stream_head("account-b").unwrap().version, 2);
    assert_eq!(store.stream_head("account-x").unwrap().version, 0);
}

pub fn wrong_expected_version_appends_nothing(store: &dyn EventStore) {
    append_n(store, "account-a", 0, 2);
    let r = store.append(
        &[
            StreamAppend {
                stream: "account-b".into(),
                expected: ExpectedVersion::Exact(0),
                events: vec![event(9)],
            },
            StreamAppend {
                stream: "account-a".into(),
                expected: ExpectedVersion::Exact(1),
                events: vec![event(9)],
            },
        ],
        t(0),
    );
    assert!(
        matches!(
            r,
            Err(StoreError::WrongExpectedVersion {
                expected: 1,
                actual: 2,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        store.head_position().unwrap(),
        2,
        "the whole batch is refused"
    );
    assert_eq!(store.stream_head("account-b").unwrap().version, 0);
}

pub fn a_batch_across_streams_is_atomic_and_ordered(store: &dyn EventStore) {
    let r = store
        .append(
            &[
                StreamAppend {
                    stream: "invoice-sequence".into(),
                    expected: ExpectedVersion::Any,
                    events: vec![event(1)],
                },
                StreamAppend {
                    stream: "account-a".into(),
                    expected: ExpectedVersion::Exact(0),
                    events: vec![event(2), event(3)],
                },
            ],
            t(5),
        )
        .unwrap();
    assert_eq!((r.first_position, r.last_position), (1, 3));
    let all = store.read_all(0, 10).unwrap();
    assert_eq!(all[0].stream, "invoice-sequence");
    assert_eq!(all[1].stream, "account-a");
    assert_eq!(all[2].version, 2);
}

pub fn events_round_trip_exactly(store: &dyn EventStore) {
    let e = NewEvent {
        type_name: "AccountOpened",
        schema: 1,
        occurred_at: Utc.timestamp_micros(1_767_225_600_123_456).unwrap(),
        payload: "{\"name\":\"株式会社テスト Müller\"}".as_bytes().to_vec(),
    };
    store
        .append(
            &[StreamAppend {
                stream: "account-jp".into(),
                expected: ExpectedVersion::Exact(0),
                events: vec![e.clone()],
            }],
            t(7),
        )
        .unwrap();
    let got = &store.read_stream("account-jp", 0, 10).unwrap()[0];
    assert_eq!(got.type_name, e.type_name);
    assert_eq!(got.schema, 1);
    assert_eq!(got.occurred_at, e.occurred_at);
    assert_eq!(got.recorded_at, t(7));
    assert_eq!(got.payload, e.payload);
    assert_eq!(store.read_at(1).unwrap().as_ref(), Some(got));
    assert_eq!(store.read_at(2).unwrap(), None);
}

pub fn hashes_chain_per_stream(store: &dyn EventStore) {
    append_n(store, "account-a", 0, 3);
    append_n(store, "account-b", 0, 1);
    append_n(store, "account-a", 3, 2);
    let events = store.read_stream("account-a", 0, 100).unwrap();
    let mut prev = GENESIS;
    for e in &events {
        assert_eq!(
            recorded_hash(&prev, e),
            e.hash,
            "event {} breaks the chain",
            e.position
        );
        prev = e.hash;
    }
    assert_eq!(store.stream_head("account-a").unwrap().hash, prev);
    // Different payloads give different hashes.
    assert_ne!(events[0].hash, events[1].hash);
}

pub fn reads_page_and_filter(store: &dyn EventStore) {
    for i in 0..10 {
        append_n(store, "account-a", i * 5, 5);
        append_n(store, "account-b", i, 1);
    }
    assert_eq!(store.read_all(55, 100).unwrap().len(), 5);
    assert_eq!(store.read_all(0, 7).unwrap().len(), 7);
    let page = store.read_stream("account-a", 20, 10).unwrap();
    assert_eq!(
        page.iter().map(|e| e.version).collect::<Vec<_>>(),
        (21..=30).collect::<Vec<_>>()
    );
    assert!(store.read_stream("account-a", 50, 10).unwrap().is_empty());
    assert!(store.read_stream("account-none", 0, 10).unwrap().is_empty());
}

pub fn followers_wake_on_append(store: &dyn EventStore) {
    assert_eq!(store.wait_for(0, Duration::from_millis(10)).unwrap(), 0);
    append_n(store, "account-a", 0, 1);
    assert_eq!(store.wait_for(0, Duration::from_secs(5)).unwrap(), 1);
}

pub fn checkpoints_and_meta_persist_and_never_go_back(store: &dyn EventStore) {
    assert_eq!(store.checkpoint("mailer").unwrap(), 0);
    store.set_checkpoint("mailer", 5).unwrap();
    store.set_checkpoint("mailer", 3).unwrap();
    assert_eq!(store.checkpoint("mailer").unwrap(), 5);
    store.meta_put("token:abc", "admin").unwrap();
    store.meta_put("token:abd", "ingest").unwrap();
    store.meta_put("clock", "x").unwrap();
    assert_eq!(
        store.meta_get("token:abc").unwrap().as_deref(),
        Some("admin")
    );
    assert_eq!(store.meta_list("token:").unwrap().len(), 2);
    assert_eq!(store.meta_get("nope").unwrap(), None);
}

pub fn snapshots_keep_the_newest(store: &dyn EventStore) {
    assert!(store.snapshot_positions().unwrap().is_empty());
    assert_eq!(store.read_snapshot(1).unwrap(), None);
    let big = vec![7u8; 3 << 20];
    store.put_snapshot(10, b"ten", 2).unwrap();
    store.put_snapshot(30, &big, 2).unwrap();
    store.put_snapshot(20, b"twenty", 2).unwrap();
    // The two newest by position stay, whatever the order they came in.
    assert_eq!(store.snapshot_positions().unwrap(), vec![30, 20]);
    assert_eq!(store.read_snapshot(30).unwrap().as_deref(), Some(&big[..]));
    assert_eq!(
        store.read_snapshot(20).unwrap().as_deref(),
        Some(&b"twenty"[..])
    );
    assert_eq!(store.read_snapshot(10).unwrap(), None);
    // Rewriting one position replaces it; snapshots are no events.
    store.put_snapshot(30, b"again", 2).unwrap();
    assert_eq!(
        store.read_snapshot(30).unwrap().as_deref(),
        Some(&b"again"[..])
    );
    assert_eq!(store.head_position().unwrap(), 0);
}

/// Usage keys spilled beside the log come back by fingerprint, a pair
/// stored twice counts once, and they are no events.
pub fn usage_keys_come_back_by_fingerprint(store: &dyn EventStore) {
    assert!(store.usage_key_positions(7).unwrap().is_empty());
    store
        .put_usage_keys(&[(7, 10), (7, 12), (u32::MAX, 11), (0, 13)])
        .unwrap();
    store.put_usage_keys(&[(7, 10), (9, 14)]).unwrap();
    let mut seven = store.usage_key_positions(7).unwrap();
    seven.sort_unstable();
    assert_eq!(seven, vec![10, 12]);
    assert_eq!(store.usage_key_positions(u32::MAX).unwrap(), vec![11]);
    assert_eq!(store.usage_key_positions(0).unwrap(), vec![13]);
    assert_eq!(store.usage_key_positions(9).unwrap(), vec![14]);
    assert!(store.usage_key_positions(8).unwrap().is_empty());
    // Large batches go in chunks.
    let many: Vec<(u32, u64)> = (0..120_000u64)
        .map(|i| ((i % 1000) as u32 + 100, i + 100))
        .collect();
    store.put_usage_keys(&many).unwrap();
    assert_eq!(store.usage_key_positions(100).unwrap().len(), 120);
    // By range: one fingerprint per stored pair, bounds included.
    let mut range = store.usage_key_fingerprints(7, 100).unwrap();
    range.sort_unstable();
    assert_eq!(&range[..3], &[7, 7, 9], "pairs, not distinct fingerprints");
    assert_eq!(range.len(), 3 + 120, "{range:?}");
    assert_eq!(
        store.usage_key_fingerprints(u32::MAX, u32::MAX).unwrap(),
        vec![u32::MAX]
    );
    assert_eq!(store.usage_key_fingerprints(0, 6).unwrap(), vec![0]);
    assert!(store
        .usage_key_fingerprints(10_000, 20_000)
        .unwrap()
        .is_empty());
    assert_eq!(store.head_position().unwrap(), 0);
}

/// Reopening sees everything and keeps chaining (the factory is called again
/// on the same folder).
pub fn reopening_keeps_everything(open: &dyn Fn() -> Box<dyn EventStore>) {
    {
        let s = open();
        append_n(s.as_ref(), "account-a", 0, 3);
        append_n(s.as_ref(), "account-b", 0, 1);
    }
    let s = open();
    assert_eq!(s.head_position().unwrap(), 4);
    assert_eq!(s.stream_head("account-a").unwrap().version, 3);
    append_n(s.as_ref(), "account-a", 3, 1);
    let events = s.read_stream("account-a", 0, 10).unwrap();
    let mut prev = GENESIS;
    for e in &events {
        assert_eq!(recorded_hash(&prev, e), e.hash);
        prev = e.hash;
    }
    assert_eq!(events.len(), 4);
}

/// Many streams and a log long enough to cross several index flushes of the
/// stores under test (the SQLite suite flushes every 1,000 events), read back
/// per stream, whole and in pages.
pub fn large_logs_read_back_per_stream(store: &dyn EventStore) {
    let streams = 50u64;
    let per_round = 5u64;
    let rounds = 23u64;
    for r in 0..rounds {
        let batch: Vec<StreamAppend> = (0..streams)
            .map(|s| StreamAppend {
                stream: format!("account-{s}"),
                expected: ExpectedVersion::Exact(r * per_round),
                events: (0..per_round).map(|i| event(r * per_round + i)).collect(),
            })
            .collect();
        store.append(&batch, t(1)).unwrap();
    }
    let all_versions: Vec<u64> = store
        .read_stream("account-7", 0, 1_000_000)
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(all_versions, (1..=rounds * per_round).collect::<Vec<_>>());
    assert_eq!(store.head_position().unwrap(), rounds * per_round * streams);
    // Pages of 7 from every starting version come back gapless and in order.
    for after in [0u64, 3, 40, 57, 100, 113, 114, 115] {
        let mut seen = Vec::new();
        let mut from = after;
        loop {
            let page = store.read_stream("account-13", from, 7).unwrap();
            if page.is_empty() {
                break;
            }
            assert!(page.len() <= 7);
            from = page.last().unwrap().version;
            seen.extend(page.iter().map(|e| (e.version, e.stream.clone())));
        }
        let expected: Vec<(u64, String)> = (after + 1..=rounds * per_round)
            .map(|v| (v, "account-13".to_string()))
            .collect();
        assert_eq!(seen, expected, "reading account-13 after {after}");
    }
}

/// Generates one `#[test]` per conformance check for a backend. The
/// argument is a closure `|dir: &Path| -> impl EventStore`.
#[macro_export]
macro_rules! conformance_suite {
    (@with [$(#[$attr:meta])*] $open:expr) => {
        mod conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::conformance as c;

            fn fresh() -> (tempfile::TempDir, Box<dyn $crate::EventStore>) {
                let dir = tempfile::tempdir().unwrap();
                let open = $open;
                let store = Box::new(open(dir.path()));
                (dir, store)
            }

            macro_rules! check {
                ($name:ident) => {
                    #[test]
                    $(#[$attr])*
                    fn $name() {
                        let (_dir, store) = fresh();
                        c::$name(store.as_ref());
                    }
                };
            }

            check!(appends_get_gapless_positions_and_versions);
            check!(wrong_expected_version_appends_nothing);
            check!(a_batch_across_streams_is_atomic_and_ordered);
            check!(events_round_trip_exactly);
            check!(hashes_chain_per_stream);
            check!(reads_page_and_filter);
            check!(followers_wake_on_append);
            check!(checkpoints_and_meta_persist_and_never_go_back);
            check!(snapshots_keep_the_newest);
            check!(usage_keys_come_back_by_fingerprint);
            check!(large_logs_read_back_per_stream);

            #[test]
            $(#[$attr])*
            fn reopening_keeps_everything() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().to_path_buf();
                let open = $open;
                c::reopening_keeps_everything(&move || {
                    Box::new(open(&path)) as Box<dyn $crate::EventStore>
                });
            }
        }
    };
    // Attributes given first go on every test, e.g. `#[ignore = "why"]`
    // for a backend that needs a server these machines do not have.
    ($(#[$attr:meta])+ $open:expr) => {
        $crate::conformance_suite!(@with [$(#[$attr])+] $open);
    };
    ($open:expr) => {
        $crate::conformance_suite!(@with [] $open);
    };
}
