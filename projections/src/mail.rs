//! Alert and notice emails: templates in five languages, message building
//! with lettre, and the two transports (SMTP relay, or `.eml` files in the
//! data folder's outbox). No card data ever reaches a mail: events hold none.

use std::path::PathBuf;

use accrue_core::events::InvoiceIssued;
use accrue_core::money::display;
use accrue_core::{email_language, AccountEvent, AccountState};
use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{Message, SmtpTransport, Transport};

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
    pub to: String,
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

fn money(currency: &str, amount: rust_decimal::Decimal) -> String {
    format!("{currency} {}", display(amount))
}

/// The mail an event causes for an account, if any. `pdf` renders an
/// invoice for the attachment.
pub fn mail_for(
    event: &AccountEvent,
    account: &AccountState,
    pdf: impl Fn(&InvoiceIssued) -> Option<Vec<u8>>,
) -> Option<Mail> {
    let info = account.info.as_ref()?;
    let (to, lang_req) = match &account.payment_method {
        Some(m) => (m.billing_email.clone(), m.email_language.clone()),
        None => (info.billing_email.clone(), info.email_language.to_string()),
    };
    let language = email_language(&lang_req);
    let t = texts(language);
    let cur = info.currency.as_str();
    let day = |d: chrono::DateTime<chrono::Utc>| d.format("%Y-%m-%d").to_string();
    let mut vars = vec![("name", info.name.clone())];
    let (kind, subject, body, attachment) = match event {
        AccountEvent::PaymentFailed(p) => {
            vars.extend([
                ("number", p.invoice_number.clone()),
                ("amount", money(cur, p.amount_due)),
                ("reason", p.reason.clone()),
            ]);
            // The dunning reminder: the next retry and the suspension date.
            let case = account
                .corrections()
                .and_then(|c| c.dunning.iter().find(|d| d.invoice_number == p.invoice_number));
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
            return finish(
                "payment_failed",
                t.failure_subject,
                &body,
                None,
                &vars,
                &t,
                to,
                language,
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
    finish(kind, subject, body, attachment, &vars, &t, to, language)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    kind: &'static str,
    subject: &str,
    body: &str,
    attachment: Option<(String, Vec<u8>)>,
    vars: &[(&str, String)],
    t: &Texts,
    to: String,
    language: &'static str,
) -> Option<Mail> {
    let text = format!(
        "{}\n\n{}\n\n{}\n",
        fill(t.greeting, vars),
        fill(body, vars),
        t.closing
    );
    Some(Mail {
        kind,
        to,
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
}

/// Builds the MIME message. `message_id` makes a re-delivery recognisable
/// as the same mail.
pub fn build(mail: &Mail, from: &str, message_id: &str) -> Result<Message, MailError> {
    let from: Mailbox = from
        .parse()
        .map_err(|e| MailError::Build(format!("from: {e}")))?;
    let to: Mailbox = mail
        .to
        .parse()
        .map_err(|e| MailError::Build(format!("to: {e}")))?;
    let html = format!(
        "<!doctype html><html lang=\"{}\"><body>{}</body></html>",
        mail.language,
        mail.text
            .split("\n\n")
            .map(|p| format!("<p>{}</p>", html_escape(p).replace('\n', "<br>")))
            .collect::<String>()
    );
    let alternative = MultiPart::alternative()
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
        .header(ContentLanguage(mail.language.to_string()));
    let msg = match &mail.attachment {
        None => builder.multipart(alternative),
        Some((name, bytes)) => builder.multipart(
            MultiPart::mixed().multipart(alternative).singlepart(
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

/// Where mail goes.
pub enum MailTransport {
    Smtp(Box<SmtpTransport>),
    /// `.eml` files, one per mail, named by the causing event.
    Outbox(PathBuf),
}

impl MailTransport {
    /// `smtp://host:port` (plain SMTP to a relay), or `None` for the outbox.
    pub fn from_url(url: Option<&str>, outbox: PathBuf) -> Result<MailTransport, MailError> {
        let Some(url) = url else {
            return Ok(MailTransport::Outbox(outbox));
        };
        let rest = url.strip_prefix("smtp://").ok_or_else(|| {
            MailError::Build(format!("{url:?}: only smtp://host:port is supported"))
        })?;
        let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| MailError::Build(format!("bad port in {url:?}")))?,
            ),
            None => (rest.trim_end_matches('/').to_string(), 25),
        };
        let t = SmtpTransport::builder_dangerous(host)
            .port(port)
            .timeout(Some(std::time::Duration::from_secs(10)))
            .build();
        Ok(MailTransport::Smtp(Box::new(t)))
    }

    pub fn send(&self, msg: &Message, file_key: &str) -> Result<(), MailError> {
        match self {
            MailTransport::Smtp(t) => t.send(msg).map(drop).map_err(|e| {
                if e.is_permanent() {
                    MailError::Refused(e.to_string())
                } else {
                    MailError::Send(e.to_string())
                }
            }),
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
