//! SQL statements as the sensor sees them: what kind they are, which tables they touch, whether they
//! export data, and their text with password literals masked and the length bounded.
//!
//! This is a tokenizer with a few rules, not a SQL parser: audit logs carry every dialect feature
//! and broken statements too, so it must never fail, only know less.

use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MariaDb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Read,
    Write,
    Ddl,
    Dcl,
    Export,
    Other,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Ddl => "ddl",
            Kind::Dcl => "dcl",
            Kind::Export => "export",
            Kind::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportMethod {
    CopyToFile,
    CopyToProgram,
    CopyToStdout,
    IntoOutfile,
    DumpTool,
    FullTableRead,
}

impl ExportMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportMethod::CopyToFile => "copy_to_file",
            ExportMethod::CopyToProgram => "copy_to_program",
            ExportMethod::CopyToStdout => "copy_to_stdout",
            ExportMethod::IntoOutfile => "into_outfile",
            ExportMethod::DumpTool => "dump_tool",
            ExportMethod::FullTableRead => "full_table_read",
        }
    }
}

/// What one statement does, as far as its text tells.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub kind: Kind,
    /// Schema-qualified where the text or the session's database says the schema.
    pub tables: Vec<String>,
    /// COPY TO and INTO OUTFILE; dump tools and full-table reads are decided by the caller, which
    /// knows the session and the sensitive tables.
    pub export: Option<ExportMethod>,
    /// No WHERE, LIMIT, OFFSET, FETCH or HAVING and no aggregate in the select list: every row of
    /// the tables is returned.
    pub unfiltered: bool,
    /// The shape dump tools read a table's rows with: pg_dump's `COPY schema.table (...) TO stdout;`
    /// and mysqldump's `SELECT /*!40001 SQL_NO_CACHE */ ... FROM`.
    pub dump_shape: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Word,
    Quoted,
    Str,
    Num,
    Punct(u8),
}

#[derive(Debug, Clone, Copy)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Splits a statement into tokens, dropping whitespace and comments.
fn lex(sql: &str, dialect: Dialect) -> Vec<Token> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::with_capacity(bytes.len() / 4);
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = find_byte(bytes, i, b'\n');
                continue;
            }
            b'#' if dialect == Dialect::MariaDb => {
                i = find_byte(bytes, i, b'\n');
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = find_seq(bytes, i + 2, b"*/").map_or(bytes.len(), |end| end + 2);
                continue;
            }
            b'\'' => {
                i = end_of_quoted(bytes, i, b'\'', dialect == Dialect::MariaDb);
                tokens.push(Token {
                    tok: Tok::Str,
                    start,
                    end: i,
                });
            }
            b'"' => {
                let (tok, escapes) = match dialect {
                    Dialect::Postgres => (Tok::Quoted, false),
                    Dialect::MariaDb => (Tok::Str, true),
                };
                i = end_of_quoted(bytes, i, b'"', escapes);
                tokens.push(Token { tok, start, end: i });
            }
            b'`' if dialect == Dialect::MariaDb => {
                i = end_of_quoted(bytes, i, b'`', false);
                tokens.push(Token {
                    tok: Tok::Quoted,
                    start,
                    end: i,
                });
            }
            b'$' if dialect == Dialect::Postgres => {
                // `$tag$ ... $tag$` is a string; `$1` a parameter.
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(end) if bytes[end] == b'$' && !bytes[i + 1].is_ascii_digit() => {
                        let tag = &bytes[i..=end];
                        i = find_seq(bytes, end + 1, tag).map_or(bytes.len(), |p| p + tag.len());
                        tokens.push(Token {
                            tok: Tok::Str,
                            start,
                            end: i,
                        });
                    }
                    _ => {
                        i += 1;
                        while i < bytes.len() && bytes[i].is_ascii_digit() {
                            i += 1;
                        }
                        tokens.push(Token {
                            tok: Tok::Num,
                            start,
                            end: i,
                        });
                    }
                }
            }
            b'0'..=b'9' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
                tokens.push(Token {
                    tok: Tok::Num,
                    start,
                    end: i,
                });
            }
            b'@' if dialect == Dialect::MariaDb => {
                i += 1;
                while i < bytes.len() && (is_word_byte(bytes[i]) || bytes[i] == b'@') {
                    i += 1;
                }
                tokens.push(Token {
                    tok: Tok::Num,
                    start,
                    end: i,
                });
            }
            _ if is_word_byte(b) => {
                while i < bytes.len() && is_word_byte(bytes[i]) {
                    i += 1;
                }
                // A prefix glued to a quote is part of the string: PostgreSQL's E'' (backslash
                // escapes), U&'' (Unicode escapes), B'', X'', N''; MariaDB's N'', X'', B'' and
                // character-set introducers such as _utf8mb4''. Masking must see them as strings.
                if let Some(open) = string_prefix(&bytes[start..i], &bytes[i..], dialect) {
                    let escapes = dialect == Dialect::MariaDb || matches!(b, b'e' | b'E');
                    i = end_of_quoted(bytes, i + open, b'\'', escapes);
                    tokens.push(Token {
                        tok: Tok::Str,
                        start,
                        end: i,
                    });
                } else {
                    tokens.push(Token {
                        tok: Tok::Word,
                        start,
                        end: i,
                    });
                }
            }
            _ => {
                i += 1;
                tokens.push(Token {
                    tok: Tok::Punct(b),
                    start,
                    end: i,
                });
            }
        }
    }
    tokens
}

/// When `word` is a string prefix glued to the string that follows in `rest`, how many bytes of
/// `rest` come before the opening quote.
fn string_prefix(word: &[u8], rest: &[u8], dialect: Dialect) -> Option<usize> {
    let lower = word.to_ascii_lowercase();
    match (dialect, lower.as_slice(), rest) {
        (_, b"e" | b"b" | b"x" | b"n", [b'\'', ..]) => {
            (dialect == Dialect::Postgres || lower != b"e").then_some(0)
        }
        (Dialect::Postgres, b"u", [b'&', b'\'', ..]) => Some(1),
        (Dialect::MariaDb, [b'_', ..], [b'\'', ..]) => Some(0),
        _ => None,
    }
}

fn find_byte(bytes: &[u8], from: usize, needle: u8) -> usize {
    bytes[from..]
        .iter()
        .position(|&c| c == needle)
        .map_or(bytes.len(), |p| from + p)
}

fn find_seq(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from > bytes.len() {
        return None;
    }
    bytes[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// The index just past a quoted token that opens at `open`; doubled quotes stay inside, and so do
/// backslash escapes where the dialect has them. An unterminated quote runs to the end.
fn end_of_quoted(bytes: &[u8], open: usize, quote: u8, backslash: bool) -> usize {
    let mut i = open + 1;
    while i < bytes.len() {
        let c = bytes[i];
        if backslash && c == b'\\' {
            i += 2;
        } else if c == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    bytes.len()
}

struct Tokens<'a> {
    sql: &'a str,
    toks: Vec<Token>,
}

impl<'a> Tokens<'a> {
    fn text(&self, i: usize) -> &'a str {
        self.toks
            .get(i)
            .map_or("", |t| self.sql.get(t.start..t.end).unwrap_or(""))
    }

    fn is(&self, i: usize, keyword: &str) -> bool {
        self.toks.get(i).is_some_and(|t| t.tok == Tok::Word)
            && self.text(i).eq_ignore_ascii_case(keyword)
    }

    fn is_any(&self, i: usize, keywords: &[&str]) -> bool {
        keywords.iter().any(|k| self.is(i, k))
    }

    fn punct(&self, i: usize, c: u8) -> bool {
        self.toks.get(i).is_some_and(|t| t.tok == Tok::Punct(c))
    }

    fn tok(&self, i: usize) -> Option<Tok> {
        self.toks.get(i).map(|t| t.tok)
    }
}

/// Words that end a table reference in a FROM list, or cannot be a table name at all.
const NOT_A_NAME: &[&str] = &[
    "select",
    "where",
    "join",
    "left",
    "right",
    "inner",
    "outer",
    "full",
    "cross",
    "natural",
    "on",
    "using",
    "group",
    "order",
    "limit",
    "having",
    "window",
    "union",
    "except",
    "intersect",
    "for",
    "into",
    "set",
    "returning",
    "offset",
    "fetch",
    "to",
    "with",
    "values",
    "lateral",
    "only",
    "dual",
    "as",
    "from",
    "straight_join",
    "partition",
    "tablesample",
    "if",
    "not",
    "exists",
    "read",
    "write",
    "local",
    "low_priority",
    "ignore",
    "quick",
    "delayed",
    "high_priority",
    "table",
    "tables",
    "program",
    "stdout",
    "stdin",
    "when",
    "then",
    "else",
    "end",
    "and",
    "or",
];

fn is_reserved(word: &str) -> bool {
    NOT_A_NAME.iter().any(|k| word.eq_ignore_ascii_case(k))
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "bool_and",
    "bool_or",
    "every",
    "string_agg",
    "array_agg",
    "group_concat",
    "json_agg",
    "jsonb_agg",
];

/// Classifies `sql`. `database` is the session's current database: MariaDB qualifies bare table
/// names with it; PostgreSQL qualifies them with `public` (or `pg_catalog` for `pg_` names), the
/// default search_path.
pub fn analyze(sql: &str, dialect: Dialect, database: &str) -> Analysis {
    let t = Tokens {
        sql,
        toks: lex(sql, dialect),
    };
    let n = t.toks.len();
    let mut depth = Vec::with_capacity(n);
    let mut d: i32 = 0;
    for tok in &t.toks {
        if tok.tok == Tok::Punct(b')') {
            d -= 1;
        }
        depth.push(d);
        if tok.tok == Tok::Punct(b'(') {
            d += 1;
        }
    }

    let mut first = 0;
    while t.punct(first, b'(') {
        first += 1;
    }
    let base = depth.get(first).copied().unwrap_or(0);

    // Common table expressions: their names are not tables, and the verb comes after them.
    let mut cte_names: Vec<String> = Vec::new();
    let mut verb = first;
    if t.is(first, "with") {
        let mut i = first + 1;
        while i < n {
            if depth[i] == base
                && t.is_any(
                    i,
                    &[
                        "select", "insert", "update", "delete", "merge", "values", "table",
                    ],
                )
            {
                break;
            }
            if depth[i] == base
                && t.tok(i)
                    .is_some_and(|k| matches!(k, Tok::Word | Tok::Quoted))
                && !t.is_any(i, &["recursive", "as", "materialized", "not"])
                && (t.is(i + 1, "as") || t.punct(i + 1, b'('))
            {
                cte_names.push(normalize_part(t.text(i), dialect));
            }
            i += 1;
        }
        verb = i;
    }

    let at_base =
        |i: usize| depth.get(i).copied() == Some(depth.get(verb).copied().unwrap_or(base));
    let find_at_base =
        |keyword: &str, from: usize| (from..n).find(|&i| at_base(i) && t.is(i, keyword));

    let mut export = None;
    let verb_text = t.text(verb).to_ascii_lowercase();
    let kind = match verb_text.as_str() {
        "select" | "values" | "table" => {
            match find_at_base("into", verb + 1) {
                Some(into) if t.is_any(into + 1, &["outfile", "dumpfile"]) => {
                    export = Some(ExportMethod::IntoOutfile);
                    Kind::Export
                }
                // SELECT ... INTO @var reads; PostgreSQL's SELECT ... INTO t creates a table.
                Some(into) if dialect == Dialect::Postgres && !t.is(into + 1, "strict") => {
                    Kind::Write
                }
                _ => Kind::Read,
            }
        }
        "insert" | "update" | "delete" | "merge" | "replace" | "truncate" | "load" | "upsert" => {
            Kind::Write
        }
        "copy" => match (find_at_base("to", verb + 1), find_at_base("from", verb + 1)) {
            (Some(to), from) if from.is_none_or(|f| f > to) => {
                export = Some(if t.is(to + 1, "program") {
                    ExportMethod::CopyToProgram
                } else if t.is(to + 1, "stdout") {
                    ExportMethod::CopyToStdout
                } else {
                    ExportMethod::CopyToFile
                });
                Kind::Export
            }
            _ => Kind::Write,
        },
        "create" | "alter" | "drop" | "rename" => {
            let mut i = verb + 1;
            while t.is_any(i, &["or", "replace", "if", "not", "exists"]) {
                i += 1;
            }
            if t.is_any(i, &["user", "role", "group"]) {
                Kind::Dcl
            } else {
                Kind::Ddl
            }
        }
        "comment" | "reindex" | "cluster" => Kind::Ddl,
        "grant" | "revoke" => Kind::Dcl,
        "set" if (verb + 1..n).any(|i| t.is(i, "password")) => Kind::Dcl,
        _ => Kind::Other,
    };

    let tables = extract_tables(&t, &depth, dialect, database, &cte_names);

    let filtered = t
        .toks
        .iter()
        .enumerate()
        .any(|(i, _)| t.is_any(i, &["where", "limit", "offset", "fetch", "having", "top"]));
    let first_from = find_at_base("from", verb + 1).unwrap_or(n);
    let aggregate = (verb + 1..first_from).any(|i| t.is_any(i, AGGREGATES) && t.punct(i + 1, b'('));
    let unfiltered = matches!(kind, Kind::Read | Kind::Export) && !filtered && !aggregate;

    let dump_shape = match dialect {
        Dialect::Postgres => {
            verb_text == "copy"
                && t.punct(verb + 2, b'.')
                && find_at_base("to", verb + 1).is_some_and(|to| {
                    t.text(to + 1) == "stdout" && t.punct(to + 2, b';') && to + 3 == n
                })
        }
        Dialect::MariaDb => sql
            .trim_start()
            .starts_with("SELECT /*!40001 SQL_NO_CACHE */"),
    };

    Analysis {
        kind,
        tables,
        export,
        unfiltered,
        dump_shape,
    }
}

fn normalize_part(part: &str, dialect: Dialect) -> String {
    let bytes = part.as_bytes();
    match bytes.first() {
        Some(&q @ (b'"' | b'`')) if part.len() >= 2 && bytes[part.len() - 1] == q => {
            let quote = q as char;
            part[1..part.len() - 1].replace(&format!("{quote}{quote}"), &quote.to_string())
        }
        _ if dialect == Dialect::Postgres => part.to_ascii_lowercase(),
        _ => part.to_string(),
    }
}

/// Reads a possibly qualified name at `i`; returns its parts and the index after it.
fn read_name(t: &Tokens, i: usize, dialect: Dialect) -> Option<(Vec<String>, usize)> {
    let is_part = |j: usize| match t.tok(j) {
        Some(Tok::Quoted) => true,
        Some(Tok::Word) => !is_reserved(t.text(j)),
        _ => false,
    };
    if !is_part(i) {
        return None;
    }
    let mut parts = vec![normalize_part(t.text(i), dialect)];
    let mut j = i + 1;
    while t.punct(j, b'.') && matches!(t.tok(j + 1), Some(Tok::Word | Tok::Quoted)) {
        parts.push(normalize_part(t.text(j + 1), dialect));
        j += 2;
    }
    Some((parts, j))
}

fn qualify(parts: &[String], dialect: Dialect, database: &str) -> String {
    match parts {
        [.., schema, table] => format!("{schema}.{table}"),
        [table] => match dialect {
            Dialect::Postgres if table.starts_with("pg_") => format!("pg_catalog.{table}"),
            Dialect::Postgres => format!("public.{table}"),
            Dialect::MariaDb if !database.is_empty() => format!("{database}.{table}"),
            Dialect::MariaDb => table.clone(),
        },
        [] => String::new(),
    }
}

/// Functions whose arguments use FROM without naming a table.
const FROM_FUNCTIONS: &[&str] = &[
    "extract",
    "substring",
    "substr",
    "trim",
    "overlay",
    "position",
];

fn extract_tables(
    t: &Tokens,
    depth: &[i32],
    dialect: Dialect,
    database: &str,
    cte_names: &[String],
) -> Vec<String> {
    let n = t.toks.len();
    let mut tables: Vec<String> = Vec::new();
    let mut add = |parts: Vec<String>| {
        if parts.len() == 1 && cte_names.contains(&parts[0]) {
            return;
        }
        let name = qualify(&parts, dialect, database);
        if !name.is_empty() && !tables.contains(&name) {
            tables.push(name);
        }
    };
    let mut function_depths: Vec<i32> = Vec::new();
    for (i, &level) in depth.iter().enumerate() {
        if t.punct(i, b')') {
            let closed = level + 1;
            function_depths.retain(|&d| d != closed);
        }
        if t.is_any(i, FROM_FUNCTIONS) && t.punct(i + 1, b'(') {
            function_depths.push(level + 1);
        }
        let word = if t.tok(i) == Some(Tok::Word) {
            t.text(i)
        } else {
            continue;
        };
        if word.eq_ignore_ascii_case("from") || word.eq_ignore_ascii_case("join") {
            if function_depths.last() == Some(&level) {
                continue;
            }
            // A FROM list: name [AS] [alias], name ...; a name followed by '(' is a function.
            let mut j = i + 1;
            while t.is_any(j, &["only", "lateral"]) {
                j += 1;
            }
            while let Some((parts, next)) = read_name(t, j, dialect) {
                let mut k = next;
                if t.punct(k, b'(') {
                    k = skip_parens(t, k);
                } else {
                    add(parts);
                }
                if t.is(k, "as") {
                    k += 1;
                }
                if matches!(t.tok(k), Some(Tok::Word | Tok::Quoted)) && !is_reserved(t.text(k)) {
                    k += 1;
                }
                if t.punct(k, b'(') {
                    k = skip_parens(t, k);
                }
                if !t.punct(k, b',') {
                    break;
                }
                j = k + 1;
                while t.is_any(j, &["only", "lateral"]) {
                    j += 1;
                }
            }
        } else if word.eq_ignore_ascii_case("into") {
            if let Some((parts, _)) = read_name(t, i + 1, dialect) {
                if !t.is_any(i + 1, &["outfile", "dumpfile"]) {
                    add(parts);
                }
            }
        } else if word.eq_ignore_ascii_case("update") {
            if !(i > 0 && t.is_any(i - 1, &["for", "on", "do", "key", "no"])) {
                let mut j = i + 1;
                while t.is_any(j, &["only", "low_priority", "ignore"]) {
                    j += 1;
                }
                if let Some((parts, _)) = read_name(t, j, dialect) {
                    add(parts);
                }
            }
        } else if word.eq_ignore_ascii_case("table")
            || (word.eq_ignore_ascii_case("truncate") && i == 0)
            || (word.eq_ignore_ascii_case("copy") && i == 0)
        {
            let mut j = i + 1;
            while t.is_any(j, &["if", "not", "exists", "only"]) {
                j += 1;
            }
            if let Some((parts, _)) = read_name(t, j, dialect) {
                add(parts);
            }
        } else if word.eq_ignore_ascii_case("tables")
            && i > 0
            && t.is_any(i - 1, &["lock", "flush"])
        {
            // LOCK TABLES a READ, b AS x WRITE
            let mut j = i + 1;
            while let Some((parts, next)) = read_name(t, j, dialect) {
                add(parts);
                let mut k = next;
                while k < n && !t.punct(k, b',') && !t.punct(k, b';') {
                    k += 1;
                }
                if !t.punct(k, b',') {
                    break;
                }
                j = k + 1;
            }
        }
    }
    tables
}

fn skip_parens(t: &Tokens, open: usize) -> usize {
    let mut level = 0;
    let mut i = open;
    while i < t.toks.len() {
        if t.punct(i, b'(') {
            level += 1;
        } else if t.punct(i, b')') {
            level -= 1;
            if level == 0 {
                return i + 1;
            }
        }
        i += 1;
    }
    i
}

/// The masked form of a password literal.
const MASK: &str = "'***'";
/// The masked form of a secret that is not a whole literal (a conninfo value, a URI password).
const MASK_BARE: &str = "***";
/// Secrets shorter than this are not searched for in error texts: they would mask ordinary words.
const MIN_ECHOED_SECRET: usize = 3;

/// Replaces secrets in `sql` with `'***'`: literals in password positions (`PASSWORD 'x'`,
/// `PASSWORD('x')`, `MASTER_PASSWORD = 'x'`, `IDENTIFIED BY|AS|USING 'x'`, `SET PASSWORD ... = 'x'`,
/// FDW `OPTIONS ("password" 'x')`), whatever the literal's form (E'', U&'', dollar quotes,
/// introducers, adjacent literals that the server joins); literals whose decoded text holds a
/// `password=` or `pwd=` setting (conninfo strings) or a URI with a password
/// (`postgresql://u:secret@h`, FEDERATED's `mysql://u:secret@h`); bare words after PASSWORD in
/// role statements. Outside literals (comments), `password = x` settings and URI passwords are
/// masked as text.
pub fn mask(sql: &str, dialect: Dialect) -> Cow<'_, str> {
    mask_collecting(sql, dialect).0
}

/// A server's error text with the same secrets masked: settings and URI passwords in the text
/// itself, and every secret `statement` held, wherever the error repeats it (a syntax error
/// quotes the token it stopped at, a cast error the literal it could not cast).
pub fn mask_error(message: &str, statement: &str, dialect: Dialect) -> String {
    let (_, secrets) = mask_collecting(statement, dialect);
    let mut text = message.to_string();
    let mut secrets: Vec<String> = secrets
        .into_iter()
        .filter(|s| s.chars().count() >= MIN_ECHOED_SECRET)
        .collect();
    // Longest first, so a whole conninfo goes before the password inside it.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in &secrets {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), MASK_BARE);
        }
    }
    mask_text(&text).into_owned()
}

/// Whether `sql` may hold a secret at all; most statements do not, and finding that out must be
/// cheap. Backslashes and `u&` stand for escapes that could spell `password` in a literal.
fn may_hold_secret(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        let word: &[u8] = match b {
            b'\\' => return true,
            // Adjacent literals, which the server joins into one ('pass' 'word=...').
            b'\'' => {
                let gap = bytes[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_whitespace())
                    .count();
                return gap > 0 && bytes.get(i + 1 + gap) == Some(&b'\'');
            }
            b':' => b"://",
            _ => match b | 0x20 {
                b'p' if bytes.get(i + 1).is_some_and(|c| c | 0x20 == b'w') => b"pwd",
                b'p' => b"passw",
                b'i' => b"ident",
                b'u' => b"u&'",
                _ => return false,
            },
        };
        bytes
            .get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    })
}

/// The masked statement and the secrets it held (raw and decoded), for masking echoes of them.
fn mask_collecting(sql: &str, dialect: Dialect) -> (Cow<'_, str>, Vec<String>) {
    if !may_hold_secret(sql) {
        return (Cow::Borrowed(sql), Vec::new());
    }
    let t = Tokens {
        sql,
        toks: lex(sql, dialect),
    };
    let n = t.toks.len();
    let ends_in_password = |i: usize| match t.tok(i) {
        Some(Tok::Word) => t.text(i).to_ascii_lowercase().ends_with("password"),
        Some(Tok::Quoted) => t
            .text(i)
            .trim_matches(|c| c == '"' || c == '`')
            .to_ascii_lowercase()
            .ends_with("password"),
        _ => false,
    };
    let identified = (0..n).any(|i| t.is(i, "identified"));
    let set_password = t.is(0, "set") && t.is(1, "password");
    let role_statement =
        t.is_any(0, &["create", "alter"]) && t.is_any(1, &["role", "user", "group"]);
    // The token before `i`, skipping the `(` and `=` that may stand between a keyword and its
    // value.
    let keyword_before = |i: usize| {
        let mut p = i;
        while p > 0 && (t.punct(p - 1, b'(') || t.punct(p - 1, b'=')) {
            p -= 1;
        }
        (p.checked_sub(1), p < i && t.punct(i - 1, b'='))
    };
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut secrets = Vec::new();
    let mut i = 0;
    while i < n {
        let token = t.toks[i];
        match token.tok {
            Tok::Str => {
                // Adjacent literals are one string to the server ('pass' 'word=x' included).
                let mut last = i;
                while t.tok(last + 1) == Some(Tok::Str) {
                    last += 1;
                }
                // U&'...' UESCAPE '!' names its own escape character.
                let escape = if t.is(last + 1, "uescape") && t.tok(last + 2) == Some(Tok::Str) {
                    t.text(last + 2).chars().nth(1).unwrap_or('\\')
                } else {
                    '\\'
                };
                let decoded: String = (i..=last)
                    .map(|k| literal_content(t.text(k), dialect, escape))
                    .collect();
                let (prev, after_equals) = keyword_before(i);
                let positional = prev.is_some_and(|p| {
                    ends_in_password(p) || (identified && t.is_any(p, &["by", "as", "using"]))
                }) || (set_password && after_equals);
                if positional || holds_secret_setting(&decoded) {
                    for k in i..=last {
                        let tok = t.toks[k];
                        spans.push((tok.start, tok.end));
                        secrets.push(t.text(k).to_string());
                    }
                    secrets.push(decoded.clone());
                    secrets.extend(setting_values(&decoded));
                }
                i = last + 1;
                continue;
            }
            Tok::Word | Tok::Num if role_statement => {
                // `ALTER ROLE x PASSWORD secret` fails to parse, and the ERROR record repeats it.
                let follows_password = i > 0 && t.is(i - 1, "password");
                let keyword = t.is_any(
                    i,
                    &[
                        "null",
                        "encrypted",
                        "valid",
                        "login",
                        "nologin",
                        "expire",
                        "with",
                        "in",
                    ],
                );
                if follows_password && !keyword && !t.punct(i + 1, b'(') {
                    spans.push((token.start, token.end));
                    secrets.push(t.text(i).to_string());
                }
            }
            _ => {}
        }
        i += 1;
    }
    let masked = if spans.is_empty() {
        Cow::Borrowed(sql)
    } else {
        let mut out = String::with_capacity(sql.len());
        let mut last = 0;
        for (start, end) in spans {
            out.push_str(&sql[last..start]);
            out.push_str(MASK);
            last = end;
        }
        out.push_str(&sql[last..]);
        Cow::Owned(out)
    };
    // Whatever the tokens did not show (comments, text the lexer read differently).
    let masked = match mask_text(&masked) {
        Cow::Borrowed(_) => masked,
        Cow::Owned(text) => Cow::Owned(text),
    };
    (masked, secrets)
}

/// The text of a literal token as the server reads it: quotes removed, doubled quotes and the
/// dialect's escapes decoded (E'' and MariaDB backslashes, U&'' Unicode escapes), dollar quotes
/// stripped. Good enough to find secrets in; never fails.
fn literal_content(raw: &str, dialect: Dialect, unicode_escape: char) -> String {
    if let Some(after) = raw.strip_prefix('$') {
        let tag_end = after.find('$').map_or(raw.len(), |p| p + 2);
        let body = &raw[tag_end..];
        let tag = &raw[..tag_end];
        return body.strip_suffix(tag).unwrap_or(body).to_string();
    }
    let Some(open) = raw.find(['\'', '"']) else {
        return raw.to_string();
    };
    let prefix = raw[..open].to_ascii_lowercase();
    let quote = raw.as_bytes()[open] as char;
    let body = &raw[open + 1..];
    let body = body.strip_suffix(quote).unwrap_or(body);
    let backslash = dialect == Dialect::MariaDb || prefix == "e";
    let unicode = prefix == "u&";
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == quote && chars.peek() == Some(&quote) {
            chars.next();
            out.push(quote);
        } else if c == unicode_escape && unicode && chars.peek() == Some(&unicode_escape) {
            chars.next();
            out.push(unicode_escape);
        } else if c == unicode_escape && unicode {
            let digits = if chars.peek() == Some(&'+') {
                chars.next();
                6
            } else {
                4
            };
            let hex: String = (0..digits).filter_map(|_| chars.next()).collect();
            match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                Some(decoded) => out.push(decoded),
                None => out.push_str(&hex),
            }
        } else if c == '\\' && backslash {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('x') if dialect == Dialect::Postgres => {
                    let hex: String = std::iter::from_fn(|| chars.next_if(char::is_ascii_hexdigit))
                        .take(2)
                        .collect();
                    push_code(&mut out, u32::from_str_radix(&hex, 16).ok());
                }
                Some(d @ '0'..='7') if dialect == Dialect::Postgres => {
                    let mut oct = String::from(d);
                    oct.extend(
                        std::iter::from_fn(|| chars.next_if(|c| ('0'..='7').contains(c))).take(2),
                    );
                    push_code(&mut out, u32::from_str_radix(&oct, 8).ok());
                }
                Some(u @ ('u' | 'U')) if dialect == Dialect::Postgres => {
                    let len = if u == 'u' { 4 } else { 8 };
                    let hex: String = std::iter::from_fn(|| chars.next_if(char::is_ascii_hexdigit))
                        .take(len)
                        .collect();
                    push_code(&mut out, u32::from_str_radix(&hex, 16).ok());
                }
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn push_code(out: &mut String, code: Option<u32>) {
    if let Some(c) = code.and_then(char::from_u32) {
        out.push(c);
    }
}

/// Whether decoded literal text carries a credential: a `password=`/`pwd=` setting (any case,
/// any spacing) or a URI with a password.
fn holds_secret_setting(text: &str) -> bool {
    !setting_spans(text).is_empty()
}

/// The secret values inside `text` (conninfo settings and URI passwords).
fn setting_values(text: &str) -> Vec<String> {
    setting_spans(text)
        .into_iter()
        .map(|(start, end)| text[start..end].to_string())
        .collect()
}

/// Spans of secret values in free text: the value of `password = x` (also `sslpassword`, `pwd`;
/// quoted values to their closing quote) and the password of `scheme://user:password@host`.
fn setting_spans(text: &str) -> Vec<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut spans = Vec::new();
    for key in ["password", "pwd"] {
        let mut from = 0;
        while let Some(found) = lower[from..].find(key) {
            let at = from + found;
            from = at + key.len();
            let mut v = from;
            while bytes.get(v).is_some_and(|b| b.is_ascii_whitespace()) {
                v += 1;
            }
            if bytes.get(v) != Some(&b'=') {
                continue;
            }
            v += 1;
            while bytes.get(v).is_some_and(|b| b.is_ascii_whitespace()) {
                v += 1;
            }
            let end = match bytes.get(v) {
                Some(&q @ (b'\'' | b'"')) => end_of_quoted(bytes, v, q, true),
                Some(_) => {
                    let run = bytes[v..]
                        .iter()
                        .position(|&b| b.is_ascii_whitespace() || b"'\",;)&(".contains(&b))
                        .map_or(bytes.len(), |p| v + p);
                    // `password = PASSWORD('x')` is a call whose argument is masked as a literal.
                    if bytes.get(run) == Some(&b'(') {
                        continue;
                    }
                    run
                }
                None => continue,
            };
            if end > v && lower.is_char_boundary(v) && lower.is_char_boundary(end) {
                spans.push((v, end));
            }
        }
    }
    let mut from = 0;
    while let Some(found) = lower[from..].find("://") {
        let authority = from + found + 3;
        from = authority;
        let end = bytes[authority..]
            .iter()
            .position(|&b| b"/?#'\" \t\r\n".contains(&b))
            .map_or(bytes.len(), |p| authority + p);
        let Some(at) = lower[authority..end].rfind('@').map(|p| authority + p) else {
            continue;
        };
        if let Some(colon) = lower[authority..at].find(':').map(|p| authority + p) {
            if colon + 1 < at {
                spans.push((colon + 1, at));
            }
        }
    }
    spans.sort_unstable();
    spans.dedup();
    spans
}

/// `text` with every secret value of [`setting_spans`] replaced by `***` (quoted values by `'***'`).
fn mask_text(text: &str) -> Cow<'_, str> {
    let spans = setting_spans(text);
    if spans.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in spans {
        if start < last {
            continue;
        }
        out.push_str(&text[last..start]);
        let value = &text[start..end];
        if value == MASK || value == MASK_BARE {
            out.push_str(value);
        } else if value.starts_with(['\'', '"']) {
            out.push_str(MASK);
        } else {
            out.push_str(MASK_BARE);
        }
        last = end;
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

/// Cuts `text` to at most `max` bytes (on a character boundary) and says how long it was.
pub fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!(
        "{}... [truncated, {} bytes in all]",
        &text[..cut],
        text.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(sql: &str) -> Analysis {
        analyze(sql, Dialect::Postgres, "postgres")
    }

    fn maria(sql: &str) -> Analysis {
        analyze(sql, Dialect::MariaDb, "shop")
    }

    #[test]
    fn kinds_cover_reads_writes_ddl_dcl_and_exports() {
        assert_eq!(pg("SELECT * FROM customers").kind, Kind::Read);
        assert_eq!(
            pg("with x as (select 1) insert into t select * from x").kind,
            Kind::Write
        );
        assert_eq!(pg("CREATE TABLE t (id int)").kind, Kind::Ddl);
        assert_eq!(pg("CREATE ROLE alice LOGIN PASSWORD 'x'").kind, Kind::Dcl);
        assert_eq!(
            maria("SET PASSWORD FOR 'bob'@'%' = PASSWORD(*****)").kind,
            Kind::Dcl
        );
        assert_eq!(pg("GRANT SELECT ON customers TO bob").kind, Kind::Dcl);
        assert_eq!(pg("BEGIN").kind, Kind::Other);
        assert_eq!(pg("SELECT * INTO archive FROM customers").kind, Kind::Write);

        let copy = pg("COPY customers TO '/tmp/c.csv' CSV");
        assert_eq!(
            (copy.kind, copy.export),
            (Kind::Export, Some(ExportMethod::CopyToFile))
        );
        let program = pg("copy (select * from customers) to program 'gzip > /tmp/x.gz'");
        assert_eq!(program.export, Some(ExportMethod::CopyToProgram));
        assert_eq!(program.tables, vec!["public.customers"]);
        assert_eq!(
            pg("COPY customers TO STDOUT").export,
            Some(ExportMethod::CopyToStdout)
        );
        assert_eq!(pg("COPY customers FROM '/tmp/in.csv'").kind, Kind::Write);
        let outfile = maria("SELECT * FROM customers INTO OUTFILE '/tmp/x.csv'");
        assert_eq!(outfile.export, Some(ExportMethod::IntoOutfile));
        assert_eq!(maria("SELECT 1 INTO @x").kind, Kind::Read);
    }

    #[test]
    fn tables_are_qualified_and_functions_ctes_and_subqueries_are_not_tables() {
        assert_eq!(
            pg(
                "SELECT c.name FROM customers c, \"Mixed\" m JOIN sales.orders AS o ON o.cid = c.id"
            )
            .tables,
            vec!["public.customers", "public.Mixed", "sales.orders"]
        );
        assert_eq!(
            pg("INSERT INTO customers SELECT g FROM generate_series(1,50) g").tables,
            vec!["public.customers"]
        );
        assert_eq!(
            pg("WITH recent AS (SELECT * FROM orders) SELECT extract(year FROM created) FROM recent").tables,
            vec!["public.orders"]
        );
        assert_eq!(
            pg("SELECT oid FROM pg_roles WHERE x IN (SELECT y FROM information_schema.tables)")
                .tables,
            vec!["pg_catalog.pg_roles", "information_schema.tables"]
        );
        assert_eq!(
            maria("UPDATE customers SET name='z' WHERE id=3").tables,
            vec!["shop.customers"]
        );
        assert_eq!(
            maria("LOCK TABLES `customers` READ /*!32311 LOCAL */, `t2` WRITE").tables,
            vec!["shop.customers", "shop.t2"]
        );
        assert_eq!(
            maria("select 'from x', \"from y\" from other.t -- from z").tables,
            vec!["other.t"]
        );
    }

    #[test]
    fn dump_shapes_and_unfiltered_reads_are_recognised() {
        let dump = pg("COPY public.customers (id, name, email) TO stdout;");
        assert!(dump.dump_shape && dump.unfiltered);
        assert!(!pg("COPY customers TO STDOUT;").dump_shape);
        assert!(maria("SELECT /*!40001 SQL_NO_CACHE */ `id`, `name` FROM `customers`").dump_shape);
        assert!(pg("SELECT * FROM customers").unfiltered);
        assert!(!pg("SELECT * FROM customers WHERE id < 3").unfiltered);
        assert!(!pg("select name from customers limit 5").unfiltered);
        assert!(!pg("SELECT count(*) FROM customers").unfiltered);
        assert!(!pg("INSERT INTO customers VALUES (1)").unfiltered);
    }

    #[test]
    fn password_literals_are_masked_and_other_literals_kept() {
        assert_eq!(
            mask(
                "CREATE ROLE alice LOGIN PASSWORD 'secret1'",
                Dialect::Postgres
            ),
            "CREATE ROLE alice LOGIN PASSWORD '***'"
        );
        assert_eq!(
            mask(
                "ALTER USER a WITH ENCRYPTED PASSWORD E'se\\'cret' VALID UNTIL 'x'",
                Dialect::Postgres
            ),
            "ALTER USER a WITH ENCRYPTED PASSWORD '***' VALID UNTIL 'x'"
        );
        assert_eq!(
            mask(
                "CREATE USER 'bob'@'%' IDENTIFIED BY 'hun\\'ter2'",
                Dialect::MariaDb
            ),
            "CREATE USER 'bob'@'%' IDENTIFIED BY '***'"
        );
        assert_eq!(
            mask(
                "SET PASSWORD FOR 'bob'@'%' = PASSWORD('hunter3')",
                Dialect::MariaDb
            ),
            "SET PASSWORD FOR 'bob'@'%' = PASSWORD('***')"
        );
        assert_eq!(
            mask(
                "ALTER USER x IDENTIFIED WITH mysql_native_password AS '*AB12'",
                Dialect::MariaDb
            ),
            "ALTER USER x IDENTIFIED WITH mysql_native_password AS '***'"
        );
        assert_eq!(
            mask(
                "SELECT dblink_connect('host=h password=s3 user=u')",
                Dialect::Postgres
            ),
            "SELECT dblink_connect('***')"
        );
        assert_eq!(
            mask("SELECT 'password'", Dialect::Postgres),
            "SELECT 'password'"
        );
    }

    /// Each variant an insider might use to smuggle a credential past the masking; none of the
    /// secrets may survive, in the statement or in an error that repeats it.
    #[test]
    fn every_spelling_of_a_credential_is_masked() {
        let pg = |sql: &str| mask(sql, Dialect::Postgres).into_owned();
        let maria = |sql: &str| mask(sql, Dialect::MariaDb).into_owned();
        let cases = [
            pg(r"ALTER ROLE a PASSWORD U&'s\0065cr\+000065t1'"),
            pg("ALTER ROLE a PASSWORD u&'secret1' UESCAPE '!'"),
            pg("SELECT dblink_connect(U&'host=h p!0061ssword=secret1' UESCAPE '!')"),
            pg("ALTER ROLE a PASSWORD $$secret1$$"),
            pg("ALTER ROLE a PASSWORD $q$secret1$q$"),
            pg("ALTER ROLE a /* c */ PASSWORD -- c\n 'secret1'"),
            pg("alter user a with encrypted password 'secret1'"),
            pg("SELECT dblink_connect('postgresql://u:secret1@db.example/shop')"),
            pg("SELECT dblink_connect('host=h user=u password  =  secret1')"),
            pg("SELECT dblink_connect('host=h user=u PassWord = ''secret1''')"),
            pg(r"SELECT dblink_connect(E'host=h \x70assword=secret1')"),
            pg(r"SELECT dblink_connect(U&'host=h p\0061ssword=secret1')"),
            pg("SELECT dblink_connect('host=h pass'\n'word=secret1')"),
            pg("SELECT dblink_connect($x$host=h sslpassword=secret1$x$)"),
            pg("CREATE SUBSCRIPTION s CONNECTION 'dbname=shop password=secret1' PUBLICATION p"),
            pg(
                "CREATE SUBSCRIPTION s CONNECTION 'postgres://rep:secret1@h:5432/shop' PUBLICATION p",
            ),
            pg(r#"CREATE USER MAPPING FOR a SERVER s OPTIONS (user 'u', "password" 'secret1')"#),
            pg("ALTER ROLE a PASSWORD secret1"),
            pg("SELECT 1 /* password=secret1 */"),
            maria(
                "CREATE TABLE f (id int) ENGINE=FEDERATED CONNECTION='mysql://u:secret1@h:3306/db/t'",
            ),
            maria("CREATE USER 'b'@'%' IDENTIFIED BY _utf8mb4'secret1'"),
            maria("CREATE USER 'b'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('secret1')"),
            maria("ALTER USER b IDENTIFIED VIA mysql_native_password USING 'secret1'"),
            maria("SET PASSWORD FOR 'b'@'%' = 'secret1'"),
            maria(r#"SET PASSWORD = PASSWORD("secret1")"#),
            maria("CHANGE MASTER TO MASTER_HOST='h', MASTER_PASSWORD='secret1'"),
            maria(
                "CREATE SERVER s FOREIGN DATA WRAPPER mysql OPTIONS (USER 'u', PASSWORD 'secret1')",
            ),
            maria(r"SELECT 'host=h pass\word=secret1'"),
        ];
        for masked in &cases {
            assert!(!masked.contains("secret1"), "leaked: {masked}");
            assert!(masked.contains("***"), "nothing masked: {masked}");
        }
        // What is not a secret stays readable.
        assert_eq!(
            pg("SELECT dblink_connect('postgresql://u:secret1@db.example/shop')"),
            "SELECT dblink_connect('***')"
        );
        assert_eq!(
            pg("SELECT 1 /* password=secret1 */"),
            "SELECT 1 /* password=*** */"
        );
        assert_eq!(
            pg("SELECT password FROM users"),
            "SELECT password FROM users"
        );
        assert_eq!(
            maria("SET PASSWORD = PASSWORD('x')"),
            "SET PASSWORD = PASSWORD('***')"
        );
        assert_eq!(
            pg("SELECT 'https://example.jp/a@b'"),
            "SELECT 'https://example.jp/a@b'"
        );
    }

    #[test]
    fn error_texts_lose_what_their_statement_hid() {
        let cases = [
            (
                r#"invalid input syntax for type integer: "postgresql://u:secret1@h/db""#,
                "SELECT 'postgresql://u:secret1@h/db'::int",
            ),
            (
                r#"syntax error at or near "secret1""#,
                "ALTER ROLE a PASSWORD secret1",
            ),
            ("could not connect: password=secret1 rejected", "SELECT 1"),
            (
                r#"invalid input syntax for type integer: "secret1""#,
                r"ALTER ROLE a PASSWORD E'secr\x65t1'",
            ),
        ];
        for (error, statement) in cases {
            let masked = mask_error(error, statement, Dialect::Postgres);
            assert!(!masked.contains("secret1"), "leaked: {masked}");
        }
        assert_eq!(
            mask_error("division by zero", "SELECT 1/0", Dialect::Postgres),
            "division by zero"
        );
    }

    #[test]
    fn long_statements_are_cut_on_a_character_boundary_with_a_marker() {
        let text = "é".repeat(100);
        let cut = truncate(&text, 65);
        assert!(cut.starts_with(&"é".repeat(32)));
        assert!(cut.ends_with("... [truncated, 200 bytes in all]"), "{cut}");
        assert_eq!(truncate("short", 65), "short");
    }
}
