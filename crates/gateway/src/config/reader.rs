//! A reader over a parsed JSON document that collects every error with its JSON path, instead of
//! stopping at the first one as serde would: `clawgate config check` must list them all.

use serde_json::{Map, Value};

/// A JSON object being read.
pub(crate) type Object = Map<String, Value>;

/// Collects `(path, message)` errors while typed values are read out of a document.
#[derive(Default)]
pub(crate) struct Reader {
    pub(crate) errors: Vec<(String, String)>,
}

/// `prefix.key`, or `key` at the root.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// How a value looks, for "found …" in error messages. Strings are quoted but cut short, so an
/// interpolated secret is never echoed whole.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() > 24 => {
            format!("a string \"{}…\"", s.chars().take(12).collect::<String>())
        }
        Value::String(s) => format!("the string \"{s}\""),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl Reader {
    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push((path.into(), message.into()));
    }

    /// Reports every key of `obj` that is not in `allowed` (a typo must not be silently ignored).
    pub(crate) fn check_keys(&mut self, obj: &Object, prefix: &str, allowed: &[&str]) {
        for key in obj.keys() {
            if allowed.contains(&key.as_str()) {
                continue;
            }
            let hint = allowed
                .iter()
                .find(|a| a.eq_ignore_ascii_case(key))
                .map(|a| format!(" (did you mean `{a}`?)"))
                .unwrap_or_default();
            self.error(
                join(prefix, key),
                format!("unknown key{hint}; expected one of: {}", allowed.join(", ")),
            );
        }
    }

    /// An optional object under `key` whose keys are checked against `allowed`; absent or null →
    /// `None`, anything else but an object → error.
    pub(crate) fn section<'v>(
        &mut self,
        parent: &'v Object,
        prefix: &str,
        key: &str,
        allowed: &[&str],
    ) -> Option<&'v Object> {
        let obj = self.object(parent, prefix, key)?;
        self.check_keys(obj, &join(prefix, key), allowed);
        Some(obj)
    }

    /// An optional object under `key` with free-form keys (e.g. language codes).
    pub(crate) fn object<'v>(
        &mut self,
        parent: &'v Object,
        prefix: &str,
        key: &str,
    ) -> Option<&'v Object> {
        match parent.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Object(obj)) => Some(obj),
            Some(other) => {
                self.error(
                    join(prefix, key),
                    format!("expected an object, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// An optional value converted by `convert`, which returns `None` when the value does not fit
    /// `expected`.
    pub(crate) fn value<T>(
        &mut self,
        obj: &Object,
        prefix: &str,
        key: &str,
        expected: &str,
        convert: impl FnOnce(&Value) -> Option<T>,
    ) -> Option<T> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => {
                let converted = convert(value);
                if converted.is_none() {
                    self.error(
                        join(prefix, key),
                        format!("expected {expected}, found {}", describe(value)),
                    );
                }
                converted
            }
        }
    }

    /// An optional non-empty string.
    pub(crate) fn string(&mut self, obj: &Object, prefix: &str, key: &str) -> Option<String> {
        self.value(obj, prefix, key, "a non-empty string", |v| {
            v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
        })
    }

    /// An optional string that may be empty (e.g. an API key interpolated from an unset default).
    pub(crate) fn string_or_empty(
        &mut self,
        obj: &Object,
        prefix: &str,
        key: &str,
    ) -> Option<String> {
        self.value(obj, prefix, key, "a string", |v| {
            v.as_str().map(str::to_string)
        })
    }

    /// An optional integer in `min..=max`; `unit` is named in the error (e.g. "milliseconds").
    pub(crate) fn integer(
        &mut self,
        obj: &Object,
        prefix: &str,
        key: &str,
        min: u64,
        max: u64,
        unit: &str,
    ) -> Option<u64> {
        let expected = format!("an integer from {min} to {max} ({unit})");
        self.value(obj, prefix, key, &expected, |v| {
            v.as_u64().filter(|n| (min..=max).contains(n))
        })
    }

    /// An optional `true` / `false`.
    pub(crate) fn boolean(&mut self, obj: &Object, prefix: &str, key: &str) -> Option<bool> {
        self.value(obj, prefix, key, "true or false", Value::as_bool)
    }

    /// An optional number in `min..=max` (fractions allowed); `unit` is named in the error.
    pub(crate) fn number(
        &mut self,
        obj: &Object,
        prefix: &str,
        key: &str,
        min: f64,
        max: f64,
        unit: &str,
    ) -> Option<f64> {
        let expected = format!("a number from {min} to {max} ({unit})");
        self.value(obj, prefix, key, &expected, |v| {
            v.as_f64().filter(|n| (min..=max).contains(n))
        })
    }

    /// An optional string that must be one of `choices`.
    pub(crate) fn choice(
        &mut self,
        obj: &Object,
        prefix: &str,
        key: &str,
        choices: &[&str],
    ) -> Option<String> {
        let quoted: Vec<String> = choices.iter().map(|c| format!("\"{c}\"")).collect();
        let expected = format!("one of {}", quoted.join(", "));
        self.value(obj, prefix, key, &expected, |v| {
            v.as_str()
                .filter(|s| choices.contains(s))
                .map(str::to_string)
        })
    }
}

/// `value` milliseconds, or `default` when the key is absent.
pub(crate) fn ms(value: Option<u64>, default: u64) -> std::time::Duration {
    std::time::Duration::from_millis(value.unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn collects_every_error_with_its_path() {
        let doc = json!({"a": {"n": "ten", "typo": 1, "mode": "maybe"}});
        let root = doc.as_object().cloned().unwrap_or_default();
        let mut r = Reader::default();
        let a = r
            .section(&root, "", "a", &["n", "mode"])
            .cloned()
            .unwrap_or_default();
        assert_eq!(r.integer(&a, "a", "n", 1, 10, "seconds"), None);
        assert_eq!(r.choice(&a, "a", "mode", &["degrade", "reject"]), None);
        let paths: Vec<&str> = r.errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, vec!["a.typo", "a.n", "a.mode"]);
        assert!(
            r.errors[1]
                .1
                .contains("expected an integer from 1 to 10 (seconds)")
        );
        assert!(r.errors[2].1.contains("\"degrade\", \"reject\""));
    }

    #[test]
    fn suggests_the_right_spelling_of_a_miscased_key() {
        let doc = json!({"replyWaitMS": 1});
        let obj = doc.as_object().cloned().unwrap_or_default();
        let mut r = Reader::default();
        r.check_keys(&obj, "webchat", &["replyWaitMs"]);
        assert!(r.errors[0].1.contains("did you mean `replyWaitMs`"));
    }
}
