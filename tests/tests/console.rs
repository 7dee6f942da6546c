//! The consumer's web console in headless Chromium, against a real pipeline: Postgres, the
//! producer, Kafka, two `sluice-consumer run` processes of one group (one with a console token,
//! one without) and Elasticsearch. What a person sees is what is checked: the counts move as
//! rows are written, both processes' partitions show in either console, a mapping conflict
//! shows under failed messages with Elasticsearch's reason, a `<script>` in a row shows as text
//! and runs nothing, actions without the token are refused, and a redrive after the mapping
//! fix empties the group and indexes the documents. A PNG of each page is written beside the
//! test's config (the path is printed).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

#[path = "console/browser.rs"]
mod browser;

use std::time::Duration;

use browser::Browser;
use serde_json::{Value, json};
use sluice_tests::{Cluster, Process, TestContext, eventually};

const WAIT: Duration = Duration::from_secs(90);
const TOKEN: &str = "console-token-3b9f27d1c4e8a6f0";
/// A row's field that would run script if the console parsed data as HTML.
const SCRIPT: &str =
    "<script>window.__sluice_xss = 1</script><img src=x onerror=\"window.__sluice_xss = 2\">";

/// An address of this host other than loopback (the one a default route would use).
fn host_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // Connecting a UDP socket sends nothing; it only picks the source address.
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Waits until `read` (over the page) gives `Some`.
async fn seen<T, F, Fut>(what: &str, read: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    eventually(WAIT, what, read).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_the_group_its_failed_messages_and_redrives_them_after_the_fix() {
    let context = TestContext::new("console").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL, note text)")
        .await
        .unwrap();
    let (port_a, port_b, producer_port) = (free_port(), free_port(), free_port());
    let items = context
        .sink(Cluster::Elasticsearch, "items", "public.items")
        .mappings(json!({"properties": {"code": {"type": "long"}}}));
    let base = context
        .config()
        .table("public.items")
        .backfill(true)
        .sink(items)
        .producer_port(producer_port);
    let config_a = base
        .clone()
        .consumer_port(port_a)
        .console(json!({ "token": TOKEN }));
    // B listens on every address (for Prometheus); its console still answers loopback only.
    let config_b = base
        .consumer_listen(&format!("0.0.0.0:{port_b}"))
        .console(json!({"enabled": true}));
    let config = config_a.load().unwrap();
    let dir = context.config_dir();
    let (path_a, path_b) = (dir.join("a.yaml"), dir.join("b.yaml"));
    std::fs::write(&path_a, config_a.yaml()).unwrap();
    std::fs::write(&path_b, config_b.yaml()).unwrap();
    let sink = context.sink_name("items");
    let (console_a, console_b) = (
        format!("http://127.0.0.1:{port_a}/console/"),
        format!("http://127.0.0.1:{port_b}/console/"),
    );

    let (producer_stop, producer_task) = context.spawn_producer(config);
    let run = |path: &std::path::Path, log: &str| {
        Process::start(
            "sluice-consumer",
            &["--config", path.to_str().unwrap(), "run"],
            dir.join(log),
        )
        .unwrap()
    };
    let mut consumer_a = run(&path_a, "consumer-a.log");
    let mut consumer_b = run(&path_b, "consumer-b.log");
    context.wait_streaming().await.unwrap();
    let browser = Browser::start(dir.join("chromedriver.log")).await.unwrap();
    let card = format!("article[data-sink=\"{sink}\"]");
    let outcome = |name: &str| format!("{card} td[data-outcome=\"{name}\"]");

    // Sinks: the whole group, from the console of either process.
    for console in [&console_a, &console_b] {
        browser.goto(&format!("{console}#sinks")).await.unwrap();
        let members = seen("both processes' partitions in the console", || async {
            let members = browser
                .texts(&format!("{card} tr[data-partition] td[data-field=member]"))
                .await?;
            let both = [port_a, port_b]
                .iter()
                .all(|p| members.iter().any(|m| m == &format!("127.0.0.1:{p}")));
            Ok((members.len() == 3 && both).then_some(members))
        })
        .await;
        assert_eq!(members.len(), 3, "{members:?}");
    }
    browser.goto(&format!("{console_a}#sinks")).await.unwrap();
    let indexed = || async {
        let text = browser.text(&outcome("indexed")).await?;
        Ok(text.and_then(|t| t.trim().parse::<u64>().ok()))
    };
    assert_eq!(seen("the indexed count", indexed).await, 0);

    // The counts move as rows are written.
    db.batch_execute("INSERT INTO items SELECT i, i::text, 'ok' FROM generate_series(1, 10) i")
        .await
        .unwrap();
    seen("10 indexed", || async {
        Ok(indexed().await?.filter(|n| *n == 10).map(drop))
    })
    .await;
    db.batch_execute("INSERT INTO items SELECT i, i::text, 'ok' FROM generate_series(11, 30) i")
        .await
        .unwrap();
    db.execute(
        "INSERT INTO items VALUES (101, 'not a number', $1), (102, 'x', 'plain'), (103, 'y', 'plain')",
        &[&SCRIPT],
    )
    .await
    .unwrap();
    seen("30 indexed and 3 dead-lettered", || async {
        let dead = browser.text(&outcome("dead_lettered")).await?;
        let done = indexed().await? == Some(30) && dead.as_deref() == Some("3");
        Ok(done.then_some(()))
    })
    .await;
    seen("a rate in the chart", || async {
        let drawn = browser
            .eval(
                "return document.querySelectorAll('svg.chart polyline').length;",
                json!([]),
            )
            .await?;
        Ok((drawn.as_u64() > Some(0)).then_some(()))
    })
    .await;
    let state = browser.text(&format!("{card} [data-field=state]")).await;
    assert_eq!(state.unwrap().as_deref(), Some("running"));
    browser.screenshot(&dir.join("sinks.png")).await.unwrap();

    // Failed messages: the mapping conflict with Elasticsearch's reason, the row as text.
    browser.goto(&format!("{console_a}#failed")).await.unwrap();
    seen("three failed messages", || async {
        let total = browser.text("[data-field=failed-total]").await?;
        Ok(total
            .filter(|t| t.starts_with("3 dead letters to re-drive"))
            .map(drop))
    })
    .await;
    let reasons = browser.texts("tr.reason").await.unwrap();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with("3\tindex\tdocument_parsing_exception\t400"),
        "{reasons:?}"
    );
    assert!(
        reasons[0].contains("failed to parse field [code] of type [long]"),
        "{reasons:?}"
    );
    let letter = browser
        .text("div.letter[data-position] [data-field=error-type]")
        .await
        .unwrap();
    assert_eq!(letter.as_deref(), Some("document_parsing_exception"));
    let page = browser.text("#failed-body").await.unwrap().unwrap();
    assert!(page.contains("HTTP 400, attempts 1"), "{page}");
    assert!(
        page.contains(&format!(
            "\"note\": {}",
            serde_json::to_string(SCRIPT).unwrap()
        )),
        "the row's <script> is shown as text:\n{page}"
    );
    let ran = browser
        .eval("return window.__sluice_xss === undefined;", json!([]))
        .await
        .unwrap();
    assert_eq!(ran, json!(true), "a script of the row ran");
    browser.screenshot(&dir.join("failed.png")).await.unwrap();

    // Without the token: refused by the API, and the page says so.
    let http = reqwest::Client::new();
    let redrive = |port: u16, token: Option<&str>| {
        let request = http
            .post(format!("http://127.0.0.1:{port}/console/api/redrive"))
            .json(&json!({"sink": sink}));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
        .send()
    };
    for (port, token, says) in [
        (port_a, None, "needs the console token"),
        (
            port_a,
            Some("console-token-but-not-the-one"),
            "needs the console token",
        ),
        (port_b, Some(TOKEN), "read-only: no telemetry.console.token"),
    ] {
        let refused = redrive(port, token).await.unwrap();
        assert_eq!(refused.status(), 403);
        let body: Value = refused.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(says), "{body}");
    }
    browser.click("tr.reason button.redrive").await.unwrap();
    let shown = seen("the refusal in the page", || async {
        let message = browser.text("#message").await?;
        Ok(message.filter(|m| m.contains("refused")))
    })
    .await;
    assert!(shown.contains("needs the console token"), "{shown}");
    browser.goto(&format!("{console_b}#failed")).await.unwrap();
    seen("the read-only console's disabled buttons", || async {
        let disabled = browser
            .eval(
                "const b = [...document.querySelectorAll('button.redrive')]; \
                 return b.length > 0 && b.every((x) => x.disabled) ? b[0].title : null;",
                json!([]),
            )
            .await?;
        Ok(disabled.as_str().map(str::to_owned))
    })
    .await;
    let note = browser.text("#actions-note").await.unwrap().unwrap();
    assert!(note.starts_with("read-only"), "{note}");
    browser
        .screenshot(&dir.join("failed-read-only.png"))
        .await
        .unwrap();

    // The fix (malformed codes are kept in _source, not indexed), then a redrive of the reason.
    let (es, es_base) = context.elasticsearch();
    let fixed = es
        .put(format!("{es_base}/{}/_mapping", context.index("items")))
        .json(&json!({"properties": {"code": {"type": "long", "ignore_malformed": true}}}))
        .send()
        .await
        .unwrap();
    assert!(fixed.status().is_success(), "{:?}", fixed.text().await);
    browser.goto(&format!("{console_a}#failed")).await.unwrap();
    seen("the redrive button", || async {
        Ok(browser.text("tr.reason button.redrive").await?.map(drop))
    })
    .await;
    browser.type_into("#token", TOKEN).await.unwrap();
    let tally = |expected: &'static str| {
        let browser = &browser;
        async move {
            seen("the redrive's tally", || async {
                let message = browser.text("#message").await?;
                Ok(message.filter(|m| m.starts_with(expected)))
            })
            .await
        }
    };
    let failed_total = |expected: &'static str| {
        let browser = &browser;
        async move {
            seen("the failed messages' total", || async {
                let total = browser.text("[data-field=failed-total]").await?;
                Ok(total.filter(|t| t.starts_with(expected)).map(drop))
            })
            .await;
        }
    };
    // One letter first: the one the page lists first.
    let first = browser
        .eval(
            "const l = document.querySelector('div.letter[data-position]'); \
             return [l.dataset.position, l.querySelector('[data-field=record]').innerText];",
            json!([]),
        )
        .await
        .unwrap();
    let record: Value = serde_json::from_str(first[1].as_str().unwrap()).unwrap();
    let clicked = std::time::Instant::now();
    browser
        .click("div.letter[data-position] button.redrive")
        .await
        .unwrap();
    let done = tally("re-driven 1:").await;
    println!("redrive of 1 letter from the page: {:?}", clicked.elapsed());
    assert!(done.starts_with("re-driven 1: indexed 1,"), "{done}");
    assert!(done.ends_with("failed again 0"), "{done}");
    failed_total("2 dead letters").await;
    let docs = context
        .documents(Cluster::Elasticsearch, "items")
        .await
        .unwrap();
    assert_eq!(docs.len(), 31);
    assert_eq!(docs[&record["id"].to_string()].source, record);
    // Then the rest of the reason.
    let clicked = std::time::Instant::now();
    browser.click("tr.reason button.redrive").await.unwrap();
    let done = tally("re-driven 2:").await;
    println!(
        "redrive of a reason's 2 letters from the page: {:?}",
        clicked.elapsed()
    );
    assert!(done.starts_with("re-driven 2: indexed 2,"), "{done}");
    assert!(done.ends_with("failed again 0"), "{done}");
    failed_total("0 dead letters").await;
    assert!(browser.texts("tr.reason").await.unwrap().is_empty());
    let docs = context
        .documents(Cluster::Elasticsearch, "items")
        .await
        .unwrap();
    assert_eq!(docs.len(), 33);
    assert_eq!(docs["101"].source["note"], SCRIPT);
    assert_eq!(docs["102"].source["code"], "x");
    let redriven = context
        .committed_offsets(&format!("{sink}.dlq-redrive"), &format!("{sink}.dlq"))
        .await
        .unwrap();
    // The first redrive read all three (two written back, not selected), the second those two.
    assert_eq!(redriven.values().sum::<i64>(), 5, "{redriven:?}");
    browser
        .screenshot(&dir.join("failed-redriven.png"))
        .await
        .unwrap();

    // Backfills: the slot's confirmed LSN and the table's backfill, from Postgres and the producer.
    browser
        .goto(&format!("{console_a}#backfills"))
        .await
        .unwrap();
    let lsn = seen("the slot's confirmed LSN", || async {
        browser.text("#slot [data-field=confirmed-lsn]").await
    })
    .await;
    let (high, low) = lsn.split_once('/').unwrap();
    let lsn =
        (u64::from_str_radix(high, 16).unwrap() << 32) | u64::from_str_radix(low, 16).unwrap();
    assert!(
        lsn > 0 && lsn <= context.confirmed_lsn().await.unwrap(),
        "{lsn}"
    );
    let backfill = seen("the backfill of public.items", || async {
        let rows = browser.texts("#backfills tr[data-backfill]").await?;
        Ok(rows.into_iter().find(|r| r.contains("public.items")))
    })
    .await;
    assert!(backfill.contains("done"), "{backfill}");
    let producer = browser.text("#slot p.muted").await.unwrap().unwrap();
    assert!(
        producer.contains(&format!("producer at 127.0.0.1:{producer_port}: streaming")),
        "{producer}"
    );
    browser
        .screenshot(&dir.join("backfills.png"))
        .await
        .unwrap();

    // From another host (this host's own address, not loopback): metrics yes, console no.
    match host_address() {
        Some(ip) => {
            let metrics = http
                .get(format!("http://{ip}:{port_b}/metrics"))
                .send()
                .await
                .unwrap();
            assert_eq!(metrics.status(), 200);
            let console = http
                .get(format!("http://{ip}:{port_b}/console/api/overview"))
                .send()
                .await
                .unwrap();
            assert_eq!(console.status(), 403);
            let body: Value = console.json().await.unwrap();
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("only on this host (loopback)"),
                "{body}"
            );
        }
        None => println!("no non-loopback address on this host: the remote refusal is not checked"),
    }

    // No secret in anything the console serves; every answer forbids inline script.
    let secrets = [
        TOKEN.to_owned(),
        context.endpoints.elasticsearch_api_key.clone().unwrap(),
        format!(
            ":{}@",
            url::Url::parse(&context.endpoints.postgres_url)
                .unwrap()
                .password()
                .unwrap()
        ),
    ];
    for port in [port_a, port_b] {
        for path in [
            "",
            "console.js",
            "api/overview",
            "api/backfills",
            &format!("api/failed/{sink}"),
        ] {
            let asked = std::time::Instant::now();
            let reply = http
                .get(format!("http://127.0.0.1:{port}/console/{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 200, "{path}");
            println!("GET /console/{path} on :{port}: {:?}", asked.elapsed());
            let csp = reply.headers()["content-security-policy"].to_str().unwrap();
            assert!(
                csp.starts_with("default-src 'self'; script-src 'self';"),
                "{csp}"
            );
            assert_eq!(reply.headers()["x-content-type-options"], "nosniff");
            let body = reply.text().await.unwrap();
            for secret in &secrets {
                assert!(
                    !body.contains(secret.as_str()),
                    "{path} shows a secret:\n{body}"
                );
            }
        }
    }

    browser.quit().await.unwrap();
    assert_eq!(consumer_a.terminate(WAIT).await.unwrap(), Some(0));
    assert_eq!(consumer_b.terminate(WAIT).await.unwrap(), Some(0));
    producer_stop.cancel();
    producer_task.await.unwrap().unwrap();
    context.cleanup().await.unwrap();
}

/// A console token that is too short stops the consumer at load, with exit 2, naming the field
/// and the fix and not the value; nothing is connected to.
#[tokio::test(flavor = "multi_thread")]
async fn a_short_console_token_is_a_config_error_that_does_not_show_it() {
    let context = TestContext::new("console_token").await.unwrap();
    let path = context
        .config()
        .table("public.things")
        .sink(context.sink(Cluster::Elasticsearch, "things", "public.things"))
        .console(json!({"token": "hunter2 x"}))
        .write()
        .unwrap();
    for command in ["check", "run"] {
        let (code, output) = sluice_tests::run_command(
            "sluice-consumer",
            &path,
            &[command],
            &format!("{command}.log"),
            WAIT,
        )
        .await
        .unwrap();
        assert_eq!(code, Some(2), "{output}");
        assert!(output.contains("telemetry.console.token"), "{output}");
        assert!(output.contains("${SLUICE_CONSOLE_TOKEN}"), "{output}");
        assert!(!output.contains("hunter2"), "the token is shown:\n{output}");
        assert_eq!(
            output.matches("telemetry.console.token").count(),
            1,
            "printed once:\n{output}"
        );
    }
    context.cleanup().await.unwrap();
}
