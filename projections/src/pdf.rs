//! Invoice PDFs with printpdf: the document as issued, rendered only from the
//! `InvoiceIssued` event, so it never changes afterwards (payment status is
//! not printed) and two renders are byte-identical.
//!
//! Determinism takes three things printpdf does not do by itself (see
//! CRATES.md): the font under a fixed resource id, the document dates set to
//! the issue instant, and the trailer `/ID` derived from the invoice number.

use std::sync::OnceLock;

use accrue_core::events::{CreditNoteIssued, DocumentLegal, InvoiceIssued, InvoiceLine, LineKind};
use accrue_core::money::display;
use accrue_core::tax::{InvoiceTax, TaxTreatment};
use rust_decimal::Decimal;

use crate::locale::fill;
use chrono::Duration;
use printpdf::{
    Color, FontId, Line, LinePoint, Mm, Op, ParsedFont, PdfDocument, PdfFont, PdfFontHandle,
    PdfPage, PdfSaveOptions, Point, Pt, Rgb, TextItem,
};
use sha2::{Digest, Sha256};

/// Noto Sans JP Regular (SIL OFL 1.1, see `fonts/OFL.txt`): Latin, umlauts,
/// kana and kanji in one face. printpdf subsets it per document.
static FONT_BYTES: &[u8] = include_bytes!("../fonts/NotoSansJP_400Regular.ttf");
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
    /// Layout 3 measures text with the face's own advance widths; layouts
    /// 1 and 2 keep the estimate they were issued with.
    metrics: Option<&'static ParsedFont>,
}

/// The width of `s` at `size` pt in mm, from the face's advance widths
/// (no kerning: printpdf shows the text glyph by glyph).
fn measured_mm(font: &ParsedFont, size: f32, s: &str) -> f32 {
    let upem = f32::from(font.pdf_font_metrics.units_per_em.max(1));
    let units: u32 = s
        .chars()
        .map(|c| {
            font.lookup_glyph_index(c as u32)
                .map_or(upem as u32 / 2, |g| {
                    u32::from(font.get_horizontal_advance(g))
                })
        })
        .sum();
    units as f32 / upem * size * 0.3528
}

impl Page {
    fn new(metrics: Option<&'static ParsedFont>) -> Page {
        Page {
            ops: Vec::new(),
            metrics,
        }
    }

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
        let w_mm = match self.metrics {
            Some(font) => measured_mm(font, size, s),
            None => {
                s.chars()
                    .map(|c| if c.is_ascii() { 0.52 } else { 1.0 })
                    .sum::<f32>()
                    * size
                    * 0.3528
            }
        };
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

/// Splits running text into lines of at most `max` characters at spaces
/// (or anywhere, for text without spaces such as Japanese).
fn wrap_words(s: &str, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for word in s.split_inclusive(' ') {
        let mut word = word.to_string();
        while word.chars().count() > max {
            let head: String = word.chars().take(max).collect();
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur).trim_end().to_string());
            }
            out.push(head.clone());
            word = word.chars().skip(max).collect();
        }
        if cur.chars().count() + word.trim_end().chars().count() > max && !cur.is_empty() {
            out.push(std::mem::take(&mut cur).trim_end().to_string());
        }
        cur.push_str(&word);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim_end().to_string());
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

/// How a document formats its figures: layout 1 (documents issued before
/// SPEC §14: English, ISO dates, plain amounts — byte for byte as they
/// were rendered) or layout 2 (the document's language).
struct Fmt {
    l: &'static crate::locale::Labels,
    layout2: bool,
    /// Layout 3 (SPEC §14 item 5): measured columns, checkable quantities
    /// (`16/31 × 2`), an AI-credit line priced in cents.
    layout3: bool,
}

impl Fmt {
    fn of(legal: Option<&DocumentLegal>) -> Fmt {
        match legal {
            None => Fmt {
                l: &crate::locale::EN,
                layout2: false,
                layout3: false,
            },
            Some(d) => Fmt {
                l: crate::locale::labels(&d.language),
                layout2: true,
                layout3: d.layout >= 3,
            },
        }
    }
    fn date(&self, t: chrono::DateTime<chrono::Utc>) -> String {
        if self.layout2 {
            crate::locale::date(self.l.code, t)
        } else {
            day(t)
        }
    }
    fn period(&self, p: &accrue_core::Period) -> String {
        format!(
            "{} – {}",
            self.date(p.start),
            self.date(p.end - Duration::days(1))
        )
    }
    fn amount(&self, a: Decimal) -> String {
        if self.layout2 {
            crate::locale::amount(self.l.code, a)
        } else {
            display(a)
        }
    }
    fn quantity(&self, q: Decimal) -> String {
        if self.layout2 {
            crate::locale::rate(self.l.code, q)
        } else {
            q.normalize().to_string()
        }
    }
    fn money(&self, currency: &str, a: Decimal) -> String {
        format!("{currency} {}", self.amount(a))
    }
    /// One invoice line as printed. Layout 3 prints what a reader can check:
    /// quantity × unit price = amount (a proration's quantity carries its
    /// share of the period, `16/31 × 2`), and the AI-credit line as one
    /// charge in cents for its period instead of a six-decimal "price".
    /// A line's description in the document's language (layout 3): the
    /// core writes it in English from fixed patterns (`accrue_core::invoice`),
    /// which are read back here; anything else is printed as issued.
    fn describe(&self, line: &InvoiceLine, billing: Option<&accrue_core::Period>) -> String {
        const COMPONENTS: [&str; 3] = ["Full seats", "Viewer seats", "Data Management add-on"];
        let d = line.description.as_str();
        let component = |name: &str| {
            COMPONENTS
                .iter()
                .position(|c| *c == name)
                .map(|i| self.l.components[i])
        };
        match line.kind {
            LineKind::Subscription => {
                let localized = d
                    .split_once(", ")
                    .and_then(|(name, _)| component(name))
                    .zip(billing);
                match localized {
                    Some((name, period)) => format!("{name}, {}", self.period(period)),
                    None => d.to_string(),
                }
            }
            LineKind::Proration => {
                // "{name} {old} → {new}, {kind}, prorated {r}/{d} days from {date}"
                let parsed = (|| {
                    let (head, rest) = d.split_once(", ")?;
                    let (kind, rest) = rest.split_once(", ")?;
                    let date = rest.rsplit_once(" from ")?.1;
                    let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
                    let (name, change) = COMPONENTS
                        .iter()
                        .find_map(|c| head.strip_prefix(c).map(|rest| (*c, rest)))?;
                    let kind = match kind {
                        "upgrade" => self.l.upgrade,
                        "downgrade credit" => self.l.downgrade,
                        _ => return None,
                    };
                    let r = line.prorated?;
                    let at = date.and_hms_opt(0, 0, 0)?.and_utc();
                    Some(format!(
                        "{}{change}, {kind}, {}",
                        component(name)?,
                        fill(
                            self.l.prorated,
                            &[
                                ("remaining", &r.remaining.to_string()),
                                ("days", &r.days.to_string()),
                                ("date", &self.date(at)),
                            ],
                        )
                    ))
                })();
                parsed.unwrap_or_else(|| d.to_string())
            }
            LineKind::AiCredits => d.to_string(),
        }
    }

    fn line(
        &self,
        line: &InvoiceLine,
        credit_period: Option<&accrue_core::Period>,
        billing: Option<&accrue_core::Period>,
    ) -> DocLine {
        if !self.layout3 {
            return DocLine {
                description: line.description.clone(),
                quantity: self.quantity(line.quantity),
                unit_price: self.amount(line.unit_price),
                amount: self.amount(line.amount),
            };
        }
        match (line.kind, line.prorated, credit_period) {
            (LineKind::AiCredits, _, Some(p)) => DocLine {
                description: format!("{}, {}", self.l.ai_line, self.period(p)),
                quantity: "1".into(),
                unit_price: self.amount(line.amount),
                amount: self.amount(line.amount),
            },
            (LineKind::Proration, Some(r), _) => DocLine {
                description: self.describe(line, billing),
                quantity: format!(
                    "{}/{} × {}",
                    r.remaining,
                    r.days,
                    self.quantity(line.quantity)
                ),
                unit_price: self.amount(line.unit_price),
                amount: self.amount(line.amount),
            },
            _ => DocLine {
                description: self.describe(line, billing),
                quantity: self.quantity(line.quantity),
                unit_price: self.amount(line.unit_price),
                amount: self.amount(line.amount),
            },
        }
    }
}

/// What a document prints: an invoice or a credit note, from its event.
struct Doc {
    title: &'static str,
    /// The PDF's title metadata ("Invoice INV-…").
    doc_title: String,
    number: String,
    issued_at: chrono::DateTime<chrono::Utc>,
    /// The issuer's name, then its address and contact lines.
    issuer: Vec<String>,
    bill_to: &'static str,
    customer_name: String,
    customer_address: Option<String>,
    /// Below the address: the serial number, the customer's tax id.
    customer_lines: Vec<String>,
    facts: Vec<(&'static str, String)>,
    header: [&'static str; 4],
    lines: Vec<DocLine>,
    /// Rows above the total (net, tax per rate); none in layout 1.
    subtotals: Vec<(String, String)>,
    total_label: &'static str,
    total: String,
    terms: Vec<String>,
    /// The footer's first part (the issuer's name).
    footer_name: String,
    /// A second footer line (tax id, registration), layout 2 only.
    footer_legal: Option<String>,
    page_label: &'static str,
    /// The Factur-X XML to embed (PDF/A-3), see `einvoice::applies`.
    xml: Option<String>,
    /// Layout 2: running text wraps at `wrap_at` characters and may
    /// continue on a new page (layout 1 never did either).
    layout2: bool,
    layout3: bool,
    wrap_at: usize,
    /// The issuer's logo, printed top left (layout 3; it did not exist
    /// before).
    logo: Option<crate::logo::Pixels>,
}

/// The issuer's logo of a document, decoded; none before layout 3, and
/// none if the fact holds bytes that do not decode (checked when the
/// configuration was read, so only a hand-made event gets here).
fn logo_of(f: &Fmt, legal: Option<&DocumentLegal>) -> Option<crate::logo::Pixels> {
    use base64::Engine as _;
    if !f.layout3 {
        return None;
    }
    let b64 = legal?.issuer.as_ref()?.logo_png.as_deref()?;
    let png = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    crate::logo::decode(&png).ok()
}

const LOGO_ID: &str = "AccrueIssuerLogo";
/// The logo's box, top left above the issuer's name: at most this tall
/// and this wide (mm), its aspect ratio kept.
const LOGO_H: f32 = 11.0;
const LOGO_W: f32 = 60.0;
const LOGO_BOTTOM: f32 = 281.0;

/// The issuer block and footer of a document: the issuer it was issued
/// with, else (layout 1, or no issuer configured) the built-in one.
fn issuer_parts(f: &Fmt, legal: Option<&DocumentLegal>) -> (Vec<String>, String, Option<String>) {
    match legal.and_then(|l| l.issuer.as_ref()) {
        None => (
            ISSUER.iter().map(|s| s.to_string()).collect(),
            ISSUER[0].to_string(),
            None,
        ),
        Some(i) => {
            let mut lines = vec![i.legal_name.clone()];
            lines.extend(i.address.iter().cloned());
            if let Some(e) = &i.email {
                lines.push(e.clone());
            }
            let mut legal_line = Vec::new();
            if let Some(t) = &i.tax_id {
                legal_line.push(format!("{}: {t}", f.l.issuer_tax_id));
            }
            if let Some(r) = &i.registration {
                legal_line.push(r.clone());
            }
            let footer = (!legal_line.is_empty()).then(|| legal_line.join(" · "));
            (lines, i.legal_name.clone(), footer)
        }
    }
}

/// Net and tax rows, the tax wording, for a document with tax facts.
fn tax_parts(
    f: &Fmt,
    currency: &str,
    tax: Option<&InvoiceTax>,
) -> (Vec<(String, String)>, Vec<String>) {
    let Some(t) = tax else {
        return (vec![], vec![]);
    };
    let mut rows = vec![(f.l.net.to_string(), f.money(currency, t.net))];
    for r in &t.rates {
        rows.push((
            fill(f.l.tax, &[("rate", &crate::locale::rate(f.l.code, r.rate))]),
            f.money(currency, r.amount),
        ));
    }
    let notes = match t.treatment {
        TaxTreatment::ReverseCharge => vec![f.l.reverse_charge.to_string()],
        TaxTreatment::Exempt => vec![fill(
            f.l.exempt,
            &[("reason", t.exempt_reason.as_deref().unwrap_or(""))],
        )],
        TaxTreatment::Standard => vec![],
    };
    (rows, notes)
}

fn customer_lines(f: &Fmt, serial: &str, tax: Option<&InvoiceTax>) -> Vec<String> {
    let mut v = vec![format!("{}: {serial}", f.l.serial_number)];
    if let Some(id) = tax.and_then(|t| t.customer_tax_id.as_deref()) {
        v.push(format!("{}: {id}", f.l.customer_tax_id));
    }
    v
}

fn payment_lines(f: &Fmt, legal: Option<&DocumentLegal>) -> Vec<String> {
    legal
        .and_then(|l| l.issuer.as_ref())
        .and_then(|i| i.payment_instructions.as_deref())
        .map(|p| vec![format!("{}: {p}", f.l.payment)])
        .unwrap_or_default()
}

impl Doc {
    fn invoice(inv: &InvoiceIssued) -> Doc {
        let legal = inv.legal.as_deref();
        let f = Fmt::of(legal);
        let l = f.l;
        let tax = legal.and_then(|d| d.tax.as_ref());
        let mut facts = vec![
            (l.invoice_number, inv.number.clone()),
            (l.issue_date, f.date(inv.issued_at)),
            (l.due_date, f.date(inv.due_date)),
            (l.currency, inv.currency.clone()),
        ];
        if let Some(b) = &inv.billing_period {
            facts.push((l.subscription_period, f.period(b)));
        }
        // Layout 3 names the AI-credit period only when an AI line bills it.
        let has_ai_line = inv.lines.iter().any(|l| l.kind == LineKind::AiCredits);
        if let Some(c) = inv
            .credit_period
            .as_ref()
            .filter(|_| !f.layout3 || has_ai_line)
        {
            facts.push((l.ai_period, f.period(c)));
        }
        let (issuer, footer_name, footer_legal) = issuer_parts(&f, legal);
        let (subtotals, notes) = tax_parts(&f, &inv.currency, tax);
        let mut terms = notes;
        terms.push(fill(
            l.terms,
            &[
                (
                    "days",
                    &accrue_core::invoice::PAYMENT_TERMS_DAYS.to_string(),
                ),
                ("amount", &f.money(&inv.currency, inv.total)),
                ("date", &f.date(inv.due_date)),
            ],
        ));
        terms.extend(payment_lines(&f, legal));
        terms.push(fill(l.quote, &[("number", &inv.number)]));
        terms.push(l.arrears.to_string());
        terms.push(l.advance.to_string());
        Doc {
            title: l.invoice,
            doc_title: format!("Invoice {}", inv.number),
            number: inv.number.clone(),
            issued_at: inv.issued_at,
            issuer,
            bill_to: l.bill_to,
            customer_name: inv.customer_name.clone(),
            customer_address: inv.customer_address.clone(),
            customer_lines: customer_lines(&f, &inv.serial_number, tax),
            facts,
            header: [l.description, l.qty, l.unit_price, l.amount],
            lines: inv
                .lines
                .iter()
                .map(|line| {
                    f.line(
                        line,
                        inv.credit_period.as_ref(),
                        inv.billing_period.as_ref(),
                    )
                })
                .collect(),
            subtotals,
            total_label: l.total,
            total: f.money(&inv.currency, inv.total),
            terms,
            footer_name,
            footer_legal,
            page_label: l.page,
            layout2: f.layout2,
            layout3: f.layout3,
            wrap_at: if l.code == "ja" { 52 } else { 100 },
            logo: logo_of(&f, legal),
            xml: crate::einvoice::applies(legal).then(|| crate::einvoice::invoice_xml(inv)),
        }
    }

    fn credit_note(cn: &CreditNoteIssued) -> Doc {
        let legal = cn.legal.as_deref();
        let f = Fmt::of(legal);
        let l = f.l;
        let tax = legal.and_then(|d| d.tax.as_ref());
        let (issuer, footer_name, footer_legal) = issuer_parts(&f, legal);
        let (subtotals, notes) = tax_parts(&f, &cn.currency, tax);
        let mut terms = notes;
        terms.push(fill(l.reason, &[("reason", &cn.reason)]));
        terms.push(fill(
            l.reduces,
            &[
                ("invoice", &cn.invoice_number),
                ("amount", &f.money(&cn.currency, cn.total)),
            ],
        ));
        terms.push(l.refunded.to_string());
        Doc {
            title: l.credit_note,
            doc_title: format!("Credit note {}", cn.number),
            number: cn.number.clone(),
            issued_at: cn.issued_at,
            issuer,
            bill_to: l.bill_to,
            customer_name: cn.customer_name.clone(),
            customer_address: cn.customer_address.clone(),
            customer_lines: customer_lines(&f, &cn.serial_number, tax),
            facts: vec![
                (l.credit_note_number, cn.number.clone()),
                (l.issue_date, f.date(cn.issued_at)),
                (l.credits_invoice, cn.invoice_number.clone()),
                (l.currency, cn.currency.clone()),
            ],
            header: [l.description, l.qty, l.unit_price, l.amount],
            lines: cn
                .lines
                .iter()
                .map(|line| DocLine {
                    description: line.description.clone(),
                    quantity: "1".into(),
                    unit_price: f.amount(line.amount),
                    amount: f.amount(line.amount),
                })
                .collect(),
            subtotals,
            total_label: l.total,
            total: f.money(&cn.currency, cn.total),
            terms,
            footer_name,
            footer_legal,
            page_label: l.page,
            layout2: f.layout2,
            layout3: f.layout3,
            wrap_at: if l.code == "ja" { 52 } else { 100 },
            logo: logo_of(&f, legal),
            xml: crate::einvoice::applies(legal).then(|| crate::einvoice::credit_note_xml(cn)),
        }
    }
}

/// Renders the invoice as issued. Pure: same event, same bytes. An invoice
/// with legal facts (layout 2) is printed in its language, with its
/// issuer and tax, and carries its Factur-X XML (PDF/A-3).
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
    let metrics = inv.layout3.then_some(font);
    let mut pages = vec![Page::new(metrics)];
    let mut p = pages.last_mut().expect("one page");

    // Header: issuer left, title right.
    p.text(LEFT, 275.0, 16.0, &inv.issuer[0]);
    for (i, l) in inv.issuer[1..].iter().enumerate() {
        p.text(LEFT, 269.0 - 4.5 * i as f32, 9.0, l);
    }
    p.text_right(RIGHT, 275.0, 20.0, inv.title);
    p.text_right(RIGHT, 268.0, 11.0, &inv.number);
    p.rule(252.0, 0.6);

    // Customer and invoice facts.
    p.text(LEFT, 244.0, 9.0, inv.bill_to);
    p.text(LEFT, 238.0, 12.0, &inv.customer_name);
    let mut y = 232.5;
    if let Some(addr) = &inv.customer_address {
        // Layout 2 keeps the address's own line breaks.
        let lines: Vec<String> = if inv.layout2 {
            addr.lines().flat_map(|l| wrap(l.trim(), 45)).collect()
        } else {
            wrap(addr, 45)
        };
        for l in lines {
            p.text(LEFT, y, 9.0, &l);
            y -= 4.5;
        }
    }
    for (i, l) in inv.customer_lines.iter().enumerate() {
        p.text(LEFT, y - 4.5 * i as f32, 9.0, l);
    }

    let mut fy = 244.0;
    for (k, v) in inv.facts.iter() {
        p.text(108.0, fy, 9.0, k);
        p.text_right(RIGHT, fy, 9.0, v);
        fy -= 5.0;
    }

    // Lines.
    let mut y = 200.0;
    let header = |p: &mut Page, y: f32| {
        p.text(LEFT, y, 9.0, inv.header[0]);
        p.text_right(135.0, y, 9.0, inv.header[1]);
        p.text_right(162.0, y, 9.0, inv.header[2]);
        p.text_right(RIGHT, y, 9.0, inv.header[3]);
        p.rule(y - 2.5, 0.3);
    };
    header(p, y);
    y -= 8.0;
    for line in &inv.lines {
        let desc = wrap(&line.description, 62);
        if y - 4.5 * (desc.len() as f32) < 40.0 {
            pages.push(Page::new(metrics));
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
    for (k, v) in &inv.subtotals {
        p.text(120.0, y, 9.0, k);
        p.text_right(RIGHT, y, 9.0, v);
        y -= 5.5;
    }
    p.text(120.0, y, 11.0, inv.total_label);
    p.text_right(RIGHT, y, 11.0, &inv.total);
    y -= 14.0;

    // Terms (running text is wrapped in layout 2; layout 1's lines fit).
    for t in &inv.terms {
        let lines = if inv.layout2 {
            wrap_words(t, inv.wrap_at)
        } else {
            vec![t.clone()]
        };
        for l in lines {
            if inv.layout2 && y < 24.0 {
                pages.push(Page::new(metrics));
                p = pages.last_mut().expect("just pushed");
                y = 270.0;
            }
            p.text(LEFT, y, 8.5, &l);
            y -= 4.5;
        }
    }
    let count = pages.len();
    for (i, pg) in pages.iter_mut().enumerate() {
        let page = fill(
            inv.page_label,
            &[("n", &(i + 1).to_string()), ("count", &count.to_string())],
        );
        pg.text(
            LEFT,
            12.0,
            7.5,
            &format!("{} · {} · {page}", inv.footer_name, inv.number),
        );
        if let Some(l) = &inv.footer_legal {
            pg.text(LEFT, 16.0, 7.5, l);
        }
    }

    let mut doc = PdfDocument::new(&inv.doc_title);
    if let Some(logo) = &inv.logo {
        let (w, h) = (logo.width as f32, logo.height as f32);
        // The dpi that makes the image LOGO_H tall, or LOGO_W wide if it
        // is wider than that allows.
        let dpi = (h * 25.4 / LOGO_H).max(w * 25.4 / LOGO_W);
        let data_format = match logo.channels {
            1 => printpdf::RawImageFormat::R8,
            2 => printpdf::RawImageFormat::RG8,
            3 => printpdf::RawImageFormat::RGB8,
            _ => printpdf::RawImageFormat::RGBA8,
        };
        let id = printpdf::XObjectId(LOGO_ID.into());
        doc.resources.xobjects.map.insert(
            id.clone(),
            printpdf::XObject::Image(printpdf::RawImage {
                pixels: printpdf::RawImageData::U8(logo.data.clone()),
                width: logo.width as usize,
                height: logo.height as usize,
                data_format,
                tag: Vec::new(),
            }),
        );
        if let Some(first) = pages.first_mut() {
            first.ops.push(Op::UseXobject {
                id,
                transform: printpdf::XObjectTransform {
                    translate_x: Some(Mm(LEFT).into_pt()),
                    translate_y: Some(Mm(LOGO_BOTTOM).into_pt()),
                    dpi: Some(dpi),
                    ..Default::default()
                },
            });
        }
    }
    doc.resources
        .fonts
        .map
        .insert(FontId(FONT_ID.into()), PdfFont::new(font.clone()));
    let issued = printpdf::OffsetDateTime::from_unix_timestamp(inv.issued_at.timestamp())
        .unwrap_or(doc.metadata.info.creation_date);
    doc.metadata.info.creation_date = issued;
    doc.metadata.info.modification_date = issued;
    doc.metadata.info.metadata_date = issued;
    doc.metadata.info.author = inv.footer_name.clone();
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
    if let Some(xml) = &inv.xml {
        crate::einvoice::embed(
            &mut lo,
            xml.as_bytes(),
            inv.issued_at,
            &inv.doc_title,
            &inv.footer_name,
        );
    }
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
