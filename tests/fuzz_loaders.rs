//! Fuzzing every YAML loader gofe ships (issue 16) on stable Rust with proptest: the proxy's
//! file, the controller's, the metrics adapter's rules (prometheus-adapter's format), a
//! simulator scenario and a proxy bootstrap, each from a real example, mutated the ways
//! hand-edited YAML goes wrong (junk typed in, a line lost, a line repeated, indentation
//! shifted, a value replaced) — never panics, and every refusal names the line of each of its
//! problems. Arbitrary text never panics any of them.
//!
//! Bounded: a few hundred cases per property (more on demand: `PROPTEST_CASES=100000`).
//! Failing cases are saved to `proptest-regressions/fuzz_loaders.txt` and replayed first on
//! every run.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

/// A loader's refusal, as the property sees it: each problem, and whether it has a line.
type Problems = Vec<(String, bool)>;

fn problems(e: &gofe_yaml::ConfigError) -> Problems {
    e.problems()
        .iter()
        .map(|p| (p.to_string(), p.line.is_some()))
        .collect()
}

/// A loader: its name, a real example of its file, and what it makes of a text.
type Loader = (&'static str, &'static str, fn(&str) -> Option<Problems>);

/// The loaders, each with a real example of its file.
fn loaders() -> Vec<Loader> {
    vec![
        ("proxy", include_str!("../examples/up.yaml"), |t| {
            gofe_proxy::config::parse("f.yaml", t)
                .err()
                .map(|e| problems(&e))
        }),
        (
            "controller",
            include_str!("../examples/loop/controller.yaml"),
            |t| {
                gofe_controller::config::parse("f.yaml", t)
                    .err()
                    .map(|e| problems(&e))
            },
        ),
        (
            "adapter",
            include_str!("../metrics-adapter/tests/fixtures/prometheus-adapter/sample-config.yaml"),
            |t| {
                gofe_metrics_adapter::config::parse("f.yaml", t)
                    .err()
                    .map(|e| problems(&e))
            },
        ),
        ("scenario", include_str!("../up/scenario.yaml"), |t| {
            gofe_sim::scenario::parse("f.yaml", t)
                .err()
                .map(|e| problems(&e))
        }),
        (
            "bootstrap",
            include_str!("../examples/loop/bootstrap.yaml"),
            |t| {
                gofe_yaml::parse::<gofe_proxy::xds::bootstrap::Bootstrap>("f.yaml", t)
                    .err()
                    .map(|e| problems(&e))
            },
        ),
    ]
}

fn config(cases: u32) -> Config {
    Config {
        // More on demand: PROPTEST_CASES=100000.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz_loaders.txt",
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
    #![proptest_config(config(256))]

    /// One to three edits of a loader's example: never a panic; a refusal names a line for
    /// each of its problems.
    #[test]
    fn an_edited_example_never_panics_and_every_problem_has_a_line(
        which in 0usize..5,
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let (name, sample, load) = loaders()[which];
        let text = edits.iter().fold(sample.to_owned(), |t, e| apply(&t, e));
        if let Some(problems) = load(&text) {
            prop_assert!(!problems.is_empty(), "{name}: an error with no problem");
            for (p, has_line) in problems {
                prop_assert!(has_line, "{name}: no line for {p} after {edits:?}\n{text}");
            }
        }
    }

    /// Arbitrary text never panics a loader.
    #[test]
    fn arbitrary_text_never_panics(which in 0usize..5, text in "\\PC{0,400}") {
        let _ = (loaders()[which].2)(&text);
    }
}

#[test]
fn the_examples_themselves_load() {
    for (name, sample, load) in loaders() {
        assert_eq!(load(sample), None, "{name}");
    }
}
