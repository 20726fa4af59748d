//! `--where EXPR`: which calls a session prints, as a small expression over
//! the fields of a [`CallRecord`].
//!
//! ```text
//! status >= 500 || flag == "UF" || latency > 250ms
//! method == "POST" && path ~ "/api/orders/*" && claims.sub != "alice"
//! ```
//!
//! # The language
//!
//! - A comparison is `FIELD OP VALUE`. `OP` is one of `==`, `!=`, `<`, `<=`,
//!   `>`, `>=`, and `~`, which matches a string against a glob (`*` any run
//!   of characters, `?` one character).
//! - Values are numbers (`500`), durations (`250ms`, `1.5s`; units `ns`,
//!   `us`, `µs`, `ms`, `s`, `m`), quoted strings (`"UF"`, with `\"` and `\\`)
//!   and `true`/`false`.
//! - Comparisons combine with `!`, `&&` and `||` (`&&` binds tighter) and
//!   parentheses.
//! - Every field has one type ([`fields`]), checked when the expression is
//!   parsed: a typo or a value of the wrong kind is an error that says what
//!   is expected, before a session creates anything.
//! - Fields that hold several values (`flag`, `layer`) match when any of
//!   them does; `!=` when none does.
//! - A field the record does not have (no latency, no token, a claim the
//!   token lacks) makes its comparison false, whatever the operator: a call
//!   is never said to match on a value no layer reported. `!(claims.sub ==
//!   "alice")` is the way to also take the calls without the claim.
//!
//! The expression is evaluated on each record as it is joined, so it can run
//! wherever the join runs.

use std::fmt;

use crate::record::CallRecord;

/// A parsed `--where` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Predicate {
    root: Node,
}

/// Why an expression did not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at character {position}: {message}")]
pub struct PredicateError {
    /// Where the problem starts, counted in characters from 1.
    pub position: usize,
    /// What is wrong there, and what would be right.
    pub message: String,
}

/// What kind of value a field holds, which decides the values and operators
/// it may be compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Duration,
    Text,
    /// Several texts: matches when any does.
    Texts,
}

/// Every field an expression can name but the claims, the part of the record
/// it reads, and what it is.
const TABLE: &[(&str, Field, &str)] = &[
    (
        "status",
        Field::Status,
        "the HTTP status (none when no response came)",
    ),
    ("method", Field::Method, "the request's method"),
    ("path", Field::Path, "the request's path"),
    (
        "authority",
        Field::Authority,
        "the request's authority (host)",
    ),
    (
        "protocol",
        Field::Protocol,
        "the protocol (HTTP/1.1, HTTP/2)",
    ),
    ("request_id", Field::RequestId, "the x-request-id"),
    (
        "flag",
        Field::Flag,
        "one of Envoy's response flags, by code (UF, URX, ...)",
    ),
    (
        "layer",
        Field::Layer,
        "a layer that observed the call (als, wasm, tc)",
    ),
    (
        "latency",
        Field::Latency,
        "the sidecar's total time (a duration)",
    ),
    (
        "latency.upstream",
        Field::LatencyUpstream,
        "the time spent upstream of the sidecar",
    ),
    (
        "latency.sidecar",
        Field::LatencySidecar,
        "the time spent in the sidecar itself",
    ),
    (
        "request_bytes",
        Field::RequestBytes,
        "the request body's size",
    ),
    (
        "response_bytes",
        Field::ResponseBytes,
        "the response body's size",
    ),
    (
        "grpc.status",
        Field::GrpcStatus,
        "a gRPC call's status, by name (OK, NOT_FOUND, UNAVAILABLE, ...)",
    ),
    (
        "grpc.service",
        Field::GrpcService,
        "a gRPC call's service (package.Service)",
    ),
    ("grpc.method", Field::GrpcMethod, "a gRPC call's method"),
    ("src.name", Field::Src(PeerField::Name), "the caller's name"),
    (
        "src.namespace",
        Field::Src(PeerField::Namespace),
        "the caller's namespace",
    ),
    (
        "src.kind",
        Field::Src(PeerField::Kind),
        "its kind: Pod, Service, Node or External",
    ),
    ("src.ip", Field::Src(PeerField::Ip), "the caller's address"),
    (
        "src.identity",
        Field::Src(PeerField::Identity),
        "the caller's mTLS identity (spiffe://...)",
    ),
    ("dst.name", Field::Dst(PeerField::Name), "the callee's name"),
    (
        "dst.namespace",
        Field::Dst(PeerField::Namespace),
        "the callee's namespace",
    ),
    (
        "dst.kind",
        Field::Dst(PeerField::Kind),
        "its kind: Pod, Service, Node or External",
    ),
    ("dst.ip", Field::Dst(PeerField::Ip), "the callee's address"),
    (
        "dst.identity",
        Field::Dst(PeerField::Identity),
        "the identity the callee proved, when the record has it",
    ),
];

/// A claim of the token, named after `claims.`.
const CLAIMS: (&str, &str) = (
    "claims.NAME",
    "a claim of the caller's JWT (claims.sub, claims.groups)",
);

/// Every field an expression can name, and what it is: the list an unknown
/// field's error gives, and the one `docs/record.md` documents.
pub fn fields() -> impl Iterator<Item = (&'static str, &'static str)> {
    TABLE
        .iter()
        .map(|(name, _, what)| (*name, *what))
        .chain([CLAIMS])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Status,
    Method,
    Path,
    Authority,
    Protocol,
    RequestId,
    Flag,
    Layer,
    Latency,
    LatencyUpstream,
    LatencySidecar,
    RequestBytes,
    ResponseBytes,
    GrpcStatus,
    GrpcService,
    GrpcMethod,
    Src(PeerField),
    Dst(PeerField),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerField {
    Name,
    Namespace,
    Kind,
    Ip,
    Identity,
}

impl Field {
    fn named(name: &str) -> Option<Self> {
        TABLE
            .iter()
            .find(|(known, _, _)| *known == name)
            .map(|(_, field, _)| *field)
    }

    fn kind(self) -> Kind {
        match self {
            Self::Status | Self::RequestBytes | Self::ResponseBytes => Kind::Number,
            Self::Latency | Self::LatencyUpstream | Self::LatencySidecar => Kind::Duration,
            Self::Flag | Self::Layer => Kind::Texts,
            Self::Method
            | Self::Path
            | Self::Authority
            | Self::Protocol
            | Self::RequestId
            | Self::GrpcStatus
            | Self::GrpcService
            | Self::GrpcMethod
            | Self::Src(_)
            | Self::Dst(_) => Kind::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Glob,
}

impl Op {
    fn relational(self) -> bool {
        matches!(self, Self::Lt | Self::Le | Self::Gt | Self::Ge)
    }

    fn holds(self, ordering: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::{Equal, Greater, Less};
        match self {
            Self::Eq => ordering == Equal,
            Self::Ne => ordering != Equal,
            Self::Lt => ordering == Less,
            Self::Le => ordering != Greater,
            Self::Gt => ordering == Greater,
            Self::Ge => ordering != Less,
            Self::Glob => false,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Eq => "==",
            Self::Ne => "!=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Glob => "~",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Number(f64),
    /// Nanoseconds.
    Duration(f64),
    Text(String),
    Bool(bool),
}

impl Value {
    fn describe(&self) -> &'static str {
        match self {
            Self::Number(_) => "a number",
            Self::Duration(_) => "a duration",
            Self::Text(_) => "a string",
            Self::Bool(_) => "true or false",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Or(Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Compare {
        field: Field,
        op: Op,
        value: Value,
    },
    /// `claims.NAME OP VALUE`: the name is a top-level claim.
    Claim {
        name: String,
        op: Op,
        value: Value,
    },
}

impl Predicate {
    /// Parses `text`, checking every field's name and the kind of what it is
    /// compared with.
    pub fn parse(text: &str) -> Result<Self, PredicateError> {
        let tokens = lex(text)?;
        let mut parser = Parser {
            tokens: &tokens,
            next: 0,
            end: text.chars().count() + 1,
        };
        let root = parser.or()?;
        if let Some(token) = parser.peek() {
            return Err(PredicateError {
                position: token.position,
                message: format!(
                    "expected `&&`, `||` or the end, found {}",
                    token.item.describe()
                ),
            });
        }
        Ok(Self { root })
    }

    /// Whether `record` is one of the calls the expression selects.
    pub fn matches(&self, record: &CallRecord) -> bool {
        self.root.holds(record)
    }
}

impl Node {
    fn holds(&self, record: &CallRecord) -> bool {
        match self {
            Self::Or(left, right) => left.holds(record) || right.holds(record),
            Self::And(left, right) => left.holds(record) && right.holds(record),
            Self::Not(inner) => !inner.holds(record),
            Self::Compare { field, op, value } => compare(record, *field, *op, value),
            Self::Claim { name, op, value } => record
                .auth
                .as_ref()
                .and_then(|auth| auth.claims.get(name))
                .is_some_and(|claim| compare_claim(claim, *op, value)),
        }
    }
}

fn compare(record: &CallRecord, field: Field, op: Op, value: &Value) -> bool {
    let number = |actual: Option<f64>| {
        let (Some(actual), Value::Number(wanted) | Value::Duration(wanted)) = (actual, value)
        else {
            return false;
        };
        actual
            .partial_cmp(wanted)
            .is_some_and(|ordering| op.holds(ordering))
    };
    let micros = |us: Option<i64>| number(us.map(|us| us as f64 * 1_000.0));
    let text = |actual: Option<&str>| {
        let (Some(actual), Value::Text(wanted)) = (actual, value) else {
            return false;
        };
        text_holds(actual, op, wanted)
    };
    let peer = |peer: &crate::record::Peer, which: PeerField| match which {
        PeerField::Name => text(Some(&peer.name)),
        PeerField::Namespace => text(Some(&peer.namespace)),
        PeerField::Kind => text(Some(&peer.kind)),
        PeerField::Ip => text(Some(&peer.ip)),
        PeerField::Identity => text(peer.identity.as_deref()),
    };
    match field {
        // A call without a response has status 0: no status was reported.
        Field::Status => number((record.status != 0).then_some(f64::from(record.status))),
        Field::RequestBytes => number(record.request_body_bytes.map(|bytes| bytes as f64)),
        Field::ResponseBytes => number(record.response_body_bytes.map(|bytes| bytes as f64)),
        Field::Latency => micros(record.latency.as_ref().map(|latency| latency.total_us)),
        Field::LatencyUpstream => {
            micros(record.latency.as_ref().map(|latency| latency.upstream_us))
        }
        Field::LatencySidecar => micros(record.latency.as_ref().map(|latency| latency.sidecar_us)),
        Field::Method => text(non_empty(&record.method)),
        Field::Path => text(non_empty(&record.path)),
        Field::Authority => text(non_empty(&record.authority)),
        Field::Protocol => text(non_empty(&record.protocol)),
        Field::RequestId => text(non_empty(&record.request_id)),
        Field::GrpcStatus => text(
            record
                .grpc
                .as_ref()
                .and_then(|grpc| grpc.status_name.as_deref()),
        ),
        Field::GrpcService => text(record.grpc.as_ref().map(|grpc| grpc.service.as_str())),
        Field::GrpcMethod => text(record.grpc.as_ref().map(|grpc| grpc.method.as_str())),
        Field::Src(which) => peer(&record.src, which),
        Field::Dst(which) => peer(&record.dst, which),
        Field::Flag => {
            // Each flag is spelled out as `CODE: what it means`.
            let codes = record
                .response_flags
                .iter()
                .map(|flag| flag.split_once(':').map_or(flag.as_str(), |(code, _)| code));
            any_of(codes, op, value)
        }
        Field::Layer => any_of(
            record.layers.iter().map(|layer| match layer {
                crate::record::Layer::Als => "als",
                crate::record::Layer::Wasm => "wasm",
                crate::record::Layer::Tc => "tc",
            }),
            op,
            value,
        ),
    }
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// A field of several values: `!=` holds when none is the value, every other
/// operator when any holds.
fn any_of<'a>(mut values: impl Iterator<Item = &'a str>, op: Op, value: &Value) -> bool {
    let Value::Text(wanted) = value else {
        return false;
    };
    match op {
        Op::Ne => values.all(|actual| actual != wanted),
        _ => values.any(|actual| text_holds(actual, op, wanted)),
    }
}

fn text_holds(actual: &str, op: Op, wanted: &str) -> bool {
    match op {
        Op::Glob => glob(wanted, actual),
        _ => op.holds(actual.cmp(wanted)),
    }
}

fn compare_claim(claim: &serde_json::Value, op: Op, value: &Value) -> bool {
    use serde_json::Value as Json;
    match (claim, value) {
        (Json::String(actual), Value::Text(wanted)) => text_holds(actual, op, wanted),
        (Json::Number(actual), Value::Number(wanted)) => actual
            .as_f64()
            .and_then(|actual| actual.partial_cmp(wanted))
            .is_some_and(|ordering| op.holds(ordering)),
        (Json::Bool(actual), Value::Bool(wanted)) => op.holds(actual.cmp(wanted)),
        // A list claim (groups, roles, aud): as a field of several values.
        (Json::Array(items), Value::Text(_)) => {
            any_of(items.iter().filter_map(Json::as_str), op, value)
        }
        _ => false,
    }
}

/// Whether `text` matches `pattern`, where `*` is any run of characters and
/// `?` one character. Backtracks only to the last `*`, so it is linear in
/// practice and quadratic at worst.
fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[derive(Debug, Clone, PartialEq)]
enum Item {
    Name(String),
    Literal(Value),
    Op(Op),
    And,
    Or,
    Not,
    Open,
    Close,
}

impl Item {
    fn describe(&self) -> String {
        match self {
            Self::Name(name) => format!("`{name}`"),
            Self::Literal(Value::Text(text)) => format!("{text:?}"),
            Self::Literal(value) => value.describe().to_owned(),
            Self::Op(op) => format!("`{op}`"),
            Self::And => "`&&`".into(),
            Self::Or => "`||`".into(),
            Self::Not => "`!`".into(),
            Self::Open => "`(`".into(),
            Self::Close => "`)`".into(),
        }
    }
}

#[derive(Debug)]
struct Token {
    item: Item,
    /// In characters, from 1.
    position: usize,
}

fn error(position: usize, message: impl Into<String>) -> PredicateError {
    PredicateError {
        position,
        message: message.into(),
    }
}

fn lex(text: &str) -> Result<Vec<Token>, PredicateError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        let position = at + 1;
        let next = chars.get(at + 1).copied();
        let (item, width) = match (c, next) {
            (c, _) if c.is_whitespace() => {
                at += 1;
                continue;
            }
            ('&', Some('&')) => (Item::And, 2),
            ('|', Some('|')) => (Item::Or, 2),
            ('=', Some('=')) => (Item::Op(Op::Eq), 2),
            ('!', Some('=')) => (Item::Op(Op::Ne), 2),
            ('<', Some('=')) => (Item::Op(Op::Le), 2),
            ('>', Some('=')) => (Item::Op(Op::Ge), 2),
            ('<', _) => (Item::Op(Op::Lt), 1),
            ('>', _) => (Item::Op(Op::Gt), 1),
            ('~', _) => (Item::Op(Op::Glob), 1),
            ('!', _) => (Item::Not, 1),
            ('(', _) => (Item::Open, 1),
            (')', _) => (Item::Close, 1),
            ('=', _) => return Err(error(position, "`=` compares nothing: use `==`")),
            ('&', _) => return Err(error(position, "`&` alone: use `&&` for and")),
            ('|', _) => return Err(error(position, "`|` alone: use `||` for or")),
            ('"', _) => {
                let mut value = String::new();
                let mut end = at + 1;
                loop {
                    match chars.get(end) {
                        None => return Err(error(position, "this string has no closing `\"`")),
                        Some('"') => break,
                        Some('\\') => match chars.get(end + 1) {
                            Some(&escaped @ ('"' | '\\')) => {
                                value.push(escaped);
                                end += 2;
                            }
                            _ => {
                                return Err(error(
                                    end + 1,
                                    "in a string, `\\` escapes only `\"` and `\\`",
                                ));
                            }
                        },
                        Some(&c) => {
                            value.push(c);
                            end += 1;
                        }
                    }
                }
                (Item::Literal(Value::Text(value)), end + 1 - at)
            }
            (c, _) if c.is_ascii_digit() => {
                let width = chars[at..]
                    .iter()
                    .take_while(|c| c.is_alphanumeric() || **c == '.')
                    .count();
                let word: String = chars[at..at + width].iter().collect();
                (Item::Literal(number(&word, position)?), width)
            }
            (c, _) if c.is_alphabetic() || c == '_' => {
                let width = chars[at..]
                    .iter()
                    .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'))
                    .count();
                let word: String = chars[at..at + width].iter().collect();
                let item = match word.as_str() {
                    "true" => Item::Literal(Value::Bool(true)),
                    "false" => Item::Literal(Value::Bool(false)),
                    _ => Item::Name(word),
                };
                (item, width)
            }
            (c, _) => return Err(error(position, format!("`{c}` has no meaning here"))),
        };
        tokens.push(Token { item, position });
        at += width;
    }
    Ok(tokens)
}

/// A number, or a duration when a unit follows it.
fn number(word: &str, position: usize) -> Result<Value, PredicateError> {
    let digits = word
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(word.len());
    let (amount, unit) = word.split_at(digits);
    let amount: f64 = amount
        .parse()
        .map_err(|_| error(position, format!("`{word}` is not a number")))?;
    let nanos_per = match unit {
        "" => return Ok(Value::Number(amount)),
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        _ => {
            return Err(error(
                position,
                format!("`{word}`: a duration's unit is one of ns, us, ms, s, m"),
            ));
        }
    };
    Ok(Value::Duration(amount * nanos_per))
}

struct Parser<'a> {
    tokens: &'a [Token],
    next: usize,
    /// The position just after the text, for errors at its end.
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn eat(&mut self, item: &Item) -> bool {
        let found = self.peek().is_some_and(|token| token.item == *item);
        if found {
            self.next += 1;
        }
        found
    }

    fn or(&mut self) -> Result<Node, PredicateError> {
        let mut node = self.and()?;
        while self.eat(&Item::Or) {
            node = Node::Or(Box::new(node), Box::new(self.and()?));
        }
        Ok(node)
    }

    fn and(&mut self) -> Result<Node, PredicateError> {
        let mut node = self.not()?;
        while self.eat(&Item::And) {
            node = Node::And(Box::new(node), Box::new(self.not()?));
        }
        Ok(node)
    }

    fn not(&mut self) -> Result<Node, PredicateError> {
        if self.eat(&Item::Not) {
            return Ok(Node::Not(Box::new(self.not()?)));
        }
        if self.eat(&Item::Open) {
            let node = self.or()?;
            if !self.eat(&Item::Close) {
                let position = self.peek().map_or(self.end, |token| token.position);
                return Err(error(position, "expected `)`"));
            }
            return Ok(node);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, PredicateError> {
        let Some(token) = self.peek() else {
            return Err(error(self.end, "expected a field, such as `status`"));
        };
        let position = token.position;
        let Item::Name(name) = &token.item else {
            return Err(error(
                position,
                format!(
                    "expected a field, such as `status`, found {}",
                    token.item.describe()
                ),
            ));
        };
        let name = name.clone();
        self.next += 1;
        let (op, op_position) = match self.peek() {
            Some(Token {
                item: Item::Op(op),
                position,
            }) => (*op, *position),
            other => {
                return Err(error(
                    other.map_or(self.end, |token| token.position),
                    format!("expected an operator (==, !=, <, <=, >, >=, ~) after `{name}`"),
                ));
            }
        };
        self.next += 1;
        let (value, value_position) = match self.peek() {
            Some(Token {
                item: Item::Literal(value),
                position,
            }) => (value.clone(), *position),
            Some(Token {
                item: Item::Name(word),
                position,
            }) => {
                return Err(error(
                    *position,
                    format!("a string is quoted: write \"{word}\""),
                ));
            }
            other => {
                return Err(error(
                    other.map_or(self.end, |token| token.position),
                    format!("expected a value after `{name} {op}`"),
                ));
            }
        };
        self.next += 1;
        if let Some(claim) = name.strip_prefix("claims.") {
            if claim.is_empty() {
                return Err(error(position, "name the claim: `claims.sub`"));
            }
            if op == Op::Glob && !matches!(value, Value::Text(_)) {
                return Err(error(
                    value_position,
                    "`~` matches a string: quote the pattern",
                ));
            }
            return Ok(Node::Claim {
                name: claim.to_owned(),
                op,
                value,
            });
        }
        let Some(field) = Field::named(&name) else {
            let names: Vec<&str> = fields().map(|(name, _)| name).collect();
            return Err(error(
                position,
                format!("no field `{name}`; the fields are {}", names.join(", ")),
            ));
        };
        check_kind(field.kind(), &name, op, op_position, &value, value_position)?;
        Ok(Node::Compare { field, op, value })
    }
}

fn check_kind(
    kind: Kind,
    name: &str,
    op: Op,
    op_position: usize,
    value: &Value,
    value_position: usize,
) -> Result<(), PredicateError> {
    let wanted = match kind {
        Kind::Number => "a number",
        Kind::Duration => "a duration, such as 250ms",
        Kind::Text | Kind::Texts => "a quoted string",
    };
    match kind {
        Kind::Text | Kind::Texts if op.relational() => {
            return Err(error(
                op_position,
                format!("`{name}` is a string: compare it with ==, != or ~"),
            ));
        }
        Kind::Number | Kind::Duration if op == Op::Glob => {
            return Err(error(
                op_position,
                format!("`~` matches strings; `{name}` is {wanted}"),
            ));
        }
        _ => {}
    }
    let fits = matches!(
        (kind, value),
        (Kind::Number, Value::Number(_))
            | (Kind::Duration, Value::Duration(_))
            | (Kind::Text | Kind::Texts, Value::Text(_))
    );
    if fits {
        Ok(())
    } else {
        Err(error(
            value_position,
            format!(
                "`{name}` is compared with {wanted}, not {}",
                value.describe()
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::record::{AuthRecord, GrpcRecord, Latency, Layer};

    fn record() -> CallRecord {
        let mut record = crate::record::tests::full_record();
        record.dst.name = "nginx".into();
        record.src.kind = "Pod".into();
        record.status = 503;
        record.method = "POST".into();
        record.path = "/api/orders/42".into();
        record.response_flags = vec!["UF: upstream connection failure".into()];
        record.layers = vec![Layer::Als, Layer::Tc];
        record.grpc = Some(GrpcRecord {
            service: "shop.v1.Orders".into(),
            method: "ListOrders".into(),
            status: Some(14),
            status_name: Some("UNAVAILABLE".into()),
            message: String::new(),
            request_messages: Some(1),
            response_messages: Some(2),
        });
        record.latency = Some(Latency {
            total_us: 300_000,
            upstream_us: 290_000,
            sidecar_us: 10_000,
            before_sidecar_us: None,
            pod_wire_us: None,
            app_wire_us: None,
        });
        record.auth = Some(AuthRecord {
            scheme: "Bearer".into(),
            claims: Arc::new(serde_json::json!({
                "sub": "alice", "level": 3, "admin": false, "groups": ["ops", "dev"]
            })),
            jwt_header: Arc::new(serde_json::Value::Null),
            fingerprint: "sha256:00".into(),
            token: None,
            error: None,
        });
        record
    }

    fn holds(text: &str, record: &CallRecord) -> bool {
        Predicate::parse(text)
            .unwrap_or_else(|error| panic!("{text}: {error}"))
            .matches(record)
    }

    #[test]
    fn comparisons_of_every_kind_select_as_written() {
        let record = record();
        for (text, expected) in [
            ("status >= 500", true),
            ("status < 500", false),
            ("status == 503 && method == \"POST\"", true),
            ("method != \"POST\"", false),
            ("flag == \"UF\"", true),
            ("flag == \"URX\"", false),
            ("flag != \"URX\"", true),
            ("flag != \"UF\"", false),
            ("layer == \"tc\" && layer != \"wasm\"", true),
            ("latency > 250ms", true),
            ("latency > 0.5s", false),
            ("latency.sidecar <= 10ms", true),
            ("latency.upstream < 290ms", false),
            ("path ~ \"/api/orders/*\"", true),
            ("path ~ \"/api/*/4?\"", true),
            ("path ~ \"/api/users/*\"", false),
            ("claims.sub == \"alice\"", true),
            ("claims.level >= 3 && claims.admin == false", true),
            ("claims.groups == \"ops\"", true),
            ("claims.groups != \"ops\"", false),
            ("!(status == 503)", false),
            ("status == 200 || flag == \"UF\" && latency > 1s", false),
            ("(status == 200 || flag == \"UF\") && latency > 250ms", true),
            ("dst.name == \"nginx\" || src.kind == \"Pod\"", true),
            (
                "grpc.status == \"UNAVAILABLE\" && grpc.service ~ \"shop.*\"",
                true,
            ),
            (
                "grpc.method == \"ListOrders\" && grpc.status != \"OK\"",
                true,
            ),
            ("grpc.status == \"OK\"", false),
        ] {
            assert_eq!(holds(text, &record), expected, "{text}");
        }
    }

    #[test]
    fn a_field_no_layer_reported_matches_nothing() {
        let mut record = record();
        record.latency = None;
        record.auth = None;
        record.grpc = None;
        record.status = 0;
        record.src.identity = None;
        record.request_body_bytes = None;
        for text in [
            "latency > 0ms",
            "latency <= 1m",
            "claims.sub == \"alice\"",
            "claims.sub != \"alice\"",
            "status != 200",
            "src.identity != \"spiffe://x\"",
            "request_bytes >= 0",
            "grpc.status != \"OK\"",
        ] {
            assert!(!holds(text, &record), "{text}");
        }
        assert!(holds("!(claims.sub == \"alice\")", &record));
    }

    #[test]
    fn mistakes_are_errors_that_say_what_to_write() {
        for (text, position, message) in [
            (
                "stauts >= 500",
                1,
                "no field `stauts`; the fields are status, method",
            ),
            (
                "status >= \"500\"",
                11,
                "`status` is compared with a number, not a string",
            ),
            (
                "latency > 250",
                11,
                "`latency` is compared with a duration, such as 250ms",
            ),
            (
                "latency > 250 ms",
                11,
                "`latency` is compared with a duration",
            ),
            ("latency > 250h", 11, "a duration's unit is one of"),
            (
                "method > \"GET\"",
                8,
                "`method` is a string: compare it with ==, != or ~",
            ),
            ("status ~ \"5*\"", 8, "`~` matches strings"),
            ("flag == UF", 9, "a string is quoted: write \"UF\""),
            ("status = 500", 8, "use `==`"),
            ("status == 500 & flag == \"UF\"", 15, "use `&&`"),
            ("(status == 500", 15, "expected `)`"),
            ("status == 500 flag", 15, "expected `&&`, `||` or the end"),
            ("status ==", 10, "expected a value after `status ==`"),
            ("status", 7, "expected an operator"),
            ("", 1, "expected a field"),
            ("path == \"/a", 9, "no closing"),
            ("claims. == \"x\"", 1, "name the claim"),
            ("status == 500 $", 15, "`$` has no meaning here"),
        ] {
            let error = Predicate::parse(text).expect_err(text);
            assert_eq!(error.position, position, "{text}: {error}");
            assert!(error.message.contains(message), "{text}: {error}");
        }
    }

    /// `docs/record.md` lists every field an expression can name.
    #[test]
    fn the_record_documentation_lists_every_field() {
        let documented = include_str!("../../../docs/record.md");
        for (name, _) in fields() {
            assert!(
                documented.contains(&format!("| `{name}` |")),
                "docs/record.md does not list the field {name}"
            );
        }
    }

    #[test]
    fn globs_match_whole_strings() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("/api/*", "/api/", true),
            ("/api/*", "/apix", false),
            ("*orders*", "/api/orders/42", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("??", "é!", true),
            ("a?c", "ac", false),
        ] {
            assert_eq!(glob(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    proptest::proptest! {
        /// Whatever is typed, parsing gives an expression or an error, and an
        /// expression evaluates.
        #[test]
        fn any_text_parses_or_is_refused(text in "[ -~µ]{0,40}") {
            if let Ok(predicate) = Predicate::parse(&text) {
                let _ = predicate.matches(&record());
            }
        }

        /// The linear glob match agrees with a plain recursive one.
        #[test]
        fn glob_agrees_with_a_plain_backtracking_match(pattern in "[ab*?]{0,8}", text in "[ab]{0,10}") {
            proptest::prop_assert_eq!(glob(&pattern, &text), naive_glob(&pattern.chars().collect::<Vec<_>>(), &text.chars().collect::<Vec<_>>()));
        }
    }

    fn naive_glob(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|skip| naive_glob(rest, &text[skip..])),
            Some((&c, rest)) => text
                .split_first()
                .is_some_and(|(&t, tail)| (c == '?' || c == t) && naive_glob(rest, tail)),
        }
    }
}
