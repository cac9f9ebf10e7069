//! Etsy statsd's management console for a `kind = "statsd"` aggregator with
//! `mgmt_listen`: TCP, one command per segment, Etsy's replies (the text is made by
//! [`crate::aggregate::statsd::mgmt`]). Runs on the control thread; the state comes from
//! every shard's share of the aggregator's keys, asked by message, so a reply covers the
//! whole process (shard 0's keys first: statsd's own counters lead, as in Etsy).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Control;
use crate::aggregate::statsd::inspect::Value;
use crate::aggregate::statsd::mgmt::{self, Command, Health, StatsReport};
use crate::aggregate::statsd::DumpValue;
use crate::shard::aggregate::{StatsdAnswer, StatsdQuery};

/// Largest command a client may send in one segment (Etsy reads whatever arrives).
const COMMAND_BYTES_MAX: usize = 64 * 1024;

/// Serves the console of aggregator `name` on `listener` until the task is dropped.
pub async fn serve(control: Arc<Control>, listener: tokio::net::TcpListener, name: String) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let control = control.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let _ = session(&control, stream, &name).await;
        });
    }
}

async fn session(
    control: &Control,
    mut stream: tokio::net::TcpStream,
    name: &str,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; COMMAND_BYTES_MAX];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut reply = String::new();
        match mgmt::parse_command(&buf[..n]) {
            Command::Help => reply.push_str(mgmt::HELP_REPLY),
            Command::Quit => return stream.shutdown().await,
            Command::Unknown => reply.push_str(mgmt::ERROR_REPLY),
            Command::Health(set) => {
                let h = control.statsd_health(name, set);
                mgmt::write_health_reply(&mut reply, h);
            }
            Command::Config => config_reply(control, name, &mut reply),
            Command::Stats => {
                let answers = control.ask_statsd(name, StatsdQuery::Stats).await;
                let now_s = crate::shard::pipeline::unix_ms() / 1000;
                let startup_s = control.started_unix_s();
                let mut report = StatsReport {
                    now_s,
                    startup_s,
                    last_msg_seen_s: startup_s,
                    bad_lines_seen: 0,
                    graphite: None,
                };
                for a in answers {
                    if let StatsdAnswer::Stats {
                        last_msg_seen_s,
                        bad_lines_seen,
                        last_write,
                    } = a
                    {
                        report.last_msg_seen_s = report.last_msg_seen_s.max(last_msg_seen_s);
                        report.bad_lines_seen += bad_lines_seen;
                        if last_write.is_some() {
                            report.graphite = last_write;
                        }
                    }
                }
                mgmt::write_stats_reply(&mut reply, &report);
            }
            Command::Dump(kind) => {
                let answers = control.ask_statsd(name, StatsdQuery::Dump(kind)).await;
                let mut pending = [0u64; 3];
                let mut entries: Vec<(Vec<u8>, DumpValue)> = Vec::new();
                for a in answers {
                    if let StatsdAnswer::Dump(e, p) = a {
                        entries.extend(e);
                        pending[0] += p.bad;
                        pending[1] += p.packets;
                        pending[2] += p.lines;
                    }
                }
                if kind == mgmt::Kind::Counters {
                    add_pending_intake(control, name, &mut entries, pending);
                }
                mgmt::write_dump_reply(
                    &mut reply,
                    entries.iter().map(|(k, v)| {
                        let v = match v {
                            DumpValue::Number(x) => Value::Number(*x),
                            DumpValue::Numbers(xs) => Value::Numbers(xs),
                        };
                        (k.as_slice(), v)
                    }),
                );
            }
            Command::Delete(kind, buckets) => {
                // Etsy's matching runs over the whole table; each shard then deletes what
                // it holds of the matches.
                let answers = control.ask_statsd(name, StatsdQuery::Dump(kind)).await;
                let per_shard: Vec<Vec<Vec<u8>>> = answers
                    .into_iter()
                    .map(|a| match a {
                        StatsdAnswer::Dump(e, _) => e.into_iter().map(|(k, _)| k).collect(),
                        _ => Vec::new(),
                    })
                    .collect();
                let all: Vec<&[u8]> = per_shard.iter().flatten().map(Vec::as_slice).collect();
                let (deleted, text) = mgmt::delete_reply(&all, &buckets);
                let doomed: Vec<Vec<u8>> = deleted.iter().map(|&i| all[i].to_vec()).collect();
                if !doomed.is_empty() {
                    control
                        .ask_statsd(name, StatsdQuery::Delete(kind, doomed))
                        .await;
                }
                reply.push_str(&text);
            }
        }
        stream.write_all(reply.as_bytes()).await?;
    }
}

/// The running settings of statsd aggregator `name`.
fn statsd_config(control: &Control, name: &str) -> Option<crate::config::StatsdAggregate> {
    control
        .topology()
        .config
        .aggregates
        .iter()
        .find_map(|a| match &a.kind {
            crate::config::AggregateKind::Statsd(s) if a.name == name => Some((**s).clone()),
            _ => None,
        })
}

/// Adds what the listeners counted since the last flush to statsd's own counters
/// (`bad_lines_seen`, `packets_received`, `metrics_received`, in that order in
/// `pending`), as Etsy's counters show them between flushes.
fn add_pending_intake(
    control: &Control,
    name: &str,
    entries: &mut [(Vec<u8>, DumpValue)],
    pending: [u64; 3],
) {
    let Some(s) = statsd_config(control, name) else {
        return;
    };
    let ps = &s.engine.prefix_stats;
    for (n, suffix) in
        pending
            .iter()
            .zip(["bad_lines_seen", "packets_received", "metrics_received"])
    {
        let key = format!("{ps}.{suffix}");
        if let Some((_, DumpValue::Number(v))) = entries
            .iter_mut()
            .find(|(k, _)| k.as_slice() == key.as_bytes())
        {
            *v += *n as f64;
        }
    }
}

/// `config`: the aggregator's settings under Etsy's option names.
fn config_reply(control: &Control, name: &str, out: &mut String) {
    use crate::aggregate::statsd::Bin;
    use crate::protocol::jsnum::js_number_string;
    use mgmt::ConfigValue::{Entries, Scalar};
    let Some(s) = statsd_config(control, name) else {
        return;
    };
    let e = &s.engine;
    let n = |v: f64| js_number_string(v);
    let b = |v: bool| v.to_string();
    let mut props = vec![
        (
            "flushInterval".to_string(),
            Scalar(e.flush_interval_ms.to_string()),
        ),
        (
            "percentThreshold".to_string(),
            Entries(
                e.percent_thresholds
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (i.to_string(), n(*p)))
                    .collect(),
            ),
        ),
        (
            "histogram".to_string(),
            Entries(
                e.histograms
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let bins: Vec<String> = h
                            .bins
                            .iter()
                            .map(|x| match x {
                                Bin::Inf => "inf".to_string(),
                                Bin::Below(v) => n(*v),
                            })
                            .collect();
                        (i.to_string(), format!("{}:{}", h.metric, bins.join(",")))
                    })
                    .collect(),
            ),
        ),
        ("prefixStats".to_string(), Scalar(e.prefix_stats.clone())),
        ("flush_counts".to_string(), Scalar(b(e.flush_counts))),
        (
            "deleteIdleStats".to_string(),
            Scalar(b(e.delete_idle_stats)),
        ),
        (
            "graphite".to_string(),
            Entries(vec![
                ("legacyNamespace".into(), b(e.legacy_namespace)),
                ("globalPrefix".into(), e.global_prefix.clone()),
                ("prefixCounter".into(), e.prefix_counter.clone()),
                ("prefixTimer".into(), e.prefix_timer.clone()),
                ("prefixGauge".into(), e.prefix_gauge.clone()),
                ("prefixSet".into(), e.prefix_set.clone()),
            ]),
        ),
    ];
    if let Some(sfx) = &e.global_suffix {
        props.push(("globalSuffix".to_string(), Scalar(sfx.clone())));
    }
    props.push((
        "gaugesMaxTTL".to_string(),
        Scalar(e.gauges_max_ttl_flushes.max(1).to_string()),
    ));
    mgmt::write_config_reply(out, &props);
}

impl Control {
    /// The console's health of aggregator `name`, set first when `set` says so.
    pub fn statsd_health(&self, name: &str, set: Option<Health>) -> Health {
        let mut h = self
            .console_health
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let entry = h.entry(name.to_string()).or_insert(Health::Up);
        if let Some(s) = set {
            *entry = s;
        }
        *entry
    }
}
