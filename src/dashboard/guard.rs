//! Who may use the dashboard: the application's authorisation function for every request,
//! and, for the buttons, a `SameSite=Strict` cookie token checked against the form's plus
//! the browser's `Origin`/`Sec-Fetch-Site` headers.

use std::sync::atomic::{AtomicBool, Ordering};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpRequest;

use super::{refuse, Settings, CSRF_COOKIE, LOCKED, TOKEN_LEN};

/// Runs the authorisation function: an error (403) when it says no or is missing.
pub(super) fn admit(req: &HttpRequest, settings: &Settings) -> actix_web::Result<()> {
    match &settings.authorize {
        None => {
            // Once per process: a probed public dashboard must not flood the log.
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(target: "lightjobs::dashboard", path = req.path(), "{LOCKED}");
            }
            Err(refuse(StatusCode::FORBIDDEN, LOCKED))
        }
        Some(allow) if allow(req) => Ok(()),
        Some(_) => Err(refuse(StatusCode::FORBIDDEN, "Forbidden.")),
    }
}

/// True when the browser says the request comes from another site: a mismatched `Origin`,
/// or `Sec-Fetch-Site` other than same-origin (a sibling subdomain counts as foreign).
///
/// The host is actix's connection info, which honours `Forwarded`/`X-Forwarded-Host`, so
/// the check works behind a proxy; a cross-site form cannot set those headers itself.
pub(super) fn cross_site(req: &HttpRequest) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin" | "none")) {
            return true;
        }
    }
    match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        None => false,
        Some(Ok(origin)) => !origin_matches(origin, req.connection_info().host()),
        Some(Err(_)) => true,
    }
}

/// `http://host:port` against the `Host` header's `host:port`; `null` and other opaque
/// origins never match.
pub(super) fn origin_matches(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if authority.eq_ignore_ascii_case(host) {
        return true;
    }
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    host.strip_suffix(default_port)
        .is_some_and(|h| authority.eq_ignore_ascii_case(h))
}

/// The well-formed CSRF cookies of the request (more than one when several paths set one).
pub(super) fn csrf_cookie(req: &HttpRequest) -> impl Iterator<Item = &str> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == CSRF_COOKIE)
        .map(|(_, token)| token)
        .filter(|token| token.len() == TOKEN_LEN && token.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(super) fn new_csrf_token() -> actix_web::Result<String> {
    let mut bytes = [0u8; TOKEN_LEN / 2];
    getrandom::fill(&mut bytes).map_err(|e| {
        tracing::error!(target: "lightjobs::dashboard", error = %e, "no randomness for a CSRF token");
        actix_web::error::ErrorInternalServerError("internal server error")
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Equal tokens, in time that depends only on their length (public: always 64), so the
/// response time does not tell an attacker how much of a guess was right.
pub(super) fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y))) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert!(origin_matches("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(origin_matches("https://Example.com", "example.com"));
        assert!(origin_matches("https://example.com", "example.com:443"));
        assert!(!origin_matches("http://example.com", "example.com:443"));
        assert!(!origin_matches("https://evil.example", "example.com"));
        assert!(!origin_matches("http://127.0.0.1:8081", "127.0.0.1:8080"));
        assert!(!origin_matches("null", "example.com"));
    }

    #[test]
    fn tokens() {
        let a = new_csrf_token().unwrap();
        let b = new_csrf_token().unwrap();
        assert_eq!(a.len(), TOKEN_LEN);
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[1..]));
    }
}
