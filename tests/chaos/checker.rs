//! The chaos checker's rules beyond a token failing: what a node says about its disk.
//!
//! An acknowledgement (`{prefix}/tokens/acks/NODE`) is a statement about the node's disk: it
//! applied the key set at `revision` and holds its staged key, named by fernetd's fingerprint
//! (`core::key::Key::fingerprint`, the first 8 bytes of the SHA-256 of the key, in hex). The
//! promotion gate believes it, so one naming a key the node does not hold lets the leader
//! promote a key that node's Keystone cannot decrypt (issue 22's false acknowledgement). The
//! judge compares every record with the disk of the node that owns the name and calls it
//! false once it has stood unchanged for [`FALSE_ACK_GRACE`] while nothing excused the node.
//!
//! What it trusts: the records as etcd holds them (read in the clear: the chaos nodes are
//! unsealed, and a sealed record's `"mac"` is a field beside the record's own), the key files
//! as the harness reads them, and the harness's own word on which node owns a name and what it
//! did to that node. Lies it survives: a record that is not an acknowledgement (no `staged`) is
//! skipped, not judged; a record changed under it restarts its grace; a disk tampered with,
//! pointed at another etcd, or a name held by a clone is excused by the caller, not by this.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long an acknowledgement naming a key its node lacks may stand before it is false. A
/// node writes the keys of a set before it acknowledges it and removes keys only with the
/// next set, so a true record never names a missing key for long: only a forced set's
/// removals racing the next acknowledgement, or a record an etcd restore brought back before
/// the node writes its own again (a session starts over within a lease TTL and a retry).
pub const FALSE_ACK_GRACE: Duration = Duration::from_secs(5);

/// The fingerprints fernetd gives the keys in `dir`, the ones an acknowledgement names. A
/// file that is not a key has none.
pub fn held(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<u64>().map(|n| n.to_string()) != Ok(name) {
            continue;
        }
        if let Ok(bytes) = std::fs::read(e.path()) {
            if let Ok(k) = fernetd::core::key::Key::parse(&bytes) {
                out.insert(k.fingerprint().to_string());
            }
        }
    }
    out
}

/// One acknowledgement record as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckSeen {
    pub revision: i64,
    pub staged: String,
    pub refused: Option<i64>,
    /// etcd's revision of the record's last write: a rewrite of the same content restarts
    /// nothing (the node said it again), a new write of other content does.
    pub written: i64,
}

/// Runs one etcd-client operation against `endpoint`, bounded: None when etcd does not
/// answer within 2 s (it may be down: the nemesis restarts it).
fn with_etcd<T>(
    // One endpoint, or several separated by commas (every member of the run's etcd).
    endpoint: &str,
    f: impl AsyncFnOnce(&mut etcd_client::Client) -> Option<T>,
) -> Option<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), async {
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2));
            let mut c =
                etcd_client::Client::connect(endpoint.split(',').collect::<Vec<_>>(), Some(opts))
                    .await
                    .ok()?;
            f(&mut c).await
        })
        .await
        .ok()
        .flatten()
    })
}

/// Every acknowledgement under `prefix`'s token repository, by node name; None when etcd did
/// not answer.
pub fn acks(endpoint: &str, prefix: &str) -> Option<BTreeMap<String, AckSeen>> {
    let dir = format!("{prefix}/tokens/acks/");
    with_etcd(endpoint, async |c| {
        let resp = c
            .get(
                dir.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .ok()?;
        let mut out = BTreeMap::new();
        for kv in resp.kvs() {
            let node = String::from_utf8_lossy(kv.key())
                .trim_start_matches(&dir)
                .to_string();
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(kv.value()) else {
                continue;
            };
            let (Some(staged), Some(revision)) = (v["staged"].as_str(), v["revision"].as_i64())
            else {
                continue;
            };
            out.insert(
                node,
                AckSeen {
                    revision,
                    staged: staged.to_string(),
                    refused: v["refused"].as_i64(),
                    written: kv.mod_revision(),
                },
            );
        }
        Some(out)
    })
}

/// The store's revision now; None when etcd did not answer.
pub fn store_revision(endpoint: &str) -> Option<i64> {
    with_etcd(endpoint, async |c| {
        c.get("/", None).await.ok()?.header().map(|h| h.revision())
    })
}

/// The raw value under `key`, None when absent or etcd did not answer.
pub fn get_raw(endpoint: &str, key: &str) -> Option<Vec<u8>> {
    with_etcd(endpoint, async |c| {
        c.get(key, None)
            .await
            .ok()?
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
    })
}

/// Writes `value` under `key` as it is (an operator's `etcdctl put`); whether etcd took it.
pub fn put_raw(endpoint: &str, key: &str, value: Vec<u8>) -> bool {
    with_etcd(endpoint, async |c| c.put(key, value, None).await.ok()).is_some()
}

/// Each node's acknowledgement that names a key its disk lacks, and since when, judged
/// record by record.
#[derive(Default)]
pub struct AckJudge {
    since: BTreeMap<usize, (AckSeen, Instant)>,
    /// (node, staged key) pairs already reported: each false record once.
    reported: BTreeSet<(usize, String)>,
}

impl AckJudge {
    /// Judges node `node`'s record `ack` against the fingerprints its disk `holds`. `judged`
    /// is false while something excuses the node (the caller's word): the count starts over.
    /// Returns how long the record has been false, once, when that passes the grace.
    pub fn judge(
        &mut self,
        node: usize,
        ack: Option<&AckSeen>,
        holds: &BTreeSet<String>,
        judged: bool,
    ) -> Option<Duration> {
        let Some(ack) = ack.filter(|a| judged && !holds.contains(&a.staged)) else {
            self.since.remove(&node);
            return None;
        };
        // A node that holds nothing has acknowledged nothing (`holding_nothing`, all zeros).
        if ack.staged.bytes().all(|b| b == b'0') {
            self.since.remove(&node);
            return None;
        }
        let since = match self.since.get(&node) {
            Some((seen, at)) if seen.staged == ack.staged && seen.revision == ack.revision => *at,
            _ => {
                self.since.insert(node, (ack.clone(), Instant::now()));
                return None;
            }
        };
        let stood = since.elapsed();
        (stood >= FALSE_ACK_GRACE && self.reported.insert((node, ack.staged.clone())))
            .then_some(stood)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(staged: &str, revision: i64) -> AckSeen {
        AckSeen {
            revision,
            staged: staged.into(),
            refused: None,
            written: revision,
        }
    }

    #[test]
    fn a_record_naming_a_missing_key_is_false_only_after_the_grace_and_once() {
        let mut j = AckJudge::default();
        let holds: BTreeSet<String> = ["aa".to_string()].into();
        assert_eq!(j.judge(0, Some(&ack("bb", 5)), &holds, true), None);
        // Held: never false. Excused: the count starts over.
        assert_eq!(j.judge(1, Some(&ack("aa", 5)), &holds, true), None);
        j.since
            .insert(0, (ack("bb", 5), Instant::now() - FALSE_ACK_GRACE));
        assert!(j.judge(0, Some(&ack("bb", 5)), &holds, true).is_some());
        assert_eq!(j.judge(0, Some(&ack("bb", 5)), &holds, true), None);
        j.since
            .insert(2, (ack("cc", 5), Instant::now() - FALSE_ACK_GRACE));
        assert_eq!(j.judge(2, Some(&ack("cc", 5)), &holds, false), None);
        assert_eq!(j.judge(2, Some(&ack("cc", 5)), &holds, true), None);
        // A new record restarts the grace.
        j.since
            .insert(3, (ack("dd", 5), Instant::now() - FALSE_ACK_GRACE));
        assert_eq!(j.judge(3, Some(&ack("dd", 6)), &holds, true), None);
        // Holding nothing is not a claim.
        j.since.insert(
            4,
            (ack("0000000000000000", 0), Instant::now() - FALSE_ACK_GRACE),
        );
        assert_eq!(
            j.judge(4, Some(&ack("0000000000000000", 0)), &holds, true),
            None
        );
    }
}
