//! Sigma value modifiers (`Field|contains|all`): splitting a detection key into field name and
//! modifiers, and checking that the modifiers are known, implemented and not contradictory.
//! What the modifiers *do* to a value lives in [`crate::matcher`].

/// How a value is compared with the field. At most one per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compare {
    /// Whole-value match (Sigma's default), with `*` and `?` wildcards.
    Equals,
    Contains,
    StartsWith,
    EndsWith,
    /// Regular expression (Rust `regex` syntax), unanchored, case-sensitive unless `|i`.
    Regex,
    /// `|exists: true|false`: whether the field has a (non-empty) value.
    Exists,
    /// Numeric comparisons: `|lt`, `|lte`, `|gt`, `|gte`.
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    /// `|cidr`: the field is an IP address inside the given network.
    Cidr,
}

/// Turns a value into its encoded forms before comparing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// `|base64`: the value's standard base64 encoding.
    Base64,
    /// `|base64offset`: the three encodings the value can take inside a longer base64 text,
    /// depending on its byte offset modulo 3.
    Base64Offset,
}

/// The parsed modifiers of one detection key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Modifiers {
    pub compare: Compare,
    /// `|all`: every listed value must match (default: any one).
    pub all: bool,
    /// `|cased`: compare case-sensitively.
    pub cased: bool,
    /// `|windash`: a leading `-` or `/` of a word also matches `/`, `-` and Unicode dashes.
    pub windash: bool,
    pub encoding: Option<Encoding>,
    /// Regex flags `|i`, `|m`, `|s`, valid only after `|re`.
    pub regex_ignore_case: bool,
    pub regex_multi_line: bool,
    pub regex_dot_all: bool,
}

/// Why a key's modifiers are rejected.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ModifierError {
    Unknown(String),
    /// Valid Sigma, not implemented here; the text says what and why.
    Unsupported(String),
    /// Known modifiers that cannot go together.
    Conflict(String),
}

/// Splits `Field|mod1|mod2` into the field name and each modifier with its byte offset in
/// the key (so errors can point at the modifier itself).
pub(crate) fn split_key(key: &str) -> (&str, Vec<(&str, usize)>) {
    let mut parts = key.split('|');
    let field = parts.next().unwrap_or_default();
    let mut offset = field.len() + 1;
    let mut modifiers = Vec::new();
    for part in parts {
        modifiers.push((part, offset));
        offset += part.len() + 1;
    }
    (field, modifiers)
}

impl Modifiers {
    /// Just a comparison, no other modifier.
    pub fn plain(compare: Compare) -> Modifiers {
        Modifiers {
            compare,
            all: false,
            cased: false,
            windash: false,
            encoding: None,
            regex_ignore_case: false,
            regex_multi_line: false,
            regex_dot_all: false,
        }
    }

    /// Parses the modifiers after the field name. On error, returns the index into `names`
    /// of the offending modifier.
    pub fn parse(names: &[&str]) -> Result<Modifiers, (usize, ModifierError)> {
        let mut m = Modifiers::plain(Compare::Equals);
        for (i, name) in names.iter().enumerate() {
            let compare = match *name {
                "contains" => Some(Compare::Contains),
                "startswith" => Some(Compare::StartsWith),
                "endswith" => Some(Compare::EndsWith),
                "re" => Some(Compare::Regex),
                "exists" => Some(Compare::Exists),
                "lt" => Some(Compare::Less),
                "lte" => Some(Compare::LessOrEqual),
                "gt" => Some(Compare::Greater),
                "gte" => Some(Compare::GreaterOrEqual),
                "cidr" => Some(Compare::Cidr),
                _ => None,
            };
            if let Some(compare) = compare {
                if m.compare != Compare::Equals {
                    let reason = format!("`{name}` cannot follow another comparison modifier");
                    return Err((i, ModifierError::Conflict(reason)));
                }
                m.compare = compare;
                continue;
            }
            match *name {
                "all" => m.all = true,
                "cased" => m.cased = true,
                "windash" => m.windash = true,
                "base64" | "base64offset" if m.encoding.is_some() => {
                    let reason = "only one base64 modifier per field".to_owned();
                    return Err((i, ModifierError::Conflict(reason)));
                }
                "base64" => m.encoding = Some(Encoding::Base64),
                "base64offset" => m.encoding = Some(Encoding::Base64Offset),
                "i" | "m" | "s" if m.compare != Compare::Regex => {
                    let reason = format!("regex flag `{name}` must follow `re`");
                    return Err((i, ModifierError::Conflict(reason)));
                }
                "i" => m.regex_ignore_case = true,
                "m" => m.regex_multi_line = true,
                "s" => m.regex_dot_all = true,
                other => return Err((i, unknown_or_unsupported(other))),
            }
        }
        m.check()
            .map_err(|reason| (names.len().saturating_sub(1), reason))?;
        Ok(m)
    }

    fn check(&self) -> Result<(), ModifierError> {
        let conflict = |s: &str| Err(ModifierError::Conflict(s.to_owned()));
        let wildcard_free = matches!(
            self.compare,
            Compare::Regex | Compare::Exists | Compare::Cidr
        ) || self.is_numeric();
        if wildcard_free && (self.windash || self.encoding.is_some()) {
            return conflict("`windash` and `base64` apply to text comparisons only");
        }
        if self.compare == Compare::Exists && (self.all || self.cased) {
            return conflict("`exists` takes no other modifier");
        }
        if self.compare == Compare::Regex && self.cased {
            return conflict("`re` is already case-sensitive (use `|re|i` for the opposite)");
        }
        Ok(())
    }

    pub fn is_numeric(&self) -> bool {
        matches!(
            self.compare,
            Compare::Less | Compare::LessOrEqual | Compare::Greater | Compare::GreaterOrEqual
        )
    }
}

fn unknown_or_unsupported(name: &str) -> ModifierError {
    let why = match name {
        "wide" | "utf16" | "utf16le" | "utf16be" => "UTF-16 encodings (Windows-only)",
        "expand" => "`expand` placeholders",
        "fieldref" => "`fieldref` (comparing two fields)",
        "minute" | "hour" | "day" | "week" | "month" | "year" => "time-part modifiers",
        _ => return ModifierError::Unknown(name.to_owned()),
    };
    ModifierError::Unsupported(format!("modifier {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_key_reports_modifier_offsets() {
        let (field, mods) = split_key("CommandLine|contains|all");
        assert_eq!(field, "CommandLine");
        assert_eq!(mods, vec![("contains", 12), ("all", 21)]);
        assert_eq!(split_key("Image"), ("Image", vec![]));
        assert_eq!(split_key("|all"), ("", vec![("all", 1)]));
    }

    #[test]
    fn combinations_parse() {
        let m = Modifiers::parse(&["contains", "all"]).expect("contains|all is valid");
        assert_eq!((m.compare, m.all), (Compare::Contains, true));
        let m = Modifiers::parse(&["base64offset", "contains"]).expect("valid");
        assert_eq!(m.encoding, Some(Encoding::Base64Offset));
        let m = Modifiers::parse(&["re", "i"]).expect("re|i is valid");
        assert!(m.regex_ignore_case, "re|i sets ignore-case");
    }

    #[test]
    fn bad_modifiers_name_the_culprit() {
        assert_eq!(
            Modifiers::parse(&["contains", "foo"]),
            Err((1, ModifierError::Unknown("foo".into())))
        );
        let (i, err) = Modifiers::parse(&["startswith", "endswith"]).expect_err("conflict");
        assert_eq!(i, 1);
        assert!(matches!(err, ModifierError::Conflict(_)), "{err:?}");
        let (_, err) = Modifiers::parse(&["expand"]).expect_err("expand is unsupported");
        assert!(matches!(err, ModifierError::Unsupported(_)), "{err:?}");
        let (_, err) = Modifiers::parse(&["i"]).expect_err("i needs re");
        assert!(matches!(err, ModifierError::Conflict(_)), "{err:?}");
    }
}
