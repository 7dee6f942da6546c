//! Several sluice processes on one host with the same config and the default listen addresses,
//! as the README suggests: two consumers share the partitions, a second producer waits as a
//! standby, and `status` of each shows every process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::time::Duration;

use sluice_tests::{Cluster, Process, TestContext, eventually, run_command};

const WAIT: Duration = Duration::from_secs(90);
const ROWS: usize = 300;

async fn status(binary: &str, config: &std::path::Path, log: &str) -> String {
    let (code, output) = run_command(binary, config, &["status"], log, WAIT)
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{output}");
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_and_a_standby_producer_run_on_one_host_with_the_default_config() {
    let context = TestContext::new("one_host").await.unwrap();
    let db = context.postgres().await.unwrap();
    db.batch_execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await
        .unwrap();
    // The listen addresses left out: every process uses the defaults.
    let config = context
        .sink_config(Cluster::OpenSearch, "notes")
        .default_listen();
    let yaml = config.yaml();
    assert!(!yaml.contains("_listen"), "{yaml}");
    let path = config.write().unwrap();
    let start = |binary: &str, log: &str| Process::run(binary, &path, log).unwrap();
    let mut first = start("sluice-producer", "producer-1.log");
    context.wait_streaming().await.unwrap();
    let mut standby = start("sluice-producer", "producer-2.log");
    let mut consumers = [
        start("sluice-consumer", "consumer-1.log"),
        start("sluice-consumer", "consumer-2.log"),
    ];

    db.execute(
        &format!("INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, {ROWS}) g"),
        &[],
    )
    .await
    .unwrap();
    eventually(WAIT, "every row indexed", || async {
        let docs = context.documents(Cluster::OpenSearch, "notes").await?;
        Ok((docs.len() == ROWS).then_some(()))
    })
    .await
    .unwrap();
    for process in [&mut first, &mut standby]
        .into_iter()
        .chain(consumers.iter_mut())
    {
        assert!(
            process.child.try_wait().unwrap().is_none(),
            "every process still runs:\n{}",
            process.output()
        );
    }

    // Both consumers are members of the group and `status` reaches each of them.
    let sink_name = context.sink_name("notes");
    let output = eventually(WAIT, "consumer status lists both members", || async {
        let output = status("sluice-consumer", &path, "status-consumer.log").await;
        let reached = output.matches(": indexed ").count();
        Ok((output.contains("members: 2") && reached == 2).then_some(output))
    })
    .await
    .unwrap();
    assert!(output.contains(&format!("sink {sink_name}")), "{output}");
    let indexed: u64 = output
        .lines()
        .filter_map(|l| l.split(": indexed ").nth(1))
        .filter_map(|rest| rest.split(',').next()?.trim().parse::<u64>().ok())
        .sum();
    assert_eq!(
        indexed, ROWS as u64,
        "the two members indexed every row between them\n{output}"
    );

    // The producer that streams and the standby each answer on their own port.
    let output = status("sluice-producer", &path, "status-producer.log").await;
    assert!(output.contains(": streaming"), "{output}");
    assert!(
        output.contains("the slot is held by another producer"),
        "{output}"
    );

    for process in consumers.iter_mut().chain([&mut standby, &mut first]) {
        process.stop(WAIT).await.unwrap();
    }
    context.cleanup().await.unwrap();
}
