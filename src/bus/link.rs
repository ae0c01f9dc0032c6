//! Cluster mode's connection to NATS: one client, and on it the replicated objects the cluster
//! needs — the log stream ([`LogStream`]), the data keys' copy ([`ReplicatedKeys`]), the writer
//! lease ([`Lease`]) and the snapshots for new nodes ([`Snapshots`]). The `cluster` module drives them; it never sees a NATS type.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;

use super::keys_kv::ReplicatedKeys;
use super::lease::Lease;
use super::log_stream::LogStream;
use super::snapshots::Snapshots;
use super::BusError;

pub struct Link {
    pub stream: LogStream,
    pub keys: ReplicatedKeys,
    pub lease: Lease,
    pub snapshots: Snapshots,
    pub set_acks: std::sync::Arc<super::set_acks::ReplicatedAcks>,
}

impl Link {
    /// Connects to `url` (several, comma-separated: any one answering will do; the client learns
    /// the others from it), reconnecting for ever after, quickly (a failover waits on it), and opens or
    /// creates the objects with `replicas` copies. A server that cannot store a request
    /// all-or-nothing (atomic batches, nats-server 2.12+) is refused here, with its reason.
    pub async fn open(url: &str, replicas: usize, lease_ttl: Duration, holder: Bytes) -> Result<Link, BusError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempts| Duration::from_millis(100 * attempts.min(10) as u64))
            .connect(super::server_addrs(url))
            .await
            .map_err(|e| BusError::Nats(format!("cannot connect to {url}: {e}")))?;
        let js = jetstream::new(client);
        let stream = LogStream::open(js.clone(), replicas).await?;
        if !stream.atomic() {
            let version = js.client().server_info().version;
            return Err(BusError::Unsupported(format!(
                "cluster mode needs nats-server 2.12 or newer (atomic batch publish, so that a request is \
                 applied all-or-nothing on every node); {url} runs {version}"
            )));
        }
        let keys = ReplicatedKeys::open(&js, replicas).await?;
        let lease = Lease::open(&js, replicas, lease_ttl, holder).await?;
        let snapshots = Snapshots::open(&js, replicas).await?;
        let set_acks = std::sync::Arc::new(super::set_acks::ReplicatedAcks::open(&js, replicas).await?);
        Ok(Link { stream, keys, lease, snapshots, set_acks })
    }
}
