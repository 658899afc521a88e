//! Where each field of a YAML document is: an index from field paths (`clusters[0].name`) to
//! line and column, so validation can work on plain data and still name the place.
//!
//! The index is built from the same text by a second, untyped pass (only when a file has
//! problems to report): every mapping value and sequence item is read as a `Spanned` node.

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Line and column (1-based) of every field path in a document.
#[derive(Debug, Default)]
pub(crate) struct SpanIndex {
    places: HashMap<String, (usize, usize)>,
}

impl SpanIndex {
    /// Indexes `text`; a document that does not parse indexes nothing.
    pub(crate) fn build(text: &str) -> Self {
        let mut index = SpanIndex::default();
        if let Ok(root) = serde_saphyr::from_str_with_options::<Spanned<Node>>(text, untyped()) {
            index.add(String::new(), &root);
        }
        index
    }

    fn add(&mut self, path: String, node: &Spanned<Node>) {
        let loc = node.defined;
        if loc.line() > 0 {
            self.places
                .insert(path.clone(), (loc.line() as usize, loc.column() as usize));
        }
        match &node.value {
            Node::Map(entries) => {
                for (key, value) in entries {
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    self.add(child, value);
                }
            }
            Node::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.add(format!("{path}[{i}]"), item);
                }
            }
            Node::Leaf => {}
        }
    }

    /// The place of `path`, or of its nearest ancestor that is in the file (a field left to
    /// its default is reported where its parent is written).
    /// A top-level field the file leaves out is placed at the document's start.
    pub(crate) fn locate(&self, path: &str) -> Option<(usize, usize)> {
        let mut path = path;
        loop {
            if let Some(place) = self.places.get(path) {
                return Some(*place);
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path = &path[..cut],
                None if self.places.is_empty() => return None,
                None => return Some(self.places.get("").copied().unwrap_or((1, 1))),
            }
        }
    }
}

/// The keys of the document's top-level mapping.
pub(crate) fn top_level_keys(text: &str) -> Option<Vec<String>> {
    match serde_saphyr::from_str_with_options::<Node>(text, untyped()).ok()? {
        Node::Map(entries) => Some(entries.into_iter().map(|(k, _)| k).collect()),
        _ => None,
    }
}

/// Options of the untyped pass: it only wants the document's shape, so a scalar no number can
/// hold (`1e400`, `.inf`) is a leaf like any other instead of an error that would leave the
/// whole file without places.
fn untyped() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    options
}

/// A YAML node with no type: only its shape matters here.
enum Node {
    Map(Vec<(String, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
    Leaf,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

/// A mapping key of any scalar kind, as text.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a scalar key")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_owned()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Key, E> {
                Ok(Key("null".to_owned()))
            }
        }
        // As text: `n`, `y`, `on` are keys here, not YAML 1.1 booleans.
        d.deserialize_str(KeyVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            entries.push((key, map.next_value()?));
        }
        Ok(Node::Map(entries))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i128<E>(self, _: i128) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u128<E>(self, _: u128) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_no_number_holds_do_not_lose_the_places() {
        for v in ["1e400", "-1e400", ".inf", ".nan", "18446744073709551616"] {
            let index = SpanIndex::build(&format!("a: {v}\nb:\n  c: x\n"));
            assert_eq!(index.locate("b.c"), Some((3, 6)), "after a: {v}");
        }
        assert_eq!(
            top_level_keys("a: .inf\nb: 1\n"),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
    }

    #[test]
    fn a_top_level_field_left_out_is_placed_at_the_start() {
        let index = SpanIndex::build("# a comment\nname: x\n");
        assert!(index.locate("duration").is_some_and(|(line, _)| line <= 2));
        assert_eq!(SpanIndex::build("[unclosed").locate("duration"), None);
    }

    #[test]
    fn paths_name_their_lines() {
        let text = "a:\n  b: 1\n  list:\n    - x: 1\n    - x: 2\n      y: [3, 4]\nc: text\n";
        let index = SpanIndex::build(text);
        assert_eq!(index.locate("a.b").map(|p| p.0), Some(2));
        assert_eq!(index.locate("a.list[0].x").map(|p| p.0), Some(4));
        assert_eq!(index.locate("a.list[1].y").map(|p| p.0), Some(6));
        assert_eq!(index.locate("a.list[1].y[1]").map(|p| p.0), Some(6));
        assert_eq!(index.locate("c").map(|p| p.0), Some(7));
    }

    #[test]
    fn an_absent_field_is_placed_at_its_parent() {
        let index = SpanIndex::build("outer:\n  - n: 1\n  - n: 2\n");
        assert_eq!(index.locate("outer[1].missing").map(|p| p.0), Some(3));
        // Not in the file at all: the document's start.
        assert_eq!(index.locate("elsewhere").map(|p| p.0), Some(1));
    }

    #[test]
    fn top_level_keys_in_order() {
        assert_eq!(
            top_level_keys("b: 1\na: { c: 2 }\n"),
            Some(vec!["b".to_owned(), "a".to_owned()])
        );
        assert_eq!(top_level_keys("- 1\n"), None);
        assert_eq!(top_level_keys("a: [\n"), None);
    }

    #[test]
    fn broken_text_indexes_nothing() {
        assert_eq!(SpanIndex::build("a: [1,\n").locate("a"), None);
    }
}
