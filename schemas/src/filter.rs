//! The SCIM filter language (RFC 7644 §3.4.2.2): parse, print, evaluate.
//!
//! Precedence, from loosest: `or`, `and`, `not (...)`, then attribute expressions. Operators and
//! keywords are case-insensitive. String comparison follows the attribute's `caseExact`; dateTime
//! attributes compare as instants.

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

use crate::error::{SchemaError, ScimType};
use crate::path::AttrPath;
use crate::registry::{Attr, AttrType, ResourceSchema};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    fn parse(word: &str) -> Option<CompareOp> {
        Some(match word.to_ascii_lowercase().as_str() {
            "eq" => CompareOp::Eq,
            "ne" => CompareOp::Ne,
            "co" => CompareOp::Co,
            "sw" => CompareOp::Sw,
            "ew" => CompareOp::Ew,
            "gt" => CompareOp::Gt,
            "ge" => CompareOp::Ge,
            "lt" => CompareOp::Lt,
            "le" => CompareOp::Le,
            _ => return None,
        })
    }
    fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Compare {
        path: AttrPath,
        op: CompareOp,
        value: Value,
    },
    Present(AttrPath),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    /// `emails[type eq "work"]`: some element of a multi-valued attribute matches.
    ValuePath {
        path: AttrPath,
        filter: Box<Filter>,
    },
}

/// Limits that keep a hostile filter cheap to refuse.
#[derive(Clone, Copy, Debug)]
pub struct FilterLimits {
    pub max_length: usize,
    pub max_depth: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits { max_length: 4096, max_depth: 16 }
    }
}

impl Filter {
    /// Refuses comparisons the attribute's type does not allow (RFC 7644 §3.4.2.2): ordering
    /// (`gt`, `ge`, `lt`, `le`) of a boolean or binary value, and `co`, `sw`, `ew` on anything but
    /// a string or a reference. Such a filter is a 400 `invalidFilter`, never an empty result.
    /// Attributes the schema does not know are left to evaluation (they match nothing).
    pub fn check_types(&self, schema: &ResourceSchema) -> Result<(), SchemaError> {
        self.check_types_in(&Scope::Resource(schema))
    }

    fn check_types_in(&self, scope: &Scope<'_>) -> Result<(), SchemaError> {
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                a.check_types_in(scope)?;
                b.check_types_in(scope)
            }
            Filter::Not(a) => a.check_types_in(scope),
            Filter::Present(_) => Ok(()),
            Filter::ValuePath { path, filter } => match attr_of(scope, path) {
                Some(attr) if attr.ty == AttrType::Complex => filter.check_types_in(&Scope::Complex(attr)),
                _ => Ok(()),
            },
            Filter::Compare { path, op, .. } => {
                let Some(attr) = attr_of(scope, path) else { return Ok(()) };
                let ty = match path.sub.as_ref() {
                    Some(sub) => attr.sub(sub.as_str()).map(|s| s.ty),
                    None if attr.ty == AttrType::Complex => attr.sub("value").map(|s| s.ty),
                    None => Some(attr.ty),
                };
                match ty {
                    Some(ty) if !allows(ty, *op) => Err(SchemaError::new(
                        ScimType::InvalidFilter,
                        format!("{path} is {}: it cannot be compared with {}", type_word(ty), op.as_str()),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }

    pub fn parse(text: &str, limits: FilterLimits) -> Result<Filter, SchemaError> {
        if text.len() > limits.max_length {
            return Err(SchemaError::invalid_filter(format!(
                "filter is {} bytes long, more than the limit of {}",
                text.len(),
                limits.max_length
            )));
        }
        let mut p = Parser { src: text, pos: 0, depth: 0, max_depth: limits.max_depth };
        p.skip_ws();
        let f = p.parse_or()?;
        p.skip_ws();
        if p.pos < text.len() {
            return Err(p.error("expected 'and', 'or' or the end of the filter"));
        }
        Ok(f)
    }

    /// Evaluates the filter against a rendered resource (canonical SCIM JSON).
    pub fn matches(&self, schema: &ResourceSchema, resource: &Value) -> bool {
        eval(self, &Scope::Resource(schema), resource)
    }

    /// Evaluates a value filter (`emails[type eq "work"]`) against one element of the complex
    /// attribute `attr`.
    pub fn matches_element(&self, attr: &Attr, element: &Value) -> bool {
        eval(self, &Scope::Complex(attr), element)
    }

    /// The `attr eq value` terms of a conjunction (`type eq "work" and primary eq true`): what an
    /// element must hold to match, used to create a missing element on PATCH. `None` when the
    /// filter is anything else.
    pub fn eq_terms(&self) -> Option<Vec<(String, Value)>> {
        match self {
            Filter::Compare { path, op: CompareOp::Eq, value } if path.sub.is_none() && path.schema.is_none() => {
                Some(vec![(path.attr.as_str().to_string(), value.clone())])
            }
            Filter::And(a, b) => {
                let mut terms = a.eq_terms()?;
                terms.extend(b.eq_terms()?);
                Some(terms)
            }
            _ => None,
        }
    }

    /// The values of a disjunction of `value eq "..."` comparisons (`members[value eq "a"]`), so
    /// that member removals need no scan. `None` when the filter is anything else.
    pub fn value_eq_list(&self) -> Option<Vec<String>> {
        match self {
            Filter::Compare { path, op: CompareOp::Eq, value: Value::String(v) }
                if path.sub.is_none() && path.schema.is_none() && path.attr.as_str().eq_ignore_ascii_case("value") =>
            {
                Some(vec![v.clone()])
            }
            Filter::Or(a, b) => {
                let mut l = a.value_eq_list()?;
                l.extend(b.value_eq_list()?);
                Some(l)
            }
            _ => None,
        }
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    depth: usize,
    max_depth: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, what: &str) -> SchemaError {
        let near: String = self.src[self.pos..].chars().take(20).collect();
        if near.is_empty() {
            SchemaError::invalid_filter(format!("{what} at position {} (end of filter)", self.pos))
        } else {
            SchemaError::invalid_filter(format!("{what} at position {}, near {near:?}", self.pos))
        }
    }
    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }
    fn skip_ws(&mut self) {
        while self.rest().starts_with([' ', '\t', '\n', '\r']) {
            self.pos += 1;
        }
    }
    fn enter(&mut self) -> Result<(), SchemaError> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(self.error(&format!("filter nests deeper than the limit of {}", self.max_depth)));
        }
        Ok(())
    }
    /// The next bare word (attribute path, operator or keyword) without consuming it.
    fn peek_word(&self) -> &'a str {
        let rest = self.rest();
        let end =
            rest.find(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"')).unwrap_or(rest.len());
        &rest[..end]
    }
    fn keyword(&mut self, kw: &str) -> bool {
        let w = self.peek_word();
        if w.eq_ignore_ascii_case(kw) {
            self.pos += w.len();
            true
        } else {
            false
        }
    }
    fn expect_char(&mut self, c: char, what: &str) -> Result<(), SchemaError> {
        if self.rest().starts_with(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn parse_or(&mut self) -> Result<Filter, SchemaError> {
        let mut left = self.parse_and()?;
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.keyword("or") {
                self.skip_ws();
                let right = self.parse_and()?;
                left = Filter::Or(Box::new(left), Box::new(right));
            } else {
                self.pos = save;
                return Ok(left);
            }
        }
    }

    fn parse_and(&mut self) -> Result<Filter, SchemaError> {
        let mut left = self.parse_unary()?;
        loop {
            let save = self.pos;
            self.skip_ws();
            if self.keyword("and") {
                self.skip_ws();
                let right = self.parse_unary()?;
                left = Filter::And(Box::new(left), Box::new(right));
            } else {
                self.pos = save;
                return Ok(left);
            }
        }
    }

    fn parse_unary(&mut self) -> Result<Filter, SchemaError> {
        if self.peek_word().eq_ignore_ascii_case("not") {
            let save = self.pos;
            self.pos += 3;
            self.skip_ws();
            if self.rest().starts_with('(') {
                let inner = self.parse_group()?;
                return Ok(Filter::Not(Box::new(inner)));
            }
            self.pos = save;
        }
        if self.rest().starts_with('(') {
            return self.parse_group();
        }
        self.parse_attr_exp()
    }

    fn parse_group(&mut self) -> Result<Filter, SchemaError> {
        self.enter()?;
        self.expect_char('(', "expected '('")?;
        self.skip_ws();
        let inner = self.parse_or()?;
        self.skip_ws();
        self.expect_char(')', "expected ')'")?;
        self.depth -= 1;
        Ok(inner)
    }

    fn parse_attr_exp(&mut self) -> Result<Filter, SchemaError> {
        let word = self.peek_word();
        if word.is_empty() {
            return Err(self.error("expected an attribute path"));
        }
        let path = AttrPath::parse(word).map_err(|_| self.error(&format!("invalid attribute path {word:?}")))?;
        self.pos += word.len();
        if self.rest().starts_with('[') {
            self.enter()?;
            self.pos += 1;
            self.skip_ws();
            let inner = self.parse_or()?;
            self.skip_ws();
            self.expect_char(']', "expected ']'")?;
            self.depth -= 1;
            let inner = match self.element_comparison()? {
                // Entra's form `emails[type eq "work"].value eq "x"`: the element the brackets
                // select must also hold the comparison after them. One element answers both,
                // so it is the conjunction inside the brackets.
                Some(after) => Filter::And(Box::new(inner), Box::new(after)),
                None => inner,
            };
            return Ok(Filter::ValuePath { path, filter: Box::new(inner) });
        }
        self.skip_ws();
        self.comparison(path)
    }

    /// `.sub op value` (or `.sub pr`) right after a value path's `]`, if there is one.
    fn element_comparison(&mut self) -> Result<Option<Filter>, SchemaError> {
        if !self.rest().starts_with('.') {
            return Ok(None);
        }
        self.pos += 1;
        let word = self.peek_word();
        if !crate::path::is_attr_name(word) {
            return Err(self.error("expected a sub-attribute name after ']'"));
        }
        let sub = AttrPath::new(word);
        self.pos += word.len();
        self.skip_ws();
        self.comparison(sub).map(Some)
    }

    /// The operator and value after an attribute path.
    fn comparison(&mut self, path: AttrPath) -> Result<Filter, SchemaError> {
        let op_word = self.peek_word();
        if op_word.eq_ignore_ascii_case("pr") {
            self.pos += 2;
            return Ok(Filter::Present(path));
        }
        let op = CompareOp::parse(op_word).ok_or_else(|| {
            if op_word.is_empty() {
                self.error("expected an operator (eq, ne, co, sw, ew, gt, ge, lt, le, pr)")
            } else {
                self.error(&format!("unknown operator {op_word:?}"))
            }
        })?;
        self.pos += op_word.len();
        self.skip_ws();
        let value = self.parse_value()?;
        Ok(Filter::Compare { path, op, value })
    }

    fn parse_value(&mut self) -> Result<Value, SchemaError> {
        let rest = self.rest();
        if rest.starts_with('"') {
            // A JSON string: find its end honouring escapes, then let serde_json decode it.
            let bytes = rest.as_bytes();
            let mut i = 1;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' => i += 2,
                    b'"' => break,
                    _ => i += 1,
                }
            }
            if i >= bytes.len() {
                return Err(self.error("unterminated string"));
            }
            let lit = &rest[..=i];
            let v: Value = serde_json::from_str(lit).map_err(|_| self.error("invalid string literal"))?;
            self.pos += lit.len();
            return Ok(v);
        }
        let word = self.peek_word();
        let v = match word.to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "null" => Value::Null,
            _ => match serde_json::from_str::<serde_json::Number>(word) {
                Ok(n) => Value::Number(n),
                Err(_) if word.is_empty() => return Err(self.error("expected a value")),
                Err(_) => return Err(self.error(&format!("invalid value {word:?}: strings must be in double quotes"))),
            },
        };
        self.pos += word.len();
        Ok(v)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Compare { path, op, value } => write!(f, "{path} {} {value}", op.as_str()),
            Filter::Present(p) => write!(f, "{p} pr"),
            // `and` binds tighter than `or`, and both group from the left: a right operand of
            // the same operator, or an `or` inside an `and`, needs parentheses to print back
            // into the same tree.
            Filter::And(a, b) => {
                write_operand(f, a, matches!(**a, Filter::Or(..)))?;
                f.write_str(" and ")?;
                write_operand(f, b, matches!(**b, Filter::Or(..) | Filter::And(..)))
            }
            Filter::Or(a, b) => {
                write!(f, "{a} or ")?;
                write_operand(f, b, matches!(**b, Filter::Or(..)))
            }
            Filter::Not(a) => write!(f, "not ({a})"),
            Filter::ValuePath { path, filter } => write!(f, "{path}[{filter}]"),
        }
    }
}

fn write_operand(f: &mut fmt::Formatter<'_>, x: &Filter, parenthesise: bool) -> fmt::Result {
    if parenthesise {
        write!(f, "({x})")
    } else {
        write!(f, "{x}")
    }
}

/// The values at `path` in a rendered resource (flattened over multi-valued attributes, a
/// multi-valued complex attribute read through its `value`), with the attribute's definition.
pub fn values_at<'v, 's>(
    schema: &'s ResourceSchema,
    path: &AttrPath,
    resource: &'v Value,
) -> (Option<&'s Attr>, Vec<&'v Value>) {
    resolve(&Scope::Resource(schema), path, resource)
}

/// The value a resource sorts by (RFC 7644 §3.4.2.3): for a multi-valued attribute, that of its
/// primary element (`"primary": true`), or of its first element when none is primary.
pub fn sort_value<'v, 's>(
    schema: &'s ResourceSchema,
    path: &AttrPath,
    resource: &'v Value,
) -> (Option<&'s Attr>, Option<&'v Value>) {
    let (def, items) = elements(&Scope::Resource(schema), path, resource);
    let primary = |e: &&&Value| get_ci(e, "primary").is_some_and(|p| p == &Value::Bool(true));
    let chosen = match def {
        Some(d) if d.multi_valued => items.iter().find(primary).or(items.first()).copied(),
        _ => items.first().copied(),
    };
    match (sub_of(def, path), chosen) {
        (None, chosen) => (def, chosen),
        (Some(sub), chosen) => (def.and_then(|d| d.sub(sub)).or(def), chosen.and_then(|e| get_ci(e, sub))),
    }
}

/// Orders two resources by their sort values (from [`sort_value`]): resources without one come
/// last in ascending order (first in descending), as RFC 7644 §3.4.2.3 leaves to the server.
pub fn compare_sort_keys(def: Option<&Attr>, a: Option<&Value>, b: Option<&Value>, descending: bool) -> Ordering {
    let o = match (a, b) {
        (Some(a), Some(b)) => compare_values(def, a, b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    if descending {
        o.reverse()
    } else {
        o
    }
}

/// Orders two values of one attribute: strings without case unless `caseExact`, date-times as
/// instants, numbers and booleans naturally.
pub fn compare_values(def: Option<&Attr>, a: &Value, b: &Value) -> Ordering {
    let case_exact = def.map(|d| d.case_exact).unwrap_or(false);
    let is_date = def.map(|d| d.ty == AttrType::DateTime).unwrap_or(false);
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            if is_date {
                if let (Ok(x), Ok(y)) =
                    (chrono::DateTime::parse_from_rfc3339(x), chrono::DateTime::parse_from_rfc3339(y))
                {
                    return x.cmp(&y);
                }
            }
            if case_exact {
                x.cmp(y)
            } else {
                crate::name::fold(x).cmp(&crate::name::fold(y))
            }
        }
        (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// Where attribute names are looked up: a resource's schema, or a complex attribute's sub-attributes
/// inside a value path.
enum Scope<'a> {
    Resource(&'a ResourceSchema),
    Complex(&'a Attr),
}

/// The definition of the attribute a path names in a scope (its sub-attribute aside).
fn attr_of<'s>(scope: &Scope<'s>, path: &AttrPath) -> Option<&'s Attr> {
    match scope {
        Scope::Resource(schema) => schema.attr_in(path.schema.as_deref(), path.attr.as_str()),
        Scope::Complex(attr) => attr.sub(path.attr.as_str()),
    }
}

/// Whether an operator applies to a value of a type (RFC 7644 §3.4.2.2).
fn allows(ty: AttrType, op: CompareOp) -> bool {
    match op {
        CompareOp::Eq | CompareOp::Ne => true,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => matches!(ty, AttrType::String | AttrType::Reference),
        CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le => match ty {
            AttrType::String | AttrType::Reference | AttrType::DateTime | AttrType::Integer | AttrType::Decimal => true,
            AttrType::Boolean | AttrType::Binary | AttrType::Complex => false,
        },
    }
}

fn type_word(ty: AttrType) -> &'static str {
    match ty {
        AttrType::String => "a string",
        AttrType::Boolean => "a boolean",
        AttrType::Decimal => "a decimal",
        AttrType::Integer => "an integer",
        AttrType::DateTime => "a dateTime",
        AttrType::Binary => "binary",
        AttrType::Reference => "a reference",
        AttrType::Complex => "complex",
    }
}

fn get_ci<'v>(obj: &'v Value, name: &str) -> Option<&'v Value> {
    obj.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

/// The attribute at `path` (its sub-attribute aside) and its elements as they are: one value,
/// or each element of a multi-valued attribute.
fn elements<'v, 's>(scope: &Scope<'s>, path: &AttrPath, obj: &'v Value) -> (Option<&'s Attr>, Vec<&'v Value>) {
    let (def, container) = container_of(scope, path, obj);
    let Some(top) = container.and_then(|c| get_ci(c, path.attr.as_str())) else {
        return (def, vec![]);
    };
    match top {
        Value::Array(items) => (def, items.iter().collect()),
        other => (def, vec![other]),
    }
}

/// The attribute a path names and the object holding it: the resource, or the object of the
/// extension it lives in (qualified by URN, or a bare name only one extension defines).
fn container_of<'v, 's>(scope: &Scope<'s>, path: &AttrPath, obj: &'v Value) -> (Option<&'s Attr>, Option<&'v Value>) {
    match scope {
        Scope::Resource(schema) => match schema.locate(path.schema.as_deref(), path.attr.as_str()) {
            Some((Some(urn), def)) => (Some(def), get_ci(obj, urn)),
            Some((None, def)) => (Some(def), Some(obj)),
            None => (None, Some(obj)),
        },
        Scope::Complex(attr) => (attr.sub(path.attr.as_str()), Some(obj)),
    }
}

/// The sub-attribute a path reads in each element: the one it names, or, for a complex
/// attribute with a `value` named alone (`emails`, `manager`), its `value`.
fn sub_of<'p>(def: Option<&Attr>, path: &'p AttrPath) -> Option<&'p str> {
    path.sub
        .as_ref()
        .map(|s| s.as_str())
        .or_else(|| def.filter(|d| d.ty == AttrType::Complex && d.sub("value").is_some()).map(|_| "value"))
}

/// The attribute definition and the values at `path`, flattened over multi-valued attributes.
fn resolve<'v, 's>(scope: &Scope<'s>, path: &AttrPath, obj: &'v Value) -> (Option<&'s Attr>, Vec<&'v Value>) {
    let (def, elements) = elements(scope, path, obj);
    // With no sub-attribute, a complex multi-valued attribute compares by its `value`.
    match sub_of(def, path) {
        None => (def, elements),
        Some(sub_name) => {
            let sub_def = def.and_then(|d| d.sub(sub_name));
            (sub_def.or(def), elements.into_iter().filter_map(|e| get_ci(e, sub_name)).collect())
        }
    }
}

fn eval(f: &Filter, scope: &Scope<'_>, obj: &Value) -> bool {
    match f {
        Filter::And(a, b) => eval(a, scope, obj) && eval(b, scope, obj),
        Filter::Or(a, b) => eval(a, scope, obj) || eval(b, scope, obj),
        Filter::Not(a) => !eval(a, scope, obj),
        Filter::Present(path) => resolve(scope, path, obj).1.iter().any(|v| match v {
            Value::Null => false,
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        }),
        Filter::Compare { path, op, value } => {
            let (def, values) = resolve(scope, path, obj);
            if *op == CompareOp::Ne {
                return !values.iter().any(|v| compare(def, CompareOp::Eq, v, value));
            }
            values.iter().any(|v| compare(def, *op, v, value))
        }
        Filter::ValuePath { path, filter } => {
            // Read the elements themselves: `resolve` would map them to their `value`.
            let (def, container) = container_of(scope, path, obj);
            let Some(def) = def.filter(|d| d.ty == AttrType::Complex) else {
                return false;
            };
            let items: Vec<&Value> = match container.and_then(|c| get_ci(c, path.attr.as_str())) {
                Some(Value::Array(items)) => items.iter().collect(),
                Some(v @ Value::Object(_)) => vec![v],
                _ => vec![],
            };
            let inner = Scope::Complex(def);
            items.into_iter().any(|item| eval(filter, &inner, item))
        }
    }
}

fn compare(def: Option<&Attr>, op: CompareOp, actual: &Value, wanted: &Value) -> bool {
    let case_exact = def.map(|d| d.case_exact).unwrap_or(false);
    let is_date = def.map(|d| d.ty == AttrType::DateTime).unwrap_or(false);
    match (actual, wanted) {
        (Value::String(a), Value::String(w)) => {
            if is_date {
                if let (Ok(a), Ok(w)) =
                    (chrono::DateTime::parse_from_rfc3339(a), chrono::DateTime::parse_from_rfc3339(w))
                {
                    return ordered(op, a.cmp(&w));
                }
            }
            let (a, w) = if case_exact { (a.clone(), w.clone()) } else { (crate::name::fold(a), crate::name::fold(w)) };
            match op {
                CompareOp::Co => a.contains(&w),
                CompareOp::Sw => a.starts_with(&w),
                CompareOp::Ew => a.ends_with(&w),
                _ => ordered(op, a.cmp(&w)),
            }
        }
        (Value::Number(a), Value::Number(w)) => match (a.as_f64(), w.as_f64()) {
            (Some(a), Some(w)) => a.partial_cmp(&w).map(|o| ordered(op, o)).unwrap_or(false),
            _ => false,
        },
        // Booleans only know equality; a string boolean sent by an IdP compares as a boolean.
        (Value::Bool(a), Value::Bool(w)) => op == CompareOp::Eq && a == w,
        (Value::Bool(a), Value::String(w)) => op == CompareOp::Eq && w.eq_ignore_ascii_case(&a.to_string()),
        (_, Value::Null) => false,
        _ => false,
    }
}

fn ordered(op: CompareOp, o: Ordering) -> bool {
    match op {
        CompareOp::Eq => o == Ordering::Equal,
        CompareOp::Ne => o != Ordering::Equal,
        CompareOp::Gt => o == Ordering::Greater,
        CompareOp::Ge => o != Ordering::Less,
        CompareOp::Lt => o == Ordering::Less,
        CompareOp::Le => o != Ordering::Greater,
        CompareOp::Co | CompareOp::Sw | CompareOp::Ew => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::registry;
    use serde_json::json;

    fn parse(s: &str) -> Result<Filter, SchemaError> {
        Filter::parse(s, FilterLimits::default())
    }

    #[test]
    fn parse_and_print_table() {
        // input, canonical printed form
        let table = [
            (r#"userName eq "bjensen""#, r#"userName eq "bjensen""#),
            (r#"USERNAME EQ "A""#, r#"USERNAME eq "A""#),
            ("title pr", "title pr"),
            (r#"a eq 1 or b eq 2 and c eq 3"#, r#"a eq 1 or b eq 2 and c eq 3"#),
            (r#"(a eq 1 or b eq 2) and c eq 3"#, r#"(a eq 1 or b eq 2) and c eq 3"#),
            (r#"not (a eq true)"#, r#"not (a eq true)"#),
            // Found by the fuzzer: right-nested operators keep their grouping.
            (r#"a pr or (b pr or c pr)"#, r#"a pr or (b pr or c pr)"#),
            (r#"a pr and (b pr and c pr)"#, r#"a pr and (b pr and c pr)"#),
            (r#"(a pr or b pr) or c pr"#, r#"a pr or b pr or c pr"#),
            (r#"emails[type eq "work" and value co "@x.com"]"#, r#"emails[type eq "work" and value co "@x.com"]"#),
            (r#"meta.lastModified gt "2011-05-13T04:42:34Z""#, r#"meta.lastModified gt "2011-05-13T04:42:34Z""#),
            (
                r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "x""#,
                r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "x""#,
            ),
            (r#"externalId eq null"#, r#"externalId eq null"#),
            (r#"displayName eq "say \"hi\"""#, r#"displayName eq "say \"hi\"""#),
            // Entra's forms: a value path followed by a sub-attribute comparison is one element
            // holding both.
            (r#"emails[type eq "work"].value eq "x@y""#, r#"emails[type eq "work" and value eq "x@y"]"#),
            (
                r#"addresses[type eq "work"].postalCode eq "98052""#,
                r#"addresses[type eq "work" and postalCode eq "98052"]"#,
            ),
            (r#"phoneNumbers[type eq "mobile"].value pr"#, r#"phoneNumbers[type eq "mobile" and value pr]"#),
            (
                r#"emails[type eq "work" or type eq "home"].value co "@x" and active eq true"#,
                r#"emails[(type eq "work" or type eq "home") and value co "@x"] and active eq true"#,
            ),
        ];
        for (input, printed) in table {
            let f = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(f.to_string(), printed, "{input}");
            assert_eq!(parse(&f.to_string()).unwrap(), f, "reparse of {input}");
        }
    }

    #[test]
    fn precedence_and_binds_tighter_than_or() {
        let f = parse("a pr or b pr and c pr").unwrap();
        assert!(matches!(f, Filter::Or(_, ref r) if matches!(**r, Filter::And(..))));
    }

    #[test]
    fn parse_errors_name_the_position() {
        let table = [
            ("", "position 0"),
            ("userName", "expected an operator"),
            ("userName xx \"a\"", "unknown operator \"xx\""),
            ("userName eq bjensen", "strings must be in double quotes"),
            ("userName eq \"open", "unterminated string"),
            ("(userName pr", "expected ')'"),
            ("emails[type eq \"work\"", "expected ']'"),
            ("userName pr garbage", "expected 'and', 'or'"),
            ("1bad eq 1", "invalid attribute path"),
            ("userName eq", "expected a value"),
            ("emails[type eq \"work\"].", "expected a sub-attribute name after ']'"),
            ("emails[type eq \"work\"].value", "expected an operator"),
            ("emails[type eq \"work\"].value.x eq 1", "near \"value.x"),
        ];
        for (input, want) in table {
            let e = parse(input).expect_err(input);
            assert_eq!(e.scim_type, crate::ScimType::InvalidFilter);
            assert!(e.detail.contains(want), "{input}: {}", e.detail);
        }
    }

    /// RFC 7644 §3.4.2.2: a comparison the attribute's type does not allow is refused, with the
    /// attribute and the operator named; every allowed one passes.
    #[test]
    fn comparisons_the_type_does_not_allow_are_invalid_filters() {
        let user = &crate::registry::registry().user;
        let refused = [
            ("active gt true", "active is a boolean: it cannot be compared with gt"),
            ("active co \"t\"", "active is a boolean: it cannot be compared with co"),
            ("meta.lastModified co \"2011\"", "meta.lastModified is a dateTime: it cannot be compared with co"),
            ("emails[primary lt true]", "primary is a boolean: it cannot be compared with lt"),
            ("userName eq \"a\" and active le false", "active is a boolean"),
            ("not (x509Certificates.value gt \"x\")", "x509Certificates.value is binary"),
        ];
        for (text, want) in refused {
            let e = parse(text).unwrap().check_types(user).expect_err(text);
            assert_eq!(e.scim_type, crate::ScimType::InvalidFilter, "{text}");
            assert!(e.detail.contains(want), "{text}: {}", e.detail);
        }
        let allowed = [
            "active eq true",
            "active ne false",
            "userName gt \"a\"",
            "userName co \"a\"",
            "emails co \"@x\"",
            "emails[type eq \"work\" and value sw \"a\"]",
            "meta.lastModified gt \"2011-05-13T04:42:34Z\"",
            "unknownAttr co \"x\"",
        ];
        for text in allowed {
            assert!(parse(text).unwrap().check_types(user).is_ok(), "{text}");
        }
    }

    /// RFC 7644 §3.4.2.3: a multi-valued attribute sorts by its primary value, else its first.
    #[test]
    fn a_multi_valued_attribute_sorts_by_its_primary_value() {
        let user = &crate::registry::registry().user;
        let path = |p: &str| AttrPath::parse(p).unwrap();
        let doc = serde_json::json!({"emails": [{"value": "b@x"}, {"value": "a@x", "primary": true}], "userName": "u"});
        let (_, v) = sort_value(user, &path("emails"), &doc);
        assert_eq!(v, Some(&serde_json::json!("a@x")));
        let (_, v) = sort_value(user, &path("emails.value"), &doc);
        assert_eq!(v, Some(&serde_json::json!("a@x")));
        let no_primary = serde_json::json!({"emails": [{"value": "b@x"}, {"value": "a@x"}]});
        assert_eq!(sort_value(user, &path("emails"), &no_primary).1, Some(&serde_json::json!("b@x")));
        assert_eq!(sort_value(user, &path("userName"), &doc).1, Some(&serde_json::json!("u")));
        assert_eq!(sort_value(user, &path("nickName"), &doc).1, None);
    }

    #[test]
    fn limits_are_enforced() {
        let deep = format!("{}a pr{}", "(".repeat(20), ")".repeat(20));
        assert!(parse(&deep).unwrap_err().detail.contains("deeper than the limit of 16"));
        let long = format!("userName eq \"{}\"", "x".repeat(5000));
        assert!(parse(&long).unwrap_err().detail.contains("limit of 4096"));
    }

    #[test]
    fn evaluation_table() {
        let user = json!({
            "id": "2819c223", "userName": "BJensen", "externalId": "Ext-1", "active": true,
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [{"value": "bjensen@example.com", "type": "work"}, {"value": "babs@home.org", "type": "home"}],
            "addresses": [{"type": "home", "postalCode": "98052"}, {"type": "work", "postalCode": "10001"}],
            "phoneNumbers": [{"type": "mobile", "value": "+1 555"}],
            "meta": {"lastModified": "2024-05-13T04:42:34Z"},
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "Sales", "manager": {"value": "m-1"}}
        });
        let table = [
            (r#"userName eq "bjensen""#, true),  // caseExact false
            (r#"externalId eq "ext-1""#, false), // caseExact true
            (r#"externalId eq "Ext-1""#, true),
            (r#"userName ne "bjensen""#, false),
            (r#"userName co "jen""#, true),
            (r#"userName sw "bj""#, true),
            (r#"userName ew "SEN""#, true),
            (r#"name.givenName eq "barbara""#, true),
            (r#"emails co "example.com""#, true),
            (r#"emails.value ew "home.org""#, true),
            (r#"emails[type eq "work" and value co "@example.com"]"#, true),
            (r#"emails[type eq "home" and value co "@example.com"]"#, false),
            (r#"title pr"#, false),
            (r#"name pr"#, true),
            (r#"title ne "x""#, true),
            (r#"active eq true"#, true),
            (r#"active eq "True""#, true),
            (r#"active eq false"#, false),
            (r#"meta.lastModified gt "2024-05-13T00:00:00Z""#, true),
            (r#"meta.lastModified lt "2024-05-13T06:42:34+01:00""#, true),
            (r#"meta.lastModified ge "2024-05-13T04:42:34.000Z""#, true),
            (r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department eq "sales""#, true),
            (r#"not (userName eq "bjensen")"#, false),
            (r#"userName eq "x" or (active eq true and name.familyName sw "J")"#, true),
            (r#"id eq "2819C223""#, false),
            // A bare extension attribute; a single-valued complex one compares by its value.
            (r#"manager eq "m-1""#, true),
            (r#"manager.value eq "m-1""#, true),
            (r#"department eq "sales" and id eq "2819c223""#, true),
            (r#"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager eq "m-2""#, false),
            (r#"emails[type eq "work"].value eq "BJensen@example.com""#, true),
            (r#"emails[type eq "home"].value eq "bjensen@example.com""#, false),
            (r#"emails[type eq "home"].value ew "home.org""#, true),
            (r#"addresses[type eq "work"].postalCode eq "98052""#, false),
            (r#"phoneNumbers[type eq "mobile"].value eq "+1 555""#, true),
            (r#"phoneNumbers[type eq "work"].value pr"#, false),
        ];
        let schema = &registry().user;
        for (input, want) in table {
            let f = parse(input).unwrap();
            assert_eq!(f.matches(schema, &user), want, "{input}");
        }
    }
}
