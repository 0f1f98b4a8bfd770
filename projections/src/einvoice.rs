//! The e-invoice (SPEC §14): a Factur-X 1.0 / ZUGFeRD 2 CII XML, profile
//! **EN 16931** (`urn:cen.eu:en16931:2017`), generated from the same
//! `InvoiceIssued` / `CreditNoteIssued` facts as the PDF, and embedded in
//! the PDF as a PDF/A-3 associated file (`factur-x.xml`, `/AFRelationship
//! /Data`) with the Factur-X XMP metadata. Pure and deterministic: the
//! recorded hash of the PDF covers the XML.
//!
//! VAT categories: `standard` → `S` (or `Z` at a 0 % rate), reverse charge
//! → `AE` (VATEX-EU-AE), exempt → `E` with its reason. A document gets an
//! e-invoice only when it was issued with an issuer and tax facts (the
//! buyer's country is one of them, and EN 16931 requires it): see
//! [`applies`].

use std::fmt::Write;

use accrue_core::events::{CreditNoteIssued, DocumentLegal, InvoiceIssued};
use accrue_core::tax::{InvoiceTax, Issuer, TaxTreatment};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// Whether a document issued with `legal` carries an e-invoice: it needs
/// the issuer (the seller) and the tax facts (the buyer's country, the
/// VAT category).
pub fn applies(legal: Option<&DocumentLegal>) -> bool {
    legal.is_some_and(|l| l.issuer.is_some() && l.tax.is_some())
}

/// The attachment's name, as Factur-X requires.
pub const FILENAME: &str = "factur-x.xml";
/// The profile's guideline id (EN 16931, "COMFORT" in ZUGFeRD terms).
pub const GUIDELINE: &str = "urn:cen.eu:en16931:2017";

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c => o.push(c),
        }
    }
    o
}

fn d102(t: DateTime<Utc>) -> String {
    t.format("%Y%m%d").to_string()
}

fn money(a: Decimal) -> String {
    let mut a = accrue_core::money::round_cents(a);
    a.rescale(2);
    a.to_string()
}

/// One line of the e-invoice: name, quantity, unit price (never negative:
/// a credit line has a negative quantity), line amount.
struct Line {
    name: String,
    quantity: Decimal,
    price: Decimal,
    amount: Decimal,
}

struct Facts<'a> {
    type_code: &'static str,
    number: &'a str,
    issued_at: DateTime<Utc>,
    due_date: Option<DateTime<Utc>>,
    currency: &'a str,
    customer_name: &'a str,
    customer_address: Option<&'a str>,
    serial_number: &'a str,
    lines: Vec<Line>,
    legal: &'a DocumentLegal,
    total: Decimal,
    /// A credit note's invoice.
    references: Option<&'a str>,
    note: Option<String>,
}

/// (category, rate element?, exemption reason, exemption code)
fn category(
    tax: Option<&InvoiceTax>,
) -> (
    &'static str,
    Option<Decimal>,
    Option<String>,
    Option<&'static str>,
) {
    match tax {
        None => (
            "O",
            None,
            Some("Not subject to VAT".into()),
            Some("VATEX-EU-O"),
        ),
        Some(t) => match t.treatment {
            TaxTreatment::Standard if t.rate().is_zero() => ("Z", Some(Decimal::ZERO), None, None),
            TaxTreatment::Standard => ("S", Some(t.rate()), None, None),
            TaxTreatment::ReverseCharge => (
                "AE",
                Some(Decimal::ZERO),
                Some("Reverse charge".into()),
                Some("VATEX-EU-AE"),
            ),
            TaxTreatment::Exempt => (
                "E",
                Some(Decimal::ZERO),
                Some(t.exempt_reason.clone().unwrap_or_else(|| "Exempt".into())),
                None,
            ),
        },
    }
}

fn rate_text(r: Decimal) -> String {
    let mut r = r.normalize();
    if r.scale() < 2 {
        r.rescale(2);
    }
    r.to_string()
}

fn party(x: &mut String, name: &str, address: &[String], country: Option<&str>, vat: Option<&str>) {
    let _ = write!(x, "<ram:Name>{}</ram:Name>", esc(name));
    // The XSD requires a country in an address: without one (a customer
    // without tax facts) the address is left out.
    if let Some(c) = country {
        x.push_str("<ram:PostalTradeAddress>");
        for (tag, l) in ["LineOne", "LineTwo", "LineThree"].iter().zip(address) {
            let _ = write!(x, "<ram:{tag}>{}</ram:{tag}>", esc(l));
        }
        let _ = write!(x, "<ram:CountryID>{}</ram:CountryID>", esc(c));
        x.push_str("</ram:PostalTradeAddress>");
    }
    if let Some(v) = vat {
        let _ = write!(
            x,
            "<ram:SpecifiedTaxRegistration><ram:ID schemeID=\"VA\">{}</ram:ID></ram:SpecifiedTaxRegistration>",
            esc(v)
        );
    }
}

fn build(f: &Facts) -> String {
    let tax = f.legal.tax.as_ref();
    let issuer: Option<&Issuer> = f.legal.issuer.as_ref();
    let (cat, rate, reason, reason_code) = category(tax);
    // "Not subject to VAT" invoices carry no VAT ids (BR-O-02).
    let with_ids = cat != "O";
    let net: Decimal = f.lines.iter().map(|l| l.amount).sum();
    let tax_total = tax.map_or(Decimal::ZERO, |t| t.tax_total());
    let mut x = String::with_capacity(4096);
    x.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str("<rsm:CrossIndustryInvoice xmlns:rsm=\"urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100\" xmlns:qdt=\"urn:un:unece:uncefact:data:standard:QualifiedDataType:100\" xmlns:ram=\"urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100\" xmlns:udt=\"urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100\">\n");
    let _ = writeln!(
        x,
        "<rsm:ExchangedDocumentContext><ram:GuidelineSpecifiedDocumentContextParameter><ram:ID>{GUIDELINE}</ram:ID></ram:GuidelineSpecifiedDocumentContextParameter></rsm:ExchangedDocumentContext>"
    );
    let _ = write!(
        x,
        "<rsm:ExchangedDocument><ram:ID>{}</ram:ID><ram:TypeCode>{}</ram:TypeCode><ram:IssueDateTime><udt:DateTimeString format=\"102\">{}</udt:DateTimeString></ram:IssueDateTime>",
        esc(f.number),
        f.type_code,
        d102(f.issued_at)
    );
    if let Some(n) = &f.note {
        let _ = write!(
            x,
            "<ram:IncludedNote><ram:Content>{}</ram:Content></ram:IncludedNote>",
            esc(n)
        );
    }
    x.push_str("</rsm:ExchangedDocument>\n<rsm:SupplyChainTradeTransaction>\n");
    for (i, l) in f.lines.iter().enumerate() {
        let _ = write!(
            x,
            "<ram:IncludedSupplyChainTradeLineItem><ram:AssociatedDocumentLineDocument><ram:LineID>{}</ram:LineID></ram:AssociatedDocumentLineDocument><ram:SpecifiedTradeProduct><ram:Name>{}</ram:Name></ram:SpecifiedTradeProduct><ram:SpecifiedLineTradeAgreement><ram:NetPriceProductTradePrice><ram:ChargeAmount>{}</ram:ChargeAmount></ram:NetPriceProductTradePrice></ram:SpecifiedLineTradeAgreement><ram:SpecifiedLineTradeDelivery><ram:BilledQuantity unitCode=\"C62\">{}</ram:BilledQuantity></ram:SpecifiedLineTradeDelivery><ram:SpecifiedLineTradeSettlement><ram:ApplicableTradeTax><ram:TypeCode>VAT</ram:TypeCode><ram:CategoryCode>{cat}</ram:CategoryCode>",
            i + 1,
            esc(&l.name),
            l.price.normalize(),
            l.quantity.normalize(),
        );
        if let Some(r) = rate {
            let _ = write!(
                x,
                "<ram:RateApplicablePercent>{}</ram:RateApplicablePercent>",
                rate_text(r)
            );
        }
        let _ = writeln!(
            x,
            "</ram:ApplicableTradeTax><ram:SpecifiedTradeSettlementLineMonetarySummation><ram:LineTotalAmount>{}</ram:LineTotalAmount></ram:SpecifiedTradeSettlementLineMonetarySummation></ram:SpecifiedLineTradeSettlement></ram:IncludedSupplyChainTradeLineItem>",
            money(l.amount)
        );
    }
    // Agreement: seller and buyer.
    let _ = write!(
        x,
        "<ram:ApplicableHeaderTradeAgreement><ram:BuyerReference>{}</ram:BuyerReference><ram:SellerTradeParty>",
        esc(f.serial_number)
    );
    match issuer {
        Some(i) => party(
            &mut x,
            &i.legal_name,
            &i.address,
            Some(&i.country),
            i.tax_id.as_deref().filter(|_| with_ids),
        ),
        None => party(&mut x, crate::pdf::ISSUER[0], &[], None, None),
    }
    x.push_str("</ram:SellerTradeParty><ram:BuyerTradeParty>");
    let address: Vec<String> = f
        .customer_address
        .map(|a| {
            a.split(['\n', ';'])
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .take(3)
                .collect()
        })
        .unwrap_or_default();
    let buyer_country = tax.map(|t| t.country.split('-').next().unwrap_or("").to_string());
    party(
        &mut x,
        f.customer_name,
        &address,
        buyer_country.as_deref(),
        tax.and_then(|t| t.customer_tax_id.as_deref())
            .filter(|_| with_ids),
    );
    x.push_str("</ram:BuyerTradeParty></ram:ApplicableHeaderTradeAgreement>\n");
    x.push_str("<ram:ApplicableHeaderTradeDelivery/>\n");
    // Settlement.
    let _ = write!(
        x,
        "<ram:ApplicableHeaderTradeSettlement><ram:PaymentReference>{}</ram:PaymentReference><ram:InvoiceCurrencyCode>{}</ram:InvoiceCurrencyCode>",
        esc(f.number),
        esc(f.currency)
    );
    if let Some(iban) = issuer.and_then(|i| i.iban.as_deref()) {
        let _ = write!(
            x,
            "<ram:SpecifiedTradeSettlementPaymentMeans><ram:TypeCode>58</ram:TypeCode><ram:PayeePartyCreditorFinancialAccount><ram:IBANID>{}</ram:IBANID></ram:PayeePartyCreditorFinancialAccount></ram:SpecifiedTradeSettlementPaymentMeans>",
            esc(iban)
        );
    }
    let _ = write!(
        x,
        "<ram:ApplicableTradeTax><ram:CalculatedAmount>{}</ram:CalculatedAmount><ram:TypeCode>VAT</ram:TypeCode>",
        money(tax_total)
    );
    if let Some(r) = &reason {
        let _ = write!(x, "<ram:ExemptionReason>{}</ram:ExemptionReason>", esc(r));
    }
    let _ = write!(
        x,
        "<ram:BasisAmount>{}</ram:BasisAmount><ram:CategoryCode>{cat}</ram:CategoryCode>",
        money(net)
    );
    if let Some(c) = reason_code {
        let _ = write!(x, "<ram:ExemptionReasonCode>{c}</ram:ExemptionReasonCode>");
    }
    if let Some(r) = rate {
        let _ = write!(
            x,
            "<ram:RateApplicablePercent>{}</ram:RateApplicablePercent>",
            rate_text(r)
        );
    }
    x.push_str("</ram:ApplicableTradeTax>");
    if let Some(due) = f.due_date {
        let _ = write!(
            x,
            "<ram:SpecifiedTradePaymentTerms><ram:Description>Net {} days</ram:Description><ram:DueDateDateTime><udt:DateTimeString format=\"102\">{}</udt:DateTimeString></ram:DueDateDateTime></ram:SpecifiedTradePaymentTerms>",
            accrue_core::invoice::PAYMENT_TERMS_DAYS,
            d102(due)
        );
    }
    let _ = write!(
        x,
        "<ram:SpecifiedTradeSettlementHeaderMonetarySummation><ram:LineTotalAmount>{net}</ram:LineTotalAmount><ram:TaxBasisTotalAmount>{net}</ram:TaxBasisTotalAmount><ram:TaxTotalAmount currencyID=\"{cur}\">{tax}</ram:TaxTotalAmount><ram:GrandTotalAmount>{gross}</ram:GrandTotalAmount><ram:DuePayableAmount>{gross}</ram:DuePayableAmount></ram:SpecifiedTradeSettlementHeaderMonetarySummation>",
        net = money(net),
        cur = esc(f.currency),
        tax = money(tax_total),
        gross = money(f.total),
    );
    if let Some(inv) = f.references {
        let _ = write!(
            x,
            "<ram:InvoiceReferencedDocument><ram:IssuerAssignedID>{}</ram:IssuerAssignedID></ram:InvoiceReferencedDocument>",
            esc(inv)
        );
    }
    x.push_str("</ram:ApplicableHeaderTradeSettlement>\n</rsm:SupplyChainTradeTransaction>\n</rsm:CrossIndustryInvoice>\n");
    x
}

fn no_legal() -> &'static DocumentLegal {
    static NONE: std::sync::OnceLock<DocumentLegal> = std::sync::OnceLock::new();
    NONE.get_or_init(|| DocumentLegal {
        layout: DocumentLegal::LAYOUT,
        language: "en".into(),
        issuer: None,
        tax: None,
    })
}

/// The invoice's CII XML (type code 380).
pub fn invoice_xml(inv: &InvoiceIssued) -> String {
    let legal = inv.legal.as_deref().unwrap_or_else(|| no_legal());
    let note = legal.tax.as_ref().and_then(|t| match t.treatment {
        TaxTreatment::ReverseCharge => Some("Reverse charge: VAT to be accounted for by the recipient (Article 196, Council Directive 2006/112/EC).".to_string()),
        TaxTreatment::Exempt => t.exempt_reason.clone(),
        TaxTreatment::Standard => None,
    });
    build(&Facts {
        type_code: "380",
        number: &inv.number,
        issued_at: inv.issued_at,
        due_date: Some(inv.due_date),
        currency: &inv.currency,
        customer_name: &inv.customer_name,
        customer_address: inv.customer_address.as_deref(),
        serial_number: &inv.serial_number,
        lines: inv
            .lines
            .iter()
            .map(|l| {
                // EN 16931 (BR-27): a price is never negative; a credit
                // line (a downgrade) has a negative quantity instead.
                let (quantity, price) = if l.unit_price.is_sign_negative() {
                    (-l.quantity, -l.unit_price)
                } else {
                    (l.quantity, l.unit_price)
                };
                Line {
                    name: l.description.clone(),
                    quantity,
                    price,
                    amount: l.amount,
                }
            })
            .collect(),
        legal,
        total: inv.total,
        references: None,
        note,
    })
}

/// The credit note's CII XML (type code 381), referencing its invoice.
pub fn credit_note_xml(cn: &CreditNoteIssued) -> String {
    let legal = cn.legal.as_deref().unwrap_or_else(|| no_legal());
    build(&Facts {
        type_code: "381",
        number: &cn.number,
        issued_at: cn.issued_at,
        due_date: None,
        currency: &cn.currency,
        customer_name: &cn.customer_name,
        customer_address: cn.customer_address.as_deref(),
        serial_number: &cn.serial_number,
        lines: cn
            .lines
            .iter()
            .map(|l| Line {
                name: l.description.clone(),
                quantity: if l.amount.is_sign_negative() {
                    Decimal::NEGATIVE_ONE
                } else {
                    Decimal::ONE
                },
                price: l.amount.abs(),
                amount: l.amount,
            })
            .collect(),
        legal,
        total: cn.total,
        references: Some(&cn.invoice_number),
        note: Some(cn.reason.clone()),
    })
}

fn pdf_date(t: DateTime<Utc>) -> String {
    t.format("D:%Y%m%d%H%M%SZ").to_string()
}

/// The XMP packet: PDF/A-3B identification, Dublin Core title and
/// creator, and the Factur-X extension schema with its properties.
fn xmp(issued_at: DateTime<Utc>, title: &str, author: &str, credit_note: bool) -> String {
    let t = issued_at.format("%Y-%m-%dT%H:%M:%SZ");
    let doc_type = if credit_note { "CREDITNOTE" } else { "INVOICE" };
    let props = [
        ("DocumentFileName", "name of the embedded XML invoice file"),
        ("DocumentType", "INVOICE"),
        ("Version", "The actual version of the Factur-X XML schema"),
        (
            "ConformanceLevel",
            "The conformance level of the embedded Factur-X data",
        ),
    ];
    let mut p = String::new();
    for (name, desc) in props {
        let _ = write!(p, "<rdf:li rdf:parseType=\"Resource\"><pdfaProperty:name>{name}</pdfaProperty:name><pdfaProperty:valueType>Text</pdfaProperty:valueType><pdfaProperty:category>external</pdfaProperty:category><pdfaProperty:description>{desc}</pdfaProperty:description></rdf:li>");
    }
    format!(
        "<?xpacket begin=\"\u{feff}\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n<x:xmpmeta xmlns:x=\"adobe:ns:meta/\"><rdf:RDF xmlns:rdf=\"http://www.w3.org/1999/02/22-rdf-syntax-ns#\">\
<rdf:Description rdf:about=\"\" xmlns:pdfaid=\"http://www.aiim.org/pdfa/ns/id/\"><pdfaid:part>3</pdfaid:part><pdfaid:conformance>B</pdfaid:conformance></rdf:Description>\
<rdf:Description rdf:about=\"\" xmlns:dc=\"http://purl.org/dc/elements/1.1/\"><dc:title><rdf:Alt><rdf:li xml:lang=\"x-default\">{title}</rdf:li></rdf:Alt></dc:title><dc:creator><rdf:Seq><rdf:li>{author}</rdf:li></rdf:Seq></dc:creator></rdf:Description>\
<rdf:Description rdf:about=\"\" xmlns:pdf=\"http://ns.adobe.com/pdf/1.3/\"><pdf:Producer>accrue</pdf:Producer></rdf:Description>\
<rdf:Description rdf:about=\"\" xmlns:xmp=\"http://ns.adobe.com/xap/1.0/\"><xmp:CreatorTool>accrue</xmp:CreatorTool><xmp:CreateDate>{t}</xmp:CreateDate><xmp:ModifyDate>{t}</xmp:ModifyDate><xmp:MetadataDate>{t}</xmp:MetadataDate></rdf:Description>\
<rdf:Description rdf:about=\"\" xmlns:fx=\"urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#\"><fx:DocumentType>{doc_type}</fx:DocumentType><fx:DocumentFileName>{FILENAME}</fx:DocumentFileName><fx:Version>1.0</fx:Version><fx:ConformanceLevel>EN 16931</fx:ConformanceLevel></rdf:Description>\
<rdf:Description rdf:about=\"\" xmlns:pdfaExtension=\"http://www.aiim.org/pdfa/ns/extension/\" xmlns:pdfaSchema=\"http://www.aiim.org/pdfa/ns/schema#\" xmlns:pdfaProperty=\"http://www.aiim.org/pdfa/ns/property#\"><pdfaExtension:schemas><rdf:Bag><rdf:li rdf:parseType=\"Resource\"><pdfaSchema:schema>Factur-X PDFA Extension Schema</pdfaSchema:schema><pdfaSchema:namespaceURI>urn:factur-x:pdfa:CrossIndustryDocument:invoice:1p0#</pdfaSchema:namespaceURI><pdfaSchema:prefix>fx</pdfaSchema:prefix><pdfaSchema:property><rdf:Seq>{p}</rdf:Seq></pdfaSchema:property></rdf:li></rdf:Bag></pdfaExtension:schemas></rdf:Description>\
</rdf:RDF></x:xmpmeta>\n<?xpacket end=\"w\"?>",
        title = esc(title),
        author = esc(author),
    )
}

/// Embeds `xml` as the document's Factur-X associated file and replaces
/// its metadata with the PDF/A-3 / Factur-X XMP. Deterministic: every
/// object is derived from the arguments.
pub fn embed(
    lo: &mut lopdf::Document,
    xml: &[u8],
    issued_at: DateTime<Utc>,
    title: &str,
    author: &str,
) {
    use lopdf::{dictionary, Object, Stream, StringFormat};
    let credit_note = title.starts_with("Credit");
    let date = Object::String(pdf_date(issued_at).into_bytes(), StringFormat::Literal);
    let file = Stream::new(
        dictionary! {
            "Type" => "EmbeddedFile",
            "Subtype" => Object::Name(b"text/xml".to_vec()),
            "Params" => dictionary! {
                "Size" => xml.len() as i64,
                "ModDate" => date,
            },
        },
        xml.to_vec(),
    );
    let file_id = lo.add_object(file);
    let name = || Object::String(FILENAME.as_bytes().to_vec(), StringFormat::Literal);
    let spec = dictionary! {
        "Type" => "Filespec",
        "F" => name(),
        "UF" => name(),
        "Desc" => Object::String(b"Factur-X XML file".to_vec(), StringFormat::Literal),
        "AFRelationship" => "Data",
        "EF" => dictionary! { "F" => file_id, "UF" => file_id },
    };
    let spec_id = lo.add_object(spec);
    let mut meta = Stream::new(
        dictionary! { "Type" => "Metadata", "Subtype" => "XML" },
        xmp(issued_at, title, author, credit_note).into_bytes(),
    );
    // XMP stays readable to tools that scan for the packet.
    meta.allows_compression = false;
    let meta_id = lo.add_object(meta);
    let Ok(root) = lo.trailer.get(b"Root").and_then(Object::as_reference) else {
        return;
    };
    if let Ok(catalog) = lo.get_object_mut(root).and_then(Object::as_dict_mut) {
        catalog.set(
            "Names",
            dictionary! {
                "EmbeddedFiles" => dictionary! { "Names" => vec![name(), Object::Reference(spec_id)] },
            },
        );
        catalog.set("AF", vec![Object::Reference(spec_id)]);
        catalog.set("Metadata", meta_id);
        catalog.set("PageMode", "UseAttachments");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("A & B <c> \"d\""), "A &amp; B &lt;c&gt; &quot;d&quot;");
        assert_eq!(rate_text(Decimal::new(19, 0)), "19.00");
        assert_eq!(rate_text(Decimal::new(725, 2)), "7.25");
    }
}
