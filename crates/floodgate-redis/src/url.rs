//! Store URLs: which server or Cluster they name, and how to print them without the
//! password.

use floodgate::Error;

use crate::builder::config;

/// Where a URL points.
pub(crate) enum Target {
    /// A Cluster, through these node URLs.
    Cluster(Vec<String>),
    /// A master found through Sentinel.
    Sentinel(SentinelTarget),
    /// One server.
    Standalone,
}

/// A `redis+sentinel://[user:password@]h1:p1,h2:p2/master-name` URL, taken apart.
#[derive(Clone, Debug)]
pub(crate) struct SentinelTarget {
    /// `host:port` of each Sentinel (port 26379 when not given).
    pub(crate) sentinels: Vec<String>,
    /// The name the Sentinels monitor the master by.
    pub(crate) master: String,
    /// `redis://` or `rediss://`, for the master and the Sentinels alike.
    pub(crate) scheme: &'static str,
    /// `user:password@` (or empty) for the master.
    pub(crate) userinfo: String,
}

impl SentinelTarget {
    /// The URL of the master at `address` (`host:port`), with the URL's credentials.
    pub(crate) fn master_url(&self, address: &str) -> String {
        format!("{}{}{address}", self.scheme, self.userinfo)
    }

    /// The URL of the Sentinel at `address`, with `password` (Sentinels have their own).
    pub(crate) fn sentinel_url(&self, address: &str, password: Option<&str>) -> String {
        match password {
            Some(password) => format!("{}:{}@{address}", self.scheme, url_escape(password)),
            None => format!("{}{address}", self.scheme),
        }
    }
}

/// Percent-encodes what a password cannot hold as is in a URL's userinfo.
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The parts of a `redis+sentinel://` or `rediss+sentinel://` URL, or `None` for another
/// scheme.
pub(crate) fn sentinel_target(url: &str) -> Option<Result<SentinelTarget, Error>> {
    let (scheme, rest) = [
        ("redis://", "redis+sentinel://"),
        ("rediss://", "rediss+sentinel://"),
    ]
    .into_iter()
    .find_map(|(scheme, sentinel)| Some((scheme, url.strip_prefix(sentinel)?)))?;
    let bad = |why: &str| {
        Some(Err(config(
            "url",
            format!(
                "{}: {why}; expected redis+sentinel://[user:password@]host:port,host:port/master-name",
                redact_url(url)
            ),
        )))
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (format!("{userinfo}@"), rest),
        None => (String::new(), rest),
    };
    let Some((hosts, master)) = rest.split_once('/') else {
        return bad("no master name");
    };
    let master = master.trim_end_matches('/');
    if master.is_empty() {
        return bad("no master name");
    }
    if master.contains('/') || master.contains('?') {
        return bad("the path is the master name alone");
    }
    let mut sentinels = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let address = match host.rsplit_once(':') {
            Some((name, port)) if !name.is_empty() && !name.ends_with(':') => {
                if port.parse::<u16>().map_or(true, |p| p == 0) {
                    return bad(&format!("bad Sentinel port in {host:?}"));
                }
                host.to_owned()
            }
            _ => format!("{host}:26379"),
        };
        sentinels.push(address);
    }
    if sentinels.is_empty() {
        return bad("no Sentinel given");
    }
    Some(Ok(SentinelTarget {
        sentinels,
        master: master.to_owned(),
        scheme,
        userinfo,
    }))
}

/// The node URLs of a `redis+cluster://[user:password@]h1:p1,h2:p2` URL (the credentials
/// apply to every node; `rediss+cluster://` makes every node `rediss://`), or `None` for
/// another scheme.
pub(crate) fn cluster_nodes(url: &str) -> Option<Result<Vec<String>, Error>> {
    let (scheme, rest) = [
        ("redis://", "redis+cluster://"),
        ("rediss://", "rediss+cluster://"),
    ]
    .into_iter()
    .find_map(|(scheme, cluster)| Some((scheme, url.strip_prefix(cluster)?)))?;
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => (format!("{userinfo}@"), hosts),
        None => (String::new(), rest),
    };
    let nodes: Vec<String> = hosts
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|host| format!("{scheme}{userinfo}{host}"))
        .collect();
    if nodes.is_empty() {
        return Some(Err(config(
            "url",
            format!("{}: no Cluster node given", redact_url(url)),
        )));
    }
    Some(Ok(nodes))
}

/// `url` with every password replaced by `***` — for each host of a Cluster list
/// (`redis+cluster://u:p@a:1,u:p@b:2`) — and everything else kept, so messages and logs can
/// name the server without the secret.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let hosts: Vec<String> = rest
        .split(',')
        .map(|host| match host.rfind('@') {
            None => host.to_owned(),
            Some(at) => {
                let userinfo = &host[..at];
                let redacted = match userinfo.find(':') {
                    Some(colon) => format!("{}:***", &userinfo[..colon]),
                    None if userinfo.is_empty() => String::new(),
                    None => "***".to_owned(),
                };
                format!("{redacted}{}", &host[at..])
            }
        })
        .collect();
    format!("{scheme}{}", hosts.join(","))
}

/// An error message with the URL's password removed, should the client library echo it.
pub(crate) fn sanitize(message: &str, url: &str) -> String {
    let mut message = message.replace(url, &redact_url(url));
    if let Some(password) = password(url) {
        if !password.is_empty() {
            message = message.replace(password, "***");
        }
    }
    message
}

fn password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let userinfo = &rest[..rest.rfind('@')?];
    Some(&userinfo[userinfo.find(':')? + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_sentinels_and_a_master() {
        let target = sentinel_target("redis+sentinel://u:p@a:26380,b/mymaster")
            .unwrap()
            .unwrap();
        assert_eq!(target.sentinels, ["a:26380", "b:26379"]);
        assert_eq!(target.master, "mymaster");
        assert_eq!(
            target.master_url("10.0.0.1:6379"),
            "redis://u:p@10.0.0.1:6379"
        );
        assert_eq!(target.sentinel_url("a:26380", None), "redis://a:26380");
        assert_eq!(
            target.sentinel_url("a:26380", Some("p@ss/w")),
            "redis://:p%40ss%2Fw@a:26380"
        );
        let tls = sentinel_target("rediss+sentinel://h:1/m").unwrap().unwrap();
        assert_eq!(tls.master_url("x:2"), "rediss://x:2");
        for bad in [
            "redis+sentinel://h:1",
            "redis+sentinel://h:1/",
            "redis+sentinel:///m",
            "redis+sentinel://h:0/m",
            "redis+sentinel://h:x/m",
            "redis+sentinel://h:1/m/0",
        ] {
            let error = sentinel_target(bad).unwrap().unwrap_err().to_string();
            assert!(error.contains("redis+sentinel://"), "{bad}: {error}");
        }
        assert!(sentinel_target("redis://h:1").is_none());
        assert_eq!(
            redact_url("redis+sentinel://u:s3cret@a:1,b:2/m"),
            "redis+sentinel://u:***@a:1,b:2/m"
        );
    }

    #[test]
    fn passwords_never_appear_in_messages() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@host"), "redis://:***@host");
        assert_eq!(redact_url("redis://s3cret@host"), "redis://***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact_url("redis+cluster://u:p@a:1,u:p@b:2"),
            "redis+cluster://u:***@a:1,u:***@b:2"
        );
        assert_eq!(
            sanitize("failed: s3cret rejected", "redis://u:s3cret@h"),
            "failed: *** rejected"
        );
    }
}
