//! Fuzzing the label-selector parser (`gofe_metrics_adapter::selector`) on stable Rust with
//! proptest: text an HPA (or anyone reaching the adapter) sends in `labelSelector`.
//!
//! Bounded: a few hundred cases per property, so it stays in CI's budget. Failing cases are
//! saved to `metrics-adapter/proptest-regressions/fuzz_selector.txt` and replayed first on
//! every run (commit that file when it appears).

use gofe_metrics_adapter::selector::{
    Operator, Selector, SelectorError, MAX_REQUIREMENTS, MAX_SELECTOR_BYTES, MAX_SET_VALUES,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

fn config(cases: u32) -> Config {
    Config {
        // More on demand: PROPTEST_CASES=100000.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/fuzz_selector.txt",
        ))),
        ..Config::default()
    }
}

/// Selector-shaped text: the grammar's tokens and some that are near them, in any order.
fn selectorish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("app".to_owned()),
        Just("tier".to_owned()),
        Just("app.kubernetes.io/name".to_owned()),
        Just("x_y".to_owned()),
        Just("web-1".to_owned()),
        Just("=".to_owned()),
        Just("==".to_owned()),
        Just("!=".to_owned()),
        Just("!".to_owned()),
        Just(" in ".to_owned()),
        Just(" notin ".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just(",".to_owned()),
        Just(" ".to_owned()),
        Just("\"".to_owned()),
        Just("'".to_owned()),
        Just("\\".to_owned()),
        Just("}".to_owned()),
        Just("~".to_owned()),
        "[a-z0-9._/-]{1,70}",
        "\\PC{1,4}",
    ];
    proptest::collection::vec(token, 0..24).prop_map(|t| t.concat())
}

/// Whether `e`'s own checks hold: a syntax error points inside the text.
fn error_is_well_formed(text: &str, e: &SelectorError) -> bool {
    match e {
        SelectorError::Syntax { at, reason } => *at <= text.len() && !reason.is_empty(),
        _ => !e.to_string().is_empty(),
    }
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary text never panics; a refusal is an error that points inside the text.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        if let Err(e) = Selector::parse(&text) {
            prop_assert!(error_is_well_formed(&text, &e), "{text:?}: {e:?}");
        }
    }

    /// Selector-shaped text: whatever parses stays within the bounds, prints to text that
    /// parses to the same selector (what the adapter logs and keys its cache by), and turns
    /// into Prometheus matchers without panicking.
    #[test]
    fn what_parses_round_trips_and_stays_bounded(text in selectorish()) {
        match Selector::parse(&text) {
            Ok(sel) => {
                prop_assert!(sel.requirements.len() <= MAX_REQUIREMENTS);
                for r in &sel.requirements {
                    if let Operator::In(v) | Operator::NotIn(v) = &r.op {
                        prop_assert!(!v.is_empty() && v.len() <= MAX_SET_VALUES, "{text:?}");
                    }
                    let _ = r.to_matcher(&r.key);
                }
                let printed = sel.to_string();
                let again = Selector::parse(&printed);
                prop_assert_eq!(again.as_ref(), Ok(&sel), "{:?} printed as {:?}", text, printed);
                prop_assert!(sel.equalities().count() <= sel.requirements.len());
            }
            Err(e) => prop_assert!(error_is_well_formed(&text, &e), "{text:?}: {e:?}"),
        }
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// Text over the size bound is refused as too large before it is parsed at all.
    #[test]
    fn oversized_text_is_refused_as_too_large(extra in 1usize..2048, key in "[a-z]{1,8}") {
        let mut text = format!("{key}=");
        text.push_str(&"a,".repeat((MAX_SELECTOR_BYTES + extra) / 2));
        prop_assert!(text.len() > MAX_SELECTOR_BYTES);
        let refused = matches!(Selector::parse(&text), Err(SelectorError::TooLarge { .. }));
        prop_assert!(refused);
    }

    /// More requirements than the bound are refused, however they are written.
    #[test]
    fn too_many_requirements_are_refused(n in (MAX_REQUIREMENTS + 1)..(MAX_REQUIREMENTS * 3)) {
        let text: Vec<String> = (0..n).map(|i| format!("k{i}=v")).collect();
        prop_assert!(Selector::parse(&text.join(",")).is_err());
    }
}
