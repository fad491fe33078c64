//! Property tests of manifest loading over arbitrary YAML: documents built from the
//! schema's own field names with values of every type, the example manifest with
//! random edits, and token soup. Whatever comes in, loading never panics, and every
//! problem names its source, a document that exists and a field path — empty only when
//! the document as a whole is at fault (not YAML, not a mapping, over the size or alias
//! budget), and then the message says which.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

use orch_api::manifest::{load_manifests, load_sources, ManifestError};
use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

/// The schema's field names (camelCase, as written), and a few that are not.
#[rustfmt::skip]
const KEYS: &[&str] = &[
    "apiVersion", "kind", "metadata", "spec", "name", "labels", "image", "replicas", "ports", "containerPort", "servicePort", "nodePort", "protocol",
    "env", "value", "valueFrom", "command", "args", "resources", "limits", "requests", "memory", "cpu", "pids", "probes", "liveness", "readiness",
    "startup", "httpGet", "httpHeaders", "tcpSocket", "exec", "path", "port", "periodSeconds", "timeoutSeconds", "failureThreshold",
    "successThreshold", "initialDelaySeconds", "update", "maxSurge", "maxUnavailable", "volumes", "volumeMounts", "mountPath", "readOnly", "emptyDir",
    "hostPath", "config", "secret", "items", "key", "mode", "defaultMode", "subPath", "securityContext", "runAsUser", "runAsGroup",
    "readOnlyRootFilesystem", "capabilities", "add", "drop", "seccompProfile", "type", "userNamespace", "logs", "maxSize", "maxFiles",
    "restartPolicy", "restartBackoff", "initialMillis", "maxSeconds", "resetAfterSeconds", "terminationGracePeriodSeconds", "nodeSelector",
    "imagePullPolicy", "data", "binaryData", "configKey", "secretKey", "medium", "sizeLimit", "local", "user", "privileged", "replica", "",
];

/// Scalars the validation has opinions about.
#[rustfmt::skip]
const WORDS: &[&str] = &[
    "orch/v1", "orch/v2", "Service", "Config", "Secret", "Pod", "web", "Web_1", "a", "TCP", "UDP", "SCTP", "http", "10Mi", "1Gi", "0", "-1", "250m",
    "1.5", "1e400", "0x1F", "busybox", "127.0.0.1:5000/orch/demo-web:1.0", "registry/x@sha256:00", "/", "/data", "../etc", "", "Always", "Never",
    "OnFailure", "IfNotPresent", "RuntimeDefault", "Unconfined", "ALL", "NET_ADMIN", "SYS_ADMIN", "Memory", "a=b", "~", "null", "true", "é", "\u{0}",
    "x\ny", "  ", "30080", "65536", "99999999999999999999",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(WORDS).prop_map(str::to_owned),
        1 => prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter),
    ]
}

fn key() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => prop::sample::select(KEYS).prop_map(|k| Value::String(k.to_owned())),
        1 => word().prop_map(Value::String),
        1 => any::<i64>().prop_map(|n| Value::Number(n.into())),
        1 => Just(Value::Null),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        (0u32..70_000).prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|n| Value::Number(n.into())),
        word().prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((key(), inner), 0..6).prop_map(|entries| Value::Mapping(entries.into_iter().collect::<Mapping>())),
        ]
    })
}

/// A document that looks like a manifest: the four top-level fields, each usually
/// there and usually right, then anything.
fn document() -> impl Strategy<Value = Value> {
    let api = prop_oneof![4 => Just(Value::String("orch/v1".into())), 1 => value()];
    let kind = prop_oneof![
        4 => prop::sample::select(&["Service", "Config", "Secret"][..]).prop_map(|k| Value::String(k.into())),
        1 => value(),
    ];
    let metadata = prop_oneof![
        4 => (word(), value()).prop_map(|(name, labels)| {
            let mut m = Mapping::new();
            m.insert("name".into(), Value::String(name));
            m.insert("labels".into(), labels);
            Value::Mapping(m)
        }),
        1 => value(),
    ];
    let spec = prop_oneof![
        3 => (prop::sample::select(WORDS), prop::collection::vec((key(), value()), 0..6)).prop_map(|(image, entries)| {
            let mut m: Mapping = entries.into_iter().collect();
            m.insert("image".into(), Value::String(image.to_owned()));
            Value::Mapping(m)
        }),
        1 => value(),
    ];
    let present = prop::collection::vec(prop::bool::weighted(0.9), 4);
    (present, api, kind, metadata, spec, prop::collection::vec((key(), value()), 0..2), prop::bool::weighted(0.05), value()).prop_map(
        |(present, api, kind, metadata, spec, extra, not_a_mapping, other)| {
            if not_a_mapping {
                return other;
            }
            let mut m = Mapping::new();
            for (i, (name, field)) in [("apiVersion", api), ("kind", kind), ("metadata", metadata), ("spec", spec)].into_iter().enumerate() {
                if present[i] {
                    m.insert(name.into(), field);
                }
            }
            m.extend(extra);
            Value::Mapping(m)
        },
    )
}

/// The beginnings of the messages of whole-document problems (no field to name).
const WHOLE_DOCUMENT: &[&str] = &["invalid YAML: ", "expected a mapping with apiVersion", "more than "];

/// How many documents `text` has, up to the first that is not YAML (the parser's
/// iterator repeats that one without end).
fn document_count(text: &str) -> usize {
    let mut count = 0;
    for document in serde_yaml::Deserializer::from_str(text) {
        count += 1;
        if serde::Deserialize::deserialize(document).map(|_: Value| ()).is_err() {
            break;
        }
    }
    count.max(1)
}

/// Loading `text` gives services or problems, each of which is located.
fn assert_located(text: &str) -> Result<(), TestCaseError> {
    let documents = document_count(text);
    match load_manifests("prop.yaml", text) {
        Ok(_) => {}
        Err(errors) => {
            prop_assert!(!errors.is_empty(), "an error without a problem");
            for error in &errors {
                check_error(error, documents)?;
            }
        }
    }
    // The same through the apply path (several sources share one budget).
    if let Err(errors) = load_sources([("prop.yaml", text), ("other.yaml", "")]) {
        for error in &errors {
            check_error(error, documents)?;
        }
    }
    Ok(())
}

fn check_error(error: &ManifestError, documents: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(&error.source_name, "prop.yaml", "{}", error);
    prop_assert!((1..=documents).contains(&error.document), "document {} of {}: {}", error.document, documents, error);
    prop_assert!(!error.message.trim().is_empty(), "no message: {:?}", error);
    if error.path.is_empty() {
        prop_assert!(WHOLE_DOCUMENT.iter().any(|p| error.message.starts_with(p)), "a problem with no field path: {}", error);
    } else {
        prop_assert!(!error.path.starts_with('.') && !error.path.ends_with('.'), "malformed field path: {}", error);
    }
    Ok(())
}

/// A value that can be found again in an error message: a number, a string, or one
/// inside a list or a mapping; `marker` tells them apart.
fn secret_value(shape: u8, marker: usize) -> Value {
    let text = format!("s3cr3t{marker}x");
    match shape % 5 {
        0 => Value::Number((987_650 + marker as u64).into()),
        1 => Value::String(text),
        2 => Value::Sequence(vec![Value::String(text)]),
        3 => Value::Mapping([(Value::String(text.clone()), Value::String(text))].into_iter().collect()),
        _ => Value::Bool(true),
    }
}

/// Everything a Secret's values are written as, for a search of the messages.
fn secret_markers(count: usize) -> Vec<String> {
    (0..count).flat_map(|m| [format!("s3cr3t{m}x"), (987_650 + m).to_string()]).collect()
}

fn config() -> ProptestConfig {
    // Failures print the smallest input found; nothing is written to the source tree.
    ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_documents_load_or_name_a_field(docs in prop::collection::vec(document(), 1..4)) {
        let texts: Vec<String> = docs.iter().filter_map(|d| serde_yaml::to_string(d).ok()).collect();
        prop_assume!(!texts.is_empty());
        assert_located(&texts.join("---\n"))?;
    }

    #[test]
    fn the_example_manifest_with_random_edits_loads_or_names_a_field(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..8, prop::sample::select(&[
            "", " ", "\n", ":", "- ", "  ", "\t", "&a ", "*a", "{", "}", "[", "]", "'", "\"", "#", "---\n", "!!str ", "? ", "|", ">", "%", "@", "0", "-1",
            "é", "\u{feff}", "\r",
        ][..])), 1..6),
    ) {
        let mut text = include_str!("../../manifests/webapp.yaml").to_owned();
        for (at, remove, insert) in edits {
            let mut start = at.index(text.len() + 1);
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = (start + remove).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            text.replace_range(start..end, insert);
        }
        assert_located(&text)?;
    }

    #[test]
    fn token_soup_loads_or_names_a_field(tokens in prop::collection::vec(prop::sample::select(&[
        "apiVersion: orch/v1\n", "kind: Service\n", "kind: Secret\n", "metadata:\n", "  name: x\n", "spec:\n", "  image: busybox\n", "  ports:\n",
        "  - containerPort: 80\n", "a", ":", " ", "\n", "- ", "  ", "{", "}", "[", "]", ",", "&x ", "*x", "!!binary ", "!!map ", "<<: ", "'", "\"",
        "#", "---\n", "...\n", "~", "0x", "9", ".inf", "é",
    ][..]), 0..60)) {
        assert_located(&tokens.concat())?;
    }

    #[test]
    fn a_secrets_values_are_never_in_an_error(
        data in prop::collection::vec((key(), any::<u8>()), 0..5),
        binary in prop::collection::vec((key(), any::<u8>()), 0..5),
        whole in prop::option::weighted(0.2, (any::<bool>(), any::<u8>())),
    ) {
        let mut marker = 0;
        let mut section = |entries: Vec<(Value, u8)>| -> Value {
            Value::Mapping(entries.into_iter().map(|(k, shape)| { marker += 1; (k, secret_value(shape, marker)) }).collect())
        };
        let mut doc = Mapping::new();
        doc.insert("apiVersion".into(), "orch/v1".into());
        doc.insert("kind".into(), "Secret".into());
        doc.insert("metadata".into(), Value::Mapping([("name".into(), "s".into())].into_iter().collect()));
        doc.insert("data".into(), section(data));
        doc.insert("binaryData".into(), section(binary));
        if let Some((in_data, shape)) = whole {
            marker += 1;
            doc.insert(if in_data { "data" } else { "binaryData" }.into(), secret_value(shape, marker));
        }
        let text = serde_yaml::to_string(&Value::Mapping(doc)).expect("yaml");
        if let Err(errors) = load_manifests("prop.yaml", &text) {
            for error in &errors {
                let shown = error.to_string();
                for secret in secret_markers(marker + 1) {
                    prop_assert!(!shown.contains(&secret), "a Secret's value in an error: {}", shown);
                }
            }
        }
    }
}
