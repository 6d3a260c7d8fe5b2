//! A YAML config file plus its drop-in directory, merged into one typed value.
//!
//! `/etc/vigil/sensor.yaml` is read first, then every `*.yaml` in `/etc/vigil/sensor.conf.d/`
//! in lexical order (`10-site.yaml` before `20-host.yaml`); each later file overrides the keys
//! it sets, mappings merge key by key, everything else (lists included) is replaced whole. The
//! drop-in directory is named after the main file (rather than one shared `conf.d/`) so a host
//! running both the sensor and the collector can configure each without the other rejecting
//! its keys as unknown.
//!
//! Every node keeps the file it came from (marked-yaml's source index), so an unknown key or a
//! bad value in a drop-in is reported against the drop-in, with its line, column and dotted key.

use std::path::{Path, PathBuf};

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::{LoaderOptions, Node, Span};
use serde::de::DeserializeOwned;

/// Why a layered config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LayeredError {
    /// A file or the drop-in directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid YAML, or (after merging) a key is unknown or has a bad value.
    #[error("{}:{line}:{column}: {}{message}", path.display(), key.as_deref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Invalid {
        /// The file that set the offending key.
        path: PathBuf,
        /// 1-based; 0 when the parser could not tell.
        line: usize,
        column: usize,
        /// The dotted path of the offending key (`collector.address`), when known.
        key: Option<String>,
        message: String,
    },
}

/// A merged config and the files it was made from, main file first.
#[derive(Debug)]
pub struct Layered<T> {
    pub value: T,
    pub files: Vec<PathBuf>,
}

/// The drop-in directory of a main config file: `sensor.yaml` → `sensor.conf.d`.
pub fn drop_in_dir(main: &Path) -> PathBuf {
    let stem = main
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    main.with_file_name(format!("{stem}.conf.d"))
}

/// Reads `main` and the `*.yaml` files of its drop-in directory (a missing directory is fine).
pub fn load<T: DeserializeOwned>(main: &Path) -> Result<Layered<T>, LayeredError> {
    let mut files = vec![main.to_owned()];
    files.extend(drop_ins(&drop_in_dir(main))?);
    let mut layers = Vec::with_capacity(files.len());
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|source| LayeredError::Read {
            path: path.clone(),
            source,
        })?;
        layers.push((path.clone(), text));
    }
    let value = parse_layers(&layers)?;
    Ok(Layered { value, files })
}

/// Merges already-read layers, first to last, and deserializes the result.
pub fn parse_layers<T: DeserializeOwned>(layers: &[(PathBuf, String)]) -> Result<T, LayeredError> {
    let mut merged = Node::Mapping(MarkedMappingNode::new_empty(Span::new_blank()));
    for (source, (path, text)) in layers.iter().enumerate() {
        merge(&mut merged, parse_one(source, path, text)?);
    }
    marked_yaml::from_node(&merged).map_err(|e| {
        let mark = e.start_mark();
        let path = mark
            .and_then(|m| layers.get(m.source()))
            .or(layers.last())
            .map(|(p, _)| p.clone())
            .unwrap_or_default();
        LayeredError::Invalid {
            path,
            line: mark.map_or(0, |m| m.line()),
            column: mark.map_or(0, |m| m.column()),
            key: e
                .path()
                .filter(|p| !p.is_empty() && *p != ".")
                .map(str::to_owned),
            message: (*e).to_string(),
        }
    })
}

fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, LayeredError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LayeredError::Read {
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| LayeredError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        // NB: dpkg leaves `x.yaml.dpkg-old` / `.dpkg-dist` beside conffiles; only `*.yaml` counts.
        if path.extension().is_some_and(|e| e == "yaml") && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn parse_one(source: usize, path: &Path, text: &str) -> Result<Node, LayeredError> {
    // NB: marked-yaml rejects a document without a top-level mapping; an empty or all-comment
    // file is a valid layer that changes nothing.
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(Node::Mapping(MarkedMappingNode::new_empty(
            Span::new_blank(),
        )));
    }
    let options = LoaderOptions::default()
        .error_on_duplicate_keys(true)
        .toplevel_mapping();
    marked_yaml::parse_yaml_with_options(source, text, options).map_err(|e| {
        let text = e.to_string();
        let (line, column, message) = split_position(&text);
        LayeredError::Invalid {
            path: path.to_owned(),
            line,
            column,
            key: None,
            message,
        }
    })
}

/// Mappings merge key by key; anything else in `over` replaces what `base` had.
fn merge(base: &mut Node, over: Node) {
    match (base, over) {
        (Node::Mapping(base), Node::Mapping(mut over)) => {
            for (key, value) in std::mem::take(&mut *over) {
                match base.get_mut(&key) {
                    Some(existing @ Node::Mapping(_)) if matches!(value, Node::Mapping(_)) => {
                        merge(existing, value)
                    }
                    _ => {
                        // Remove first so the key's own span (its file and line) is the new one.
                        base.remove(&key);
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// Splits a `line:column: message` prefix off a loader message, when it has one.
fn split_position(text: &str) -> (usize, usize, String) {
    let mut parts = text.splitn(3, ':');
    if let (Some(l), Some(c), Some(rest)) = (parts.next(), parts.next(), parts.next()) {
        if let (Ok(line), Ok(column)) = (l.trim().parse(), c.trim().parse()) {
            return (line, column, rest.trim().to_owned());
        }
    }
    (0, 0, text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        name: String,
        port: u16,
        list: Vec<String>,
        nested: Nested,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Nested {
        a: u32,
        b: u32,
    }

    fn layers(files: &[(&str, &str)]) -> Vec<(PathBuf, String)> {
        files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn later_files_override_and_mappings_merge() {
        let config: Config = parse_layers(&layers(&[
            (
                "main.yaml",
                "name: a\nport: 1\nlist: [x, y]\nnested:\n  a: 1\n  b: 2\n",
            ),
            ("d/10.yaml", "# only comments\n"),
            ("d/20.yaml", "port: 2\nlist: [z]\nnested:\n  b: 3\n"),
        ]))
        .expect("layers merge");
        assert_eq!(
            config,
            Config {
                name: "a".into(),
                port: 2,
                list: vec!["z".into()],
                nested: Nested { a: 1, b: 3 },
            }
        );
    }

    #[test]
    fn unknown_key_in_a_drop_in_names_that_file_line_and_key() {
        let err = parse_layers::<Config>(&layers(&[
            ("main.yaml", "name: a\n"),
            ("d/20.yaml", "port: 2\nnested:\n  c: 1\n"),
        ]))
        .expect_err("unknown key must fail")
        .to_string();
        assert!(err.starts_with("d/20.yaml:3:"), "{err}");
        assert!(err.contains('c'), "{err}");
    }

    #[test]
    fn bad_value_in_a_drop_in_names_its_key() {
        let err = parse_layers::<Config>(&layers(&[
            ("main.yaml", "port: 1\n"),
            ("d/20.yaml", "\nport: many\n"),
        ]))
        .expect_err("bad value must fail")
        .to_string();
        assert!(err.starts_with("d/20.yaml:2:"), "{err}");
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn broken_yaml_names_file_and_line() {
        let err = parse_layers::<Config>(&layers(&[
            ("main.yaml", "port: 1\n"),
            ("d/x.yaml", "list: [unclosed\n"),
        ]))
        .expect_err("broken yaml must fail")
        .to_string();
        assert!(err.starts_with("d/x.yaml:"), "{err}");
        assert!(!err.starts_with("d/x.yaml:0:"), "{err}");
    }

    #[test]
    fn load_reads_the_drop_in_directory_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let main = dir.path().join("svc.yaml");
        std::fs::write(&main, "port: 1\n").expect("write main");
        let drop_ins = drop_in_dir(&main);
        assert_eq!(drop_ins, dir.path().join("svc.conf.d"));
        std::fs::create_dir(&drop_ins).expect("mkdir");
        std::fs::write(drop_ins.join("20-b.yaml"), "port: 3\n").expect("write");
        std::fs::write(drop_ins.join("10-a.yaml"), "port: 2\nname: a\n").expect("write");
        std::fs::write(drop_ins.join("30.yaml.dpkg-old"), "port: 9\n").expect("write");
        let loaded: Layered<Config> = load(&main).expect("load");
        assert_eq!(loaded.value.port, 3);
        assert_eq!(loaded.value.name, "a");
        assert_eq!(loaded.files.len(), 3, "{:?}", loaded.files);
    }
}
