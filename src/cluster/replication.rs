//! The writer's [`Replication`] over the log stream. Runs on the writer thread, blocking on the
//! runtime for each call: a batch is durable in the cluster (data keys, then records) before
//! the writer commits it locally.

use std::sync::Arc;
use std::time::{Duration, Instant};

use scimlog_schemas::event::SealedEvent;
use tokio::runtime::Handle;

use super::ClusterState;
use crate::bus::link::Link;
use crate::bus::log_stream::{AppendError, MAX_APPEND};
use crate::log::writer::{Replication, ReplicationError};
use crate::log::Head;

pub struct NatsReplication {
    pub state: Arc<ClusterState>,
    pub link: Arc<Link>,
    pub runtime: Handle,
    /// How long to try to learn an append's outcome before giving up on it.
    pub append_timeout: Duration,
}

impl Replication for NatsReplication {
    fn is_leader(&self) -> bool {
        self.state.is_leader()
    }

    fn append(
        &self,
        head: &Head,
        records: &[(u64, SealedEvent, bool)],
        new_keys: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), ReplicationError> {
        self.runtime.block_on(async {
            let deadline = Instant::now() + self.append_timeout;
            // All of the batch's new keys at once: one replicated write, not one per new person.
            match tokio::time::timeout_at(deadline.into(), self.link.keys.put_all(new_keys)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(ReplicationError::NotStored(format!("storing a data key: {e}"))),
                Err(_) => return Err(ReplicationError::NotStored("storing the data keys timed out".into())),
            }
            let mut at = head.position;
            for chunk in chunks(records, MAX_APPEND) {
                match self.append_chunk(at, chunk, deadline).await {
                    Ok(()) => at = chunk.last().map_or(at, |r| r.0),
                    // Part of the batch is in the log already: its outcome as a whole is unknown.
                    Err(ReplicationError::NotStored(e)) if at != head.position => {
                        return Err(ReplicationError::Unknown(e));
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    fn step_down(&self, why: &str) {
        self.state.step_down(why);
    }

    fn erased(&self, key_ids: Vec<Vec<u8>>) {
        self.state.note_erasure();
        let link = self.link.clone();
        self.runtime.spawn(async move {
            for id in key_ids {
                let mut tries = 0;
                while let Err(e) = link.keys.purge(&id).await {
                    tries += 1;
                    if tries == 5 {
                        // Every node purges when it applies the erasure: another one may succeed.
                        tracing::error!(error = %e, "cannot purge an erased data key from the replicated copy");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
            }
        });
    }

    fn max_records(&self) -> usize {
        MAX_APPEND
    }
}

impl NatsReplication {
    /// Appends one atomic chunk after `head`. On an unknown outcome it asks the stream until
    /// `deadline`: record `head + 1` is this chunk's first (stored: all of it, atomic), another
    /// writer's (fenced), or absent with the head unmoved (not stored: sent again, with the same
    /// fence, so it can never be stored twice).
    async fn append_chunk(
        &self,
        head: u64,
        chunk: &[(u64, SealedEvent, bool)],
        deadline: Instant,
    ) -> Result<(), ReplicationError> {
        let first = &chunk[0].1;
        loop {
            let sent = tokio::time::timeout_at(deadline.into(), self.link.stream.append_atomic(head, chunk)).await;
            let why = match sent {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(AppendError::Fenced { .. })) => return Err(ReplicationError::Fenced),
                Ok(Err(AppendError::Refused(e))) => return Err(ReplicationError::NotStored(e)),
                Ok(Err(AppendError::Ambiguous(e))) => e,
                Err(_) => "no answer in time".to_string(),
            };
            loop {
                if Instant::now() >= deadline {
                    return Err(ReplicationError::Unknown(why));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Ok(Ok(now)) = tokio::time::timeout_at(deadline.into(), self.link.stream.head()).await else {
                    continue;
                };
                if now == head {
                    break; // not stored: send again
                }
                if now < head {
                    return Err(ReplicationError::Unknown(format!("the log stream is at {now}, behind {head}")));
                }
                match tokio::time::timeout_at(deadline.into(), self.link.stream.read(head + 1)).await {
                    Ok(Ok(Some(r))) if r.hash == first.hash => return Ok(()),
                    Ok(Ok(Some(_))) => return Err(ReplicationError::Fenced),
                    _ => continue,
                }
            }
        }
    }
}

/// `records` cut into runs of at most `max`, each ending at a request's end (a request is never
/// split: the writer refuses one larger than `max`).
fn chunks(records: &[(u64, SealedEvent, bool)], max: usize) -> Vec<&[(u64, SealedEvent, bool)]> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < records.len() {
        let window = &records[start..records.len().min(start + max)];
        let cut = if start + window.len() == records.len() {
            window.len()
        } else {
            window.iter().rposition(|r| r.2).map_or(window.len(), |i| i + 1)
        };
        out.push(&records[start..start + cut]);
        start += cut;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(ends: &[bool]) -> Vec<(u64, SealedEvent, bool)> {
        ends.iter()
            .enumerate()
            .map(|(i, end)| (i as u64 + 1, SealedEvent { hash: [0; 32], bytes: vec![] }, *end))
            .collect()
    }

    /// Chunks end at a request's end and never exceed the maximum.
    #[test]
    fn chunks_cut_at_request_ends() {
        let table: &[(&[bool], usize, &[usize])] = &[
            (&[true, true, true], 2, &[2, 1]),
            (&[false, true, false, true], 3, &[2, 2]),
            (&[false, false, true], 5, &[3]),
            (&[true], 1, &[1]),
            (&[false, true, true, false, false, true], 4, &[3, 3]),
        ];
        for (ends, max, want) in table {
            let r = records(ends);
            let got: Vec<usize> = chunks(&r, *max).iter().map(|c| c.len()).collect();
            assert_eq!(&got, want, "ends {ends:?} max {max}");
        }
    }
}
