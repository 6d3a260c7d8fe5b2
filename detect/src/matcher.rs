//! One detection value, compiled: Sigma strings (with `*`/`?` wildcards and `\` escapes) and
//! their modifiers become a [`Matcher`]. Plain literals, the common case, compare with string
//! operations on the lower-cased field; anything with inner wildcards or dash classes becomes
//! an anchored regex so matching stays linear whatever the rule says.

use std::borrow::Cow;
use std::net::IpAddr;

use regex::{Regex, RegexBuilder};

use crate::field::{EventView, Field};
use crate::modifier::{Compare, Encoding, Modifiers};

/// A compiled test of one field against one value (or one encoded form of it).
#[derive(Debug)]
pub(crate) enum Matcher {
    /// The field is absent or empty (`Field: null`).
    Null,
    /// `|exists`: `true` wants a non-empty value, `false` wants none.
    Exists(bool),
    /// A literal comparison; the needle is lower-cased unless `cased`.
    Text {
        op: TextOp,
        needle: String,
        cased: bool,
    },
    /// A wildcard pattern or a `|re` value.
    Regex(Regex),
    /// `|lt` and friends: the field read as an integer.
    Number { compare: Compare, value: i64 },
    /// `|cidr`: the field read as an IP address inside a network.
    Cidr(Cidr),
}

/// An IPv4 or IPv6 network: address bits and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not a CIDR network"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, text: &str) -> bool {
        // NB: an IPv4-mapped IPv6 address (::ffff:10.0.0.1, what a dual-stack socket reports)
        // is compared as the IPv4 address it carries.
        let Ok(ip) = text.trim().parse::<IpAddr>() else {
            return false;
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let prefix = u32::from(self.prefix);
        match (ip, self.network) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                u32::from(ip) & mask == u32::from(net) & mask
            }
            (IpAddr::V6(ip), IpAddr::V6(net)) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                u128::from(ip) & mask == u128::from(net) & mask
            }
            _ => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TextOp {
    Equals,
    Contains,
    StartsWith,
    EndsWith,
}

/// Why a value cannot be compiled; the caller adds the location.
#[derive(Debug)]
pub(crate) enum ValueError {
    Invalid(String),
    Unsupported(String),
    Regex {
        pattern: String,
        source: regex::Error,
    },
}

impl Matcher {
    pub fn matches(&self, view: &EventView<'_>, field: Field) -> bool {
        match self {
            Matcher::Null => view.raw(field).is_none_or(str::is_empty),
            Matcher::Exists(want) => view.raw(field).is_some_and(|v| !v.is_empty()) == *want,
            Matcher::Text { op, needle, cased } => {
                let haystack = if *cased {
                    view.raw(field).map(Cow::Borrowed)
                } else {
                    view.lower(field)
                };
                haystack.is_some_and(|h| match op {
                    TextOp::Equals => h.as_ref() == needle.as_str(),
                    TextOp::Contains => h.contains(needle.as_str()),
                    TextOp::StartsWith => h.starts_with(needle.as_str()),
                    TextOp::EndsWith => h.ends_with(needle.as_str()),
                })
            }
            Matcher::Regex(re) => view.raw(field).is_some_and(|h| re.is_match(h)),
            Matcher::Number { compare, value } => view
                .raw(field)
                .and_then(|h| h.trim().parse::<i64>().ok())
                .is_some_and(|n| match compare {
                    Compare::Less => n < *value,
                    Compare::LessOrEqual => n <= *value,
                    Compare::Greater => n > *value,
                    Compare::GreaterOrEqual => n >= *value,
                    _ => false,
                }),
            Matcher::Cidr(cidr) => view.raw(field).is_some_and(|h| cidr.contains(h)),
        }
    }
}

/// A piece of a Sigma string after escapes are resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `*`: any run of characters.
    AnyRun,
    /// `?`: any one character.
    AnyOne,
    /// A `|windash` dash: `-`, `/` or a Unicode dash.
    Dash,
}

const DASHES: &str = "-/\u{2013}\u{2014}\u{2015}";

/// Compiles one value (`None` for YAML null) into the matchers any of which must match.
/// Only `|base64offset` yields more than one.
pub(crate) fn compile(value: Option<&str>, m: &Modifiers) -> Result<Vec<Matcher>, ValueError> {
    let Some(value) = value else {
        if m.compare != Compare::Equals || m.encoding.is_some() || m.windash {
            return Err(ValueError::Invalid(
                "null can only be compared for equality".into(),
            ));
        }
        return Ok(vec![Matcher::Null]);
    };
    match m.compare {
        Compare::Exists => match value.to_ascii_lowercase().as_str() {
            "true" => Ok(vec![Matcher::Exists(true)]),
            "false" => Ok(vec![Matcher::Exists(false)]),
            _ => Err(ValueError::Invalid("`exists` takes true or false".into())),
        },
        Compare::Regex => RegexBuilder::new(value)
            .case_insensitive(m.regex_ignore_case)
            .multi_line(m.regex_multi_line)
            .dot_matches_new_line(m.regex_dot_all)
            .build()
            .map(|re| vec![Matcher::Regex(re)])
            .map_err(|source| ValueError::Regex {
                pattern: value.to_owned(),
                source,
            }),
        Compare::Cidr => Cidr::parse(value)
            .map(|c| vec![Matcher::Cidr(c)])
            .map_err(ValueError::Invalid),
        _ if m.is_numeric() => match value.trim().parse::<i64>() {
            Ok(n) => Ok(vec![Matcher::Number {
                compare: m.compare,
                value: n,
            }]),
            Err(_) => Err(ValueError::Invalid(format!("{value:?} is not an integer"))),
        },
        _ => {
            let tokens = tokenize(value);
            let variants = match m.encoding {
                None => vec![tokens],
                Some(encoding) => encode(&tokens, encoding)?,
            };
            // Encoded text is compared exactly: base64 is case-sensitive by construction.
            let cased = m.cased || m.encoding.is_some();
            variants
                .into_iter()
                .map(|tokens| {
                    let tokens = if m.windash { windash(&tokens) } else { tokens };
                    build(wrap(tokens, m.compare), cased)
                })
                .collect()
        }
    }
}

/// Resolves Sigma escapes: `\*`, `\?` and `\\` are literals; any other backslash is itself.
fn tokenize(value: &str) -> Vec<Token> {
    let mut tokens = Vec::with_capacity(value.len());
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '\\' => match chars.peek() {
                Some(&next @ ('*' | '?' | '\\')) => {
                    chars.next();
                    Token::Literal(next)
                }
                _ => Token::Literal('\\'),
            },
            '*' => Token::AnyRun,
            '?' => Token::AnyOne,
            c => Token::Literal(c),
        });
    }
    tokens
}

fn encode(tokens: &[Token], encoding: Encoding) -> Result<Vec<Vec<Token>>, ValueError> {
    let text: Option<String> = tokens
        .iter()
        .map(|t| match t {
            Token::Literal(c) => Some(*c),
            _ => None,
        })
        .collect();
    let Some(text) = text else {
        return Err(ValueError::Unsupported(
            "wildcards in a base64-encoded value".into(),
        ));
    };
    let bytes = text.as_bytes();
    let encoded: Vec<String> = match encoding {
        Encoding::Base64 => vec![base64(bytes)],
        // The value can start at any offset modulo 3 inside the encoded data: prefix 0-2
        // spaces, encode, and keep only the characters that depend on the value alone
        // (the same slicing as pySigma's reference implementation).
        Encoding::Base64Offset => (0..3usize)
            .map(|shift| {
                let mut shifted = vec![b' '; shift];
                shifted.extend_from_slice(bytes);
                let full = base64(&shifted);
                let start = [0, 2, 3][shift];
                let end_trim = [0, 3, 2][(bytes.len() + shift) % 3];
                full.get(start..full.len().saturating_sub(end_trim))
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect(),
    };
    Ok(encoded
        .into_iter()
        .map(|s| s.chars().map(Token::Literal).collect())
        .collect())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Sigma's windash: a `-` or `/` that starts a word (not preceded by a word character,
/// followed by one) matches any dash-like character.
fn windash(tokens: &[Token]) -> Vec<Token> {
    let is_word = |t: Option<&Token>| matches!(t, Some(Token::Literal(c)) if c.is_alphanumeric() || *c == '_');
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            Token::Literal('-' | '/')
                if (i == 0 || !is_word(tokens.get(i - 1))) && is_word(tokens.get(i + 1)) =>
            {
                Token::Dash
            }
            other => *other,
        })
        .collect()
}

fn wrap(mut tokens: Vec<Token>, compare: Compare) -> Vec<Token> {
    if matches!(compare, Compare::Contains | Compare::EndsWith) {
        tokens.insert(0, Token::AnyRun);
    }
    if matches!(compare, Compare::Contains | Compare::StartsWith) {
        tokens.push(Token::AnyRun);
    }
    tokens
}

/// Chooses the cheapest matcher for a token sequence: leading/trailing `*` become
/// contains/startswith/endswith on a literal; anything else inside becomes a regex.
fn build(tokens: Vec<Token>, cased: bool) -> Result<Matcher, ValueError> {
    let open_start = tokens.first() == Some(&Token::AnyRun);
    let open_end = tokens.last() == Some(&Token::AnyRun);
    let inner = trim_runs(&tokens);
    let literal: Option<String> = inner
        .iter()
        .map(|t| match t {
            Token::Literal(c) => Some(*c),
            _ => None,
        })
        .collect();
    if let Some(needle) = literal {
        let op = match (open_start, open_end) {
            (false, false) => TextOp::Equals,
            (true, true) => TextOp::Contains,
            (false, true) => TextOp::StartsWith,
            (true, false) => TextOp::EndsWith,
        };
        let needle = if cased { needle } else { needle.to_lowercase() };
        return Ok(Matcher::Text { op, needle, cased });
    }
    let mut pattern = String::from(if cased { "(?s)" } else { "(?si)" });
    if !open_start {
        pattern.push('^');
    }
    let mut buf = [0u8; 4];
    for token in inner {
        match token {
            Token::Literal(c) => pattern.push_str(&regex::escape(c.encode_utf8(&mut buf))),
            Token::AnyRun => pattern.push_str(".*"),
            Token::AnyOne => pattern.push('.'),
            Token::Dash => pattern.push_str(&format!("[{}]", regex::escape(DASHES))),
        }
    }
    if !open_end {
        pattern.push('$');
    }
    Regex::new(&pattern)
        .map(Matcher::Regex)
        .map_err(|source| ValueError::Regex { pattern, source })
}

/// The tokens without any leading or trailing `*`.
fn trim_runs(tokens: &[Token]) -> &[Token] {
    let start = tokens.iter().take_while(|t| **t == Token::AnyRun).count();
    let rest = &tokens[start..];
    let end = rest.len()
        - rest
            .iter()
            .rev()
            .take_while(|t| **t == Token::AnyRun)
            .count();
    &rest[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains_follows_prefix_bits() {
        let cases = [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.168.1.0/24", "192.168.1.77", true),
            ("192.168.1.0/24", "192.168.2.1", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1/32", "127.0.0.2", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("fe80::/10", "fe80::1", true),
            ("fe80::/10", "fec0::1", false),
            ("::1/128", "::1", true),
            ("10.0.0.0/8", "fe80::1", false),
            ("10.0.0.0/8", "not an ip", false),
        ];
        for (net, ip, want) in cases {
            let cidr = Cidr::parse(net).unwrap_or_else(|e| panic!("{net}: {e}"));
            assert_eq!(cidr.contains(ip), want, "{ip} in {net}");
        }
        assert!(Cidr::parse("10.0.0.0/33").is_err(), "prefix too long");
        assert!(Cidr::parse("10.0.0/8").is_err(), "bad address");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v")];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded, "base64({plain:?})");
        }
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn base64offset_gives_the_three_sigma_variants() {
        // pySigma's documented example: `/bin/bash` at the three offsets.
        let tokens = tokenize("/bin/bash");
        let variants = encode(&tokens, Encoding::Base64Offset).expect("literal value");
        let texts: Vec<String> = variants
            .iter()
            .map(|v| {
                v.iter()
                    .map(|t| match t {
                        Token::Literal(c) => *c,
                        _ => '!',
                    })
                    .collect()
            })
            .collect();
        assert_eq!(texts, vec!["L2Jpbi9iYXNo", "9iaW4vYmFza", "vYmluL2Jhc2"]);
    }

    #[test]
    fn escapes_resolve_only_before_special_characters() {
        use Token::*;
        assert_eq!(
            tokenize(r"a\*b\?c\\d\e*?"),
            vec![
                Literal('a'),
                Literal('*'),
                Literal('b'),
                Literal('?'),
                Literal('c'),
                Literal('\\'),
                Literal('d'),
                Literal('\\'),
                Literal('e'),
                AnyRun,
                AnyOne
            ]
        );
    }

    #[test]
    fn literal_shapes_pick_string_operations() {
        let m = Modifiers::parse(&[]).expect("no modifiers");
        let op = |v: &str| match compile(Some(v), &m).expect("compiles").pop() {
            Some(Matcher::Text { op, .. }) => Some(op),
            _ => None,
        };
        assert_eq!(op("abc"), Some(TextOp::Equals));
        assert_eq!(op("*abc*"), Some(TextOp::Contains));
        assert_eq!(op("abc*"), Some(TextOp::StartsWith));
        assert_eq!(op("*abc"), Some(TextOp::EndsWith));
        assert_eq!(op("*"), Some(TextOp::Contains));
        assert_eq!(op("**"), Some(TextOp::Contains));
        assert_eq!(op("a*c"), None, "inner wildcards need a regex");
    }
}
