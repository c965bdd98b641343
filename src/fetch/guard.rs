//! The SSRF guard: what a URL may be before the gateway connects, checked on the client's URL
//! and again on every redirect hop.
//!
//! - [`UrlPolicy::check`]: the scheme (`https`, and `http` unless refused), no credentials, the
//!   host against the allow and deny lists, and an IP-literal host (which no resolver sees)
//!   against [`ip::check`]. Called before the first request and by the redirect policy.
//! - [`GuardedResolver`]: the only resolver the fetch client has. It resolves a name once, refuses
//!   the name when *any* of its addresses is not global unicast (a mixed answer is a rebinding
//!   attempt or a mistake, and refusing it is predictable), and hands the client exactly the
//!   addresses it checked: the client connects to those, with no second lookup.
//! - [`redirect_policy`]: at most [`MAX_REDIRECTS`] hops, each through [`UrlPolicy::check`]; a
//!   name on a hop is resolved by the same resolver when the client connects to it.
//!
//! Refusals are [`Refusal`] values. The resolver and the redirect policy return them inside
//! reqwest's error, and the fetcher finds them in its source chain, so a refusal is told from a
//! remote failure by type, not by message text.

use super::ip;
use crate::pool::discovery::Resolver;
use std::net::IpAddr;
use std::sync::Arc;
use url::{Host, Url};

/// Most redirects one fetch follows. Image hosts redirect once or twice (a CDN, a signed URL);
/// each hop is another host to check and another round trip inside the fetch's time limit.
pub const MAX_REDIRECTS: usize = 3;

/// Why the gateway will not fetch a URL. Shown to the client after "image URL refused: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the URL cannot be parsed: {0}")]
    Malformed(String),
    #[error("the scheme `{0}` is not fetched (only http and https)")]
    Scheme(String),
    #[error("plain http is not fetched here (--fetch-allow-http=false): use https")]
    Http,
    #[error("URLs with credentials (user:password@host) are not fetched")]
    Credentials,
    #[error("the URL has no host")]
    NoHost,
    #[error("the host `{0}` is not in the allowed hosts (--fetch-allowed-hosts)")]
    NotAllowed(String),
    #[error("the host `{0}` is denied (--fetch-denied-hosts)")]
    Denied(String),
    /// An IP-literal host that is not global unicast.
    #[error("`{host}` is {class}; images are fetched only from public addresses")]
    Address { host: String, class: ip::NotGlobal },
    /// A name with an address that is not global unicast. The address itself goes to the log,
    /// not to the client: the answer would map the gateway's internal DNS for anyone who asks.
    #[error("`{host}` resolves to {class}; images are fetched only from public addresses")]
    Resolves {
        host: String,
        class: ip::NotGlobal,
        addr: IpAddr,
    },
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    /// A redirect hop that failed a check.
    #[error("a redirect leads to a URL that is refused: {0}")]
    Redirect(Box<Refusal>),
}

/// A host pattern of `--fetch-allowed-hosts` / `--fetch-denied-hosts`: `example.com` (that host
/// exactly) or `*.example.com` (any host under it, not `example.com` itself). Also an IP
/// address, matched exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    Exact(String),
    Suffix(String),
}

impl HostRule {
    /// Parse one pattern, lower-cased, trailing dot and IPv6 brackets dropped.
    pub fn parse(s: &str) -> Result<HostRule, String> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        let (suffix, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (
                false,
                s.trim_start_matches('[').trim_end_matches(']').to_string(),
            ),
        };
        let bad = name.is_empty()
            || name.starts_with('.')
            || name
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '/' | '@' | '*' | '?' | '#'))
            // A port is not part of a host rule (an IPv6 address has colons but parses).
            || (name.contains(':') && name.parse::<IpAddr>().is_err());
        if bad {
            return Err(format!(
                "`{s}` is not a host pattern (write `example.com` or `*.example.com`)"
            ));
        }
        Ok(if suffix {
            HostRule::Suffix(name)
        } else {
            HostRule::Exact(name)
        })
    }

    /// Whether `host` (normalised as [`host_key`] makes it) matches.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostRule::Exact(h) => host == h,
            HostRule::Suffix(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
        }
    }
}

/// A URL host as the rules see it: a domain lower-cased (the URL parser already did) with no
/// trailing dot; an IP address in its canonical text, without brackets.
fn host_key(host: &Host<&str>) -> String {
    match host {
        Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        Host::Ipv4(a) => a.to_string(),
        Host::Ipv6(a) => a.to_string(),
    }
}

/// What a URL must be, before any connection and on every redirect hop.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    pub allow_http: bool,
    /// Empty: any host (that passes the rest).
    pub allowed: Vec<HostRule>,
    pub denied: Vec<HostRule>,
    /// Test-only: let loopback addresses through (`--fetch-allow-loopback`).
    pub allow_loopback: bool,
}

impl UrlPolicy {
    /// Whether `ip` may be connected to.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ip::NotGlobal> {
        if self.allow_loopback && ip::is_loopback(ip) {
            return Ok(());
        }
        ip::check(ip)
    }

    /// Check one URL: scheme, credentials, host rules, an IP-literal host.
    pub fn check(&self, url: &Url) -> Result<(), Refusal> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return Err(Refusal::Http),
            other => return Err(Refusal::Scheme(other.to_string())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refusal::Credentials);
        }
        let host = url.host().ok_or(Refusal::NoHost)?;
        let key = host_key(&host);
        if self.denied.iter().any(|r| r.matches(&key)) {
            return Err(Refusal::Denied(key));
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|r| r.matches(&key)) {
            return Err(Refusal::NotAllowed(key));
        }
        let literal = match host {
            Host::Domain(_) => None,
            Host::Ipv4(a) => Some(IpAddr::V4(a)),
            Host::Ipv6(a) => Some(IpAddr::V6(a)),
        };
        if let Some(addr) = literal {
            self.check_ip(addr)
                .map_err(|class| Refusal::Address { host: key, class })?;
        }
        Ok(())
    }
}

/// A name could not be resolved (no such name, no answer): a remote failure, not a refusal.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve `{host}`: {cause}")]
pub struct LookupFailed {
    pub host: String,
    pub cause: String,
}

/// The fetch client's resolver: [`Resolver`] (the system's, or a test's fixed answers), then
/// every address through [`UrlPolicy::check_ip`].
pub struct GuardedResolver {
    pub lookup: Arc<dyn Resolver>,
    pub policy: Arc<UrlPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.lookup.clone();
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: the client puts the URL's port on each address.
            let addrs = lookup.resolve(&host, 0).await.map_err(|e| LookupFailed {
                host: host.clone(),
                cause: e.to_string(),
            })?;
            if addrs.is_empty() {
                return Err(LookupFailed {
                    host,
                    cause: "no addresses".into(),
                }
                .into());
            }
            for addr in &addrs {
                if let Err(class) = policy.check_ip(addr.ip()) {
                    tracing::info!(host = %host, addr = %addr.ip(), %class, "image host refused");
                    return Err(Refusal::Resolves {
                        host,
                        class,
                        addr: addr.ip(),
                    }
                    .into());
                }
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Follow at most [`MAX_REDIRECTS`] hops, each one checked as the first URL was.
pub fn redirect_policy(policy: Arc<UrlPolicy>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        // `previous` holds the URLs already requested: one at the first redirect.
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(Refusal::TooManyRedirects);
        }
        match policy.check(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(Refusal::Redirect(Box::new(why))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> UrlPolicy {
        UrlPolicy {
            allow_http: true,
            allowed: Vec::new(),
            denied: Vec::new(),
            allow_loopback: false,
        }
    }

    fn check(p: &UrlPolicy, url: &str) -> Result<(), Refusal> {
        p.check(&Url::parse(url).expect("a test URL"))
    }

    #[test]
    fn schemes_and_credentials() {
        let p = policy();
        assert_eq!(check(&p, "https://example.com/a.png"), Ok(()));
        assert_eq!(check(&p, "http://example.com/a.png"), Ok(()));
        assert_eq!(
            check(&p, "ftp://example.com/a.png"),
            Err(Refusal::Scheme("ftp".into()))
        );
        assert_eq!(
            check(&p, "file:///etc/passwd"),
            Err(Refusal::Scheme("file".into()))
        );
        for creds in [
            "https://user:pw@example.com/a.png",
            "https://user@example.com/a.png",
            "https://:pw@example.com/a.png",
        ] {
            assert_eq!(check(&p, creds), Err(Refusal::Credentials), "{creds}");
        }
        let https_only = UrlPolicy {
            allow_http: false,
            ..policy()
        };
        assert_eq!(
            check(&https_only, "http://example.com/"),
            Err(Refusal::Http)
        );
        assert_eq!(check(&https_only, "https://example.com/"), Ok(()));
    }

    #[test]
    fn ip_literals_in_every_spelling_are_checked() {
        let p = policy();
        // The URL parser reads these as 127.0.0.1, as a browser or curl would.
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
        ] {
            match check(&p, url) {
                Err(Refusal::Address { .. }) => {}
                other => panic!("{url}: {other:?}"),
            }
        }
        match check(&p, "http://169.254.169.254/latest/meta-data/") {
            Err(Refusal::Address { host, class }) => {
                assert_eq!(host, "169.254.169.254");
                assert!(class.class.contains("link-local"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(check(&p, "http://93.184.216.34/a.png"), Ok(()));
        let lo = UrlPolicy {
            allow_loopback: true,
            ..policy()
        };
        assert_eq!(check(&lo, "http://127.0.0.1:8080/a.png"), Ok(()));
        assert!(check(&lo, "http://10.0.0.1/").is_err(), "only loopback");
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            HostRule::parse("*.Example.COM."),
            Ok(HostRule::Suffix("example.com".into()))
        );
        assert_eq!(HostRule::parse("[::1]"), Ok(HostRule::Exact("::1".into())));
        for bad in ["", "*.", "a/b", "user@h", "h:8080", "*.*.x", " "] {
            assert!(HostRule::parse(bad).is_err(), "{bad:?}");
        }
        let suffix = HostRule::parse("*.example.com").expect("rule");
        assert!(suffix.matches("img.example.com"));
        assert!(suffix.matches("a.b.example.com"));
        assert!(!suffix.matches("example.com"));
        assert!(!suffix.matches("badexample.com"));
        let p = UrlPolicy {
            allowed: vec![suffix, HostRule::parse("cdn.test").expect("rule")],
            denied: vec![HostRule::parse("private.example.com").expect("rule")],
            ..policy()
        };
        assert_eq!(check(&p, "https://img.example.com/a.png"), Ok(()));
        assert_eq!(check(&p, "https://CDN.test./a.png"), Ok(()));
        assert_eq!(
            check(&p, "https://other.test/a.png"),
            Err(Refusal::NotAllowed("other.test".into()))
        );
        assert_eq!(
            check(&p, "https://private.example.com/a.png"),
            Err(Refusal::Denied("private.example.com".into())),
            "deny wins over allow"
        );
    }
}
