//! `orch get services|replicas|nodes|events|configs|secrets [NAME | -l SELECTOR]
//! [-o table|wide|json|yaml|name] [--no-headers] [-w]`.
//!
//! A listing is a [`Listing`] (each object's `kind/name`, table cells and machine form),
//! rendered once or, with `-w`, again on every change: a table prints the rows that
//! changed and a deleted object's last row marked `(deleted)`; JSON and YAML print one
//! `{"type": "ADDED|MODIFIED|DELETED", "object": …}` per change (kubectl's watch events).

use std::time::Duration;

use clap::{Args, ValueEnum};
use orch_api::pb;
use orch_api::pb::api_client::ApiClient;
use orch_api::selector::Selector;
use tonic::transport::Channel;

use crate::client::explain;
use crate::output::{self, age, mebibytes, table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    #[value(alias = "service", alias = "svc")]
    Services,
    #[value(alias = "replica", alias = "rs")]
    Replicas,
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "event", alias = "ev")]
    Events,
    #[value(alias = "config", alias = "cm")]
    Configs,
    #[value(alias = "secret")]
    Secrets,
    #[value(alias = "controller", alias = "ctl")]
    Controllers,
}

impl Kind {
    /// The singular `-o name` and `delete` use: `service/web`.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Services => "service",
            Kind::Replicas => "replica",
            Kind::Nodes => "node",
            Kind::Events => "event",
            Kind::Configs => "config",
            Kind::Secrets => "secret",
            Kind::Controllers => "controller",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GetFormat {
    /// A table (the default).
    Table,
    /// A table with more columns.
    Wide,
    Json,
    Yaml,
    /// `kind/name`, one per line.
    Name,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub kind: Kind,
    /// One object (a service, replica or node name); for replicas also a service's name.
    pub name: Option<String>,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: GetFormat,
    /// Only objects whose labels match: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated
    /// (all must hold). Services and nodes by their labels, replicas by their service's.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR", conflicts_with = "name")]
    pub selector: Option<String>,
    /// Tables without their header line.
    #[arg(long)]
    pub no_headers: bool,
    /// Keep watching and print what changes (deletions too).
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// One object as a listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// `kind/name` (an event: `event/<its object>`, never used as a name).
    pub name: String,
    pub cells: Vec<String>,
    /// The stable machine shape (`output::*Out`); a YAML value keeps the field order.
    pub value: serde_yaml::Value,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Listing {
    pub header: Vec<&'static str>,
    pub items: Vec<Item>,
    /// Events: a log, not objects — they expire rather than being deleted.
    pub is_log: bool,
}

fn value<T: serde::Serialize>(item: &T) -> anyhow::Result<serde_yaml::Value> {
    Ok(serde_yaml::to_value(item)?)
}

fn no_labels(kind: Kind) -> anyhow::Error {
    anyhow::anyhow!("--selector: {} have no labels (services, replicas and nodes do)", kind.singular().to_owned() + "s")
}

/// One listing, fetched.
/// A named object that is missing is an error on the first fetch; in a watch's later
/// ones (`must_exist` false) it is an empty listing: its deletion.
async fn fetch(api: &mut ApiClient<Channel>, args: &GetArgs, selector: Option<&Selector>, must_exist: bool) -> anyhow::Result<Listing> {
    let name = args.name.clone().unwrap_or_default();
    let wide = args.output == GetFormat::Wide;
    let matches = |labels: &std::collections::HashMap<String, String>| selector.is_none_or(|s| s.matches(labels.iter()));
    let mut listing = Listing::default();
    match args.kind {
        Kind::Services => {
            let mut services = api.list_services(pb::ListServicesRequest {}).await.map_err(explain)?.into_inner().services;
            if !name.is_empty() {
                services.retain(|s| s.name == name);
                if services.is_empty() && must_exist {
                    anyhow::bail!("service {name:?} not found");
                }
            }
            services.retain(|s| matches(&s.labels));
            let replicas = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await.map_err(explain)?.into_inner().replicas;
            for s in services.iter().map(|s| output::service(s, &replicas)) {
                let ports = s
                    .ports
                    .iter()
                    .map(|p| if p.node_port > 0 { format!("{}:{}", p.service_port, p.node_port) } else { p.service_port.to_string() })
                    .collect::<Vec<_>>()
                    .join(",");
                let mut cells = vec![s.name.clone(), format!("{}/{}", s.ready_replicas, s.replicas), s.vip.clone(), ports];
                if wide {
                    cells.extend([s.image.clone(), s.generation.to_string()]);
                }
                listing.items.push(Item { name: format!("service/{}", s.name), cells, value: value(&s)? });
            }
            listing.header = if wide { vec!["NAME", "READY", "VIP", "PORTS", "IMAGE", "GENERATION"] } else { vec!["NAME", "READY", "VIP", "PORTS"] };
        }
        Kind::Replicas => {
            let all = api.list_replicas(pb::ListReplicasRequest { service: String::new() }).await.map_err(explain)?.into_inner().replicas;
            let mut replicas: Vec<&pb::Replica> = all.iter().filter(|r| name.is_empty() || r.id == name || r.service == name).collect();
            if !name.is_empty() && replicas.is_empty() && must_exist {
                anyhow::bail!("no replica or service named {name:?}");
            }
            if selector.is_some() {
                // Replicas carry no labels of their own: their service's select them.
                let services = api.list_services(pb::ListServicesRequest {}).await.map_err(explain)?.into_inner().services;
                let chosen: std::collections::BTreeSet<&str> = services.iter().filter(|s| matches(&s.labels)).map(|s| s.name.as_str()).collect();
                replicas.retain(|r| chosen.contains(r.service.as_str()));
            }
            for raw in replicas {
                let r = output::replica(raw);
                let mut cells = vec![
                    r.name.clone(),
                    if r.ready { "1/1".into() } else { "0/1".into() },
                    r.phase.clone(),
                    r.restarts.to_string(),
                    if r.node.is_empty() { "<none>".into() } else { r.node.clone() },
                    if r.ip.is_empty() { "<none>".into() } else { r.ip.clone() },
                ];
                if wide {
                    let started = raw.status.as_ref().map_or(0, |s| s.started_unix_ms);
                    cells.extend([r.host_pid.to_string(), age(started), r.reason.clone()]);
                }
                listing.items.push(Item { name: format!("replica/{}", r.name), cells, value: value(&r)? });
            }
            listing.header = if wide {
                vec!["NAME", "READY", "PHASE", "RESTARTS", "NODE", "IP", "HOST PID", "AGE", "REASON"]
            } else {
                vec!["NAME", "READY", "PHASE", "RESTARTS", "NODE", "IP"]
            };
        }
        Kind::Nodes => {
            let mut nodes = api.list_nodes(pb::ListNodesRequest {}).await.map_err(explain)?.into_inner().nodes;
            if !name.is_empty() {
                nodes.retain(|n| n.info.as_ref().is_some_and(|i| i.name == name));
                if nodes.is_empty() && must_exist {
                    anyhow::bail!("node {name:?} not found");
                }
            }
            nodes.retain(|n| matches(&n.info.as_ref().map(|i| i.labels.clone()).unwrap_or_default()));
            for n in nodes.iter().map(output::node) {
                let mut cells = vec![n.name.clone(), n.status(), n.address.clone(), n.pod_cidr.clone()];
                if wide {
                    cells.extend([
                        format!("{}m/{}m", n.allocated.cpu_millis, n.capacity.cpu_millis),
                        format!("{}/{}", mebibytes(n.allocated.memory_bytes), mebibytes(n.capacity.memory_bytes)),
                    ]);
                }
                listing.items.push(Item { name: format!("node/{}", n.name), cells, value: value(&n)? });
            }
            listing.header = if wide { vec!["NAME", "STATUS", "ADDRESS", "POD CIDR", "CPU", "MEMORY"] } else { vec!["NAME", "STATUS", "ADDRESS", "POD CIDR"] };
        }
        Kind::Controllers => {
            if selector.is_some() {
                return Err(no_labels(args.kind));
            }
            let listed = api.list_controllers(pb::ListControllersRequest {}).await.map_err(explain)?.into_inner();
            for c in listed.controllers.iter().map(|c| output::controller(c, &listed.leader)) {
                if !name.is_empty() && c.identity != name {
                    continue;
                }
                let role = if c.leader { "leader" } else { "follower" };
                let cells = vec![c.identity.clone(), c.address.clone(), role.to_owned(), age(c.started_unix_ms)];
                listing.items.push(Item { name: format!("controller/{}", c.identity), cells, value: value(&c)? });
            }
            if listing.items.is_empty() && !name.is_empty() && must_exist {
                anyhow::bail!("controller {name:?} not found");
            }
            listing.header = vec!["NAME", "ADDRESS", "ROLE", "AGE"];
        }
        Kind::Events => {
            if selector.is_some() {
                return Err(no_labels(args.kind));
            }
            let mut events = api.list_events(pb::ListEventsRequest { object: String::new() }).await.map_err(explain)?.into_inner().events;
            if !name.is_empty() {
                events.retain(|e| e.object == name || e.object.ends_with(&format!("/{name}")) || e.object.starts_with(&format!("replica/{name}-")));
            }
            events.sort_by_key(|e| e.timestamp_unix_ms);
            for e in events.iter().map(output::event) {
                let cells = vec![age(e.time_unix_ms), e.kind.clone(), e.object.clone(), e.message.clone()];
                // Events have no name: a key of their own keeps rows apart in a watch.
                let name = format!("event/{}/{}/{}/{}", e.time_unix_ms, e.kind, e.object, e.message);
                listing.items.push(Item { name, cells, value: value(&e)? });
            }
            listing.header = vec!["AGE", "KIND", "OBJECT", "MESSAGE"];
            listing.is_log = true;
        }
        Kind::Configs | Kind::Secrets => {
            if selector.is_some() {
                return Err(no_labels(args.kind));
            }
            let kind = if args.kind == Kind::Configs { pb::ConfigKind::Config } else { pb::ConfigKind::Secret };
            let mut configs = api.list_configs(pb::ListConfigsRequest { kind: kind.into() }).await.map_err(explain)?.into_inner().configs;
            if !name.is_empty() {
                configs.retain(|c| c.name == name);
                if configs.is_empty() && must_exist {
                    anyhow::bail!("{} {name:?} not found", orch_api::manifest::kind_name(kind));
                }
            }
            for c in configs.iter().map(output::config) {
                let cells = vec![c.name.clone(), c.keys.len().to_string(), c.generation.to_string(), c.used_by.join(",")];
                listing.items.push(Item { name: format!("{}/{}", args.kind.singular(), c.name), cells, value: value(&c)? });
            }
            listing.header = vec!["NAME", "KEYS", "GENERATION", "USED BY"];
        }
    }
    Ok(listing)
}

/// The whole listing as `format` prints it (`headers`: a table's header line).
pub fn render(listing: &Listing, format: GetFormat, headers: bool) -> anyhow::Result<String> {
    let values: Vec<&serde_yaml::Value> = listing.items.iter().map(|i| &i.value).collect();
    Ok(match format {
        GetFormat::Json => serde_json::to_string_pretty(&values)? + "\n",
        GetFormat::Yaml => serde_yaml::to_string(&values)?,
        GetFormat::Name => listing.items.iter().map(|i| i.name.clone() + "\n").collect(),
        GetFormat::Table | GetFormat::Wide => {
            let rows: Vec<Vec<String>> = listing.items.iter().map(|i| i.cells.clone()).collect();
            let text = table(&listing.header, &rows);
            if headers {
                text
            } else {
                text.lines().skip(1).map(|l| l.to_owned() + "\n").collect()
            }
        }
    })
}

/// What changed from one listing to the next, in order: objects added or modified
/// (in the new listing's order), then those deleted (in the old one's).
#[derive(Debug, Clone, PartialEq)]
pub enum Change<'a> {
    Added(&'a Item),
    Modified(&'a Item),
    Deleted(&'a Item),
}

pub fn changes<'a>(before: &'a Listing, after: &'a Listing) -> Vec<Change<'a>> {
    let old = |name: &str| before.items.iter().find(|i| i.name == name);
    let mut out: Vec<Change<'a>> = after
        .items
        .iter()
        .filter_map(|item| match old(&item.name) {
            None => Some(Change::Added(item)),
            Some(was) if was != item => Some(Change::Modified(item)),
            Some(_) => None,
        })
        .collect();
    if !after.is_log {
        out.extend(before.items.iter().filter(|i| !after.items.iter().any(|a| a.name == i.name)).map(Change::Deleted));
    }
    out
}

/// The lines a watch prints for `changes`. A table's rows are aligned as the listing
/// they come from (the new one; a deleted row, the old one).
pub fn render_changes(before: &Listing, after: &Listing, format: GetFormat) -> anyhow::Result<String> {
    let row_of = |listing: &Listing, name: &str| -> String {
        let rows: Vec<Vec<String>> = listing.items.iter().map(|i| i.cells.clone()).collect();
        let text = table(&listing.header, &rows);
        let index = listing.items.iter().position(|i| i.name == name).unwrap_or(0);
        text.lines().nth(index + 1).unwrap_or_default().to_owned()
    };
    let mut out = String::new();
    for change in changes(before, after) {
        let (kind, item) = match change {
            Change::Added(item) => ("ADDED", item),
            Change::Modified(item) => ("MODIFIED", item),
            Change::Deleted(item) => ("DELETED", item),
        };
        let deleted = kind == "DELETED";
        match format {
            GetFormat::Table | GetFormat::Wide => {
                let row = row_of(if deleted { before } else { after }, &item.name);
                out.push_str(&row);
                out.push_str(if deleted { "   (deleted)\n" } else { "\n" });
            }
            GetFormat::Name => out.push_str(&format!("{}{}\n", item.name, if deleted { " (deleted)" } else { "" })),
            GetFormat::Json | GetFormat::Yaml => {
                let event = WatchEvent { kind, object: &item.value };
                if format == GetFormat::Json {
                    out.push_str(&(serde_json::to_string(&event)? + "\n"));
                } else {
                    out.push_str(&format!("---\n{}", serde_yaml::to_string(&event)?));
                }
            }
        }
    }
    Ok(out)
}

#[derive(serde::Serialize)]
struct WatchEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    object: &'a serde_yaml::Value,
}

pub async fn run(mut api: ApiClient<Channel>, args: &GetArgs) -> anyhow::Result<()> {
    let selector = args.selector.as_deref().map(Selector::parse).transpose()?;
    if args.output == GetFormat::Name && args.kind == Kind::Events {
        anyhow::bail!("-o name: events have no names (-o table, wide, json or yaml)");
    }
    let mut last = fetch(&mut api, args, selector.as_ref(), true).await?;
    let is_table = matches!(args.output, GetFormat::Table | GetFormat::Wide);
    if last.items.is_empty() && is_table && !args.watch {
        // As kubectl: nothing on standard output, a note for the person reading.
        eprintln!("No resources found");
        return Ok(());
    }
    print!("{}", render(&last, args.output, !args.no_headers)?);
    if !args.watch {
        return Ok(());
    }
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = fetch(&mut api, args, selector.as_ref(), false).await?;
        print!("{}", render_changes(&last, &now, args.output)?);
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, ready: &str) -> Item {
        let short = name.split_once('/').map_or(name, |(_, n)| n);
        let value: serde_yaml::Value = serde_yaml::from_str(&format!("{{name: {short}, ready: '{ready}'}}")).expect("yaml");
        Item { name: name.to_owned(), cells: vec![short.to_owned(), ready.to_owned()], value }
    }

    fn listing(items: &[Item]) -> Listing {
        Listing { header: vec!["NAME", "READY"], items: items.to_vec(), is_log: false }
    }

    #[test]
    fn renders_names_tables_and_machine_shapes() {
        let l = listing(&[item("service/web", "1/1"), item("service/db", "0/1")]);
        assert_eq!(render(&l, GetFormat::Name, true).expect("name"), "service/web\nservice/db\n");
        assert_eq!(render(&l, GetFormat::Table, true).expect("table"), "NAME   READY\nweb    1/1\ndb     0/1\n");
        assert_eq!(render(&l, GetFormat::Table, false).expect("no headers"), "web    1/1\ndb     0/1\n");
        assert_eq!(render(&listing(&[]), GetFormat::Table, false).expect("empty"), "");
        let json: serde_json::Value = serde_json::from_str(&render(&l, GetFormat::Json, true).expect("json")).expect("valid");
        assert_eq!(json, serde_json::json!([{"name": "web", "ready": "1/1"}, {"name": "db", "ready": "0/1"}]));
        // Field order is the shape's, not alphabetical.
        assert!(render(&l, GetFormat::Json, true).expect("json").find("\"name\"") < render(&l, GetFormat::Json, true).expect("json").find("\"ready\""));
    }

    #[test]
    fn a_watch_prints_changes_and_deletions() {
        let before = listing(&[item("service/web", "1/1"), item("service/db", "0/1"), item("service/old", "1/1")]);
        let after = listing(&[item("service/web", "1/1"), item("service/db", "1/1"), item("service/new", "0/1")]);
        assert_eq!(changes(&before, &after), vec![Change::Modified(&after.items[1]), Change::Added(&after.items[2]), Change::Deleted(&before.items[2])]);
        assert_eq!(render_changes(&before, &after, GetFormat::Table).expect("table"), "db     1/1\nnew    0/1\nold    1/1   (deleted)\n");
        assert_eq!(render_changes(&before, &after, GetFormat::Name).expect("name"), "service/db\nservice/new\nservice/old (deleted)\n");
        let events: Vec<serde_json::Value> = render_changes(&before, &after, GetFormat::Json)
            .expect("json")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(
            events,
            vec![
                serde_json::json!({"type": "MODIFIED", "object": {"name": "db", "ready": "1/1"}}),
                serde_json::json!({"type": "ADDED", "object": {"name": "new", "ready": "0/1"}}),
                serde_json::json!({"type": "DELETED", "object": {"name": "old", "ready": "1/1"}}),
            ]
        );
        let yaml = render_changes(&before, &after, GetFormat::Yaml).expect("yaml");
        assert!(yaml.starts_with("---\ntype: MODIFIED\nobject:\n") && yaml.matches("---\n").count() == 3, "{yaml}");
        assert_eq!(render_changes(&after, &after, GetFormat::Table).expect("same"), "", "nothing changed, nothing printed");
        let log = Listing { is_log: true, ..before.clone() };
        assert!(changes(&log, &Listing { is_log: true, ..listing(&[]) }).is_empty(), "expired events are not deletions");
    }
}
