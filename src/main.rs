//! The `cadent` binary: glue between the command line and the library.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use cadent::api::{self, AdminState, Control};
use cadent::config::{Config, DEFAULT_CONFIG};
use cadent::output::DestinationCounters;
use cadent::route::{DestinationTable, Router};
use cadent::shard;
use cadent::telemetry::set::CounterSet;
use cadent::telemetry::{Labels, Registry};
use cadent::tools;

#[derive(Parser)]
#[command(name = "cadent", version, about = "Thread-per-core metrics data plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the data plane (the embedded default config when --config is not given).
    Serve {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config: every error at once, each naming its key; non-zero exit if any.
    Check {
        /// TOML config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print where names go: `NAME<TAB>host:port[=instance][,...]` in replica order.
    /// For a cluster that places collectd value lists (kind coco, or with a `key`, or
    /// format collectd) a name is a collectd host, or an identifier
    /// `host/plugin[-pi]/type[-ti]`, placed as its value lists are.
    Hash {
        /// TOML config file.
        #[arg(long)]
        config: PathBuf,
        /// Cluster to ask (default: the first).
        #[arg(long)]
        cluster: Option<String>,
        /// Names; read from stdin, one per line, when none are given.
        names: Vec<String>,
    },
    /// Counting sink: prints per-address counts and rates.
    Echo(tools::echo::EchoArgs),
    /// Load generator.
    Blast(tools::blast::BlastArgs),
    /// collectd tools: `dump` prints what a host sends.
    Collectd {
        #[command(subcommand)]
        command: CollectdCommand,
    },
    /// Whisper files: create, info, update, fetch, dump (as whisper's scripts).
    Whisper {
        #[command(subcommand)]
        command: tools::whisper::WhisperCommand,
    },
    /// Disk spools: inspect (what they hold), verify (every checksum; exit 1 on damage).
    Spool {
        #[command(subcommand)]
        command: tools::spool::SpoolCommand,
    },
}

#[derive(Subcommand)]
enum CollectdCommand {
    /// Print each value list received on a collectd network socket, one per line.
    Dump(tools::collectd_dump::DumpArgs),
}

/// jemalloc, not glibc's malloc: each shard thread allocates from its own arena
/// without locks, same-sized values (a timer's values, a set's members) sit together in
/// size-class slabs, and growing them costs less. `cadent serve` took 7.6 % less CPU
/// per statsd line with it (bench/README.md). Options come from `_RJEM_MALLOC_CONF`
/// (the crate prefixes jemalloc's names); tuning.md has the ones worth knowing.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config } => check(config),
        Command::Hash {
            config,
            cluster,
            names,
        } => hash(config, cluster, names),
        Command::Echo(args) => tools::echo::run(args).map_err(Into::into),
        Command::Blast(args) => tools::blast::run(args).map_err(Into::into),
        Command::Collectd {
            command: CollectdCommand::Dump(args),
        } => tools::collectd_dump::run(args).map_err(Into::into),
        Command::Whisper { command } => {
            // whisper's scripts print their own "[ERROR] ..." text and exit 1.
            if let Err(msg) = tools::whisper::run(command) {
                if !msg.is_empty() {
                    eprintln!("{msg}");
                }
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Spool { command } => match tools::spool::run(command) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(1),
            Err(e) => Err(e.into()),
        },
    };
    if let Err(e) = result {
        eprintln!("cadent: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CADENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: a log file gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let text = cadent::config::read_text_bounded(&path, cadent::config::CONFIG_FILE_BYTES_MAX)
        .with_context(|| format!("cannot read {}", path.display()))?;
    match Config::parse(&text) {
        Ok(cfg) => {
            println!(
                "{}: ok ({} listeners, {} clusters, {} aggregators, {} stores, {} routes)",
                path.display(),
                cfg.listeners.len(),
                cfg.clusters.len(),
                cfg.aggregates.len(),
                cfg.stores.len(),
                cfg.routes.len()
            );
            Ok(())
        }
        Err(errs) => {
            for e in &errs.0 {
                eprintln!("{}: {e}", path.display());
            }
            anyhow::bail!("{}: {} error(s)", path.display(), errs.0.len())
        }
    }
}

fn hash(path: PathBuf, cluster: Option<String>, names: Vec<String>) -> anyhow::Result<()> {
    let cfg = Config::load(&path)?;
    let ci = match &cluster {
        Some(n) => cfg
            .cluster_index(n)
            .with_context(|| format!("no cluster named {n:?}"))?,
        None if cfg.clusters.is_empty() => anyhow::bail!("the config has no [[cluster]]"),
        None => 0,
    };
    let table = DestinationTable::from_config(&cfg);
    let mut router = Router::new(&cfg, &table, &[]);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut dests = Vec::new();
    let mut line = String::new();
    let c = &cfg.clusters[ci];
    let collectd = c.kind == cadent::config::ClusterKind::Coco
        || c.key.is_some()
        || matches!(c.format, cadent::config::OutputFormat::Collectd(_));
    let mut one = |name: &str, out: &mut dyn Write| -> std::io::Result<()> {
        let key = if collectd {
            // A collectd identifier's host is the text before its first `/`.
            name.split('/').next().unwrap_or(name).as_bytes()
        } else {
            cadent::protocol::graphite::hash_key(name.as_bytes())
        };
        router.cluster_destinations(ci, name.as_bytes(), key, collectd, &mut dests);
        write!(out, "{name}\t")?;
        for (i, d) in dests.iter().enumerate() {
            let label = table.member_label(&cfg, ci, *d);
            write!(out, "{}{label}", if i > 0 { "," } else { "" })?;
        }
        writeln!(out)
    };
    if names.is_empty() {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            line.clear();
            if input.read_line(&mut line)? == 0 {
                break;
            }
            let name = line.trim_end_matches(['\n', '\r']);
            if !name.is_empty() {
                one(name, &mut out)?;
            }
        }
    } else {
        for n in &names {
            one(n, &mut out)?;
        }
    }
    out.flush()?;
    Ok(())
}

fn serve(path: Option<PathBuf>) -> anyhow::Result<()> {
    init_logging();
    let cfg = match &path {
        Some(p) => Config::load(p)?,
        None => {
            Config::parse(DEFAULT_CONFIG).map_err(|e| anyhow::anyhow!("embedded config: {e}"))?
        }
    };
    // Every port is checked before anything is announced: the admin port is bound
    // first, then every listener is probed.
    let admin = std::net::TcpListener::bind(cfg.server.admin_listen).map_err(|e| {
        anyhow::anyhow!(
            "server.admin_listen {}: cannot bind: {e}",
            cfg.server.admin_listen
        )
    })?;
    shard::probe_listeners(&cfg)?;
    let shards = shard::shard_count(&cfg);
    let stream_fds_max = check_fds(&cfg, shards);
    let registry = Registry::new(Labels::default(), shards);
    let process_cfg = Arc::new(cfg.clone());
    let handles = shard::spawn(process_cfg, registry.clone(), stream_fds_max)?;
    let control = Control::new(
        handles.iter().map(|h| h.sender()).collect(),
        registry.clone(),
        path.clone(),
    );
    let state = Arc::new(AdminState {
        control,
        registry: registry.clone(),
        shards,
        started: Instant::now(),
        lookups: Default::default(),
        noodle: Default::default(),
        orphan_spools: orphan_spools(&cfg, shards),
        http: Default::default(),
        http_open: Default::default(),
    });
    let config_name = path
        .as_ref()
        .map_or("(embedded default)".into(), |p| p.display().to_string());
    let admin_addr = cfg.server.admin_listen;
    let shutdown_bound = Duration::from_millis(cfg.server.shutdown_timeout_ms) + SHUTDOWN_GRACE;
    let outcome = api::serve_until_signal(state, admin, cfg, |s| {
        tracing::info!(
            shards,
            config = %config_name,
            listeners = ?s.control.bound(),
            admin = %admin_addr,
            "cadent serving"
        );
    });
    let started = Instant::now();
    for h in &handles {
        h.shutdown();
    }
    // Each shard drains for at most shutdown_timeout_ms. The process waits that plus a
    // grace, then exits whatever a shard is doing, saying which ones did not finish.
    let (tx, rx) = std::sync::mpsc::channel();
    for h in handles {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let id = h.id;
            let _ = tx.send((id, h.join()));
        });
    }
    drop(tx);
    let mut failed = false;
    let mut stopped = vec![false; shards];
    let deadline = started + shutdown_bound;
    while stopped.iter().any(|s| !s) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((id, result)) => {
                stopped[id] = true;
                if let Err(e) = result {
                    tracing::error!("{e}");
                    failed = true;
                }
            }
            Err(_) => break,
        }
    }
    let total = log_totals(&registry);
    let stuck: Vec<usize> = (0..shards).filter(|&i| !stopped[i]).collect();
    let signal = outcome?;
    tracing::info!(
        signal,
        elapsed_ms = started.elapsed().as_millis() as u64,
        dropped_lines_shutdown = total.dropped_lines_shutdown,
        lines_left_queued = total.queued_lines.saturating_sub(
            total.sent_lines
                + total.dropped_lines_queue_full
                + total.dropped_lines_shutdown
                + total.dropped_lines_write_failed
                + total.offloaded_lines
        ),
        shards_not_stopped = ?stuck,
        "stopped"
    );
    if !stuck.is_empty() {
        tracing::error!(
            shards = ?stuck,
            bound_ms = shutdown_bound.as_millis() as u64,
            "shards did not stop within server.shutdown_timeout_ms plus the grace; exiting \
             without them (what they still held is lost; their last published counts are above)"
        );
        std::process::exit(1);
    }
    if failed {
        anyhow::bail!("a shard failed");
    }
    Ok(())
}

/// Checks what the config can use against `RLIMIT_NOFILE`, raising the soft limit as far
/// as the hard one allows, and says so when it is still short; returns each shard's
/// share of descriptors for stream connections (past it they are refused, so the admin
/// API, probes and writers keep `server.reserved_fds`).
fn check_fds(cfg: &Config, shards: usize) -> usize {
    use cadent::ingest::fds;
    let wanted = fds::plan(cfg, shards, u64::MAX).needed;
    let limit = match fds::raise_nofile(wanted) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise RLIMIT_NOFILE");
            fds::nofile().map_or(1024, |(soft, _)| soft)
        }
    };
    let plan = fds::plan(cfg, shards, limit);
    if limit < plan.needed {
        tracing::warn!(
            limit,
            hard_limit = fds::nofile().map_or(0, |(_, h)| h),
            needed = plan.needed,
            shards,
            listener_connections = plan.connections,
            destination_fds = plan.destinations,
            fixed_fds = plan.fixed,
            reserved_fds = plan.reserved,
            connections_per_shard = plan.stream_fds_max_per_shard,
            "RLIMIT_NOFILE is below what shards x connections_max plus destinations, \
             listeners and server.reserved_fds can use: past connections_per_shard a \
             shard refuses connections (counted in connections_refused). Raise the hard \
             limit (ulimit -Hn, LimitNOFILE=) or lower listen[].connections_max"
        );
    }
    plan.stream_fds_max_per_shard
}

/// What shutdown waits beyond `server.shutdown_timeout_ms` for shards to publish their
/// last counts and end, before the process exits without them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The spool directories under `output.spool_dir` that no destination of `cfg` on one of
/// `shards` shards owns: left by an earlier config (or more shards). Each is logged, and
/// none is deleted: inspect it with `cadent spool inspect`, then remove it by hand.
fn orphan_spools(cfg: &Config, shards: usize) -> Vec<String> {
    use cadent::output::spool;
    let Some(root) = &cfg.output.spool_dir else {
        return Vec::new();
    };
    let Ok(dirs) = spool::find_spools(&spool::io::FsIo, root) else {
        return Vec::new();
    };
    let table = cadent::route::DestinationTable::from_config(cfg);
    let mut orphans = Vec::new();
    for dir in dirs {
        let owned = spool::spool_owner(root, &dir).is_some_and(|(name, shard)| {
            shard < shards
                && table.destinations.iter().enumerate().any(|(d, dest)| {
                    dest.name == name
                        && cadent::output::spool_bytes_max(
                            cfg,
                            &table,
                            cadent::route::DestId(d as u16),
                        ) > 0
                })
        });
        if !owned {
            tracing::warn!(
                dir = %dir.display(),
                "spool left by a config that no longer has its destination (or shard): \
                 not replayed, not deleted; see `cadent spool inspect`"
            );
            orphans.push(dir.display().to_string());
        }
    }
    orphans
}

/// The admin API is gone by the time shards have drained, so the final counts go to the
/// log: what was received, what each destination got, and every loss.
fn log_totals(registry: &Registry) -> DestinationCounters {
    let total = Registry::total(&registry.per_shard());
    let labels = &registry.labels();
    let mut all = total.reclaimed.clone();
    for (name, l) in labels.listeners.iter().zip(&total.listeners) {
        tracing::info!(
            listener = %name,
            received_lines = l.counters.received_lines,
            parsed_lines = l.counters.parsed_lines,
            rejected_lines = l.rejected_lines.iter().sum::<u64>(),
            "final listener totals"
        );
    }
    let reclaimed = Some(cadent::telemetry::RECLAIMED.to_string());
    for (name, d) in labels
        .destinations
        .iter()
        .zip(&total.destinations)
        .chain(std::iter::once((&reclaimed, &total.reclaimed)))
    {
        let Some(name) = name else { continue };
        if !std::ptr::eq(d, &total.reclaimed) {
            all.add(d);
        }
        tracing::info!(
            destination = %name,
            queued_lines = d.queued_lines,
            sent_lines = d.sent_lines,
            dropped_lines_queue_full = d.dropped_lines_queue_full,
            dropped_lines_shutdown = d.dropped_lines_shutdown,
            dropped_lines_write_failed = d.dropped_lines_write_failed,
            spooled_lines = d.spooled_lines,
            replayed_lines = d.replayed_lines,
            spool_lines = d.spool_lines,
            dropped_lines_spool_full = d.dropped_lines_spool_full,
            dropped_lines_spool_error = d.dropped_lines_spool_error,
            resent_lines = d.resent_lines,
            "final destination totals"
        );
    }
    for (name, a) in labels.aggregators.iter().zip(&total.aggregators) {
        tracing::info!(
            aggregator = %name,
            samples = a.samples,
            flushed_lines = a.flushed_lines,
            dropped_keys_full = a.dropped_keys_full,
            "final aggregator totals"
        );
    }
    tracing::info!(
        dropped_by_rule = total.routing.dropped_by_rule,
        unrouted = total.routing.unrouted,
        dropped_empty_name = total.routing.dropped_empty_name,
        mesh_dropped_records_full = total.mesh.dropped_records_full,
        "final routing totals"
    );
    all
}
