//! HMAC-SHA-256 (RFC 2104): server tokens, processor webhook signatures,
//! outgoing webhook signatures. Verification compares in constant time.

use sha2::{Digest, Sha256};

pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Whether `hex_sig` is the HMAC of `msg` under `key`, in constant time.
pub fn verify_hex(key: &[u8], msg: &[u8], hex_sig: &str) -> bool {
    let Ok(given) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    constant_time_eq(&given, &hmac_sha256(key, msg))
}

/// `a == b`, in a time that depends on the lengths only.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &hex::encode(mac)
        ));
        assert!(!verify_hex(
            b"Jefe",
            b"what do ya want for nothing!",
            &hex::encode(mac)
        ));
    }
}
