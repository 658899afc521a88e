//! What a route does to a request's target: path rewrites (prefix and regex, for forwarding and
//! for redirects), redirects and direct responses, compiled from Envoy's `RouteAction`,
//! `RedirectAction` and `DirectResponseAction`.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::body::ProxyBody;
use crate::config::route::{search_regex, substitution_to_replacement};
use crate::config::{DirectResponseConfig, RedirectConfig, RegexRewriteConfig};

/// A rewrite of a request's path (its query string kept).
pub(crate) enum PathRewrite {
    /// The first `matched` bytes (what the route's prefix or path matched) become `with`.
    Prefix { matched: usize, with: Box<str> },
    /// Every match of `re` is replaced by `with` (in the `regex` crate's syntax).
    Regex { re: regex::Regex, with: Box<str> },
}

impl PathRewrite {
    /// A prefix rewrite after a match of `matched` bytes.
    pub(crate) fn prefix(matched: usize, with: &str) -> Self {
        PathRewrite::Prefix {
            matched,
            with: with.into(),
        }
    }

    /// A regex rewrite.
    pub(crate) fn regex(r: &RegexRewriteConfig) -> Result<Self, String> {
        Ok(PathRewrite::Regex {
            re: search_regex(&r.pattern)?,
            with: substitution_to_replacement(&r.substitution).into_boxed_str(),
        })
    }

    /// The rewritten path.
    pub(crate) fn apply(&self, path: &str) -> String {
        match self {
            PathRewrite::Prefix { matched, with } => {
                let rest = path.get(*matched..).unwrap_or("");
                let mut out = String::with_capacity(with.len() + rest.len());
                out.push_str(with);
                out.push_str(rest);
                out
            }
            PathRewrite::Regex { re, with } => re.replace_all(path, &**with).into_owned(),
        }
    }
}

/// A compiled redirect.
pub(crate) struct Redirect {
    scheme: Option<Box<str>>,
    host: Option<Box<str>>,
    /// `:port`, when the redirect names one.
    port: Option<Box<str>>,
    path: Option<Box<str>>,
    rewrite: Option<PathRewrite>,
    status: StatusCode,
    strip_query: bool,
}

impl Redirect {
    /// Compiles a redirect of a route whose match took `matched` bytes of the path (for its
    /// `prefix_rewrite`).
    pub(crate) fn build(r: &RedirectConfig, matched: usize) -> Result<Self, String> {
        let rewrite = match (&r.prefix_rewrite, &r.regex_rewrite) {
            (Some(p), _) => Some(PathRewrite::prefix(matched, p)),
            (None, Some(rr)) => Some(PathRewrite::regex(rr)?),
            (None, None) => None,
        };
        Ok(Redirect {
            scheme: r
                .scheme_redirect
                .as_deref()
                .map(|s| s.to_ascii_lowercase().into()),
            host: r.host_redirect.as_deref().map(Into::into),
            port: r.port_redirect.map(|p| format!(":{p}").into_boxed_str()),
            path: r.path_redirect.as_deref().map(Into::into),
            rewrite,
            status: StatusCode::from_u16(r.response_code)
                .map_err(|_| format!("bad redirect code {}", r.response_code))?,
            strip_query: r.strip_query,
        })
    }

    /// Where a request for `authority` over `scheme` with target `path_and_query` goes, as
    /// Envoy writes it.
    pub(crate) fn location(&self, scheme: &str, authority: &str, path_and_query: &str) -> String {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = match &self.host {
            Some(h) => h.to_string(),
            None => {
                let mut host = authority;
                let port_at = authority.rfind(':').filter(|&i| {
                    let (h, p) = (&authority[..i], &authority[i + 1..]);
                    !p.is_empty()
                        && p.bytes().all(|b| b.is_ascii_digit())
                        && (!h.contains(':') || h.ends_with(']'))
                });
                if let Some(colon) = port_at {
                    let port = &authority[colon..];
                    // A new port replaces the old; a change of scheme drops the old one when
                    // it was the old scheme's default.
                    let drop = self.port.is_some()
                        || (new_scheme != scheme
                            && ((new_scheme == "https" && port == ":80")
                                || (new_scheme == "http" && port == ":443")));
                    if drop {
                        host = &authority[..colon];
                    }
                }
                host.to_owned()
            }
        };
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let mut out = String::with_capacity(64 + path_and_query.len());
        out.push_str(new_scheme);
        out.push_str("://");
        out.push_str(&host);
        if let Some(port) = &self.port {
            out.push_str(port);
        }
        match (&self.path, &self.rewrite) {
            // A query in the new path replaces the request's, strip_query or not.
            (Some(p), _) if p.contains('?') => {
                out.push_str(p);
                return out;
            }
            (Some(p), _) => out.push_str(p),
            (None, Some(r)) => out.push_str(&r.apply(path)),
            (None, None) => out.push_str(path),
        }
        if let (Some(q), false) = (query, self.strip_query) {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    /// The redirect's response (no body, as Envoy's).
    pub(crate) fn reply(
        &self,
        scheme: &str,
        authority: &str,
        path_and_query: &str,
    ) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::full(Bytes::new()));
        *response.status_mut() = self.status;
        match HeaderValue::from_str(&self.location(scheme, authority, path_and_query)) {
            Ok(v) => {
                response.headers_mut().insert(header::LOCATION, v);
            }
            // The request's own target and host are valid header text; should one not be,
            // there is nowhere to send it.
            Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
        }
        response
    }
}

/// A compiled direct response.
pub(crate) struct Direct {
    status: StatusCode,
    body: Bytes,
}

impl Direct {
    /// Compiles a direct response.
    pub(crate) fn build(d: &DirectResponseConfig) -> Result<Self, String> {
        Ok(Direct {
            status: StatusCode::from_u16(d.status)
                .map_err(|_| format!("bad direct response status {}", d.status))?,
            body: Bytes::from(d.body.clone().unwrap_or_default()),
        })
    }

    /// The response (its body a reference count on the compiled one).
    pub(crate) fn reply(&self) -> Response<ProxyBody> {
        let mut response = Response::new(ProxyBody::full(self.body.clone()));
        *response.status_mut() = self.status;
        if !self.body.is_empty() {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(yaml: &str, matched: usize) -> Redirect {
        let r: RedirectConfig = serde_json::from_str(yaml).unwrap();
        Redirect::build(&r, matched).unwrap()
    }

    #[test]
    fn redirects_write_locations_as_envoy() {
        let https = redirect(r#"{"scheme_redirect": "https"}"#, 1);
        assert_eq!(
            https.location("http", "a.com", "/x?q=1"),
            "https://a.com/x?q=1"
        );
        assert_eq!(https.location("http", "a.com:80", "/x"), "https://a.com/x");
        assert_eq!(
            https.location("http", "a.com:8080", "/x"),
            "https://a.com:8080/x"
        );
        assert_eq!(
            https.location("https", "a.com:80", "/x"),
            "https://a.com:80/x"
        );
        let port = redirect(r#"{"port_redirect": 8443, "strip_query": true}"#, 1);
        assert_eq!(
            port.location("http", "a.com:80", "/x?q"),
            "http://a.com:8443/x"
        );
        let host = redirect(r#"{"host_redirect": "b.org", "response_code": 302}"#, 1);
        assert_eq!(host.location("http", "a.com:81", "/x"), "http://b.org/x");
        assert_eq!(host.reply("http", "a", "/").status(), 302);
        let path = redirect(r#"{"path_redirect": "/new"}"#, 1);
        assert_eq!(path.location("http", "a", "/old?q"), "http://a/new?q");
        let path_q = redirect(r#"{"path_redirect": "/new?x=1", "strip_query": false}"#, 1);
        assert_eq!(path_q.location("http", "a", "/old?q"), "http://a/new?x=1");
        let prefix = redirect(r#"{"prefix_rewrite": "/v2"}"#, 3);
        assert_eq!(
            prefix.location("http", "a", "/v1/users?q"),
            "http://a/v2/users?q"
        );
        let re = redirect(
            r#"{"regex_rewrite": {"pattern": "^/u/([0-9]+)$", "substitution": "/users/\\1"}}"#,
            0,
        );
        assert_eq!(re.location("http", "a", "/u/42"), "http://a/users/42");
        let v6 = redirect(r#"{"port_redirect": 9}"#, 1);
        assert_eq!(v6.location("http", "[::1]:80", "/"), "http://[::1]:9/");
    }

    #[test]
    fn direct_responses_carry_their_body() {
        let d = Direct::build(&DirectResponseConfig {
            status: 418,
            body: Some("teapot".into()),
        })
        .unwrap();
        let r = d.reply();
        assert_eq!(r.status(), 418);
        assert_eq!(r.headers()["content-type"], "text/plain");
        let empty = Direct::build(&DirectResponseConfig {
            status: 204,
            body: None,
        })
        .unwrap();
        assert!(empty.reply().headers().get("content-type").is_none());
    }
}
