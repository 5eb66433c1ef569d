//! The chat page at `GET /`: one self-contained HTML file (its CSS and
//! JavaScript inline, no external resources) compiled into the binary.
//!
//! The page talks to the server only through the public API
//! (`/v1/chat/completions` streamed, `/info`), sending
//! `Authorization: Bearer <key>` when the user enters a key; the page itself is
//! reachable without one ([`super::auth`]). `serve --no-webui` leaves the route
//! out, so `/` answers the usual 404 envelope.

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

/// The page (HTML with inline CSS and JavaScript).
pub const PAGE: &str = include_str!("webui/index.html");

/// `Content-Type` of the page.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// `Cache-Control` of the page: browsers may keep it but must revalidate
/// (with `If-None-Match`), so a new binary's page shows at the next load.
pub const CACHE_CONTROL: &str = "no-cache";

/// What the page may load and contact: nothing but its own inline code and
/// style, and the server it came from.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The `/` route when `enabled`, else no route at all.
pub fn routes(enabled: bool) -> Router<AppState> {
    let router = Router::new();
    if enabled {
        router.route("/", get(page))
    } else {
        router
    }
}

/// The page's entity tag: a hash of its bytes, computed once.
pub fn etag() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        // FNV-1a, 64 bits: stable across builds and platforms.
        let h = PAGE.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("\"{h:016x}\"")
    })
}

/// `GET /` (and `HEAD /`).
pub async fn page(headers: HeaderMap) -> Response {
    let tag = etag();
    let common = [
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        ),
        (header::ETAG, HeaderValue::from_static(tag)),
    ];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{bind, ServeOptions};

    fn opts() -> ServeOptions {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 0,
            ..ServeOptions::default()
        }
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
    }

    // The routes answer whether or not the model loaded: these servers point
    // at a file that does not exist, so nothing heavy is loaded.
    fn no_model() -> std::path::PathBuf {
        std::env::temp_dir().join("airavata-webui-test-no-such-model.gguf")
    }

    #[tokio::test]
    async fn page_is_served_with_its_headers_and_revalidates() {
        let server = bind(opts(), no_model()).await.expect("bind");
        let res = client().get(server.url()).send().await.expect("GET /");
        assert_eq!(res.status(), 200);
        let h = res.headers().clone();
        assert_eq!(h[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(h[header::CACHE_CONTROL], CACHE_CONTROL);
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let tag = h[header::ETAG].to_str().expect("ascii etag").to_string();
        assert_eq!(tag, etag());
        assert_eq!(res.text().await.expect("body"), PAGE);

        let again = client()
            .get(server.url())
            .header(header::IF_NONE_MATCH, &tag)
            .send()
            .await
            .expect("conditional GET /");
        assert_eq!(again.status(), 304);
        assert_eq!(again.headers()[header::ETAG], tag.as_str());
        assert!(again.bytes().await.expect("body").is_empty());

        let stale = client()
            .get(server.url())
            .header(header::IF_NONE_MATCH, "\"0\"")
            .send()
            .await
            .expect("stale GET /");
        assert_eq!(stale.status(), 200);

        let head = client().head(server.url()).send().await.expect("HEAD /");
        assert_eq!(head.status(), 200);
        assert_eq!(head.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        server.shutdown().await.ok();
    }

    #[tokio::test]
    async fn no_webui_turns_the_page_off() {
        let o = ServeOptions {
            no_webui: true,
            ..opts()
        };
        let server = bind(o, no_model()).await.expect("bind");
        let res = client().get(server.url()).send().await.expect("GET /");
        assert_eq!(res.status(), 404);
        let body: serde_json::Value = res.json().await.expect("JSON envelope");
        assert_eq!(body["error"]["code"], "not_found", "{body}");
        server.shutdown().await.ok();
    }

    #[test]
    fn no_webui_is_a_serve_flag_and_off_by_default() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            opts: ServeOptions,
        }
        let parse = |args: &[&str]| {
            <Flags as clap::Parser>::try_parse_from(args)
                .map(|f| f.opts.no_webui)
                .expect("flags parse")
        };
        assert!(!parse(&["serve"]));
        assert!(parse(&["serve", "--no-webui"]));
        assert!(!ServeOptions::default().no_webui);
    }

    #[tokio::test]
    async fn page_needs_no_key_but_the_api_does() {
        let o = ServeOptions {
            api_key: Some("sesame".into()),
            ..opts()
        };
        let server = bind(o, no_model()).await.expect("bind");
        let page = client().get(server.url()).send().await.expect("GET /");
        assert_eq!(page.status(), 200);
        let info = client()
            .get(format!("{}/info", server.url()))
            .send()
            .await
            .expect("GET /info");
        assert_eq!(info.status(), 401);
        let keyed = client()
            .get(format!("{}/info", server.url()))
            .bearer_auth("sesame")
            .send()
            .await
            .expect("GET /info with key");
        assert_eq!(keyed.status(), 200);
        server.shutdown().await.ok();
    }

    /// Every form control has a label: a `<label for=ID>` or an `aria-label`.
    #[test]
    fn every_control_is_labelled() {
        let mut controls = 0;
        for tag in ["<input", "<textarea", "<select", "<button"] {
            for (start, _) in PAGE.match_indices(tag) {
                let end = PAGE[start..].find('>').map_or(PAGE.len(), |e| start + e);
                let element = &PAGE[start..end];
                controls += 1;
                if tag == "<button" {
                    // Buttons are labelled by their text or aria-label.
                    let close = PAGE[end..].find("</button>").map_or(0, |e| e);
                    let text = PAGE[end + 1..end + close].trim();
                    assert!(
                        !text.is_empty() || element.contains("aria-label="),
                        "unlabelled button: {element}"
                    );
                    continue;
                }
                if element.contains("aria-label=") {
                    continue;
                }
                let id = element
                    .split("id=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or_else(|| panic!("control without id or aria-label: {element}"));
                assert!(
                    PAGE.contains(&format!("<label for=\"{id}\"")),
                    "no <label for=\"{id}\">"
                );
            }
        }
        assert!(controls >= 10, "found only {controls} controls");
        assert!(PAGE.contains("name=\"viewport\""));
        assert!(PAGE.contains("aria-live="));
        assert!(PAGE.contains("Noto Sans Devanagari"));
    }

    /// The page is self-contained: it loads nothing from anywhere.
    #[test]
    fn page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "<link", "src=\"", "@import", "url("] {
            assert!(!PAGE.contains(needle), "the page contains {needle:?}");
        }
    }
}
