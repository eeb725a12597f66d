//! Who is in the cluster, and who is answering.
//!
//! The table is replaced member by member each round (the static list, or
//! the DNS name's records now; this replica always), keeping what was
//! known of the members that stay. Liveness is what the last probe said; a
//! member not probed yet counts as live (a new replica owns its share at
//! once, and a failed request to it suspects it within one request). A
//! suspected member is not live until a probe answers again, and not
//! before the suspicion is `refresh` old: a member that fails requests but
//! answers probes does not flap back within the round.

use std::collections::BTreeMap;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use super::{Inner, Member, MemberStatus};
use crate::config::PeerSource;

#[derive(Debug, Clone, Default)]
struct State {
    /// Whether the last probe answered 200; `None`: not probed yet.
    last_probe: Option<bool>,
    last_ok: Option<Instant>,
    /// Suspected by a failed request; not live before this instant, and
    /// after it only once a probe answers.
    suspected_until: Option<Instant>,
}

impl State {
    fn live(&self) -> bool {
        self.suspected_until.is_none() && self.last_probe.unwrap_or(true)
    }
}

/// The member table.
#[derive(Debug)]
pub(super) struct Members {
    me: Member,
    table: RwLock<BTreeMap<Member, State>>,
    /// Whether the last DNS lookup failed (logged once per outage).
    dns_failing: AtomicBool,
}

impl Members {
    pub(super) fn new(me: Member, initial: Vec<Member>) -> Members {
        let members = Members {
            me,
            table: RwLock::new(BTreeMap::new()),
            dns_failing: AtomicBool::new(false),
        };
        members.set(initial);
        members
    }

    /// The members are now `list` (and this replica).
    fn set(&self, list: Vec<Member>) {
        let mut table = self.table.write();
        let mut next = BTreeMap::new();
        for m in list.into_iter().chain(std::iter::once(self.me.clone())) {
            if next.contains_key(&m) {
                continue;
            }
            let state = match table.remove(&m) {
                Some(s) => s,
                None => {
                    if m != self.me {
                        tracing::info!(member = %m, "cluster member joined");
                    }
                    State::default()
                }
            };
            next.insert(m, state);
        }
        for gone in table.keys() {
            tracing::info!(member = %gone, "cluster member left");
        }
        *table = next;
    }

    /// Every live member (this replica always among them).
    pub(super) fn live(&self) -> Vec<Member> {
        let table = self.table.read();
        (table.iter())
            .filter(|(m, s)| **m == self.me || s.live())
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// (live, not live) counts.
    pub(super) fn counts(&self) -> (usize, usize) {
        let table = self.table.read();
        let live = (table.iter())
            .filter(|(m, s)| **m == self.me || s.live())
            .count();
        (live, table.len() - live)
    }

    /// Suspects `member` for at least `hold`; whether it was live (a
    /// change). This replica and non-members are left alone.
    pub(super) fn suspect(&self, member: &Member, hold: Duration) -> bool {
        if *member == self.me {
            return false;
        }
        let mut table = self.table.write();
        let Some(state) = table.get_mut(member) else {
            return false;
        };
        let was = state.live();
        state.suspected_until = Some(Instant::now() + hold);
        was
    }

    /// Records a probe's answer.
    fn probed(&self, member: &Member, ok: bool) {
        let mut table = self.table.write();
        let Some(state) = table.get_mut(member) else {
            return;
        };
        let was = state.live();
        state.last_probe = Some(ok);
        let now = Instant::now();
        if ok {
            state.last_ok = Some(now);
            if state.suspected_until.is_some_and(|until| now >= until) {
                state.suspected_until = None;
            }
        }
        match (was, state.live()) {
            (true, false) => tracing::warn!(%member, "cluster member not answering its probe"),
            (false, true) => tracing::info!(%member, "cluster member answering again"),
            _ => {}
        }
    }

    pub(super) fn statuses(&self) -> Vec<MemberStatus> {
        let table = self.table.read();
        let mut out: Vec<MemberStatus> = (table.iter())
            .map(|(m, s)| MemberStatus {
                member: m.clone(),
                live: *m == self.me || s.live(),
                is_me: *m == self.me,
                last_probe_ok: s.last_ok.map(|t| t.elapsed()),
            })
            .collect();
        out.sort_by_key(|s| !s.is_me);
        out
    }

    /// Every member but this one.
    fn others(&self) -> Vec<Member> {
        let table = self.table.read();
        table.keys().filter(|m| **m != self.me).cloned().collect()
    }
}

/// The membership task: a round at once, then one every `refresh`, until
/// the last [`super::Cluster`] handle is dropped.
pub(super) async fn run(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        round(&strong).await;
        let refresh = strong.settings.refresh;
        drop(strong);
        tokio::time::sleep(refresh).await;
    }
}

/// Read the members again and probe every other one (at once).
pub(super) async fn round(inner: &Inner) {
    match &inner.settings.peers {
        PeerSource::Static(list) => inner
            .members
            .set(list.iter().map(|p| Member(p.clone())).collect()),
        PeerSource::Dns { host, port } => {
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(addrs) => {
                    if inner.members.dns_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(%host, "cluster peers_dns resolves again");
                    }
                    let mut list: Vec<Member> = addrs.map(|a| Member(a.to_string())).collect();
                    list.sort();
                    list.dedup();
                    inner.members.set(list);
                }
                // The members stay as they were.
                Err(e) => {
                    if !inner.members.dns_failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(%host, error = %e, "cluster peers_dns does not resolve; keeping the members known");
                    }
                }
            }
        }
    }
    let others = inner.members.others();
    let probes = others.iter().map(|m| super::peer::probe(inner, m));
    let answers = futures_util::future::join_all(probes).await;
    for (m, ok) in others.iter().zip(answers) {
        inner.members.probed(m, ok);
    }
    inner.publish_metrics();
}
