//! Redis key layout: `{prefix}fg1{tag}{limit}`.

use floodgate::{Concurrency, Policy};

/// Version of the key layout and script protocol.
pub(crate) const LAYOUT: &str = "fg1";

/// Digits in a tag.
const TAG_LEN: usize = 14;

/// URL-safe base64 digits: no braces, so the tag is the key's only Cluster hash tag.
const DIGITS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The Redis keys of every limit of `(policy, key)`: `{prefix}fg1{tag}{limit}`.
pub(crate) fn keys(prefix: &str, policy: &Policy, key: &str) -> Vec<String> {
    let tag = tag(policy.name(), key);
    (0..policy.limits().len())
        .map(|i| {
            let mut name = String::with_capacity(prefix.len() + LAYOUT.len() + TAG_LEN + 4);
            name.push_str(prefix);
            name.push_str(LAYOUT);
            name.push('{');
            name.push_str(&tag);
            name.push('}');
            // Limits are fewer than 100 (`floodgate::MAX_LIMITS`).
            if i >= 10 {
                name.push(char::from(b'0' + (i / 10) as u8));
            }
            name.push(char::from(b'0' + (i % 10) as u8));
            name
        })
        .collect()
}

/// The Redis key of the permits in flight of `(limit, key)`: `{prefix}fg1{tag}p`, the tag
/// made as a policy's (a policy of the same name and key has the same tag, and keys that
/// end in a limit's digits instead).
pub(crate) fn permit_key(prefix: &str, limit: &Concurrency, key: &str) -> String {
    let tag = tag(limit.name(), key);
    let mut name = String::with_capacity(prefix.len() + LAYOUT.len() + TAG_LEN + 3);
    name.push_str(prefix);
    name.push_str(LAYOUT);
    name.push('{');
    name.push_str(&tag);
    name.push_str("}p");
    name
}

/// 14 base64 digits (84 bits) of SHA-1(name, 0, key): a fixed-size hash tag that user text
/// cannot shape. Policy names cannot contain a zero byte, so the input is unambiguous. With
/// the layout around it a key is 20 bytes, the size that fits Redis's 24-byte allocation.
fn tag(name: &str, key: &str) -> String {
    let mut digest = sha1_smol::Sha1::new();
    digest.update(name.as_bytes());
    digest.update(&[0]);
    digest.update(key.as_bytes());
    let bytes = digest.digest().bytes();
    let mut bits = u128::from_be_bytes(bytes[..16].try_into().unwrap_or([0; 16])) >> 44;
    let mut tag = String::with_capacity(TAG_LEN);
    for _ in 0..TAG_LEN {
        tag.push(char::from(DIGITS[(bits & 63) as usize]));
        bits >>= 6;
    }
    tag
}

/// Checks a key prefix: braces would form a Cluster hash tag ahead of ours.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.contains(['{', '}']) {
        return Err(format!(
            "key prefix {prefix:?} contains a brace, which would change Cluster hash slots"
        ));
    }
    if prefix.len() > 64 {
        return Err(format!("key prefix is {} bytes; at most 64", prefix.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_tagged_and_shaped_by_nobody() {
        let policy = Policy::parse("free", "5/s; 1000/d").unwrap();
        let long = "x".repeat(100_000);
        for user_key in ["user:42", "{evil}", "}{", &long] {
            let keys = keys("app:", &policy, user_key);
            assert_eq!(keys.len(), 2);
            for (i, k) in keys.iter().enumerate() {
                assert_eq!(k.len(), "app:fg1{".len() + TAG_LEN + "}0".len());
                assert!(k.starts_with("app:fg1{") && k.ends_with(&format!("}}{i}")));
                assert_eq!((k.matches('{').count(), k.matches('}').count()), (1, 1));
            }
            assert_eq!(keys[0][..keys[0].len() - 1], keys[1][..keys[1].len() - 1]);
        }
        assert_ne!(keys("", &policy, "a"), keys("", &policy, "b"));
        let other = Policy::parse("pro", "5/s; 1000/d").unwrap();
        assert_ne!(keys("", &policy, "a"), keys("", &other, "a"));
    }

    #[test]
    fn limit_indexes_past_nine_get_two_digits() {
        let limits: Vec<String> = (1..=floodgate::MAX_LIMITS)
            .map(|i| format!("{i}/h"))
            .collect();
        let policy = Policy::parse("many", &limits.join("; ")).unwrap();
        let keys = keys("", &policy, "k");
        assert_eq!(keys.len(), floodgate::MAX_LIMITS);
        for (i, k) in keys.iter().enumerate() {
            assert!(k.ends_with(&format!("}}{i}")), "{k}");
        }
    }

    #[test]
    fn prefixes_with_braces_are_refused() {
        assert!(validate_prefix("app:").is_ok());
        assert!(validate_prefix("{app}:").is_err());
    }
}
