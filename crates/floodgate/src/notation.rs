//! Rate notation: `5/s`, `5 per second`, `100/2 hours`, `5/s burst 10`, several limits joined
//! by `;`, `,` or `|`. A superset of Python `limits` notation for the units it shares.

use std::time::Duration;

use crate::{Error, Limit};

/// Canonical units, smallest first, with their size in milliseconds.
pub(crate) const UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Every spelling accepted for a unit (compared case-insensitively), with its size in ms.
const SPELLINGS: &[(&str, u64)] = &[
    ("ms", 1),
    ("msec", 1),
    ("millisecond", 1),
    ("milliseconds", 1),
    ("s", 1_000),
    ("sec", 1_000),
    ("secs", 1_000),
    ("second", 1_000),
    ("seconds", 1_000),
    ("m", 60_000),
    ("min", 60_000),
    ("mins", 60_000),
    ("minute", 60_000),
    ("minutes", 60_000),
    ("h", 3_600_000),
    ("hr", 3_600_000),
    ("hrs", 3_600_000),
    ("hour", 3_600_000),
    ("hours", 3_600_000),
    ("d", 86_400_000),
    ("day", 86_400_000),
    ("days", 86_400_000),
];

/// Parses notation into limits, without validating their values (that is `Policy::new`'s
/// job, so notation errors and value errors stay distinct).
pub(crate) fn parse(text: &str) -> Result<Vec<Limit>, Error> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    let mut limits = Vec::new();
    loop {
        limits.push(parser.limit()?);
        parser.skip_ws();
        match parser.peek() {
            None => return Ok(limits),
            Some(b';' | b',' | b'|') => parser.pos += 1,
            Some(_) => {
                return Err(parser.error_here("expected `;`, `,`, `|` or the end after a limit"));
            }
        }
    }
}

/// Where the first limit separator is, for "expected exactly one limit" errors.
pub(crate) fn first_separator(text: &str) -> Option<usize> {
    text.find([';', ',', '|'])
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn limit(&mut self) -> Result<Limit, Error> {
        self.skip_ws();
        if matches!(self.peek(), None | Some(b';' | b',' | b'|')) {
            return Err(self.error_here("expected a limit such as \"5/s\""));
        }
        let count_at = self.pos;
        let count = self.number("a count")?;
        let count = u32::try_from(count).map_err(|_| {
            self.error_at(
                count_at,
                format!("count {count} is larger than {}", u32::MAX),
            )
        })?;
        self.skip_ws();
        if self.peek() == Some(b'/') {
            self.pos += 1;
        } else if self.word_is("per") {
            self.pos += 3;
        } else {
            return Err(self.error_here("expected `/` or `per` after the count"));
        }
        self.skip_ws();
        let multiplier_at = self.pos;
        let multiplier = if self.peek().is_some_and(|b| b.is_ascii_digit()) {
            let m = self.number("a multiplier")?;
            if m == 0 {
                return Err(self.error_at(
                    multiplier_at,
                    "the period multiplier must be at least 1".into(),
                ));
            }
            self.skip_ws();
            m
        } else {
            1
        };
        let unit_at = self.pos;
        let unit = self.word();
        if unit.is_empty() {
            return Err(self.error_here("expected a unit (ms, s, m, h or d)"));
        }
        let unit_ms = unit_size(unit).ok_or_else(|| {
            let hint = match unit.to_ascii_lowercase().trim_end_matches('s') {
                "month" | "mo" | "year" | "yr" | "y" | "week" | "w" => {
                    " (months, years and weeks are not supported: use d)"
                }
                _ => "",
            };
            self.error_at(unit_at, format!("unknown unit \"{unit}\"{hint}"))
        })?;
        let period_ms = multiplier.checked_mul(unit_ms).ok_or_else(|| {
            self.error_at(multiplier_at, "the period is too long to represent".into())
        })?;
        let mut limit = Limit::per(count, Duration::from_millis(period_ms));
        self.skip_ws();
        if self.word_is("burst") {
            self.pos += 5;
            self.skip_ws();
            if self.peek() == Some(b'=') {
                self.pos += 1;
                self.skip_ws();
            }
            let burst_at = self.pos;
            let burst = self.number("a burst size")?;
            let burst = u32::try_from(burst).map_err(|_| {
                self.error_at(
                    burst_at,
                    format!("burst {burst} is larger than {}", u32::MAX),
                )
            })?;
            limit = limit.burst(burst);
        }
        Ok(limit)
    }

    fn number(&mut self, what: &str) -> Result<u64, Error> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit() || b == b'_') {
            self.pos += 1;
        }
        let digits = &self.text[start..self.pos];
        if digits.is_empty() || digits.starts_with('_') {
            let reason = match self.peek() {
                Some(b'-') => format!("expected {what}, found a negative number"),
                _ => format!("expected {what} (a whole number)"),
            };
            return Err(self.error_at(start, reason));
        }
        if self.peek() == Some(b'.') {
            return Err(self.error_at(
                start,
                format!("expected {what} as a whole number, found a fraction"),
            ));
        }
        digits
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| self.error_at(start, format!("{what} \"{digits}\" is too large")))
    }

    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            self.pos += 1;
        }
        let text: &'a str = self.text;
        &text[start..self.pos]
    }

    /// Whether the next word is `keyword` (case-insensitive, whole word).
    fn word_is(&self, keyword: &str) -> bool {
        let end = self.pos + keyword.len();
        self.bytes
            .get(self.pos..end)
            .is_some_and(|w| w.eq_ignore_ascii_case(keyword.as_bytes()))
            && !self.bytes.get(end).is_some_and(|b| b.is_ascii_alphabetic())
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn error_here(&self, reason: &str) -> Error {
        let reason = match self.text[self.pos..].chars().next() {
            Some(c) => format!("{reason}, found {c:?}"),
            None => format!("{reason}, found the end"),
        };
        self.error_at(self.pos, reason)
    }

    fn error_at(&self, position: usize, reason: String) -> Error {
        Error::Parse {
            input: self.text.to_owned(),
            position,
            reason,
        }
    }
}

fn unit_size(unit: &str) -> Option<u64> {
    SPELLINGS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(unit))
        .map(|&(_, ms)| ms)
}
