//! Fuzzing the proxy configuration loader (`gofe_model::parse`, on `gofe-yaml`) on stable Rust
//! with proptest: the shipped example, mutated the ways hand-edited YAML goes wrong (junk
//! typed in, a line lost, a line repeated, indentation shifted, a value replaced), never
//! panics, and every refusal names the line it is about.
//!
//! Bounded: a few hundred cases per property. Failing cases are saved to
//! `model/proptest-regressions/fuzz_config.txt` and replayed first on every run.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

const SAMPLE: &str = include_str!("../../examples/up.yaml");

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz_config.txt",
        ))),
        ..Config::default()
    }
}

/// One edit of a YAML text, by line.
#[derive(Clone, Debug)]
enum Edit {
    /// Insert text at a byte offset (moved back to a character boundary).
    Insert(usize, String),
    /// Remove a line.
    DropLine(usize),
    /// Repeat a line.
    RepeatLine(usize),
    /// Indent (or, with 0, dedent) a line by two spaces.
    Shift(usize, bool),
    /// Replace what follows the first `: ` on a line.
    Value(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let junk = "[\\[\\]{}:,\"'*&!|>#%@`\\- a-z0-9\t\n]{1,8}";
    let value = prop_oneof![
        Just("".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        Just("\"5\"".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("~".to_owned()),
        Just("true".to_owned()),
        Just("\"999.999.999.999:80\"".to_owned()),
        Just("\"10 parsecs\"".to_owned()),
        Just("*anchor".to_owned()),
        Just("&a [*a]".to_owned()),
        Just("18446744073709551616".to_owned()),
        "\\PC{0,6}",
    ];
    prop_oneof![
        (0usize..4000, junk).prop_map(|(at, s)| Edit::Insert(at, s)),
        (0usize..200).prop_map(Edit::DropLine),
        (0usize..200).prop_map(Edit::RepeatLine),
        (0usize..200, any::<bool>()).prop_map(|(l, i)| Edit::Shift(l, i)),
        (0usize..200, value).prop_map(|(l, v)| Edit::Value(l, v)),
    ]
}

fn apply(text: &str, e: &Edit) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let n = lines.len().max(1);
    match e {
        Edit::Insert(at, s) => {
            let mut t = text.to_owned();
            let at = (*at).min(t.len());
            let at = (0..=at).rev().find(|&i| t.is_char_boundary(i)).unwrap_or(0);
            t.insert_str(at, s);
            return t;
        }
        Edit::DropLine(l) => {
            if !lines.is_empty() {
                lines.remove(l % n);
            }
        }
        Edit::RepeatLine(l) => {
            if !lines.is_empty() {
                let line = lines[l % n].clone();
                lines.insert(l % n, line);
            }
        }
        Edit::Shift(l, indent) => {
            if let Some(line) = lines.get_mut(l % n) {
                if *indent {
                    line.insert_str(0, "  ");
                } else if let Some(rest) = line.strip_prefix("  ") {
                    *line = rest.to_owned();
                }
            }
        }
        Edit::Value(l, v) => {
            if let Some(line) = lines.get_mut(l % n) {
                if let Some((key, _)) = line.split_once(": ") {
                    *line = format!("{key}: {v}");
                }
            }
        }
    }
    lines.join("\n") + "\n"
}

proptest! {
    #![proptest_config(config(384))]

    /// One to three edits of the example: never a panic; a refusal names a line for each of
    /// its problems.
    #[test]
    fn an_edited_example_never_panics_and_every_problem_has_a_line(
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let text = edits.iter().fold(SAMPLE.to_owned(), |t, e| apply(&t, e));
        if let Err(e) = gofe_model::parse("up.yaml", &text) {
            let problems = e.problems();
            prop_assert!(!problems.is_empty(), "an error with no problem: {e}");
            for p in problems {
                prop_assert!(
                    p.line.is_some(),
                    "no line for {p} after {edits:?}\n{text}"
                );
            }
        }
    }

    /// Arbitrary text never panics the loader.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let _ = gofe_model::parse("fuzz.yaml", &text);
    }
}

#[test]
fn the_example_itself_parses() {
    gofe_model::parse("up.yaml", SAMPLE).unwrap();
}
