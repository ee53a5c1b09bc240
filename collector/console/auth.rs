//! Signing in with a one-time link, the session cookie, and signing out.
//!
//! The link's token and the session's secret are kept in the store only as SHA-256 hashes and are
//! looked up by hash, so comparing them takes the same time whatever the guess shares with a real
//! one. A session is checked against the store on every request, joined with its operator's row:
//! revoking the operator ends it at once.

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::i18n::Lang;
use super::view::{self, Ctx};
use super::{Shared, secret};

/// `__Host-`: the browser keeps it only if Secure, for this host and path `/`, so a neighbouring
/// host cannot plant one for the console (session fixation by cookie tossing).
pub const COOKIE: &str = "__Host-bannin_session";

/// The signed-in operator, put in the request by [`require_session`].
#[derive(Debug, Clone)]
pub struct Operator(pub String);

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The longest session cookie looked up; anything longer is not one the console issued.
const MAX_SECRET: usize = 128;

/// Lets the request through only with a session the store says is open, unexpired, and whose
/// operator is active now.
pub async fn require_session(
    State(console): State<Shared>,
    mut request: Request,
    next: Next,
) -> Response {
    let lang = Lang::of(request.headers());
    let session = cookie(request.headers(), COOKIE)
        .filter(|s| s.len() <= MAX_SECRET)
        .map(str::to_string);
    let Some(session) = session else {
        return not_signed_in(lang);
    };
    let found = tokio::task::spawn_blocking(move || console.store.session_operator(&session)).await;
    match found {
        Ok(Ok(Some(operator))) => {
            request.extensions_mut().insert(Operator(operator));
            next.run(request).await
        }
        Ok(Ok(None)) => not_signed_in(lang),
        Ok(Err(error)) => view::error_page(lang, &error.to_string()),
        Err(_) => view::error_page(lang, "the session check failed"),
    }
}

fn not_signed_in(lang: Lang) -> Response {
    let ctx = Ctx::anonymous(lang);
    (
        StatusCode::UNAUTHORIZED,
        view::message(
            &ctx,
            lang.tr("Not signed in"),
            lang.tr("Ask for a sign-in link: bannin-collector console link --operator NAME"),
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
pub struct SignIn {
    token: Option<String>,
}

fn session_cookie(value: &str, max_age: u64) -> String {
    format!("{COOKIE}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict")
}

/// `GET /signin?token=...`: spends the link and starts a fresh session, and ends any session the
/// browser already had: the console only ever accepts sessions it created at a sign-in, never one
/// the browser brought along (session fixation).
pub async fn sign_in(
    State(console): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<SignIn>,
) -> Response {
    let lang = Lang::of(&headers);
    let ctx = Ctx::anonymous(lang);
    let Some(token) = query
        .token
        .filter(|t| !t.is_empty() && t.len() <= MAX_SECRET)
    else {
        return (
            StatusCode::UNAUTHORIZED,
            view::message(
                &ctx,
                lang.tr("Sign in"),
                lang.tr("Ask for a sign-in link: bannin-collector console link --operator NAME"),
            ),
        )
            .into_response();
    };
    let session = match secret("bcs_") {
        Ok(session) => session,
        Err(error) => return view::error_page(lang, &error.to_string()),
    };
    let previous = cookie(&headers, COOKIE)
        .filter(|s| s.len() <= MAX_SECRET)
        .map(str::to_string);
    let lifetime = console.config.console.session_lifetime;
    let new = session.clone();
    // Only a sign-in that worked replaces the browser's session: a bad link changes nothing.
    let outcome = tokio::task::spawn_blocking(move || {
        console
            .store
            .sign_in(&token, &new, lifetime, previous.as_deref())
    })
    .await;
    match outcome {
        Ok(Ok(Ok(operator))) => {
            tracing::info!(operator = %operator, "console sign-in");
            let page = view::signed_in(&Ctx::anonymous(lang), &operator);
            (
                [(
                    header::SET_COOKIE,
                    session_cookie(&session, lifetime.as_secs()),
                )],
                page,
            )
                .into_response()
        }
        Ok(Ok(Err(refusal))) => {
            tracing::warn!(reason = refusal.as_str(), "console sign-in refused");
            (
                StatusCode::FORBIDDEN,
                view::message(
                    &ctx,
                    lang.tr("Sign-in refused"),
                    lang.tr(
                        "This sign-in link is not valid: it was used already, has expired, or its operator was revoked. Ask for a new one.",
                    ),
                ),
            )
                .into_response()
        }
        Ok(Err(error)) => view::error_page(lang, &error.to_string()),
        Err(_) => view::error_page(lang, "sign-in failed"),
    }
}

/// Whether a state-changing request comes from the console's own pages: the browser's
/// `Sec-Fetch-Site`, else its `Origin` against the `Host` it asked for. A request with neither
/// is refused.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin == format!("https://{host}"),
        _ => false,
    }
}

/// `POST /signout`: ends the session. Only from the console's own page (a cross-site form gets a
/// 403, and SameSite=Strict keeps the cookie off it anyway).
pub async fn sign_out(State(console): State<Shared>, headers: HeaderMap) -> Response {
    let lang = Lang::of(&headers);
    let ctx = Ctx::anonymous(lang);
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            view::message(
                &ctx,
                lang.tr("Sign out"),
                lang.tr("Refused: the request did not come from the console."),
            ),
        )
            .into_response();
    }
    if let Some(session) = cookie(&headers, COOKIE)
        .filter(|s| s.len() <= MAX_SECRET)
        .map(str::to_string)
    {
        let ended = tokio::task::spawn_blocking(move || console.store.end_session(&session)).await;
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return view::error_page(lang, &error.to_string()),
            Err(_) => return view::error_page(lang, "sign-out failed"),
        }
    }
    (
        [(header::SET_COOKIE, session_cookie("", 0))],
        view::message(
            &ctx,
            lang.tr("Signed out"),
            lang.tr("You are signed out. A new sign-in needs a new link."),
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn reads_the_session_cookie_among_others() {
        let map = headers(&[("cookie", "a=1; __Host-bannin_session=bcs_x; b=2")]);
        assert_eq!(cookie(&map, COOKIE), Some("bcs_x"));
        assert_eq!(
            cookie(&headers(&[("cookie", "bannin_session=x")]), COOKIE),
            None
        );
    }

    #[test]
    fn sign_out_needs_the_consoles_own_origin() {
        assert!(same_origin(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(same_origin(&headers(&[
            ("origin", "https://127.0.0.1:8443"),
            ("host", "127.0.0.1:8443")
        ])));
        assert!(!same_origin(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8443")
        ])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8443")])));
    }
}
