//! How the consumer reaches a cluster, for real: every auth type (none, basic, `api_key`,
//! bearer) is accepted by a cluster that takes it, and a wrong credential of each kind stops
//! `run` at start with exit 1 and the fix; over HTTPS (Elasticsearch 8.19 with a certificate of
//! the throwaway test CA) the CA file makes it work, no CA file or a host name the certificate
//! does not carry stop `run` at start with the certificate problem and the fix (not an endless
//! retry), and `verify_hostname: false` accepts the host name with one warning; OpenSearch with
//! its security plugin (2.19.4, HTTPS, basic auth) likewise.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::time::Duration;

use serde_json::Value;
use sluice_tests::{Sink, TestContext, run_command};

/// A consumer that exits by itself does so within this (the retry of a transient failure would
/// not).
const EXIT_WITHIN: Duration = Duration::from_secs(60);

/// The sink every run here has: `items` into the index `access` on `endpoint`, with neither
/// credentials nor CA yet.
fn access(context: &TestContext, endpoint: &str) -> Sink {
    context
        .sink_at(endpoint, "access", "public.items")
        .retry_max_backoff(Duration::from_secs(1))
}

/// Runs `sluice-consumer <args>` with `sink`; returns its exit code and output.
async fn consumer(
    context: &TestContext,
    sink: Sink,
    args: &[&str],
    log: &str,
) -> (Option<i32>, String) {
    let path = context
        .config()
        .table("public.items")
        .sink(sink)
        .write()
        .unwrap();
    run_command("sluice-consumer", &path, args, log, EXIT_WITHIN)
        .await
        .unwrap()
}

/// `check` passes with this sink: the cluster accepted the credentials.
async fn accepted(context: &TestContext, sink: Sink, what: &str) {
    let (code, output) = consumer(context, sink, &["check"], what).await;
    assert_eq!(code, Some(0), "{what}: {output}");
    assert!(output.contains("credentials accepted"), "{what}: {output}");
}

/// `run` stops at start with exit 1, saying `problem` and `fix`, and prints the error once.
async fn refused(context: &TestContext, sink: Sink, what: &str, problem: &str, fix: &str) {
    let (code, output) = consumer(context, sink, &["run"], what).await;
    assert_eq!(code, Some(1), "{what}: exits 1 by itself: {output}");
    assert!(
        output.contains(problem),
        "{what}: says `{problem}`: {output}"
    );
    assert!(output.contains(fix), "{what}: says `{fix}`: {output}");
    let last = output.lines().last().unwrap_or_default();
    assert!(
        last.contains(problem),
        "{what}: the last line is the error: {output}"
    );
    assert_eq!(
        output.matches(" ERROR ").count(),
        0,
        "{what}: the error is printed once, not logged too: {output}"
    );
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the clusters with deploy/local/up.sh (see docs/development.md)")
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn none_basic_and_api_key_are_accepted_and_wrong_credentials_stop_run() {
    let context = TestContext::new("access_auth").await.unwrap();
    let es = env("SLUICE_TEST_ELASTICSEARCH_URL");
    let key = env("SLUICE_TEST_ELASTICSEARCH_API_KEY");
    let user = env("SLUICE_TEST_ELASTICSEARCH_USER");
    let password = env("SLUICE_TEST_ELASTICSEARCH_PASSWORD");
    let os = env("SLUICE_TEST_OPENSEARCH_URL");

    let es = access(&context, &es);
    accepted(&context, access(&context, &os), "none").await;
    accepted(&context, es.clone().basic_auth(&user, &password), "basic").await;
    accepted(&context, es.clone().api_key(&key), "api_key").await;

    refused(
        &context,
        es.clone(),
        "no auth on a secured cluster",
        "HTTP 401",
        "elasticsearch.auth",
    )
    .await;
    refused(
        &context,
        es.clone().basic_auth(&user, &format!("wrong-{password}")),
        "wrong password",
        "HTTP 401",
        "elasticsearch.auth",
    )
    .await;
    refused(
        &context,
        es.api_key("bm90LWEta2V5Om5vdC1hLXNlY3JldA=="),
        "wrong api key",
        "HTTP 401",
        "elasticsearch.auth",
    )
    .await;
    context.cleanup().await.unwrap();
}

/// A bearer token from Elasticsearch's token service (`POST /_security/oauth2/token`).
async fn bearer_token(url: &str, ca: &str, user: &str, password: &str) -> String {
    let certificate = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_merge([certificate])
        .build()
        .unwrap();
    let answer: Value = client
        .post(format!("{url}/_security/oauth2/token"))
        .basic_auth(user, Some(password))
        .json(
            &serde_json::json!({"grant_type": "password", "username": user, "password": password}),
        )
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn over_https_the_ca_file_is_needed_the_host_name_is_checked_and_bearer_tokens_work() {
    let context = TestContext::new("access_tls").await.unwrap();
    let url = env("SLUICE_TEST_ELASTICSEARCH8_URL");
    let ca = env("SLUICE_TEST_ELASTICSEARCH8_CA");
    let key = env("SLUICE_TEST_ELASTICSEARCH8_API_KEY");
    let user = env("SLUICE_TEST_ELASTICSEARCH8_USER");
    let password = env("SLUICE_TEST_ELASTICSEARCH8_PASSWORD");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let api_key = access(&context, &url).api_key(&key);
    let with_ca = api_key.clone().ca_file(&ca);

    accepted(&context, with_ca.clone(), "https with the CA file").await;
    refused(
        &context,
        api_key,
        "https without the CA file",
        "not signed by a trusted CA",
        "set elasticsearch.ca_file",
    )
    .await;

    // The certificate names 127.0.0.1 (and a name of its own), not localhost.
    let localhost = url.replace("127.0.0.1", "localhost");
    let on_localhost = with_ca.endpoint(&localhost);
    refused(
        &context,
        on_localhost.clone(),
        "a host name the certificate lacks",
        "not valid for this host name",
        "verify_hostname: false",
    )
    .await;
    let (code, output) = consumer(
        &context,
        on_localhost.verify_hostname(false),
        &["check"],
        "verify_hostname-false",
    )
    .await;
    assert_eq!(code, Some(0), "verify_hostname: false: {output}");
    assert_eq!(
        output.matches("verify_hostname is false").count(),
        1,
        "one warning: {output}"
    );

    let token = bearer_token(&url, &ca, &user, &password).await;
    let with_ca = access(&context, &url).ca_file(&ca);
    accepted(&context, with_ca.clone().bearer(&token), "bearer").await;
    refused(
        &context,
        with_ca.bearer(&format!("not-{token}")),
        "wrong bearer token",
        "HTTP 401",
        "elasticsearch.auth",
    )
    .await;
    context.cleanup().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn opensearch_with_its_security_plugin_over_https_with_basic_auth() {
    let context = TestContext::new("access_os_tls").await.unwrap();
    let url = env("SLUICE_TEST_OPENSEARCH_SECURE_URL");
    let ca = env("SLUICE_TEST_OPENSEARCH_SECURE_CA");
    let user = env("SLUICE_TEST_OPENSEARCH_SECURE_USER");
    let password = env("SLUICE_TEST_OPENSEARCH_SECURE_PASSWORD");
    assert!(url.starts_with("https://"), "{url}");
    let secure = access(&context, &url);
    accepted(
        &context,
        secure.clone().basic_auth(&user, &password).ca_file(&ca),
        "basic over https",
    )
    .await;
    refused(
        &context,
        secure.clone().basic_auth(&user, &password),
        "https without the CA file",
        "not signed by a trusted CA",
        "set elasticsearch.ca_file",
    )
    .await;
    refused(
        &context,
        secure
            .clone()
            .basic_auth(&user, &format!("wrong-{password}"))
            .ca_file(&ca),
        "wrong password",
        "HTTP 401",
        "elasticsearch.auth",
    )
    .await;
    refused(
        &context,
        secure.ca_file(&ca),
        "no auth on a secured cluster",
        "HTTP 401",
        "elasticsearch.auth",
    )
    .await;
    context.cleanup().await.unwrap();
}
