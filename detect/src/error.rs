//! The one error type of the crate, [`RuleError`], and the [`Location`] every rule error
//! points at. Rule authors read these in a terminal, so each renders as
//! `path:line:column: reason`, the shape editors and CI annotations understand.

use std::fmt;
use std::path::PathBuf;

/// A position in a rule source: 1-based line and column (in characters, not bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The file path, or `<inline>` for text given to [`crate::RuleSet::parse`].
    pub origin: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.origin, self.line, self.column)
    }
}

/// Why a rule file could not be loaded. Every variant except [`RuleError::Io`] carries the
/// location of the offending YAML node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// A rule file or directory could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not well-formed YAML, or uses YAML features rules have no use for
    /// (anchors, aliases, tags, duplicate keys).
    #[error("{at}: YAML: {reason}")]
    Yaml { at: Location, reason: String },
    /// The YAML is well-formed but is not a valid rule: a required key is missing, a value has
    /// the wrong shape, a level is not a Sigma level.
    #[error("{at}: {reason}")]
    Invalid { at: Location, reason: String },
    /// A detection names a field the sensor never fills in, so the rule could never match.
    #[error("{at}: unknown field `{field}`{hint}")]
    UnknownField {
        at: Location,
        field: String,
        /// A suggestion such as " (did you mean `CommandLine`?)", or empty.
        hint: String,
    },
    /// A field carries a modifier that is not Sigma (or is misspelt).
    #[error("{at}: unknown modifier `{modifier}`")]
    UnknownModifier { at: Location, modifier: String },
    /// A valid Sigma feature this engine deliberately does not implement yet (aggregations,
    /// `near`, placeholders, UTF-16 encodings, ...). Listed so a rule is never half-understood.
    #[error("{at}: unsupported Sigma feature: {feature}")]
    Unsupported { at: Location, feature: String },
    /// A `|re` value is not a valid pattern for Rust's `regex` crate.
    #[error("{at}: bad regular expression {pattern:?}: {source}")]
    Regex {
        at: Location,
        pattern: String,
        #[source]
        source: regex::Error,
    },
    /// The `condition` does not parse.
    #[error("{at}: condition: {reason}")]
    Condition { at: Location, reason: String },
    /// The `condition` names a selection the detection does not define.
    #[error("{at}: condition refers to undefined selection `{name}`")]
    UndefinedSelection { at: Location, name: String },
    /// Two rules share an id; alerts and deduplication key on it, so it must be unique.
    #[error("{at}: duplicate rule id `{id}` (first defined at {first})")]
    DuplicateId {
        at: Location,
        id: String,
        first: Location,
    },
}

impl RuleError {
    /// Where in the rule source the problem is; `None` only for I/O errors.
    pub fn location(&self) -> Option<&Location> {
        match self {
            RuleError::Io { .. } => None,
            RuleError::Yaml { at, .. }
            | RuleError::Invalid { at, .. }
            | RuleError::UnknownField { at, .. }
            | RuleError::UnknownModifier { at, .. }
            | RuleError::Unsupported { at, .. }
            | RuleError::Regex { at, .. }
            | RuleError::Condition { at, .. }
            | RuleError::UndefinedSelection { at, .. }
            | RuleError::DuplicateId { at, .. } => Some(at),
        }
    }

    /// True when the rule is valid Sigma that this engine does not implement (as opposed to
    /// a broken rule).
    pub fn is_unsupported_feature(&self) -> bool {
        matches!(self, RuleError::Unsupported { .. })
    }

    pub(crate) fn invalid(at: Location, reason: impl Into<String>) -> Self {
        RuleError::Invalid {
            at,
            reason: reason.into(),
        }
    }

    pub(crate) fn unsupported(at: Location, feature: impl Into<String>) -> Self {
        RuleError::Unsupported {
            at,
            feature: feature.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_path_line_column_reason() {
        let at = Location {
            origin: "rules/x.yml".into(),
            line: 3,
            column: 7,
        };
        let err = RuleError::invalid(at, "missing `title`");
        assert_eq!(err.to_string(), "rules/x.yml:3:7: missing `title`");
    }
}
