//! `orch chaos`: faults injected on a seeded plan for a bounded time — replicas killed
//! with SIGKILL at a rate, one node taken down, one node partitioned — each carried out
//! by the agent of its node and recorded as a `Chaos` event. Run `orch verify` beside it
//! to see what the services' clients saw.
//!
//! Bounds: at most 3,600 s and 120 kills a minute; a replica is killed only while
//! another replica of its service is ready; a node outage lasts `--outage` seconds (at
//! most 300, ended by the agent itself), one at a time, never on the last ready node nor
//! on one running an `orch verify` helper when another would do, and only on agents
//! started with `--allow-chaos`.

use std::time::{Duration, Instant};

use clap::Args;
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use rand::{RngExt, SeedableRng};
use tonic::transport::Channel;

use crate::client::explain;

/// The services `orch verify` starts for its helpers.
pub const HELPER_PREFIX: &str = "orch-verify-";

/// The most replica kills a minute.
const MAX_KILL_RATE: f64 = 120.0;

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Kill replicas with SIGKILL at this rate: N/min, N/s or N (a minute).
    #[arg(long, value_name = "RATE")]
    pub kill_replicas: Option<String>,
    /// Take one node down once (its replicas killed, none restarted, its link to the
    /// controllers silent) for --outage seconds.
    #[arg(long)]
    pub kill_node: bool,
    /// Cut one node's link to the controllers once, for --outage seconds (its replicas run on).
    #[arg(long)]
    pub partition: bool,
    /// How long the whole run lasts.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// How long each node outage lasts.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=300))]
    pub outage: u32,
    /// Plays the same plan (times and choices) again; a new one when left out (printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Only replicas of this service are killed (repeatable; every service's otherwise).
    #[arg(long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    KillReplica,
    NodeDown,
    Partition,
}

/// One fault of a plan, `at` from the start of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
}

/// What a plan is made from (the flags, checked).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Replica kills a minute.
    pub kills_per_minute: f64,
    pub kill_node: bool,
    pub partition: bool,
    pub duration: Duration,
    pub outage: Duration,
}

/// `--kill-replicas`: N/min, N/m, N/s or N (a minute), as kills a minute.
pub fn kill_rate(text: &str) -> Result<f64, String> {
    let (number, per) = text.split_once('/').unwrap_or((text, "min"));
    let number: f64 = number.trim().parse().map_err(|_| format!("--kill-replicas {text:?}: expected N/min, N/s or N"))?;
    let per_minute = match per.trim() {
        "min" | "m" => number,
        "s" | "sec" => number * 60.0,
        other => return Err(format!("--kill-replicas {text:?}: {other:?} is no unit (min or s)")),
    };
    if !(per_minute > 0.0 && per_minute <= MAX_KILL_RATE) {
        return Err(format!("--kill-replicas {text:?}: give more than 0 and at most {MAX_KILL_RATE} a minute"));
    }
    Ok(per_minute)
}

/// The faults of a run and when: kills spread over the run (one in each equal slot, at a
/// random point of it), node outages each in the middle of a slot of their own.
pub fn plan(settings: &Settings, rng: &mut impl rand::Rng) -> Result<Vec<Planned>, String> {
    let mut faults = Vec::new();
    if settings.kills_per_minute > 0.0 {
        // At least one: a short run at a low rate still kills once.
        let kills = ((settings.kills_per_minute * settings.duration.as_secs_f64() / 60.0).round() as u64).max(1);
        let slot = settings.duration.as_secs_f64() / kills as f64;
        for k in 0..kills {
            let at = slot * (k as f64 + rng.random_range(0.0..1.0));
            faults.push(Planned { at: Duration::from_secs_f64(at), fault: Fault::KillReplica });
        }
    }
    let outages: Vec<Fault> = [(settings.kill_node, Fault::NodeDown), (settings.partition, Fault::Partition)]
        .into_iter()
        .filter_map(|(wanted, fault)| wanted.then_some(fault))
        .collect();
    if !outages.is_empty() {
        let slot = settings.duration / u32::try_from(outages.len()).unwrap_or(1);
        if settings.outage > slot {
            return Err(format!(
                "{} outages of {} s do not fit in --duration {} s: give a longer duration or a shorter --outage",
                outages.len(),
                settings.outage.as_secs(),
                settings.duration.as_secs()
            ));
        }
        for (j, fault) in outages.into_iter().enumerate() {
            let at = slot * u32::try_from(j).unwrap_or(0) + (slot - settings.outage) / 2;
            faults.push(Planned { at, fault });
        }
    }
    if faults.is_empty() {
        return Err("no fault asked for: give --kill-replicas RATE, --kill-node or --partition".into());
    }
    faults.sort_by_key(|planned| planned.at);
    Ok(faults)
}

fn ready(replica: &pb::Replica) -> bool {
    replica.status.as_ref().is_some_and(|s| s.ready && s.phase() == pb::ReplicaPhase::Running)
}

/// The replica to kill: a ready one (of `services` when given; never a verify helper)
/// whose service has another ready replica; none when no replica qualifies.
pub fn pick_replica<'a>(replicas: &'a [pb::Replica], services: &[String], rng: &mut impl rand::Rng) -> Option<&'a pb::Replica> {
    let ready_of = |service: &str| replicas.iter().filter(|r| r.service == service && ready(r)).count();
    let mut candidates: Vec<&pb::Replica> = replicas
        .iter()
        .filter(|r| ready(r) && !r.node.is_empty() && !r.service.starts_with(HELPER_PREFIX))
        .filter(|r| services.is_empty() || services.contains(&r.service))
        .filter(|r| ready_of(&r.service) >= 2)
        .collect();
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    (!candidates.is_empty()).then(|| candidates[rng.random_range(0..candidates.len())])
}

fn node_name(node: &pb::Node) -> &str {
    node.info.as_ref().map_or("", |i| i.name.as_str())
}

/// The node to take out: a ready one whose agent allows outages, never the last ready
/// node, and not one running an `orch verify` helper while another would do.
pub fn pick_node(nodes: &[pb::Node], replicas: &[pb::Replica], rng: &mut impl rand::Rng) -> Result<String, String> {
    let ready: Vec<&pb::Node> = nodes.iter().filter(|n| n.ready).collect();
    if ready.len() < 2 {
        return Err(format!("{} ready node(s): an outage needs another ready node to move to", ready.len()));
    }
    let mut allowed: Vec<&str> = ready.iter().filter(|n| n.info.as_ref().is_some_and(|i| i.allows_chaos)).map(|n| node_name(n)).collect();
    if allowed.is_empty() {
        return Err("no ready node's agent allows outages: start the agents with --allow-chaos (deploy/lab.sh does)".into());
    }
    allowed.sort_unstable();
    let helped: Vec<&str> = replicas.iter().filter(|r| r.service.starts_with(HELPER_PREFIX)).map(|r| r.node.as_str()).collect();
    let unhelped: Vec<&str> = allowed.iter().copied().filter(|n| !helped.contains(n)).collect();
    let choice = if unhelped.is_empty() { &allowed } else { &unhelped };
    Ok(choice[rng.random_range(0..choice.len())].to_owned())
}

fn clock_now() -> String {
    super::why::clock(orch_agent::runtime::now_unix_ms())
}

pub async fn chaos(mut api: ApiClient<Channel>, args: &ChaosArgs) -> anyhow::Result<()> {
    let settings = Settings {
        kills_per_minute: args.kill_replicas.as_deref().map(kill_rate).transpose().map_err(anyhow::Error::msg)?.unwrap_or(0.0),
        kill_node: args.kill_node,
        partition: args.partition,
        duration: Duration::from_secs(args.duration),
        outage: Duration::from_secs(u64::from(args.outage)),
    };
    let seed = args.seed.unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let planned = plan(&settings, &mut rng).map_err(anyhow::Error::msg)?;
    if args.kill_node || args.partition {
        // Refused before anything is done, rather than half way through.
        let nodes = api.list_nodes(pb::ListNodesRequest {}).await.map_err(explain)?.into_inner().nodes;
        pick_node(&nodes, &[], &mut rand::rngs::StdRng::seed_from_u64(seed)).map_err(anyhow::Error::msg)?;
    }
    println!("orch chaos: {} faults over {} s (seed {seed}: --seed {seed} plays this plan again)", planned.len(), args.duration);
    let start = Instant::now();
    let (mut injected, mut skipped) = (0, 0);
    for step in planned {
        tokio::time::sleep_until((start + step.at).into()).await;
        let request = match step.fault {
            Fault::KillReplica => {
                let replicas = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await.map_err(explain)?.into_inner().replicas;
                match pick_replica(&replicas, &args.services, &mut rng) {
                    Some(replica) => pb::ChaosRequest { fault: Some(pb::chaos_request::Fault::KillReplica(replica.id.clone())), node: String::new() },
                    None => {
                        println!("{}  skipped a kill: no ready replica has another ready replica of its service", clock_now());
                        skipped += 1;
                        continue;
                    }
                }
            }
            Fault::NodeDown | Fault::Partition => {
                // One node out at a time: an earlier outage's node is waited for (10 s at most).
                let waited = Instant::now();
                let picked = loop {
                    let nodes = api.list_nodes(pb::ListNodesRequest {}).await.map_err(explain)?.into_inner().nodes;
                    let replicas = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await.map_err(explain)?.into_inner().replicas;
                    let picked = pick_node(&nodes, &replicas, &mut rng);
                    if picked.is_ok() || waited.elapsed() > Duration::from_secs(10) {
                        break picked;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                };
                let node = match picked {
                    Ok(node) => node,
                    Err(why) => {
                        println!("{}  skipped an outage: {why}", clock_now());
                        skipped += 1;
                        continue;
                    }
                };
                let kind = if step.fault == Fault::NodeDown { pb::OutageKind::NodeDown } else { pb::OutageKind::Partition };
                pb::ChaosRequest { fault: Some(pb::chaos_request::Fault::Outage(pb::NodeOutage { kind: kind.into(), seconds: args.outage })), node }
            }
        };
        match api.chaos(request).await {
            Ok(done) => {
                let done = done.into_inner();
                println!("{}  {}", super::why::clock(done.at_unix_ms), done.message);
                injected += 1;
            }
            Err(status) => {
                println!("{}  refused: {}", clock_now(), status.message());
                skipped += 1;
            }
        }
    }
    tokio::time::sleep_until((start + settings.duration).into()).await;
    println!("orch chaos: {injected} faults injected, {skipped} skipped (`orch get events` lists them as Chaos)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(kills_per_minute: f64, kill_node: bool, partition: bool) -> Settings {
        Settings { kills_per_minute, kill_node, partition, duration: Duration::from_secs(60), outage: Duration::from_secs(10) }
    }

    #[test]
    fn kill_rates_read_as_kills_a_minute() {
        assert_eq!(kill_rate("6/min"), Ok(6.0));
        assert_eq!(kill_rate("6/m"), Ok(6.0));
        assert_eq!(kill_rate("1/s"), Ok(60.0));
        assert_eq!(kill_rate("4"), Ok(4.0));
        assert!(kill_rate("3/h").unwrap_err().contains("no unit"));
        assert!(kill_rate("0/min").is_err());
        assert!(kill_rate("3/s").unwrap_err().contains("at most 120"), "180 a minute is over the bound");
        assert!(kill_rate("many").is_err());
    }

    #[test]
    fn a_seed_plays_the_same_plan_and_faults_stay_in_the_run() {
        let with = |seed| plan(&settings(10.0, true, true), &mut rand::rngs::StdRng::seed_from_u64(seed)).expect("plan");
        let planned = with(7);
        assert_eq!(planned, with(7), "same seed, same plan");
        assert_ne!(planned, with(8), "another seed, other times");
        assert_eq!(planned.iter().filter(|p| p.fault == Fault::KillReplica).count(), 10);
        assert!(planned.windows(2).all(|w| w[0].at <= w[1].at), "in order");
        assert!(planned.iter().all(|p| p.at < Duration::from_secs(60)));
        // Each outage in the middle of its half of the run, ending within it.
        let outages: Vec<(Duration, Fault)> = planned.iter().filter(|p| p.fault != Fault::KillReplica).map(|p| (p.at, p.fault)).collect();
        assert_eq!(outages, vec![(Duration::from_secs(10), Fault::NodeDown), (Duration::from_secs(40), Fault::Partition)]);
    }

    #[test]
    fn plans_refuse_what_does_not_fit_or_nothing() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(plan(&settings(0.0, false, false), &mut rng).unwrap_err().contains("no fault"));
        let tight = Settings { duration: Duration::from_secs(15), ..settings(0.0, true, true) };
        assert!(plan(&tight, &mut rng).unwrap_err().contains("do not fit"), "2 × 10 s in 15 s");
        let short = Settings { duration: Duration::from_secs(5), ..settings(1.0, false, false) };
        assert_eq!(plan(&short, &mut rng).expect("plan").len(), 1, "a short run still kills once");
    }

    fn replica(id: &str, service: &str, node: &str, ready: bool) -> pb::Replica {
        pb::Replica {
            id: id.into(),
            service: service.into(),
            node: node.into(),
            status: Some(pb::ReplicaStatus { phase: pb::ReplicaPhase::Running.into(), ready, ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_kill_leaves_another_replica_of_the_service_ready() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let replicas = vec![
            replica("solo-1", "solo", "n1", true),
            replica("web-1", "web", "n1", true),
            replica("web-2", "web", "n2", false),
            replica("api-1", "api", "n1", true),
            replica("api-2", "api", "n2", true),
            replica("orch-verify-1a2b3-x", "orch-verify-1a2b3", "n3", true),
        ];
        for _ in 0..20 {
            let picked = pick_replica(&replicas, &[], &mut rng).expect("one");
            assert_eq!(picked.service, "api", "solo has one replica, web one ready, helpers are never killed");
        }
        assert!(pick_replica(&replicas, &["web".into()], &mut rng).is_none());
    }

    fn node(name: &str, ready: bool, allows_chaos: bool) -> pb::Node {
        pb::Node { info: Some(pb::NodeInfo { name: name.into(), allows_chaos, ..Default::default() }), ready, ..Default::default() }
    }

    #[test]
    fn outages_go_to_nodes_that_allow_them_and_spare_the_helper_and_the_last_node() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let nodes = vec![node("n1", true, true), node("n2", true, true), node("n3", true, false), node("n4", false, true)];
        let helper = vec![replica("orch-verify-1a2b3-x", "orch-verify-1a2b3", "n1", true)];
        for _ in 0..20 {
            assert_eq!(pick_node(&nodes, &helper, &mut rng), Ok("n2".into()), "n3 refuses outages, n4 is not ready, n1 runs the helper");
        }
        let only = vec![node("n1", true, true), node("n2", true, true)];
        let both = vec![replica("a", "orch-verify-a", "n1", true), replica("b", "orch-verify-b", "n2", true)];
        assert!(pick_node(&only, &both, &mut rng).is_ok(), "a helper's node when no other would do");
        assert!(pick_node(&[node("n1", true, true)], &[], &mut rng).unwrap_err().contains("another ready node"));
        assert!(pick_node(&[node("n1", true, false), node("n2", true, false)], &[], &mut rng).unwrap_err().contains("--allow-chaos"));
    }
}
