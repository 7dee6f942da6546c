//! Filling the new index and swapping the alias: the loop over the rebuild group's offsets that
//! [`catchup`](super::catchup) drives, the block, the swap, and cleaning up after it.

use super::report::{list_or_none, render_offsets};
use super::*;

impl Rebuild {
    /// Fills `target` and swaps the alias once it has caught up (see [`catchup`]). On any
    /// failure the block is lifted and the alias stays on `from`.
    pub(super) async fn fill_and_swap(
        &self,
        from: &str,
        target: &str,
        group: &str,
        blocked: bool,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let prepared = self.fill_sink(target, group)?;
        let stats = Arc::new(SinkStats::new(
            group,
            &self.topic,
            &prepared.config.dlq_topic(),
        ));
        let stop = CancellationToken::new();
        let mut fill = tokio::spawn(crate::sink::run(
            self.config.clone(),
            prepared,
            stats.clone(),
            stop.clone(),
        ));
        let kafka = self.group_client(group)?;
        let mut catchup = Catchup::new(self.options.max_block);
        if blocked {
            let marks = self.marks(&kafka).await?;
            catchup.blocked(marks, Instant::now());
        }
        let mut progress = Progress::new();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fill_ended = None;
        let outcome: Result<(), Error> = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Err(Error::Interrupted),
                joined = &mut fill, if fill_ended.is_none() => {
                    let result = joined.map_err(Error::from).and_then(|r| r);
                    fill_ended = Some(());
                    break Err(match result {
                        Err(error) => error,
                        Ok(()) => Error::Command("the rebuild's consumer stopped".to_owned()),
                    });
                }
                _ = tick.tick() => {}
            }
            let positions = match self.positions(&kafka).await {
                Ok(positions) => positions,
                Err(error) => {
                    tracing::warn!(sink = %self.sink(), %error, "cannot read the rebuild's offsets; retrying");
                    continue;
                }
            };
            if progress.due() {
                eprintln!(
                    "{}",
                    progress.line(self.sink(), target, &catchup, &positions, &stats)
                );
            }
            let step = catchup.next(&positions, Instant::now());
            match step {
                Step::Wait => {}
                Step::Block => {
                    if let Err(error) = self
                        .call("block writes on the old index", || {
                            self.client.set_write_block(from, true)
                        })
                        .await
                    {
                        break Err(error);
                    }
                    match self.marks(&kafka).await {
                        Ok(marks) => {
                            eprintln!(
                                "rebuild {}: {from} is write-blocked (the live sink's writes wait); \
                                 reading up to {}",
                                self.sink(),
                                render_offsets(&marks)
                            );
                            catchup.blocked(marks, Instant::now());
                        }
                        Err(error) => {
                            // The phase is still Filling: the block is lifted below.
                            self.lift(from).await;
                            break Err(error);
                        }
                    }
                }
                Step::Swap => {
                    break self.swap(from, target).await.map(|()| catchup.swapped());
                }
                Step::Lift | Step::GiveUp => {
                    let give_up = step == Step::GiveUp;
                    self.lift(from).await;
                    catchup.lifted();
                    let left: i64 = catchup::behind(&positions, None).values().sum();
                    if give_up {
                        break Err(Error::Command(format!(
                            "the rebuild did not catch up within --max-block ({}) {} times \
                             ({left} events behind the last time); the alias stays on {from} \
                             and its writes flow again. Run the rebuild again to resume (with a \
                             longer --max-block, or when the table is quieter)",
                            humantime::format_duration(self.options.max_block),
                            catchup::MAX_ATTEMPTS
                        )));
                    }
                    eprintln!(
                        "rebuild {}: not caught up within --max-block; lifted the block on \
                         {from} and filling on ({left} events behind)",
                        self.sink()
                    );
                }
            }
        };
        // The live sink must never be left blocked by a run that stops here without a swap.
        if outcome.is_err() && matches!(catchup.phase(), Phase::Blocked { .. }) {
            self.lift(from).await;
        }
        stop.cancel();
        if fill_ended.is_none() {
            match fill.await {
                Ok(Err(error)) if outcome.is_ok() => {
                    tracing::warn!(sink = %self.sink(), %error, "the rebuild's consumer ended with an error after the swap");
                }
                _ => {}
            }
        }
        outcome.map_err(|error| {
            let why = match &error {
                Error::Interrupted => "interrupted".to_owned(),
                other => other.to_string(),
            };
            Error::Command(format!(
                "rebuild of {} failed: {why}; the alias still serves {from} (not blocked); run the \
                 same command again to resume filling {target}, or with --abort to delete it",
                self.alias
            ))
        })
    }

    /// The topic's ends now: called only once the block is acknowledged.
    pub(super) async fn marks(
        &self,
        kafka: &Arc<BaseConsumer>,
    ) -> Result<std::collections::BTreeMap<i32, i64>, Error> {
        Ok(self
            .positions(kafka)
            .await?
            .into_iter()
            .map(|(p, pos)| (p, pos.end))
            .collect())
    }

    pub(super) async fn swap(&self, from: &str, target: &str) -> Result<(), Error> {
        self.restore_refresh(target).await?;
        self.call("refresh the new index", || self.client.refresh(target))
            .await?;
        let swapped = self
            .call("swap the alias", || {
                self.client.swap_alias(&self.alias, from, target)
            })
            .await;
        if let Err(error) = swapped {
            // An answer lost after the cluster applied it: the alias tells.
            let serving = self.client.alias_indices(&self.alias).await.ok().flatten();
            if serving.as_deref() != Some(&[target.to_owned()][..]) {
                return Err(error);
            }
        }
        eprintln!(
            "rebuild {}: {} now serves {target}",
            self.sink(),
            self.alias
        );
        Ok(())
    }

    /// Gives the new index its refresh interval back if it was filled without refreshes (an
    /// index created by an older version, or resumed after this step, is left as it is).
    pub(super) async fn restore_refresh(&self, target: &str) -> Result<(), Error> {
        let paused = self
            .call("read the new index", || self.client.indices(target))
            .await?
            .iter()
            .any(|info| info.refresh_interval.as_deref() == Some(plan::FILL_REFRESH_INTERVAL));
        if !paused || self.refresh_interval == plan::FILL_REFRESH_INTERVAL {
            return Ok(());
        }
        let settings = serde_json::json!({ "index.refresh_interval": self.refresh_interval });
        self.call("set the new index's refresh interval", || {
            self.client.put_settings(target, &settings)
        })
        .await
    }

    /// Lifts the write block on `index`, retrying until the cluster takes it. A failure is
    /// printed with what to run: this is the live sink's way out.
    pub(super) async fn lift(&self, index: &str) {
        if let Err(error) = self
            .call("lift the write block", || {
                self.client.set_write_block(index, false)
            })
            .await
        {
            eprintln!(
                "rebuild {}: could not lift the write block on {index}: {error}; the live sink \
                 waits until it is lifted: run `sluice-consumer rebuild {} --abort`, or \
                 PUT /{index}/_settings {{\"index.blocks.write\": null}}",
                self.sink(),
                self.sink()
            );
        }
    }

    /// After the swap: the block lifted, the new index marked done, old versions beyond
    /// `--keep-old` deleted, the rebuild group deleted.
    pub(super) async fn finish(&self, from: &str, target: &str, group: &str) -> Result<(), Error> {
        self.call("lift the write block", || {
            self.client.set_write_block(from, false)
        })
        .await?;
        let observed = self.observe().await?;
        let mut meta: Map<String, Value> = Map::new();
        if let Some(info) = self
            .call("read the new index", || self.client.indices(target))
            .await?
            .into_iter()
            .next()
        {
            meta = info.meta;
        }
        meta.insert(META_KEY.to_owned(), self.meta(from, group, State::Done));
        self.call("mark the rebuild done", || {
            self.client.put_meta(target, &meta)
        })
        .await?;
        let doomed = plan::to_delete(&observed, target, self.options.keep_old);
        for index in &doomed {
            self.call("delete an old version", || self.client.delete_index(index))
                .await?;
        }
        if let Err(error) = self.delete_group(group).await {
            tracing::warn!(sink = %self.sink(), group, %error, "could not delete the rebuild's consumer group; it holds no state that matters");
        }
        let documents = self.client.count(&self.alias).await.ok();
        let mut kept: Vec<&str> = observed
            .versions
            .iter()
            .filter(|v| v.name != target && !doomed.contains(&v.name))
            .map(|v| v.name.as_str())
            .collect();
        kept.sort_unstable();
        println!(
            "rebuild {}: {} serves {target}{}; kept {}; deleted {}",
            self.sink(),
            self.alias,
            documents.map_or(String::new(), |n| format!(" ({n} documents)")),
            list_or_none(&kept),
            list_or_none(&doomed.iter().map(String::as_str).collect::<Vec<_>>()),
        );
        Ok(())
    }

    pub(super) async fn delete_group(&self, group: &str) -> Result<(), Error> {
        let admin: AdminClient<DefaultClientContext> =
            crate::kafka::client_config(&self.config, &[])
                .create()
                .map_err(Error::kafka("creating an admin client"))?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .delete_groups(&[group], &options)
            .await
            .map_err(Error::kafka(format!("deleting group {group}")))?;
        for result in results {
            if let Err((name, code)) = result
                && code != rdkafka::types::RDKafkaErrorCode::GroupIdNotFound
            {
                return Err(Error::Command(format!("deleting group {name}: {code}")));
            }
        }
        Ok(())
    }
}

/// Progress on stderr: events applied, lag per partition, rate and ETA.
pub(super) struct Progress {
    started: Instant,
    last: Option<Instant>,
    first_done: Option<i64>,
}

impl Progress {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last: None,
            first_done: None,
        }
    }

    fn due(&self) -> bool {
        self.last.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY)
    }

    fn line(
        &mut self,
        sink: &str,
        target: &str,
        catchup: &Catchup,
        positions: &Positions,
        stats: &SinkStats,
    ) -> String {
        self.last = Some(Instant::now());
        let marks = match catchup.phase() {
            Phase::Blocked { marks, .. } => Some(marks),
            _ => None,
        };
        let behind = catchup::behind(positions, marks);
        let left: i64 = behind.values().sum();
        let done: i64 = positions
            .values()
            .map(|p| p.committed.unwrap_or(p.earliest))
            .sum();
        let first = *self.first_done.get_or_insert(done);
        let seconds = self.started.elapsed().as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // a rate
        let rate = if seconds > 0.0 {
            (done - first) as f64 / seconds
        } else {
            0.0
        };
        let eta = if rate >= 1.0 {
            #[allow(
                clippy::cast_precision_loss,
                clippy::cast_sign_loss,
                clippy::cast_possible_truncation
            )]
            let secs = (left as f64 / rate).ceil() as u64;
            format!(
                "ETA {}",
                humantime::format_duration(Duration::from_secs(secs))
            )
        } else {
            "ETA unknown".to_owned()
        };
        let phase = match catchup.phase() {
            Phase::Filling => "filling",
            Phase::Blocked { .. } => "catching up (old index write-blocked)",
            Phase::Swapped => "swapped",
        };
        // Events, not a document count: the index fills without refreshes, so `_count` would
        // lag behind (and counting would keep its shards from going search-idle).
        format!(
            "rebuild {sink}: {phase} {target}: {done} events applied, lag {left} ({}), {rate:.0} \
             events/s, {eta}; this run: indexed {}, deleted {}, dead-lettered {}",
            render_offsets(&behind),
            stats.count(Outcome::Indexed),
            stats.count(Outcome::Deleted),
            stats.count(Outcome::DeadLettered),
        )
    }
}
