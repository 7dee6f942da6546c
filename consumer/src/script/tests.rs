#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value as Json, json};
use sluice_common::config::{Problem, SinkConfig};

use super::shorthand::translate;
use super::{EXCLUDED_FUNCTIONS, ScriptError, Scripts, Stage, Verdict, functions};

fn sink(filter: Option<&str>, transform: Option<&str>, timeout: &str) -> SinkConfig {
    serde_json::from_value(json!({
        "name": "products",
        "table": "public.products",
        "filter": filter,
        "transform": transform,
        "transform_timeout": timeout,
        "elasticsearch": { "endpoint": "http://127.0.0.1:9200", "index": "products" },
    }))
    .unwrap()
}

fn scripts(filter: Option<&str>, transform: Option<&str>) -> Scripts {
    Scripts::compile(&sink(filter, transform, "100ms"), 0).unwrap()
}

fn problems(filter: Option<&str>, transform: Option<&str>) -> Vec<Problem> {
    Scripts::compile(&sink(filter, transform, "100ms"), 0).unwrap_err()
}

fn event(action: &str, record: Json) -> Json {
    json!({
        "action": action,
        "record": record,
        "changes": { "price": { "old": 5, "new": 12 } },
        "metadata": { "table": "public.products", "lsn": "0/16B3748" },
    })
}

fn product() -> Json {
    json!({ "id": 7, "name": "lamp", "price": 12.5, "in_stock": true, "secret": "s3" })
}

fn document(verdict: Verdict) -> Json {
    match verdict {
        Verdict::Document(map) => Json::Object(map),
        Verdict::Filtered => panic!("expected a document, got Filtered"),
    }
}

#[test]
fn shorthand_filter_compares_the_record_column() {
    let s = scripts(Some("in_stock = true"), None);
    assert!(s.has_filter());
    assert!(!s.has_transform());
    assert!(s.passes_filter(&event("insert", product())).unwrap());

    let mut out_of_stock = product();
    out_of_stock["in_stock"] = json!(false);
    assert!(
        !s.passes_filter(&event("insert", out_of_stock.clone()))
            .unwrap()
    );
    assert_eq!(
        s.apply(&event("insert", out_of_stock)).unwrap(),
        Verdict::Filtered
    );

    let mut null_column = product();
    null_column["in_stock"] = Json::Null;
    assert!(
        !s.passes_filter(&event("insert", null_column.clone()))
            .unwrap()
    );
    let mut missing_column = product();
    missing_column.as_object_mut().unwrap().remove("in_stock");
    assert!(!s.passes_filter(&event("insert", missing_column)).unwrap());

    // An ordering comparison with a null column is false, not an error.
    let s = scripts(Some("price > 10"), None);
    assert!(s.passes_filter(&event("insert", product())).unwrap());
    let mut null_price = product();
    null_price["price"] = Json::Null;
    assert!(!s.passes_filter(&event("insert", null_price)).unwrap());
    let mut text_price = product();
    text_price["price"] = json!("12.5");
    assert!(!s.passes_filter(&event("insert", text_price)).unwrap());
    let s = scripts(Some("in_stock == null"), None);
    let mut null_column = product();
    null_column["in_stock"] = Json::Null;
    assert!(s.passes_filter(&event("insert", null_column)).unwrap());
}

#[test]
fn shorthand_joins_comparisons_with_and_or() {
    let s = scripts(Some(r#"name != 'chair' AND price >= 12.5 or id = 1"#), None);
    assert!(s.passes_filter(&event("insert", product())).unwrap());
    let cheap = json!({ "id": 2, "name": "lamp", "price": 3 });
    assert!(!s.passes_filter(&event("insert", cheap)).unwrap());
    let first = json!({ "id": 1, "name": "chair", "price": 3 });
    assert!(s.passes_filter(&event("insert", first)).unwrap());

    let s = scripts(Some(r#"name == "lamp" && id < 10"#), None);
    assert!(s.passes_filter(&event("update", product())).unwrap());
}

#[test]
fn shorthand_translation() {
    assert_eq!(
        translate("in_stock = true").unwrap().vrl,
        r#".record."in_stock" == true"#
    );
    assert_eq!(
        translate("price<=-1.5").unwrap().vrl,
        r#"(.record."price" <= -1.5 ?? false)"#
    );
    // Quotes, backslashes and template braces survive as plain text.
    assert_eq!(
        translate(r#"name = 'it\'s {{x}} \\ "q"'"#).unwrap().vrl,
        r#".record."name" == "it's \{\{x\}\} \\ \"q\"""#
    );
    for not_shorthand in [
        ".record.price > 1",
        "price > ",
        "price 1",
        "price = 1 and",
        "price = 1 price = 2",
        "true = price",
        "price = 'open",
        "price = 1.",
        "price = abc",
        "contains(.record.name, \"a\")",
        "",
    ] {
        assert!(translate(not_shorthand).is_none(), "{not_shorthand}");
    }
}

#[test]
fn shorthand_string_with_braces_matches_literally() {
    let s = scripts(Some(r#"name = "{{ .record.id }}""#), None);
    let templated = json!({ "id": 7, "name": "{{ .record.id }}" });
    assert!(s.passes_filter(&event("insert", templated)).unwrap());
    assert!(!s.passes_filter(&event("insert", product())).unwrap());
}

#[test]
fn vrl_filter_over_action_and_metadata() {
    let s = scripts(
        Some(
            r#".action != "delete" && .metadata.table == "public.products" && exists(.changes.price)"#,
        ),
        None,
    );
    assert!(s.passes_filter(&event("insert", product())).unwrap());
    assert!(!s.passes_filter(&event("delete", product())).unwrap());
    let mut other_table = event("insert", product());
    other_table["metadata"]["table"] = json!("public.orders");
    assert!(!s.passes_filter(&other_table).unwrap());
}

#[test]
fn filter_returning_a_non_boolean() {
    // Known at compile time.
    let p = problems(Some(r#""yes""#), None);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "sinks[0].filter");
    assert!(
        p[0].message.contains("must return a boolean"),
        "{}",
        p[0].message
    );

    // Known only at run time.
    let s = scripts(Some(".record.name"), None);
    let error = s.passes_filter(&event("insert", product())).unwrap_err();
    assert_eq!(error.stage, Stage::Filter);
    assert_eq!(error.message, "filter must return a boolean, got string");
}

#[test]
fn filter_may_not_modify_the_event() {
    let p = problems(Some(".record.price = 1\ntrue"), None);
    assert_eq!(p[0].path, "sinks[0].filter");
    assert!(
        p[0].message.starts_with("line 1, column 1:"),
        "{}",
        p[0].message
    );
}

#[test]
fn transform_keeps_some_fields() {
    let s = scripts(
        None,
        Some(r#"{ "name": upcase!(.record.name), "price": .record.price, "op": .action }"#),
    );
    assert_eq!(
        document(s.apply(&event("update", product())).unwrap()),
        json!({ "name": "LAMP", "price": 12.5, "op": "update" })
    );

    let s = scripts(None, Some(". = .record\ndel(.secret)\n."));
    assert_eq!(
        document(s.apply(&event("insert", product())).unwrap()),
        json!({ "id": 7, "name": "lamp", "price": 12.5, "in_stock": true })
    );
}

#[test]
fn filter_then_transform() {
    let s = scripts(Some("price > 100"), Some(r#"{ "id": .record.id }"#));
    assert_eq!(
        s.apply(&event("insert", product())).unwrap(),
        Verdict::Filtered
    );
    let s = scripts(Some("price > 10"), Some(r#"{ "id": .record.id }"#));
    assert_eq!(
        document(s.apply(&event("insert", product())).unwrap()),
        json!({ "id": 7 })
    );
}

#[test]
fn transform_returning_null_is_filtered() {
    let s = scripts(
        None,
        Some("if .record.in_stock == true { .record } else { null }"),
    );
    assert!(matches!(
        s.apply(&event("insert", product())).unwrap(),
        Verdict::Document(_)
    ));
    let mut out_of_stock = product();
    out_of_stock["in_stock"] = json!(false);
    assert_eq!(
        s.apply(&event("insert", out_of_stock)).unwrap(),
        Verdict::Filtered
    );
}

#[test]
fn transform_returning_neither_object_nor_null() {
    let s = scripts(None, Some(".record.name"));
    let error = s.apply(&event("insert", product())).unwrap_err();
    assert_eq!(
        error,
        ScriptError {
            stage: Stage::Transform,
            message: "transform must return an object or null, got string".to_owned(),
        }
    );
    assert_eq!(
        error.to_string(),
        "transform failed: transform must return an object or null, got string"
    );

    let p = problems(None, Some("42"));
    assert_eq!(p[0].path, "sinks[0].transform");
    assert!(p[0].message.contains("object or null"), "{}", p[0].message);
}

#[test]
fn runtime_error_is_a_script_error() {
    let s = scripts(None, Some(r#"{ "id": to_int!(.record.name) }"#));
    let error = s.apply(&event("insert", product())).unwrap_err();
    assert_eq!(error.stage, Stage::Transform);
    assert!(
        error
            .to_string()
            .starts_with(r#"transform failed: function call error for "to_int" at (8:29): "#),
        "{error}"
    );

    let s = scripts(
        Some(r#"assert!(is_string(.record.id), "id must be a string")"#),
        None,
    );
    let error = s.apply(&event("insert", product())).unwrap_err();
    assert_eq!(error.stage, Stage::Filter);
    assert!(error.message.contains("id must be a string"), "{error}");
}

#[test]
fn compile_error_has_path_line_and_column() {
    // VRL points at the fallible call, after `y = `.
    let p = problems(None, Some("x = 1\ny = to_int(.record.name)\n{ \"x\": x }"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "sinks[0].transform");
    assert!(
        p[0].message.starts_with("line 2, column 5: "),
        "{}",
        p[0].message
    );
    assert!(!p[0].fix.is_empty());

    // Columns count characters, not bytes.
    let p = problems(None, Some("{ \"naïve\": 1, \"x\": nope(1) }"));
    assert!(
        p[0].message.starts_with("line 1, column 20: "),
        "{}",
        p[0].message
    );

    // Shorthand filters report positions in the text as written.
    let p = problems(Some("price = 99999999999999999999"), None);
    assert!(
        p[0].message
            .starts_with("line 1, column 9: invalid numeric literal"),
        "{}",
        p[0].message
    );

    // Syntax errors, and both scripts reported at once.
    let p = problems(Some("in_stock = "), Some("{ \"a\": }"));
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].path, "sinks[0].filter");
    assert_eq!(p[1].path, "sinks[0].transform");
    assert!(
        p[1].message.starts_with("line 1, column 8: "),
        "{}",
        p[1].message
    );
}

#[test]
fn forbidden_functions_do_not_compile() {
    for script in [
        r#"get_env_var!("HOME") != """#,
        r#"get_hostname!() != """#,
        r#"length(http_request!("http://example.com")) > 0"#,
    ] {
        let p = problems(Some(script), None);
        assert!(
            p[0].message.contains("call to undefined function"),
            "{script}: {}",
            p[0].message
        );
    }
    let available: Vec<&str> = functions().iter().map(|f| f.identifier()).collect();
    for name in EXCLUDED_FUNCTIONS {
        assert!(!available.contains(name), "{name}");
    }
    assert!(available.contains(&"to_int"));
}

#[test]
fn no_transform_passes_the_record_through() {
    let s = scripts(None, None);
    assert_eq!(
        document(s.apply(&event("read", product())).unwrap()),
        product()
    );
    assert!(s.apply(&json!({ "action": "insert" })).is_err());
    let s = scripts(Some("in_stock = true"), None);
    assert_eq!(
        document(s.apply(&event("read", product())).unwrap()),
        product()
    );
}

#[test]
fn values_round_trip() {
    let record = json!({
        "int": -3,
        "big": 18_446_744_073_709_551_615_u64,
        "float": 0.25,
        "text": "héllo",
        "list": [1, "a", null, { "b": false }],
    });
    let s = scripts(None, Some(".record"));
    let doc = document(s.apply(&event("insert", record)).unwrap());
    assert_eq!(
        doc,
        json!({
            "int": -3,
            "big": "18446744073709551615",
            "float": 0.25,
            "text": "héllo",
            "list": [1, "a", null, { "b": false }],
        })
    );

    let s = scripts(
        None,
        Some(r#"{ "at": from_unix_timestamp!(0), "re": r'a+', "bytes": decode_base64!("/w==") }"#),
    );
    assert_eq!(
        document(s.apply(&event("insert", product())).unwrap()),
        json!({ "at": "1970-01-01T00:00:00Z", "re": "a+", "bytes": "\u{fffd}" })
    );
}

#[test]
fn time_limit_fails_the_event() {
    let config = sink(
        None,
        Some("for_each(array!(.record.items)) -> |_i, v| { .last = v }\n."),
        "0s",
    );
    let s = Scripts::compile(&config, 0).unwrap();
    let items: Vec<u32> = (0..1000).collect();
    let error = s
        .apply(&event("insert", json!({ "items": items })))
        .unwrap_err();
    assert_eq!(error.stage, Stage::Transform);
    assert!(error.message.contains("time limit"), "{error}");
}

#[test]
fn scripts_are_shareable() {
    fn assert_send_sync<T: Send + Sync + std::fmt::Debug>() {}
    assert_send_sync::<Scripts>();
    let s = scripts(Some("price > 1"), None);
    assert!(format!("{s:?}").contains("price > 1"));
}
