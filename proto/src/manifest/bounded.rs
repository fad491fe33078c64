//! Bounds on what a manifest may cost to read: its size, and what its YAML aliases
//! expand to. An alias repeats its anchor's whole subtree, so a few kilobytes of
//! anchors and aliases can stand for gigabytes (a "billion laughs"); before a document
//! is built into a value, a first pass walks it as the parser expands it and counts,
//! giving up at the first node over the budget — memory stays bounded by the text.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

/// The most a manifest source (a file, standard input, one apply's text) may hold.
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// The most nodes (scalars, sequences, mappings) the documents read together (one
/// source, or one apply's sources) may have once their aliases are expanded.
pub const MAX_EXPANDED_NODES: usize = 250_000;

/// The most scalar text the documents read together may have once their aliases are
/// expanded.
pub const MAX_EXPANDED_BYTES: usize = 32 << 20;

/// What is left of the budget while documents are walked.
struct Budget {
    nodes: Cell<usize>,
    bytes: Cell<usize>,
}

impl Budget {
    fn spend<E: serde::de::Error>(&self, bytes: usize) -> Result<(), E> {
        let nodes = self.nodes.get().checked_sub(1).ok_or_else(|| {
            E::custom(format!("more than {MAX_EXPANDED_NODES} nodes once its aliases are expanded (an alias bomb?); manifests this large are refused"))
        })?;
        let left = self.bytes.get().checked_sub(bytes).ok_or_else(|| {
            E::custom(format!(
                "more than {} MiB of text once its aliases are expanded (an alias bomb?); manifests this large are refused",
                MAX_EXPANDED_BYTES >> 20
            ))
        })?;
        self.nodes.set(nodes);
        self.bytes.set(left);
        Ok(())
    }
}

/// Walks whatever the deserializer gives, spending the budget, building nothing.
#[derive(Clone, Copy)]
struct Walk<'a>(&'a Budget);

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.0.spend(1)
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.0.spend(8)
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.0.spend(8)
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.0.spend(8)
    }
    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<(), E> {
        self.0.spend(text.len())
    }
    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<(), E> {
        self.0.spend(bytes.len())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.spend(0)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.0.spend(0)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.spend(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.0.spend(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    /// A tagged value (`!tag value`).
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

/// Checks every document of `text` against the bounds, one budget for the whole
/// source (so that many small documents cannot each spend a full one); the 1-based
/// index of the first document over them, with the reason. A syntax error is left to
/// the real reading, which reports it.
pub fn check(text: &str) -> Result<(), (usize, String)> {
    check_all([("", text)]).map_err(|(_, document, message)| (document, message))
}

/// [`check`] over several sources read together (one apply's files): their sizes and
/// expansions share one budget. The name of the source over it, the 1-based index of
/// its document, and the reason.
pub fn check_all<'a>(sources: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), (String, usize, String)> {
    let budget = Budget { nodes: Cell::new(MAX_EXPANDED_NODES), bytes: Cell::new(MAX_EXPANDED_BYTES) };
    let mut total = 0usize;
    for (name, text) in sources {
        total = total.saturating_add(text.len());
        if total > MAX_MANIFEST_BYTES {
            return Err((name.to_owned(), 1, format!("{total} bytes of manifests; the limit is {} MiB", MAX_MANIFEST_BYTES >> 20)));
        }
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            if let Err(error) = Walk(&budget).deserialize(document) {
                let message = error.to_string();
                if message.contains("once its aliases are expanded") {
                    return Err((name.to_owned(), index + 1, message));
                }
                // Anything else (a syntax error) the reading that follows reports.
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 100 KB document whose aliases stand for 4 million strings.
    fn bomb() -> String {
        let anchor = format!("a: &big [{}]", vec!["\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\""; 200].join(","));
        let aliases = format!("b: [{}]", vec!["*big"; 20_000].join(","));
        format!("apiVersion: orch/v1\nkind: Service\nmetadata:\n  name: bomb\n  labels:\n    {anchor}\n    {aliases}\nspec:\n  image: busybox\n")
    }

    #[test]
    fn an_alias_bomb_is_refused_at_the_first_node_over_the_budget() {
        let text = bomb();
        assert!(text.len() < 200_000);
        let (document, message) = check(&format!("apiVersion: orch/v1\nkind: Config\nmetadata: {{name: c}}\n---\n{text}")).expect_err("refused");
        assert_eq!(document, 2);
        assert!(message.contains("nodes once its aliases are expanded"), "{message}");
    }

    #[test]
    fn a_long_string_repeated_by_aliases_is_refused_by_its_bytes() {
        let text = format!("a: &s \"{}\"\nb: [{}]\n", "x".repeat(1 << 20), vec!["*s"; 40].join(","));
        let (_, message) = check(&text).expect_err("refused");
        assert!(message.contains("MiB of text once its aliases are expanded"), "{message}");
    }

    #[test]
    fn the_budget_spans_every_document_and_every_source() {
        // Each document alone is well under the budget; together they are over it.
        let anchor = format!("a: &big [{}]", vec!["1"; 1000].join(","));
        let document = format!("{anchor}\nb: [{}]\n", vec!["*big"; 50].join(","));
        assert_eq!(check(&document), Ok(()));
        let many = [document.as_str(); 6].join("---\n");
        let (index, message) = check(&many).expect_err("one budget per source");
        assert_eq!(index, 5, "{message}");
        let sources: Vec<(String, String)> = (0..6).map(|i| (format!("f{i}.yaml"), document.clone())).collect();
        let (name, index, _) = check_all(sources.iter().map(|(n, t)| (n.as_str(), t.as_str()))).expect_err("one budget per apply");
        assert_eq!((name.as_str(), index), ("f4.yaml", 1));
        let half = "#".repeat(MAX_MANIFEST_BYTES / 2 + 1);
        let (name, _, message) = check_all([("a", half.as_str()), ("b", half.as_str())]).expect_err("sizes add up");
        assert_eq!(name, "b");
        assert!(message.contains("the limit is 4 MiB"), "{message}");
    }

    #[test]
    fn ordinary_manifests_and_syntax_errors_pass_through() {
        assert_eq!(check("a: &x [1, 2]\nb: *x\n---\nc: {d: [1, 2, 3]}\n"), Ok(()));
        assert_eq!(check("a: [\n"), Ok(()), "the reading reports it");
        let (document, message) = check(&"#".repeat(MAX_MANIFEST_BYTES + 1)).expect_err("too big");
        assert_eq!(document, 1);
        assert!(message.contains("the limit is 4 MiB"), "{message}");
    }
}
