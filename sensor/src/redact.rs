//! Secrets on command lines never leave the host: arguments that carry passwords, tokens and
//! keys are replaced by `<redacted>` in every event and alert, after detection (so rules can
//! still see that a secret was passed) and before output or shipping.

use regex::Regex;
use vigil_proto::Event;

pub const REDACTED: &str = "<redacted>";

/// `key=value` and `key: value` forms whose value is secret (case-insensitive key).
const SECRET_ASSIGNMENT: &str = r"(?i)((?:password|passwd|pwd|pass|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key|auth|credentials?)[A-Za-z0-9_-]*\s*[=:]\s*)([^\s&;]+)";
/// AWS access key ids and the shape of a secret access key after its variable name.
const AWS_KEY_ID: &str = r"\b(AKIA|ASIA)[0-9A-Z]{16}\b";
/// Basic credentials in URLs: scheme://user:password@host.
const URL_CREDENTIALS: &str = r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]+:)([^/\s@]+)(@)";

/// Programs whose `-p` option takes a password, with or without a space (`mysql -pSECRET`).
const PASSWORD_FLAG_TOOLS: &[&str] = &[
    "mysql",
    "mysqldump",
    "mysqladmin",
    "mariadb",
    "sshpass",
    "mongo",
    "mongosh",
    "redis-cli",
];
/// Options whose following argument is a secret, for any program.
const SECRET_OPTIONS: &[&str] = &[
    "--password",
    "--passwd",
    "--token",
    "--secret",
    "--api-key",
    "--apikey",
    "--access-key",
    "--secret-key",
    "-a",
];

#[derive(Debug, thiserror::Error)]
#[error("redaction pattern {pattern:?} is not a valid regular expression: {source}")]
pub struct RedactError {
    pattern: String,
    #[source]
    source: regex::Error,
}

pub struct Redactor {
    /// Each pattern's match (or its second capture group, when it has one) is replaced.
    patterns: Vec<Regex>,
    /// Argument lists seen and their redacted form (`None`: nothing to hide). Every event
    /// carries its process's and its parent's argv, and a process's events all carry the
    /// same: the patterns run once per distinct argv instead of twice per event.
    seen: std::sync::Mutex<SeenArgv>,
}

/// Argument lists seen and their redacted form (`None`: nothing to hide).
#[derive(Default)]
struct SeenArgv {
    /// The last few, compared before the map is asked: hashing a long argv (twice per event)
    /// cost more than comparing it with the last few argvs, which a busy process repeats.
    recent: std::collections::VecDeque<(Vec<String>, Option<Vec<String>>)>,
    all: std::collections::HashMap<Vec<String>, Option<Vec<String>>>,
}

/// Argument lists compared before the map is asked.
const RECENT_ARGV: usize = 8;

/// Distinct argument lists remembered before the cache starts over.
const SEEN_ARGV: usize = 4096;

impl Redactor {
    /// The built-in patterns plus `extra` ones from the configuration.
    pub fn new(extra: &[String]) -> Result<Self, RedactError> {
        let mut patterns = Vec::new();
        for pattern in [SECRET_ASSIGNMENT, AWS_KEY_ID, URL_CREDENTIALS]
            .into_iter()
            .map(str::to_owned)
            .chain(extra.iter().cloned())
        {
            let regex = Regex::new(&pattern).map_err(|source| RedactError { pattern, source })?;
            patterns.push(regex);
        }
        Ok(Self {
            patterns,
            seen: Default::default(),
        })
    }

    /// Redacts argv in place; returns whether anything changed.
    pub fn redact_args(&self, args: &mut [String]) -> bool {
        if args.len() < 2 {
            // Only arguments after the program name are ever redacted.
            return false;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let SeenArgv { recent, all } = &mut *seen;
        // NB: `args` stays as it came until the end: it is the key.
        let found = recent.iter().position(|(argv, _)| argv[..] == *args);
        let redacted = match found.and_then(|at| recent.get(at)) {
            Some((_, redacted)) => redacted.clone(),
            None => match all.get(&*args) {
                Some(redacted) => redacted.clone(),
                None => {
                    let mut copy = args.to_vec();
                    let redacted = self.redact_args_uncached(&mut copy).then_some(copy);
                    if all.len() >= SEEN_ARGV {
                        all.clear();
                    }
                    all.insert(args.to_vec(), redacted.clone());
                    redacted
                }
            },
        };
        match found {
            Some(0) => {}
            Some(at) => {
                if let Some(entry) = recent.remove(at) {
                    recent.push_front(entry);
                }
            }
            None => {
                if recent.len() >= RECENT_ARGV {
                    recent.pop_back();
                }
                recent.push_front((args.to_vec(), redacted.clone()));
            }
        }
        match redacted {
            Some(redacted) => {
                args.clone_from_slice(&redacted);
                true
            }
            None => false,
        }
    }

    fn redact_args_uncached(&self, args: &mut [String]) -> bool {
        let program = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
            .unwrap_or_default();
        let password_flag = PASSWORD_FLAG_TOOLS.contains(&program.as_str());
        let mut changed = false;
        let mut secret_next = false;
        for (i, arg) in args.iter_mut().enumerate() {
            if i == 0 {
                continue;
            }
            if secret_next {
                *arg = REDACTED.to_owned();
                secret_next = false;
                changed = true;
                continue;
            }
            if password_flag && arg.starts_with("-p") && !arg.starts_with("--") {
                if arg.len() > 2 {
                    *arg = format!("-p{REDACTED}");
                    changed = true;
                } else if program != "mysql"
                    && program != "mysqldump"
                    && program != "mysqladmin"
                    && program != "mariadb"
                {
                    // mysql's bare `-p` prompts; sshpass/redis-cli take the next argument.
                    secret_next = true;
                }
                continue;
            }
            if let Some(option) = SECRET_OPTIONS.iter().find(|o| arg.starts_with(**o)) {
                if arg.len() == option.len() {
                    // `-a` is only a secret for redis-cli.
                    if *option != "-a" || program == "redis-cli" {
                        secret_next = true;
                    }
                    continue;
                }
                if arg.as_bytes().get(option.len()) == Some(&b'=') {
                    *arg = format!("{option}={REDACTED}");
                    changed = true;
                    continue;
                }
            }
            let redacted = self.redact_text(arg);
            if redacted != *arg {
                *arg = redacted;
                changed = true;
            }
        }
        changed
    }

    fn redact_text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for pattern in &self.patterns {
            text = pattern
                .replace_all(&text, |caps: &regex::Captures<'_>| {
                    match (caps.get(1), caps.get(3)) {
                        (Some(head), Some(tail)) => {
                            format!("{}{REDACTED}{}", head.as_str(), tail.as_str())
                        }
                        (Some(head), None) if caps.len() > 2 => {
                            format!("{}{REDACTED}", head.as_str())
                        }
                        _ => REDACTED.to_owned(),
                    }
                })
                .into_owned();
        }
        text
    }

    /// Redacts every command line an event carries (the process and its parent).
    pub fn redact_event(&self, event: &mut Event) {
        if self.redact_args(&mut event.process.args) {
            event.process.command_line = crate::enrich::command_line(&event.process.args);
        }
        if let Some(parent) = event.process.parent.as_mut() {
            if self.redact_args(&mut parent.args) {
                parent.command_line = crate::enrich::command_line(&parent.args);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(args: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Redactor::new(&[]).unwrap().redact_args(&mut args);
        args
    }

    #[test]
    fn mysql_style_passwords_are_redacted() {
        assert_eq!(
            redact(&["mysql", "-uroot", "-pSECRET", "db"]),
            ["mysql", "-uroot", "-p<redacted>", "db"]
        );
        // A bare -p prompts for the password: nothing to hide, and `db` is not a secret.
        assert_eq!(
            redact(&["/usr/bin/mysql", "-p", "db"]),
            ["/usr/bin/mysql", "-p", "db"]
        );
        assert_eq!(
            redact(&["sshpass", "-p", "hunter2", "ssh", "h"]),
            ["sshpass", "-p", "<redacted>", "ssh", "h"]
        );
        assert_eq!(
            redact(&["redis-cli", "-a", "s3cr3t"]),
            ["redis-cli", "-a", "<redacted>"]
        );
    }

    #[test]
    fn assignments_options_keys_and_url_credentials_are_redacted() {
        assert_eq!(
            redact(&["app", "password=SECRET"]),
            ["app", "password=<redacted>"]
        );
        assert_eq!(
            redact(&["curl", "https://x/?a=1&token=abc123&b=2"]),
            ["curl", "https://x/?a=1&token=<redacted>&b=2"]
        );
        assert_eq!(
            redact(&["tool", "--password", "p4ss", "--user", "me"]),
            ["tool", "--password", "<redacted>", "--user", "me"]
        );
        assert_eq!(
            redact(&["tool", "--api-key=k"]),
            ["tool", "--api-key=<redacted>"]
        );
        assert_eq!(
            redact(&["env", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG"]),
            ["env", "AWS_SECRET_ACCESS_KEY=<redacted>"]
        );
        assert_eq!(
            redact(&["aws", "AKIAIOSFODNN7EXAMPLE"]),
            ["aws", "<redacted>"]
        );
        assert_eq!(
            redact(&["git", "clone", "https://bob:pw@example.org/r.git"]),
            ["git", "clone", "https://bob:<redacted>@example.org/r.git"]
        );
    }

    #[test]
    fn a_remembered_argv_is_redacted_the_same() {
        let r = Redactor::new(&[]).unwrap();
        for _ in 0..3 {
            let mut args = vec!["app".to_owned(), "password=SECRET".to_owned()];
            assert!(r.redact_args(&mut args));
            assert_eq!(args, ["app", "password=<redacted>"]);
            let mut plain = vec!["ls".to_owned(), "-la".to_owned()];
            assert!(!r.redact_args(&mut plain));
            assert_eq!(plain, ["ls", "-la"]);
        }
    }

    #[test]
    fn ordinary_arguments_are_untouched() {
        let args = ["ls", "-la", "/etc/passwd", "--color=auto", "-p"];
        assert_eq!(redact(&args), args);
    }

    #[test]
    fn configured_patterns_apply_and_bad_ones_are_errors() {
        let r = Redactor::new(&[r"(corp-)([0-9]{6})".to_owned()]).unwrap();
        let mut args = vec!["x".to_owned(), "corp-123456".to_owned()];
        r.redact_args(&mut args);
        assert_eq!(args[1], "corp-<redacted>");
        let err = Redactor::new(&["(".to_owned()]).err().unwrap();
        assert!(err.to_string().contains("\"(\""), "{err}");
    }
}
