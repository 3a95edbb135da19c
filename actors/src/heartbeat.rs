//! HeartbeatActor: owns the node's timers.
//!
//! As leader: heartbeat ticks every `heartbeat_interval`, a quorum check every
//! two `election_timeout`s, a trim tick every `trim_interval`. Otherwise: one
//! election timer, started over whenever the ElectionActor says so (short
//! until a first leader is heard, see [`boot_election_timeout`]). Every
//! election timer carries the generation it was armed with; the ElectionActor
//! ignores a timeout whose generation is no longer current, so a timer that
//! fires just after a heartbeat was handled cannot start an election.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use protocol::{NodeId, Role};
use rand::Rng;
use tracing::{info, info_span};

use crate::election::ElectionActor;
use crate::messages::*;

/// Runs the node's timers and sends their ticks to the ElectionActor.
pub struct HeartbeatActor {
    settings: Arc<Settings>,
    view: SharedView,
    election: Addr<ElectionActor>,
    election_timer: Option<SpawnHandle>,
    /// The last election timer the ElectionActor asked for: a restart arms it
    /// again, or a follower whose leader is gone would never time out.
    last_armed: Option<ArmElectionTimer>,
    leader_timers: Vec<SpawnHandle>,
}

impl HeartbeatActor {
    /// Starts with no timer running: the ElectionActor's first [`RoleChanged`]
    /// and [`ArmElectionTimer`] start them.
    pub fn new(settings: Arc<Settings>, view: SharedView, election: Addr<ElectionActor>) -> Self {
        HeartbeatActor {
            settings,
            view,
            election,
            election_timer: None,
            last_armed: None,
            leader_timers: Vec::new(),
        }
    }

    fn arm_election_timer(&mut self, arm: ArmElectionTimer, ctx: &mut Context<Self>) {
        if let Some(handle) = self.election_timer.take() {
            ctx.cancel_future(handle);
        }
        let members = self.settings.member_ids();
        let base = if arm.at_boot {
            boot_election_timeout(self.settings.election_timeout)
        } else {
            self.settings.election_timeout
        };
        let timeout = election_timeout_for(base, self.settings.node_id, &members, rand::thread_rng().gen());
        let generation = arm.generation;
        self.election_timer = Some(ctx.run_later(timeout, move |act, _| {
            act.election_timer = None;
            act.election.do_send(Tick::ElectionTimeout { generation });
        }));
    }

    fn cancel_leader_timers(&mut self, ctx: &mut Context<Self>) {
        for handle in self.leader_timers.drain(..) {
            ctx.cancel_future(handle);
        }
    }

    fn start_leader_timers(&mut self, ctx: &mut Context<Self>) {
        let ticks = [
            (self.settings.heartbeat_interval, Tick::Heartbeat),
            // Two timeouts long, so one lost heartbeat answer cannot depose a healthy leader.
            (self.settings.election_timeout * 2, Tick::QuorumCheck),
            (self.settings.trim_interval, Tick::Trim),
        ];
        for (every, tick) in ticks {
            let handle = ctx.run_interval(every, move |act, _| act.election.do_send(tick));
            self.leader_timers.push(handle);
        }
    }
}

/// A randomized election timeout in [base, 1.5 base), shifted so that higher
/// ids tend to time out first: the original system's "highest id wins"
/// preference, kept as a tie-break between equally eligible candidates.
pub fn election_timeout_for(base: Duration, id: NodeId, members: &[NodeId], random: f64) -> Duration {
    let rank_from_top = members.iter().filter(|&&m| m > id).count() as f64;
    let count = members.len().max(1) as f64;
    let bias = base.mul_f64(0.25 * rank_from_top / count);
    base + bias + base.mul_f64(0.25 * random.clamp(0.0, 1.0))
}

/// The election timeout while no leader has been heard since start: at most
/// 1 s (etcd similarly fast-forwards its election ticks at boot), so a fresh
/// cluster with the default 8 s timeout elects in about a second.
pub fn boot_election_timeout(election_timeout: Duration) -> Duration {
    election_timeout.min(BOOT_ELECTION_TIMEOUT)
}

const BOOT_ELECTION_TIMEOUT: Duration = Duration::from_secs(1);

impl Actor for HeartbeatActor {
    type Context = Context<Self>;
}

impl Supervised for HeartbeatActor {
    fn restarting(&mut self, ctx: &mut Context<Self>) {
        let _span =
            info_span!("heartbeat", node = self.settings.node_id, term = self.view.term(), role = %self.view.role())
                .entered();
        info!("heartbeat actor restarting; timers start over");
        self.election_timer = None;
        self.leader_timers.clear();
        if self.view.role() == Role::Leader {
            self.start_leader_timers(ctx);
        } else if let Some(arm) = self.last_armed {
            // A tick of a generation the ElectionActor has left behind is ignored there.
            self.arm_election_timer(ArmElectionTimer { at_boot: false, ..arm }, ctx);
        }
    }
}

impl Handler<RoleChanged> for HeartbeatActor {
    type Result = ();

    fn handle(&mut self, change: RoleChanged, ctx: &mut Context<Self>) {
        if change.role == Role::Leader {
            if let Some(handle) = self.election_timer.take() {
                ctx.cancel_future(handle);
            }
            if self.leader_timers.is_empty() {
                self.start_leader_timers(ctx);
            }
        } else {
            self.cancel_leader_timers(ctx);
        }
    }
}

impl Handler<ArmElectionTimer> for HeartbeatActor {
    type Result = ();

    fn handle(&mut self, arm: ArmElectionTimer, ctx: &mut Context<Self>) {
        self.last_armed = Some(arm);
        self.arm_election_timer(arm, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_ids_time_out_first_at_equal_luck() {
        let base = Duration::from_millis(800);
        let members = [1, 2, 3];
        let t: Vec<Duration> = members
            .iter()
            .map(|&id| election_timeout_for(base, id, &members, 0.5))
            .collect();
        assert!(t[2] < t[1] && t[1] < t[0], "{t:?}");
        for &id in &members {
            for random in [0.0, 1.0] {
                let timeout = election_timeout_for(base, id, &members, random);
                assert!(timeout >= base && timeout < base.mul_f64(1.5), "{timeout:?}");
            }
        }
    }
}
