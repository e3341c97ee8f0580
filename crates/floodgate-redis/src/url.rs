//! Store URLs: which server or Cluster they name, and how to print them without the
//! password.

use floodgate::Error;

use crate::builder::config;

/// Where a URL points.
pub(crate) enum Target {
    /// A Cluster, through these node URLs.
    Cluster(Vec<String>),
    /// One server.
    Standalone,
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
