//! YAML text → positioned documents. Owns splitting a file into its `---`-separated documents
//! (marked-yaml reads one document per call), parsing each with spans, and turning spans
//! back into file-relative [`Location`]s, including positions *inside* a scalar (a condition
//! token, a modifier in a key) when the source text allows it.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Marker, Node};

use crate::error::{Location, RuleError};

/// One YAML document of a rule file, parsed, with what is needed to report positions in it.
pub(crate) struct Document<'s> {
    pub root: Node,
    /// 0-based index among the non-empty documents of the file (used for default rule ids).
    pub index: usize,
    pub pos: Positions<'s>,
}

/// Maps marked-yaml markers (relative to one document's text) to file locations.
#[derive(Clone, Copy)]
pub(crate) struct Positions<'s> {
    origin: &'s str,
    /// The document's own text: markers index into it.
    chunk: &'s str,
    /// Lines of the file before the document's first line.
    line_offset: usize,
}

impl<'s> Positions<'s> {
    pub fn origin(&self) -> &'s str {
        self.origin
    }

    fn at_marker(&self, marker: Option<&Marker>) -> Location {
        // NB: marked-yaml leaves no marker only on nodes it synthesises; ours all come from
        // the parser, so the fallback is the document start rather than a panic.
        let (line, column) = marker.map_or((1, 1), |m| (m.line(), m.column()));
        Location {
            origin: self.origin.to_owned(),
            line: line + self.line_offset,
            column,
        }
    }

    /// Where a node starts.
    pub fn at(&self, node: &Node) -> Location {
        match node {
            Node::Mapping(map) => self.at_mapping(map),
            _ => self.at_marker(node.span().start()),
        }
    }

    /// Where a mapping starts: its first key. NB: marked-yaml marks a block mapping at the
    /// first key's colon, which reads as an odd place to point a rule author at.
    pub fn at_mapping(&self, map: &MarkedMappingNode) -> Location {
        match map.keys().next() {
            Some(key) => self.at_scalar(key),
            None => self.at_marker(map.span().start()),
        }
    }

    /// Where a scalar (typically a mapping key) starts.
    pub fn at_scalar(&self, scalar: &MarkedScalarNode) -> Location {
        self.at_marker(scalar.span().start())
    }

    /// Where the byte `offset` of a scalar's value sits in the file. Exact for single-line
    /// plain and quoted scalars whose source text is the value verbatim; otherwise (escapes,
    /// folded or block scalars) the scalar's start, which is still the right line to look at.
    pub fn within(&self, scalar: &MarkedScalarNode, offset: usize) -> Location {
        let start = self.at_scalar(scalar);
        let value = scalar.as_str();
        let Some(marker) = scalar.span().start() else {
            return start;
        };
        if value.contains('\n') || offset > value.len() || !value.is_char_boundary(offset) {
            return start;
        }
        let Some((byte, _)) = self.chunk.char_indices().nth(marker.character()) else {
            return start;
        };
        let raw = &self.chunk[byte..];
        let quote = match raw.chars().next() {
            Some(q @ ('\'' | '"')) if raw[1..].starts_with(value) => q.len_utf8(),
            _ if raw.starts_with(value) => 0,
            _ => return start,
        };
        Location {
            column: start.column + quote + value[..offset].chars().count(),
            ..start
        }
    }
}

/// Splits `source` into YAML documents and parses each. Empty documents (only comments or
/// document markers) are skipped.
pub(crate) fn parse_documents<'s>(
    source: &'s str,
    origin: &'s str,
) -> Result<Vec<Document<'s>>, RuleError> {
    let mut documents = Vec::new();
    for (chunk, line_offset) in split_documents(source) {
        if is_blank_document(chunk) {
            continue;
        }
        let pos = Positions {
            origin,
            chunk,
            line_offset,
        };
        // Rules never need anchors, tags or repeated keys, and a repeated key in a detection
        // would silently drop a selection: marked-yaml rejects anchors and tags itself, and is
        // told to reject duplicates. Coercion is off so that quoted 'null' stays a string.
        let options = LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .prevent_coercion(true);
        let root = marked_yaml::parse_yaml_with_options(0, chunk, options)
            .map_err(|e| yaml_error(&pos, e))?;
        documents.push(Document {
            root,
            index: documents.len(),
            pos,
        });
    }
    Ok(documents)
}

fn yaml_error(pos: &Positions<'_>, error: LoadError) -> RuleError {
    let (marker, reason) = match &error {
        LoadError::TopLevelMustBeMapping(m) => (Some(*m), "a rule must be a mapping".to_owned()),
        LoadError::TopLevelMustBeSequence(m) => (Some(*m), "expected a sequence".to_owned()),
        LoadError::UnexpectedAnchor(m) => (Some(*m), "anchors are not allowed".to_owned()),
        LoadError::MappingKeyMustBeScalar(m) => (Some(*m), "keys must be scalars".to_owned()),
        LoadError::UnexpectedTag(m) => (Some(*m), "tags are not allowed".to_owned()),
        LoadError::ScanError(m, e) => (Some(*m), e.info().to_owned()),
        LoadError::DuplicateKey(inner) => {
            let first = pos.at_scalar(&inner.prev_key);
            (
                inner.key.span().start().copied(),
                format!(
                    "duplicate key `{}` (first at line {})",
                    inner.key.as_str(),
                    first.line
                ),
            )
        }
    };
    RuleError::Yaml {
        at: pos.at_marker(marker.as_ref()),
        reason,
    }
}

/// Cuts the text at `---` lines (a new document starts there) and after `...` lines (a
/// document ends there). Returns each piece with the number of file lines before it.
fn split_documents(source: &str) -> Vec<(&str, usize)> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line) = (0, 0);
    let mut offset = 0;
    for (line_no, line) in source.split_inclusive('\n').enumerate() {
        if is_marker(line, "---") && offset > start {
            chunks.push((&source[start..offset], start_line));
            (start, start_line) = (offset, line_no);
        }
        offset += line.len();
        if is_marker(line, "...") {
            chunks.push((&source[start..offset], start_line));
            (start, start_line) = (offset, line_no + 1);
        }
    }
    if offset > start {
        chunks.push((&source[start..], start_line));
    }
    chunks
}

/// A YAML document marker: the three characters at column 1, then the end of the line or a
/// blank (`--- # comment` and `--- {a: 1}` are both markers).
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

fn is_blank_document(chunk: &str) -> bool {
    chunk.lines().all(|line| {
        let content = ["---", "..."]
            .iter()
            .find(|m| is_marker(line, m))
            .map_or(line, |m| &line[m.len()..])
            .trim();
        content.is_empty() || content.starts_with('#') || content.starts_with('%')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_document_markers_and_keeps_line_numbers() {
        let text = "a: 1\n---\nb: 2\nc: 3\n...\n--- # third\nd: 4\n";
        let chunks = split_documents(text);
        let lines: Vec<usize> = chunks.iter().map(|(_, l)| *l).collect();
        assert_eq!(lines, vec![0, 1, 5], "chunks: {chunks:?}");
        assert_eq!(chunks[1].0, "---\nb: 2\nc: 3\n...\n");
    }

    #[test]
    fn leading_marker_and_comment_only_documents_are_skipped() {
        let text = "# header\n---\na: 1\n---\n# nothing\n";
        let docs = parse_documents(text, "t.yml").expect("two markers, one document");
        assert_eq!(docs.len(), 1, "only one document has content");
        assert_eq!(docs[0].pos.at(&docs[0].root).line, 3);
    }

    #[test]
    fn syntax_error_in_second_document_has_file_line() {
        let text = "a: 1\n---\nb: [1, 2\n";
        let err = parse_documents(text, "t.yml")
            .err()
            .expect("an unclosed flow sequence is a syntax error");
        let at = err.location().expect("syntax errors carry a location");
        assert_eq!((at.line, at.column), (4, 1), "{err}");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = parse_documents("a: 1\na: 2\n", "t.yml")
            .err()
            .expect("a repeated key is an error");
        assert_eq!(
            err.to_string(),
            "t.yml:2:1: YAML: duplicate key `a` (first at line 1)"
        );
    }

    #[test]
    fn within_maps_offsets_in_plain_and_quoted_scalars() {
        let text = "p: sel and nope\nq: 'sel or nope'\nr: >\n  sel and\n  nope\n";
        let docs = parse_documents(text, "t.yml").expect("valid YAML");
        let map = docs[0].root.as_mapping().expect("top level is a mapping");
        let pos = docs[0].pos;
        let p = map.get_scalar("p").expect("p is a scalar");
        assert_eq!(pos.within(p, 8).column, 12);
        let q = map.get_scalar("q").expect("q is a scalar");
        assert_eq!(pos.within(q, 7).column, 12);
        let r = map.get_scalar("r").expect("r is a scalar");
        let at = pos.within(r, 8);
        assert_eq!(
            (at.line, at.column),
            (4, 3),
            "folded scalars point at their start"
        );
    }
}
