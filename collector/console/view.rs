//! The page layout and what every page shares. maud escapes every value it renders (`&`, `<`,
//! `>`, `"`, `'`), so a hostile name is text; control and bidi characters are further shown as
//! visible escapes, as in the CLI's tables (`present::escape_control`).

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use bannin::time::Timestamp;
use maud::{DOCTYPE, Markup, html};

use super::i18n::Lang;
use crate::present::escape_control;

/// Who is asking, in which language, and on which page (for the language switch's way back).
pub struct Ctx {
    pub lang: Lang,
    pub operator: Option<String>,
    pub here: String,
}

impl Ctx {
    pub fn anonymous(lang: Lang) -> Ctx {
        Ctx {
            lang,
            operator: None,
            here: "/alerts".into(),
        }
    }

    pub fn tr(&self, en: &'static str) -> &'static str {
        self.lang.tr(en)
    }
}

/// A value from an endpoint, with control and bidi characters made visible.
pub fn text(value: &str) -> String {
    escape_control(value).into_owned()
}

/// A time to the second, in UTC; the full RFC 3339 time is in its title.
pub fn ts(ts: Timestamp) -> Markup {
    let full = ts.to_rfc3339();
    let short = full.get(..19).unwrap_or(&full).replace('T', " ");
    html! { time datetime=(full) title=(full) { (short) "Z" } }
}

/// `curl ← bash ← sshd`: a process and its ancestors, nearest first.
pub fn lineage(exe: Option<&str>, ancestors: &[String]) -> String {
    let mut names: Vec<&str> = Vec::new();
    if let Some(exe) = exe {
        names.push(crate::report::short_exe(exe));
    }
    names.extend(
        ancestors
            .iter()
            .map(|a| crate::report::short_exe(a))
            .filter(|name| !name.is_empty()),
    );
    text(&names.join(" ← "))
}

pub fn page(ctx: &Ctx, title: &str, body: Markup) -> Html<String> {
    let nav: [(&str, &'static str); 6] = [
        ("/alerts", "Alerts"),
        ("/agents", "Agents"),
        ("/timeline", "Timeline"),
        ("/search", "Search"),
        ("/scope", "Scope"),
        ("/rules", "Rules"),
    ];
    let back = |code: &str| {
        let mut url = format!("/lang/{code}?back=");
        url.push_str(&percent_encode(&ctx.here));
        url
    };
    Html(
        html! {
            (DOCTYPE)
            html lang=(ctx.lang.code()) {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · bannin" }
                    link rel="stylesheet" href="/static/console.css";
                }
                body {
                    header {
                        a.brand href="/alerts" { "bannin " span.kanji { "番人" } }
                        @if ctx.operator.is_some() {
                            nav {
                                @for (href, label) in nav {
                                    a href=(href) class=[ctx.here.starts_with(href).then_some("here")] { (ctx.tr(label)) }
                                }
                            }
                        }
                        div.side {
                            span.lang {
                                a href=(back("en")) lang="en" { "English" }
                                " · "
                                a href=(back("ja")) lang="ja" { "日本語" }
                            }
                            @if let Some(operator) = &ctx.operator {
                                span.who { (ctx.tr("Signed in as")) " " b id="operator" { (text(operator)) } }
                                form.signout method="post" action="/signout" {
                                    button type="submit" id="signout" { (ctx.tr("Sign out")) }
                                }
                            }
                        }
                    }
                    main {
                        h1 { (title) }
                        (body)
                    }
                }
            }
        }
        .into_string(),
    )
}

/// A page with one message.
pub fn message(ctx: &Ctx, title: &str, message: &str) -> Html<String> {
    page(ctx, title, html! { p.message { (message) } })
}

/// The page after signing in: it moves on to the alerts by itself (a same-site navigation, so
/// the SameSite=Strict cookie goes with it even when the link was opened from another site).
pub fn signed_in(ctx: &Ctx, operator: &str) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang=(ctx.lang.code()) {
                head {
                    meta charset="utf-8";
                    meta http-equiv="refresh" content="0; url=/alerts";
                    title { (ctx.tr("Signed in")) " · bannin" }
                    link rel="stylesheet" href="/static/console.css";
                }
                body {
                    main {
                        h1 { (ctx.tr("Signed in")) }
                        p { (ctx.tr("Signed in as")) " " b { (text(operator)) } }
                        p { a href="/alerts" { (ctx.tr("Continue")) } }
                    }
                }
            }
        }
        .into_string(),
    )
}

pub fn status_page(lang: Lang, status: StatusCode, title: &'static str, detail: &str) -> Response {
    let ctx = Ctx::anonymous(lang);
    (status, message(&ctx, lang.tr(title), &text(detail))).into_response()
}

pub fn error_page(lang: Lang, detail: &str) -> Response {
    tracing::warn!(error = %detail, "console request failed");
    status_page(lang, StatusCode::INTERNAL_SERVER_ERROR, "Error", detail)
}

/// Percent-encodes everything but unreserved characters, for a value put in a URL.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A query string from name and value pairs, leaving out empty values.
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| {
            value
                .filter(|v| !v.is_empty())
                .map(|v| format!("{name}={}", percent_encode(v)))
        })
        .collect();
    parts.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_render_as_text() {
        let ctx = Ctx {
            lang: Lang::En,
            operator: Some("<script>alert(1)</script>".into()),
            here: "/alerts?x=\"><img src=x onerror=alert(1)>".into(),
        };
        let hostile = "<img src=x onerror=alert(1)>.csv\u{202e}";
        let Html(body) = page(&ctx, &text(hostile), html! { p { (text(hostile)) } });
        assert!(!body.contains("<img"), "{body}");
        assert!(!body.contains("<script>"), "{body}");
        assert!(
            body.contains("&lt;img src=x onerror=alert(1)&gt;.csv\\u{202e}"),
            "{body}"
        );
        assert!(!body.contains('\u{202e}'));
        // The way back is a query value, encoded: it cannot close the attribute.
        assert!(body.contains("back=%2Falerts%3Fx%3D%22%3E%3Cimg"), "{body}");
    }

    #[test]
    fn lineage_reads_nearest_first() {
        assert_eq!(
            lineage(
                Some("/usr/bin/curl"),
                &["/bin/bash".into(), "/usr/sbin/sshd".into()]
            ),
            "curl ← bash ← sshd"
        );
    }
}
