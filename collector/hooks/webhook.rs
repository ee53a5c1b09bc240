//! Webhook delivery: an HTTP POST of the alert as JSON, or as a chat message with a `text` field.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Certificate, Client, StatusCode, Url, redirect};

use super::DeliveryError;
use super::HooksError;
use super::config::WebhookFormat;
use crate::alert::Alert;
use crate::output::escape_control;

/// The most of a reply's body the collector reads, to quote in the delivery's error. A receiver may
/// answer with gigabytes, again on every retry; the rest is never read.
const MAX_REPLY_BODY: usize = 4096;
/// How much of that body (and of a redirect's `Location`) the error quotes.
const QUOTED_CHARS: usize = 200;

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
        // `timeout` bounds the whole exchange, reading the reply included. Redirects are not
        // followed: a receiver must not be able to have the alert posted somewhere the operator
        // did not configure.
        let mut builder = Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(redirect::Policy::none())
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
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .map(|value| quote(value.as_bytes()))
                .unwrap_or_default();
            return Err(DeliveryError::permanent(format!(
                "HTTP {status}: redirects are not followed; configure the final URL (location \"{location}\")"
            )));
        }
        let body = read_bounded(response, MAX_REPLY_BODY).await;
        let snippet = quote(&body);
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

/// At most `limit` bytes of the reply's body; the rest is left unread and the connection dropped.
/// A body that fails half-way gives what arrived.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// The first characters of a receiver's text, safe to log and print.
fn quote(bytes: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(bytes)
        .chars()
        .take(QUOTED_CHARS)
        .collect();
    escape_control(&text).into_owned()
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
