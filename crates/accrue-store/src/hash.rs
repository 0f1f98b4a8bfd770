//! The canonical encoding and hash chain. Every field is length-prefixed so
//! no two different events encode to the same bytes.

use sha2::{Digest, Sha256};

/// The hash "before" the first event of a stream.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Fields that the chain covers.
pub struct HashInput<'a> {
    pub stream: &'a str,
    pub version: u64,
    pub type_name: &'a str,
    pub schema: u32,
    pub occurred_at_us: i64,
    pub recorded_at_us: i64,
    pub payload: &'a [u8],
}

fn put(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// `SHA-256(prev ‖ len‖stream ‖ version ‖ len‖type ‖ schema ‖ occurred_at µs ‖ recorded_at µs ‖ len‖payload)`.
pub fn event_hash(prev: &[u8; 32], e: &HashInput<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"accrue-event-v1");
    h.update(prev);
    put(&mut h, e.stream.as_bytes());
    h.update(e.version.to_be_bytes());
    put(&mut h, e.type_name.as_bytes());
    h.update(e.schema.to_be_bytes());
    h.update(e.occurred_at_us.to_be_bytes());
    h.update(e.recorded_at_us.to_be_bytes());
    put(&mut h, e.payload);
    h.finalize().into()
}

/// Hash of a recorded event given its predecessor's hash.
pub fn recorded_hash(prev: &[u8; 32], e: &crate::RecordedEvent) -> [u8; 32] {
    event_hash(
        prev,
        &HashInput {
            stream: &e.stream,
            version: e.version,
            type_name: &e.type_name,
            schema: e.schema,
            occurred_at_us: e.occurred_at.timestamp_micros(),
            recorded_at_us: e.recorded_at.timestamp_micros(),
            payload: &e.payload,
        },
    )
}

/// The global chain: every event is chained to the previous event of the
/// whole log, not only of its stream, so deleting a stream's tail, a whole
/// stream or the newest events, moving an event to another stream or
/// inserting one is seen. `SHA-256("accrue-chain-v1" ‖ previous chain ‖
/// position ‖ event hash)`; the event hash covers stream, version, type,
/// schema, both instants and the payload.
pub fn chain_hash(prev_chain: &[u8; 32], position: u64, event_hash: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"accrue-chain-v1");
    h.update(prev_chain);
    h.update(position.to_be_bytes());
    h.update(event_hash);
    h.finalize().into()
}

/// A stored hash column as an array. A value of the wrong length becomes all
/// zeros, which never matches a recomputation, so `verify` reports the event.
pub fn from_stored(bytes: &[u8]) -> [u8; 32] {
    bytes.try_into().unwrap_or([0u8; 32])
}
