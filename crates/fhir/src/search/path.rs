//! The subset of FHIRPath (HL7 FHIRPath, normative release 2) that R4's
//! SearchParameter expressions use, evaluated over resources as JSON:
//!
//! - paths `Patient.name.given`, with arrays flattened and choice elements
//!   found by their JSON name (`Observation.value` reads `valueQuantity`,
//!   `valueString`, …);
//! - unions `a | b`, parentheses, the indexer `[0]`;
//! - `as T`, `.as(T)`, `.ofType(T)` (a choice variant, or a value of that
//!   type);
//! - `.where(…)` with `resolve() is T` (the type a reference names),
//!   `name = 'literal'` (e.g. `type='composed-of'`, `system='phone'`);
//! - `.exists()`, `!= false`, `and` (as in `Patient.deceased.exists() and
//!   Patient.deceased != false`);
//! - `.extension('url')` and `.first()`.
//!
//! Anything else is refused when the expression is compiled, naming the
//! part that is not supported.

use serde_json::Value;

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `a | b | …`
    Union(Vec<Expr>),
    /// A start (a resource type name, or nothing inside `where`) and steps.
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
    /// `left != literal` / `left = literal`
    Compare {
        left: Box<Expr>,
        equal: bool,
        literal: Literal,
    },
    /// `resolve() is T`: the reference names a resource of type T.
    ResolvesTo(String),
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
    /// `.first()`
    First,
    /// `.extension('url')`
    Extension(String),
}

/// A literal in a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Bool(bool),
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

/// A selected JSON value, or a boolean an expression computed.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    Json(&'a Value),
    Bool(bool),
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
    Dot,
    Pipe,
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Equal,
    NotEqual,
}

fn lex(text: &str) -> Result<Vec<Token>, Unsupported> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '.' => tokens.push(Token::Dot),
            '|' => tokens.push(Token::Pipe),
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            '[' => tokens.push(Token::OpenBracket),
            ']' => tokens.push(Token::CloseBracket),
            '=' => tokens.push(Token::Equal),
            '!' if chars.peek().map(|(_, c)| *c) == Some('=') => {
                chars.next();
                tokens.push(Token::NotEqual);
            }
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
            c if c.is_ascii_digit() => {
                let mut end = i + c.len_utf8();
                while let Some((j, d)) = chars.peek().copied() {
                    if !d.is_ascii_digit() {
                        break;
                    }
                    end = j + d.len_utf8();
                    chars.next();
                }
                let n = text[i..end]
                    .parse()
                    .map_err(|_| Unsupported(format!("the number {:?}", &text[i..end])))?;
                tokens.push(Token::Number(n));
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

// ---------------------------------------------------------------- parsing

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
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

    /// union := and ('|' and)*
    fn union(&mut self) -> Result<Expr, Unsupported> {
        let mut parts = vec![self.and()?];
        while self.peek() == Some(&Token::Pipe) {
            self.next();
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Expr::Union(parts)
        })
    }

    /// and := comparison ('and' comparison)*
    fn and(&mut self) -> Result<Expr, Unsupported> {
        let mut left = self.comparison()?;
        while self.peek() == Some(&Token::Ident("and".into())) {
            self.next();
            let right = self.comparison()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// comparison := typed (('=' | '!=') literal)?
    fn comparison(&mut self) -> Result<Expr, Unsupported> {
        let left = self.typed()?;
        let equal = match self.peek() {
            Some(Token::Equal) => true,
            Some(Token::NotEqual) => false,
            _ => return Ok(left),
        };
        self.next();
        let literal = match self.next() {
            Some(Token::Text(t)) => Literal::Text(t),
            Some(Token::Ident(b)) if b == "true" => Literal::Bool(true),
            Some(Token::Ident(b)) if b == "false" => Literal::Bool(false),
            other => return Err(Unsupported(format!("a comparison with {other:?}"))),
        };
        Ok(Expr::Compare {
            left: Box::new(left),
            equal,
            literal,
        })
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
            let inner = self.union()?;
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
        // A path starts with a type name (upper case), `%resource` (the
        // resource being searched, in composite components) or, inside
        // `where`, with an element name.
        if first.starts_with('%') && first != "%resource" {
            return Err(Unsupported(format!("the variable {first}")));
        }
        let (start, mut steps) =
            if first == "%resource" || first.chars().next().is_some_and(char::is_uppercase) {
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
                        steps.push(self.function(&name)?);
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
            "where" => Ok(Step::Where(Box::new(self.union()?))),
            "exists" => Ok(Step::Exists),
            "first" => Ok(Step::First),
            "extension" => match self.next() {
                Some(Token::Text(url)) => Ok(Step::Extension(url)),
                other => Err(Unsupported(format!("extension({other:?})"))),
            },
            other => Err(Unsupported(format!("the function {other}()"))),
        }
    }
}

/// Compiles an expression.
pub fn compile(text: &str) -> Result<Expr, Unsupported> {
    let mut parser = Parser {
        tokens: lex(text)?,
        at: 0,
    };
    let expr = parser.union()?;
    match parser.next() {
        None => Ok(expr),
        Some(t) => Err(Unsupported(format!("{t:?} after a complete expression"))),
    }
}

// ---------------------------------------------------------------- evaluation

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
            Expr::And(left, _) => left.for_type(resource_type).is_some(),
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
    pub fn evaluate<'a>(&self, resource: &'a Value) -> Vec<Item<'a>> {
        self.evaluate_on(resource, resource)
    }

    /// Evaluates the expression on `value`, a part of `resource` (what
    /// `%resource` names): how a composite's components are evaluated.
    pub fn evaluate_on<'a>(&self, value: &'a Value, resource: &'a Value) -> Vec<Item<'a>> {
        let item = |v: &'a Value| Item {
            value: Node::Json(v),
            type_hint: None,
        };
        self.eval(std::slice::from_ref(&item(value)), &item(resource))
    }

    fn eval<'a>(&self, context: &[Item<'a>], root: &Item<'a>) -> Vec<Item<'a>> {
        match self {
            Expr::Union(parts) => {
                let mut out = Vec::new();
                for part in parts {
                    for item in part.eval(context, root) {
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
            Expr::Path { start, steps } if start.as_deref() == Some("%resource") => {
                apply_steps(vec![root.clone()], steps, root)
            }
            Expr::Path { steps, .. } => apply_steps(context.to_vec(), steps, root),
            Expr::Group { inner, steps } => apply_steps(inner.eval(context, root), steps, root),
            Expr::As(inner, type_name) => of_type(inner.eval(context, root), type_name),
            Expr::And(left, right) => {
                let truth = |items: Vec<Item<'_>>| {
                    matches!(
                        items.as_slice(),
                        [Item {
                            value: Node::Bool(true),
                            ..
                        }]
                    )
                };
                vec![bool_item(
                    truth(left.eval(context, root)) && truth(right.eval(context, root)),
                )]
            }
            Expr::Compare {
                left,
                equal,
                literal,
            } => {
                let values = left.eval(context, root);
                if values.is_empty() {
                    return Vec::new();
                }
                let same = values.iter().any(|item| match (&item.value, literal) {
                    (Node::Json(Value::String(s)), Literal::Text(t)) => s == t,
                    (Node::Json(Value::Bool(b)), Literal::Bool(l))
                    | (Node::Bool(b), Literal::Bool(l)) => b == l,
                    _ => false,
                });
                vec![bool_item(same == *equal)]
            }
            Expr::ResolvesTo(type_name) => {
                let hits = context.iter().any(|item| match &item.value {
                    Node::Json(v) => reference_type(v).is_some_and(|t| t == type_name),
                    Node::Bool(_) => false,
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

fn bool_item<'a>(b: bool) -> Item<'a> {
    Item {
        value: Node::Bool(b),
        type_hint: None,
    }
}

/// Two nodes are the same value when they are the same JSON element.
fn same_node(a: &Node<'_>, b: &Node<'_>) -> bool {
    match (a, b) {
        (Node::Json(x), Node::Json(y)) => std::ptr::eq(*x, *y),
        (Node::Bool(x), Node::Bool(y)) => x == y,
        _ => false,
    }
}

fn apply_steps<'a>(mut items: Vec<Item<'a>>, steps: &[Step], root: &Item<'a>) -> Vec<Item<'a>> {
    for step in steps {
        items = match step {
            Step::Child(name) => items.iter().flat_map(|i| children(i, name)).collect(),
            Step::Index(n) => items.into_iter().nth(*n).into_iter().collect(),
            Step::First => items.into_iter().take(1).collect(),
            Step::OfType(t) => of_type(items, t),
            Step::Exists => vec![bool_item(!items.is_empty())],
            Step::Where(condition) => items
                .into_iter()
                .filter(|item| {
                    matches!(
                        condition.eval(std::slice::from_ref(item), root).as_slice(),
                        [Item {
                            value: Node::Bool(true),
                            ..
                        }]
                    )
                })
                .collect(),
            Step::Extension(url) => items
                .iter()
                .flat_map(|i| children(i, "extension"))
                .filter(|e| match &e.value {
                    Node::Json(v) => v.get("url").and_then(Value::as_str) == Some(url.as_str()),
                    Node::Bool(_) => false,
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
        compile(expr)
            .unwrap()
            .evaluate(resource)
            .into_iter()
            .filter_map(|i| match i.value {
                Node::Json(v) => Some(v),
                Node::Bool(_) => None,
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
