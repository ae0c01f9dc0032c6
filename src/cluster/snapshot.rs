//! Snapshots for new nodes: the leader puts a checkpoint of its store into the Object Store now
//! and then (`--snapshot-interval-s`, when the log grew by `--snapshot-min-events`), and at once
//! after an erasure, deleting every older one (they hold the erased person's key and values).
//! A node that starts with no store unpacks the newest snapshot the log can continue from,
//! checks it (its head is the position and hash the snapshot names, and the log's record there
//! has that hash), and follows the log from the next position.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Node;
use crate::bus::link::Link;
use crate::bus::snapshots::SnapshotInfo;
use crate::log::{Head, Store};

/// How many snapshots are kept (the newest ones).
const KEEP: usize = 2;

/// When `data_dir` holds no store yet and a usable snapshot exists: unpacks and checks it, and
/// makes it this node's store. `None`: nothing to restore (the node replays the log instead).
pub async fn restore(data_dir: &Path, link: &Link) -> anyhow::Result<Option<SnapshotInfo>> {
    if data_dir.join("db").join("CURRENT").exists() {
        return Ok(None);
    }
    let first = link.stream.first().await?;
    // Usable: the log still holds every record after it.
    let Some(snapshot) = link.snapshots.list().await?.into_iter().rev().find(|s| s.position + 1 >= first) else {
        return Ok(None);
    };
    tracing::info!(name = %snapshot.name, position = snapshot.position, "starting from a snapshot");
    let work = tempfile::Builder::new().prefix(".restore-").tempdir_in(data_dir)?;
    let tar_path = work.path().join("snapshot.tar");
    let mut file = tokio::fs::File::create(&tar_path).await?;
    link.snapshots.fetch(&snapshot.name, &mut file).await?;
    file.sync_all().await?;
    drop(file);
    let dir = work.path().to_path_buf();
    let head = tokio::task::spawn_blocking(move || -> anyhow::Result<Head> {
        tar::Archive::new(std::fs::File::open(dir.join("snapshot.tar"))?).unpack(&dir)?;
        Ok(Store::open(&dir)?.head()?)
    })
    .await??;
    anyhow::ensure!(
        head.position == snapshot.position && head.hash.to_string() == snapshot.hash,
        "snapshot {} says position {} hash {}, but holds position {} hash {}",
        snapshot.name,
        snapshot.position,
        snapshot.hash,
        head.position,
        head.hash
    );
    // The join point: where the log still holds the snapshot's last record, it is the same.
    if let Some(record) = link.stream.read(snapshot.position).await? {
        anyhow::ensure!(
            record.event_hash() == head.hash,
            "snapshot {} does not match the log at position {}",
            snapshot.name,
            snapshot.position
        );
    }
    std::fs::rename(work.path().join("db"), data_dir.join("db")).context("moving the restored store in place")?;
    Ok(Some(snapshot))
}

/// Checkpoints `store`, tars it and puts it into the snapshot bucket; removes older ones
/// (all of them when `after_erasure`, else all but the newest [`KEEP`]).
pub async fn take(store: &Store, data_dir: &Path, link: &Link, after_erasure: bool) -> anyhow::Result<SnapshotInfo> {
    let work = tempfile::Builder::new().prefix(".snapshot-").tempdir_in(data_dir)?;
    let (dir, store) = (work.path().to_path_buf(), store.clone());
    let head = tokio::task::spawn_blocking(move || -> anyhow::Result<Head> {
        store.checkpoint(&dir.join("db"))?;
        let head = Store::open(&dir)?.head()?;
        let mut tar = tar::Builder::new(std::fs::File::create(dir.join("snapshot.tar"))?);
        tar.append_dir_all("db", dir.join("db"))?;
        tar.into_inner()?.sync_all()?;
        Ok(head)
    })
    .await??;
    let mut file = tokio::fs::File::open(work.path().join("snapshot.tar")).await?;
    let taken = link.snapshots.put(head.position, &head.hash.to_string(), &mut file).await?;
    let older: Vec<SnapshotInfo> = link.snapshots.list().await?.into_iter().filter(|s| s.name != taken.name).collect();
    let keep = if after_erasure { 0 } else { KEEP - 1 };
    for old in older.iter().take(older.len().saturating_sub(keep)) {
        link.snapshots.delete(&old.name).await?;
    }
    tracing::info!(position = taken.position, bytes = taken.size, "snapshot taken");
    Ok(taken)
}

/// The leader's snapshot loop: checks every few seconds; runs until the node stops.
pub async fn run(node: &Node, data_dir: &Path, interval: Duration, min_events: u64) {
    let mut last: Option<(Instant, u64)> = None;
    // Erasures whose snapshot is taken: a later one must not be lost to a snapshot under way.
    let mut handled = 0;
    let mut tick = tokio::time::interval(interval.min(Duration::from_secs(5)));
    loop {
        tick.tick().await;
        if !node.state.is_leader() {
            continue;
        }
        let erasures = node.state.erasures();
        let erased = erasures > handled;
        let applied = *node.writer.committed().borrow();
        let due = match last {
            None => applied >= min_events.max(1),
            Some((at, position)) => at.elapsed() >= interval && applied >= position + min_events.max(1),
        };
        if !(erased || due) {
            continue;
        }
        match take(&node.store, data_dir, &node.link, erased).await {
            Ok(s) => {
                last = Some((Instant::now(), s.position));
                handled = erasures;
            }
            Err(e) => {
                tracing::warn!(error = %e, "taking a snapshot failed");
                node.state.note_error(format!("snapshot: {e}"));
            }
        }
    }
}
