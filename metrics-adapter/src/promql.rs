//! PromQL checking at load: every rule template is rendered with placeholder values and
//! parsed by [`promql_parser`], so a typo in a `metricsQuery` fails when the adapter starts,
//! not at the first HPA request.

use crate::rules::Template;
use crate::selector::Matcher;

/// A template whose rendering is not valid PromQL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not valid PromQL once rendered ({rendered}): {message}")]
pub struct PromqlError {
    /// The template rendered with placeholders.
    pub rendered: String,
    /// The parser's message.
    pub message: String,
}

/// Parses `query` as PromQL.
pub fn check(query: &str) -> Result<(), PromqlError> {
    promql_parser::parser::parse(query)
        .map(|_| ())
        .map_err(|message| PromqlError {
            rendered: query.to_owned(),
            message,
        })
}

/// Renders `template` with a placeholder series name (`gofe_series`), two label matchers and
/// two group-by labels, and parses the result.
pub fn check_template(template: &Template) -> Result<(), PromqlError> {
    let matchers = [
        Matcher::equals("namespace", "ns"),
        Matcher::one_of("pod", &["a".to_owned(), "b".to_owned()]),
    ];
    let rendered = template.render(
        "gofe_series",
        &matchers,
        &["pod".to_owned(), "container".to_owned()],
    );
    check(&rendered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_are_caught_and_good_templates_pass() {
        let ok =
            Template::parse("sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)")
                .unwrap();
        assert_eq!(check_template(&ok), Ok(()));
        let typo =
            Template::parse("sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m]) by (<<.GroupBy>>)")
                .unwrap();
        let err = check_template(&typo).unwrap_err();
        assert!(
            err.rendered.contains("gofe_series{namespace=\"ns\""),
            "{err}"
        );
        let slice = Template::parse("sum(<<.Series>>) by (<<.GroupBySlice>>)").unwrap();
        assert!(
            check_template(&slice).is_err(),
            "Go's [a b] is no label list"
        );
    }
}
