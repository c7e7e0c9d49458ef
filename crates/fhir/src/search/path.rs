//! The subset of FHIRPath (HL7 FHIRPath, normative release 2) that R4's
//! SearchParameter expressions and subscription topic criteria use,
//! evaluated over resources as JSON:
//!
//! - paths `Patient.name.given`, with arrays flattened and choice elements
//!   found by their JSON name (`Observation.value` reads `valueQuantity`,
//!   `valueString`, …);
//! - unions `a | b`, parentheses, the indexer `[0]`;
//! - `as T`, `.as(T)`, `.ofType(T)` (a choice variant, or a value of that
//!   type);
//! - `.where(…)` with `resolve() is T` (the type a reference names);
//! - equality `=`, `!=` and ordering `<`, `>`, `<=`, `>=` between paths
//!   and literals (strings `'…'`, numbers, `true`/`false`, dates `@2020-01-01`);
//! - `and`, `or` (three-valued, as FHIRPath §6.5 defines them), `.not()`,
//!   `.exists()`, `.exists(criteria)`, `.empty()`;
//! - `.extension('url')` and `.first()`;
//! - variables: `%resource` (search), and the ones a caller allows
//!   (`%current` and `%previous` for subscription topics).
//!
//! Anything else is refused when the expression is compiled, naming the
//! part that is not supported.

use std::cmp::Ordering;

use serde_json::Value;

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `a | b | …`
    Union(Vec<Expr>),
    /// A start (a resource type name, a `%variable`, or nothing inside
    /// `where`) and steps.
    Path {
        start: Option<String>,
        steps: Vec<Step>,
    },
    /// A parenthesised expression followed by steps.
    Group { inner: Box<Expr>, steps: Vec<Step> },
    /// `expr as T` / `expr is T` (the operator forms).
    As(Box<Expr>, String),
    /// `left and right`
    And(Box<Expr>, Box<Expr>),
    /// `left or right`
    Or(Box<Expr>, Box<Expr>),
    /// `left <op> right`
    Compare {
        left: Box<Expr>,
        op: CompareOp,
        right: Box<Expr>,
    },
    /// A literal value.
    Literal(Literal),
    /// `resolve() is T`: the reference names a resource of type T.
    ResolvesTo(String),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// A child element (array values are flattened).
    Child(String),
    /// `[n]`
    Index(usize),
    /// `.as(T)` / `.ofType(T)`
    OfType(String),
    /// `.where(condition)`
    Where(Box<Expr>),
    /// `.exists()`
    Exists,
    /// `.empty()`
    Empty,
    /// `.not()`
    Not,
    /// `.first()`
    First,
    /// `.extension('url')`
    Extension(String),
}

/// A literal.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Bool(bool),
    Number(f64),
    /// `@2020-01-01`, `@2020-01-01T10:00:00Z` (without the `@`).
    Date(String),
}

/// A value an expression selected, with its FHIR type when the JSON name
/// says it (a choice variant: `valueQuantity` is a `Quantity`).
#[derive(Debug, Clone, PartialEq)]
pub struct Item<'a> {
    pub value: Node<'a>,
    /// The type named by a choice element's suffix, as written there
    /// (`Quantity`, `DateTime`, `String`).
    pub type_hint: Option<String>,
}

/// A selected JSON value, or a value an expression computed.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Json(&'a Value),
    Bool(bool),
    /// A literal of the expression.
    Literal(&'a Literal),
}

/// Why an expression cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------- lexing

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Text(String),
    Number(usize),
    Decimal(f64),
    Date(String),
    Dot,
    Pipe,
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Operator(CompareOp),
}

fn lex(text: &str) -> Result<Vec<Token>, Unsupported> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let next_is = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, want: char| {
            let yes = chars.peek().map(|(_, c)| *c) == Some(want);
            if yes {
                chars.next();
            }
            yes
        };
        match c {
            c if c.is_whitespace() => {}
            '.' => tokens.push(Token::Dot),
            '|' => tokens.push(Token::Pipe),
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            '[' => tokens.push(Token::OpenBracket),
            ']' => tokens.push(Token::CloseBracket),
            '=' => tokens.push(Token::Operator(CompareOp::Equal)),
            '!' if next_is(&mut chars, '=') => tokens.push(Token::Operator(CompareOp::NotEqual)),
            '<' => tokens.push(Token::Operator(if next_is(&mut chars, '=') {
                CompareOp::LessOrEqual
            } else {
                CompareOp::Less
            })),
            '>' => tokens.push(Token::Operator(if next_is(&mut chars, '=') {
                CompareOp::GreaterOrEqual
            } else {
                CompareOp::Greater
            })),
            '\'' => {
                let mut literal = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\'')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, c)) => literal.push(c),
                            None => return Err(Unsupported("an unfinished string literal".into())),
                        },
                        Some((_, c)) => literal.push(c),
                        None => return Err(Unsupported("an unfinished string literal".into())),
                    }
                }
                tokens.push(Token::Text(literal));
            }
            '@' => {
                let mut date = String::new();
                while let Some((_, d)) = chars.peek().copied() {
                    if !(d.is_ascii_digit() || matches!(d, '-' | ':' | '.' | '+' | 'T' | 'Z')) {
                        break;
                    }
                    date.push(d);
                    chars.next();
                }
                if crate::datetime::parse_range(&date).is_err() {
                    return Err(Unsupported(format!("the date literal @{date}")));
                }
                tokens.push(Token::Date(date));
            }
            '-' if text[i + 1..].starts_with(|n: char| n.is_ascii_digit())
                && (matches!(
                    tokens.last(),
                    None | Some(Token::Operator(_) | Token::Open | Token::Pipe)
                ) || matches!(tokens.last(), Some(Token::Ident(w)) if w == "and" || w == "or")) =>
            {
                // A negative number literal (FHIRPath's unary minus on one).
                let (number, _) = number_at(text, i, &mut chars);
                tokens.push(Token::Decimal(
                    number
                        .parse()
                        .map_err(|_| Unsupported(format!("the number {number:?}")))?,
                ));
            }
            c if c.is_ascii_digit() => {
                let (number, decimal) = number_at(text, i, &mut chars);
                let bad = || Unsupported(format!("the number {number:?}"));
                tokens.push(if decimal {
                    Token::Decimal(number.parse().map_err(|_| bad())?)
                } else {
                    Token::Number(number.parse().map_err(|_| bad())?)
                });
            }
            c if c.is_alphabetic() || c == '_' || c == '%' => {
                let mut end = i + c.len_utf8();
                while let Some((j, d)) = chars.peek().copied() {
                    if !(d.is_alphanumeric() || d == '_' || d == '-') {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                tokens.push(Token::Ident(text[i..end].to_owned()));
            }
            other => return Err(Unsupported(format!("the character {other:?}"))),
        }
    }
    Ok(tokens)
}

/// The number starting at byte `start` (its first character, a digit or
/// `-`, already taken from `chars`): digits with at most one `.` followed
/// by a digit. Returns its text and whether it has a fraction.
fn number_at<'t>(
    text: &'t str,
    start: usize,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
) -> (&'t str, bool) {
    let mut end = start + 1;
    let mut decimal = false;
    while let Some((j, d)) = chars.peek().copied() {
        let point = d == '.' && !decimal && text[j + 1..].starts_with(|n: char| n.is_ascii_digit());
        if !(d.is_ascii_digit() || point) {
            break;
        }
        decimal |= point;
        end = j + d.len_utf8();
        chars.next();
    }
    (&text[start..end], decimal)
}

// ---------------------------------------------------------------- parsing

struct Parser<'v> {
    tokens: Vec<Token>,
    at: usize,
    /// The variables an expression may name, beside `%resource`.
    variables: &'v [&'v str],
    /// How deeply the parser has nested (parentheses, `where`): bounded,
    /// so a hostile expression cannot exhaust the stack.
    depth: usize,
}

/// The deepest nesting an expression may have.
const MAX_DEPTH: usize = 32;

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expect(&mut self, token: Token) -> Result<(), Unsupported> {
        match self.next() {
            Some(t) if t == token => Ok(()),
            other => Err(Unsupported(format!("expected {token:?}, found {other:?}"))),
        }
    }

    fn ident(&mut self) -> Result<String, Unsupported> {
        match self.next() {
            Some(Token::Ident(name)) => Ok(name),
            other => Err(Unsupported(format!("expected a name, found {other:?}"))),
        }
    }

    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(w)) if w == word)
    }

    /// expression := or (FHIRPath §10 precedence, loosest first: `or`,
    /// `and`, `=` `!=`, `<` `>` `<=` `>=`, `|`, `as` `is`, `.`)
    fn expression(&mut self) -> Result<Expr, Unsupported> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Unsupported(format!(
                "nesting deeper than {MAX_DEPTH} levels"
            )));
        }
        let expr = self.or()?;
        self.depth -= 1;
        Ok(expr)
    }

    /// or := and ('or' and)*
    fn or(&mut self) -> Result<Expr, Unsupported> {
        let mut left = self.and()?;
        while self.is_word("or") {
            self.next();
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        if self.is_word("xor") || self.is_word("implies") {
            return Err(Unsupported(format!("the operator {:?}", self.peek())));
        }
        Ok(left)
    }

    /// and := comparison ('and' comparison)*
    fn and(&mut self) -> Result<Expr, Unsupported> {
        let mut left = self.comparison()?;
        while self.is_word("and") {
            self.next();
            let right = self.comparison()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// comparison := union (op union)?
    fn comparison(&mut self) -> Result<Expr, Unsupported> {
        let left = self.union()?;
        let op = match self.peek() {
            Some(Token::Operator(op)) => *op,
            _ => return Ok(left),
        };
        self.next();
        let right = self.union()?;
        if let Some(Token::Operator(_)) = self.peek() {
            return Err(Unsupported(
                "a comparison of a comparison (add parentheses)".into(),
            ));
        }
        Ok(Expr::Compare {
            left: Box::new(left),
            op,
            right: Box::new(right),
        })
    }

    /// union := operand ('|' operand)*
    fn union(&mut self) -> Result<Expr, Unsupported> {
        let mut parts = vec![self.operand()?];
        while self.peek() == Some(&Token::Pipe) {
            self.next();
            parts.push(self.operand()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Union(parts)
        })
    }

    /// operand := literal | typed
    fn operand(&mut self) -> Result<Expr, Unsupported> {
        let literal = match self.peek() {
            Some(Token::Text(t)) => Literal::Text(t.clone()),
            Some(Token::Decimal(n)) => Literal::Number(*n),
            Some(Token::Number(n)) => Literal::Number(*n as f64),
            Some(Token::Date(d)) => Literal::Date(d.clone()),
            Some(Token::Ident(b)) if b == "true" => Literal::Bool(true),
            Some(Token::Ident(b)) if b == "false" => Literal::Bool(false),
            _ => return self.typed(),
        };
        self.next();
        Ok(Expr::Literal(literal))
    }

    /// typed := term (('as' | 'is') TypeName)?
    fn typed(&mut self) -> Result<Expr, Unsupported> {
        let term = self.term()?;
        match self.peek() {
            Some(Token::Ident(op)) if op == "as" => {
                self.next();
                Ok(Expr::As(Box::new(term), self.ident()?))
            }
            Some(Token::Ident(op)) if op == "is" => {
                self.next();
                let type_name = self.ident()?;
                match term {
                    // `resolve() is T`
                    Expr::Path { start: None, steps } if steps.is_empty() => {
                        Ok(Expr::ResolvesTo(type_name))
                    }
                    _ => Err(Unsupported("`is` other than in `resolve() is Type`".into())),
                }
            }
            _ => Ok(term),
        }
    }

    /// term := '(' union ')' steps | path
    fn term(&mut self) -> Result<Expr, Unsupported> {
        if self.peek() == Some(&Token::Open) {
            self.next();
            let inner = self.expression()?;
            self.expect(Token::Close)?;
            let steps = self.steps()?;
            return Ok(Expr::Group {
                inner: Box::new(inner),
                steps,
            });
        }
        let first = self.ident()?;
        if first == "resolve" {
            self.expect(Token::Open)?;
            self.expect(Token::Close)?;
            return Ok(Expr::Path {
                start: None,
                steps: Vec::new(),
            });
        }
        // A path starts with a type name (upper case), a variable
        // (`%resource`, the resource being searched, in composite
        // components) or, inside `where`, with an element name.
        if let Some(name) = first.strip_prefix('%') {
            if first != "%resource" && !self.variables.contains(&name) {
                return Err(Unsupported(format!("the variable {first}")));
            }
        }
        let (start, mut steps) =
            if first.starts_with('%') || first.chars().next().is_some_and(char::is_uppercase) {
                (Some(first), Vec::new())
            } else {
                (None, vec![Step::Child(first)])
            };
        steps.extend(self.steps()?);
        Ok(Expr::Path { start, steps })
    }

    /// steps := ('.' step | '[' number ']')*
    fn steps(&mut self) -> Result<Vec<Step>, Unsupported> {
        let mut steps = Vec::new();
        loop {
            match self.peek() {
                Some(Token::Dot) => {
                    self.next();
                    let name = self.ident()?;
                    if self.peek() == Some(&Token::Open) {
                        self.next();
                        if name == "exists" && self.peek() != Some(&Token::Close) {
                            // `exists(criteria)` is `where(criteria).exists()`.
                            steps.push(Step::Where(Box::new(self.expression()?)));
                            steps.push(Step::Exists);
                        } else {
                            steps.push(self.function(&name)?);
                        }
                        self.expect(Token::Close)?;
                    } else {
                        steps.push(Step::Child(name));
                    }
                }
                Some(Token::OpenBracket) => {
                    self.next();
                    match self.next() {
                        Some(Token::Number(n)) => steps.push(Step::Index(n)),
                        other => return Err(Unsupported(format!("the indexer {other:?}"))),
                    }
                    self.expect(Token::CloseBracket)?;
                }
                _ => return Ok(steps),
            }
        }
    }

    /// The arguments of `name(` up to (not including) `)`.
    fn function(&mut self, name: &str) -> Result<Step, Unsupported> {
        match name {
            "as" | "ofType" => Ok(Step::OfType(self.ident()?)),
            "where" => Ok(Step::Where(Box::new(self.expression()?))),
            "exists" => Ok(Step::Exists),
            "empty" => Ok(Step::Empty),
            "not" => Ok(Step::Not),
            "first" => Ok(Step::First),
            "extension" => match self.next() {
                Some(Token::Text(url)) => Ok(Step::Extension(url)),
                other => Err(Unsupported(format!("extension({other:?})"))),
            },
            other => Err(Unsupported(format!("the function {other}()"))),
        }
    }
}

/// Compiles an expression that may name no variable but `%resource`.
pub fn compile(text: &str) -> Result<Expr, Unsupported> {
    compile_with(text, &[])
}

/// Compiles an expression that may also name `variables` (without `%`).
pub fn compile_with(text: &str, variables: &[&str]) -> Result<Expr, Unsupported> {
    let mut parser = Parser {
        tokens: lex(text)?,
        at: 0,
        variables,
        depth: 0,
    };
    let expr = parser.expression()?;
    match parser.next() {
        None => Ok(expr),
        Some(t) => Err(Unsupported(format!("{t:?} after a complete expression"))),
    }
}

// ---------------------------------------------------------------- evaluation

/// What an evaluation runs in: the resource `%resource` names and the
/// values of the other variables.
struct Env<'a, 'v> {
    root: Item<'a>,
    variables: &'v [(&'v str, Option<&'a Value>)],
}

static NOTHING: Value = Value::Null;

impl Expr {
    /// The parts of a union that apply to `resource_type` (a parameter with
    /// several bases, `Condition.subject | Observation.subject`, keeps only
    /// its own part); `None` when no part does.
    pub fn for_type(&self, resource_type: &str) -> Option<Expr> {
        let applies = |e: &Expr| match e {
            Expr::Path { start: Some(t), .. } => t == resource_type || is_abstract_base(t),
            Expr::Group { inner, .. } | Expr::As(inner, _) => {
                inner.for_type(resource_type).is_some()
            }
            Expr::And(left, _) | Expr::Or(left, _) => left.for_type(resource_type).is_some(),
            Expr::Compare { left, .. } => left.for_type(resource_type).is_some(),
            _ => false,
        };
        match self {
            Expr::Union(parts) => {
                let mut kept: Vec<Expr> = parts.iter().filter(|p| applies(p)).cloned().collect();
                match kept.len() {
                    0 => None,
                    1 => Some(kept.remove(0)),
                    _ => Some(Expr::Union(kept)),
                }
            }
            other => applies(other).then(|| other.clone()),
        }
    }

    /// Evaluates the expression on a resource.
    pub fn evaluate<'a>(&'a self, resource: &'a Value) -> Vec<Item<'a>> {
        self.evaluate_on(resource, resource)
    }

    /// Evaluates the expression on `value`, a part of `resource` (what
    /// `%resource` names): how a composite's components are evaluated.
    pub fn evaluate_on<'a>(&'a self, value: &'a Value, resource: &'a Value) -> Vec<Item<'a>> {
        let env = Env {
            root: json_item(resource),
            variables: &[],
        };
        self.eval(std::slice::from_ref(&json_item(value)), &env)
    }

    /// Evaluates the expression as a condition with these variables (a
    /// variable whose value is `None` is the empty collection), on
    /// `context`: `Some(true)`, `Some(false)`, or `None` when the result is
    /// empty or not a single value (FHIRPath §4.5, singleton evaluation).
    pub fn test(
        &self,
        context: Option<&Value>,
        variables: &[(&str, Option<&Value>)],
    ) -> Option<bool> {
        let env = Env {
            root: json_item(context.unwrap_or(&NOTHING)),
            variables,
        };
        let start: Vec<Item<'_>> = context.map(json_item).into_iter().collect();
        truth(&self.eval(&start, &env))
    }

    fn eval<'a>(&'a self, context: &[Item<'a>], env: &Env<'a, '_>) -> Vec<Item<'a>> {
        match self {
            Expr::Union(parts) => {
                let mut out = Vec::new();
                for part in parts {
                    for item in part.eval(context, env) {
                        // The same value once (by identity: two elements
                        // with equal content are two values).
                        if !out
                            .iter()
                            .any(|o: &Item<'_>| same_node(&o.value, &item.value))
                        {
                            out.push(item);
                        }
                    }
                }
                out
            }
            // A path starting with a type name starts at the resource itself.
            Expr::Path {
                start: Some(name),
                steps,
            } if name.starts_with('%') => {
                let start = if name == "%resource" {
                    vec![env.root.clone()]
                } else {
                    env.variables
                        .iter()
                        .find(|(n, _)| Some(*n) == name.strip_prefix('%'))
                        .and_then(|(_, v)| *v)
                        .map(json_item)
                        .into_iter()
                        .collect()
                };
                apply_steps(start, steps, env)
            }
            Expr::Path { steps, .. } => apply_steps(context.to_vec(), steps, env),
            Expr::Group { inner, steps } => apply_steps(inner.eval(context, env), steps, env),
            Expr::As(inner, type_name) => of_type(inner.eval(context, env), type_name),
            Expr::And(left, right) => {
                // FHIRPath §6.5.1: false wins, then empty.
                let l = truth(&left.eval(context, env));
                if l == Some(false) {
                    return vec![bool_item(false)];
                }
                match (l, truth(&right.eval(context, env))) {
                    (_, Some(false)) => vec![bool_item(false)],
                    (Some(true), Some(true)) => vec![bool_item(true)],
                    _ => Vec::new(),
                }
            }
            Expr::Or(left, right) => {
                // FHIRPath §6.5.2: true wins, then empty.
                let l = truth(&left.eval(context, env));
                if l == Some(true) {
                    return vec![bool_item(true)];
                }
                match (l, truth(&right.eval(context, env))) {
                    (_, Some(true)) => vec![bool_item(true)],
                    (Some(false), Some(false)) => vec![bool_item(false)],
                    _ => Vec::new(),
                }
            }
            Expr::Compare { left, op, right } => {
                let l = left.eval(context, env);
                let r = right.eval(context, env);
                compare(&l, *op, &r).map(bool_item).into_iter().collect()
            }
            Expr::Literal(literal) => vec![Item {
                value: Node::Literal(literal),
                type_hint: None,
            }],
            Expr::ResolvesTo(type_name) => {
                let hits = context.iter().any(|item| match &item.value {
                    Node::Json(v) => reference_type(v).is_some_and(|t| t == type_name),
                    _ => false,
                });
                vec![bool_item(hits)]
            }
        }
    }
}

/// Types whose paths apply to every resource (`Resource.id`, `DomainResource.text`).
fn is_abstract_base(name: &str) -> bool {
    matches!(name, "Resource" | "DomainResource")
}

fn json_item(value: &Value) -> Item<'_> {
    Item {
        value: Node::Json(value),
        type_hint: None,
    }
}

fn bool_item<'a>(b: bool) -> Item<'a> {
    Item {
        value: Node::Bool(b),
        type_hint: None,
    }
}

/// A collection as a condition (FHIRPath §4.5): empty is unknown, one
/// boolean is itself, any other single value is true, several are unknown.
fn truth(items: &[Item<'_>]) -> Option<bool> {
    match items {
        [one] => Some(match &one.value {
            Node::Bool(b) | Node::Json(Value::Bool(b)) | Node::Literal(Literal::Bool(b)) => *b,
            _ => true,
        }),
        _ => None,
    }
}

/// A value as a comparable scalar.
enum Scalar<'a> {
    Text(&'a str),
    Number(f64),
    Bool(bool),
    Other(&'a Value),
}

fn scalar<'a>(node: &Node<'a>) -> Scalar<'a> {
    match node {
        Node::Bool(b) => Scalar::Bool(*b),
        Node::Literal(Literal::Bool(b)) => Scalar::Bool(*b),
        Node::Literal(Literal::Number(n)) => Scalar::Number(*n),
        Node::Literal(Literal::Text(t) | Literal::Date(t)) => Scalar::Text(t),
        Node::Json(Value::Bool(b)) => Scalar::Bool(*b),
        Node::Json(Value::String(s)) => Scalar::Text(s),
        Node::Json(Value::Number(n)) => n.as_f64().map_or(Scalar::Other(&NOTHING), Scalar::Number),
        Node::Json(other) => Scalar::Other(other),
    }
}

/// The order of two single values, `None` when they cannot be compared
/// (different kinds, or dates of different precision that agree as far as
/// both go, FHIRPath §6.1.1 and §6.2).
fn order(a: &Node<'_>, b: &Node<'_>) -> Option<Ordering> {
    match (scalar(a), scalar(b)) {
        (Scalar::Number(x), Scalar::Number(y)) => x.partial_cmp(&y),
        // Booleans are equal or not; they have no order.
        (Scalar::Bool(x), Scalar::Bool(y)) => (x == y).then_some(Ordering::Equal),
        (Scalar::Text(x), Scalar::Text(y)) => {
            match (
                crate::datetime::parse_range(x),
                crate::datetime::parse_range(y),
            ) {
                // Two dates: the instants they cover.
                (Ok(a), Ok(b)) => {
                    // Seconds and fractions of a second are one precision
                    // (FHIRPath §6.1.1): compare the instants themselves.
                    if has_seconds(x) && has_seconds(y) {
                        return Some(a.start.cmp(&b.start));
                    }
                    if a.end <= b.start {
                        Some(Ordering::Less)
                    } else if b.end <= a.start {
                        Some(Ordering::Greater)
                    } else if a == b {
                        Some(Ordering::Equal)
                    } else {
                        None
                    }
                }
                _ => Some(x.cmp(y)),
            }
        }
        (Scalar::Other(x), Scalar::Other(y)) => (x == y).then_some(Ordering::Equal),
        _ => None,
    }
}

/// Whether a dateTime text goes down to seconds (`…T10:00:00Z`, with or
/// without a fraction).
fn has_seconds(text: &str) -> bool {
    text.split_once('T')
        .is_some_and(|(_, time)| time.len() >= 8 && time.as_bytes()[5] == b':')
}

/// `left op right` over two collections (FHIRPath §6.1, §6.2): empty when
/// either is empty; equality compares the collections item by item in
/// order; ordering needs single values.
fn compare(left: &[Item<'_>], op: CompareOp, right: &[Item<'_>]) -> Option<bool> {
    if left.is_empty() || right.is_empty() {
        return None;
    }
    let equal = || {
        if left.len() != right.len() {
            return Some(false);
        }
        let mut all = Some(true);
        for (l, r) in left.iter().zip(right) {
            match order(&l.value, &r.value) {
                Some(Ordering::Equal) => {}
                Some(_) => return Some(false),
                // Values of different kinds are not equal; dates of
                // different precision are unknown.
                None => match (scalar(&l.value), scalar(&r.value)) {
                    (Scalar::Text(_), Scalar::Text(_)) => all = None,
                    _ => return Some(false),
                },
            }
        }
        all
    };
    match op {
        CompareOp::Equal => equal(),
        CompareOp::NotEqual => equal().map(|e| !e),
        _ => {
            let ([l], [r]) = (left, right) else {
                return None;
            };
            // Booleans have no order (FHIRPath §6.2).
            if matches!(scalar(&l.value), Scalar::Bool(_))
                || matches!(scalar(&r.value), Scalar::Bool(_))
            {
                return None;
            }
            let o = order(&l.value, &r.value)?;
            Some(match op {
                CompareOp::Less => o == Ordering::Less,
                CompareOp::LessOrEqual => o != Ordering::Greater,
                CompareOp::Greater => o == Ordering::Greater,
                _ => o != Ordering::Less,
            })
        }
    }
}

/// Two nodes are the same value when they are the same JSON element.
fn same_node(a: &Node<'_>, b: &Node<'_>) -> bool {
    match (a, b) {
        (Node::Json(x), Node::Json(y)) => std::ptr::eq(*x, *y),
        (Node::Bool(x), Node::Bool(y)) => x == y,
        (Node::Literal(x), Node::Literal(y)) => std::ptr::eq(*x, *y),
        _ => false,
    }
}

fn apply_steps<'a>(
    mut items: Vec<Item<'a>>,
    steps: &'a [Step],
    env: &Env<'a, '_>,
) -> Vec<Item<'a>> {
    for step in steps {
        items = match step {
            Step::Child(name) => items.iter().flat_map(|i| children(i, name)).collect(),
            Step::Index(n) => items.into_iter().nth(*n).into_iter().collect(),
            Step::First => items.into_iter().take(1).collect(),
            Step::OfType(t) => of_type(items, t),
            Step::Exists => vec![bool_item(!items.is_empty())],
            Step::Empty => vec![bool_item(items.is_empty())],
            Step::Not => truth(&items).map(|b| bool_item(!b)).into_iter().collect(),
            Step::Where(condition) => items
                .into_iter()
                .filter(|item| {
                    truth(&condition.eval(std::slice::from_ref(item), env)) == Some(true)
                })
                .collect(),
            Step::Extension(url) => items
                .iter()
                .flat_map(|i| children(i, "extension"))
                .filter(|e| match &e.value {
                    Node::Json(v) => v.get("url").and_then(Value::as_str) == Some(url.as_str()),
                    _ => false,
                })
                .collect(),
        };
    }
    items
}

/// The values of element `name` of an item: its array flattened, or, for
/// a choice element, whichever `name<Type>` the object has.
fn children<'a>(item: &Item<'a>, name: &str) -> Vec<Item<'a>> {
    let Node::Json(Value::Object(fields)) = &item.value else {
        return Vec::new();
    };
    let flatten = |value: &'a Value, type_hint: Option<String>| -> Vec<Item<'a>> {
        match value {
            Value::Array(values) => values
                .iter()
                .filter(|v| !v.is_null())
                .map(|v| Item {
                    value: Node::Json(v),
                    type_hint: type_hint.clone(),
                })
                .collect(),
            Value::Null => Vec::new(),
            v => vec![Item {
                value: Node::Json(v),
                type_hint,
            }],
        }
    };
    if let Some(value) = fields.get(name) {
        return flatten(value, None);
    }
    fields
        .iter()
        .filter_map(|(key, value)| {
            let suffix = key.strip_prefix(name)?;
            suffix
                .chars()
                .next()
                .is_some_and(char::is_uppercase)
                .then(|| flatten(value, Some(suffix.to_owned())))
        })
        .flatten()
        .collect()
}

/// Keeps the items of type `type_name`: a choice variant of that type, or
/// an item whose type the JSON does not say (a fixed-type element, whose
/// declared type is what the expression names).
fn of_type<'a>(items: Vec<Item<'a>>, type_name: &str) -> Vec<Item<'a>> {
    items
        .into_iter()
        .filter(|item| match &item.type_hint {
            Some(hint) => hint.eq_ignore_ascii_case(type_name),
            None => true,
        })
        .map(|item| Item {
            type_hint: Some(type_name.to_owned()),
            ..item
        })
        .collect()
}

/// The resource type a Reference names: `Patient/123`, an absolute URL
/// ending in `/Patient/123`, or `Patient/123/_history/2`; `None` for a
/// contained (`#x`), `urn:` or typeless reference.
pub fn reference_type(reference: &Value) -> Option<&str> {
    if let Some(t) = reference.get("type").and_then(Value::as_str) {
        return Some(t);
    }
    let text = reference.get("reference").and_then(Value::as_str)?;
    if text.starts_with('#') || text.starts_with("urn:") {
        return None;
    }
    let path = text.split('?').next().unwrap_or(text);
    let segments: Vec<&str> = path.split('/').collect();
    let n = segments.len();
    let type_at = if n >= 4 && segments[n - 2] == "_history" {
        n - 4
    } else if n >= 2 {
        n - 2
    } else {
        return None;
    };
    let candidate = segments[type_at];
    candidate
        .chars()
        .next()
        .is_some_and(char::is_uppercase)
        .then_some(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values<'a>(expr: &str, resource: &'a Value) -> Vec<&'a Value> {
        // The items may borrow the expression's literals: it lives as long
        // as the test.
        let expr: &'static Expr = Box::leak(Box::new(compile(expr).unwrap()));
        expr.evaluate(resource)
            .into_iter()
            .filter_map(|i| match i.value {
                Node::Json(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn paths_flatten_arrays() {
        let p =
            json!({"resourceType": "Patient", "name": [{"given": ["A", "B"]}, {"given": ["C"]}]});
        assert_eq!(
            values("Patient.name.given", &p),
            [&json!("A"), &json!("B"), &json!("C")]
        );
        assert_eq!(values("Patient.name[1].given", &p), [&json!("C")]);
        assert!(values("Patient.address.city", &p).is_empty());
    }

    #[test]
    fn unions_keep_each_value_once() {
        let p = json!({"resourceType": "Patient", "name": [{"family": "X"}], "address": [{"city": "X"}]});
        let found = values(
            "Patient.name.family | Patient.address.city | Patient.name.family",
            &p,
        );
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn choice_elements_and_type_filters() {
        let c = json!({"resourceType": "Condition", "onsetPeriod": {"start": "2020"}});
        assert_eq!(values("Condition.onset", &c).len(), 1);
        assert_eq!(values("Condition.onset.as(Period)", &c).len(), 1);
        assert!(values("Condition.onset.as(dateTime)", &c).is_empty());
        assert!(values("(Condition.onset as dateTime)", &c).is_empty());
        let o = json!({"resourceType": "Observation", "valueQuantity": {"value": 5}});
        assert_eq!(
            values(
                "(Observation.value as Quantity) | (Observation.value as SampledData)",
                &o
            )
            .len(),
            1
        );
        assert_eq!(values("Observation.value.ofType(Quantity)", &o).len(), 1);
    }

    #[test]
    fn where_with_resolve_and_literals() {
        let o = json!({"resourceType": "Observation",
            "subject": {"reference": "Patient/1"}, "performer": [{"reference": "http://x/fhir/Practitioner/2/_history/3"}]});
        assert_eq!(
            values("Observation.subject.where(resolve() is Patient)", &o).len(),
            1
        );
        assert!(values("Observation.subject.where(resolve() is Group)", &o).is_empty());
        assert_eq!(
            values("Observation.performer.where(resolve() is Practitioner)", &o).len(),
            1
        );
        let p = json!({"resourceType": "Patient", "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}]});
        assert_eq!(
            values("Patient.telecom.where(system='email')", &p),
            [&json!({"system": "email", "value": "a@b"})]
        );
    }

    #[test]
    fn booleans_exists_and_comparisons() {
        let expr = compile("Patient.deceased.exists() and Patient.deceased != false").unwrap();
        let truth =
            |p: Value| expr.evaluate(&p).first().map(|i| i.value.clone()) == Some(Node::Bool(true));
        assert!(truth(
            json!({"resourceType": "Patient", "deceasedBoolean": true})
        ));
        assert!(truth(
            json!({"resourceType": "Patient", "deceasedDateTime": "2020"})
        ));
        assert!(!truth(
            json!({"resourceType": "Patient", "deceasedBoolean": false})
        ));
        assert!(!truth(json!({"resourceType": "Patient"})));
    }

    #[test]
    fn extensions_by_url() {
        let p = json!({"resourceType": "Patient", "extension": [
            {"url": "http://a", "valueString": "x"}, {"url": "http://b", "valueString": "y"}]});
        let found = values("Patient.extension('http://b').value", &p);
        assert_eq!(found, [&json!("y")]);
        assert_eq!(
            values("Patient.extension.where(url='http://a').value", &p),
            [&json!("x")]
        );
    }

    #[test]
    fn a_union_keeps_the_parts_of_one_type() {
        let e = compile("Condition.subject.where(resolve() is Patient) | Observation.subject | AllergyIntolerance.patient").unwrap();
        let o = e.for_type("Observation").unwrap();
        assert_eq!(o, compile("Observation.subject").unwrap());
        assert!(e.for_type("Patient").is_none());
        assert!(compile("Resource.id").unwrap().for_type("Client").is_some());
    }

    #[test]
    fn unsupported_forms_say_what() {
        for (text, says) in [
            ("Patient.name.select(given)", "select"),
            ("Patient.name + 1", "character"),
            ("Patient.name is HumanName", "`is`"),
        ] {
            let e = compile(text).unwrap_err();
            assert!(e.0.contains(says), "{text}: {e}");
        }
    }

    /// A topic criterion over `%current` and `%previous`.
    fn criterion(text: &str, current: Option<Value>, previous: Option<Value>) -> Option<bool> {
        let expr = compile_with(text, &["current", "previous"]).unwrap();
        expr.test(
            current.as_ref(),
            &[
                ("current", current.as_ref()),
                ("previous", previous.as_ref()),
            ],
        )
    }

    #[test]
    fn criteria_over_current_and_previous() {
        let active = json!({"resourceType": "Encounter", "status": "in-progress"});
        let done = json!({"resourceType": "Encounter", "status": "finished"});
        let became = "%current.status = 'finished' and %previous.status != 'finished'";
        assert_eq!(
            criterion(became, Some(done.clone()), Some(active.clone())),
            Some(true)
        );
        assert_eq!(
            criterion(became, Some(done.clone()), Some(done.clone())),
            Some(false)
        );
        // On create `%previous` is empty, and so is a comparison with it
        // (FHIRPath §6.1): a criterion says what it wants then.
        assert_eq!(criterion(became, Some(done.clone()), None), None);
        let or_new = "%current.status = 'finished' and (%previous.empty() or %previous.status != 'finished')";
        assert_eq!(criterion(or_new, Some(done.clone()), None), Some(true));
        assert_eq!(
            criterion(
                "%previous.status = %current.status",
                Some(done.clone()),
                Some(active.clone())
            ),
            Some(false)
        );
        assert_eq!(
            criterion(
                "%current.status != %previous.status",
                Some(done.clone()),
                Some(active)
            ),
            Some(true)
        );
        // A bare path reads `%current`; on delete it is empty.
        assert_eq!(
            criterion("status = 'finished'", Some(done.clone()), None),
            Some(true)
        );
        assert_eq!(
            criterion("Encounter.status = 'finished'", Some(done.clone()), None),
            Some(true)
        );
        assert_eq!(
            criterion("%current.exists().not()", None, Some(done.clone())),
            Some(true)
        );
        assert_eq!(
            criterion(
                "status = 'planned' or status = 'finished'",
                Some(done.clone()),
                None
            ),
            Some(true)
        );
        assert_eq!(
            criterion(
                "status = 'planned' or %previous.status = 'x'",
                Some(done),
                None
            ),
            None
        );
    }

    #[test]
    fn criteria_compare_numbers_dates_and_collections() {
        let o = json!({"resourceType": "Observation", "valueQuantity": {"value": 120.5},
            "effectiveDateTime": "2024-03-01T10:00:00Z",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}, {"system": "x", "code": "y"}]}});
        let t = |text: &str| criterion(text, Some(o.clone()), None);
        assert_eq!(t("%current.value.value > 100"), Some(true));
        assert_eq!(t("%current.valueQuantity.value <= 120.5"), Some(true));
        assert_eq!(t("%current.valueQuantity.value < 120"), Some(false));
        assert_eq!(t("%current.effective >= @2024-03-01T09:00:00Z"), Some(true));
        assert_eq!(t("%current.effective < @2024-02"), Some(false));
        // The same day at another precision: unknown, not true.
        assert_eq!(t("%current.effective > @2024-03-01"), None);
        assert_eq!(
            t("%current.code.coding.exists(system = 'http://loinc.org' and code = '8867-4')"),
            Some(true)
        );
        assert_eq!(
            t("%current.code.coding.where(code = 'zzz').exists()"),
            Some(false)
        );
        // Equality of collections is item by item; ordering needs one value.
        assert_eq!(t("%current.code.coding.code = '8867-4'"), Some(false));
        assert_eq!(t("%current.code.coding.code > 'a'"), None);
        assert_eq!(
            t("%current.code.coding.code.first() = '8867-4'"),
            Some(true)
        );
        assert_eq!(t("'b' > 'a'"), Some(true));
        assert_eq!(
            t("%current.effective = @2024-03-01T10:00:00.000Z"),
            Some(true)
        );
        assert_eq!(t("%current.valueQuantity.value > -1.5"), Some(true));
        assert_eq!(t("-3 < %current.valueQuantity.value"), Some(true));
        // `|` binds tighter than `=` (FHIRPath §10).
        assert_eq!(
            t("%current.valueQuantity.value | %current.effective = 'x'"),
            Some(false)
        );
        assert_eq!(t("true > false"), None);
        assert_eq!(t("true >= true"), None);
        assert_eq!(t("true = true"), Some(true));
        assert_eq!(t("%current.valueQuantity.value = 'x'"), Some(false));
    }

    #[test]
    fn criteria_forms_that_are_refused_say_what() {
        for (text, says) in [
            ("%current.name.count() > 1", "count"),
            ("%other.status = 'x'", "%other"),
            ("%current.active xor %previous.active", "xor"),
            ("%current.status = 'a' = true", "comparison of a comparison"),
            ("%current.birthDate > @yesterday", "date literal"),
            ("%current.value - 1 > 0", "character"),
        ] {
            let e = compile_with(text, &["current", "previous"]).unwrap_err();
            assert!(e.0.contains(says), "{text}: {e}");
        }
        let deep = format!("{}%current.active{}", "(".repeat(40), ")".repeat(40));
        assert!(compile_with(&deep, &["current"])
            .unwrap_err()
            .0
            .contains("nesting"));
        // Search expressions name no topic variable.
        assert!(compile("%current.status").is_err());
    }

    #[test]
    fn reference_types() {
        for (reference, t) in [
            (json!({"reference": "Patient/1"}), Some("Patient")),
            (
                json!({"reference": "https://h/fhir/Patient/1"}),
                Some("Patient"),
            ),
            (
                json!({"reference": "Patient/1/_history/2"}),
                Some("Patient"),
            ),
            (json!({"reference": "#c"}), None),
            (json!({"reference": "urn:uuid:1"}), None),
            (
                json!({"type": "Group", "identifier": {"value": "x"}}),
                Some("Group"),
            ),
        ] {
            assert_eq!(reference_type(&reference), t, "{reference}");
        }
    }
}
