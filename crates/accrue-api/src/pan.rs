//! Card data detection. A payment method carries a processor token, never a
//! card number (PAN) or a CVC; a body containing either is refused whole.

use serde_json::Value;

/// Field names that can only mean a card verification code.
const CVC_KEYS: [&str; 8] = [
    "cvc",
    "cvv",
    "cvc2",
    "cvv2",
    "cid",
    "csc",
    "security_code",
    "card_verification",
];

/// True when `digits` (13–19 of them) passes the Luhn check.
pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(*d);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Finds a card number in text: a run of 13–19 digits (spaces and dashes
/// between digits allowed) that passes Luhn.
pub fn contains_pan(text: &str) -> bool {
    let mut digits: Vec<u8> = Vec::new();
    let check = |digits: &mut Vec<u8>| -> bool {
        let found = (13..=19).contains(&digits.len()) && luhn(digits)
            // Any 13–19 window of a longer run.
            || (digits.len() > 19 && (0..=digits.len() - 13).any(|s| (13..=19).any(|n| s + n <= digits.len() && luhn(&digits[s..s + n]))));
        digits.clear();
        found
    };
    let bytes = text.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if b.is_ascii_digit() {
            digits.push(b - b'0');
        } else if (*b == b' ' || *b == b'-')
            && !digits.is_empty()
            && bytes.get(i + 1).is_some_and(|n| n.is_ascii_digit())
        {
            continue;
        } else if check(&mut digits) {
            return true;
        }
    }
    check(&mut digits)
}

/// Describes the first card data found anywhere in the value, keys included.
pub fn find_card_data(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => contains_pan(s).then(|| "a card number".to_string()),
        Value::Number(n) => contains_pan(&n.to_string()).then(|| "a card number".to_string()),
        Value::Array(a) => a.iter().find_map(find_card_data),
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            let key = k.to_ascii_lowercase().replace('-', "_");
            if CVC_KEYS.contains(&key.as_str()) {
                return Some(format!("a CVC in field {k:?}"));
            }
            if contains_pan(k) {
                return Some("a card number".to_string());
            }
            find_card_data(v)
        }),
        _ => None,
    }
}

/// An address object flattened to one line per field, in a fixed order.
pub fn address_text(v: &Value) -> String {
    let Value::Object(m) = v else {
        return String::new();
    };
    let order = [
        "line1",
        "line2",
        "street",
        "postal_code",
        "zip",
        "city",
        "state",
        "region",
        "country",
    ];
    let mut parts: Vec<String> = order
        .iter()
        .filter_map(|k| m.get(*k).and_then(Value::as_str).map(str::to_string))
        .collect();
    for (k, val) in m {
        if !order.contains(&k.as_str()) {
            if let Some(s) = val.as_str() {
                parts.push(s.to_string());
            }
        }
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_card_numbers_that_pass_luhn() {
        assert!(contains_pan("4242424242424242"));
        assert!(contains_pan("card 4242 4242 4242 4242 exp"));
        assert!(contains_pan("5555-5555-5555-4444"));
        assert!(!contains_pan("4242424242424241"), "fails Luhn");
        assert!(!contains_pan("424242424242"), "12 digits");
        assert!(!contains_pan("order 2026-01-15"));
    }

    #[test]
    fn finds_card_data_anywhere() {
        assert!(find_card_data(&json!({"a": {"b": ["x", "4000056655665556"]}})).is_some());
        assert!(find_card_data(&json!({"metadata": {"CVC": "123"}})).is_some());
        assert!(find_card_data(&json!({"n": 4242424242424242u64})).is_some());
        assert!(find_card_data(&json!({"token": "tok_visa", "last4": "4242"})).is_none());
    }
}
