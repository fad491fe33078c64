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

/// The most nodes (scalars, sequences, mappings) one document may have once its
/// aliases are expanded.
pub const MAX_EXPANDED_NODES: usize = 250_000;

/// The most scalar text one document may have once its aliases are expanded.
pub const MAX_EXPANDED_BYTES: usize = 32 << 20;

/// What is left of a document's budget while it is walked.
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

/// Checks every document of `text` against the bounds; the 1-based index of the first
/// document over them, with the reason. A syntax error is left to the real reading,
/// which reports it.
pub fn check(text: &str) -> Result<(), (usize, String)> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err((1, format!("{} bytes of manifests; the limit is {} MiB", text.len(), MAX_MANIFEST_BYTES >> 20)));
    }
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let budget = Budget { nodes: Cell::new(MAX_EXPANDED_NODES), bytes: Cell::new(MAX_EXPANDED_BYTES) };
        if let Err(error) = Walk(&budget).deserialize(document) {
            let message = error.to_string();
            if message.contains("once its aliases are expanded") {
                return Err((index + 1, message));
            }
            // Anything else (a syntax error) the reading that follows reports.
            return Ok(());
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
    fn ordinary_manifests_and_syntax_errors_pass_through() {
        assert_eq!(check("a: &x [1, 2]\nb: *x\n---\nc: {d: [1, 2, 3]}\n"), Ok(()));
        assert_eq!(check("a: [\n"), Ok(()), "the reading reports it");
        let (document, message) = check(&"#".repeat(MAX_MANIFEST_BYTES + 1)).expect_err("too big");
        assert_eq!(document, 1);
        assert!(message.contains("the limit is 4 MiB"), "{message}");
    }
}
