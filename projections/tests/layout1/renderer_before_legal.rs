//! FROZEN: projections/src/pdf.rs as of commit d02c816, before layout 2.
//! Only tests/layout1.rs uses it, to prove layout 1 never changes.

//! Invoice PDFs with printpdf: the document as issued, rendered only from the
//! `InvoiceIssued` event, so it never changes afterwards (payment status is
//! not printed) and two renders are byte-identical.
//!
//! Determinism takes three things printpdf does not do by itself (see
//! CRATES.md): the font under a fixed resource id, the document dates set to
//! the issue instant, and the trailer `/ID` derived from the invoice number.

use std::sync::OnceLock;

use accrue_core::events::{CreditNoteIssued, InvoiceIssued};
use accrue_core::money::display;
use chrono::Duration;
use printpdf::{
    Color, FontId, Line, LinePoint, Mm, Op, ParsedFont, PdfDocument, PdfFont, PdfFontHandle,
    PdfPage, PdfSaveOptions, Point, Pt, Rgb, TextItem,
};
use sha2::{Digest, Sha256};

/// Noto Sans JP Regular (SIL OFL 1.1, see `fonts/OFL.txt`): Latin, umlauts,
/// kana and kanji in one face. printpdf subsets it per document.
static FONT_BYTES: &[u8] = include_bytes!("../../fonts/NotoSansJP_400Regular.ttf");
static FONT: OnceLock<Option<ParsedFont>> = OnceLock::new();

/// Who issues the invoices.
pub const ISSUER: [&str; 4] = [
    "accrue Billing Ltd.",
    "1 Ledger Lane, Suite 100",
    "San Francisco, CA 94105, USA",
    "billing@accrue.example",
];

#[derive(Debug, thiserror::Error)]
pub enum PdfError {
    #[error("the bundled font could not be parsed")]
    Font,
}

fn font() -> Result<&'static ParsedFont, PdfError> {
    FONT.get_or_init(|| ParsedFont::from_bytes(FONT_BYTES, 0, &mut Vec::new()))
        .as_ref()
        .ok_or(PdfError::Font)
}

const FONT_ID: &str = "AccrueNotoSansJP";
const PAGE_W: f32 = 210.0;
const PAGE_H: f32 = 297.0;
const LEFT: f32 = 20.0;
const RIGHT: f32 = 190.0;

struct Page {
    ops: Vec<Op>,
}

impl Page {
    fn text(&mut self, x: f32, y: f32, size: f32, s: &str) {
        let font = PdfFontHandle::External(FontId(FONT_ID.into()));
        self.ops.extend([
            Op::StartTextSection,
            Op::SetTextCursor {
                pos: Point::new(Mm(x), Mm(y)),
            },
            Op::SetFont {
                font,
                size: Pt(size),
            },
            Op::ShowText {
                items: vec![TextItem::Text(s.to_string())],
            },
            Op::EndTextSection,
        ]);
    }

    /// Right-aligned text; widths estimated from the face's figure width
    /// (amounts are digits, so the estimate is close).
    fn text_right(&mut self, x_right: f32, y: f32, size: f32, s: &str) {
        let w_mm = s
            .chars()
            .map(|c| if c.is_ascii() { 0.52 } else { 1.0 })
            .sum::<f32>()
            * size
            * 0.3528;
        self.text(x_right - w_mm, y, size, s);
    }

    fn rule(&mut self, y: f32, gray: f32) {
        self.ops.push(Op::SetOutlineColor {
            col: Color::Rgb(Rgb {
                r: gray,
                g: gray,
                b: gray,
                icc_profile: None,
            }),
        });
        self.ops.push(Op::SetOutlineThickness { pt: Pt(0.5) });
        self.ops.push(Op::DrawLine {
            line: Line {
                points: vec![
                    LinePoint {
                        p: Point::new(Mm(LEFT), Mm(y)),
                        bezier: false,
                    },
                    LinePoint {
                        p: Point::new(Mm(RIGHT), Mm(y)),
                        bezier: false,
                    },
                ],
                is_closed: false,
            },
        });
    }
}

fn day(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

fn period_text(p: &accrue_core::Period) -> String {
    format!("{} – {}", day(p.start), day(p.end - Duration::days(1)))
}

/// Splits a description into lines of at most `max` characters at ", ".
fn wrap(s: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for part in s.split(", ") {
        let add = if cur.is_empty() {
            part.to_string()
        } else {
            format!("{cur}, {part}")
        };
        if add.chars().count() > max && !cur.is_empty() {
            out.push(format!("{cur},"));
            cur = part.to_string();
        } else {
            cur = add;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// One line as printed.
struct DocLine {
    description: String,
    quantity: String,
    unit_price: String,
    amount: String,
}

/// What a document prints: an invoice or a credit note, from its event.
struct Doc {
    title: &'static str,
    /// The PDF's title metadata ("Invoice INV-…").
    doc_title: String,
    number: String,
    issued_at: chrono::DateTime<chrono::Utc>,
    customer_name: String,
    customer_address: Option<String>,
    serial_number: String,
    facts: Vec<(&'static str, String)>,
    lines: Vec<DocLine>,
    currency: String,
    total: rust_decimal::Decimal,
    terms: Vec<String>,
}

impl Doc {
    fn invoice(inv: &InvoiceIssued) -> Doc {
        let mut facts = vec![
            ("Invoice number", inv.number.clone()),
            ("Issue date", day(inv.issued_at)),
            ("Due date", day(inv.due_date)),
            ("Currency", inv.currency.clone()),
        ];
        if let Some(b) = &inv.billing_period {
            facts.push(("Subscription period", period_text(b)));
        }
        if let Some(c) = &inv.credit_period {
            facts.push(("AI-credit period", period_text(c)));
        }
        Doc {
            title: "INVOICE",
            doc_title: format!("Invoice {}", inv.number),
            number: inv.number.clone(),
            issued_at: inv.issued_at,
            customer_name: inv.customer_name.clone(),
            customer_address: inv.customer_address.clone(),
            serial_number: inv.serial_number.clone(),
            facts,
            lines: inv
                .lines
                .iter()
                .map(|l| DocLine {
                    description: l.description.clone(),
                    quantity: l.quantity.normalize().to_string(),
                    unit_price: display(l.unit_price),
                    amount: display(l.amount),
                })
                .collect(),
            currency: inv.currency.clone(),
            total: inv.total,
            terms: vec![
                format!(
                    "Payment terms: net {} days. Please pay {} {} by {}.",
                    accrue_core::invoice::PAYMENT_TERMS_DAYS,
                    inv.currency,
                    display(inv.total),
                    day(inv.due_date)
                ),
                format!(
                    "Please quote invoice number {} with your payment.",
                    inv.number
                ),
                "AI credits are billed in arrears (usage beyond the included base credits);"
                    .to_string(),
                "seats and add-ons are billed in advance for the subscription period.".to_string(),
            ],
        }
    }

    fn credit_note(cn: &CreditNoteIssued) -> Doc {
        Doc {
            title: "CREDIT NOTE",
            doc_title: format!("Credit note {}", cn.number),
            number: cn.number.clone(),
            issued_at: cn.issued_at,
            customer_name: cn.customer_name.clone(),
            customer_address: cn.customer_address.clone(),
            serial_number: cn.serial_number.clone(),
            facts: vec![
                ("Credit note number", cn.number.clone()),
                ("Issue date", day(cn.issued_at)),
                ("Credits invoice", cn.invoice_number.clone()),
                ("Currency", cn.currency.clone()),
            ],
            lines: cn
                .lines
                .iter()
                .map(|l| DocLine {
                    description: l.description.clone(),
                    quantity: "1".into(),
                    unit_price: display(l.amount),
                    amount: display(l.amount),
                })
                .collect(),
            currency: cn.currency.clone(),
            total: cn.total,
            terms: vec![
                format!("Reason: {}", cn.reason),
                format!(
                    "This credit note reduces invoice {} by {} {}.",
                    cn.invoice_number,
                    cn.currency,
                    display(cn.total)
                ),
                "An amount already paid is refunded or set against the next invoice.".into(),
            ],
        }
    }
}

/// Renders the invoice as issued. Pure: same event, same bytes.
pub fn render(inv: &InvoiceIssued) -> Result<Vec<u8>, PdfError> {
    render_doc(&Doc::invoice(inv))
}

/// Renders a credit note as issued: the invoice's layout, titled "Credit
/// note", naming the invoice it credits. Pure like [`render`].
pub fn render_credit_note(cn: &CreditNoteIssued) -> Result<Vec<u8>, PdfError> {
    render_doc(&Doc::credit_note(cn))
}

fn render_doc(inv: &Doc) -> Result<Vec<u8>, PdfError> {
    let font = font()?;
    let mut pages = vec![Page { ops: Vec::new() }];
    let mut p = pages.last_mut().expect("one page");

    // Header: issuer left, title right.
    p.text(LEFT, 275.0, 16.0, ISSUER[0]);
    for (i, l) in ISSUER[1..].iter().enumerate() {
        p.text(LEFT, 269.0 - 4.5 * i as f32, 9.0, l);
    }
    p.text_right(RIGHT, 275.0, 20.0, inv.title);
    p.text_right(RIGHT, 268.0, 11.0, &inv.number);
    p.rule(252.0, 0.6);

    // Customer and invoice facts.
    p.text(LEFT, 244.0, 9.0, "Bill to");
    p.text(LEFT, 238.0, 12.0, &inv.customer_name);
    let mut y = 232.5;
    if let Some(addr) = &inv.customer_address {
        for l in wrap(addr, 45) {
            p.text(LEFT, y, 9.0, &l);
            y -= 4.5;
        }
    }
    p.text(
        LEFT,
        y,
        9.0,
        &format!("Serial number: {}", inv.serial_number),
    );

    let mut fy = 244.0;
    for (k, v) in inv.facts.iter() {
        p.text(108.0, fy, 9.0, k);
        p.text_right(RIGHT, fy, 9.0, v);
        fy -= 5.0;
    }

    // Lines.
    let mut y = 200.0;
    let header = |p: &mut Page, y: f32| {
        p.text(LEFT, y, 9.0, "Description");
        p.text_right(135.0, y, 9.0, "Qty");
        p.text_right(162.0, y, 9.0, "Unit price");
        p.text_right(RIGHT, y, 9.0, "Amount");
        p.rule(y - 2.5, 0.3);
    };
    header(p, y);
    y -= 8.0;
    for line in &inv.lines {
        let desc = wrap(&line.description, 62);
        if y - 4.5 * (desc.len() as f32) < 40.0 {
            pages.push(Page { ops: Vec::new() });
            p = pages.last_mut().expect("just pushed");
            y = 270.0;
            header(p, y);
            y -= 8.0;
        }
        p.text_right(135.0, y, 9.0, &line.quantity);
        p.text_right(162.0, y, 9.0, &line.unit_price);
        p.text_right(RIGHT, y, 9.0, &line.amount);
        for d in desc {
            p.text(LEFT, y, 9.0, &d);
            y -= 4.5;
        }
        y -= 2.5;
    }
    p.rule(y + 2.0, 0.3);
    y -= 5.0;
    p.text(120.0, y, 11.0, "Total");
    p.text_right(
        RIGHT,
        y,
        11.0,
        &format!("{} {}", inv.currency, display(inv.total)),
    );
    y -= 14.0;

    // Terms.
    let terms = &inv.terms;
    for t in terms {
        p.text(LEFT, y, 8.5, t);
        y -= 4.5;
    }
    let count = pages.len();
    for (i, pg) in pages.iter_mut().enumerate() {
        pg.text(
            LEFT,
            12.0,
            7.5,
            &format!(
                "{} · {} · page {} of {}",
                ISSUER[0],
                inv.number,
                i + 1,
                count
            ),
        );
    }

    let mut doc = PdfDocument::new(&inv.doc_title);
    doc.resources
        .fonts
        .map
        .insert(FontId(FONT_ID.into()), PdfFont::new(font.clone()));
    let issued = printpdf::OffsetDateTime::from_unix_timestamp(inv.issued_at.timestamp())
        .unwrap_or(doc.metadata.info.creation_date);
    doc.metadata.info.creation_date = issued;
    doc.metadata.info.modification_date = issued;
    doc.metadata.info.metadata_date = issued;
    doc.metadata.info.author = ISSUER[0].to_string();
    doc.metadata.info.creator = "accrue".to_string();
    doc.metadata.info.producer = "accrue".to_string();
    doc.metadata.info.subject = format!("{} for {}", inv.doc_title, inv.customer_name);
    doc.pages = pages
        .into_iter()
        .map(|p| PdfPage::new(Mm(PAGE_W), Mm(PAGE_H), p.ops))
        .collect();

    let opts = PdfSaveOptions::default();
    let mut warnings = Vec::new();
    let mut lo = doc.to_lopdf_document(&opts, &mut warnings);
    let id = lopdf::Object::String(
        Sha256::digest(inv.number.as_bytes())[..16].to_vec(),
        lopdf::StringFormat::Hexadecimal,
    );
    lo.trailer
        .set("ID", lopdf::Object::Array(vec![id.clone(), id]));
    if opts.optimize {
        lo.compress();
    }
    let mut out = Vec::new();
    lo.save_to(&mut out).map_err(|_| PdfError::Font)?;
    Ok(out)
}

/// SHA-256 of a rendered PDF, hex.
pub fn sha256_hex(pdf: &[u8]) -> String {
    hex::encode(Sha256::digest(pdf))
}
