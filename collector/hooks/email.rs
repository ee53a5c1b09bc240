//! E-mail delivery over SMTP: STARTTLS, implicit TLS or (for a local relay) plain text, optional AUTH.

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::config::{EmailSettings, SmtpTls};
use super::{Delivery, DeliveryError, HooksError};
use crate::alert::Alert;
use crate::present::escape_control;

pub(crate) struct EmailSink {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    settings: EmailSettings,
}

impl EmailSink {
    pub(crate) fn new(settings: EmailSettings) -> Result<Self, HooksError> {
        let tls_error = |source| HooksError::Smtp {
            host: settings.host.clone(),
            source,
        };
        let tls_parameters = || -> Result<TlsParameters, HooksError> {
            let mut builder = TlsParameters::builder(settings.host.clone());
            if let Some(pem) = &settings.extra_roots_pem {
                builder =
                    builder.add_root_certificate(Certificate::from_pem(pem).map_err(tls_error)?);
            }
            builder.build().map_err(tls_error)
        };
        let tls = match settings.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Opportunistic => Tls::Opportunistic(tls_parameters()?),
            SmtpTls::Starttls => Tls::Required(tls_parameters()?),
            SmtpTls::Implicit => Tls::Wrapper(tls_parameters()?),
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.clone())
                .port(settings.port)
                .tls(tls)
                .timeout(Some(settings.timeout));
        if let Some((user, password)) = &settings.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(EmailSink {
            transport: builder.build(),
            settings,
        })
    }

    /// One message to every recipient. SMTP 5xx replies are permanent failures, except the 53x
    /// authentication replies: a wrong password is the operator's to fix, and the alerts should still
    /// go out once it is. Everything else (connection refused, 4xx, timeouts, TLS trouble) is transient.
    pub(crate) async fn deliver(
        &self,
        alert: &Alert,
        delivery: &Delivery,
    ) -> Result<(), DeliveryError> {
        let message = self.message(alert, delivery)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(error) => {
                let authentication = error
                    .status()
                    .is_some_and(|code| code.to_string().starts_with("53"));
                let permanent = error.is_permanent() && !authentication;
                let mut text = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(inner) = source {
                    text.push_str(": ");
                    text.push_str(&inner.to_string());
                    source = inner.source();
                }
                Err(DeliveryError {
                    message: text,
                    permanent,
                    retry_after: None,
                })
            }
        }
    }

    /// The subject and the summary line quote names from agents: escaped, a line break in one can
    /// neither add a header nor forge a line of the body. The JSON below is escaped by JSON itself.
    pub(super) fn message(
        &self,
        alert: &Alert,
        delivery: &Delivery,
    ) -> Result<Message, DeliveryError> {
        let body = text(alert, delivery)?;
        let header = |name: &'static str, value: &str| {
            HeaderValue::new(HeaderName::new_from_ascii_str(name), value.to_string())
        };
        let mut builder = Message::builder()
            .from(self.settings.from.clone())
            .subject(subject(alert))
            // One Message-ID per delivery: mail systems and people can tell a resend from a new alert.
            .message_id(Some(format!("<{}@bannin>", delivery.delivery_id)))
            .raw_header(header("X-Bannin-Alert-Id", &delivery.alert_id))
            .raw_header(header("X-Bannin-Delivery-Id", &delivery.delivery_id))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.settings.to {
            builder = builder.to(to.clone());
        }
        builder
            .body(body)
            .map_err(|error| DeliveryError::permanent(format!("cannot build the message: {error}")))
    }
}

/// The mail's text before transfer encoding: the summary, the ids, then the alert as JSON.
pub(super) fn text(alert: &Alert, delivery: &Delivery) -> Result<String, DeliveryError> {
    let json = serde_json::to_string_pretty(alert)
        .map_err(|error| DeliveryError::permanent(format!("cannot encode the alert: {error}")))?;
    let mut body = format!("{}\n", escape_control(&alert.summary));
    if alert.count > 1 {
        body.push_str(&format!("\nOccurrences: {}\n", alert.count));
    }
    body.push_str(&format!(
        "\nAlert: {}\nDelivery: {}\n",
        delivery.alert_id, delivery.delivery_id
    ));
    body.push_str(&format!("\n{json}\n"));
    Ok(body)
}

/// `[bannin] SEVERITY rule on host`, e.g. `[bannin] HIGH large-export-deleted on db1`.
pub(crate) fn subject(alert: &Alert) -> String {
    let subject = format!(
        "[bannin] {} {} on {}",
        alert.severity.as_str().to_uppercase(),
        alert.rule,
        alert.host
    );
    escape_control(&subject).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mail_subject_stays_one_line() {
        let mut hostile = crate::hooks::tests::alert("alert-1", 1);
        hostile.host = "db1\r\nBcc: x@evil.example".into();
        assert_eq!(
            subject(&hostile),
            "[bannin] HIGH large_export_created_then_deleted on db1\\r\\nBcc: x@evil.example"
        );
    }
}
