//! Label selectors as `kubectl -l` writes them: `key=value` (or `key==value`),
//! `key!=value`, `key` (the label is set), `!key` (it is not), joined by commas, every
//! requirement holding (AND). Keys and values follow the manifest's label rules
//! ([`crate::manifest::names`]). Pure: parse text, match a label map.

use std::collections::BTreeMap;
use std::fmt;

use crate::manifest::names::{check_label_key, check_label_value};

/// One requirement on one label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value`, `key==value`.
    Equals(String, String),
    /// `key!=value`: the label is not set, or set to another value (as Kubernetes).
    NotEquals(String, String),
    /// `key`.
    Exists(String),
    /// `!key`.
    Absent(String),
}

/// Requirements that must all hold; none: everything matches.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("selector {selector:?}: an empty requirement (a comma too many?)")]
    Empty { selector: String },
    #[error("selector {selector:?}: {requirement:?}: {expected}")]
    Invalid { selector: String, requirement: String, expected: String },
}

impl Selector {
    /// Parses `app=web,tier!=cache,canary,!legacy`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(SelectorError::Empty { selector: text.to_owned() });
            }
            let invalid = |expected: String| SelectorError::Invalid { selector: text.to_owned(), requirement: part.to_owned(), expected };
            let key = |key: &str| -> Result<String, SelectorError> {
                let key = key.trim();
                check_label_key(key).map_err(|e| invalid(format!("the key must be {e}")))?;
                Ok(key.to_owned())
            };
            let value = |value: &str| -> Result<String, SelectorError> {
                let value = value.trim();
                check_label_value(value).map_err(|e| invalid(format!("the value must be {e}")))?;
                Ok(value.to_owned())
            };
            let requirement = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(key(k)?, value(v)?)
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(key(k)?, value(v)?)
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(key(k)?, value(v)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(key(k)?)
            } else if part.contains(['<', '>', '(', ')', ' ']) {
                // Set-based selectors (`in`, `notin`) and comparisons are not supported.
                return Err(invalid("expected key=value, key==value, key!=value, key or !key".to_owned()));
            } else {
                Requirement::Exists(key(part)?)
            };
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    /// Whether every requirement holds for `labels`.
    pub fn matches<K: AsRef<str> + Ord, V: AsRef<str>>(&self, labels: impl IntoIterator<Item = (K, V)>) -> bool {
        let labels: BTreeMap<String, String> = labels.into_iter().map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned())).collect();
        self.requirements.iter().all(|requirement| match requirement {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::Exists(k) => k.clone(),
                Requirement::Absent(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn parses_every_form() {
        let eq = |k: &str, v: &str| Requirement::Equals(k.into(), v.into());
        let table: &[(&str, Vec<Requirement>)] = &[
            ("app=web", vec![eq("app", "web")]),
            ("app==web", vec![eq("app", "web")]),
            ("app = web", vec![eq("app", "web")]),
            ("tier!=cache", vec![Requirement::NotEquals("tier".into(), "cache".into())]),
            ("canary", vec![Requirement::Exists("canary".into())]),
            ("!legacy", vec![Requirement::Absent("legacy".into())]),
            ("app=", vec![eq("app", "")]),
            ("example.com/team=a,!b", vec![eq("example.com/team", "a"), Requirement::Absent("b".into())]),
        ];
        for (text, want) in table {
            let parsed = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(&parsed.requirements, want, "{text}");
        }
        assert_eq!(Selector::parse("app==web, !b ,c").map(|s| s.to_string()), Ok("app=web,!b,c".to_owned()));
    }

    #[test]
    fn refuses_bad_selectors_naming_the_text() {
        let table: &[(&str, &str)] = &[
            ("", "an empty requirement"),
            ("app=web,", "an empty requirement"),
            ("a=b,,c", "an empty requirement"),
            ("=web", "\"=web\": the key must be a label key"),
            ("app=we b", "\"app=we b\": the value must be a label value"),
            ("-app", "\"-app\": the key must be a label key"),
            ("!", "\"!\": the key must be a label key"),
            ("app in (a,b)", "expected key=value"),
            ("app=-x", "the value must be a label value"),
            ("bad_prefix!/x=1", "a label key prefix"),
        ];
        for (text, want) in table {
            let error = Selector::parse(text).expect_err(text).to_string();
            assert!(error.starts_with(&format!("selector {text:?}: ")), "{text}: {error}");
            assert!(error.contains(want), "{text}: {error}");
        }
    }

    #[test]
    fn matches_as_kubernetes() {
        let web = labels(&[("app", "web"), ("tier", "front")]);
        let cache = labels(&[("app", "cache")]);
        let none = labels(&[]);
        // (selector, web, cache, none)
        let table: &[(&str, bool, bool, bool)] = &[
            ("app=web", true, false, false),
            ("app!=web", false, true, true),
            ("tier", true, false, false),
            ("!tier", false, true, true),
            ("app,!tier", false, true, false),
            ("app=web,tier=front", true, false, false),
            ("app=web,tier=back", false, false, false),
            ("tier!=front", false, true, true),
            ("app=", false, false, false),
        ];
        for (text, on_web, on_cache, on_none) in table {
            let selector = Selector::parse(text).expect(text);
            assert_eq!(
                (selector.matches(web.clone()), selector.matches(cache.clone()), selector.matches(none.clone())),
                (*on_web, *on_cache, *on_none),
                "{text}"
            );
        }
        assert!(Selector::default().matches(none), "no requirement: everything");
    }
}
