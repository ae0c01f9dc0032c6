//! `scimlog tail`: a subscriber that prints events as JSON lines from a durable JetStream pull
//! consumer, acknowledging each line only once it is written, so that a restart resumes after the
//! last printed event and a failure redelivers it. The consumer side, as an example to copy.

use std::io::Write;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use futures::StreamExt;

use super::{nats, BusError};

pub struct TailOptions {
    pub url: String,
    pub stream: String,
    /// e.g. `scimlog.*.group.*`: events have four tokens, and nats-server 2.9 takes only a subset
    /// of the stream's `scimlog.*.*.*` (`*` rather than `>`). A single subject: nats-server 2.9
    /// ignores `filter_subjects`.
    pub subject: String,
    /// Durable consumer name; `None` for an ephemeral consumer that starts at the beginning.
    pub durable: Option<String>,
    /// Stop after this many events.
    pub max: Option<u64>,
    /// Stop after this long without a new event.
    pub idle_exit: Option<Duration>,
}

/// Prints events to `out` until `max`, `idle_exit` or the end of the connection. Returns how many.
pub async fn tail(opts: &TailOptions, out: &mut (dyn Write + Send)) -> Result<u64, BusError> {
    let client = async_nats::connect(&opts.url).await.map_err(nats)?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&opts.stream).await.map_err(nats)?;
    let config = pull::Config {
        durable_name: opts.durable.clone(),
        filter_subject: opts.subject.clone(),
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    };
    let consumer = match &opts.durable {
        Some(name) => stream.get_or_create_consumer(name, config).await.map_err(nats)?,
        None => stream.create_consumer(config).await.map_err(nats)?,
    };
    // Pull explicit batches of at most what is still wanted: messages handed to this process
    // but not yet printed would otherwise wait out `ack_wait` before anyone else sees them.
    let mut count = 0u64;
    let mut idle_since = std::time::Instant::now();
    loop {
        let wanted = opts.max.map(|m| m.saturating_sub(count)).unwrap_or(100).min(100) as usize;
        if wanted == 0 {
            return Ok(count);
        }
        let wait = opts.idle_exit.unwrap_or(Duration::from_secs(5)).min(Duration::from_secs(1));
        let mut batch = consumer.batch().max_messages(wanted).expires(wait).messages().await.map_err(nats)?;
        let mut got = 0;
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(nats)?;
            out.write_all(&msg.payload).and_then(|_| out.write_all(b"\n")).and_then(|_| out.flush()).map_err(nats)?;
            // Acknowledge only what was written: an unacknowledged event comes again.
            msg.ack().await.map_err(nats)?;
            count += 1;
            got += 1;
        }
        if got > 0 {
            idle_since = std::time::Instant::now();
        } else if opts.idle_exit.is_some_and(|idle| idle_since.elapsed() >= idle) {
            return Ok(count);
        }
    }
}
