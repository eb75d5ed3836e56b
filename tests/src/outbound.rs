//! `allowed_outbound_hosts`: which URLs a component may call, as Spin decides it.

use anyhow::{Context, bail, ensure};

/// One entry, `scheme://host[:port]`, where scheme, host and port may each be `*` and the host
/// may start with `*.` for any subdomain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: HostPattern,
    port: Option<u16>,
    any_port: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Any,
    /// `self` or `self.alt`: requests to the app itself (relative URLs).
    ToSelf,
    Exact(String),
    SubdomainOf(String),
}

/// The default port of a scheme, as Spin assumes it when an entry names none.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl AllowedHost {
    pub fn parse(entry: &str) -> anyhow::Result<AllowedHost> {
        let (scheme, rest) = entry
            .split_once("://")
            .with_context(|| format!("allowed host {entry:?} needs a scheme (`https://...`)"))?;
        ensure!(
            !rest.contains('/') || rest.ends_with('/') && rest.matches('/').count() == 1,
            "allowed host {entry:?} must not have a path"
        );
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        ensure!(!host.is_empty(), "allowed host {entry:?} has no host");
        let scheme = (scheme != "*").then(|| scheme.to_ascii_lowercase());
        let host = match host {
            "*" => HostPattern::Any,
            "self" | "self.alt" => HostPattern::ToSelf,
            h if h.starts_with("*.") => HostPattern::SubdomainOf(h[1..].to_ascii_lowercase()),
            h if h.contains('*') => bail!("allowed host {entry:?} has a wildcard inside its host"),
            h => HostPattern::Exact(h.to_ascii_lowercase()),
        };
        let (port, any_port) = match port {
            Some("*") => (None, true),
            Some(p) => (
                Some(
                    p.parse()
                        .with_context(|| format!("allowed host {entry:?} has a bad port"))?,
                ),
                false,
            ),
            None => {
                let scheme = scheme
                    .as_deref()
                    .with_context(|| format!("allowed host {entry:?}: `*://` needs a port"))?;
                (
                    Some(default_port(scheme).with_context(|| {
                        format!("allowed host {entry:?}: no default port for {scheme}")
                    })?),
                    false,
                )
            }
        };
        Ok(AllowedHost {
            scheme,
            host,
            port,
            any_port,
        })
    }

    /// Whether a request to `scheme://host:port` is allowed by this entry.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && match &self.host {
                HostPattern::Any => true,
                HostPattern::ToSelf => false,
                HostPattern::Exact(h) => *h == host,
                HostPattern::SubdomainOf(suffix) => host.ends_with(suffix.as_str()),
            }
            && (self.any_port || self.port == Some(port))
    }
}

impl AllowedHost {
    /// Whether this entry lets a component send requests to its own app (Spin: an HTTP or
    /// HTTPS scheme, and the host `self` or `*`).
    pub fn allows_self(&self) -> bool {
        self.scheme
            .as_deref()
            .is_none_or(|s| s == "http" || s == "https")
            && matches!(self.host, HostPattern::Any | HostPattern::ToSelf)
    }

    /// Whether this entry names a `*.spin.internal` host: a component listing one requires
    /// local service chaining, which only Spin's HTTP trigger supports.
    pub fn is_for_service_chaining(&self) -> bool {
        match &self.host {
            HostPattern::Exact(host) => host.ends_with(".spin.internal"),
            HostPattern::SubdomainOf(suffix) => suffix == ".spin.internal",
            _ => false,
        }
    }
}

/// Scheme, host and port of a request URI, with the scheme's default port.
pub fn origin_of(uri: &http::Uri) -> Option<(String, String, u16)> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_string();
    let port = uri.port_u16().or_else(|| default_port(&scheme))?;
    Some((scheme, host, port))
}

/// The component a `http://<id>.spin.internal` request chains to.
pub fn chained_component(host: &str) -> Option<&str> {
    host.strip_suffix(".spin.internal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scheme_host_and_default_port() {
        let entry = AllowedHost::parse("https://archive.example.net").unwrap();
        assert!(entry.allows("https", "archive.example.net", 443));
        assert!(!entry.allows("http", "archive.example.net", 443));
        assert!(!entry.allows("https", "archive.example.net", 8443));
        assert!(!entry.allows("https", "evil.example.net", 443));
        let local = AllowedHost::parse("http://127.0.0.1:8080").unwrap();
        assert!(local.allows("http", "127.0.0.1", 8080));
        assert!(!local.allows("http", "127.0.0.1", 8081));
    }

    #[test]
    fn wildcards() {
        let any_port = AllowedHost::parse("http://localhost:*").unwrap();
        assert!(any_port.allows("http", "localhost", 1234));
        let sub = AllowedHost::parse("https://*.example.com").unwrap();
        assert!(sub.allows("https", "a.example.com", 443));
        assert!(!sub.allows("https", "example.com.evil", 443));
    }

    #[test]
    fn self_and_chaining_entries() {
        let me = AllowedHost::parse("http://self").unwrap();
        assert!(me.allows_self() && !me.allows("http", "self", 80));
        assert!(!AllowedHost::parse("http://a.com").unwrap().allows_self());
        assert!(
            AllowedHost::parse("http://x.spin.internal")
                .unwrap()
                .is_for_service_chaining()
        );
        assert!(
            AllowedHost::parse("http://*.spin.internal")
                .unwrap()
                .is_for_service_chaining()
        );
        assert!(
            !AllowedHost::parse("http://127.0.0.1:3000")
                .unwrap()
                .is_for_service_chaining()
        );
    }

    #[test]
    fn rejects_malformed_entries() {
        for entry in [
            "archive.example.net",
            "https://",
            "https://a.com/path",
            "https://a*b.com",
            "https://a.com:x",
        ] {
            assert!(AllowedHost::parse(entry).is_err(), "{entry}");
        }
    }
}
