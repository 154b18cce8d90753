//! NATS server URLs.

use super::Auth;

#[derive(Clone, Debug)]
pub(super) struct ServerUrl {
    /// For logs: scheme://host:port, without credentials.
    pub(super) shown: String,
    pub(super) host: String,
    /// Name checked in the server's TLS certificate: the host, except for
    /// a learned server given by IP address (then the configured name).
    pub(super) tls_name: String,
    pub(super) port: u16,
    pub(super) tls: bool,
    pub(super) auth: Auth,
}

pub(super) fn parse_url(text: &str) -> Result<ServerUrl, String> {
    let s = text.trim();
    let (scheme, rest) = match s.find("://") {
        Some(i) => (s[..i].to_ascii_lowercase(), &s[i + 3..]),
        None => ("nats".to_string(), s),
    };
    let tls = match scheme.as_str() {
        "nats" => false,
        "tls" => true,
        other => {
            return Err(format!(
                "unsupported URL scheme {other:?} in {s:?} (use nats:// or tls://)"
            ))
        }
    };
    let rest = rest.split('/').next().unwrap_or("");
    let (userinfo, hostport) = match rest.rfind('@') {
        Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
        None => (None, rest),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some((h, after)) = v6.split_once(']') else {
            return Err(format!("unclosed '[' in {s:?}"));
        };
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected text after ']' in {s:?}")),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("no host in NATS URL {s:?}"));
    }
    let port = match port {
        None | Some("") => 4222,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("bad port {p:?} in NATS URL {s:?}"))?,
    };
    let auth = match userinfo {
        None | Some("") => Auth::None,
        Some(ui) => match ui.split_once(':') {
            Some((u, p)) => Auth::UserPassword(u.to_string(), p.to_string()),
            None => Auth::Token(ui.to_string()),
        },
    };
    let shown_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(ServerUrl {
        shown: format!("{}://{shown_host}:{port}", if tls { "tls" } else { "nats" }),
        host: host.to_string(),
        tls_name: host.to_string(),
        port,
        tls,
        auth,
    })
}
