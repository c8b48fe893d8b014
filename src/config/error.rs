use std::fmt;

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read the configuration: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Located),
}

/// `file:line:column: key `path`: message`, the form editors and CI logs link to.
#[derive(Debug)]
pub struct Located {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for Located {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)
        } else {
            write!(f, ": key `{}`: {}", self.key, self.message)
        }
    }
}

impl ConfigError {
    pub(super) fn from_serde(
        file: &str,
        text: &str,
        err: serde_path_to_error::Error<serde_yaml::Error>,
    ) -> ConfigError {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let location = inner.location();
        let mut message = inner.to_string();
        // serde_yaml appends " at line L column C"; the location is given up front instead.
        if let Some(cut) = message.find(" at line ") {
            message.truncate(cut);
        }
        let mut key = if path == "." { String::new() } else { path };
        if let Some(unknown) = unknown_field(&message) {
            // serde_path_to_error stops at the parent, except at the top level where it
            // names the key itself; name the offending key once.
            key = if key.is_empty() || key == unknown {
                unknown
            } else {
                format!("{key}.{unknown}")
            };
        }
        // serde_yaml starts its message with the parent's path, which the key says.
        if let Some((prefix, rest)) = message.split_once(": ") {
            if !prefix.contains(' ') && key.starts_with(prefix) {
                message = rest.to_string();
            }
        }
        let (line, column) = match location {
            // Errors from our own value checks carry the position of the enclosing
            // mapping; the key's own line is more useful.
            Some(loc) if !line_mentions(text, loc.line(), &key) => match locate_key(text, &key) {
                Some(line) => (Some(line), None),
                None => (Some(loc.line()), Some(loc.column())),
            },
            Some(loc) => (Some(loc.line()), Some(loc.column())),
            None => (locate_key(text, &key), None),
        };
        ConfigError::Invalid(Located {
            file: file.to_string(),
            line,
            column,
            key,
            message,
        })
    }
}

impl ConfigError {
    /// An error at a known place of the file, with no key to name.
    pub(super) fn at(file: &str, line: usize, column: usize, message: String) -> ConfigError {
        ConfigError::Invalid(Located {
            file: file.to_string(),
            line: Some(line),
            column: Some(column),
            key: String::new(),
            message,
        })
    }

    pub(super) fn invalid(file: &str, text: &str, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid(Located {
            file: file.to_string(),
            line: locate_key(text, key),
            column: None,
            key: key.to_string(),
            message,
        })
    }
}

/// Whether line `line` (1-based) of `text` holds the last segment of `key`, or is part of
/// a flow sequence or continuation (no key of its own).
fn line_mentions(text: &str, line: usize, key: &str) -> bool {
    let Some(last) = key.rsplit('.').next().filter(|l| !l.is_empty()) else {
        return true;
    };
    let Some(content) = text.lines().nth(line.saturating_sub(1)) else {
        return true;
    };
    let trimmed = content.trim_start();
    let has_own_key = trimmed
        .split_once(':')
        .is_some_and(|(k, _)| !k.contains(' ') && !k.starts_with('-') && !k.starts_with('['));
    content.contains(last) || !has_own_key
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// Best-effort line of the last segment of `key`, for errors serde reports without a position.
fn locate_key(text: &str, key: &str) -> Option<usize> {
    let last = key.rsplit('.').next()?;
    if last.is_empty() {
        return None;
    }
    text.lines()
        .position(|line| line.trim_start().starts_with(&format!("{last}:")))
        .map(|idx| idx + 1)
}
