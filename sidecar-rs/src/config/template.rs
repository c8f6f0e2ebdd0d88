//! Request templates: how a tool's arguments become an HTTP request.
//!
//! Templates are compiled once when the config loads. The scheme, host and
//! port of the URL are fixed by the operator; arguments can only fill path
//! segments (percent-encoded, `.`/`..` refused), query values, header values
//! and the JSON body. That keeps an LLM-written argument from redirecting a
//! call to another host.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};
use url::Url;

use crate::config::secrets::{Secret, SecretRef};
use crate::config::spec::RequestSpec;
use crate::error::CallError;

/// Everything except RFC 3986 unreserved characters is encoded, so a value
/// always stays inside one path segment (`/`, `?`, `#`, `%` included).
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The arguments of one call, already validated against the input schema.
pub type Args = Map<String, Value>;

/// A string with `{name}` placeholders.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Arg(String),
    /// A resolved `${env:..}` / `${file:..}` reference.
    Secret(Secret),
}

impl Template {
    /// Parses `text`. `{` must open a placeholder named like an identifier
    /// (`*` is accepted too; callers decide where it is allowed).
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_inner(text, false)
    }

    /// Like [`Template::parse`], also resolving `${env:NAME}` and
    /// `${file:/path}` secret references.
    pub fn parse_with_secrets(text: &str) -> Result<Self, String> {
        Self::parse_inner(text, true)
    }

    fn parse_inner(text: &str, secrets: bool) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(mut open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("unmatched '}}' in {text:?}"));
            }
            let is_secret = open > 0 && rest.as_bytes()[open - 1] == b'$';
            if is_secret {
                open -= 1;
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let body_start = open + if is_secret { 2 } else { 1 };
            let after = &rest[body_start..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {text:?}"))?;
            let name = &after[..close];
            if is_secret {
                if !secrets {
                    return Err(format!(
                        "secret reference ${{{name}}} is only allowed in header and query values"
                    ));
                }
                let reference = SecretRef::parse(name)?;
                let secret = reference
                    .resolve()
                    .map_err(|e| format!("{}: {e}", reference.describe()))?;
                parts.push(Part::Secret(secret));
                rest = &after[close + 1..];
                continue;
            }
            if !is_placeholder_name(name) {
                return Err(format!(
                    "invalid placeholder {{{name}}} in {text:?}: use the name of a top-level argument"
                ));
            }
            parts.push(Part::Arg(name.to_owned()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Names of the arguments this template reads.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Arg(name) => Some(name.as_str()),
            Part::Literal(_) | Part::Secret(_) => None,
        })
    }

    /// The secrets this template embeds.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(s) => Some(s),
            _ => None,
        })
    }

    /// `Some(name)` when the template is exactly one placeholder.
    fn sole_placeholder(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Arg(name)] => Some(name),
            _ => None,
        }
    }

    fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Renders with every value passed through `encode`. `Ok(None)` when an
    /// argument it needs is absent (or null).
    fn render(
        &self,
        args: &Args,
        encode: impl Fn(&str, &str) -> Result<String, CallError>,
    ) -> Result<Option<String>, CallError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Secret(secret) => out.push_str(secret.expose()),
                Part::Arg(name) => match args.get(name) {
                    None | Some(Value::Null) => return Ok(None),
                    Some(value) => out.push_str(&encode(name, &scalar_text(name, value)?)?),
                },
            }
        }
        Ok(Some(out))
    }
}

fn is_placeholder_name(name: &str) -> bool {
    name == "*"
        || (!name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// The text of a scalar argument as it appears in a URL or header.
fn scalar_text<'a>(name: &str, value: &'a Value) -> Result<Cow<'a, str>, CallError> {
    match value {
        Value::String(s) => Ok(Cow::Borrowed(s)),
        Value::Number(n) => Ok(Cow::Owned(n.to_string())),
        Value::Bool(b) => Ok(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Null | Value::Array(_) | Value::Object(_) => Err(CallError::UnusableArgument {
            name: name.to_owned(),
            reason: "must be a string, number or boolean to be placed in the URL or a header"
                .to_owned(),
        }),
    }
}

/// Characters refused in a path value, raw or percent-decoded: they could
/// climb or leave the path (`/`, `\\`, dot segments), smuggle userinfo or a
/// port (`@`, `:`), or start a query or fragment once an upstream decodes.
const PATH_REFUSED: &[char] = &['/', '\\', '@', ':', '?', '#'];

fn encode_segment(name: &str, value: &str) -> Result<String, CallError> {
    let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
    for v in [value, decoded.as_ref()] {
        if v.is_empty()
            || v == "."
            || v == ".."
            || v.contains(PATH_REFUSED)
            || v.chars().any(char::is_control)
        {
            return Err(CallError::EgressDenied(format!(
                "argument {name:?} cannot be used as a URL path segment: {value:?} \
                 (no '/', '\\', '@', ':', '?', '#', dot segments or their percent-encodings)"
            )));
        }
    }
    Ok(utf8_percent_encode(value, PATH_SEGMENT).to_string())
}

fn verbatim(_: &str, value: &str) -> Result<String, CallError> {
    Ok(value.to_owned())
}

/// A compiled JSON body template.
#[derive(Debug, Clone)]
enum BodyNode {
    /// `"{*}"`: the whole arguments object.
    AllArgs,
    /// `"{name}"`: one argument with its JSON type; omitted when absent.
    Arg(String),
    /// A string with placeholders inside other text.
    Text(Template),
    Object(Vec<(String, BodyNode)>),
    Array(Vec<BodyNode>),
    Literal(Value),
}

impl BodyNode {
    fn compile(value: &Value) -> Result<Self, String> {
        Ok(match value {
            Value::String(s) => {
                let t = Template::parse(s)?;
                match t.sole_placeholder() {
                    Some("*") => BodyNode::AllArgs,
                    Some(name) => BodyNode::Arg(name.to_owned()),
                    None if t.is_literal() => BodyNode::Literal(value.clone()),
                    None if t.placeholders().any(|p| p == "*") => {
                        return Err(format!("{{*}} must stand alone, not inside {s:?}"))
                    }
                    None => BodyNode::Text(t),
                }
            }
            Value::Object(map) => BodyNode::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), BodyNode::compile(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            Value::Array(items) => BodyNode::Array(
                items
                    .iter()
                    .map(BodyNode::compile)
                    .collect::<Result<_, String>>()?,
            ),
            other => BodyNode::Literal(other.clone()),
        })
    }

    fn placeholders<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            BodyNode::AllArgs | BodyNode::Literal(_) => {}
            BodyNode::Arg(name) => out.push(name),
            BodyNode::Text(t) => out.extend(t.placeholders()),
            BodyNode::Object(fields) => fields.iter().for_each(|(_, v)| v.placeholders(out)),
            BodyNode::Array(items) => items.iter().for_each(|v| v.placeholders(out)),
        }
    }

    /// `None` when the node refers to an absent argument: the enclosing
    /// object drops the key, an array keeps a `null` so positions hold.
    fn render(&self, args: &Args) -> Result<Option<Value>, CallError> {
        Ok(match self {
            BodyNode::AllArgs => Some(Value::Object(args.clone())),
            BodyNode::Arg(name) => args.get(name).cloned(),
            BodyNode::Text(t) => t.render(args, verbatim)?.map(Value::String),
            BodyNode::Literal(v) => Some(v.clone()),
            BodyNode::Object(fields) => {
                let mut map = Map::with_capacity(fields.len());
                for (key, node) in fields {
                    if let Some(v) = node.render(args)? {
                        map.insert(key.clone(), v);
                    }
                }
                Some(Value::Object(map))
            }
            BodyNode::Array(items) => Some(Value::Array(
                items
                    .iter()
                    .map(|n| Ok(n.render(args)?.unwrap_or(Value::Null)))
                    .collect::<Result<_, CallError>>()?,
            )),
        })
    }
}

/// Headers the HTTP client owns: they frame the message or manage the
/// connection (RFC 9110 7.6.1, RFC 9112 6), so a template may not set them at
/// all.
const CONNECTION_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "expect",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that choose where a request goes or how intermediaries route and
/// authorize it: the operator may fix them, an argument may not fill them.
const ROUTING_HEADERS: &[&str] = &[
    "host",
    "forwarded",
    "via",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-proto",
    "x-forwarded-scheme",
    "x-forwarded-server",
    "x-host",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-http-method",
    "x-http-method-override",
    "x-method-override",
];

/// The header rules: arguments never choose the host, the route or the
/// framing of a request.
fn check_header_rule(name: &HeaderName, template: &Template) -> Result<(), String> {
    let lower = name.as_str();
    if CONNECTION_HEADERS.contains(&lower) {
        return Err(format!(
            "{name} is managed by the HTTP client and cannot be set by a template"
        ));
    }
    if ROUTING_HEADERS.contains(&lower) && template.placeholders().next().is_some() {
        return Err(format!(
            "{name} decides where the request goes; its value may not come from an argument \
             (a fixed value or a ${{env:}}/${{file:}} secret is fine)"
        ));
    }
    Ok(())
}

/// What a tool sends that is meant for its own origin only: the upstream
/// client drops it on a redirect to any other origin.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Headers whose template holds a secret.
    pub headers: Vec<HeaderName>,
    /// Query parameters whose template holds a secret.
    pub query_keys: Vec<String>,
    /// The secret values themselves.
    pub secrets: Vec<Secret>,
}

/// A request ready to send: URL, headers and optional JSON body.
#[derive(Debug)]
pub struct RenderedRequest {
    pub method: http::Method,
    pub url: Url,
    pub headers: HeaderMap,
    /// `Bytes` so each retry re-sends it without a copy.
    pub body: Option<bytes::Bytes>,
}

/// The compiled form of a [`RequestSpec`].
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    method: http::Method,
    /// `scheme://host:port`, fixed.
    origin: Url,
    path: Template,
    /// Literal `?a=b` from the configured URL, if any.
    fixed_query: Option<String>,
    query: Vec<(String, Template)>,
    headers: Vec<(HeaderName, Template)>,
    body: Option<BodyNode>,
}

impl RequestTemplate {
    /// Compiles `spec`. Errors are `(field, message)` so the registry can
    /// name the field.
    pub fn compile(spec: &RequestSpec) -> Result<Self, (String, String)> {
        let url_err = |m: String| ("request.url".to_owned(), m);
        let (before_query, fixed_query) = match spec.url.split_once('?') {
            Some((b, q)) => (b, Some(q.to_owned())),
            None => (spec.url.as_str(), None),
        };
        if fixed_query
            .as_deref()
            .is_some_and(|q| q.contains(['{', '}']))
        {
            return Err(url_err(
                "placeholders are not allowed in the URL's query string; use request.query".into(),
            ));
        }
        if before_query.contains('#') {
            return Err(url_err("a fragment (#) is not allowed".into()));
        }
        let scheme_end = before_query
            .find("://")
            .ok_or_else(|| url_err(format!("{:?} is not an absolute http(s) URL", spec.url)))?;
        let path_start = before_query[scheme_end + 3..]
            .find('/')
            .map(|i| i + scheme_end + 3)
            .unwrap_or(before_query.len());
        let (origin_text, path_text) = before_query.split_at(path_start);
        if origin_text.contains(['{', '}']) {
            return Err(url_err(
                "placeholders may only appear in the path: scheme, host and port are fixed".into(),
            ));
        }
        let origin = Url::parse(origin_text).map_err(|e| url_err(format!("{e}")))?;
        if !matches!(origin.scheme(), "http" | "https") {
            return Err(url_err(format!(
                "scheme {:?} is not supported; use http or https",
                origin.scheme()
            )));
        }
        if origin.host().is_none() {
            return Err(url_err("the URL has no host".into()));
        }
        if !origin.username().is_empty() || origin.password().is_some() {
            return Err(url_err(
                "credentials in the URL are not allowed; send them in a header".into(),
            ));
        }
        let path =
            Template::parse(if path_text.is_empty() { "/" } else { path_text }).map_err(url_err)?;
        if path.placeholders().any(|p| p == "*") {
            return Err(url_err("{*} cannot be used in the URL".into()));
        }

        let mut query = Vec::new();
        for (key, value) in &spec.query {
            let t = Template::parse_with_secrets(value)
                .map_err(|m| (format!("request.query.{key}"), m))?;
            if t.placeholders().any(|p| p == "*") {
                return Err((
                    format!("request.query.{key}"),
                    "{*} cannot be used in a query value".into(),
                ));
            }
            query.push((key.clone(), t));
        }
        let mut headers = Vec::new();
        for (key, value) in &spec.headers {
            let field = format!("request.headers.{key}");
            if key.starts_with(':') {
                return Err((
                    field,
                    format!(
                        "{key} is an HTTP/2 pseudo-header; the request URL and method decide it"
                    ),
                ));
            }
            let name = HeaderName::try_from(key.as_str())
                .map_err(|e| (field.clone(), format!("invalid header name: {e}")))?;
            let t = Template::parse_with_secrets(value).map_err(|m| (field.clone(), m))?;
            check_header_rule(&name, &t).map_err(|m| (field.clone(), m))?;
            if t.is_literal() {
                HeaderValue::try_from(value.as_str())
                    .map_err(|e| (field.clone(), format!("invalid header value: {e}")))?;
            }
            headers.push((name, t));
        }
        let body = match &spec.body {
            Some(_)
                if !spec.method.sends_body_by_default()
                    && spec.method != crate::config::spec::Method::Delete =>
            {
                return Err((
                    "request.body".into(),
                    format!("a {:?} request cannot carry a body", spec.method),
                ))
            }
            Some(v) => Some(BodyNode::compile(v).map_err(|m| ("request.body".to_owned(), m))?),
            None if spec.method.sends_body_by_default() => Some(BodyNode::AllArgs),
            None => None,
        };
        Ok(Self {
            method: spec.method.as_http(),
            origin,
            path,
            fixed_query,
            query,
            headers,
            body,
        })
    }

    /// Placeholders that must be present for the request to be built (path
    /// segments), and all placeholders read anywhere, with the field each is
    /// in, for checking against the input schema.
    pub fn placeholders(&self) -> (Vec<&str>, Vec<(&'static str, &str)>) {
        let required: Vec<&str> = self.path.placeholders().collect();
        let mut all: Vec<(&'static str, &str)> =
            required.iter().map(|p| ("request.url", *p)).collect();
        for (_, t) in &self.query {
            all.extend(t.placeholders().map(|p| ("request.query", p)));
        }
        for (_, t) in &self.headers {
            all.extend(t.placeholders().map(|p| ("request.headers", p)));
        }
        if let Some(body) = &self.body {
            let mut names = Vec::new();
            body.placeholders(&mut names);
            all.extend(names.into_iter().map(|p| ("request.body", p)));
        }
        (required, all)
    }

    /// Every secret the request embeds, for redaction.
    pub fn secrets(&self) -> Vec<Secret> {
        let query = self.query.iter().map(|(_, t)| t);
        let headers = self.headers.iter().map(|(_, t)| t);
        query
            .chain(headers)
            .flat_map(Template::secrets)
            .cloned()
            .collect()
    }

    /// The headers, query parameters and values that carry this tool's
    /// secrets.
    pub fn credentials(&self) -> Credentials {
        let holds_secret = |t: &Template| t.secrets().next().is_some();
        Credentials {
            headers: self
                .headers
                .iter()
                .filter(|(_, t)| holds_secret(t))
                .map(|(name, _)| name.clone())
                .collect(),
            query_keys: self
                .query
                .iter()
                .filter(|(_, t)| holds_secret(t))
                .map(|(key, _)| key.clone())
                .collect(),
            secrets: self.secrets(),
        }
    }

    pub fn method(&self) -> &http::Method {
        &self.method
    }

    /// `scheme://host:port` of the upstream, used in logs and metrics.
    pub fn origin(&self) -> &Url {
        &self.origin
    }

    /// Whether the body is the whole arguments object (`{*}`, the default for
    /// methods that send a body): the caller's own bytes can then be sent as
    /// they are, numbers spelt exactly as written.
    pub fn forwards_arguments(&self) -> bool {
        matches!(self.body, Some(BodyNode::AllArgs))
    }

    /// Builds the request from the parsed arguments alone (a body is encoded
    /// from them); see [`RequestTemplate::render_call`].
    pub fn render(&self, args: &Args) -> Result<RenderedRequest, CallError> {
        self.render_call(args, None)
    }

    /// Builds the request for one call whose arguments arrived as `raw`: a
    /// whole-arguments body is then those bytes, untouched (the caller
    /// checked them: an object, no key twice), so every number reaches the
    /// upstream exactly as written, without re-encoding or a copy. Empty
    /// arguments are `{}`.
    pub fn render_call(
        &self,
        args: &Args,
        raw: Option<&bytes::Bytes>,
    ) -> Result<RenderedRequest, CallError> {
        let path = self.path.render(args, encode_segment)?.ok_or_else(|| {
            let missing = self
                .path
                .placeholders()
                .find(|p| args.get(*p).is_none_or(Value::is_null))
                .unwrap_or_default();
            CallError::UnusableArgument {
                name: missing.to_owned(),
                reason: "is required to build the request URL".to_owned(),
            }
        })?;
        let mut url = self.origin.clone();
        url.set_path(&path);
        url.set_query(self.fixed_query.as_deref());
        if !self.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (key, t) in &self.query {
                if let Some(value) = t.render(args, verbatim)? {
                    pairs.append_pair(key, &value);
                }
            }
        }
        // Defense in depth: rendering can only have touched path and query.
        if !same_origin(&url, &self.origin) {
            return Err(CallError::Internal(
                "rendered URL left the configured origin".into(),
            ));
        }
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 1);
        for (name, t) in &self.headers {
            if let Some(value) = t.render(args, verbatim)? {
                let mut value =
                    HeaderValue::try_from(value).map_err(|_| CallError::UnusableArgument {
                        name: t.placeholders().next().unwrap_or_default().to_owned(),
                        reason: format!("contains characters not allowed in the {name} header"),
                    })?;
                // Sensitive values are never HPACK-indexed nor printed by Debug.
                value.set_sensitive(t.secrets().next().is_some());
                headers.insert(name.clone(), value);
            }
        }
        let body = match (&self.body, raw) {
            (None, _) => None,
            (Some(BodyNode::AllArgs), Some(raw)) if !raw.iter().all(u8::is_ascii_whitespace) => {
                Some(raw.clone())
            }
            (Some(node), _) => {
                let value = node.render(args)?.unwrap_or(Value::Null);
                let bytes = serde_json::to_vec(&value)
                    .map_err(|e| CallError::Internal(format!("cannot encode body: {e}")))?;
                Some(bytes::Bytes::from(bytes))
            }
        };
        if body.is_some() {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        Ok(RenderedRequest {
            method: self.method.clone(),
            url,
            headers,
            body,
        })
    }
}

/// Whether two http(s) URLs share an origin (scheme, host, port), as
/// comparing their `Url::origin`s would say, without building them: each
/// copies its host into a new allocation, twice for every rendered request.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(yaml: &str) -> RequestSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn args(v: Value) -> Args {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn same_origin_agrees_with_comparing_origins() {
        let urls = [
            "http://h:8/a",
            "http://h:8/b?q=1",
            "http://h/",
            "http://h:80/",
            "https://h/",
            "https://h:443/x",
            "https://h:8/",
            "http://H:8/",
            "http://g:8/",
            "http://127.0.0.1:8/",
            "http://[::1]:8/",
            "http://user:pw@h:8/",
            "http://xn--so-pla.example/",
            "http://são.example/",
        ];
        for a in urls {
            for b in urls {
                let (a, b) = (Url::parse(a).unwrap(), Url::parse(b).unwrap());
                assert_eq!(same_origin(&a, &b), a.origin() == b.origin(), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn path_placeholders_are_encoded_as_one_segment() {
        let t = RequestTemplate::compile(&spec("url: http://h:8/w/{city}/now")).unwrap();
        let r = t.render(&args(json!({"city": "São Paulo & co%"}))).unwrap();
        assert_eq!(
            r.url.as_str(),
            "http://h:8/w/S%C3%A3o%20Paulo%20%26%20co%25/now"
        );
    }

    #[test]
    fn traversal_and_authority_tricks_are_refused() {
        let t = RequestTemplate::compile(&spec("url: http://h/w/{city}")).unwrap();
        let bad = [
            "..",
            ".",
            "",
            "../admin",
            "%2e%2e",
            "%2E%2E%2Fadmin",
            "a/b",
            "a%2fb",
            "a\\b",
            "user@evil",
            "evil:8080",
            "//evil.com",
            "x?y",
            "x#y",
            "a%00b",
            "line\nbreak",
        ];
        for value in bad {
            let e = t.render(&args(json!({ "city": value }))).unwrap_err();
            assert!(matches!(e, CallError::EgressDenied(_)), "{value}: {e:?}");
        }
        assert!(matches!(
            t.render(&args(json!({}))),
            Err(CallError::UnusableArgument { .. })
        ));
    }

    #[test]
    fn query_values_are_form_encoded_and_optional() {
        let t = RequestTemplate::compile(&spec(
            "url: http://h/s?v=1\nquery: {q: '{q}', limit: '{limit}'}",
        ))
        .unwrap();
        let r = t.render(&args(json!({"q": "a&b=c"}))).unwrap();
        assert_eq!(r.url.as_str(), "http://h/s?v=1&q=a%26b%3Dc");
        let r = t.render(&args(json!({"q": "x", "limit": 5}))).unwrap();
        assert_eq!(r.url.query(), Some("v=1&limit=5&q=x"));
    }

    #[test]
    fn host_cannot_be_templated() {
        let e = RequestTemplate::compile(&spec("url: http://{host}/x")).unwrap_err();
        assert_eq!(e.0, "request.url");
        let e = RequestTemplate::compile(&spec("url: ftp://h/x")).unwrap_err();
        assert!(e.1.contains("ftp"));
        let e = RequestTemplate::compile(&spec("url: http://u:p@h/x")).unwrap_err();
        assert!(e.1.contains("credentials"));
    }

    #[test]
    fn body_keeps_json_types_and_drops_absent_keys() {
        let t = RequestTemplate::compile(&spec(
            "method: POST\nurl: http://h/c\nbody: {expr: '{expr}', n: '{n}', note: 'x={n}', fixed: 3, all: '{*}'}",
        ))
        .unwrap();
        let r = t.render(&args(json!({"expr": "1+1"}))).unwrap();
        let body: Value = serde_json::from_slice(&r.body.unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"expr": "1+1", "fixed": 3, "all": {"expr": "1+1"}})
        );
    }

    #[test]
    fn post_sends_arguments_by_default() {
        let t = RequestTemplate::compile(&spec("method: POST\nurl: http://h/c")).unwrap();
        let r = t.render(&args(json!({"a": [1, 2]}))).unwrap();
        assert_eq!(&r.body.unwrap()[..], br#"{"a":[1,2]}"#);
        assert_eq!(r.headers["content-type"], "application/json");
    }

    #[test]
    fn numbers_reach_the_upstream_exactly_as_written() {
        // serde_json's `arbitrary_precision` keeps each number's text, so
        // re-encoding the arguments cannot round them through a double.
        let numbers = [
            "18446744073709551617",
            "-18446744073709551617",
            "1234567890123456789012345678901234567890",
            "1e400",
            "0.1000000000000000055511151231257827",
            "1.0",
            "-0.0",
        ];
        let raw = format!("{{\"n\":[{}]}}", numbers.join(","));
        let parsed: Args = serde_json::from_str(&raw).unwrap();
        let t = RequestTemplate::compile(&spec("method: POST\nurl: http://h/c")).unwrap();
        let r = t.render(&parsed).unwrap();
        // Digits are kept as written; serde_json writes an exponent with its
        // sign (`1e400` as `1e+400`): the same JSON number.
        let expected = raw.replace("1e400", "1e+400");
        assert_eq!(std::str::from_utf8(&r.body.unwrap()).unwrap(), expected);
        let t = RequestTemplate::compile(&spec(
            "method: POST\nurl: http://h/c\nbody: {first: '{n}', all: '{*}'}\nquery: {q: '{m}'}",
        ))
        .unwrap();
        let mut with_m = parsed.clone();
        with_m.insert("m".into(), serde_json::from_str(numbers[0]).unwrap());
        let r = t.render(&with_m).unwrap();
        let body = std::str::from_utf8(r.body.as_ref().unwrap())
            .unwrap()
            .to_owned();
        assert!(body.contains(&expected[5..expected.len() - 1]), "{body}");
        assert_eq!(r.url.query(), Some("q=18446744073709551617"));
    }

    #[test]
    fn header_injection_is_refused() {
        let t =
            RequestTemplate::compile(&spec("url: http://h/\nheaders: {X-User: '{u}'}")).unwrap();
        assert!(t.render(&args(json!({"u": "a\r\nHost: evil"}))).is_err());
    }

    #[test]
    fn arguments_never_choose_host_route_or_framing() {
        for (header, value) in [
            ("Host", "{h}"),
            ("host", "api.{h}.example.com"),
            ("X-Forwarded-Host", "{h}"),
            ("Forwarded", "for={h}"),
            ("X-HTTP-Method-Override", "{h}"),
            ("X-Original-URL", "/{h}"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "{h}"),
            ("Connection", "close"),
            ("Upgrade", "h2c"),
            (":authority", "{h}"),
            (":authority", "fixed.example.com"),
        ] {
            let yaml = format!("url: http://h/\nheaders: {{'{header}': '{value}'}}");
            let (field, message) = RequestTemplate::compile(&spec(&yaml)).unwrap_err();
            assert_eq!(field, format!("request.headers.{header}"), "{message}");
        }
        // The operator may fix a routing header; an argument may fill others.
        let ok = "url: http://h/\nheaders: {Host: api.example.com, X-Trace: '{h}'}";
        assert!(RequestTemplate::compile(&spec(ok)).is_ok());
    }

    #[test]
    fn malformed_templates_are_config_errors() {
        assert!(Template::parse("a{b").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{1x}").is_err());
        assert!(Template::parse("{a-b}").is_err());
    }
}
