//! `gofe inject`'s input and output: Kubernetes manifests as multi-document YAML, JSON (one
//! object, or several in a stream) and `kind: List`, each pod template found and injected.
//!
//! Pod templates are found in Pods, Deployments, StatefulSets, DaemonSets, ReplicaSets,
//! ReplicationControllers, Jobs (`spec.template`) and CronJobs (`spec.jobTemplate.spec.template`),
//! and in the items of any `List`. Other objects pass through unchanged. YAML comments and key
//! order are not kept (the output is the objects, re-serialized).

use serde_json::Value;

use crate::{inject_template, kind_of, InjectConfig, InjectError, Outcome};

/// Why manifests could not be injected: the document (0-based, in input order), what it is,
/// and the error.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The text is not YAML or JSON.
    #[error("document {index} (from line {line}): {message}")]
    Syntax {
        /// The document's index.
        index: usize,
        /// Its first line (1-based).
        line: usize,
        /// The parser's message.
        message: String,
    },
    /// A pod template cannot be injected.
    #[error("document {index} ({object}): {error}")]
    Template {
        /// The document's index.
        index: usize,
        /// `Kind namespace/name` of the object.
        object: String,
        /// The field (from the object's root) and what is wrong.
        error: InjectError,
    },
}

/// One pod template's fate, for the report `gofe inject` prints on stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injected {
    /// The document's index.
    pub index: usize,
    /// `Kind namespace/name` (with `items[i]` for a List's item).
    pub object: String,
    /// What happened.
    pub outcome: Outcome,
}

/// The input's format; the output is written in the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// YAML documents separated by `---`.
    Yaml,
    /// JSON values (one, or several in a stream).
    Json,
}

/// The documents of `text` (JSON when its first non-blank character is `{` or `[`, else YAML).
/// Empty YAML documents are dropped.
pub fn parse(text: &str) -> Result<(Format, Vec<Value>), ManifestError> {
    if text.trim_start().starts_with(['{', '[']) {
        let mut docs = Vec::new();
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
        loop {
            let offset = stream.byte_offset();
            match stream.next() {
                None => break,
                Some(Ok(v)) => docs.push(v),
                Some(Err(e)) => {
                    return Err(ManifestError::Syntax {
                        index: docs.len(),
                        line: text[..offset].lines().count().max(1),
                        message: e.to_string(),
                    })
                }
            }
        }
        return Ok((Format::Json, docs));
    }
    let mut docs = Vec::new();
    for (index, (line, doc)) in split_yaml(text).into_iter().enumerate() {
        if doc.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            continue;
        }
        let value: Value = serde_saphyr::from_str(doc).map_err(|e| ManifestError::Syntax {
            index,
            line,
            message: e.to_string(),
        })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok((Format::Yaml, docs))
}

/// YAML documents, split at `---` lines as kubectl splits them: (first line, text).
fn split_yaml(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            out.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start..]));
    out
}

/// `Kind namespace/name` of an object, for messages.
fn describe(object: &Value) -> String {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("(no kind)");
    let meta = object.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(no name)");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Where an object of `kind` keeps its pod template (`None`: it has none).
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Injects one object (recursing into a List's items); `at` is its path within the document.
fn inject_object(
    object: &mut Value,
    at: &str,
    index: usize,
    config: &InjectConfig,
    report: &mut Vec<Injected>,
) -> Result<(), ManifestError> {
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_owned()
        } else {
            format!("{a}.{b}")
        }
    };
    let fail = |object: &Value, error: InjectError| ManifestError::Template {
        index,
        object: describe(object),
        error,
    };
    let Some(map) = object.as_object() else {
        return Err(fail(
            object,
            InjectError {
                field: if at.is_empty() {
                    "(document)".into()
                } else {
                    at.into()
                },
                message: format!(
                    "expected a Kubernetes object (a map), got {}",
                    kind_of(object)
                ),
            },
        ));
    };
    let kind = map
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if kind == "List" || (kind.ends_with("List") && map.get("items").is_some_and(Value::is_array)) {
        let items = match object.get_mut("items") {
            Some(Value::Array(items)) => items,
            None | Some(Value::Null) => return Ok(()),
            Some(other) => {
                let message = format!("expected a list, got {}", kind_of(other));
                return Err(fail(
                    object,
                    InjectError {
                        field: join(at, "items"),
                        message,
                    },
                ));
            }
        };
        for (i, item) in items.iter_mut().enumerate() {
            inject_object(
                item,
                &join(at, &format!("items[{i}]")),
                index,
                config,
                report,
            )?;
        }
        return Ok(());
    }
    let Some(path) = template_path(&kind) else {
        return Ok(());
    };
    let described = describe(object);
    let mut template = &mut *object;
    let mut walked = at.to_owned();
    for key in path {
        let here = join(&walked, key);
        template = match template.get_mut(*key) {
            Some(next) if next.is_object() => next,
            found => {
                let message = match found {
                    None | Some(Value::Null) => format!("missing: a {kind} needs one"),
                    Some(other) => format!("expected a map, got {}", kind_of(other)),
                };
                return Err(ManifestError::Template {
                    index,
                    object: described,
                    error: InjectError {
                        field: here,
                        message,
                    },
                });
            }
        };
        walked = here;
    }
    match inject_template(template, config) {
        Ok(outcome) => {
            report.push(Injected {
                index,
                object: if at.is_empty() {
                    described
                } else {
                    format!("{described} ({at})")
                },
                outcome,
            });
            Ok(())
        }
        Err(e) => Err(ManifestError::Template {
            index,
            object: described,
            error: e.within(&walked),
        }),
    }
}

/// Injects every pod template of `docs`, in place.
pub fn inject_documents(
    docs: &mut [Value],
    config: &InjectConfig,
) -> Result<Vec<Injected>, ManifestError> {
    let mut report = Vec::new();
    for (index, doc) in docs.iter_mut().enumerate() {
        inject_object(doc, "", index, config, &mut report)?;
    }
    Ok(report)
}

/// The documents as text in `format`.
pub fn render(format: Format, docs: &[Value]) -> String {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        match format {
            Format::Json => {
                out.push_str(&serde_json::to_string_pretty(doc).unwrap_or_default());
                out.push('\n');
            }
            Format::Yaml => {
                if i > 0 {
                    out.push_str("---\n");
                }
                out.push_str(&serde_saphyr::to_string(doc).unwrap_or_default());
                if !out.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
    }
    out
}

/// Parses `text`, injects every pod template and renders the result in the input's format.
pub fn inject_manifests(
    text: &str,
    config: &InjectConfig,
) -> Result<(String, Vec<Injected>), ManifestError> {
    let (format, mut docs) = parse(text)?;
    let report = inject_documents(&mut docs, config)?;
    Ok((render(format, &docs), report))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: web, namespace: shop }\nspec:\n  selector: { matchLabels: { app: web } }\n  template:\n    metadata: { labels: { app: web } }\n    spec:\n      containers:\n        - name: web\n          image: nginx\n          ports: [{ containerPort: 8080 }]\n";

    fn proxies(template: &Value) -> usize {
        let spec = &template["spec"];
        ["containers", "initContainers"]
            .iter()
            .filter_map(|f| spec[*f].as_array())
            .flatten()
            .filter(|c| c["name"] == "gofe-proxy")
            .count()
    }

    #[test]
    fn every_workload_kind_gets_one_proxy_in_its_pod_template() {
        let pod_spec = "spec: { containers: [{ name: app, image: app }] }";
        let text = format!(
            "{DEPLOYMENT}---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: p }}\n{pod_spec}\n---\n\
             apiVersion: batch/v1\nkind: CronJob\nmetadata: {{ name: c }}\nspec:\n  schedule: '* * * * *'\n  jobTemplate:\n    spec:\n      template:\n        {pod_spec}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{ name: s }}\nspec: {{ ports: [{{ port: 80 }}] }}\n"
        );
        let (format, mut docs) = parse(&text).unwrap();
        assert_eq!(format, Format::Yaml);
        let report = inject_documents(&mut docs, &InjectConfig::default()).unwrap();
        assert_eq!(report.len(), 3, "{report:?}");
        assert!(report.iter().all(|r| r.outcome == Outcome::Injected));
        assert_eq!(proxies(&docs[0]["spec"]["template"]), 1);
        assert_eq!(proxies(&docs[1]), 1);
        assert_eq!(
            proxies(&docs[2]["spec"]["jobTemplate"]["spec"]["template"]),
            1
        );
        assert!(
            docs[3]["spec"].get("containers").is_none(),
            "a Service is left alone"
        );
        assert_eq!(docs[3]["spec"]["ports"][0]["port"], 80);
    }

    #[test]
    fn statefulsets_daemonsets_replicasets_and_jobs_use_spec_template() {
        for kind in ["StatefulSet", "DaemonSet", "ReplicaSet", "Job"] {
            let text = DEPLOYMENT.replace("kind: Deployment", &format!("kind: {kind}"));
            let (out, report) = inject_manifests(&text, &InjectConfig::default()).unwrap();
            assert_eq!(report[0].outcome, Outcome::Injected, "{kind}");
            let (_, docs) = parse(&out).unwrap();
            assert_eq!(proxies(&docs[0]["spec"]["template"]), 1, "{kind}");
        }
    }

    #[test]
    fn a_list_s_items_are_injected_and_json_stays_json() {
        let list = serde_json::json!({
            "apiVersion": "v1", "kind": "List",
            "items": [
                serde_json::from_str::<Value>(&serde_json::to_string(&parse(DEPLOYMENT).unwrap().1[0]).unwrap()).unwrap(),
                { "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "c" }, "data": { "a": "1" } }
            ]
        });
        let (out, report) = inject_manifests(&list.to_string(), &InjectConfig::default()).unwrap();
        assert_eq!(report.len(), 1);
        assert_eq!(report[0].object, "Deployment shop/web (items[0])");
        let back: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(proxies(&back["items"][0]["spec"]["template"]), 1);
        assert_eq!(back["items"][1]["data"]["a"], "1");
    }

    #[test]
    fn injecting_twice_changes_nothing() {
        let config = InjectConfig::default();
        let (once, _) = inject_manifests(DEPLOYMENT, &config).unwrap();
        let (twice, report) = inject_manifests(&once, &config).unwrap();
        assert_eq!(report[0].outcome, Outcome::AlreadyInjected);
        assert_eq!(once, twice);
    }

    #[test]
    fn yaml_output_reads_back_as_the_same_objects_with_strings_kept_strings() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: c, annotations: { a: \"true\", b: \"8080\", c: \"\", d: \"1.0\", e: \"null\" } }\ndata: { k: \"yes\" }\n";
        let (format, docs) = parse(text).unwrap();
        let out = render(format, &docs);
        let (_, back) = parse(&out).unwrap();
        assert_eq!(back, docs, "{out}");
        assert_eq!(
            back[0]["metadata"]["annotations"]["a"],
            Value::String("true".into())
        );
    }

    #[test]
    fn malformed_input_names_the_document_and_the_field() {
        let bad = DEPLOYMENT.replace("      containers:\n        - name: web\n          image: nginx\n          ports: [{ containerPort: 8080 }]\n", "      containers: web\n");
        let text =
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{ name: shop }}\n---\n{bad}");
        let e = inject_manifests(&text, &InjectConfig::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "document 1 (Deployment shop/web): spec.template.spec.containers: expected a list, got a string"
        );
        let e = inject_manifests(
            "kind: Deployment\nmetadata: { name: x }\nspec: {}\n",
            &InjectConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "document 0 (Deployment x): spec.template: missing: a Deployment needs one"
        );
        let e = inject_manifests("a: 1\n---\nkind: [unclosed\n", &InjectConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("document 1 (from line 3): "), "{e}");
        let e = inject_manifests("{\"kind\": \"Pod\"} {oops", &InjectConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("document 1 (from line 1): "), "{e}");
        let e = inject_manifests("- 1\n- 2\n", &InjectConfig::default())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "document 0 ((no kind) (no name)): (document): expected a Kubernetes object (a map), got a list");
    }

    #[test]
    fn empty_documents_and_comments_are_dropped() {
        let (_, docs) = parse("---\n# only a comment\n---\napiVersion: v1\nkind: Namespace\nmetadata: { name: a }\n---\n").unwrap();
        assert_eq!(docs.len(), 1);
    }
}
