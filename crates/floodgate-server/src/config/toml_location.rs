//! Where in the TOML text an error is: the dotted key and line a parser's byte offset
//! points at, and keys spelled as a dotted path would spell them.

use std::path::Path;

use super::ConfigError;

/// A TOML parse error as a [`ConfigError`]: the key and line it points at, and its message.
pub(super) fn error(e: &toml::de::Error, text: &str, file: &Path) -> ConfigError {
    let (key, line) = e
        .span()
        .map(|span| locate(text, span.start))
        .unwrap_or_default();
    let line = if line > 0 {
        format!("line {line}: ")
    } else {
        String::new()
    };
    ConfigError::new(file, key, format!("{line}{}", e.message()))
}

/// The dotted key and the 1-based line of a byte offset in TOML text: the key on that line
/// (or the table header's name) under the last `[table]` header above it.
fn locate(text: &str, offset: usize) -> (String, usize) {
    let mut offset = offset.min(text.len());
    // Slice only at character boundaries, whatever offset the parser reports.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_no = text[..offset].matches('\n').count() + 1;
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let header = |l: &str| {
        l.strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .map(|h| h.trim_matches(['[', ']', ' ']).to_owned())
    };
    if let Some(table) = header(line) {
        return (table, line_no);
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| header(l.trim()));
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_owned())
        .unwrap_or_default();
    let dotted = match (table, key.is_empty()) {
        (Some(table), false) => format!("{table}.{key}"),
        (Some(table), true) => table,
        (None, _) => key,
    };
    (dotted, line_no)
}

/// A TOML key as written in a dotted path: bare when it can be, else quoted.
pub(super) fn bare_or_quoted(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_locations_inside_multibyte_text_do_not_panic() {
        let text = "[policies]\nfree = \"5/s é\"\n";
        for offset in 0..=text.len() + 3 {
            let _ = locate(text, offset);
        }
    }
}
