//! The license definition's wire shape: claims, compact JWS (EdDSA /
//! Ed25519) and the JWKS that verifies it. The server signs with these
//! types, the client verifies with them: one definition of the format.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

/// How long a definition may be used offline after it was issued.
pub const DEFINITION_TTL_SECS: i64 = 7 * 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seats {
    pub full: u32,
    pub viewer: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credits {
    /// Decimal strings, as everywhere in accrue.
    pub base: String,
    pub additional_limit: String,
}

/// The claims of a license definition (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    pub iss: String,
    /// The serial number.
    pub sub: String,
    pub account_id: String,
    /// `None` for an offline license key (no activation).
    pub activation_id: Option<String>,
    pub server_id: Option<String>,
    /// `active`, `expired` or `suspended`.
    pub status: String,
    /// `YYYY-MM-DD`, or `None` when the license renews with its subscription.
    pub term_end: Option<String>,
    pub seats: Seats,
    pub data_management: bool,
    pub credits: Credits,
    pub billing_frequency: String,
    pub version: u64,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    pub typ: String,
    pub kid: String,
}

/// One public key of a JWKS (RFC 8037 OKP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

impl Jwk {
    pub fn ed25519(kid: &str, public: &VerifyingKey) -> Jwk {
        Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: B64.encode(public.as_bytes()),
            kid: kid.into(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("not a compact JWS")]
    Malformed,
    #[error("unsupported alg {0:?}")]
    Alg(String),
    #[error("no key {0:?} in the JWKS")]
    UnknownKey(String),
    #[error("bad signature")]
    Signature,
    #[error("bad claims: {0}")]
    Claims(String),
}

/// Encodes a compact JWS: the caller signs the signing input.
pub fn encode(header: &Header, claims: &Claims, sign: impl FnOnce(&[u8]) -> [u8; 64]) -> String {
    let h = B64.encode(serde_json::to_vec(header).expect("header serialises"));
    let c = B64.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let input = format!("{h}.{c}");
    let sig = sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

/// The header of a compact JWS, unverified.
pub fn header(jws: &str) -> Result<Header, VerifyError> {
    let h = jws.split('.').next().ok_or(VerifyError::Malformed)?;
    let bytes = B64.decode(h).map_err(|_| VerifyError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| VerifyError::Malformed)
}

/// Verifies a compact JWS against a JWKS and returns its claims. Expiry is
/// the caller's to judge (it knows its clock).
pub fn verify(jws: &str, jwks: &Jwks) -> Result<Claims, VerifyError> {
    let mut parts = jws.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VerifyError::Malformed);
    };
    let head = header(jws)?;
    if head.alg != "EdDSA" {
        return Err(VerifyError::Alg(head.alg));
    }
    let jwk = jwks
        .keys
        .iter()
        .find(|k| k.kid == head.kid && k.kty == "OKP" && k.crv == "Ed25519")
        .ok_or_else(|| VerifyError::UnknownKey(head.kid.clone()))?;
    let x: [u8; 32] = B64
        .decode(&jwk.x)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(VerifyError::Malformed)?;
    let key = VerifyingKey::from_bytes(&x).map_err(|_| VerifyError::Malformed)?;
    let sig: [u8; 64] = B64
        .decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(VerifyError::Malformed)?;
    let input = &jws[..h.len() + 1 + c.len()];
    key.verify(input.as_bytes(), &Signature::from_bytes(&sig))
        .map_err(|_| VerifyError::Signature)?;
    let claims = B64.decode(c).map_err(|_| VerifyError::Malformed)?;
    serde_json::from_slice(&claims).map_err(|e| VerifyError::Claims(e.to_string()))
}
