//! The browser pages of Gatehouse: the auditor console (served by the evidence service at
//! `/console/`) and the approver page (served by the approval service for one hold), built
//! from TypeScript with Vite by `build.rs` and embedded in the binary.
//!
//! - [`assets_router`] serves the built scripts and styles under `/assets/` (hashed names,
//!   cached for a year);
//! - [`console_response`] / [`approve_response`] answer the pages, with a [`Bootstrap`] filled
//!   in (escaped, so no value can end its `<script>` element) and the page's
//!   Content-Security-Policy; [`console_html`] / [`approve_html`] give the HTML alone;
//! - [`page`] and [`refusal_page`] render server-side pages (a refusal, an error) with the same
//!   stylesheet; [`escape`] escapes text for them.
//!
//! Every response carries [`security_headers`]: `X-Content-Type-Options: nosniff`,
//! `Referrer-Policy: no-referrer`, `X-Frame-Options: DENY` and a strict CSP (`script-src
//! 'self'`, no inline script; the console adds `'wasm-unsafe-eval'` for the session player's
//! WebAssembly terminal).

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rust_embed::RustEmbed;
use serde::Serialize;

#[derive(RustEmbed)]
#[folder = "$OUT_DIR/dist"]
struct Dist;

/// The console's policy: the session player runs a WebAssembly terminal.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
     form-action 'self'; base-uri 'none'; frame-ancestors 'none'";
/// The approver page's and server-rendered pages' policy.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; font-src 'self'; connect-src 'self'; form-action 'self'; \
     base-uri 'none'; frame-ancestors 'none'";
/// For `/assets/*` themselves (a script or stylesheet opened directly runs nothing).
const ASSET_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// The pages embed a per-session bootstrap (CSRF token, user): never cached or shared.
const NO_STORE: &str = "no-store";

/// The placeholder each HTML entry point carries, filled by [`console_html`] / [`approve_html`].
const BOOTSTRAP_PLACEHOLDER: &str = r#"<script type="application/json" id="bootstrap">{}</script>"#;

/// What the server tells a page (read by `src/bootstrap.ts`). Every field is optional.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bootstrap {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<SignedInUser>,
    /// Sent back by the page in `X-CSRF-Token` on every POST.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    /// Prefix of `/v1/...` (empty: the API is at the root of the same origin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_base: Option<String>,
    /// Where the page lives (`/console/`, `/holds/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_base: Option<String>,
    /// The sign-in endpoint (default `/signin`); the page adds `return_to`, and `prompt=login`
    /// and `max_age` for a fresh sign-in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signin_path: Option<String>,
    /// The console: the checkpoint verifier key (`<name>+<id>+<key>`) proofs are checked with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_vkey: Option<String>,
    /// The console: witness verifier keys (`cosignature/v1`), to check cosignatures with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub witness_vkeys: Vec<String>,
    /// The approver page: the hold it shows (else the last path segment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SignedInUser {
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Serves `/assets/{path}` from the embedded build (mount at the root of a service's router).
pub fn assets_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/assets/{*path}", get(asset_handler))
}

async fn asset_handler(Path(path): Path<String>) -> Response {
    asset(&path)
}

/// One embedded asset by its path under `assets/`, with its content type; 404 otherwise.
pub fn asset(path: &str) -> Response {
    let Some(file) = Dist::get(&format!("assets/{path}")) else {
        let mut response = (StatusCode::NOT_FOUND, "no such asset").into_response();
        security_headers(response.headers_mut(), ASSET_CSP);
        return response;
    };
    let mime = file.metadata.mimetype();
    // Text types say their charset: Vite writes UTF-8.
    let content_type = if mime.starts_with("text/") || mime.contains("javascript") {
        format!(
            "{}; charset=utf-8",
            mime.trim_end_matches("; charset=utf-8")
        )
    } else {
        mime.to_owned()
    };
    let mut response = file.data.into_owned().into_response();
    let headers = response.headers_mut();
    insert(headers, header::CONTENT_TYPE, &content_type);
    // Vite names every file under assets/ by its content hash, so a name never changes meaning.
    insert(headers, header::CACHE_CONTROL, IMMUTABLE);
    security_headers(headers, ASSET_CSP);
    response
}

/// `X-Content-Type-Options`, `Referrer-Policy`, `X-Frame-Options` and the given CSP.
pub fn security_headers(headers: &mut HeaderMap, csp: &str) {
    insert(headers, header::CONTENT_SECURITY_POLICY, csp);
    insert(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    insert(headers, header::REFERRER_POLICY, "no-referrer");
    insert(headers, header::X_FRAME_OPTIONS, "DENY");
}

fn insert(headers: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn html_file(name: &str) -> String {
    let file = Dist::get(name).unwrap_or_else(|| panic!("{name} is embedded by build.rs"));
    String::from_utf8_lossy(&file.data).into_owned()
}

static CONSOLE: LazyLock<String> = LazyLock::new(|| html_file("console.html"));
static APPROVE: LazyLock<String> = LazyLock::new(|| html_file("approve.html"));

/// JSON safe inside a `<script>` element: `<`, `>` and `&` escaped as `\u003c` etc. (so no
/// `</script>` or `<!--` can appear), and U+2028/U+2029 for older parsers.
pub fn script_json<T: Serialize + ?Sized>(value: &T) -> String {
    let json = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn with_bootstrap(html: &str, bootstrap: &Bootstrap) -> String {
    html.replacen(
        BOOTSTRAP_PLACEHOLDER,
        &format!(
            r#"<script type="application/json" id="bootstrap">{}</script>"#,
            script_json(bootstrap)
        ),
        1,
    )
}

/// The auditor console's HTML with `bootstrap` filled in.
pub fn console_html(bootstrap: &Bootstrap) -> String {
    with_bootstrap(&CONSOLE, bootstrap)
}

/// The approver page's HTML with `bootstrap` filled in.
pub fn approve_html(bootstrap: &Bootstrap) -> String {
    with_bootstrap(&APPROVE, bootstrap)
}

/// An HTML response with the security headers, `csp`, and no caching.
pub fn html_response(status: StatusCode, csp: &str, html: String) -> Response {
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    insert(headers, header::CONTENT_TYPE, "text/html; charset=utf-8");
    insert(headers, header::CACHE_CONTROL, NO_STORE);
    security_headers(headers, csp);
    response
}

/// The console page, ready to answer.
pub fn console_response(bootstrap: &Bootstrap) -> Response {
    html_response(StatusCode::OK, CONSOLE_CSP, console_html(bootstrap))
}

/// The approver page, ready to answer.
pub fn approve_response(bootstrap: &Bootstrap) -> Response {
    html_response(StatusCode::OK, PAGE_CSP, approve_html(bootstrap))
}

/// The stylesheet every page shares (`/assets/style-<hash>.css`), from Vite's manifest.
pub fn stylesheet_href() -> &'static str {
    static HREF: LazyLock<String> = LazyLock::new(|| {
        let manifest = Dist::get(".vite/manifest.json").expect("build.rs embeds the manifest");
        let manifest: serde_json::Value =
            serde_json::from_slice(&manifest.data).expect("Vite writes a JSON manifest");
        let file = manifest["src/style.css"]["file"]
            .as_str()
            .expect("the manifest names src/style.css");
        format!("/{file}")
    });
    &HREF
}

/// Text for HTML content or a quoted attribute value.
pub fn escape(text: &str) -> Cow<'_, str> {
    html_escape::encode_quoted_attribute(text)
}

/// A server-rendered page: `title` is text (escaped here), `body_html` is HTML the caller
/// built with [`escape`]d values.
pub fn page(title: &str, body_html: &str) -> String {
    let title = escape(title);
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <meta name=\"color-scheme\" content=\"light dark\">\n\
         <link rel=\"icon\" href=\"data:,\">\n\
         <title>{title} · Gatehouse</title>\n\
         <link rel=\"stylesheet\" href=\"{css}\">\n</head>\n<body>\n\
         <header class=\"top\"><span class=\"brand\">Gatehouse</span></header>\n\
         <main id=\"main\" class=\"page-body\">\n<h1>{title}</h1>\n{body_html}\n</main>\n\
         </body>\n</html>\n",
        css = escape(stylesheet_href()),
    )
}

/// A refusal or error as a page: "You are signed in as X, who is not an auditor", a failed
/// sign-in, an unavailable service. `message` is text (escaped here).
pub fn refusal_page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<div class=\"notice error\" role=\"alert\"><p>{}</p></div>\n\
         <p class=\"muted\">{} {}</p>",
        escape(message),
        status.as_u16(),
        escape(status.canonical_reason().unwrap_or("")),
    );
    html_response(status, PAGE_CSP, page(title, &body))
}

/// The paths of every embedded file (for tests and diagnostics).
pub fn embedded_files() -> Vec<String> {
    Dist::iter().map(|p| p.into_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn get(path: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
        let router: Router = assets_router();
        let response = router
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.status, parts.headers, bytes)
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
        headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    /// The asset paths a page links to.
    fn linked_assets(html: &str) -> Vec<String> {
        html.split(['"', '\''])
            .filter(|s| s.starts_with("/assets/"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn both_pages_and_their_assets_are_embedded() {
        let files = embedded_files();
        assert!(files.iter().any(|f| f == "console.html"), "{files:?}");
        assert!(files.iter().any(|f| f == "approve.html"), "{files:?}");
        for html in [
            console_html(&Bootstrap::default()),
            approve_html(&Bootstrap::default()),
        ] {
            let assets = linked_assets(&html);
            assert!(assets.iter().any(|a| a.ends_with(".js")), "{html}");
            assert!(assets.iter().any(|a| a.ends_with(".css")), "{html}");
            for asset in assets {
                assert!(
                    files.contains(&asset[1..].to_owned()),
                    "{asset} not embedded"
                );
            }
            // No inline script may run under the CSP: the only inline one is the JSON.
            assert_eq!(html.matches("<script").count(), 2, "{html}");
            assert!(html.contains(r#"<script type="module" crossorigin src="/assets/"#));
        }
        assert!(stylesheet_href().starts_with("/assets/style-"));
        assert!(stylesheet_href().ends_with(".css"));
    }

    #[tokio::test]
    async fn assets_have_content_types_and_headers() {
        let html = console_html(&Bootstrap::default());
        for asset in linked_assets(&html) {
            let (status, headers, body) = get(&asset).await;
            assert_eq!(status, StatusCode::OK, "{asset}");
            assert!(!body.is_empty());
            let expected = if asset.ends_with(".js") {
                "text/javascript; charset=utf-8"
            } else {
                "text/css; charset=utf-8"
            };
            assert_eq!(header(&headers, "content-type"), expected, "{asset}");
            assert_eq!(header(&headers, "cache-control"), IMMUTABLE);
            assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
            assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
            assert_eq!(header(&headers, "x-frame-options"), "DENY");
            assert!(header(&headers, "content-security-policy").starts_with("default-src 'none'"));
        }
        let (status, headers, _) = get("/assets/nothing-here.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        // The manifest and the pages are not assets.
        assert_eq!(
            get("/assets/../console.html").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get("/assets/.vite/manifest.json").await.0,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn page_responses_carry_the_policies() {
        let response = console_response(&Bootstrap::default());
        let headers = response.headers();
        assert_eq!(header(headers, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(headers, "cache-control"), "no-store");
        let csp = header(headers, "content-security-policy");
        assert!(
            csp.contains("script-src 'self' 'wasm-unsafe-eval';"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        let response = approve_response(&Bootstrap::default());
        let csp = header(response.headers(), "content-security-policy");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(header(response.headers(), "x-frame-options"), "DENY");
    }

    #[test]
    fn the_bootstrap_cannot_break_out_of_its_script() {
        let bootstrap = Bootstrap {
            user: Some(SignedInUser {
                principal: "</script><script>alert(1)</script>".into(),
                name: Some("<!-- & \u{2028} \"quoted\"".into()),
            }),
            csrf_token: Some("tok&en".into()),
            api_base: Some(String::new()),
            hold_id: Some("01HOLD".into()),
            ..Bootstrap::default()
        };
        let html = approve_html(&bootstrap);
        let start = html.find(r#"id="bootstrap">"#).unwrap() + r#"id="bootstrap">"#.len();
        let end = start + html[start..].find("</script>").unwrap();
        let json = &html[start..end];
        assert!(
            !json.contains('<') && !json.contains('>') && !json.contains('&'),
            "{json}"
        );
        assert!(!json.contains('\u{2028}'));
        // Read back, it is exactly what the server meant.
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(
            value["user"]["principal"],
            "</script><script>alert(1)</script>"
        );
        assert_eq!(value["user"]["name"], "<!-- & \u{2028} \"quoted\"");
        assert_eq!(value["csrf_token"], "tok&en");
        assert_eq!(value["hold_id"], "01HOLD");
        assert!(value.get("checkpoint_vkey").is_none());
        // Exactly one bootstrap, and the page is otherwise unchanged.
        assert_eq!(html.matches(r#"id="bootstrap""#).count(), 1);
        assert_eq!(
            html.replace(json, "{}"),
            approve_html(&Bootstrap::default())
        );
    }

    #[test]
    fn server_pages_escape_and_share_the_stylesheet() {
        let response = refusal_page(
            StatusCode::FORBIDDEN,
            "Not an auditor",
            "You are signed in as <b>mallory</b> & co, who is not an auditor",
        );
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            header(response.headers(), "content-security-policy"),
            PAGE_CSP
        );
        let html = page("A <title>", &format!("<p>{}</p>", escape("\"x\" <y>")));
        assert!(
            html.contains("<title>A &lt;title&gt; · Gatehouse</title>"),
            "{html}"
        );
        assert!(html.contains("<p>&quot;x&quot; &lt;y&gt;</p>"), "{html}");
        assert!(html.contains(&format!("href=\"{}\"", stylesheet_href())));
        assert!(!html.contains("<script"));
    }

    #[tokio::test]
    async fn refusal_body_is_escaped() {
        let response = refusal_page(
            StatusCode::FORBIDDEN,
            "Not an auditor",
            "You are signed in as <b>mallory</b>, who is not an auditor",
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains("&lt;b&gt;mallory&lt;/b&gt;, who is not an auditor"));
        assert!(!body.contains("<b>"));
    }
}
