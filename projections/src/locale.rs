//! Document labels, dates and amounts in the five languages of the mails
//! (SPEC §14). Pure and fixed in the code: a document printed today and
//! re-rendered in ten years reads the same, byte for byte.

use chrono::{DateTime, Datelike, Utc};
use rust_decimal::Decimal;

/// The labels of an invoice or credit note in one language.
pub struct Labels {
    pub code: &'static str,
    pub invoice: &'static str,
    pub credit_note: &'static str,
    pub invoice_number: &'static str,
    pub credit_note_number: &'static str,
    pub credits_invoice: &'static str,
    pub issue_date: &'static str,
    pub due_date: &'static str,
    pub currency: &'static str,
    pub subscription_period: &'static str,
    pub ai_period: &'static str,
    /// Layout 3's AI-credit line: what is billed, before its period.
    pub ai_line: &'static str,
    /// Layout 3's plan components: full seats, viewer seats, the add-on.
    pub components: [&'static str; 3],
    /// Layout 3's proration kinds: an upgrade, a downgrade's credit.
    pub upgrade: &'static str,
    pub downgrade: &'static str,
    /// "prorated {remaining}/{days} days from {date}"
    pub prorated: &'static str,
    pub bill_to: &'static str,
    pub serial_number: &'static str,
    pub customer_tax_id: &'static str,
    pub issuer_tax_id: &'static str,
    pub description: &'static str,
    pub qty: &'static str,
    pub unit_price: &'static str,
    pub amount: &'static str,
    pub net: &'static str,
    /// "VAT {rate} %".
    pub tax: &'static str,
    pub total: &'static str,
    /// "Payment terms: net {days} days. Please pay {amount} by {date}."
    pub terms: &'static str,
    /// "Please quote invoice number {number} with your payment."
    pub quote: &'static str,
    pub arrears: &'static str,
    pub advance: &'static str,
    pub reverse_charge: &'static str,
    /// "Exempt from tax: {reason}"
    pub exempt: &'static str,
    /// "Reason: {reason}"
    pub reason: &'static str,
    /// "This credit note reduces invoice {invoice} by {amount}."
    pub reduces: &'static str,
    pub refunded: &'static str,
    /// "page {n} of {count}"
    pub page: &'static str,
    pub payment: &'static str,
}

pub const EN: Labels = Labels {
    code: "en",
    invoice: "INVOICE",
    credit_note: "CREDIT NOTE",
    invoice_number: "Invoice number",
    credit_note_number: "Credit note number",
    credits_invoice: "Credits invoice",
    issue_date: "Issue date",
    due_date: "Due date",
    currency: "Currency",
    subscription_period: "Subscription period",
    ai_period: "AI-credit period",
    ai_line: "AI credits beyond base credits",
    components: ["Full seats", "Viewer seats", "Data Management add-on"],
    upgrade: "upgrade",
    downgrade: "downgrade credit",
    prorated: "prorated {remaining}/{days} days from {date}",
    bill_to: "Bill to",
    serial_number: "Serial number",
    customer_tax_id: "Customer VAT ID",
    issuer_tax_id: "VAT ID",
    description: "Description",
    qty: "Qty",
    unit_price: "Unit price",
    amount: "Amount",
    net: "Net amount",
    tax: "VAT {rate} %",
    total: "Total",
    terms: "Payment terms: net {days} days. Please pay {amount} by {date}.",
    quote: "Please quote invoice number {number} with your payment.",
    arrears: "AI credits are billed in arrears (usage beyond the included base credits);",
    advance: "seats and add-ons are billed in advance for the subscription period.",
    reverse_charge: "Reverse charge: VAT to be accounted for by the recipient (Article 196, Council Directive 2006/112/EC).",
    exempt: "Exempt from VAT: {reason}",
    reason: "Reason: {reason}",
    reduces: "This credit note reduces invoice {invoice} by {amount}.",
    refunded: "An amount already paid is refunded or set against the next invoice.",
    page: "page {n} of {count}",
    payment: "Payment",
};

pub const DE: Labels = Labels {
    code: "de",
    invoice: "RECHNUNG",
    credit_note: "GUTSCHRIFT",
    invoice_number: "Rechnungsnummer",
    credit_note_number: "Gutschriftsnummer",
    credits_invoice: "Zu Rechnung",
    issue_date: "Rechnungsdatum",
    due_date: "Fällig am",
    currency: "Währung",
    subscription_period: "Abonnementzeitraum",
    ai_period: "KI-Guthaben-Zeitraum",
    ai_line: "KI-Credits über das Basisguthaben hinaus",
    components: [
        "Vollnutzer-Plätze",
        "Leser-Plätze",
        "Zusatzmodul Datenmanagement",
    ],
    upgrade: "Upgrade",
    downgrade: "Gutschrift Downgrade",
    prorated: "anteilig {remaining}/{days} Tage ab {date}",
    bill_to: "Rechnungsempfänger",
    serial_number: "Seriennummer",
    customer_tax_id: "USt-IdNr. des Kunden",
    issuer_tax_id: "USt-IdNr.",
    description: "Beschreibung",
    qty: "Menge",
    unit_price: "Einzelpreis",
    amount: "Betrag",
    net: "Nettobetrag",
    tax: "USt. {rate} %",
    total: "Gesamtbetrag",
    terms: "Zahlungsziel: {days} Tage netto. Bitte zahlen Sie {amount} bis zum {date}.",
    quote: "Bitte geben Sie bei der Zahlung die Rechnungsnummer {number} an.",
    arrears:
        "KI-Guthaben wird nachträglich abgerechnet (Verbrauch über das enthaltene Basisguthaben);",
    advance: "Plätze und Zusatzmodule werden für den Abonnementzeitraum im Voraus berechnet.",
    reverse_charge:
        "Steuerschuldnerschaft des Leistungsempfängers (Reverse Charge, Art. 196 MwStSystRL).",
    exempt: "Steuerbefreit: {reason}",
    reason: "Grund: {reason}",
    reduces: "Diese Gutschrift mindert die Rechnung {invoice} um {amount}.",
    refunded:
        "Bereits gezahlte Beträge werden erstattet oder mit der nächsten Rechnung verrechnet.",
    page: "Seite {n} von {count}",
    payment: "Zahlung",
};

pub const FR: Labels = Labels {
    code: "fr",
    invoice: "FACTURE",
    credit_note: "AVOIR",
    invoice_number: "Numéro de facture",
    credit_note_number: "Numéro d'avoir",
    credits_invoice: "Facture créditée",
    issue_date: "Date d'émission",
    due_date: "Date d'échéance",
    currency: "Devise",
    subscription_period: "Période d'abonnement",
    ai_period: "Période de crédits IA",
    ai_line: "Crédits IA au-delà des crédits de base",
    components: ["Sièges complets", "Sièges lecteur", "Module Data Management"],
    upgrade: "mise à niveau",
    downgrade: "avoir de rétrogradation",
    prorated: "au prorata {remaining}/{days} jours à partir du {date}",
    bill_to: "Facturé à",
    serial_number: "Numéro de série",
    customer_tax_id: "N° TVA du client",
    issuer_tax_id: "N° TVA",
    description: "Désignation",
    qty: "Qté",
    unit_price: "Prix unitaire",
    amount: "Montant",
    net: "Montant HT",
    tax: "TVA {rate} %",
    total: "Total TTC",
    terms: "Conditions de paiement : {days} jours net. Veuillez payer {amount} avant le {date}.",
    quote: "Veuillez indiquer le numéro de facture {number} avec votre paiement.",
    arrears: "Les crédits IA sont facturés à terme échu (consommation au-delà des crédits de base inclus) ;",
    advance: "les sièges et options sont facturés d'avance pour la période d'abonnement.",
    reverse_charge: "Autoliquidation : TVA due par le preneur (article 196 de la directive 2006/112/CE).",
    exempt: "Exonération de TVA : {reason}",
    reason: "Motif : {reason}",
    reduces: "Cet avoir réduit la facture {invoice} de {amount}.",
    refunded: "Un montant déjà payé est remboursé ou imputé sur la prochaine facture.",
    page: "page {n} sur {count}",
    payment: "Paiement",
};

pub const ES: Labels = Labels {
    code: "es",
    invoice: "FACTURA",
    credit_note: "FACTURA RECTIFICATIVA",
    invoice_number: "Número de factura",
    credit_note_number: "Número de rectificativa",
    credits_invoice: "Rectifica la factura",
    issue_date: "Fecha de emisión",
    due_date: "Fecha de vencimiento",
    currency: "Moneda",
    subscription_period: "Periodo de suscripción",
    ai_period: "Periodo de créditos de IA",
    ai_line: "Créditos de IA por encima de los créditos base",
    components: ["Puestos completos", "Puestos de lectura", "Complemento Data Management"],
    upgrade: "mejora",
    downgrade: "abono por reducción",
    prorated: "prorrateado {remaining}/{days} días desde el {date}",
    bill_to: "Facturar a",
    serial_number: "Número de serie",
    customer_tax_id: "NIF-IVA del cliente",
    issuer_tax_id: "NIF-IVA",
    description: "Descripción",
    qty: "Cant.",
    unit_price: "Precio unitario",
    amount: "Importe",
    net: "Base imponible",
    tax: "IVA {rate} %",
    total: "Total",
    terms: "Condiciones de pago: {days} días netos. Por favor, pague {amount} antes del {date}.",
    quote: "Indique el número de factura {number} en su pago.",
    arrears: "Los créditos de IA se facturan a período vencido (uso por encima de los créditos base incluidos);",
    advance: "los puestos y complementos se facturan por adelantado para el periodo de suscripción.",
    reverse_charge: "Inversión del sujeto pasivo (artículo 196 de la Directiva 2006/112/CE).",
    exempt: "Exento de IVA: {reason}",
    reason: "Motivo: {reason}",
    reduces: "Esta factura rectificativa reduce la factura {invoice} en {amount}.",
    refunded: "Un importe ya pagado se reembolsa o se compensa con la próxima factura.",
    page: "página {n} de {count}",
    payment: "Pago",
};

pub const JA: Labels = Labels {
    code: "ja",
    invoice: "請求書",
    credit_note: "クレジットノート",
    invoice_number: "請求書番号",
    credit_note_number: "クレジットノート番号",
    credits_invoice: "対象請求書",
    issue_date: "発行日",
    due_date: "支払期日",
    currency: "通貨",
    subscription_period: "契約期間",
    ai_period: "AIクレジット期間",
    ai_line: "基本クレジット超過分のAIクレジット",
    components: ["フルシート", "閲覧者シート", "データ管理アドオン"],
    upgrade: "アップグレード",
    downgrade: "ダウングレード返金",
    prorated: "{date}から{remaining}/{days}日分の日割り",
    bill_to: "請求先",
    serial_number: "シリアル番号",
    customer_tax_id: "お客様の税番号",
    issuer_tax_id: "登録番号",
    description: "内容",
    qty: "数量",
    unit_price: "単価",
    amount: "金額",
    net: "小計（税抜）",
    tax: "消費税等 {rate}%",
    total: "合計",
    terms: "お支払条件：{days}日以内。{date}までに{amount}をお支払いください。",
    quote: "お支払いの際は請求書番号 {number} をご記載ください。",
    arrears: "AIクレジットは後払いで請求されます（基本クレジットを超えた利用分）。",
    advance: "シートとアドオンは契約期間分を前払いで請求します。",
    reverse_charge:
        "リバースチャージ：付加価値税は受領者が納付します（EU指令2006/112/EC 第196条）。",
    exempt: "非課税：{reason}",
    reason: "理由：{reason}",
    reduces: "本クレジットノートにより請求書 {invoice} は {amount} 減額されます。",
    refunded: "お支払い済みの金額は返金、または次回のご請求と相殺されます。",
    page: "{n} / {count} ページ",
    payment: "お支払い",
};

/// The labels of `lang` (unknown → English).
pub fn labels(lang: &str) -> &'static Labels {
    match lang {
        "de" => &DE,
        "fr" => &FR,
        "es" => &ES,
        "ja" => &JA,
        _ => &EN,
    }
}

/// Fills `{name}` placeholders.
pub fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

const MONTHS_EN: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A date as the language writes it.
pub fn date(lang: &str, t: DateTime<Utc>) -> String {
    let (y, m, d) = (t.year(), t.month(), t.day());
    match lang {
        "de" => format!("{d:02}.{m:02}.{y}"),
        "fr" | "es" => format!("{d:02}/{m:02}/{y}"),
        "ja" => format!("{y}年{m}月{d}日"),
        _ => format!("{d} {} {y}", MONTHS_EN[m as usize - 1]),
    }
}

/// An amount with at least two decimals and the language's separators:
/// `1,234.50` (en, ja), `1.234,50` (de, es), `1 234,50` (fr).
pub fn amount(lang: &str, a: Decimal) -> String {
    let plain = accrue_core::money::display(a);
    let (sign, digits) = match plain.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", plain.as_str()),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let (group, point) = match lang {
        "de" | "es" => ('.', ','),
        "fr" => (' ', ','),
        _ => (',', '.'),
    };
    let mut grouped = String::with_capacity(int.len() + int.len() / 3);
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(group);
        }
        grouped.push(c);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}{point}{frac}")
    }
}

/// A rate in percent as the language writes it (`19`, `7,25`).
pub fn rate(lang: &str, r: Decimal) -> String {
    let s = r.normalize().to_string();
    match lang {
        "de" | "es" | "fr" => s.replace('.', ","),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn amounts_and_dates_follow_the_language() {
        assert_eq!(amount("de", dec!(1234.5)), "1.234,50");
        assert_eq!(amount("en", dec!(1234567.891)), "1,234,567.891");
        assert_eq!(amount("fr", dec!(-1234.5)), "-1 234,50");
        assert_eq!(amount("ja", dec!(12)), "12.00");
        assert_eq!(amount("es", dec!(999.99)), "999,99");
        let t: DateTime<Utc> = "2026-02-15T00:00:00Z".parse().unwrap();
        assert_eq!(date("de", t), "15.02.2026");
        assert_eq!(date("ja", t), "2026年2月15日");
        assert_eq!(date("en", t), "15 Feb 2026");
        assert_eq!(rate("de", dec!(7.25)), "7,25");
        assert_eq!(labels("pt").code, "en");
    }
}
