//! Card data detection. A payment method carries a processor token, never a
//! card number (PAN) or a CVC; a body containing either is refused whole.
//! The detection itself lives in [`crate::guard`], which every write passes.

use serde_json::Value;

pub use crate::guard::contains_pan;

/// Describes the first card data found anywhere in the value, keys
/// included (the same rules as the write guard, [`crate::guard`]).
pub fn find_card_data(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            if contains_pan(s) {
                Some("a card number".to_string())
            } else {
                crate::guard::contains_cvc_text(s).then(|| "a CVC".to_string())
            }
        }
        Value::Number(n) => contains_pan(&n.to_string()).then(|| "a card number".to_string()),
        Value::Array(a) => a.iter().find_map(find_card_data),
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            if crate::guard::is_cvc_key(k) {
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
