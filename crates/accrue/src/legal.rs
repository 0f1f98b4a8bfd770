//! The issuer and the tax-rate table (SPEC §14), read once when `serve`
//! starts: `accrue.toml` in the data folder, then `ACCRUE_ISSUER_*` and
//! `ACCRUE_TAX_RATES` from the environment (the environment wins, field by
//! field). What is read here is copied into every invoice issued from now
//! on; invoices already issued keep the issuer they were issued with.
//!
//! ```toml
//! [issuer]
//! legal_name = "accrue Billing GmbH"
//! address = "Ledgerweg 1; 10115 Berlin; Germany"   # lines separated by ";"
//! country = "DE"
//! tax_id = "DE123456789"
//! registration = "Amtsgericht Berlin-Charlottenburg HRB 123456"
//! payment_instructions = "IBAN DE89 3704 0044 0532 0130 00 · BIC COBADEFFXXX"
//! iban = "DE89370400440532013000"
//! email = "billing@accrue.example"
//!
//! [tax_rates]          # percent, by ISO 3166 code or subdivision
//! DE = "19"
//! FR = "20"
//! US-CA = "7.25"
//! ```
//!
//! Only this flat subset of TOML is read (sections, `key = "string"` or a
//! bare number, `#` comments); anything else is refused with its line.

use std::path::Path;

use accrue_core::tax::{Issuer, Legal, TaxTable};
use anyhow::{bail, Context};
use rust_decimal::Decimal;

/// The configuration file in the data folder.
pub const FILE: &str = "accrue.toml";

#[derive(Default)]
struct Raw {
    issuer: Vec<(String, String)>,
    rates: Vec<(String, String)>,
}

fn parse_toml(text: &str) -> anyhow::Result<Raw> {
    let mut raw = Raw::default();
    let mut section = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = strip_comment(line).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_string();
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("{FILE} line {}: expected key = value", n + 1);
        };
        let key = k.trim().trim_matches('"').to_string();
        let v = v.trim();
        let value = match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Some(s) => s.replace("\\\"", "\"").replace("\\\\", "\\"),
            None if v.parse::<Decimal>().is_ok() => v.to_string(),
            None => bail!(
                "{FILE} line {}: the value must be a \"string\" or a number",
                n + 1
            ),
        };
        match section.as_str() {
            "issuer" => raw.issuer.push((key, value)),
            "tax_rates" => raw.rates.push((key, value)),
            other => bail!("{FILE} line {}: unknown section [{other}]", n + 1),
        }
    }
    Ok(raw)
}

/// A `#` outside a string starts a comment.
fn strip_comment(line: &str) -> &str {
    let mut in_str = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            _ => {}
        }
    }
    line
}

const ISSUER_KEYS: [&str; 9] = [
    "legal_name",
    "address",
    "country",
    "tax_id",
    "registration",
    "payment_instructions",
    "iban",
    "email",
    "logo",
];

/// Reads `data/accrue.toml` (if present) and the environment.
pub fn load(data: &Path, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Legal> {
    let path = data.join(FILE);
    let mut raw = match std::fs::read_to_string(&path) {
        Ok(t) => parse_toml(&t)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Raw::default(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    for key in ISSUER_KEYS {
        if let Some(v) = env(&format!("ACCRUE_ISSUER_{}", key.to_ascii_uppercase())) {
            raw.issuer.retain(|(k, _)| k != key);
            raw.issuer.push((key.to_string(), v));
        }
    }
    if let Some(rates) = env("ACCRUE_TAX_RATES") {
        // `DE=19,FR=20,US-CA=7.25`
        raw.rates.clear();
        for pair in rates.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((c, r)) = pair.split_once('=') else {
                bail!("ACCRUE_TAX_RATES: {pair:?} is not COUNTRY=RATE");
            };
            raw.rates.push((c.trim().to_string(), r.trim().to_string()));
        }
    }
    let mut rates = Vec::new();
    for (c, r) in raw.rates {
        let rate: Decimal = r
            .parse()
            .with_context(|| format!("tax rate {r:?} for {c} is not a decimal"))?;
        rates.push((c, rate));
    }
    let rates = TaxTable::new(rates).map_err(|e| anyhow::anyhow!("tax rates: {e}"))?;
    let issuer = issuer(raw.issuer, data)?;
    Ok(Legal { issuer, rates })
}

fn issuer(fields: Vec<(String, String)>, data: &Path) -> anyhow::Result<Option<Issuer>> {
    if fields.is_empty() {
        return Ok(None);
    }
    let get = |k: &str| {
        fields
            .iter()
            .find(|(f, _)| f == k)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if let Some((k, _)) = fields
        .iter()
        .find(|(k, _)| !ISSUER_KEYS.contains(&k.as_str()))
    {
        bail!(
            "[issuer] has no field {k:?} (known: {})",
            ISSUER_KEYS.join(", ")
        );
    }
    for (k, v) in &fields {
        if v.chars().any(char::is_control) || v.len() > 500 {
            bail!("[issuer] {k}: at most 500 characters, no control characters");
        }
    }
    let Some(legal_name) = get("legal_name") else {
        bail!("[issuer] needs a legal_name (ACCRUE_ISSUER_LEGAL_NAME)");
    };
    let country = get("country").unwrap_or_default();
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        bail!("[issuer] needs its country as an ISO 3166 code like DE (ACCRUE_ISSUER_COUNTRY)");
    }
    Ok(Some(Issuer {
        legal_name,
        address: get("address")
            .map(|a| {
                a.split([';', '\n'])
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        country,
        tax_id: get("tax_id"),
        registration: get("registration"),
        payment_instructions: get("payment_instructions"),
        iban: get("iban").map(|i| i.replace(' ', "")),
        email: get("email"),
        logo_png: get("logo").map(|p| logo(data, &p)).transpose()?,
    }))
}

/// Reads and checks the logo (a PNG; a relative path is in the data
/// folder), base64 for the issued facts.
fn logo(data: &Path, path: &str) -> anyhow::Result<String> {
    use base64::Engine as _;
    let path = data.join(path);
    let meta =
        std::fs::metadata(&path).with_context(|| format!("[issuer] logo {}", path.display()))?;
    if meta.len() > accrue_projections::logo::MAX_BYTES as u64 {
        bail!(
            "[issuer] logo {}: {} bytes; at most {} (it is copied into every invoice)",
            path.display(),
            meta.len(),
            accrue_projections::logo::MAX_BYTES
        );
    }
    let bytes =
        std::fs::read(&path).with_context(|| format!("[issuer] logo {}", path.display()))?;
    accrue_projections::logo::decode(&bytes)
        .map_err(|e| anyhow::anyhow!("[issuer] logo {}: {e}", path.display()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logo_is_checked_when_read_and_carried_as_base64() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let png = accrue_projections::logo::encode_rgba(4, 2, |_, _| [1, 2, 3, 255], 0);
        std::fs::write(dir.path().join("logo.png"), &png).unwrap();
        std::fs::write(dir.path().join("logo.svg"), "<svg/>").unwrap();
        let env = |logo: &'static str| {
            move |k: &str| match k {
                "ACCRUE_ISSUER_LEGAL_NAME" => Some("Muster GmbH".to_string()),
                "ACCRUE_ISSUER_COUNTRY" => Some("DE".to_string()),
                "ACCRUE_ISSUER_LOGO" => Some(logo.to_string()),
                _ => None,
            }
        };
        let l = load(dir.path(), env("logo.png")).unwrap();
        let b64 = l.issuer.unwrap().logo_png.unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            png
        );
        let e = load(dir.path(), env("logo.svg")).unwrap_err().to_string();
        assert!(e.contains("not a PNG"), "{e}");
        let e = load(dir.path(), env("missing.png"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.png"), "{e}");
    }

    #[test]
    fn the_file_and_the_environment_make_one_configuration() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            "# legal\n[issuer]\nlegal_name = \"Muster GmbH\" # name\naddress = \"Hauptstr. 1; 80331 München\"\ncountry = \"DE\"\n\n[tax_rates]\nDE = 19\n\"US-CA\" = \"7.25\"\n",
        )
        .unwrap();
        let l = load(dir.path(), |k| {
            (k == "ACCRUE_ISSUER_TAX_ID").then(|| "DE999999999".to_string())
        })
        .unwrap();
        let i = l.issuer.unwrap();
        assert_eq!(i.legal_name, "Muster GmbH");
        assert_eq!(i.address, ["Hauptstr. 1", "80331 München"]);
        assert_eq!(i.tax_id.as_deref(), Some("DE999999999"));
        assert_eq!(l.rates.rate("US-CA"), Some(Decimal::new(725, 2)));
        assert!(load(dir.path(), |k| (k == "ACCRUE_TAX_RATES")
            .then(|| "DE".into()))
        .is_err());
        std::fs::write(dir.path().join(FILE), "[issuer]\nlogo_colour = \"red\"\n").unwrap();
        assert!(load(dir.path(), |_| None).is_err());
        let empty = tempfile::tempdir().unwrap();
        assert!(load(empty.path(), |_| None).unwrap().issuer.is_none());
    }
}
