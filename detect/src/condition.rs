//! The Sigma `condition` language: `and`, `or`, `not`, parentheses, `1 of pattern`,
//! `all of pattern`, `1 of them`, `all of them`, with precedence not > and > or. Parsing
//! resolves every name to a selection index up front, so evaluation never looks names up and
//! an undefined selection is a load error rather than a rule that silently never fires.

/// A parsed condition over selections numbered in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expr {
    Selection(usize),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

impl Expr {
    /// Evaluates with `selection(i)` telling whether selection `i` matched; short-circuits.
    pub fn eval(&self, selection: &mut impl FnMut(usize) -> bool) -> bool {
        match self {
            Expr::Selection(i) => selection(*i),
            Expr::Not(inner) => !inner.eval(selection),
            Expr::And(all) => all.iter().all(|e| e.eval(selection)),
            Expr::Or(any) => any.iter().any(|e| e.eval(selection)),
        }
    }
}

/// A condition error at a byte offset of the condition text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConditionError {
    pub offset: usize,
    pub kind: ConditionErrorKind,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ConditionErrorKind {
    Syntax(String),
    Undefined(String),
    Unsupported(String),
}

/// Deeper nesting than this is certainly not a hand-written rule; refusing it keeps the
/// recursive parser's stack use bounded on hostile input.
const MAX_DEPTH: usize = 64;

/// Parses `text`, resolving names against `names` (the detection's selections, in order).
pub(crate) fn parse(text: &str, names: &[&str]) -> Result<Expr, ConditionError> {
    let tokens = tokenize(text);
    let mut parser = Parser {
        tokens,
        next: 0,
        names,
        end: text.len(),
        depth: 0,
    };
    let expr = parser.or()?;
    match parser.peek() {
        None => Ok(expr),
        Some(t) if t.text == "|" => Err(ConditionError {
            offset: t.offset,
            kind: ConditionErrorKind::Unsupported("aggregation after `|`".into()),
        }),
        Some(t) => Err(parser.error_at(t, format!("unexpected `{}`", t.text))),
    }
}

#[derive(Clone, Copy, Debug)]
struct Token<'t> {
    text: &'t str,
    offset: usize,
}

fn tokenize(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut word_start = None;
    for (i, c) in text.char_indices() {
        let single = matches!(c, '(' | ')' | '|');
        if c.is_whitespace() || single {
            if let Some(start) = word_start.take() {
                tokens.push(Token {
                    text: &text[start..i],
                    offset: start,
                });
            }
            if single {
                tokens.push(Token {
                    text: &text[i..i + 1],
                    offset: i,
                });
            }
        } else if word_start.is_none() {
            word_start = Some(i);
        }
    }
    if let Some(start) = word_start {
        tokens.push(Token {
            text: &text[start..],
            offset: start,
        });
    }
    tokens
}

struct Parser<'t, 'n> {
    tokens: Vec<Token<'t>>,
    next: usize,
    names: &'n [&'n str],
    /// Offset reported for "unexpected end".
    end: usize,
    depth: usize,
}

fn is_keyword(token: &Token<'_>, keyword: &str) -> bool {
    token.text.eq_ignore_ascii_case(keyword)
}

impl<'t> Parser<'t, '_> {
    fn peek(&self) -> Option<Token<'t>> {
        self.tokens.get(self.next).copied()
    }

    fn bump(&mut self) -> Option<Token<'t>> {
        let token = self.peek();
        self.next += usize::from(token.is_some());
        token
    }

    fn eat(&mut self, keyword: &str) -> bool {
        let hit = self.peek().is_some_and(|t| is_keyword(&t, keyword));
        self.next += usize::from(hit);
        hit
    }

    fn error_at(&self, token: Token<'_>, reason: String) -> ConditionError {
        ConditionError {
            offset: token.offset,
            kind: ConditionErrorKind::Syntax(reason),
        }
    }

    fn or(&mut self) -> Result<Expr, ConditionError> {
        let mut terms = vec![self.and()?];
        while self.eat("or") {
            terms.push(self.and()?);
        }
        Ok(flatten(terms, Expr::Or))
    }

    fn and(&mut self) -> Result<Expr, ConditionError> {
        let mut terms = vec![self.not()?];
        while self.eat("and") {
            terms.push(self.not()?);
        }
        Ok(flatten(terms, Expr::And))
    }

    fn not(&mut self) -> Result<Expr, ConditionError> {
        let Some(token) = self.peek() else {
            return Err(ConditionError {
                offset: self.end,
                kind: ConditionErrorKind::Syntax("unexpected end, expected a selection".into()),
            });
        };
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_at(token, "nested too deeply".into()));
        }
        let expr = if self.eat("not") {
            Expr::Not(Box::new(self.not()?))
        } else {
            self.atom()?
        };
        self.depth -= 1;
        Ok(expr)
    }

    fn atom(&mut self) -> Result<Expr, ConditionError> {
        let Some(token) = self.bump() else {
            return Err(ConditionError {
                offset: self.end,
                kind: ConditionErrorKind::Syntax("unexpected end".into()),
            });
        };
        match token.text {
            "(" => {
                let inner = self.or()?;
                match self.bump() {
                    Some(t) if t.text == ")" => Ok(inner),
                    Some(t) => Err(self.error_at(t, format!("expected `)`, found `{}`", t.text))),
                    None => Err(self.error_at(token, "unclosed `(`".into())),
                }
            }
            "|" => Err(ConditionError {
                offset: token.offset,
                kind: ConditionErrorKind::Unsupported("aggregation after `|`".into()),
            }),
            ")" => Err(self.error_at(token, "unexpected `)`".into())),
            _ if ["and", "or", "of", "them"]
                .iter()
                .any(|k| is_keyword(&token, k)) =>
            {
                Err(self.error_at(token, format!("unexpected `{}`", token.text)))
            }
            _ if is_keyword(&token, "near") => Err(ConditionError {
                offset: token.offset,
                kind: ConditionErrorKind::Unsupported("`near`".into()),
            }),
            _ if self.peek().is_some_and(|t| is_keyword(&t, "of")) => self.quantified(token),
            name => self.selection(token, name),
        }
    }

    /// `1 of x*`, `all of x*`, `any of them` ...: `token` is the quantifier, `of` is next.
    fn quantified(&mut self, quantifier: Token<'_>) -> Result<Expr, ConditionError> {
        let all = if is_keyword(&quantifier, "all") {
            true
        } else if quantifier.text == "1" || is_keyword(&quantifier, "any") {
            false
        } else if quantifier.text.parse::<u32>().is_ok() {
            return Err(ConditionError {
                offset: quantifier.offset,
                kind: ConditionErrorKind::Unsupported(format!(
                    "`{} of` (only `1 of` and `all of`)",
                    quantifier.text
                )),
            });
        } else {
            let reason = format!(
                "expected `1` or `all` before `of`, found `{}`",
                quantifier.text
            );
            return Err(self.error_at(quantifier, reason));
        };
        self.bump(); // `of`
        let Some(target) = self.bump().filter(|t| !matches!(t.text, "(" | ")" | "|")) else {
            return Err(ConditionError {
                offset: self.peek().map_or(self.end, |t| t.offset),
                kind: ConditionErrorKind::Syntax("expected a name pattern or `them`".into()),
            });
        };
        let matched: Vec<Expr> = if is_keyword(&target, "them") {
            // Sigma: `them` leaves out selections whose name starts with `_`.
            (0..self.names.len())
                .filter(|&i| !self.names[i].starts_with('_'))
                .map(Expr::Selection)
                .collect()
        } else {
            (0..self.names.len())
                .filter(|&i| glob(target.text, self.names[i]))
                .map(Expr::Selection)
                .collect()
        };
        if matched.is_empty() {
            return Err(ConditionError {
                offset: target.offset,
                kind: ConditionErrorKind::Undefined(target.text.to_owned()),
            });
        }
        Ok(if all {
            flatten(matched, Expr::And)
        } else {
            flatten(matched, Expr::Or)
        })
    }

    fn selection(&mut self, token: Token<'_>, name: &str) -> Result<Expr, ConditionError> {
        match self.names.iter().position(|n| *n == name) {
            Some(i) => Ok(Expr::Selection(i)),
            None => Err(ConditionError {
                offset: token.offset,
                kind: ConditionErrorKind::Undefined(name.to_owned()),
            }),
        }
    }
}

fn flatten(mut terms: Vec<Expr>, make: fn(Vec<Expr>) -> Expr) -> Expr {
    if terms.len() == 1 {
        terms.swap_remove(0)
    } else {
        make(terms)
    }
}

/// Sigma name patterns: `*` matches any run of characters; everything else is literal.
fn glob(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*` at all: exact
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["a", "b", "c", "sel_1", "sel_2", "_private"];

    fn parsed(text: &str) -> Expr {
        parse(text, NAMES).unwrap_or_else(|e| panic!("{text:?} should parse: {e:?}"))
    }

    fn eval(text: &str, truth: &[bool]) -> bool {
        parsed(text).eval(&mut |i| truth[i])
    }

    #[test]
    fn precedence_is_not_then_and_then_or() {
        use Expr::*;
        assert_eq!(
            parsed("a or b and not c"),
            Or(vec![
                Selection(0),
                And(vec![Selection(1), Not(Box::new(Selection(2)))])
            ])
        );
        assert_eq!(
            parsed("not a and b"),
            And(vec![Not(Box::new(Selection(0))), Selection(1)])
        );
        assert_eq!(
            parsed("(a or b) and c"),
            And(vec![Or(vec![Selection(0), Selection(1)]), Selection(2)])
        );
        // a=T, b=F, c=F: `a or b and c` is T under correct precedence, F if left-to-right.
        assert!(eval(
            "a or b and c",
            &[true, false, false, false, false, false]
        ));
        assert!(!eval(
            "(a or b) and c",
            &[true, false, false, false, false, false]
        ));
    }

    #[test]
    fn quantifiers_expand_patterns_and_them() {
        use Expr::*;
        assert_eq!(parsed("1 of sel_*"), Or(vec![Selection(3), Selection(4)]));
        assert_eq!(
            parsed("all of sel_*"),
            And(vec![Selection(3), Selection(4)])
        );
        assert_eq!(parsed("any of sel_1"), Selection(3));
        let them = parsed("all of them");
        assert_eq!(
            them,
            And((0..5).map(Selection).collect()),
            "`them` skips `_private`"
        );
        assert!(
            !eval(
                "1 of them and not _private",
                &[false, false, true, false, false, true]
            ),
            "`not _private` still applies after `1 of them`"
        );
    }

    #[test]
    fn errors_point_at_the_token() {
        let err = |text: &str| parse(text, NAMES).expect_err(text);
        assert_eq!(
            err("a and nope"),
            ConditionError {
                offset: 6,
                kind: ConditionErrorKind::Undefined("nope".into())
            }
        );
        assert_eq!(
            err("1 of zz*").kind,
            ConditionErrorKind::Undefined("zz*".into())
        );
        assert_eq!(err("a and").offset, 5);
        assert_eq!(err("(a or b").offset, 0);
        assert_eq!(err("a b").offset, 2);
        assert!(matches!(
            err("a | count() > 5").kind,
            ConditionErrorKind::Unsupported(_)
        ));
        assert!(matches!(
            err("2 of sel_*").kind,
            ConditionErrorKind::Unsupported(_)
        ));
        assert!(matches!(err("").kind, ConditionErrorKind::Syntax(_)));
        let deep = format!("{}a{}", "(".repeat(1000), ")".repeat(1000));
        assert!(matches!(err(&deep).kind, ConditionErrorKind::Syntax(_)));
    }

    #[test]
    fn glob_matches_star_anywhere() {
        assert!(glob("sel*", "selection"));
        assert!(glob("*tion", "selection"));
        assert!(glob("s*e*n", "selection"));
        assert!(glob("selection", "selection"));
        assert!(!glob("sel", "selection"));
        assert!(!glob("s*x", "selection"));
        assert!(!glob("ab*ba", "aba"), "parts may not overlap");
    }
}
