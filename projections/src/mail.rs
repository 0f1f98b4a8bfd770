//! Alert and notice emails: templates in five languages, message building
//! with lettre, and the two transports (SMTP relay, or `.eml` files in the
//! data folder's outbox). No card data ever reaches a mail: events hold none.

use std::path::{Path, PathBuf};

use accrue_core::events::InvoiceIssued;
use accrue_core::{email_language, AccountEvent, AccountState};
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{Message, SmtpTransport, Transport};

/// The `X-Accrue-Amount` header: the mail's amount as plain text.
#[derive(Debug, Clone)]
pub struct AccrueAmount(pub String);

impl Header for AccrueAmount {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Accrue-Amount")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AccrueAmount(s.to_string()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// The `Content-Language` header lettre does not ship.
#[derive(Debug, Clone)]
pub struct ContentLanguage(pub String);

impl Header for ContentLanguage {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Content-Language")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ContentLanguage(s.to_string()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// A mail to send, before it becomes MIME.
#[derive(Debug, Clone, PartialEq)]
pub struct Mail {
    pub kind: &'static str,
    /// The address (what a bounce names).
    pub to: String,
    /// The customer's name, for the `To:` header's display name.
    pub to_name: Option<String>,
    /// The amount the mail is about, unformatted (`USD 1234.50`), for the
    /// `X-Accrue-Amount` header.
    pub plain_amount: Option<String>,
    pub language: &'static str,
    pub subject: String,
    pub text: String,
    pub attachment: Option<(String, Vec<u8>)>,
}

struct Texts {
    failure_subject: &'static str,
    failure_body: &'static str,
    invoice_subject: &'static str,
    invoice_body: &'static str,
    subscribed_subject: &'static str,
    subscribed_body: &'static str,
    unsubscribed_subject: &'static str,
    unsubscribed_body: &'static str,
    threshold_subject: &'static str,
    threshold_body: &'static str,
    greeting: &'static str,
    closing: &'static str,
    retry_line: &'static str,
    last_line: &'static str,
    refund_subject: &'static str,
    refund_body: &'static str,
    suspended_subject: &'static str,
    suspended_body: &'static str,
    reinstated_subject: &'static str,
    reinstated_body: &'static str,
    /// The failure mail's link to the customer page (`ACCRUE_PUBLIC_URL`).
    update_line: &'static str,
    /// The closing when an issuer is configured: signed with its name.
    closing_issuer: &'static str,
}

// Placeholders: {name} {number} {amount} {reason} {limit} {date} {percent} {used} {capacity}
fn texts(lang: &str) -> Texts {
    match lang {
        "de" => Texts {
            failure_subject: "Zahlung fehlgeschlagen: Rechnung {number}",
            failure_body: "die Zahlung für Rechnung {number} über {amount} ist fehlgeschlagen.\nGrund: {reason}\nBitte aktualisieren Sie Ihre Zahlungsmethode, damit wir den offenen Betrag von {amount} einziehen können.",
            invoice_subject: "Ihre Rechnung {number}",
            invoice_body: "anbei erhalten Sie Rechnung {number} über {amount}, fällig am {date}.",
            subscribed_subject: "Ihr Limit für zusätzliche KI-Credits: {limit}",
            subscribed_body: "Ihr Limit für zusätzliche KI-Credits beträgt ab sofort {limit} pro Abrechnungszeitraum.",
            unsubscribed_subject: "Zusätzliche KI-Credits gekündigt",
            unsubscribed_body: "Sie haben zusätzliche KI-Credits gekündigt. Ihr aktuelles Limit gilt bis {date}; danach stehen nur noch die Basis-Credits zur Verfügung.",
            threshold_subject: "{percent} % Ihrer KI-Credits verbraucht",
            threshold_body: "Sie haben {used} von {capacity} Ihrer KI-Credits in diesem Zeitraum verbraucht ({percent} %).",
            greeting: "Guten Tag {name},",
            closing: "Mit freundlichen Grüßen\nIhr accrue-Abrechnungsteam",
            retry_line: "Wir versuchen die Zahlung am {retry} erneut. Ist die Rechnung am {suspend} noch offen, wird Ihre Lizenz gesperrt.",
            last_line: "Ist die Rechnung am {suspend} noch offen, wird Ihre Lizenz gesperrt.",
            refund_subject: "Erstattung zu Rechnung {number}",
            refund_body: "wir haben Ihnen {amount} zu Rechnung {number} erstattet.",
            suspended_subject: "Ihre Lizenz ist gesperrt",
            suspended_body: "da Rechnung {number} seit dem {date} unbezahlt ist, wurde Ihre Lizenz gesperrt. Nach Zahlung aller offenen Rechnungen wird sie sofort wieder freigeschaltet.",
            reinstated_subject: "Ihre Lizenz ist wieder aktiv",
            reinstated_body: "vielen Dank für Ihre Zahlung. Ihre Lizenz ist seit dem {date} wieder aktiv.",
            update_line: "Zahlungsmethode aktualisieren: {link}",
            closing_issuer: "Mit freundlichen Grüßen\n{issuer}",
        },
        "fr" => Texts {
            failure_subject: "Échec du paiement : facture {number}",
            failure_body: "le paiement de la facture {number} d'un montant de {amount} a échoué.\nMotif : {reason}\nVeuillez mettre à jour votre moyen de paiement afin que nous puissions encaisser le montant dû de {amount}.",
            invoice_subject: "Votre facture {number}",
            invoice_body: "veuillez trouver ci-joint la facture {number} d'un montant de {amount}, à régler avant le {date}.",
            subscribed_subject: "Votre limite de crédits IA supplémentaires : {limit}",
            subscribed_body: "Votre limite de crédits IA supplémentaires est désormais de {limit} par période.",
            unsubscribed_subject: "Crédits IA supplémentaires résiliés",
            unsubscribed_body: "Vous avez résilié les crédits IA supplémentaires. Votre limite actuelle reste valable jusqu'au {date} ; ensuite, seuls les crédits de base seront disponibles.",
            threshold_subject: "{percent} % de vos crédits IA utilisés",
            threshold_body: "Vous avez utilisé {used} sur {capacity} de vos crédits IA pour cette période ({percent} %).",
            greeting: "Bonjour {name},",
            closing: "Cordialement,\nL'équipe facturation accrue",
            retry_line: "Nous réessaierons le paiement le {retry}. Si la facture est toujours impayée le {suspend}, votre licence sera suspendue.",
            last_line: "Si la facture est toujours impayée le {suspend}, votre licence sera suspendue.",
            refund_subject: "Remboursement de la facture {number}",
            refund_body: "nous vous avons remboursé {amount} sur la facture {number}.",
            suspended_subject: "Votre licence est suspendue",
            suspended_body: "la facture {number} étant impayée depuis le {date}, votre licence a été suspendue. Elle sera rétablie dès le paiement de toutes les factures en retard.",
            reinstated_subject: "Votre licence est rétablie",
            reinstated_body: "merci pour votre paiement. Votre licence est de nouveau active depuis le {date}.",
            update_line: "Mettre à jour votre moyen de paiement : {link}",
            closing_issuer: "Cordialement,\n{issuer}",
        },
        "es" => Texts {
            failure_subject: "Pago fallido: factura {number}",
            failure_body: "el pago de la factura {number} por {amount} ha fallado.\nMotivo: {reason}\nActualice su método de pago para que podamos cobrar el importe pendiente de {amount}.",
            invoice_subject: "Su factura {number}",
            invoice_body: "adjuntamos la factura {number} por {amount}, con vencimiento el {date}.",
            subscribed_subject: "Su límite de créditos de IA adicionales: {limit}",
            subscribed_body: "Su límite de créditos de IA adicionales es ahora de {limit} por período.",
            unsubscribed_subject: "Créditos de IA adicionales cancelados",
            unsubscribed_body: "Ha cancelado los créditos de IA adicionales. Su límite actual sigue vigente hasta el {date}; después solo dispondrá de los créditos base.",
            threshold_subject: "Ha usado el {percent} % de sus créditos de IA",
            threshold_body: "Ha usado {used} de {capacity} de sus créditos de IA en este período ({percent} %).",
            greeting: "Hola {name}:",
            closing: "Atentamente,\nEl equipo de facturación de accrue",
            retry_line: "Volveremos a intentar el cobro el {retry}. Si la factura sigue impagada el {suspend}, su licencia se suspenderá.",
            last_line: "Si la factura sigue impagada el {suspend}, su licencia se suspenderá.",
            refund_subject: "Reembolso de la factura {number}",
            refund_body: "le hemos reembolsado {amount} de la factura {number}.",
            suspended_subject: "Su licencia está suspendida",
            suspended_body: "como la factura {number} sigue impagada desde el {date}, su licencia ha sido suspendida. Se reactivará en cuanto se paguen todas las facturas vencidas.",
            reinstated_subject: "Su licencia vuelve a estar activa",
            reinstated_body: "gracias por su pago. Su licencia vuelve a estar activa desde el {date}.",
            update_line: "Actualizar su método de pago: {link}",
            closing_issuer: "Atentamente,\n{issuer}",
        },
        "ja" => Texts {
            failure_subject: "お支払いに失敗しました：請求書 {number}",
            failure_body: "請求書 {number}（{amount}）のお支払いに失敗しました。\n理由：{reason}\n未払い額 {amount} をお支払いいただけるよう、お支払い方法を更新してください。",
            invoice_subject: "請求書 {number} のご案内",
            invoice_body: "請求書 {number}（{amount}、お支払い期限 {date}）を添付いたします。",
            subscribed_subject: "追加AIクレジットの上限：{limit}",
            subscribed_body: "追加AIクレジットの上限は、本日より期間あたり {limit} です。",
            unsubscribed_subject: "追加AIクレジットの解約",
            unsubscribed_body: "追加AIクレジットを解約しました。現在の上限は {date} まで有効です。その後は基本クレジットのみご利用いただけます。",
            threshold_subject: "AIクレジットの {percent}% を使用しました",
            threshold_body: "今期のAIクレジット {capacity} のうち {used} を使用しました（{percent}%）。",
            greeting: "{name} 様",
            closing: "accrue 請求チーム",
            retry_line: "{retry} にお支払いを再試行します。{suspend} までにお支払いがない場合、ライセンスは停止されます。",
            last_line: "{suspend} までにお支払いがない場合、ライセンスは停止されます。",
            refund_subject: "請求書 {number} の返金",
            refund_body: "請求書 {number} について {amount} を返金いたしました。",
            suspended_subject: "ライセンスが停止されました",
            suspended_body: "請求書 {number} が {date} 以降未払いのため、ライセンスを停止しました。未払いの請求書がすべて支払われ次第、再開されます。",
            reinstated_subject: "ライセンスが再開されました",
            reinstated_body: "お支払いありがとうございます。{date} よりライセンスは再び有効です。",
            update_line: "お支払い方法の更新：{link}",
            closing_issuer: "{issuer}",
        },
        _ => Texts {
            failure_subject: "Payment failed: invoice {number}",
            failure_body: "the payment for invoice {number} of {amount} has failed.\nReason: {reason}\nPlease update your payment method so we can collect the amount due of {amount}.",
            invoice_subject: "Your invoice {number}",
            invoice_body: "please find attached invoice {number} for {amount}, due on {date}.",
            subscribed_subject: "Your additional AI-credit limit: {limit}",
            subscribed_body: "Your additional AI-credit limit is now {limit} per period, effective immediately.",
            unsubscribed_subject: "Additional AI credits cancelled",
            unsubscribed_body: "You have cancelled additional AI credits. Your current limit stays until {date}; after that only your base credits are available.",
            threshold_subject: "You have used {percent}% of your AI credits",
            threshold_body: "You have used {used} of {capacity} of your AI credits this period ({percent}%).",
            greeting: "Hello {name},",
            closing: "Kind regards,\nThe accrue billing team",
            retry_line: "We will retry the payment on {retry}. If the invoice is still unpaid on {suspend}, your license will be suspended.",
            last_line: "If the invoice is still unpaid on {suspend}, your license will be suspended.",
            refund_subject: "Refund for invoice {number}",
            refund_body: "we have refunded {amount} for invoice {number}.",
            suspended_subject: "Your license is suspended",
            suspended_body: "as invoice {number} is unpaid since {date}, your license has been suspended. It is reinstated as soon as every overdue invoice is paid.",
            reinstated_subject: "Your license is active again",
            reinstated_body: "thank you for your payment. Your license is active again since {date}.",
            update_line: "Update your payment method: {link}",
            closing_issuer: "Kind regards,\n{issuer}",
        },
    }
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

/// An amount as the mail's language writes it (`EUR 1.234,50`).
fn money(lang: &str, currency: &str, amount: rust_decimal::Decimal) -> String {
    format!("{currency} {}", crate::locale::amount(lang, amount))
}

/// What the processor's decline code means, as a sentence in the
/// customer's language; `None` for a code we do not know (the mail then
/// names the code as the processor sent it).
pub fn reason_sentence(lang: &str, code: &str) -> Option<&'static str> {
    let code = code.trim().to_ascii_lowercase();
    let i = match code.as_str() {
        "card_declined" | "generic_decline" | "do_not_honor" | "declined" => 0,
        "insufficient_funds" => 1,
        "expired_card" => 2,
        "incorrect_cvc" | "invalid_cvc" => 3,
        "processing_error" => 4,
        "authentication_required" => 5,
        "lost_card" | "stolen_card" | "pickup_card" => 6,
        "incorrect_number" | "invalid_number" => 7,
        _ => return None,
    };
    const EN: [&str; 8] = [
        "Your bank declined the payment.",
        "The card has insufficient funds.",
        "The card has expired.",
        "The card's security code was incorrect.",
        "An error occurred while processing the card; no money was taken.",
        "Your bank asks you to confirm the payment (authentication required).",
        "The card can no longer be used.",
        "The card number was incorrect.",
    ];
    const DE: [&str; 8] = [
        "Ihre Bank hat die Zahlung abgelehnt.",
        "Die Karte ist nicht ausreichend gedeckt.",
        "Die Karte ist abgelaufen.",
        "Die Kartenprüfnummer war falsch.",
        "Bei der Verarbeitung der Karte ist ein Fehler aufgetreten; es wurde nichts abgebucht.",
        "Ihre Bank verlangt eine Bestätigung der Zahlung (Authentifizierung erforderlich).",
        "Die Karte kann nicht mehr verwendet werden.",
        "Die Kartennummer war falsch.",
    ];
    const FR: [&str; 8] = [
        "Votre banque a refusé le paiement.",
        "Le solde de la carte est insuffisant.",
        "La carte a expiré.",
        "Le code de sécurité de la carte était incorrect.",
        "Une erreur s'est produite lors du traitement de la carte ; aucun montant n'a été débité.",
        "Votre banque demande de confirmer le paiement (authentification requise).",
        "La carte ne peut plus être utilisée.",
        "Le numéro de carte était incorrect.",
    ];
    const ES: [&str; 8] = [
        "Su banco ha rechazado el pago.",
        "La tarjeta no tiene fondos suficientes.",
        "La tarjeta ha caducado.",
        "El código de seguridad de la tarjeta era incorrecto.",
        "Se produjo un error al procesar la tarjeta; no se ha cobrado nada.",
        "Su banco solicita confirmar el pago (autenticación requerida).",
        "La tarjeta ya no se puede utilizar.",
        "El número de tarjeta era incorrecto.",
    ];
    const JA: [&str; 8] = [
        "カード会社により決済が拒否されました。",
        "カードの残高が不足しています。",
        "カードの有効期限が切れています。",
        "カードのセキュリティコードが正しくありません。",
        "カードの処理中にエラーが発生しました。請求は行われていません。",
        "カード会社がお支払いの確認（認証）を求めています。",
        "このカードはご利用いただけません。",
        "カード番号が正しくありません。",
    ];
    let table = match lang {
        "de" => &DE,
        "fr" => &FR,
        "es" => &ES,
        "ja" => &JA,
        _ => &EN,
    };
    Some(table[i])
}

/// What a mail says beyond the event: who signs it, and where the
/// customer page is (`ACCRUE_PUBLIC_URL`) for the payment-method link.
#[derive(Debug, Clone, Copy, Default)]
pub struct MailContext<'a> {
    /// The issuer's legal name (SPEC §14), else the built-in team name.
    pub issuer: Option<&'a str>,
    /// The customer page's public address, e.g. `https://billing.example`.
    pub public_url: Option<&'a str>,
}

impl MailContext<'_> {
    /// The link to an account's page: the page reads `#account=` itself.
    fn account_link(&self, account_id: &str) -> Option<String> {
        let base = self.public_url?.trim().trim_end_matches('/');
        if base.is_empty() {
            return None;
        }
        let id: String = url::form_urlencoded::byte_serialize(account_id.as_bytes()).collect();
        Some(format!("{base}/#account={id}"))
    }
}

/// The mail an event causes for an account, if any. `pdf` renders an
/// invoice for the attachment.
pub fn mail_for(
    event: &AccountEvent,
    account: &AccountState,
    cx: &MailContext<'_>,
    pdf: impl Fn(&InvoiceIssued) -> Option<Vec<u8>>,
) -> Option<Mail> {
    let info = account.info.as_ref()?;
    let (to, lang_req) = match &account.payment_method {
        Some(m) => (m.billing_email.clone(), m.email_language.clone()),
        None => (info.billing_email.clone(), info.email_language.to_string()),
    };
    let language = email_language(&lang_req);
    let t = texts(language);
    let cur = &*info.currency;
    // Dates stay ISO in every language (a reader and a filter both parse
    // them); amounts follow the language, and the plain amount travels in
    // the `X-Accrue-Amount` header for mail rules and parsers.
    let day = |d: chrono::DateTime<chrono::Utc>| d.format("%Y-%m-%d").to_string();
    let money = |c: &str, a: rust_decimal::Decimal| money(language, c, a);
    let plain =
        |a: rust_decimal::Decimal| Some(format!("{cur} {}", accrue_core::money::display(a)));
    let mut vars = vec![("name", info.name.clone())];
    match cx.issuer.filter(|i| !i.trim().is_empty()) {
        Some(i) => vars.push(("issuer", i.to_string())),
        None => vars.push(("issuer", String::new())),
    }
    let to_name = Some(info.name.clone()).filter(|n| !n.trim().is_empty());
    let amount = match event {
        AccountEvent::PaymentRefunded(r) => plain(r.amount),
        AccountEvent::InvoiceIssued(i) => plain(i.total),
        AccountEvent::CreditLimitSet(l) => plain(l.limit),
        _ => None,
    };
    let (kind, subject, body, attachment) = match event {
        AccountEvent::PaymentFailed(p) => {
            vars.extend([
                ("number", p.invoice_number.clone()),
                ("amount", money(cur, p.amount_due)),
                (
                    "reason",
                    match reason_sentence(language, &p.reason) {
                        Some(sentence) => format!("{sentence} ({})", p.reason),
                        None => p.reason.clone(),
                    },
                ),
            ]);
            // The dunning reminder: the next retry and the suspension date.
            let case = account.corrections().and_then(|c| {
                c.dunning
                    .iter()
                    .find(|d| d.invoice_number == p.invoice_number)
            });
            let body = match case {
                Some(d) => {
                    vars.push(("suspend", day(d.suspends_at)));
                    let line = match d.next_retry_at() {
                        Some(r) => {
                            vars.push(("retry", day(r)));
                            t.retry_line
                        }
                        None => t.last_line,
                    };
                    format!("{}\n{line}", t.failure_body)
                }
                None => t.failure_body.to_string(),
            };
            let body = match cx.account_link(&info.account_id) {
                Some(link) => {
                    vars.push(("link", link));
                    format!("{body}\n{}", t.update_line)
                }
                None => body,
            };
            return finish(
                "payment_failed",
                t.failure_subject,
                &body,
                None,
                &vars,
                &t,
                (to, to_name),
                language,
                plain(p.amount_due),
            );
        }
        AccountEvent::PaymentRefunded(r) => {
            vars.extend([
                ("number", r.invoice_number.clone()),
                ("amount", money(cur, r.amount)),
            ]);
            ("payment_refunded", t.refund_subject, t.refund_body, None)
        }
        AccountEvent::LicenseSuspended(e) => {
            vars.extend([
                ("number", e.invoice_numbers.join(", ")),
                ("date", day(e.suspended_at)),
            ]);
            (
                "license_suspended",
                t.suspended_subject,
                t.suspended_body,
                None,
            )
        }
        AccountEvent::LicenseReinstated(e) => {
            vars.push(("date", day(e.reinstated_at)));
            (
                "license_reinstated",
                t.reinstated_subject,
                t.reinstated_body,
                None,
            )
        }
        AccountEvent::InvoiceIssued(i) => {
            vars.extend([
                ("number", i.number.clone()),
                ("amount", money(cur, i.total)),
                ("date", day(i.due_date)),
            ]);
            let att = pdf(i).map(|b| (format!("{}.pdf", i.number), b));
            ("invoice_issued", t.invoice_subject, t.invoice_body, att)
        }
        AccountEvent::CreditLimitSet(l) => {
            vars.push(("limit", money(cur, l.limit)));
            (
                "credit_subscription",
                t.subscribed_subject,
                t.subscribed_body,
                None,
            )
        }
        AccountEvent::CreditUnsubscribed(u) => {
            vars.push(("date", day(u.effective_at)));
            (
                "credit_unsubscribed",
                t.unsubscribed_subject,
                t.unsubscribed_body,
                None,
            )
        }
        AccountEvent::CreditThresholdReached(c) => {
            vars.extend([
                ("percent", c.percent.to_string()),
                ("used", money(cur, c.used)),
                ("capacity", money(cur, c.capacity)),
            ]);
            (
                "credit_threshold",
                t.threshold_subject,
                t.threshold_body,
                None,
            )
        }
        _ => return None,
    };
    finish(
        kind,
        subject,
        body,
        attachment,
        &vars,
        &t,
        (to, to_name),
        language,
        amount,
    )
}

/// The mail to the operator when an outgoing webhook endpoint is disabled
/// after 3 days of failed deliveries. Endpoints belong to no account, so it
/// goes to the operator (`to`: the issuer's email, else the sender's own
/// address), in English, signed like every mail.
pub fn endpoint_disabled(
    d: &accrue_core::events::WebhookEndpointDisabled,
    url: &str,
    to: String,
    cx: &MailContext<'_>,
) -> Mail {
    let signature = cx
        .issuer
        .filter(|i| !i.trim().is_empty())
        .unwrap_or("The accrue billing team");
    let text = format!(
        "Hello,\n\nthe webhook endpoint {id} ({url}) failed every delivery for 3 days and was disabled on {date}; it receives no more events.\nLast failure: {reason}\n\nIts attempts are listed at GET /v1/webhook-endpoints/{id}/deliveries. Once the receiver works again, register it again (POST /v1/webhook-endpoints).\n\nKind regards,\n{signature}\n",
        id = d.id,
        date = d.disabled_at.format("%Y-%m-%d %H:%M UTC"),
        reason = d.reason,
    );
    Mail {
        kind: "webhook_endpoint_disabled",
        to,
        to_name: None,
        plain_amount: None,
        language: "en",
        subject: format!("Webhook endpoint {} disabled", d.id),
        text,
        attachment: None,
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    kind: &'static str,
    subject: &str,
    body: &str,
    attachment: Option<(String, Vec<u8>)>,
    vars: &[(&str, String)],
    t: &Texts,
    (to, to_name): (String, Option<String>),
    language: &'static str,
    plain_amount: Option<String>,
) -> Option<Mail> {
    let signed = vars.iter().any(|(k, v)| *k == "issuer" && !v.is_empty());
    let closing = if signed {
        fill(t.closing_issuer, vars)
    } else {
        t.closing.to_string()
    };
    let text = format!(
        "{}\n\n{}\n\n{closing}\n",
        fill(t.greeting, vars),
        fill(body, vars),
    );
    Some(Mail {
        kind,
        to,
        to_name,
        plain_amount,
        language,
        subject: fill(subject, vars),
        text,
        attachment,
    })
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("bad address or message: {0}")]
    Build(String),
    #[error("delivery failed: {0}")]
    Send(String),
    /// The relay refused the mail for good (SMTP 5xx): retrying is useless.
    #[error("refused for good: {0}")]
    Refused(String),
    /// The relay refused the session (TLS, authentication): no mail can go
    /// until the configuration or the relay is fixed. Retried, never lost.
    #[error("SMTP session refused: {0}")]
    Session(String),
}

/// Builds the MIME message. `message_id` makes a re-delivery recognisable
/// as the same mail; `date` is the causing event's time on the ledger's
/// clock (not the wall clock), and the MIME boundaries derive from the
/// message id, so the same cause always builds the same bytes.
pub fn build(
    mail: &Mail,
    from: &str,
    message_id: &str,
    date: chrono::DateTime<chrono::Utc>,
) -> Result<Message, MailError> {
    let from: Mailbox = from
        .parse()
        .map_err(|e| MailError::Build(format!("from: {e}")))?;
    let address: lettre::Address = mail
        .to
        .parse()
        .map_err(|e| MailError::Build(format!("to: {e}")))?;
    let to = Mailbox::new(mail.to_name.clone(), address);
    let html = format!(
        "<!doctype html><html lang=\"{}\"><body>{}</body></html>",
        mail.language,
        mail.text
            .split("\n\n")
            .map(|p| format!("<p>{}</p>", html_escape(p).replace('\n', "<br>")))
            .collect::<String>()
    );
    use sha2::Digest;
    let tag = hex::encode(&sha2::Sha256::digest(message_id.as_bytes())[..16]);
    // "=_" never occurs in quoted-printable or base64 text, and the tag is
    // unguessable from a customer's name: no part can contain a boundary.
    let alternative = MultiPart::alternative()
        .boundary(format!("=_alt_{tag}"))
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(mail.text.clone()),
        )
        .singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(html),
        );
    let builder = Message::builder()
        .from(from)
        .to(to)
        .subject(mail.subject.clone())
        .message_id(Some(message_id.to_string()))
        .date(std::time::SystemTime::from(date))
        .header(ContentLanguage(mail.language.to_string()));
    let builder = match &mail.plain_amount {
        Some(a) => builder.header(AccrueAmount(a.clone())),
        None => builder,
    };
    let msg = match &mail.attachment {
        None => builder.multipart(alternative),
        Some((name, bytes)) => builder.multipart(
            MultiPart::mixed()
                .boundary(format!("=_mix_{tag}"))
                .multipart(alternative)
                .singlepart(
                    Attachment::new(name.clone()).body(
                        bytes.clone(),
                        ContentType::parse("application/pdf")
                            .map_err(|e| MailError::Build(e.to_string()))?,
                    ),
                ),
        ),
    };
    msg.map_err(|e| MailError::Build(e.to_string()))
}

/// A `Message-ID` for `local` under the sender's own domain (RFC 5322
/// wants a domain the sender controls; `localhost` if `from` has none).
pub fn message_id(local: &str, from: &str) -> String {
    let domain = from
        .parse::<Mailbox>()
        .map(|m| m.email.domain().to_string())
        .unwrap_or_else(|_| "localhost".to_string());
    format!("<{local}@{domain}>")
}

/// The address part of a mailbox (`Billing <b@x.example>` → `b@x.example`).
pub fn address_of(mailbox: &str) -> Option<String> {
    mailbox.parse::<Mailbox>().ok().map(|m| m.email.to_string())
}

/// How an SMTP session is secured, from the `--smtp` URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtp://host:port`: plain SMTP, as today, for a relay on the same
    /// host or network. Not opportunistic STARTTLS on purpose: a local relay
    /// with a self-signed certificate would stop taking mail, and a
    /// downgrade-able STARTTLS protects nothing against an active attacker.
    Plain,
    /// `smtp://host:port?tls=opportunistic`: STARTTLS when the server offers
    /// it (the certificate checked), plain otherwise.
    Opportunistic,
    /// `smtp://host:port?tls=required`: STARTTLS or no mail at all.
    StartTls,
    /// `smtps://host:port`: TLS from the first byte (implicit TLS).
    Implicit,
}

/// A parsed `--smtp` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
}

impl SmtpUrl {
    /// `smtp://host[:port][?tls=required|opportunistic|none]` (port 25, or
    /// 587 with `tls=required`) or `smtps://host[:port]` (port 465).
    /// Credentials in the URL are refused: they belong in
    /// `ACCRUE_SMTP_USER` / `ACCRUE_SMTP_PASSWORD`, out of process lists
    /// and logs.
    pub fn parse(url: &str) -> Result<SmtpUrl, MailError> {
        let bad = |why: &str| {
            MailError::Build(format!(
                "{why} (smtp://host:port[?tls=required] or smtps://host:port)"
            ))
        };
        let u = url::Url::parse(url).map_err(|e| bad(&format!("not a URL: {e}")))?;
        if !u.username().is_empty() || u.password().is_some() {
            return Err(bad(
                "no credentials in the URL: set ACCRUE_SMTP_USER and ACCRUE_SMTP_PASSWORD",
            ));
        }
        let implicit = match u.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => return Err(bad(&format!("unknown scheme {other:?}"))),
        };
        let host = u
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?;
        // `[::1]` is a host for URLs; lettre and TLS want the bare address.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if !matches!(u.path(), "" | "/") || u.fragment().is_some() {
            return Err(bad("no path or fragment"));
        }
        let mut tls = None;
        for (k, v) in u.query_pairs() {
            match (k.as_ref(), tls) {
                ("tls", None) => tls = Some(v.into_owned()),
                _ => return Err(bad(&format!("unknown or repeated parameter {k:?}"))),
            }
        }
        let security = match (implicit, tls.as_deref()) {
            (true, None) => SmtpSecurity::Implicit,
            (true, Some(_)) => return Err(bad("smtps:// is always TLS: no tls= parameter")),
            (false, None | Some("none")) => SmtpSecurity::Plain,
            (false, Some("required")) => SmtpSecurity::StartTls,
            (false, Some("opportunistic")) => SmtpSecurity::Opportunistic,
            (false, Some(other)) => {
                return Err(bad(&format!(
                    "tls={other:?}: use tls=required, tls=opportunistic or tls=none"
                )))
            }
        };
        let port = u.port().unwrap_or(match security {
            SmtpSecurity::Implicit => 465,
            SmtpSecurity::StartTls => 587,
            SmtpSecurity::Plain | SmtpSecurity::Opportunistic => 25,
        });
        Ok(SmtpUrl {
            host,
            port,
            security,
        })
    }

    fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// SMTP credentials and trust, from the environment (`ACCRUE_SMTP_USER`,
/// `ACCRUE_SMTP_PASSWORD`, `ACCRUE_SMTP_CA_FILE`). `Debug` never shows the
/// password.
#[derive(Clone, Default)]
pub struct SmtpOptions {
    pub user: Option<String>,
    pub password: Option<String>,
    /// Extra trusted CA certificates (PEM), for a private relay; Mozilla's
    /// roots are always trusted as well, and verification is never off.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for SmtpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpOptions")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl SmtpOptions {
    /// Reads the options from the environment; an empty variable is unset.
    pub fn from_env() -> SmtpOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        SmtpOptions {
            user: var("ACCRUE_SMTP_USER"),
            password: var("ACCRUE_SMTP_PASSWORD"),
            ca_file: var("ACCRUE_SMTP_CA_FILE").map(PathBuf::from),
        }
    }
}

/// How long one SMTP step (connect, TLS, a command) may take.
const SMTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Idle pooled connections are closed after this long.
const SMTP_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Where mail goes.
pub enum MailTransport {
    /// One long-lived, pooled SMTP client: a session (TCP, TLS, AUTH) is
    /// reused for the next mail while the relay keeps it open.
    Smtp {
        transport: Box<SmtpTransport>,
        /// `host:port`, for error messages.
        relay: String,
    },
    /// `.eml` files, one per mail, named by the causing event.
    Outbox(PathBuf),
}

impl MailTransport {
    /// An SMTP client for `url` (see [`SmtpUrl::parse`]), or `None` for the
    /// outbox. A bad URL, a missing or empty CA file, half a credential
    /// pair, or credentials that would cross the network in clear text are
    /// refused here, at start-up, not at the first mail.
    pub fn from_url(
        url: Option<&str>,
        outbox: PathBuf,
        options: &SmtpOptions,
    ) -> Result<MailTransport, MailError> {
        let Some(url) = url else {
            return Ok(MailTransport::Outbox(outbox));
        };
        let u = SmtpUrl::parse(url)?;
        let mut b = SmtpTransport::builder_dangerous(u.host.clone())
            .port(u.port)
            .timeout(Some(SMTP_TIMEOUT))
            .pool_config(PoolConfig::new().max_size(2).idle_timeout(SMTP_IDLE));
        let tls = || tls_parameters(&u.host, options.ca_file.as_deref());
        b = match u.security {
            SmtpSecurity::Plain if options.ca_file.is_some() => {
                return Err(MailError::Build(
                    "ACCRUE_SMTP_CA_FILE is set but the URL is plain smtp://: use smtps:// or ?tls=required".into(),
                ))
            }
            SmtpSecurity::Plain => b.tls(Tls::None),
            SmtpSecurity::Opportunistic => b.tls(Tls::Opportunistic(tls()?)),
            SmtpSecurity::StartTls => b.tls(Tls::Required(tls()?)),
            SmtpSecurity::Implicit => b.tls(Tls::Wrapper(tls()?)),
        };
        match (&options.user, &options.password) {
            (None, None) => {}
            (Some(user), Some(password)) => {
                let encrypted =
                    matches!(u.security, SmtpSecurity::StartTls | SmtpSecurity::Implicit);
                if !encrypted && !u.is_loopback() {
                    return Err(MailError::Build(format!(
                        "ACCRUE_SMTP_USER is set but {}:{} is reached without required TLS: the password would cross the network in clear text; use smtps:// or ?tls=required",
                        u.host, u.port
                    )));
                }
                b = b
                    .credentials(Credentials::new(user.clone(), password.clone()))
                    .authentication(vec![Mechanism::Plain, Mechanism::Login]);
            }
            _ => {
                return Err(MailError::Build(
                    "set both ACCRUE_SMTP_USER and ACCRUE_SMTP_PASSWORD, or neither".into(),
                ))
            }
        }
        Ok(MailTransport::Smtp {
            transport: Box::new(b.build()),
            relay: format!("{}:{}", u.host, u.port),
        })
    }

    pub fn send(&self, msg: &Message, file_key: &str) -> Result<(), MailError> {
        match self {
            MailTransport::Smtp { transport, relay } => transport
                .send(msg)
                .map(drop)
                .map_err(|e| classify(relay, &e)),
            MailTransport::Outbox(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| MailError::Send(e.to_string()))?;
                let path = dir.join(format!("{file_key}.eml"));
                let tmp = dir.join(format!(".{file_key}.eml.tmp"));
                std::fs::write(&tmp, msg.formatted())
                    .and_then(|_| std::fs::rename(&tmp, &path))
                    .map_err(|e| MailError::Send(e.to_string()))
            }
        }
    }
}

/// TLS for `host`: the certificate must chain to Mozilla's roots or to a CA
/// in `ca_file`, and name `host`. There is no switch to turn this off.
fn tls_parameters(host: &str, ca_file: Option<&Path>) -> Result<TlsParameters, MailError> {
    let mut b = TlsParameters::builder(host.to_string());
    if let Some(path) = ca_file {
        let what = |e: &dyn std::fmt::Display| {
            MailError::Build(format!("ACCRUE_SMTP_CA_FILE {}: {e}", path.display()))
        };
        let pem = std::fs::read(path).map_err(|e| what(&e))?;
        // lettre reads a file without certificates as an empty list: say so.
        if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
            return Err(what(&"no PEM certificate in it"));
        }
        b = b.add_root_certificate(Certificate::from_pem(&pem).map_err(|e| what(&e))?);
    }
    b.build_rustls()
        .map_err(|e| MailError::Build(format!("TLS set-up for {host}: {e}")))
}

/// The TLS error behind `e`, if any. lettre reports a failed handshake (an
/// unknown issuer, a wrong name) as a network error around rustls' error;
/// `io::Error::source` skips its own payload, so it is unwrapped by hand.
fn tls_failure(e: &lettre::transport::smtp::Error) -> Option<String> {
    if e.is_tls() {
        return Some(e.to_string());
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(t) = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(t.to_string());
        }
        source = s.source();
    }
    None
}

/// SMTP replies about the session (authentication, encryption), not about
/// one recipient: 530 authentication or STARTTLS required, 534 mechanism
/// too weak, 535 credentials invalid, 538 encryption required.
const SESSION_CODES: [&str; 4] = ["530", "534", "535", "538"];

/// Sorts an SMTP error: a refusal of this mail (a 5xx to its envelope or
/// content) is final; a refusal of the session (TLS, AUTH) holds for every
/// mail until someone fixes the configuration, so it is retried like an
/// outage and the mail is kept.
fn classify(relay: &str, e: &lettre::transport::smtp::Error) -> MailError {
    let code = e.status().map(|c| c.to_string());
    if let Some(why) = tls_failure(e) {
        return MailError::Session(format!(
            "TLS with {relay} failed: {why} (is the relay's CA trusted? set ACCRUE_SMTP_CA_FILE for a private one)"
        ));
    }
    if let Some(code) = code.as_deref().filter(|c| SESSION_CODES.contains(c)) {
        let hint = if code == "535" {
            "authentication failed: check ACCRUE_SMTP_USER / ACCRUE_SMTP_PASSWORD"
        } else {
            "the relay refused the session: check the TLS mode and credentials"
        };
        return MailError::Session(format!("{relay}: {hint} ({e})"));
    }
    if e.to_string().contains("STARTTLS is not supported") {
        return MailError::Session(format!(
            "{relay} does not offer STARTTLS and the URL has tls=required: nothing is sent in clear text"
        ));
    }
    if e.to_string()
        .contains("No compatible authentication mechanism")
    {
        return MailError::Session(format!(
            "{relay} offers neither AUTH PLAIN nor AUTH LOGIN here (some relays offer AUTH only over TLS)"
        ));
    }
    if e.is_permanent() {
        MailError::Refused(e.to_string())
    } else {
        MailError::Send(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<SmtpUrl, String> {
        SmtpUrl::parse(url).map_err(|e| e.to_string())
    }

    fn url(host: &str, port: u16, security: SmtpSecurity) -> Result<SmtpUrl, String> {
        Ok(SmtpUrl {
            host: host.into(),
            port,
            security,
        })
    }

    #[test]
    fn the_url_forms_and_their_default_ports() {
        use SmtpSecurity::*;
        assert_eq!(
            parse("smtp://relay.test:2525"),
            url("relay.test", 2525, Plain)
        );
        assert_eq!(parse("smtp://relay.test"), url("relay.test", 25, Plain));
        assert_eq!(
            parse("smtp://relay.test/?tls=none"),
            url("relay.test", 25, Plain)
        );
        assert_eq!(
            parse("smtp://relay.test?tls=required"),
            url("relay.test", 587, StartTls)
        );
        assert_eq!(
            parse("smtp://relay.test:2587?tls=opportunistic"),
            url("relay.test", 2587, Opportunistic)
        );
        assert_eq!(
            parse("smtps://relay.test"),
            url("relay.test", 465, Implicit)
        );
        assert_eq!(parse("smtps://[::1]:4650"), url("::1", 4650, Implicit));
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for (bad, why) in [
            ("http://relay.test", "scheme"),
            ("smtp://relay.test?tls=yes", "tls=\"yes\""),
            ("smtp://relay.test?tls=required&tls=none", "repeated"),
            ("smtp://relay.test?starttls=1", "unknown"),
            ("smtps://relay.test?tls=required", "always TLS"),
            ("smtp://me:secret@relay.test", "ACCRUE_SMTP_PASSWORD"),
            ("smtp://relay.test/inbox", "path"),
            ("smtp://relay.test:99999", "URL"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("secret"), "{bad}: {e}");
        }
    }

    fn transport(url: &str, options: &SmtpOptions) -> Result<(), String> {
        MailTransport::from_url(Some(url), PathBuf::from("/nonexistent"), options)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn creds() -> SmtpOptions {
        SmtpOptions {
            user: Some("billing".into()),
            password: Some("hunter2".into()),
            ca_file: None,
        }
    }

    #[test]
    fn credentials_never_cross_the_network_in_clear_text() {
        for plain in [
            "smtp://relay.test:25",
            "smtp://relay.test:25?tls=opportunistic",
        ] {
            let e = transport(plain, &creds()).expect_err(plain);
            assert!(e.contains("clear text"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        // A relay on the same host may take AUTH without TLS.
        transport("smtp://127.0.0.1:25", &creds()).unwrap();
        transport("smtp://relay.test?tls=required", &creds()).unwrap();
        transport("smtps://relay.test", &creds()).unwrap();
        let half = SmtpOptions {
            password: None,
            ..creds()
        };
        assert!(transport("smtps://relay.test", &half)
            .unwrap_err()
            .contains("both"));
        assert!(!format!("{:?}", creds()).contains("hunter2"));
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate_and_needs_tls() {
        let dir = std::env::temp_dir().join(format!("accrue-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let with = |p: &Path| SmtpOptions {
            ca_file: Some(p.to_path_buf()),
            ..SmtpOptions::default()
        };
        let e = transport("smtps://relay.test", &with(&empty)).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = transport("smtps://relay.test", &with(&dir.join("missing.pem"))).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        let e = transport("smtp://relay.test", &with(&empty)).unwrap_err();
        assert!(e.contains("plain smtp://"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_same_cause_builds_the_same_bytes_dated_by_the_ledger() {
        let mail = Mail {
            kind: "invoice_issued",
            to: "billing@acme.test".into(),
            to_name: Some("Müller GmbH".into()),
            plain_amount: Some("USD 1234.50".into()),
            language: "en",
            subject: "Your invoice INV-2026-000001".into(),
            text: "Hello,\n\nattached.\n".into(),
            attachment: Some(("INV-2026-000001.pdf".into(), b"%PDF-1.7 test".to_vec())),
        };
        let at: chrono::DateTime<chrono::Utc> = "2026-01-15T00:00:00Z".parse().unwrap();
        let one = build(&mail, "Billing <billing@accrue.test>", "<7.ab@accrue>", at)
            .unwrap()
            .formatted();
        let two = build(&mail, "Billing <billing@accrue.test>", "<7.ab@accrue>", at)
            .unwrap()
            .formatted();
        assert_eq!(one, two);
        let text = String::from_utf8(one).unwrap();
        assert!(
            text.contains("Date: Thu, 15 Jan 2026 00:00:00 +0000"),
            "{text}"
        );
        // The customer's name in `To:` (RFC 2047-encoded, it is not ASCII).
        assert!(text.contains("<billing@acme.test>"), "{text}");
        assert!(!text.contains("To: billing@acme.test"), "{text}");
        assert!(text.contains("X-Accrue-Amount: USD 1234.50"), "{text}");
    }

    #[test]
    fn message_ids_carry_the_senders_domain() {
        assert_eq!(
            message_id("7.ab", "Billing <billing@nordlicht.example>"),
            "<7.ab@nordlicht.example>"
        );
        assert_eq!(message_id("7.ab", "billing@b.example"), "<7.ab@b.example>");
        assert_eq!(message_id("7.ab", "not an address"), "<7.ab@localhost>");
    }

    #[test]
    fn decline_codes_become_sentences_in_the_language() {
        assert_eq!(
            reason_sentence("de", "insufficient_funds"),
            Some("Die Karte ist nicht ausreichend gedeckt.")
        );
        assert_eq!(
            reason_sentence("en", "Card_Declined"),
            Some("Your bank declined the payment.")
        );
        assert!(reason_sentence("ja", "expired_card")
            .unwrap()
            .contains("有効期限"));
        assert_eq!(reason_sentence("fr", "something_new"), None);
    }
}
