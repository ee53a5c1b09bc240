//! Webhook delivery: an HTTP POST of the alert as JSON, or as a chat message with a `text` field.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Certificate, Client, StatusCode, Url};

use super::DeliveryError;
use super::HooksError;
use super::config::WebhookFormat;
use crate::alert::Alert;

pub(crate) struct WebhookSink {
    client: Client,
    url: Url,
    format: WebhookFormat,
}

impl WebhookSink {
    pub(crate) fn new(
        url: Url,
        format: WebhookFormat,
        timeout: Duration,
        extra_roots_pem: Option<&[u8]>,
    ) -> Result<Self, HooksError> {
        let mut builder = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("bannin-collector/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = extra_roots_pem {
            let roots = Certificate::from_pem_bundle(pem)
                .map_err(|source| HooksError::HttpClient { source })?;
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let client = builder
            .build()
            .map_err(|source| HooksError::HttpClient { source })?;
        Ok(WebhookSink {
            client,
            url,
            format,
        })
    }

    /// One POST. 2xx is success; anything else is a failure, permanent for 4xx other than 408 and 429
    /// (the receiver will not take this body), transient otherwise.
    pub(crate) async fn deliver(&self, alert: &Alert) -> Result<(), DeliveryError> {
        let body = match self.format {
            WebhookFormat::Json => serde_json::to_vec(alert),
            WebhookFormat::Slack => {
                serde_json::to_vec(&serde_json::json!({ "text": chat_text(alert) }))
            }
        }
        .map_err(|error| DeliveryError::permanent(format!("cannot encode the alert: {error}")))?;
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            // reqwest's error text includes the URL, which for chat webhooks is a secret.
            .map_err(|error| DeliveryError::transient(describe_send_error(&error)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.text().await.unwrap_or_default();
        let snippet: String = body.chars().take(200).collect();
        let message = if snippet.trim().is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {}", snippet.trim())
        };
        let permanent = status.is_client_error()
            && status != StatusCode::REQUEST_TIMEOUT
            && status != StatusCode::TOO_MANY_REQUESTS;
        Err(DeliveryError {
            message,
            permanent,
            retry_after,
        })
    }
}

fn describe_send_error(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {cause}")
    }
}

/// The one-line chat form: `[bannin] HIGH rule on host: summary`, with the count when de-duplication
/// folded several occurrences into the alert.
pub(crate) fn chat_text(alert: &Alert) -> String {
    let mut text = format!(
        "[bannin] {} {} on {}: {}",
        alert.severity.as_str().to_uppercase(),
        alert.rule,
        alert.host,
        alert.summary
    );
    if alert.count > 1 {
        text.push_str(&format!(" (x{})", alert.count));
    }
    text
}
