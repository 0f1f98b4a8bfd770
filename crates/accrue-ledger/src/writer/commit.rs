//! The committer thread (append one group per transaction, apply it to
//! the read models, answer) and the writer's hand-over to it.

use super::*;

/// Events applied to the read models between lock releases.
pub(super) const READ_CHUNK: usize = 64;

/// A sealed group and everyone waiting for it.
pub(super) struct Commit {
    pub(super) sealed: Arc<Sealed>,
    pub(super) replies: Vec<Reply>,
}

/// The committer: appends each sealed group in one durable transaction,
/// applies it to the read models, answers its waiters, then reports to the
/// writer. It runs beside the writer, so the next group is decided while
/// this one is written.
pub(super) fn commit_loop(
    shared: &Shared,
    commits: &Receiver<Commit>,
    done: &Sender<Result<(), String>>,
) {
    let mut idle = false;
    loop {
        let Commit { sealed, replies } = match commits.recv_timeout(crate::idle::IDLE_AFTER) {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                if !std::mem::replace(&mut idle, true) {
                    crate::idle::idle();
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        idle = false;
        let result = commit(shared, &sealed);
        let failed = result.is_err();
        match &result {
            Ok(()) => replies.into_iter().for_each(Reply::send_ok),
            Err(msg) => {
                // Fail-stop: whatever the store holds now is the truth, and
                // only a replay of it may decide again.
                shared.health.fail(msg);
                replies.into_iter().for_each(|r| r.send_err(msg));
            }
        }
        if done.send(result).is_err() || failed {
            break;
        }
    }
}

pub(super) fn commit(shared: &Shared, g: &Sealed) -> Result<(), String> {
    if g.appends.is_empty() {
        return Ok(());
    }
    let appended = shared
        .store
        .append(&g.appends, g.recorded_at)
        .map_err(|e| e.to_string())?;
    if appended.first_position != g.first[0] {
        // Only possible if something else appended: never answer 200 for
        // events whose positions the writer got wrong.
        return Err(format!(
            "the store placed the group at {}, the writer expected {}",
            appended.first_position, g.first[0]
        ));
    }
    // Apply in short chunks so queries never wait long for the lock; each
    // chunk holds only committed events.
    let mut read = shared.read.write();
    let mut applied = 0usize;
    for (i, a) in g.appends.iter().enumerate() {
        for (j, e) in g.decoded[i].iter().enumerate() {
            read.apply(g.first[i] + j as u64, &a.stream, g.recorded_at, e);
            applied += 1;
            if applied.is_multiple_of(READ_CHUNK) {
                parking_lot::RwLockWriteGuard::bump(&mut read);
            }
        }
    }
    drop(read);
    shared
        .metrics
        .events_appended
        .fetch_add(g.events as u64, Relaxed);
    shared.metrics.commits.fetch_add(1, Relaxed);
    Ok(())
}

impl Writer {
    /// Hands the group to the committer (after the previous group's result
    /// is in) and goes on deciding. Its waiters are answered by the
    /// committer once it is durable and applied to the read models.
    pub(super) fn flush(&mut self) {
        let group = std::mem::take(&mut self.group);
        if group.appends.is_empty() && group.replies.is_empty() {
            return;
        }
        if let Err(msg) = self.wait_inflight() {
            // This group was decided on top of the failed one: it fails too.
            for r in group.replies {
                r.send_err(&msg);
            }
            return;
        }
        if let Some(msg) = self.shared.health.failed() {
            for r in group.replies {
                r.send_err(&msg);
            }
            return;
        }
        let mut first = Vec::with_capacity(group.appends.len());
        let mut pos = self.head + 1;
        for a in &group.appends {
            first.push(pos);
            pos += a.events.len() as u64;
        }
        for p in &group.pending_usage {
            let position = Slot::Committed(first[p.stream as usize] + u64::from(p.event));
            match &p.exact {
                Some((account, id)) => self.state.idem.insert_exact(account, id, position),
                None => self.state.idem.insert_hash(p.hash, position),
            }
        }
        // Nothing is pending now (the next group is empty).
        self.state.idem.compact();
        self.head = pos - 1;
        // No snapshot of a usage key filter still loading (it would fail).
        if self.state.idem.filter_ready() && self.snapshots.due(self.head) {
            // The state is exactly the log up to `head` (this group
            // included); the read models are at the group before it.
            let read = self.shared.read.read();
            self.snapshots.take(&self.state, self.head, &read);
        }
        let sealed = Arc::new(Sealed {
            appends: group.appends,
            decoded: group.decoded,
            first,
            events: group.events,
            recorded_at: self.shared.clock.now(),
        });
        let commit = Commit {
            sealed: sealed.clone(),
            replies: group.replies,
        };
        let Some(tx) = &self.to_committer else {
            return;
        };
        if let Err(e) = tx.send(commit) {
            // The committer is gone (it only stops when the writer does).
            for r in e.into_inner().replies {
                r.send_err("the committer has stopped");
            }
            return;
        }
        self.inflight = Some(sealed);
    }

    /// Hands the group over and waits until it is committed.
    pub(super) fn flush_sync(&mut self) {
        self.flush();
        let _ = self.wait_inflight();
    }

    /// Waits for the group in flight, if any (see [`Writer::finish_inflight`]).
    pub(super) fn wait_inflight(&mut self) -> Result<(), String> {
        if self.inflight.take().is_none() {
            return Ok(());
        }
        let result = self
            .results
            .recv()
            .unwrap_or_else(|_| Err("the committer has stopped".into()));
        self.finish_inflight(result)
    }

    /// Takes in the committer's result. If the append failed (or landed
    /// elsewhere than the writer placed it), the writer's state holds
    /// decisions the store may not: it stops for good (fail-stop). It never
    /// reloads in place; a restart replays the log, the truth.
    pub(super) fn finish_inflight(&mut self, result: Result<(), String>) -> Result<(), String> {
        if let Err(msg) = &result {
            self.shared.health.fail(msg);
        }
        result
    }

    /// Drops the group being decided after a fault: its decisions were
    /// taken on state that may not be stored.
    pub(super) fn fail_group(&mut self) {
        let group = std::mem::take(&mut self.group);
        let reason = self
            .shared
            .health
            .failed()
            .unwrap_or_else(|| "an earlier group could not be stored".into());
        for r in group.replies {
            r.send_err(&format!("{reason}; nothing of this request was stored"));
        }
    }
}
