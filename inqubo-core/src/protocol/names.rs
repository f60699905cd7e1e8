//! Every exchange, queue and routing key Inqubo uses, derived from `(prefix, workflow, step)`.
//!
//! The layout, for the default prefix `inqubo`:
//!
//! | name | kind | role |
//! |---|---|---|
//! | `inqubo` | topic exchange | triggers and every lifecycle event |
//! | `inqubo.<workflow>.<step>` | queue | a step's input, bound to its parent's `succeeded` key |
//! | `inqubo.<workflow>.parked` | queue | inputs that failed for good, with the reason in headers |
//! | `inqubo.retry` | topic exchange | delivers a retry to one step's queue (`#.<workflow>.<step>`) |
//! | `inqubo.delay.<k>`, k = 0..24 | topic exchange + queue | retry delay tiers (see below) |
//! | `inqubo.join` | direct exchange | join pieces, to `<workflow>.<join>.<shard>` |
//! | `inqubo.<workflow>.<join>.shard-<n>` | queue | one shard of a join (single active consumer) |
//! | `inqubo.<workflow>.<join>.state-<n>` | queue | the latest snapshots of that shard |
//! | `inqubo.<workflow>.run-states` | stream | `run.failed` and `run.cancelled`: what every runner follows to stop ended runs |
//! | `inqubo.registry` | queue | workflow definitions announced by runners |
//! | `inqubo.monitor` | queue | what `inqubo monitor` records |
//!
//! ## Retry delays without head-of-line blocking
//!
//! A delay is rounded up to a whole number of 100 ms ticks and written in binary. Tier `k`
//! holds messages for `2^k` ticks: its queue has a queue-level TTL, so every message in it
//! expires in arrival order and a long delay never sits in front of a short one. On expiry a
//! tier dead-letters into the next lower tier's exchange, which either parks the message in
//! its queue (bit set) or passes it straight on (bit clear). The routing key carries the bits,
//! most significant first, then `<workflow>.<step>`; after tier 0 the message reaches the
//! `retry` exchange, which routes it to that one step's queue. 25 tiers cover delays up to
//! about 38 days with a fixed set of 25 queues per prefix, whatever the number of workflows.

use std::{fmt, time::Duration};

use crate::{
    name::{StepName, WorkflowName},
    protocol::{DEFAULT_PREFIX, DELAY_TICK, DELAY_TIERS, RoutingKey, delay_ticks},
    workflow::{Workflow, WorkflowDefinition},
};

/// Shards per join unless an operator raised them (`inqubo topology reshard`): each has its
/// own queue and single active consumer, so the joins of one step spread over up to this many
/// runners.
pub const JOIN_SHARDS: u32 = 4;

/// Routing slots per join: a run's pieces are routed by its slot (FNV-1a of the run id, modulo
/// 64), and shard `k` of `n` takes the slots `s` with `s % n == k`. Publishers never need to
/// know how many shards a join has, and raising the count only rebinds slots. Also the most
/// shards a join may have.
pub const JOIN_SLOTS: u32 = 64;

/// Snapshots a join state queue keeps: the newest few, so that a stale one published late by
/// a consumer that lost its shard cannot push the current one out (see
/// [`JoinBook::newest`](crate::join::JoinBook::newest)).
pub const JOIN_STATE_SLOTS: u32 = 8;

/// The name of the run join: the join that waits for every last step of a run.
pub const RUN_JOIN: &str = "_run";

/// The longest name prefix accepted.
pub const MAX_PREFIX_LEN: usize = 64;

/// The name of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueName(String);

impl QueueName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where to publish a message so that it reaches one step's queue after a delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayRoute {
    /// The exchange to publish to.
    pub exchange: String,
    /// The routing key to publish with.
    pub routing_key: String,
    /// The delay the message will actually wait (rounded up to [`DELAY_TICK`]).
    pub delay: Duration,
}

/// A name prefix that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prefix `{0}` must be 1 to 64 ASCII letters, digits, `_`, `-` or `.`")]
pub struct PrefixError(pub String);

/// The names of one prefix's topology.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Names {
    prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Names {
    /// The names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Result<Self, PrefixError> {
        let prefix = prefix.into();
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            return Err(PrefixError(prefix));
        }
        Ok(Self { prefix })
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic exchange carrying triggers and lifecycle events: the prefix itself.
    pub fn exchange(&self) -> &str {
        &self.prefix
    }

    /// The exchange that routes a delayed retry to its step's queue.
    pub fn retry_exchange(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    /// The exchange of delay tier `tier`.
    pub fn delay_exchange(&self, tier: u32) -> String {
        format!("{}.delay.{tier}", self.prefix)
    }

    /// The queue of delay tier `tier`.
    pub fn delay_queue(&self, tier: u32) -> QueueName {
        QueueName(format!("{}.delay.{tier}", self.prefix))
    }

    /// Where tier `tier` sends what expires in it: the next lower tier, or the retry exchange.
    pub fn delay_next(&self, tier: u32) -> String {
        match tier.checked_sub(1) {
            Some(lower) => self.delay_exchange(lower),
            None => self.retry_exchange(),
        }
    }

    /// The binding patterns of tier `tier`'s exchange: `(to its queue, to the next tier)`.
    /// The first matches keys whose bit for this tier is 1, the second those where it is 0.
    pub fn delay_bindings(tier: u32) -> (String, String) {
        let skip = "*.".repeat(DELAY_TIERS.saturating_sub(1 + tier) as usize);
        (format!("{skip}1.#"), format!("{skip}0.#"))
    }

    /// The input queue of `step`.
    pub fn step_queue(&self, workflow: &WorkflowName, step: &StepName) -> QueueName {
        QueueName(format!("{}.{workflow}.{step}", self.prefix))
    }

    /// The queue of `step`'s inputs of runs of class `priority`: the step's own queue for
    /// `normal`, `<prefix>.<workflow>.<step>.high` or `.low` otherwise.
    pub fn lane_queue(
        &self,
        workflow: &WorkflowName,
        step: &StepName,
        priority: crate::Priority,
    ) -> QueueName {
        match priority.lane() {
            Some(lane) => QueueName(format!("{}.{workflow}.{step}.{lane}", self.prefix)),
            None => self.step_queue(workflow, step),
        }
    }

    /// The parked queue of `workflow`.
    pub fn parked_queue(&self, workflow: &WorkflowName) -> QueueName {
        QueueName(format!("{}.{workflow}.parked", self.prefix))
    }

    /// The redelivered queue of `workflow`: inputs of any of its steps that a runner received
    /// and never acknowledged (it died or lost its connection holding them). Each runner
    /// takes one of them at a time, so that a delivery there is one that started, and an
    /// input that kills its runners is told apart from the neighbours it was fetched with.
    pub fn redelivered_queue(&self, workflow: &WorkflowName) -> QueueName {
        QueueName(format!("{}.{workflow}.redelivered", self.prefix))
    }

    /// The queue that elects which runner fires `workflow`'s cron schedules: every runner with
    /// schedules consumes it as a single active consumer and drops a probe in it every half
    /// second; the one that receives the probes (the active consumer) is the leader.
    pub fn scheduler_queue(&self, workflow: &WorkflowName) -> QueueName {
        QueueName(format!("{}.{workflow}.scheduler", self.prefix))
    }

    /// The queue of `workflow`'s schedules added at run time (`inqubo schedule add`): one
    /// message per schedule, read by the runner that leads the schedules.
    pub fn schedules_queue(&self, workflow: &WorkflowName) -> QueueName {
        QueueName(format!("{}.{workflow}.schedules", self.prefix))
    }

    /// The stream of `workflow`'s `run.failed` and `run.cancelled` events, which every runner
    /// reads from its start, so that a runner started late knows which runs ended.
    pub fn run_state_queue(&self, workflow: &WorkflowName) -> QueueName {
        QueueName(format!("{}.{workflow}.run-states", self.prefix))
    }

    /// The queue where runners announce their workflow definitions, read by tools such as
    /// `inqubo workflows`.
    pub fn registry_queue(&self) -> QueueName {
        QueueName(format!("{}.registry", self.prefix))
    }

    /// The queue `inqubo monitor` records run history from.
    pub fn monitor_queue(&self) -> QueueName {
        self.observer_queue("monitor")
    }

    /// `<prefix>.<observer>`: the durable queue of a tool that follows this prefix's events
    /// (the monitor, the chaos harness), bound with
    /// [`RoutingKey::observed_events`](crate::protocol::RoutingKey::observed_events).
    /// `observer` is one word without dots, and none of the names above (`registry`, `retry`,
    /// `delay`, `join`).
    pub fn observer_queue(&self, observer: &str) -> QueueName {
        QueueName(format!("{}.{observer}", self.prefix))
    }

    /// Every queue a runner declares for the workflow `definition` describes (not those the
    /// prefix's workflows share), each with what it is for: what `inqubo topology` shows and
    /// `inqubo topology delete` removes.
    pub fn workflow_queues(
        &self,
        definition: &WorkflowDefinition,
        join_shards: u32,
    ) -> Vec<(QueueName, String)> {
        let workflow = &definition.name;
        let mut queues = Vec::new();
        for step in &definition.steps {
            let feeds = match step.parents.as_slice() {
                [] => "the trigger".to_owned(),
                [parent] => format!("`{parent}` succeeded"),
                parents => format!(
                    "its join shards, once {} all succeeded",
                    parents
                        .iter()
                        .map(|p| format!("`{p}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            queues.push((
                self.step_queue(workflow, &step.name),
                format!(
                    "step `{}`: its inputs, from {feeds}, and its retries",
                    step.name
                ),
            ));
        }
        queues.push((
            self.redelivered_queue(workflow),
            "inputs a runner died holding, run one at a time per runner".to_owned(),
        ));
        queues.push((
            self.parked_queue(workflow),
            "inputs that failed for good or were skipped, with why (`inqubo parked`)".to_owned(),
        ));
        queues.push((
            self.scheduler_queue(workflow),
            "elects the runner that fires the workflow's cron schedules".to_owned(),
        ));
        queues.push((
            self.schedules_queue(workflow),
            "the schedules added with `inqubo schedule add`, one message each".to_owned(),
        ));
        queues.push((
            self.run_state_queue(workflow),
            "stream of failed, cancelled and resumed runs, which every runner reads".to_owned(),
        ));
        // A join step waits for several parents, or collects a map's elements.
        let is_map = |name: &StepName| definition.steps.iter().any(|s| s.map && s.name == *name);
        let joins = definition
            .steps
            .iter()
            .filter(|s| s.parents.len() > 1 || s.parents.iter().any(is_map))
            .map(|s| s.name.to_string())
            .chain([RUN_JOIN.to_owned()]);
        for join in joins {
            let what = if join == RUN_JOIN {
                "the run join, which admits runs and ends them".to_owned()
            } else {
                format!("join `{join}`")
            };
            for shard in 0..join_shards {
                queues.push((
                    self.join_queue(workflow, &join, shard),
                    format!("{what}: pieces of runs of shard {shard}"),
                ));
                queues.push((
                    self.join_journal_queue(workflow, &join, shard),
                    format!("{what}: shard {shard}'s journal of what it holds"),
                ));
                queues.push((
                    self.join_state_queue(workflow, &join, shard),
                    format!("{what}: shard {shard}'s state as older versions wrote it (read only)"),
                ));
            }
        }
        queues
    }

    /// The queues every workflow under this prefix shares, each with what it is for.
    pub fn shared_queues(&self) -> Vec<(QueueName, String)> {
        let mut queues = vec![(
            self.registry_queue(),
            "the workflow definitions runners announce (`inqubo workflows`)".to_owned(),
        )];
        for tier in 0..DELAY_TIERS {
            let delay = DELAY_TICK.saturating_mul(1 << tier);
            queues.push((
                self.delay_queue(tier),
                format!("retry delay tier {tier}: holds a retry {delay:?}"),
            ));
        }
        queues.push((
            self.monitor_queue(),
            "the events `inqubo monitor` records (if one ever ran)".to_owned(),
        ));
        queues
    }

    /// The direct exchange that carries join pieces to join shards.
    pub fn join_exchange(&self) -> String {
        format!("{}.join", self.prefix)
    }

    /// The joins of `workflow` that need shards: every join step, and the run join, which
    /// decides how each run ends.
    pub fn joins(workflow: &Workflow) -> Vec<String> {
        workflow
            .steps()
            .iter()
            .filter(|s| s.is_join())
            .map(|s| s.name().to_string())
            .chain([RUN_JOIN.to_owned()])
            .collect()
    }

    /// The routing slot of `run_id` among [`JOIN_SLOTS`] (FNV-1a, stable across versions).
    pub fn join_slot(run_id: &str) -> u32 {
        let hash = run_id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        });
        hash % JOIN_SLOTS
    }

    /// The shard of `run_id` in a join of `shards` shards: the shard its slot is bound to.
    pub fn join_shard(run_id: &str, shards: u32) -> u32 {
        Self::join_slot(run_id) % shards.clamp(1, JOIN_SLOTS)
    }

    /// The slots shard `shard` of `shards` takes.
    pub fn shard_slots(shard: u32, shards: u32) -> impl Iterator<Item = u32> {
        let step = usize::try_from(shards.clamp(1, JOIN_SLOTS)).unwrap_or(1);
        (shard..JOIN_SLOTS).step_by(step)
    }

    /// The routing key of slot `slot` of join `join` on the join exchange.
    pub fn join_key(workflow: &WorkflowName, join: &str, slot: u32) -> String {
        format!("{workflow}.{join}.{slot}")
    }

    /// The queue of shard `shard` of join `join`.
    pub fn join_queue(&self, workflow: &WorkflowName, join: &str, shard: u32) -> QueueName {
        QueueName(format!("{}.{workflow}.{join}.shard-{shard}", self.prefix))
    }

    /// The queue holding the latest state snapshots of shard `shard` of join `join`.
    pub fn join_state_queue(&self, workflow: &WorkflowName, join: &str, shard: u32) -> QueueName {
        QueueName(format!("{}.{workflow}.{join}.state-{shard}", self.prefix))
    }

    /// The journal queue of shard `shard` of join `join`: its batch records and snapshots
    /// (see [`journal`](crate::journal)).
    pub fn join_journal_queue(&self, workflow: &WorkflowName, join: &str, shard: u32) -> QueueName {
        QueueName(format!("{}.{workflow}.{join}.journal-{shard}", self.prefix))
    }

    /// The key binding a step's queue to the retry exchange.
    pub fn retry_binding(workflow: &WorkflowName, step: &StepName) -> String {
        format!("#.{workflow}.{step}")
    }

    /// Where to publish a message for `step` so that it arrives after `delay`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use inqubo_core::protocol::Names;
    ///
    /// let route = Names::default().delay_route(
    ///     Duration::from_millis(1_000),
    ///     &"simple".parse().unwrap(),
    ///     &"process_data".parse().unwrap(),
    /// );
    /// // 1 s = 10 ticks = 0b1010: tiers 3 (800 ms) and 1 (200 ms).
    /// assert_eq!(route.exchange, "inqubo.delay.3");
    /// assert!(route.routing_key.ends_with("1.0.1.0.simple.process_data"));
    /// ```
    pub fn delay_route(
        &self,
        delay: Duration,
        workflow: &WorkflowName,
        step: &StepName,
    ) -> DelayRoute {
        self.delayed(delay, &format!("{workflow}.{step}"))
    }

    /// Like [`Names::delay_route`], to the lane of class `priority` (`<workflow>.<step>.high`
    /// at the end of the key; `normal` is the step's own queue).
    pub fn lane_route(
        &self,
        delay: Duration,
        workflow: &WorkflowName,
        step: &StepName,
        priority: crate::Priority,
    ) -> DelayRoute {
        match priority.lane() {
            Some(lane) => self.delayed(delay, &format!("{workflow}.{step}.{lane}")),
            None => self.delay_route(delay, workflow, step),
        }
    }

    /// The binding on the retry exchange of the lane queue of class `priority` of `step`.
    pub fn lane_binding(
        workflow: &WorkflowName,
        step: &StepName,
        priority: crate::Priority,
    ) -> String {
        match priority.lane() {
            Some(lane) => format!("#.{workflow}.{step}.{lane}"),
            None => format!("#.{workflow}.{step}"),
        }
    }

    /// Where to publish a trigger of `workflow` that starts its run after `delay`: through
    /// the delay tiers like a retry, ending in `inqubo.retry` under
    /// `<bits>.<workflow>.run.triggered`, which every queue that takes the workflow's triggers
    /// is bound to (see [`Names::delayed_trigger_binding`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use inqubo_core::protocol::Names;
    ///
    /// let route = Names::default().delayed_trigger_route(Duration::from_secs(2), &"simple".parse().unwrap());
    /// // 2 s = 20 ticks = 0b10100: tiers 4 (1.6 s) and 2 (400 ms).
    /// assert_eq!(route.exchange, "inqubo.delay.4");
    /// assert!(route.routing_key.ends_with(".1.0.1.0.0.simple.run.triggered"));
    /// ```
    pub fn delayed_trigger_route(&self, delay: Duration, workflow: &WorkflowName) -> DelayRoute {
        self.delayed(delay, RoutingKey::run_triggered(workflow).as_str())
    }

    /// The binding on the retry exchange of a queue that takes `workflow`'s triggers: what a
    /// delayed trigger arrives under once its delay is over.
    pub fn delayed_trigger_binding(workflow: &WorkflowName) -> String {
        format!("#.{}", RoutingKey::run_triggered(workflow).as_str())
    }

    /// The route through the delay tiers to the retry exchange's key `target` after `delay`.
    fn delayed(&self, delay: Duration, target: &str) -> DelayRoute {
        let ticks = delay_ticks(delay);
        if ticks == 0 {
            return DelayRoute {
                exchange: self.retry_exchange(),
                routing_key: target.to_owned(),
                delay: Duration::ZERO,
            };
        }
        let bits: Vec<&str> = (0..DELAY_TIERS)
            .rev()
            .map(|tier| if ticks & (1 << tier) != 0 { "1" } else { "0" })
            .collect();
        let highest = 63 - ticks.leading_zeros();
        DelayRoute {
            exchange: self.delay_exchange(highest),
            routing_key: format!("{}.{target}", bits.join(".")),
            delay: DELAY_TICK * u32::try_from(ticks).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_DELAY;

    fn wf() -> WorkflowName {
        WorkflowName::new("simple").unwrap()
    }
    fn step() -> StepName {
        StepName::new("process_data").unwrap()
    }

    #[test]
    fn names_follow_the_documented_layout() {
        let names = Names::default();
        assert_eq!(names.exchange(), "inqubo");
        assert_eq!(
            names.step_queue(&wf(), &step()).as_str(),
            "inqubo.simple.process_data"
        );
        assert_eq!(names.parked_queue(&wf()).as_str(), "inqubo.simple.parked");
        assert_eq!(names.retry_exchange(), "inqubo.retry");
        assert_eq!(names.delay_queue(4).as_str(), "inqubo.delay.4");
        assert_eq!(names.monitor_queue().as_str(), "inqubo.monitor");
        assert_eq!(
            names.observer_queue("chaos-observer").as_str(),
            "inqubo.chaos-observer"
        );
        let custom = Names::new("acme").unwrap();
        assert_eq!(
            custom.step_queue(&wf(), &step()).as_str(),
            "acme.simple.process_data"
        );
    }

    #[test]
    fn join_shards_are_stable_and_spread() {
        assert_eq!(Names::join_shard("run-1", 4), Names::join_shard("run-1", 4));
        let mut seen = [0; JOIN_SHARDS as usize];
        for i in 0..1000 {
            seen[Names::join_shard(&format!("run-{i}"), JOIN_SHARDS) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
        // FNV-1a of the empty string, so the hash never changes between versions.
        // Slots refine the former `% 4`: a run keeps its shard while a join has 4 shards.
        assert_eq!(Names::join_shard("", 4), 0x811c_9dc5 % 4);
        assert_eq!(Names::join_slot(""), 0x811c_9dc5 % JOIN_SLOTS);
        let slots: Vec<u32> = Names::shard_slots(5, 8).collect();
        assert_eq!(slots, [5, 13, 21, 29, 37, 45, 53, 61]);
        assert_eq!(Names::shard_slots(0, 4).count(), 16);
        let names = Names::default();
        assert_eq!(
            names.join_queue(&wf(), "d", 2).as_str(),
            "inqubo.simple.d.shard-2"
        );
        assert_eq!(Names::join_key(&wf(), RUN_JOIN, 1), "simple._run.1");
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(Names::new("").is_err());
        assert!(Names::new("has space").is_err());
        assert!(Names::new("x".repeat(MAX_PREFIX_LEN)).is_ok());
        assert!(Names::new("x".repeat(MAX_PREFIX_LEN + 1)).is_err());
        assert!(Names::new("t-1.x_y").is_ok());
    }

    #[test]
    fn delays_round_up_to_ticks_and_cap() {
        assert_eq!(delay_ticks(Duration::ZERO), 0);
        assert_eq!(delay_ticks(Duration::from_millis(1)), 1);
        assert_eq!(delay_ticks(Duration::from_millis(100)), 1);
        assert_eq!(delay_ticks(Duration::from_millis(101)), 2);
        assert_eq!(delay_ticks(Duration::from_secs(300)), 3000);
        assert_eq!(
            delay_ticks(Duration::from_secs(u64::MAX)),
            (1 << DELAY_TIERS) - 1
        );
        assert_eq!(MAX_DELAY, DELAY_TICK * ((1 << DELAY_TIERS) - 1));
    }

    #[test]
    fn delay_routes_spell_the_ticks_in_binary_from_the_highest_tier() {
        let route = Names::default().delay_route(Duration::from_millis(500), &wf(), &step());
        // 5 ticks = 0b101
        let words: Vec<&str> = route.routing_key.split('.').collect();
        assert_eq!(words.len(), DELAY_TIERS as usize + 2);
        assert_eq!(
            &words[DELAY_TIERS as usize - 3..],
            ["1", "0", "1", "simple", "process_data"]
        );
        assert!(words[..DELAY_TIERS as usize - 3].iter().all(|w| *w == "0"));
        assert_eq!(route.exchange, "inqubo.delay.2");
        assert_eq!(route.delay, Duration::from_millis(500));
    }

    #[test]
    fn zero_delay_goes_straight_to_the_retry_exchange() {
        let route = Names::default().delay_route(Duration::ZERO, &wf(), &step());
        assert_eq!(route.exchange, "inqubo.retry");
        assert_eq!(route.routing_key, "simple.process_data");
    }

    #[test]
    fn each_tier_binding_matches_exactly_its_own_bit() {
        // The binding pattern of tier k has DELAY_TIERS-1-k leading wildcards: check that the
        // word it tests is the bit of tier k in a delay route.
        let names = Names::default();
        for ticks in [1_u64, 2, 3, 10, 1000, (1 << DELAY_TIERS) - 1] {
            let route = names.delay_route(DELAY_TICK * ticks as u32, &wf(), &step());
            let words: Vec<&str> = route.routing_key.split('.').collect();
            for tier in 0..DELAY_TIERS {
                let (bit_set, _) = Names::delay_bindings(tier);
                let position = bit_set.matches("*.").count();
                assert_eq!(position, (DELAY_TIERS - 1 - tier) as usize);
                let expected = if ticks & (1 << tier) != 0 { "1" } else { "0" };
                assert_eq!(words[position], expected, "ticks {ticks} tier {tier}");
            }
        }
    }

    #[test]
    fn the_step_after_a_map_has_join_shards_in_the_listing() {
        use crate::{Step, StepContext, StepError, Workflow};
        async fn list(n: u32, _: StepContext) -> Result<Vec<u32>, StepError> {
            Ok((0..n).collect())
        }
        async fn inc(x: u32, _: StepContext) -> Result<u32, StepError> {
            Ok(x + 1)
        }
        async fn total(v: Vec<u32>, _: StepContext) -> Result<u32, StepError> {
            Ok(v.iter().sum())
        }
        let flow = Workflow::builder("m")
            .start(Step::new("list", list))
            .map(Step::new("inc", inc))
            .reduce(Step::new("total", total))
            .build()
            .unwrap();
        let listed: Vec<String> = Names::default()
            .workflow_queues(&flow.definition(), JOIN_SHARDS)
            .into_iter()
            .map(|(queue, _)| queue.as_str().to_owned())
            .collect();
        assert!(
            listed.contains(&"inqubo.m.total.shard-0".to_owned()),
            "{listed:?}"
        );
        assert!(!listed.iter().any(|q| q.starts_with("inqubo.m.inc.shard")));
        assert_eq!(Names::joins(&flow), ["total", "_run"]);
    }
}
