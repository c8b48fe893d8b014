//! What the text of an SQL statement says of it, for PostgreSQL and MySQL alike: its
//! verb, from a closed set, and the first table it names, never a literal or a
//! parameter.

/// SQL verbs a statement may be named by; others are `_OTHER`.
const VERBS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "WITH", "VALUES", "TABLE",
    "COPY", "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "PREPARE",
    "EXECUTE", "DEALLOCATE", "CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE", "GRANT",
    "REVOKE", "COMMENT", "ANALYZE", "VACUUM", "OPTIMIZE", "EXPLAIN", "DESCRIBE", "DESC",
    "SET", "RESET", "SHOW", "USE", "DISCARD", "LOCK", "UNLOCK", "LISTEN", "NOTIFY",
    "UNLISTEN", "DECLARE", "FETCH", "MOVE", "CLOSE", "CALL", "DO", "HANDLER", "REFRESH",
    "REINDEX", "CLUSTER", "CHECKPOINT", "FLUSH", "KILL", "LOAD", "IMPORT", "SECURITY",
    "REASSIGN", "XA",
];

/// What stands for a verb outside the known set.
pub const OTHER: &str = "_OTHER";

/// Where the dialects' quoting and comments differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `"Quoted"` identifiers; unquoted names fold to lower case.
    Postgres,
    /// `` `quoted` `` identifiers, `"..."` strings and `#` comments; names keep their case.
    Mysql,
}

impl Dialect {
    fn identifier_quote(self) -> u8 {
        match self {
            Dialect::Postgres => b'"',
            Dialect::Mysql => b'`',
        }
    }

    fn is_string_quote(self, b: u8) -> bool {
        b == b'\'' || (self == Dialect::Mysql && b == b'"')
    }

    /// Where a comment that runs to the end of its line starts.
    fn line_comment(self, text: &[u8]) -> bool {
        text.starts_with(b"--") || (self == Dialect::Mysql && text.first() == Some(&b'#'))
    }
}

/// The `db_operation_name` of a statement's text or command tag: its first word,
/// upper-cased, from the closed set.
pub fn verb(text: &[u8]) -> &'static str {
    let text = skip_comments(text, Dialect::Mysql);
    let word: Vec<u8> = text
        .iter()
        .take_while(|b| b.is_ascii_alphabetic())
        .take(16)
        .map(u8::to_ascii_uppercase)
        .collect();
    VERBS
        .iter()
        .find(|v| v.as_bytes() == word.as_slice())
        .copied()
        .unwrap_or(OTHER)
}

/// What a statement's text says of it: its verb and the first table it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub verb: &'static str,
    /// Empty when the text kept names none.
    pub table: String,
}

impl Described {
    pub fn new(text: &[u8], dialect: Dialect) -> Described {
        Described {
            verb: verb(text),
            table: first_table(text, dialect),
        }
    }

    /// Of a statement whose text is not known.
    pub fn unknown() -> Described {
        Described {
            verb: OTHER,
            table: String::new(),
        }
    }

    /// The query summary of this statement run as `operation`: the verb, and the first
    /// table when the text named it and the operation is the text's own.
    pub fn summary(&self, operation: &str) -> String {
        if self.table.is_empty() || operation != self.verb {
            operation.to_string()
        } else {
            format!("{operation} {}", self.table)
        }
    }
}

/// Bytes of a table's name kept, at most (PostgreSQL's identifiers are 63, MySQL's 64).
const MAX_TABLE: usize = 64;

/// The first table a statement names: the identifier after its first FROM, INTO,
/// UPDATE, TABLE or JOIN, outside string literals; unquoted names folded as the dialect
/// folds them. Never a literal or a parameter.
fn first_table(text: &[u8], dialect: Dialect) -> String {
    let text = skip_comments(text, dialect);
    let mut after_keyword = false;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if dialect.is_string_quote(b) {
            // A literal: skipped whole, its closing quote too.
            i += 2 + text[i + 1..].iter().position(|&c| c == b).unwrap_or(text.len());
            after_keyword = false;
            continue;
        }
        let (token, quoted, next) = if b == dialect.identifier_quote() {
            let end = text[i + 1..].iter().position(|&c| c == b).map_or(text.len(), |e| i + 1 + e);
            (&text[(i + 1).min(end)..end], true, end + 1)
        } else if b.is_ascii_alphanumeric() || b == b'_' {
            let len = text[i..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'$')))
                .unwrap_or(text.len() - i);
            (&text[i..i + len], false, i + len)
        } else {
            if !b.is_ascii_whitespace() {
                after_keyword = false; // "FROM (SELECT ...)": no table here
            }
            i += 1;
            continue;
        };
        i = next;
        let upper = token.to_ascii_uppercase();
        if !quoted && matches!(upper.as_slice(), b"IF" | b"NOT" | b"EXISTS" | b"ONLY") {
            continue;
        }
        if after_keyword {
            let name = if quoted || dialect == Dialect::Mysql {
                token.to_vec()
            } else {
                token.to_ascii_lowercase()
            };
            let valid = name
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'$'));
            if !valid || name.is_empty() || name.len() > MAX_TABLE {
                return String::new();
            }
            return String::from_utf8_lossy(&name).into_owned();
        }
        after_keyword = !quoted
            && matches!(upper.as_slice(), b"FROM" | b"INTO" | b"UPDATE" | b"TABLE" | b"JOIN");
    }
    String::new()
}

/// Leading white space and SQL comments (`-- ...` lines, `/* ... */` blocks, and
/// MySQL's `# ...` lines).
fn skip_comments(mut text: &[u8], dialect: Dialect) -> &[u8] {
    loop {
        let trimmed = text.trim_ascii_start();
        if dialect.line_comment(trimmed) {
            let end = trimmed.iter().position(|&b| b == b'\n').map_or(trimmed.len(), |i| i + 1);
            text = &trimmed[end..];
        } else if let Some(rest) = trimmed.strip_prefix(b"/*") {
            let end = rest.windows(2).position(|w| w == b"*/").map_or(rest.len(), |i| i + 2);
            text = &rest[end..];
        } else {
            return trimmed;
        }
    }
}

/// The statements of a query's text: split at semicolons outside quotes and comments,
/// empty ones left out.
pub fn split_statements(text: &[u8], dialect: Dialect) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let (mut from, mut quote, mut i) = (0, None, 0);
    while i < text.len() {
        let b = text[i];
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' || b == b'`' => quote = Some(b),
            None if b == b';' => {
                pieces.push(&text[from..i]);
                from = i + 1;
            }
            None if dialect.line_comment(&text[i..]) => {
                i += text[i..].iter().position(|&c| c == b'\n').unwrap_or(text.len() - i);
                continue;
            }
            None => {}
        }
        i += 1;
    }
    pieces.push(&text[from..]);
    pieces
        .into_iter()
        .filter(|p| !skip_comments(p, dialect).is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_the_identifier_after_the_first_keyword_never_a_literal() {
        let pg = |q: &str| first_table(q.as_bytes(), Dialect::Postgres);
        assert_eq!(pg("SELECT a FROM Users u JOIN orders o ON true"), "users");
        assert_eq!(pg("insert into \"Mixed\" values ('from x')"), "Mixed");
        assert_eq!(pg("UPDATE public.t SET a = 'into y'"), "public.t");
        assert_eq!(pg("CREATE TABLE IF NOT EXISTS t2 (a int)"), "t2");
        assert_eq!(pg("SELECT 'FROM secret' AS x"), "");
        assert_eq!(pg("SELECT * FROM (SELECT 1) s"), "");
        assert_eq!(pg("SELECT 1"), "");
        assert_eq!(pg("DELETE FROM \"a\x1b[31m\""), "");
        let my = |q: &str| first_table(q.as_bytes(), Dialect::Mysql);
        assert_eq!(my("SELECT v FROM `Items` WHERE id = 1"), "Items");
        assert_eq!(my("select \"from secret\" from Orders"), "Orders");
        assert_eq!(my("# a comment FROM x\nREPLACE INTO shop.t VALUES (1)"), "shop.t");
    }

    #[test]
    fn verbs_come_from_the_closed_set() {
        assert_eq!(verb(b"  /* x */ -- y\n sElEcT 1"), "SELECT");
        assert_eq!(verb(b"# note\nreplace into t values (1)"), "REPLACE");
        assert_eq!(verb(b"\x1b[31mDROP"), OTHER);
        assert_eq!(verb(b""), OTHER);
    }

    #[test]
    fn statements_split_at_semicolons_outside_quotes_and_comments() {
        let my = split_statements(b"SELECT ';'; SELECT `a;b` FROM t # ;\n; ; SELECT \";\"", Dialect::Mysql);
        assert_eq!(my.len(), 3);
        let pg = split_statements(b"SELECT 1 -- ; x\n; BEGIN", Dialect::Postgres);
        assert_eq!(pg.len(), 2);
    }
}
