//! Vigil's rule language: Sigma rules parsed from YAML with positions, validated, compiled and
//! matched against enriched [`vigil_proto::Event`]s. Used by the sensor (matching), the
//! collector and the CLI (`vigil rules check|test|list`).
//!
//! Compiled: Linux rules of Sigma's `process_creation`, `file_*`, `network_connection` and
//! `dns_query` categories and of Vigil's kernel categories ([`CATEGORIES`]), every Sigma
//! modifier but UTF-16, `expand` and `fieldref`, full conditions, correlation rules
//! ([`CorrelationEngine`]), the `vigil:` keys (action, dedup via [`Deduplicator`], output,
//! tests) and the kernel pushdown ([`RuleSet::kernel_filter`]). Rules of other log sources
//! load as [`Unsupported`] with a reason. Every problem is a [`RuleError`] pointing at
//! `path:line:column`. Matching is pure: no I/O, no clock.

pub mod bench;
mod category;
mod condition;
mod correlation;
mod dedup;
mod detection;
mod document;
mod embedded;
mod error;
mod field;
mod index;
mod matcher;
mod modifier;
mod options;
mod pushdown;
mod rule;
mod ruleset;

pub use category::{Category, CATEGORIES};
pub use correlation::{Correlation, CorrelationEngine, CorrelationHit, CorrelationKind};
pub use dedup::{DedupDecision, DedupSummary, Deduplicator};
pub use embedded::{sample_event, sample_exec_event, SampleError, TestCase, TestFailure};
pub use error::{Location, RuleError};
pub use options::{DedupSpec, OutputTemplate, RuleAction, RuleOptions};
pub use pushdown::{ExecKill, KernelFilter, KillEnforcement, PathMatch, PathPattern, RulePushdown};
pub use rule::{LogSource, Rule, Unsupported};
pub use ruleset::RuleSet;

/// The Sigma field names rules can test, for help texts and documentation.
pub fn known_fields() -> impl Iterator<Item = &'static str> {
    field::Field::sigma_names()
}
