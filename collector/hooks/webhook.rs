//! Webhook delivery: an HTTP POST of the alert as JSON, as a chat message with a `text` field
//! (Slack, Mattermost), or as an Adaptive Card message (Microsoft Teams workflows).
//!
//! Alerts quote names an attacker chooses (file names above all), so every chat body escapes the
//! receiver's markup: a file named `<!here> <mailto:x@evil.example|Reset your password>.csv` must
//! arrive as text, not as a channel-wide ping with a phishing link.

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Certificate, Client, StatusCode, Url, redirect};

use super::config::WebhookFormat;
use super::{Delivery, DeliveryError, HooksError};
use crate::alert::Alert;
use crate::present::escape_control;

/// The header receivers de-duplicate on (the IETF httpapi draft's name, as Stripe and others use).
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const ALERT_ID_HEADER: &str = "x-bannin-alert-id";
const DELIVERY_ID_HEADER: &str = "x-bannin-delivery-id";

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
    pub(crate) async fn deliver(
        &self,
        alert: &Alert,
        delivery: &Delivery,
    ) -> Result<(), DeliveryError> {
        let body = body(self.format, alert, delivery)
            .and_then(|body| serde_json::to_vec(&body))
            .map_err(|error| {
                DeliveryError::permanent(format!("cannot encode the alert: {error}"))
            })?;
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            // The same key on every attempt of this delivery: a receiver that saw it already (the
            // collector was killed before it recorded the reply) can drop the repeat.
            .header(IDEMPOTENCY_KEY, &delivery.delivery_id)
            .header(ALERT_ID_HEADER, &delivery.alert_id)
            .header(DELIVERY_ID_HEADER, &delivery.delivery_id)
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

/// The request body for `format`, carrying the alert id and the delivery id beside the message.
pub(super) fn body(
    format: WebhookFormat,
    alert: &Alert,
    delivery: &Delivery,
) -> serde_json::Result<serde_json::Value> {
    let ids = |mut value: serde_json::Value| {
        if let Some(object) = value.as_object_mut() {
            object.insert("alert_id".into(), delivery.alert_id.clone().into());
            object.insert("delivery_id".into(), delivery.delivery_id.clone().into());
        }
        value
    };
    Ok(match format {
        WebhookFormat::Json => ids(serde_json::to_value(alert)?),
        WebhookFormat::Slack => ids(serde_json::json!({ "text": chat_text(alert) })),
        WebhookFormat::Teams => ids(teams_card(alert, delivery)),
    })
}

/// The one-line chat form: `[bannin] HIGH rule on host: summary`, with the count when de-duplication
/// folded several occurrences into the alert. Every part is escaped with [`slack_escape`].
pub(crate) fn chat_text(alert: &Alert) -> String {
    let mut text = format!(
        "[bannin] {} {} on {}: {}",
        alert.severity.as_str().to_uppercase(),
        slack_escape(&alert.rule),
        slack_escape(&alert.host),
        slack_escape(&alert.summary)
    );
    if alert.count > 1 {
        text.push_str(&format!(" (x{})", alert.count));
    }
    text
}

/// Text that Slack and Mattermost show as it is. Slack parses `&`, `<` and `>` as control
/// characters (`<!here>`, `<url|label>`) and wants them as HTML entities, which Mattermost's
/// Markdown shows as the characters too. Mattermost also turns `@channel`, `@here`, `@all` and
/// `@user` into mentions and `[label](url)` into links whatever the payload says, so a word joiner
/// (invisible) follows each `@` and parts each `](`. Control characters are escaped visibly, so a
/// line break cannot start a Markdown block or a forged line.
pub(crate) fn slack_escape(text: &str) -> String {
    let text = escape_control(text);
    let mut out = String::with_capacity(text.len() + 8);
    let mut previous = None;
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => out.push_str("@\u{2060}"),
            '(' if previous == Some(']') => out.push_str("\u{2060}("),
            c => out.push(c),
        }
        previous = Some(c);
    }
    out
}

/// Text that an Adaptive Card's TextBlock shows as it is. Cards render a Markdown subset (links
/// `[label](url)`, emphasis) and `{{DATE(...)}}`/`{{TIME(...)}}` functions, and do not decode HTML
/// entities: a word joiner parts each `](` and `{{`, and control characters are escaped visibly.
pub(crate) fn teams_escape(text: &str) -> String {
    let text = escape_control(text);
    let mut out = String::with_capacity(text.len() + 8);
    let mut previous = None;
    for c in text.chars() {
        match c {
            '(' if previous == Some(']') => out.push_str("\u{2060}("),
            '{' if previous == Some('{') => out.push_str("\u{2060}{"),
            c => out.push(c),
        }
        previous = Some(c);
    }
    out
}

/// A Teams message with one Adaptive Card: Teams workflows ("When a Teams webhook request is
/// received") post the card attachments of such a message and reject a bare `text`.
fn teams_card(alert: &Alert, delivery: &Delivery) -> serde_json::Value {
    let fact = |title: &str, value: String| serde_json::json!({ "title": title, "value": value });
    let mut facts = vec![
        fact("Severity", alert.severity.as_str().to_uppercase()),
        fact("Rule", teams_escape(&alert.rule)),
        fact("Host", teams_escape(&alert.host)),
        fact("Time", alert.ts.to_rfc3339()),
    ];
    if alert.count > 1 {
        facts.push(fact("Occurrences", alert.count.to_string()));
    }
    facts.push(fact("Alert", teams_escape(&delivery.alert_id)));
    facts.push(fact("Delivery", teams_escape(&delivery.delivery_id)));
    let title = format!(
        "[bannin] {} {} on {}",
        alert.severity.as_str().to_uppercase(),
        alert.rule,
        alert.host
    );
    serde_json::json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {
                        "type": "TextBlock",
                        "text": teams_escape(&title),
                        "weight": "Bolder",
                        "size": "Medium",
                        "wrap": true
                    },
                    { "type": "TextBlock", "text": teams_escape(&alert.summary), "wrap": true },
                    { "type": "FactSet", "facts": facts }
                ]
            }
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_text_escapes_slack_and_mattermost_markup() {
        let text = slack_escape(
            "<!here> <mailto:x@evil.example|Reset> @channel [Reset](evil.example) a&b\n2026 \x1b[2J",
        );
        assert_eq!(
            text,
            "&lt;!here&gt; &lt;mailto:x@\u{2060}evil.example|Reset&gt; @\u{2060}channel \
             [Reset]\u{2060}(evil.example) a&amp;b\\n2026 \\x1b[2J"
        );
    }

    #[test]
    fn teams_text_parts_links_and_template_functions() {
        assert_eq!(
            teams_escape("[Reset](evil.example) {{DATE(2017-02-14T06:08:39Z)}}\r\n"),
            "[Reset]\u{2060}(evil.example) {\u{2060}{DATE(2017-02-14T06:08:39Z)}}\\r\\n"
        );
    }
}
