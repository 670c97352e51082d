//! What every request passes before it reaches a handler. The gateway drives models on the
//! user's machine, so it must not become a way in for web pages (DNS rebinding, cross-site
//! requests) or for the network:
//!
//! 1. `Host` must be a loopback name (`localhost`, `*.localhost`), an IP address, or a name
//!    the user configured. A rebinding page reaches 127.0.0.1 under its own domain name, so
//!    its `Host` is that name, and it is refused.
//! 2. `Origin`, which browsers send on cross-site requests, must be one the user configured;
//!    only those get CORS headers (the exact origin, never `*`). Pre-flights from other origins
//!    are refused too.
//! 3. With a token configured, every request carries it: `Authorization: Bearer T`, or HTTP
//!    Basic (A1111's `--api-auth user:password` convention) with T as the password or as
//!    `user:password`. Compared in constant time.
//!
//! Refusals come in the shape of the API that was called (`/v1/…` OpenAI's, else A1111's).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use subtle::ConstantTimeEq;

use crate::error::{A1111Error, ApiError, OpenAiError};
use crate::jobs::Gateway;

/// Runs the checks, then the handler; adds CORS headers for an allowed origin.
pub async fn check(State(gateway): State<Arc<Gateway>>, request: Request, next: Next) -> Response {
    let openai = request.uri().path().starts_with("/v1/");
    let refuse = |error: ApiError| {
        if openai {
            OpenAiError(error).into_response()
        } else {
            A1111Error(error).into_response()
        }
    };
    let config = &gateway.config;
    if let Err(error) = check_host(request.headers(), &config.allowed_hosts) {
        return refuse(error);
    }
    let origin = match check_origin(request.headers(), &config.allowed_origins) {
        Ok(origin) => origin,
        Err(error) => return refuse(error),
    };
    if request.method() == Method::OPTIONS {
        // A CORS pre-flight from an allowed origin (browsers send no credentials with it).
        let mut response = StatusCode::NO_CONTENT.into_response();
        if let Some(origin) = &origin {
            let headers = response.headers_mut();
            add_cors(headers, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
        return response;
    }
    if let Some(token) = &config.token
        && !authorized(request.headers(), token)
    {
        let mut response = refuse(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "this easel gateway needs its token: send `Authorization: Bearer TOKEN` (OpenAI clients: the API key) \
             or HTTP Basic auth with the token as the password",
        ));
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"easel\", charset=\"UTF-8\""),
        );
        return response;
    }
    // A generation holds its body and waits on the daemon: only so many at once, refused
    // before their bodies are read.
    let _permit = if request.method() == Method::POST && is_generation(request.uri().path()) {
        match gateway.generations.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                return refuse(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    format!(
                        "{} generation requests are open at this gateway already; wait for one to finish",
                        config.max_generations
                    ),
                ));
            }
        }
    } else {
        None
    };
    let mut response = next.run(request).await;
    if let Some(origin) = &origin {
        add_cors(response.headers_mut(), origin);
    }
    response
}

fn is_generation(path: &str) -> bool {
    matches!(
        path,
        "/sdapi/v1/txt2img" | "/sdapi/v1/img2img" | "/v1/images/generations" | "/v1/images/edits"
    )
}

/// Unknown paths: A1111's (FastAPI's) `{"detail": "Not Found"}`, or OpenAI's error.
pub async fn not_found(request: Request) -> Response {
    let path = request.uri().path().to_string();
    let error = ApiError::not_found(format!("easel's gateway has no endpoint {} {path}", request.method()));
    if path.starts_with("/v1/") {
        OpenAiError(error).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "detail": "Not Found" })),
        )
            .into_response()
    }
}

fn add_cors(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// The host part of a `Host` header value: `name`, `name:port`, `[v6]:port`.
fn host_name(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']').map_or(value, |(inside, _)| inside);
    }
    match value.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => value,
    }
}

fn check_host(headers: &HeaderMap, allowed: &[String]) -> Result<(), ApiError> {
    // HTTP/1.0 clients may send none; browsers always do.
    let Some(value) = headers.get(header::HOST) else {
        return Ok(());
    };
    let Ok(value) = value.to_str() else {
        return Err(forbidden_host("(not text)"));
    };
    let name = host_name(value).trim_end_matches('.').to_ascii_lowercase();
    let is_ip = name.parse::<std::net::IpAddr>().is_ok();
    let loopback_name = name == "localhost" || name.ends_with(".localhost");
    let configured = allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(&name) || a.eq_ignore_ascii_case(value));
    if is_ip || loopback_name || configured {
        Ok(())
    } else {
        Err(forbidden_host(value))
    }
}

fn forbidden_host(value: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden_host",
        format!(
            "the Host `{value}` is not this gateway's (a web page may be trying to reach it through DNS rebinding); \
             use 127.0.0.1 or localhost, or start the gateway with --allow-host {value}"
        ),
    )
}

/// The request's `Origin` when it is allowed; `None` when there is none (not a browser).
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<Option<HeaderValue>, ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(None);
    };
    let text = origin.to_str().unwrap_or("(not text)");
    let normalized = text.trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(normalized))
    {
        Ok(Some(origin.clone()))
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            format!(
                "requests from the web page at `{text}` are refused (a page must not drive your models without your say); \
                 to allow it, start the gateway with --allow-origin {text}"
            ),
        ))
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let same = |given: &[u8]| bool::from(given.ct_eq(token.as_bytes()));
    let (scheme, credentials) = value.trim().split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return same(credentials.as_bytes());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) else {
            return false;
        };
        let password = decoded.splitn(2, |&b| b == b':').nth(1).unwrap_or(&[]);
        return same(password) | same(&decoded);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn loopback_names_and_addresses_pass_and_other_names_do_not() {
        for host in [
            "127.0.0.1:7860",
            "localhost:7860",
            "LOCALHOST",
            "[::1]:7860",
            "app.localhost",
            "192.168.1.5:7860",
        ] {
            assert!(check_host(&headers(&[(header::HOST, host)]), &[]).is_ok(), "{host}");
        }
        for host in ["evil.example:7860", "localhost.evil.example", "127.0.0.1.nip.io"] {
            let error = check_host(&headers(&[(header::HOST, host)]), &[]).unwrap_err();
            assert_eq!(error.status, StatusCode::FORBIDDEN, "{host}");
            assert!(error.message.contains("--allow-host"), "{}", error.message);
        }
        let allowed = vec!["studio.lan".to_string()];
        assert!(check_host(&headers(&[(header::HOST, "studio.lan:7860")]), &allowed).is_ok());
        assert!(check_host(&HeaderMap::new(), &[]).is_ok());
    }

    #[test]
    fn only_configured_origins_pass() {
        assert_eq!(check_origin(&HeaderMap::new(), &[]).unwrap(), None);
        let from_page = headers(&[(header::ORIGIN, "https://evil.example")]);
        assert!(check_origin(&from_page, &[]).is_err());
        assert!(check_origin(&headers(&[(header::ORIGIN, "null")]), &[]).is_err());
        let allowed = vec!["http://localhost:3000/".to_string()];
        let ok = check_origin(&headers(&[(header::ORIGIN, "http://localhost:3000")]), &allowed).unwrap();
        assert_eq!(ok.unwrap(), "http://localhost:3000");
        assert!(check_origin(&from_page, &allowed).is_err());
    }

    #[test]
    fn the_token_comes_as_bearer_or_basic() {
        let token = "s3cret";
        let basic = |s: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(s));
        assert!(authorized(&headers(&[(header::AUTHORIZATION, "Bearer s3cret")]), token));
        assert!(authorized(
            &headers(&[(header::AUTHORIZATION, &basic("user:s3cret"))]),
            token
        ));
        assert!(authorized(
            &headers(&[(header::AUTHORIZATION, &basic("admin:pw"))]),
            "admin:pw"
        ));
        assert!(!authorized(&headers(&[(header::AUTHORIZATION, "Bearer wrong")]), token));
        assert!(!authorized(
            &headers(&[(header::AUTHORIZATION, &basic("s3cret:x"))]),
            token
        ));
        assert!(!authorized(&headers(&[(header::AUTHORIZATION, "Basic !!!")]), token));
        assert!(!authorized(&HeaderMap::new(), token));
    }
}
