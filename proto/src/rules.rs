//! Rule sets pushed from the centre: what an operator sends (`vigil rules push`), what the
//! collector serves sensors, and the exact bytes its signature covers.
//!
//! No cryptography here (the schema crate links none): the collector signs and sensors verify
//! [`SignedRuleSet::signed_message`] with Ed25519, so both sides sign the same bytes by
//! construction rather than by agreeing on a serializer's output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Files in one rule set.
pub const MAX_RULE_FILES: usize = 1024;

/// Bytes of rule text in one set: with names and the signature it stays well inside
/// [`crate::MAX_FRAME_BYTES`], and it is what the collector reads from an operator.
pub const MAX_RULE_SET_BYTES: usize = 4 * 1024 * 1024;

/// Operator role: validate, version, sign and serve these rule files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RulePush {
    /// File name (no directories) → YAML text. Names appear in error messages and decide
    /// load order (lexical), as in a rules directory.
    pub files: BTreeMap<String, String>,
}

/// Sensor role: "send me the current set if it is newer than `after`", held open by the
/// collector until there is one (a long poll: how a sensor hears of a push at once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleFetch {
    /// The version the sensor runs now (`None`: none from the centre); the collector records
    /// it, so operators see which sensors run what.
    pub running: Option<u64>,
    /// The newest version the sensor has seen, run or refused: the collector answers only
    /// with a newer one, so a set the sensor refused is not sent to it again and again.
    pub after: Option<u64>,
}

/// A versioned rule set and the collector's Ed25519 signature over [`Self::signed_message`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedRuleSet {
    /// 1 for the first push to a collector, then increasing by one per push.
    pub version: u64,
    pub files: BTreeMap<String, String>,
    /// 64 bytes of Ed25519 signature.
    pub signature: Vec<u8>,
}

impl SignedRuleSet {
    /// What the signature covers: a domain tag, the version, then each file as
    /// length-prefixed name and text, in name order. Unambiguous: no two different sets give
    /// the same bytes, and a signature over anything else cannot be replayed as one.
    pub fn signed_message(version: u64, files: &BTreeMap<String, String>) -> Vec<u8> {
        let text: usize = files.iter().map(|(n, t)| n.len() + t.len() + 16).sum();
        let mut out = Vec::with_capacity(32 + text);
        out.extend_from_slice(b"vigil rule set v1\0");
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&(files.len() as u64).to_be_bytes());
        for (name, body) in files {
            out.extend_from_slice(&(name.len() as u64).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(body.len() as u64).to_be_bytes());
            out.extend_from_slice(body.as_bytes());
        }
        out
    }

    /// Checks the shape of a set (names and sizes) before anything parses it; the rules
    /// themselves are validated by the rule compiler.
    pub fn check_files(files: &BTreeMap<String, String>) -> Result<(), RuleSetShapeError> {
        if files.is_empty() {
            return Err(RuleSetShapeError::Empty);
        }
        if files.len() > MAX_RULE_FILES {
            return Err(RuleSetShapeError::TooManyFiles {
                count: files.len(),
                limit: MAX_RULE_FILES,
            });
        }
        let bytes: usize = files.values().map(String::len).sum();
        if bytes > MAX_RULE_SET_BYTES {
            return Err(RuleSetShapeError::TooLarge {
                bytes,
                limit: MAX_RULE_SET_BYTES,
            });
        }
        for name in files.keys() {
            let ok = !name.is_empty()
                && name.len() <= 255
                && !name.starts_with('.')
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                && (name.ends_with(".yml") || name.ends_with(".yaml"));
            if !ok {
                return Err(RuleSetShapeError::BadName { name: name.clone() });
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RuleSetShapeError {
    /// A set with no files would silently remove every central rule.
    #[error("the rule set has no rule files")]
    Empty,
    #[error("the rule set has {count} files, more than the {limit} allowed")]
    TooManyFiles { count: usize, limit: usize },
    #[error("the rule set holds {bytes} bytes of rules, more than the {limit} allowed")]
    TooLarge { bytes: usize, limit: usize },
    /// Names are plain file names, so a set can be written to a directory as is.
    #[error(
        "bad rule file name {name:?}: letters, digits, '.', '-', '_', ending in .yml or .yaml"
    )]
    BadName { name: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn the_signed_message_tells_apart_what_a_concatenation_would_not() {
        let a = SignedRuleSet::signed_message(1, &files(&[("a.yml", "bc")]));
        let b = SignedRuleSet::signed_message(1, &files(&[("a.ymlb", "c")]));
        let c = SignedRuleSet::signed_message(2, &files(&[("a.yml", "bc")]));
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn shapes_are_checked() {
        assert_eq!(
            SignedRuleSet::check_files(&BTreeMap::new()),
            Err(RuleSetShapeError::Empty)
        );
        for bad in ["../x.yml", "a/b.yml", ".hidden.yml", "x.txt", "sp ace.yml"] {
            assert!(
                matches!(
                    SignedRuleSet::check_files(&files(&[(bad, "")])),
                    Err(RuleSetShapeError::BadName { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(
            SignedRuleSet::check_files(&files(&[("10-web.yaml", "x"), ("a_b.yml", "y")])),
            Ok(())
        );
    }
}
