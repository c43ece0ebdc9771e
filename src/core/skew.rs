//! Clocks across cluster nodes, judged: a member's acknowledgement and the clock reading it
//! carries, a fresh reading's offset against the leader's clock with the round trip as its
//! error bar, and the hold on purges a skew calls for (its size, how long, when it escalates,
//! the key set's bound meanwhile). The cluster module reads and writes these values in etcd;
//! the decisions are here.
//!
//! Invariant: pure. Nothing here reads a clock or the network; every time is an argument.

use std::time::Duration;

/// A member's acknowledgement, stored under `{prefix}/{kind}/acks/{node}` without a lease: it
/// applied the key set at `revision`, whose staged key 0 has fingerprint `staged`. The record
/// is the node's membership: the promotion gate waits for every member, reachable or not,
/// until an operator removes it (or `member_timeout` passes since it was last heard from).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ack {
    pub node: String,
    pub revision: i64,
    pub staged: crate::core::key::Fingerprint,
    /// The node's wall clock when it wrote this: the leader holds purges while a node's
    /// clock is off by more than the margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<chrono::DateTime<chrono::Utc>>,
    /// The revision of a key set this node refused since (it still holds the set at
    /// `revision`): the gate says the node refused, not that it has not applied yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<i64>,
}

impl Ack {
    /// A member that has applied nothing: a malformed record, one removed, or one `cluster
    /// init --members` names before its daemon first acknowledges (`clock`: from when).
    pub fn holding_nothing(node: &str, clock: Option<chrono::DateTime<chrono::Utc>>) -> Ack {
        Ack {
            node: node.to_string(),
            revision: 0,
            staged: crate::core::key::Fingerprint::NONE,
            clock,
            refused: None,
        }
    }
}

/// Nodes whose wall clock differs from this one's by more than `tolerance`, as their
/// acknowledgements show, with how much at least (positive: ahead). Every acknowledgement was
/// written before `now`, when the leader reads it; one of the key set at `revision` was also
/// written after that set was committed, so after `committed` (its last rotation, on the clock
/// of the node that made it). A clock reading outside that span by more than the tolerance is
/// off by at least that much. Pure.
pub fn skewed(
    acks: &[Ack],
    revision: i64,
    committed: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    tolerance: Duration,
) -> Vec<(String, chrono::Duration)> {
    let tolerance = crate::core::history::to_chrono(tolerance);
    acks.iter()
        .filter_map(|a| {
            let c = a.clock?;
            let off = if c > now + tolerance {
                c - now
            } else if a.revision == revision && committed.is_some_and(|t| c + tolerance < t) {
                c - committed?
            } else {
                return None;
            };
            Some((a.node.clone(), off))
        })
        .collect()
}

/// The members the promotion of `staged` waits for: those whose last acknowledgement does not
/// hold it, except members not heard from for `member_timeout` (when one is configured). Pure.
pub fn waiting_on(
    acks: &[Ack],
    staged: crate::core::key::Fingerprint,
    now: chrono::DateTime<chrono::Utc>,
    member_timeout: Option<Duration>,
) -> Vec<String> {
    let gone = |a: &Ack| {
        member_timeout.is_some_and(|t| {
            a.clock
                .is_some_and(|c| now - c > crate::core::history::to_chrono(t))
        })
    };
    acks.iter()
        .filter(|a| a.staged != staged && !gone(a))
        .map(|a| a.node.clone())
        .collect()
}

/// The members (by their acknowledgements) other than `me` whose daemon is not connected:
/// neither a fresh reading nor a reading key that went unanswered, and not gone past
/// `member_timeout`. Pure.
pub fn absent(
    acks: &[Ack],
    evidence: &ClockEvidence,
    me: Option<&str>,
    now: chrono::DateTime<chrono::Utc>,
    member_timeout: Option<Duration>,
) -> Vec<Ack> {
    let answered = |n: &str| {
        evidence.fresh.iter().any(|o| o.node == n) || evidence.unanswered.iter().any(|u| u == n)
    };
    let gone = |a: &Ack| {
        member_timeout.is_some_and(|t| {
            a.clock
                .is_some_and(|c| now - c > crate::core::history::to_chrono(t))
        })
    };
    acks.iter()
        .filter(|a| Some(a.node.as_str()) != me && !answered(&a.node) && !gone(a))
        .cloned()
        .collect()
}

/// Those of `nodes` whose acknowledgement says they refused a later key set.
pub fn refusing(acks: &[Ack], nodes: &[String]) -> Vec<String> {
    acks.iter()
        .filter(|a| a.refused.is_some() && nodes.contains(&a.node))
        .map(|a| a.node.clone())
        .collect()
}

/// "node b (3d ahead)", for messages about skewed clocks.
pub fn describe_skew(skewed: &[(String, chrono::Duration)]) -> String {
    let parts: Vec<String> = skewed
        .iter()
        .map(|(n, off)| {
            let size = describe_size(*off);
            let way = if *off > chrono::Duration::zero() {
                "ahead"
            } else {
                "behind"
            };
            format!("node {n} ({size} {way})")
        })
        .collect();
    parts.join(", ")
}

/// A member's clock reading, stored under `{prefix}/{kind}/clocks/{node}` under its session's
/// lease (so the key exists exactly while the node's daemon is connected: a live member). A
/// session writes one when it opens (`probe` 0) and again for each probe the leader posts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reading {
    pub node: String,
    /// The probe this reading answers (0: none, the session's opening record).
    pub probe: u64,
    /// The node's wall clock when it saw the probe.
    pub clock: chrono::DateTime<chrono::Utc>,
}

/// A node's clock measured against the leader's: (the node's reading) minus (the leader's clock
/// at the same moment) lies in `low..=high`. The leader read its clock at `sent` before posting
/// the probe and at `seen` once it read the answer, so the node read its clock between the two
/// by the leader's: `high - low` is the round trip, the error bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offset {
    pub node: String,
    pub low: chrono::Duration,
    pub high: chrono::Duration,
}

impl Offset {
    /// The offset of a node that read `clock` while the leader's clock went from `sent` to
    /// `seen`.
    pub fn measure(
        node: &str,
        clock: chrono::DateTime<chrono::Utc>,
        sent: chrono::DateTime<chrono::Utc>,
        seen: chrono::DateTime<chrono::Utc>,
    ) -> Offset {
        let (a, b) = (clock - seen, clock - sent);
        Offset {
            node: node.to_string(),
            low: a.min(b),
            high: a.max(b),
        }
    }

    /// The middle of the error bar: what is reported as the node's offset.
    pub fn estimate(&self) -> chrono::Duration {
        self.low + (self.high - self.low) / 2
    }

    /// Whether the node's clock is off by more than `tolerance` whatever the round trip hid.
    pub fn beyond(&self, tolerance: chrono::Duration) -> bool {
        self.low > tolerance || self.high < -tolerance
    }

    /// The most the node's clock may be off by.
    pub fn bound(&self) -> chrono::Duration {
        self.low.abs().max(self.high.abs())
    }
}

/// What the leader knows of the other members' clocks before a purge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClockEvidence {
    /// Fresh readings, one per node that answered this rotation's probe.
    pub fresh: Vec<Offset>,
    /// Nodes whose daemon is connected (their reading key lives) but did not answer in time:
    /// their clock is unknown.
    pub unanswered: Vec<String>,
    /// Members whose daemon is not connected (no reading key: stopped, cut off) but who still
    /// count (their acknowledgement stands): their clock is unknown too, and their Keystone may
    /// still be making tokens by it.
    pub absent: Vec<String>,
}

/// Whether fresh readings show this node's clock in agreement with the others': at least one
/// node answered and every answer is within `tolerance` whatever the round trip hid. Pure.
pub fn agrees(evidence: &ClockEvidence, tolerance: Duration) -> bool {
    let tol = crate::core::history::to_chrono(tolerance);
    !evidence.fresh.is_empty() && evidence.fresh.iter().all(|o| o.bound() <= tol)
}

/// Purges held for a skewed clock, as the leader records it under `{prefix}/{kind}/skew-hold`
/// (written in the rotation's own transaction). A node ahead by `size` stamps its tokens'
/// expiry `size` late, and one behind by `size` takes them as valid `size` longer: every key
/// it may have used then stays `size` longer than the retention, until the window of the last
/// moment it may have been off closes (`last_seen + retention + size`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SkewHold {
    /// The node off by the most (the one the keys are held for).
    pub node: String,
    /// How much longer keys stay, in milliseconds: the spread between the fastest and the
    /// slowest clock (the leader's included) at most.
    pub size_ms: i64,
    /// How far off `node` itself was at most, in milliseconds (either way; 0: not recorded).
    #[serde(default)]
    pub node_ms: i64,
    /// Whether it was ahead.
    pub ahead: bool,
    /// The last rotation that saw it off, or the first that found it agreeing again after
    /// (it may have been off right up to that reading), by the leader's clock.
    pub last_seen: chrono::DateTime<chrono::Utc>,
    /// Rotations in a row that saw a clock off by more than the margin (0 once every clock
    /// agrees again while the window is still open).
    pub rotations: u32,
    /// Whether the last reading found it off (the window then counts from the next reading
    /// that finds it agreeing).
    #[serde(default)]
    pub seen_off: bool,
    /// Every node the last reading that found a clock off found off (`node` is the worst of
    /// them). Until each has answered again, the hold stays open (empty in an older record:
    /// `node` alone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub off: Vec<String>,
    /// While one of `off` gives no fresh reading (its daemon stopped or cut off, its Keystone
    /// perhaps still making tokens by its clock): the last moment it was seen off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_since: Option<chrono::DateTime<chrono::Utc>>,
    /// How long, at most, a node of `off` went unread, in milliseconds: keys stay that much
    /// longer too (a node that did not answer applied no later set either, so its Keystone
    /// kept making tokens with a primary the others had demoted).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unread_ms: i64,
}

fn is_zero(ms: &i64) -> bool {
    *ms == 0
}

/// Held rotations in a row after which a lasting skew is critical rather than a warning.
pub const SKEW_CRITICAL_ROTATIONS: u32 = 3;

/// The most keys a key set holds while purges are held for skew: twice `max_active_keys`
/// (at least three more). At the bound rotations pause, keys kept, critical: a set that grows
/// without end outgrows etcd's request limit and takes the leadership with it.
pub fn key_bound(max_active_keys: u64) -> usize {
    let n = usize::try_from(max_active_keys).unwrap_or(usize::MAX);
    n.saturating_mul(2).max(n.saturating_add(3))
}

impl SkewHold {
    pub fn size(&self) -> chrono::Duration {
        chrono::Duration::milliseconds(self.size_ms)
    }

    /// How much longer than the retention keys stay: the skew, and the time a node off went
    /// unread.
    pub fn extra(&self) -> chrono::Duration {
        self.size() + chrono::Duration::milliseconds(self.unread_ms)
    }

    /// When the window of the keys it holds closes.
    pub fn until(&self, retention: Duration) -> chrono::DateTime<chrono::Utc> {
        crate::core::clock::later(self.last_seen, retention)
            .checked_add_signed(self.extra())
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
    }

    /// The nodes found off that have not answered since (none once each has).
    pub fn unread(&self) -> &[String] {
        match self.unread_since {
            Some(_) => &self.off,
            None => &[],
        }
    }

    /// The nodes the last reading found off ([`SkewHold::off`], or `node` in an older record).
    fn off_nodes(&self) -> Vec<String> {
        match (self.off.is_empty(), self.seen_off) {
            (false, _) => self.off.clone(),
            (true, true) => vec![self.node.clone()],
            (true, false) => Vec::new(),
        }
    }

    /// Critical rather than a warning: it lasted [`SKEW_CRITICAL_ROTATIONS`] rotations.
    pub fn lasting(&self) -> bool {
        self.rotations >= SKEW_CRITICAL_ROTATIONS
    }

    /// The kept keys' reason, naming this node's own clock when `own` says it is the one off
    /// ([`describe_own_skew`]): "held for skew: this node's clock (leader n3) is 25s ahead of
    /// every other node (n1, n2); until 2026-...". Otherwise as [`SkewHold::describe`].
    pub fn describe_with(&self, retention: Duration, own: Option<&str>) -> String {
        match own {
            Some(own) => format!(
                "held for skew: {own}; until {}",
                self.until(retention)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => self.describe(retention),
        }
    }

    /// "held for skew of node b (15s ahead) until 2026-...": the kept keys' reason.
    pub fn describe(&self, retention: Duration) -> String {
        let way = if self.ahead { "ahead" } else { "behind" };
        // The node's own offset, and the spread when another clock off the other way (beyond
        // the round trips) makes it larger.
        let spread = describe_size(self.size());
        let own = describe_size(chrono::Duration::milliseconds(self.node_ms));
        let mut size = match self.node_ms > 0 && own != spread {
            true => format!("{own} {way}; {spread} between the fastest and slowest clocks"),
            false => format!("{spread} {way}"),
        };
        if self.unread_ms > 0 {
            let unread = describe_size(chrono::Duration::milliseconds(self.unread_ms));
            let still = match self.unread_since {
                Some(_) => "unread",
                None => "was unread",
            };
            size.push_str(&format!("; {still} for {unread}"));
        }
        format!(
            "held for skew of node {} ({size}) until {}",
            self.node,
            self.until(retention)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// What the leader's rotation does about clocks: see [`judge_skew`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkewJudgement {
    /// Nodes off by more than the margin now (estimate; positive: ahead).
    pub skewed: Vec<(String, chrono::Duration)>,
    /// Live nodes whose clock could not be read.
    pub unanswered: Vec<String>,
    /// Purge nothing at all: a clock is off by an unknown amount (a node that did not answer,
    /// or one judged only by an old acknowledgement).
    pub hold_all: bool,
    /// The hold to record (None: none, or its window closed).
    pub hold: Option<SkewHold>,
}

impl SkewJudgement {
    /// How much longer than the retention keys stay.
    pub fn extra(&self) -> Option<Duration> {
        if self.hold_all {
            return Some(Duration::MAX);
        }
        self.hold
            .as_ref()
            .map(|h| h.extra().to_std().unwrap_or_default())
    }
}

/// Judges the clocks before a purge at `now` (the leader's clock): fresh readings first, a
/// stale acknowledgement only for a member whose daemon is not connected (`stale`, from
/// [`skewed`]). A node off by more than `tolerance` extends the hold; the hold's window
/// (see [`SkewHold`]) outlives the skew. `rotation`: judged for a rotation (counted towards
/// [`SKEW_CRITICAL_ROTATIONS`]), not for the leader's watch between rotations. Pure.
pub fn judge_skew(
    evidence: &ClockEvidence,
    stale: &[(String, chrono::Duration)],
    prior: Option<&SkewHold>,
    tolerance: Duration,
    retention: Duration,
    now: chrono::DateTime<chrono::Utc>,
    rotation: bool,
) -> SkewJudgement {
    let counted = u32::from(rotation);
    let tol = crate::core::history::to_chrono(tolerance);
    let off: Vec<&Offset> = evidence.fresh.iter().filter(|o| o.beyond(tol)).collect();
    let mut skewed: Vec<(String, chrono::Duration)> =
        off.iter().map(|o| (o.node.clone(), o.estimate())).collect();
    skewed.extend(stale.iter().cloned());
    // A token made by the fastest clock is checked by the slowest: what the margin must cover
    // is the spread between them (the leader's own clock counts, at 0), not one node's offset.
    let zero = chrono::Duration::zero();
    let most = |f: &dyn Fn(&Offset) -> chrono::Duration| {
        evidence.fresh.iter().map(f).max().unwrap_or(zero).max(zero)
    };
    let certain = most(&|o| o.low) + most(&|o| -o.high);
    let spread = most(&|o| o.high) + most(&|o| -o.low);
    let worst = evidence
        .fresh
        .iter()
        .max_by_key(|o| o.bound())
        .filter(|_| !off.is_empty() || certain > tol);
    // A node found off that gives no fresh reading now (its daemon stopped or cut off) is
    // unread, not agreeing: its clock is unknown and its Keystone may still be making tokens
    // by it. The hold stays open until each has answered again, and the time it went unread
    // is added to it.
    let silent = |n: &String| evidence.unanswered.contains(n) || evidence.absent.contains(n);
    let unread: Vec<String> = prior
        .map(|p| p.off_nodes().into_iter().filter(silent).collect())
        .unwrap_or_default();
    let open = prior.filter(|h| !unread.is_empty() || h.until(retention) > now);
    let unread_since = open
        .and_then(|p| p.unread_since.or(Some(p.last_seen)))
        .filter(|_| !unread.is_empty());
    // Unread from the last moment it was seen off until now, or until this reading answered.
    let gap = open
        .and_then(|p| p.unread_since)
        .or(unread_since)
        .map_or(0, |t| (now - t).num_milliseconds().max(0));
    let unread_ms = open.map_or(0, |p| p.unread_ms).max(gap);
    let hold = match (worst, open) {
        (Some(w), prior) => {
            let bigger = prior.is_none_or(|p| spread >= p.size());
            let (node, size, node_ms, ahead) = match (bigger, prior) {
                (false, Some(p)) => (p.node.clone(), p.size(), p.node_ms, p.ahead),
                _ => (
                    w.node.clone(),
                    spread,
                    w.bound().num_milliseconds(),
                    w.estimate() > chrono::Duration::zero(),
                ),
            };
            let mut found: Vec<String> = off.iter().map(|o| o.node.clone()).collect();
            if found.is_empty() {
                found.push(w.node.clone());
            }
            found.extend(
                unread
                    .iter()
                    .filter(|n| !found.contains(n))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            Some(SkewHold {
                node,
                size_ms: size.num_milliseconds(),
                node_ms,
                ahead,
                last_seen: now,
                rotations: prior.map_or(0, |p| p.rotations).saturating_add(counted),
                seen_off: true,
                off: found,
                unread_since,
                unread_ms,
            })
        }
        // Found off and unread since: it may be off right now, so it is seen off now.
        (None, Some(p)) if !unread.is_empty() => Some(SkewHold {
            last_seen: now,
            rotations: p.rotations.saturating_add(counted),
            seen_off: true,
            off: unread,
            unread_since,
            unread_ms,
            ..p.clone()
        }),
        (None, Some(p)) if !stale.is_empty() || !evidence.unanswered.is_empty() => Some(SkewHold {
            rotations: p.rotations.saturating_add(counted),
            ..p.clone()
        }),
        // Agreeing again, every node found off answering: it may have been off right up to
        // this reading (it was at the last one), so the window counts from now.
        (None, Some(p)) => Some(SkewHold {
            rotations: 0,
            last_seen: if p.seen_off { now } else { p.last_seen },
            seen_off: false,
            off: Vec::new(),
            unread_since: None,
            unread_ms,
            ..p.clone()
        }),
        (None, None) => None,
    };
    SkewJudgement {
        skewed,
        unanswered: evidence.unanswered.clone(),
        hold_all: !stale.is_empty() || !evidence.unanswered.is_empty(),
        hold,
    }
}

/// "15s", "1.2s", "3d": a skew's size for humans (to the tenth of a second under a minute).
pub fn describe_size(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().unsigned_abs();
    if ms < 10_000 && ms % 1000 != 0 {
        return format!("{}.{}s", ms / 1000, (ms % 1000) / 100);
    }
    crate::core::duration::format(Duration::from_secs(((ms + 500) / 1000).max(1)))
}

/// Who is likely off when a leader finds clocks off by more than `margin`: when every other
/// member (`others`, at least two; each with a fresh reading among `skewed`) is off the same
/// way by about the same amount (within `margin` of each other), the one clock they all
/// disagree with is this node's own: "this node's clock (leader n3) is 25s ahead of every
/// other node (n1, n2)". `None` otherwise: the nodes named are the ones off. Words only:
/// what is held for the skew does not depend on it.
pub fn describe_own_skew(
    me: &str,
    others: &[String],
    skewed: &[(String, chrono::Duration)],
    margin: Duration,
) -> Option<String> {
    if others.len() < 2 || others.iter().any(|o| o == me) {
        return None;
    }
    let offsets = others
        .iter()
        .map(|o| skewed.iter().find(|(n, _)| n == o).map(|(_, d)| *d))
        .collect::<Option<Vec<chrono::Duration>>>()?;
    let zero = chrono::Duration::zero();
    let behind = offsets.iter().all(|d| *d < zero);
    if !behind && !offsets.iter().all(|d| *d > zero) {
        return None;
    }
    let (low, high) = (offsets.iter().min()?, offsets.iter().max()?);
    if *high - *low > chrono::Duration::from_std(margin).unwrap_or(chrono::Duration::MAX) {
        return None;
    }
    // At least this much: the nearest of the others.
    let size = describe_size(offsets.iter().map(|d| d.abs()).min()?);
    let way = match behind {
        true => "ahead of",
        false => "behind",
    };
    Some(format!(
        "this node's clock (leader {me}) is {size} {way} every other node ({})",
        others.join(", ")
    ))
}

/// The words for a follower's `status` when the leader's hold names every other member
/// (`hold_off` covers `others`, at least two) and this node's own reading finds the leader
/// alone off (`seen_here`: the clocks this node finds off, each against its own): "the
/// leader's clock (n3) is 24s ahead of every other node (n1, n2)". `None` otherwise.
pub fn describe_leader_skew(
    leader: &str,
    others: &[String],
    hold_off: &[String],
    seen_here: &[(String, chrono::Duration)],
) -> Option<String> {
    if others.len() < 2 || others.iter().any(|o| o == leader || !hold_off.contains(o)) {
        return None;
    }
    let [(node, offset)] = seen_here else {
        return None;
    };
    if node != leader || offset.is_zero() {
        return None;
    }
    let way = match *offset > chrono::Duration::zero() {
        true => "ahead of",
        false => "behind",
    };
    Some(format!(
        "the leader's clock ({leader}) is {} {way} every other node ({})",
        describe_size(*offset),
        others.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_names_the_leader_when_it_alone_is_off_here_and_the_hold_names_every_other() {
        let others = names(&["n1", "n2"]);
        assert_eq!(
            describe_leader_skew("n3", &others, &others, &off(&[("n3", 24)])).as_deref(),
            Some("the leader's clock (n3) is 24s ahead of every other node (n1, n2)")
        );
        // The hold names one node only: that node is the one off.
        assert_eq!(
            describe_leader_skew("n3", &others, &names(&["n2"]), &off(&[("n3", 24)])),
            None
        );
        // Here another node is off too, or not the leader.
        assert_eq!(
            describe_leader_skew("n3", &others, &others, &off(&[("n3", 24), ("n2", 24)])),
            None
        );
        assert_eq!(
            describe_leader_skew("n3", &others, &others, &off(&[("n2", -24)])),
            None
        );
        // Two nodes: either clock may be the wrong one.
        assert_eq!(
            describe_leader_skew("n2", &names(&["n1"]), &names(&["n1"]), &off(&[("n2", 24)])),
            None
        );
    }

    fn off(v: &[(&str, i64)]) -> Vec<(String, chrono::Duration)> {
        v.iter()
            .map(|(n, s)| (n.to_string(), chrono::Duration::seconds(*s)))
            .collect()
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|n| n.to_string()).collect()
    }

    const MARGIN: Duration = Duration::from_secs(5);

    #[test]
    fn every_other_node_off_the_same_way_blames_this_nodes_clock() {
        let others = names(&["n1", "n2"]);
        assert_eq!(
            describe_own_skew("n3", &others, &off(&[("n1", -25), ("n2", -26)]), MARGIN).as_deref(),
            Some("this node's clock (leader n3) is 25s ahead of every other node (n1, n2)")
        );
        assert_eq!(
            describe_own_skew("n3", &others, &off(&[("n1", 40), ("n2", 42)]), MARGIN).as_deref(),
            Some("this node's clock (leader n3) is 40s behind every other node (n1, n2)")
        );
    }

    #[test]
    fn the_nodes_are_named_when_they_disagree_among_themselves() {
        let others = names(&["n1", "n2"]);
        // One node off alone: it is the one off.
        assert_eq!(
            describe_own_skew("n3", &others, &off(&[("n2", -25)]), MARGIN),
            None
        );
        // Off different ways.
        assert_eq!(
            describe_own_skew("n3", &others, &off(&[("n1", -25), ("n2", 25)]), MARGIN),
            None
        );
        // The same way, but further apart than the margin: not one clock's error.
        assert_eq!(
            describe_own_skew("n3", &others, &off(&[("n1", -25), ("n2", -31)]), MARGIN),
            None
        );
        // Just within the margin of each other.
        assert!(
            describe_own_skew("n3", &others, &off(&[("n1", -25), ("n2", -30)]), MARGIN).is_some()
        );
    }

    #[test]
    fn one_other_node_or_an_unread_one_proves_nothing() {
        // Two nodes: either clock may be the wrong one.
        assert_eq!(
            describe_own_skew("n2", &names(&["n1"]), &off(&[("n1", -25)]), MARGIN),
            None
        );
        // A member with no reading (not among the skewed) may agree with this node.
        assert_eq!(
            describe_own_skew(
                "n4",
                &names(&["n1", "n2", "n3"]),
                &off(&[("n1", -25), ("n2", -25)]),
                MARGIN
            ),
            None
        );
        // A list naming this node itself is no list of the others.
        assert_eq!(
            describe_own_skew("n1", &names(&["n1", "n2"]), &off(&[("n2", -25)]), MARGIN),
            None
        );
        assert_eq!(describe_own_skew("n3", &[], &[], MARGIN), None);
    }
}
