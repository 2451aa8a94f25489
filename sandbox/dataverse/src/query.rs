//! OData query options (`$select`, `$filter`, `$top`, `$orderby`, `$count`, paging and delta
//! tokens) and key predicates (`(guid)`, `(tgb_tgcaseid='C-1')`).

use std::cmp::Ordering;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::error::{ODataError, codes};
use crate::schema::Table;

/// Query options of a request.
#[derive(Debug, Default, Clone)]
pub struct Query {
    /// `$select`.
    pub select: Option<Vec<String>>,
    /// `$filter`, parsed.
    pub filter: Option<Expr>,
    /// Raw `$filter` (kept for the error about change tracking).
    pub filter_raw: Option<String>,
    /// `$top`.
    pub top: Option<usize>,
    /// `$orderby`: (property, descending).
    pub orderby: Vec<(String, bool)>,
    /// `$count=true`.
    pub count: bool,
    /// `$skiptoken` (the emulator's paging cookie: an offset).
    pub skiptoken: Option<usize>,
    /// `$deltatoken`.
    pub deltatoken: Option<String>,
    /// Every `$` option except the paging cookie, to rebuild links.
    pub passthrough: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Result<Query, ODataError> {
        let mut q = Query::default();
        let Some(raw) = raw else { return Ok(q) };
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            let (k, v) = (k.into_owned(), v.into_owned());
            match k.as_str() {
                "$select" => {
                    q.select = Some(
                        v.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect(),
                    )
                }
                "$filter" => {
                    q.filter = Some(parse_filter(&v)?);
                    q.filter_raw = Some(v.clone());
                }
                "$top" => {
                    q.top = Some(v.trim().parse().map_err(|_| {
                        ODataError::bad_request(
                            codes::ODATA,
                            format!("Invalid value '{v}' for $top query option found."),
                        )
                    })?)
                }
                "$orderby" => {
                    for part in v.split(',') {
                        let mut it = part.split_whitespace();
                        let Some(name) = it.next() else { continue };
                        let desc = match it.next() {
                            None | Some("asc") => false,
                            Some("desc") => true,
                            Some(other) => {
                                return Err(ODataError::bad_request(
                                    codes::ODATA,
                                    format!("Syntax error in $orderby near '{other}'."),
                                ));
                            }
                        };
                        q.orderby.push((name.to_string(), desc));
                    }
                }
                "$count" => q.count = v == "true",
                "$skiptoken" => {
                    q.skiptoken = Some(v.parse().map_err(|_| {
                        ODataError::bad_request(codes::INVALID_ARGUMENT, "Invalid $skiptoken.")
                    })?);
                    continue;
                }
                "$deltatoken" => {
                    q.deltatoken = Some(v.clone());
                    continue;
                }
                "$expand" | "$apply" | "$search" | "$skip" | "fetchXml" => {
                    return Err(ODataError::bad_request(
                        codes::INVALID_ARGUMENT,
                        format!(
                            "The query option '{k}' is not supported by the tg-bridge sandbox."
                        ),
                    ));
                }
                _ if k.starts_with('$') => {
                    return Err(ODataError::bad_request(
                        codes::ODATA,
                        format!("The query parameter '{k}' is not supported."),
                    ));
                }
                _ => continue,
            }
            q.passthrough.push((k, v));
        }
        Ok(q)
    }

    /// Checks that every property the query names exists on `table`.
    pub fn validate(&self, table: &Table) -> Result<(), ODataError> {
        let check = |n: &str| {
            if table.is_readable(n) {
                Ok(())
            } else {
                Err(ODataError::property_not_found(n, &table.logicalname))
            }
        };
        for n in self.select.iter().flatten() {
            check(n)?;
        }
        for (n, _) in &self.orderby {
            check(n)?;
        }
        if let Some(f) = &self.filter {
            f.validate(table)?;
        }
        Ok(())
    }

    /// The query string for a follow-up link, with one extra option (`$` kept literal, as
    /// Dataverse writes its links).
    pub fn link_query(&self, extra: (&str, String)) -> String {
        const VALUE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
            .add(b' ')
            .add(b'"')
            .add(b'#')
            .add(b'%')
            .add(b'&')
            .add(b'+')
            .add(b'<')
            .add(b'>');
        self.passthrough
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(std::iter::once((extra.0, extra.1.as_str())))
            .map(|(k, v)| format!("{k}={}", percent_encoding::utf8_percent_encode(v, VALUE)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// A `$filter` expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// `a and b`.
    And(Box<Expr>, Box<Expr>),
    /// `a or b`.
    Or(Box<Expr>, Box<Expr>),
    /// `not a`.
    Not(Box<Expr>),
    /// `left op right`.
    Cmp(Operand, CmpOp, Operand),
    /// `contains(p,'x')`, `startswith`, `endswith`.
    Func(String, Operand, Operand),
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// eq
    Eq,
    /// ne
    Ne,
    /// gt
    Gt,
    /// ge
    Ge,
    /// lt
    Lt,
    /// le
    Le,
}

/// An operand: a property or a literal.
#[derive(Debug, Clone)]
pub enum Operand {
    /// A property name.
    Prop(String),
    /// A literal.
    Lit(Value),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LParen,
    RParen,
    Comma,
    Str(String),
    Word(String),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, ODataError> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\r' | '\n' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '\'' => {
                let mut lit = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(filter_error("unterminated string literal")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            lit.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            lit.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(lit));
            }
            _ => {
                let start = i;
                while i < chars.len() && !matches!(chars[i], ' ' | '(' | ')' | ',' | '\'') {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

fn filter_error(what: &str) -> ODataError {
    ODataError::bad_request(codes::ODATA, format!("Syntax error in $filter: {what}."))
}

/// Parses a `$filter` value.
pub fn parse_filter(s: &str) -> Result<Expr, ODataError> {
    let toks = tokenize(s)?;
    let mut p = Parser { toks, pos: 0 };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(filter_error("unexpected trailing tokens"));
    }
    Ok(e)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Word(x)) if x == w)
    }

    fn or(&mut self) -> Result<Expr, ODataError> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ODataError> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ODataError> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.toks.get(self.pos) == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            if self.toks.get(self.pos) != Some(&Tok::RParen) {
                return Err(filter_error("missing ')'"));
            }
            self.pos += 1;
            return Ok(e);
        }
        if let (Some(Tok::Word(f)), Some(Tok::LParen)) =
            (self.toks.get(self.pos), self.toks.get(self.pos + 1))
        {
            let f = f.clone();
            if !matches!(f.as_str(), "contains" | "startswith" | "endswith") {
                return Err(filter_error(&format!("unsupported function '{f}'")));
            }
            self.pos += 2;
            let a = self.operand()?;
            if self.toks.get(self.pos) != Some(&Tok::Comma) {
                return Err(filter_error("expected ','"));
            }
            self.pos += 1;
            let b = self.operand()?;
            if self.toks.get(self.pos) != Some(&Tok::RParen) {
                return Err(filter_error("missing ')'"));
            }
            self.pos += 1;
            return Ok(Expr::Func(f, a, b));
        }
        let left = self.operand()?;
        let op = match self.toks.get(self.pos) {
            Some(Tok::Word(w)) => match w.as_str() {
                "eq" => CmpOp::Eq,
                "ne" => CmpOp::Ne,
                "gt" => CmpOp::Gt,
                "ge" => CmpOp::Ge,
                "lt" => CmpOp::Lt,
                "le" => CmpOp::Le,
                other => return Err(filter_error(&format!("unknown operator '{other}'"))),
            },
            _ => return Err(filter_error("expected a comparison operator")),
        };
        self.pos += 1;
        let right = self.operand()?;
        Ok(Expr::Cmp(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, ODataError> {
        let t = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or_else(|| filter_error("unexpected end"))?;
        self.pos += 1;
        match t {
            Tok::Str(s) => Ok(Operand::Lit(Value::String(s))),
            Tok::Word(w) => Ok(word_operand(&w)),
            _ => Err(filter_error("expected a property or a literal")),
        }
    }
}

fn word_operand(w: &str) -> Operand {
    match w {
        "null" => return Operand::Lit(Value::Null),
        "true" => return Operand::Lit(Value::Bool(true)),
        "false" => return Operand::Lit(Value::Bool(false)),
        _ => {}
    }
    if let Ok(u) = Uuid::parse_str(w) {
        return Operand::Lit(Value::String(u.to_string()));
    }
    if let Ok(n) = w.parse::<i64>() {
        return Operand::Lit(Value::from(n));
    }
    if let Ok(f) = w.parse::<f64>() {
        return Operand::Lit(Value::from(f));
    }
    if w.as_bytes().first().is_some_and(u8::is_ascii_digit) {
        // Dates and date-times are written bare in OData.
        return Operand::Lit(Value::String(w.to_string()));
    }
    Operand::Prop(w.to_string())
}

impl Expr {
    fn validate(&self, table: &Table) -> Result<(), ODataError> {
        let check = |o: &Operand| match o {
            Operand::Prop(p) if !table.is_readable(p) => {
                Err(ODataError::property_not_found(p, &table.logicalname))
            }
            _ => Ok(()),
        };
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.validate(table)?;
                b.validate(table)
            }
            Expr::Not(a) => a.validate(table),
            Expr::Cmp(a, _, b) | Expr::Func(_, a, b) => {
                check(a)?;
                check(b)
            }
        }
    }

    /// Whether a row (stored attributes) matches.
    pub fn matches(&self, row: &Map<String, Value>) -> bool {
        let get = |o: &Operand| match o {
            Operand::Prop(p) => row.get(p).cloned().unwrap_or(Value::Null),
            Operand::Lit(v) => v.clone(),
        };
        match self {
            Expr::And(a, b) => a.matches(row) && b.matches(row),
            Expr::Or(a, b) => a.matches(row) || b.matches(row),
            Expr::Not(a) => !a.matches(row),
            Expr::Cmp(a, op, b) => compare_op(&get(a), *op, &get(b)),
            Expr::Func(f, a, b) => {
                let (Value::String(h), Value::String(n)) = (get(a), get(b)) else {
                    return false;
                };
                let (h, n) = (h.to_lowercase(), n.to_lowercase());
                match f.as_str() {
                    "contains" => h.contains(&n),
                    "startswith" => h.starts_with(&n),
                    _ => h.ends_with(&n),
                }
            }
        }
    }
}

fn compare_op(a: &Value, op: CmpOp, b: &Value) -> bool {
    if a.is_null() || b.is_null() {
        let both = a.is_null() && b.is_null();
        return match op {
            CmpOp::Eq => both,
            CmpOp::Ne => !both,
            _ => false,
        };
    }
    let Some(ord) = compare_values(a, b) else {
        return op == CmpOp::Ne;
    };
    match op {
        CmpOp::Eq => ord == Ordering::Equal,
        CmpOp::Ne => ord != Ordering::Equal,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
    }
}

/// Orders two stored values the way Dataverse compares them (strings case-insensitively,
/// date-times as instants).
pub fn compare_values(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Null, _) => Some(Ordering::Less),
        (_, Value::Null) => Some(Ordering::Greater),
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::String(x), Value::String(y)) => {
            if let (Some(dx), Some(dy)) = (parse_datetime(x), parse_datetime(y)) {
                return Some(dx.cmp(&dy));
            }
            Some(x.to_lowercase().cmp(&y.to_lowercase()))
        }
        _ => None,
    }
}

/// Parses an OData date or date-time literal.
pub fn parse_datetime(s: &str) -> Option<OffsetDateTime> {
    if let Ok(d) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(d);
    }
    if s.len() == 10 {
        return OffsetDateTime::parse(&format!("{s}T00:00:00Z"), &Rfc3339).ok();
    }
    None
}

/// A key predicate: `(guid)` or `(name='value',other=1)`.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyPredicate {
    /// The primary key.
    Id(Uuid),
    /// Alternate key values.
    Alternate(Vec<(String, Value)>),
}

/// The characters that break `GET` and `PATCH` by an alternate key when a key value holds one
/// of them, percent-encoded or not ("Define alternate keys using Power Apps", and "Work with
/// alternate keys", section "Unicode characters in key value").
pub const KEY_VALUE_REFUSED: &[char] = &['/', '#', '<', '>', '*', '%', '&', ':', '\\', '?', '+'];

/// What Dataverse answers a key value holding one of [`KEY_VALUE_REFUSED`]: the OData URI
/// parser's 400 "Bad Request - Error in query syntax.".
pub fn key_value_refused(value: &str) -> ODataError {
    ODataError::bad_request(
        codes::ODATA,
        format!(
            "Bad Request - Error in query syntax. (the alternate key value '{value}' holds one of / # < > * % & : \\ ? +)"
        ),
    )
}

/// Refuses a path whose key predicate has a quoted value holding one of [`KEY_VALUE_REFUSED`]
/// (`path` is already percent-decoded, so encoded characters are refused too).
pub fn check_key_literals(path: &str) -> Result<(), ODataError> {
    let Some(open) = path.find('(') else {
        return Ok(());
    };
    let chars: Vec<char> = path[open..].chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '\'' {
            i += 1;
            continue;
        }
        let mut lit = String::new();
        i += 1;
        while i < chars.len() {
            if chars[i] == '\'' {
                if chars.get(i + 1) == Some(&'\'') {
                    lit.push('\'');
                    i += 2;
                    continue;
                }
                break;
            }
            lit.push(chars[i]);
            i += 1;
        }
        i += 1;
        if lit.contains(KEY_VALUE_REFUSED) {
            return Err(key_value_refused(&lit));
        }
    }
    Ok(())
}

/// Parses the inside of the parentheses of a key predicate (already percent-decoded). A string
/// value holding one of [`KEY_VALUE_REFUSED`] is refused as Dataverse refuses it.
pub fn parse_key(s: &str) -> Result<KeyPredicate, ODataError> {
    let s = s.trim();
    if let Ok(u) = Uuid::parse_str(s) {
        return Ok(KeyPredicate::Id(u));
    }
    check_key_literals(&format!("({s})"))?;
    let bad = || {
        ODataError::bad_request(
            codes::ODATA,
            format!("Bad Request - Error in query syntax: invalid key predicate '({s})'."),
        )
    };
    let toks = tokenize(s).map_err(|_| bad())?;
    let mut pairs = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let Some(Tok::Word(w)) = toks.get(i) else {
            return Err(bad());
        };
        let (name, value_tok) = match w.split_once('=') {
            Some((n, rest)) if !rest.is_empty() => (n.to_string(), Tok::Word(rest.to_string())),
            Some((n, _)) => {
                i += 1;
                (n.to_string(), toks.get(i).cloned().ok_or_else(bad)?)
            }
            None => return Err(bad()),
        };
        let value = match value_tok {
            Tok::Str(v) => Value::String(v),
            Tok::Word(w) => match word_operand(&w) {
                Operand::Lit(v) => v,
                Operand::Prop(_) => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        pairs.push((name, value));
        i += 1;
        match toks.get(i) {
            None => {}
            Some(Tok::Comma) => i += 1,
            _ => return Err(bad()),
        }
    }
    if pairs.is_empty() {
        return Err(bad());
    }
    Ok(KeyPredicate::Alternate(pairs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filter_with_guid_string_and_numbers() {
        let e = parse_filter(
            "_customerid_value eq 6f9619ff-8b86-d011-b42d-00cf4fc964ff and title eq 'It''s' and prioritycode lt 3",
        )
        .unwrap();
        let row = json!({"_customerid_value": "6F9619FF-8B86-D011-B42D-00CF4FC964FF", "title": "it's", "prioritycode": 2});
        assert!(e.matches(row.as_object().unwrap()));
        let row = json!({"_customerid_value": "6f9619ff-8b86-d011-b42d-00cf4fc964ff", "title": "it's", "prioritycode": 3});
        assert!(!e.matches(row.as_object().unwrap()));
    }

    #[test]
    fn dates_compare_as_instants() {
        let e = parse_filter("modifiedon gt 2026-01-01T00:00:00Z").unwrap();
        let row = json!({"modifiedon": "2026-01-01T00:00:01Z"});
        assert!(e.matches(row.as_object().unwrap()));
    }

    #[test]
    fn alternate_key_predicates() {
        assert_eq!(
            parse_key("tgb_tgcaseid='C-1'").unwrap(),
            KeyPredicate::Alternate(vec![("tgb_tgcaseid".into(), json!("C-1"))])
        );
        let k = parse_key(
            "_tgb_partner_value=6f9619ff-8b86-d011-b42d-00cf4fc964ff,tgb_period='2026-10'",
        )
        .unwrap();
        let KeyPredicate::Alternate(pairs) = k else {
            panic!()
        };
        assert_eq!(pairs.len(), 2);
    }
}
