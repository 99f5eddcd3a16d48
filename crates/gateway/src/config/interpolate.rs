//! `${VAR}` interpolation of every string in a config document, before it is read.
//!
//! Supported forms: `${VAR}` (a missing variable is an error naming it), `${VAR:-default}` (the
//! default is used when the variable is unset or empty) and `$${` for a literal `${`.
//! Interpolation happens on the parsed JSON tree, so a variable's value can never break the
//! document's syntax.

use serde_json::Value;

/// One interpolation failure: where, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct InterpolationError {
    /// JSON path of the string that referenced the variable.
    pub path: String,
    /// What went wrong, naming the variable.
    pub message: String,
}

/// Replaces `${…}` references in every string of `value`, collecting all errors.
pub fn interpolate_tree(
    value: &mut Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<InterpolationError>,
) {
    match value {
        Value::String(s) => match interpolate_str(s, lookup) {
            Ok(Some(replaced)) => *s = replaced,
            Ok(None) => {}
            Err(message) => errors.push(InterpolationError {
                path: path.to_string(),
                message,
            }),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_tree(item, &format!("{path}[{i}]"), lookup, errors);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                interpolate_tree(item, &child, lookup, errors);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Interpolates one string; `Ok(None)` when it holds no reference (the common case, no copy).
fn interpolate_str(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    if !input.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err(format!(
                    "unterminated variable reference in \"{input}\": expected `${{NAME}}`"
                ));
            };
            let reference = &tail[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            if !is_variable_name(name) {
                return Err(format!(
                    "invalid variable name `{name}` in \"{input}\": expected letters, digits and `_`, not starting with a digit"
                ));
            }
            match (lookup(name), default) {
                (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (referenced as `${{{name}}}`; set it, or write `${{{name}:-default}}`)"
                    ));
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("secret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_references_defaults_and_escapes() {
        assert_eq!(
            interpolate_str("a ${KEY} b", &env),
            Ok(Some("a secret b".into()))
        );
        assert_eq!(interpolate_str("${NOPE:-x}", &env), Ok(Some("x".into())));
        assert_eq!(interpolate_str("${EMPTY:-d}", &env), Ok(Some("d".into())));
        assert_eq!(interpolate_str("$${KEY}", &env), Ok(Some("${KEY}".into())));
        assert_eq!(interpolate_str("cost $5", &env), Ok(Some("cost $5".into())));
        assert_eq!(interpolate_str("plain", &env), Ok(None));
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_it_and_its_path() {
        let mut doc = json!({"llm": {"providers": [{"apiKey": "${LLM_API_KEY}"}]}});
        let mut errors = Vec::new();
        interpolate_tree(&mut doc, "", &env, &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].path, "llm.providers[0].apiKey");
        assert!(errors[0].message.contains("LLM_API_KEY is not set"));
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(interpolate_str("${KEY", &env).is_err());
        assert!(interpolate_str("${1A}", &env).is_err());
    }
}
