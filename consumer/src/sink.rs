//! One sink, wired: its cluster set up (reachable, index or template in place), its dead-letter
//! topic, its topic waited for, its group consumer, and the read loop. No logic of its own.

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::Value;
use sluice_common::config::{Config, SinkConfig};
use sluice_common::retry::{self, Failure};
use tokio_util::sync::CancellationToken;

use crate::consume::Reader;
use crate::consume::group::{self, SinkContext};
use crate::dead_letter::{self, DeadLetters};
use crate::elastic::deliver::Writer;
use crate::elastic::retry::{Classify, SETUP_POLICY, policy};
use crate::elastic::{Client, ElasticError};
use crate::error::Error;
use crate::offsets::Tracker;
use crate::route::IndexTemplate;
use crate::script::Scripts;
use crate::stats::SinkStats;

/// Everything a sink needs that was checked before connecting.
#[derive(Debug)]
pub struct Prepared {
    pub config: SinkConfig,
    pub scripts: Arc<Scripts>,
    pub template: IndexTemplate,
    pub settings: Option<Value>,
    pub mappings: Option<Value>,
}

/// State shared by the read loop and the batch tasks of one sink.
#[derive(Debug)]
pub struct Shared {
    pub prepared: Prepared,
    pub writer: Writer<Client>,
    pub dead_letters: DeadLetters,
    pub topic: Arc<str>,
}

/// Runs one sink until `shutdown`. Returns an error when the sink cannot go on (credentials
/// refused, Kafka misconfigured); transient failures are retried inside.
pub async fn run(
    config: Arc<Config>,
    prepared: Prepared,
    stats: Arc<SinkStats>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let sink = prepared.config.name.clone();
    let client = Client::new(&prepared.config.elasticsearch).map_err(|source| Error::Elastic {
        sink: sink.clone(),
        source,
    })?;
    set_up_cluster(&client, &prepared, &shutdown).await?;
    dead_letter::ensure_topic(&config, &prepared.config, &shutdown).await?;
    let dead_letters = DeadLetters::new(&config, &prepared.config)?;

    let topic: Arc<str> = config.topic_for(&prepared.config.table).into();
    group::wait_for_topic(&config, &topic, &sink, &shutdown).await?;
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    let consumer: StreamConsumer<SinkContext> = group::consumer_config(&config, &prepared.config)
        .create_with_context(SinkContext {
            topic: topic.to_string(),
            tracker: tracker.clone(),
            stats: stats.clone(),
            idle: Mutex::default(),
        })
        .map_err(Error::kafka("creating the group consumer"))?;
    consumer
        .subscribe(&[&topic])
        .map_err(Error::kafka(format!("subscribing to {topic}")))?;
    tracing::info!(sink = %sink, topic = %topic, group = %sink, "consuming");

    let writer = Writer {
        bulk: client,
        policy: policy(&prepared.config),
        stats,
        shutdown,
    };
    let shared = Arc::new(Shared {
        prepared,
        writer,
        dead_letters,
        topic,
    });
    let result = Reader::new(shared, tracker).run(&consumer).await;
    drop(consumer);
    result
}

/// Waits for the cluster, then makes sure the index (behind its alias) or the index template
/// is there. Credentials and other refusals end it at once.
pub(crate) async fn set_up_cluster(
    client: &Client,
    prepared: &Prepared,
    shutdown: &CancellationToken,
) -> Result<(), Error> {
    let sink = prepared.config.name.as_str();
    let setup = |what: &'static str| {
        let mut classify = Classify::setup(sink, what);
        move |error: &ElasticError, attempt| classify.decide(error, attempt)
    };
    let stopped = |failure: Failure<ElasticError>| match failure {
        Failure::GaveUp(source) => Error::Elastic {
            sink: sink.to_owned(),
            source,
        },
        Failure::Interrupted(_) => Error::Interrupted,
    };
    let info = retry::retry(
        SETUP_POLICY,
        shutdown,
        || client.info(),
        setup("connect to the cluster"),
    )
    .await
    .map_err(stopped)?;
    tracing::info!(sink, distribution = %info.distribution, version = %info.version, "cluster reachable");
    let (settings, mappings) = (prepared.settings.as_ref(), prepared.mappings.as_ref());
    match prepared.template.fixed() {
        Some(alias) => {
            let created = retry::retry(
                SETUP_POLICY,
                shutdown,
                || client.ensure_index(alias, settings, mappings),
                setup("create the index"),
            )
            .await
            .map_err(stopped)?;
            if created {
                tracing::info!(sink, alias, index = %format!("{alias}-v1"), "created the index behind the alias");
            }
        }
        None if settings.is_some() || mappings.is_some() => {
            let pattern = prepared.template.pattern();
            let template = format!("sluice-{sink}");
            retry::retry(
                SETUP_POLICY,
                shutdown,
                || client.put_index_template(&template, &pattern, settings, mappings),
                setup("put the index template"),
            )
            .await
            .map_err(stopped)?;
        }
        None => {}
    }
    Ok(())
}
