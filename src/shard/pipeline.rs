//! The synchronous heart of a shard: a receive buffer in, decoded into points by the
//! listener's decoder, routed, and handed to each target: a destination's encoder and
//! queue, or an aggregator (here, or over the mesh on the shard that owns the name). It
//! never suspends and allocates nothing per metric.

use crate::ingest::ListenerStats;
use crate::output::Outputs;
use crate::point::{self, Origin, Point, Value};
use crate::protocol::decode::{DecodeCounts, Decoder, End, TypesReject};
use crate::protocol::graphite;
use crate::route::{Fingerprint, NameForm, Router, Target, Verdict};
use crate::shard::aggregate::AggStage;
use crate::shard::mesh::ShardMesh;
use crate::shard::store::StoreStage;
use crate::telemetry::ShardCounters;

/// What the pipeline needs to know about a listener: its decoder and bounds.
#[derive(Debug, Clone)]
pub struct Input {
    /// Framing and grammar.
    pub decoder: Decoder,
    /// Longest line.
    pub line_bytes_max: usize,
}

/// Everything a shard's tasks share. Borrowed only between awaits.
pub struct Core {
    /// This shard's copy of the rules and rings.
    pub router: Router,
    /// This shard's destination batches and queues.
    pub outputs: Outputs,
    /// This shard's aggregators.
    pub aggs: AggStage,
    /// This shard's stores.
    pub stores: StoreStage,
    /// This shard's ends of the cross-shard channels.
    pub mesh: ShardMesh,
    /// This shard's counters.
    pub counters: ShardCounters,
    /// Set at shutdown: readers stop after the buffer in hand.
    pub draining: bool,
    /// Stream connections this shard may hold open over all its listeners: its share of
    /// the process's file descriptors once the control plane's and writers' are set
    /// aside (`server.reserved_fds`).
    pub stream_fds_max: usize,
    /// Stream connections open now.
    pub stream_fds_open: usize,
    /// By listener id: how its bytes are read.
    inputs: Vec<Option<Input>>,
    /// Where a name that needs cleansing is rewritten for output.
    cleansed: Vec<u8>,
    counts: DecodeCounts,
    /// The pickle machine of pickle listeners (one frame at a time on a shard).
    pickle_vm: crate::protocol::pickle::Decoder,
    /// Points an aggregator passes on (carbon's inputs), routed after their batch.
    forwards: Vec<(u16, usize)>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

/// Points decoded before they are routed together: enough for the cache slots prefetched
/// at decode time to arrive before their lookups, few enough to stay in L1.
const ROUTE_BATCH_POINTS: usize = 16;

// A collectd decoder's batch is routed as one.
const _: () = assert!(crate::protocol::decode::COLLECTD_BATCH <= ROUTE_BATCH_POINTS);

/// Unix time now, in milliseconds.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Core {
    /// A core over a router, outputs, aggregators, stores and mesh, with zeroed counters.
    pub fn new(
        router: Router,
        outputs: Outputs,
        aggs: AggStage,
        stores: StoreStage,
        mesh: ShardMesh,
        counters: ShardCounters,
    ) -> Core {
        Core {
            router,
            outputs,
            aggs,
            stores,
            mesh,
            counters,
            draining: false,
            stream_fds_max: usize::MAX,
            stream_fds_open: 0,
            inputs: Vec::new(),
            cleansed: Vec::with_capacity(256),
            counts: DecodeCounts::default(),
            pickle_vm: crate::protocol::pickle::Decoder::default(),
            forwards: Vec::new(),
        }
    }

    /// Sets how listener `listener` is read (each shard owns its copy).
    pub fn set_input(&mut self, listener: usize, input: Input) {
        if self.inputs.len() <= listener {
            self.inputs.resize_with(listener + 1, || None);
        }
        self.inputs[listener] = Some(input);
        self.counters.grow_listeners(listener + 1);
    }

    /// Processes the complete lines of `buf` read by `listener` and, at the end of a
    /// datagram or stream, its last unterminated line; returns the bytes consumed.
    /// `skipping` carries an over-long line across calls.
    pub fn process<'b>(
        &mut self,
        listener: usize,
        buf: &'b [u8],
        skipping: &mut bool,
        end: End,
    ) -> usize {
        let Some(Some(input)) = self.inputs.get(listener) else {
            return buf.len();
        };
        let origin = Origin::Listener(listener as u16);
        if matches!(input.decoder, Decoder::Pickle { .. }) {
            return self.process_pickle(listener, buf, skipping, end);
        }
        let statsd = matches!(input.decoder, Decoder::Statsd);
        let (line_bytes_max, cleanse) = (input.line_bytes_max, input.decoder.cleanses_names());
        let form = if cleanse {
            NameForm::Cleansed
        } else {
            NameForm::Plain
        };
        let (mut ctx, DecodeState { counts, inputs, .. }) = self.split(form, origin);
        let decoder = &inputs[listener].as_ref().expect("checked above").decoder;
        counts.clear();
        let now_s = ctx.now_s;
        ctx.constant = ctx.router.constant_route(form, origin);
        let constant = ctx.constant.is_some();
        let mut batch: [(Point<'b>, Fingerprint); ROUTE_BATCH_POINTS] =
            [(Point::EMPTY, Fingerprint::ZERO); ROUTE_BATCH_POINTS];
        let mut batched = 0;
        let mut emit = |p: Point<'b>| {
            let fp = if constant {
                Fingerprint::ZERO
            } else {
                let fp = ctx.router.fingerprint(p.name, p.key, form, origin);
                ctx.router.prefetch(fp);
                fp
            };
            batch[batched] = (p, fp);
            batched += 1;
            if batched == ROUTE_BATCH_POINTS {
                route_batch(&batch, &mut ctx);
                batched = 0;
            }
        };
        let consumed = decoder.decode(buf, end, line_bytes_max, skipping, counts, &mut emit);
        route_batch(&batch[..batched], &mut ctx);
        let l = &mut ctx.counters.listeners[listener];
        l.add_decoded(counts);
        if statsd {
            ctx.aggs.last_msg_seen_s = now_s;
            let i = &mut ctx.aggs.intake;
            // Etsy counts a datagram, or a stream read after which its buffer holds a
            // whole line (one with a newline): not a read of a partial line, nor the
            // end of a stream.
            let packet = match end {
                End::Datagram => true,
                End::More => consumed > 0,
                End::Stream => false,
            };
            i.packets += u64::from(packet);
            i.lines += counts.received_lines;
            // A line over a stream's `line_bytes_max` is bad to statsd's own counters too.
            i.bad += counts.rejected_samples
                + counts.rejected_lines[crate::protocol::Reject::LineTooLong as usize];
        }
        consumed
    }

    /// Processes one datagram read by `listener`: a collectd packet (decrypted in place,
    /// hence `mut`) for a collectd listener, whole lines for the others.
    pub fn process_datagram(&mut self, listener: usize, buf: &mut [u8]) {
        let collectd = matches!(
            self.inputs.get(listener),
            Some(Some(Input {
                decoder: Decoder::Collectd(_),
                ..
            }))
        );
        if !collectd {
            let mut skipping = false;
            self.process(listener, buf, &mut skipping, End::Datagram);
            return;
        }
        let origin = Origin::Listener(listener as u16);
        let (mut ctx, DecodeState { counts, inputs, .. }) = self.split(NameForm::Collectd, origin);
        let Some(Some(Input {
            decoder: Decoder::Collectd(decoder),
            ..
        })) = inputs.get_mut(listener)
        else {
            unreachable!("checked above");
        };
        counts.clear();
        let routing = &ctx.counters.routing;
        let (dropped, unrouted) = (
            routing.dropped_by_rule + routing.dropped_empty_name,
            routing.unrouted,
        );
        let handed = decoder.decode(buf, counts, &mut |points: &[Point<'_>]| {
            let mut batch = [(Point::EMPTY, Fingerprint::ZERO); ROUTE_BATCH_POINTS];
            for (slot, p) in batch.iter_mut().zip(points) {
                let fp = ctx
                    .router
                    .fingerprint(p.name, p.key, NameForm::Collectd, origin);
                ctx.router.prefetch(fp);
                *slot = (*p, fp);
            }
            route_batch(&batch[..points.len()], &mut ctx);
        });
        let routing = &ctx.counters.routing;
        let dropped = routing.dropped_by_rule + routing.dropped_empty_name - dropped;
        let unrouted = ctx.counters.routing.unrouted - unrouted;
        let l = &mut ctx.counters.listeners[listener];
        l.add_decoded(counts);
        let c = &mut l.collectd.counters;
        c.routed += handed as u64 - dropped - unrouted;
        c.dropped_by_rule += dropped;
        c.unrouted += unrouted;
    }

    /// [`process`](Self::process) for a pickle listener: whole frames, each point routed
    /// as it is unpickled (a point may borrow from the pickle machine).
    fn process_pickle(
        &mut self,
        listener: usize,
        buf: &[u8],
        skipping: &mut bool,
        end: End,
    ) -> usize {
        let (
            mut ctx,
            DecodeState {
                counts,
                inputs,
                pickle_vm,
            },
        ) = self.split(NameForm::Plain, Origin::Listener(listener as u16));
        let decoder = &inputs[listener]
            .as_ref()
            .expect("checked by process")
            .decoder;
        counts.clear();
        let mut emit = |p: Point<'_>| {
            let fp = ctx
                .router
                .fingerprint(p.name, p.key, NameForm::Plain, ctx.origin);
            route_batch(&[(p, fp)], &mut ctx);
        };
        let consumed = decoder.decode_pickle(pickle_vm, buf, end, skipping, counts, &mut emit);
        ctx.counters.listeners[listener].add_decoded(counts);
        consumed
    }

    /// Routes graphite lines cadent wrote itself (an aggregator's flush, self-metrics):
    /// `name value timestamp\n` each, trusted (values such as `NaN` that Etsy writes go
    /// out as written), from `origin`.
    pub fn route_lines(&mut self, origin: Origin, buf: &[u8]) {
        let (mut ctx, _) = self.split(NameForm::Plain, origin);
        let mut batch: [(Point<'_>, Fingerprint); ROUTE_BATCH_POINTS] =
            [(Point::EMPTY, Fingerprint::ZERO); ROUTE_BATCH_POINTS];
        let mut batched = 0;
        for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let Some(p) = trusted_line(line) else {
                continue;
            };
            if origin == Origin::Telemetry {
                ctx.counters.routing.self_metric_lines += 1;
            }
            let fp = ctx
                .router
                .fingerprint(p.name, p.key, NameForm::Plain, origin);
            ctx.router.prefetch(fp);
            batch[batched] = (p, fp);
            batched += 1;
            if batched == ROUTE_BATCH_POINTS {
                route_batch(&batch, &mut ctx);
                batched = 0;
            }
        }
        route_batch(&batch[..batched], &mut ctx);
    }
}

/// A line cadent wrote: the name is everything before the second-to-last space.
fn trusted_line(line: &[u8]) -> Option<Point<'_>> {
    let sp2 = memchr::memrchr(b' ', line)?;
    let sp1 = memchr::memrchr(b' ', &line[..sp2])?;
    let name = &line[..sp1];
    Some(Point {
        name,
        key: graphite::hash_key(name),
        line,
        value: Value::Graphite(point::Graphite {
            value: &line[sp1 + 1..sp2],
            timestamp: &line[sp2 + 1..],
        }),
    })
}

impl Core {
    /// Borrows the core as routing needs it for points of `form` from `origin`, beside
    /// the decode state: the one place every entry point gets its context from. The
    /// clock is read only when an aggregator or a store will want the time.
    fn split(&mut self, form: NameForm, origin: Origin) -> (RouteCtx<'_>, DecodeState<'_>) {
        let Core {
            router,
            outputs,
            aggs,
            stores,
            mesh,
            counters,
            cleansed,
            counts,
            forwards,
            inputs,
            pickle_vm,
            ..
        } = self;
        let now_ms = if aggs.aggs.is_empty() && stores.stores.is_empty() {
            0
        } else {
            unix_ms()
        };
        let ctx = RouteCtx {
            router,
            outputs,
            aggs,
            stores,
            mesh,
            counters,
            cleansed,
            forwards,
            form,
            origin,
            constant: None,
            now_s: now_ms / 1000,
            now_f: now_ms as f64 / 1000.0,
        };
        let decode = DecodeState {
            counts,
            inputs,
            pickle_vm,
        };
        (ctx, decode)
    }
}

/// What decoding needs from the core while routing borrows the rest.
struct DecodeState<'c> {
    counts: &'c mut DecodeCounts,
    inputs: &'c mut Vec<Option<Input>>,
    pickle_vm: &'c mut crate::protocol::pickle::Decoder,
}

/// What routing a batch needs from the core, borrowed once per buffer.
struct RouteCtx<'c> {
    router: &'c mut Router,
    outputs: &'c mut Outputs,
    aggs: &'c mut AggStage,
    stores: &'c mut StoreStage,
    mesh: &'c mut ShardMesh,
    counters: &'c mut ShardCounters,
    cleansed: &'c mut Vec<u8>,
    forwards: &'c mut Vec<(u16, usize)>,
    form: NameForm,
    origin: Origin,
    /// The router's decision for every name of `form` from `origin`, when no name can
    /// change it: then points are neither fingerprinted nor looked up.
    constant: Option<u16>,
    now_s: i64,
    /// Now in seconds with a fraction (carbon's `time.time()` for `-1` timestamps).
    now_f: f64,
}

/// Routes a batch in order and hands each point to its targets.
#[inline]
fn route_batch(batch: &[(Point<'_>, Fingerprint)], ctx: &mut RouteCtx<'_>) {
    for (i, (p, fp)) in batch.iter().enumerate() {
        let d = match ctx.constant {
            Some(plan) => ctx
                .router
                .route_constant(plan, &mut ctx.counters.rules_matched),
            None => ctx.router.route_fingerprinted(
                *fp,
                p.name,
                p.key,
                ctx.form,
                ctx.origin,
                &mut ctx.counters.rules_matched,
            ),
        };
        match d.verdict {
            Verdict::Routed => {
                // Rare (the router remembers which names need it): the name goes out
                // cleansed, or as a rewrite left it.
                let base: &[u8] = match (d.cleansed, d.cleansed_name.is_empty()) {
                    (false, _) => p.name,
                    (true, false) => d.cleansed_name,
                    (true, true) => {
                        graphite::cleanse(p.name, ctx.cleansed);
                        ctx.cleansed
                    }
                };
                for (j, &t) in d.targets.iter().enumerate() {
                    // Each target gets the name as it stood when its rule matched.
                    let (name, as_received) = match d.stages.get(j).copied().unwrap_or(0) {
                        0 => (base, !d.cleansed),
                        k => (d.names[k as usize - 1].as_slice(), false),
                    };
                    match t {
                        Target::Dest(dest) => ctx.outputs.append(dest, p, name, as_received),
                        Target::Aggregator(a) => {
                            if ctx.aggs.take(a as usize, p, name, ctx.now_s, ctx.mesh) {
                                ctx.forwards.push((a, i));
                            }
                        }
                        Target::Store(s) => {
                            ctx.stores.take(s as usize, p, name, ctx.now_f, ctx.mesh)
                        }
                    }
                }
            }
            Verdict::Dropped => ctx.counters.routing.dropped_by_rule += 1,
            Verdict::Unrouted => ctx.counters.routing.unrouted += 1,
            Verdict::EmptyName => ctx.counters.routing.dropped_empty_name += 1,
        }
    }
    ctx.aggs.finish_batch();
    if !ctx.forwards.is_empty() {
        // carbon's forward_inputs: the input goes where the aggregator's output goes.
        let forwards = std::mem::take(ctx.forwards);
        for &(a, i) in &forwards {
            let p = &batch[i].0;
            let origin = Origin::Aggregator(a);
            let fp = ctx.router.fingerprint(p.name, p.key, ctx.form, origin);
            let d = ctx.router.route_fingerprinted(
                fp,
                p.name,
                p.key,
                ctx.form,
                origin,
                &mut ctx.counters.rules_matched,
            );
            if d.verdict != Verdict::Routed {
                continue;
            }
            for (j, &t) in d.targets.iter().enumerate() {
                let name = match d.stages.get(j).copied().unwrap_or(0) {
                    0 if d.cleansed && !d.cleansed_name.is_empty() => d.cleansed_name,
                    0 => p.name,
                    k => d.names[k as usize - 1].as_slice(),
                };
                match t {
                    Target::Dest(dest) => {
                        let as_received = name == p.name && !d.cleansed;
                        ctx.outputs.append(dest, p, name, as_received);
                    }
                    Target::Store(s) => ctx.stores.take(s as usize, p, name, ctx.now_f, ctx.mesh),
                    Target::Aggregator(_) => {}
                }
            }
        }
        *ctx.forwards = forwards;
        ctx.forwards.clear();
    }
    ctx.stores.finish_batch();
}

impl ListenerStats {
    /// Adds what one decode call read.
    pub fn add_decoded(&mut self, c: &DecodeCounts) {
        self.counters.received_lines += c.received_lines;
        self.counters.parsed_lines += c.parsed_lines;
        self.counters.rejected_samples += c.rejected_samples;
        self.counters.rejected_frames += c.rejected_frames.iter().sum::<u64>();
        for (a, b) in self.rejected_lines.iter_mut().zip(&c.rejected_lines) {
            *a += b;
        }
        let d = &c.collectd;
        if d.packets > 0 {
            let s = &mut self.collectd;
            let refused: u64 = c.collectd_types_rejects.iter().sum();
            s.counters.packets += d.packets;
            s.counters.value_lists += d.value_lists - refused;
            s.counters.notifications_ignored += d.notifications;
            s.counters.signatures_unverified += d.signatures_unverified;
            for (a, b) in s.rejects.iter_mut().zip(&d.rejects) {
                *a += b;
            }
            for r in TypesReject::ALL {
                s.types_rejects[r as usize] += c.collectd_types_rejects[r as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::protocol::Reject;
    use crate::route::{DestId, DestinationTable};
    use crate::shard::mesh;

    #[test]
    fn lines_through_the_core() {
        let cfg = Config::parse(
            r#"
            [[listen]]
            name = "g"
            url = "tcp://127.0.0.1:0"
            format = "graphite"
            [[cluster]]
            name = "c"
            kind = "forward"
            members = ["127.0.0.1:1"]
            [[route]]
            match = { prefix = "drop." }
            action = "drop"
            [[route]]
            match = { prefix = "ok." }
            send_to = ["c"]
        "#,
        )
        .unwrap();
        let table = DestinationTable::from_config(&cfg);
        let router = Router::new(&cfg, &table, &[]);
        let outputs = Outputs::new(&table, &cfg.output, 0);
        let counters = ShardCounters::new(1, router.rule_count(), 1, 0);
        let mesh = mesh::links(1, 1024, 4096).pop().unwrap();
        let mut core = Core::new(
            router,
            outputs,
            AggStage::new(0, 1),
            StoreStage::new(0, 1),
            mesh,
            counters,
        );
        core.set_input(
            0,
            Input {
                decoder: Decoder::Graphite {
                    cleanse_names: true,
                },
                line_bytes_max: 1000,
            },
        );
        let mut skipping = false;
        let input = b"ok.a  1\t17\r\ndrop.b 1 17\nother 1 17\nbad\nok..(x). 5 17\nok.c 2 18";
        let n = core.process(0, input, &mut skipping, End::More);
        assert_eq!(n, input.len() - b"ok.c 2 18".len());
        core.process(0, &input[n..], &mut skipping, End::Datagram);
        // At the end of a stream the same kind of unterminated line is refused.
        core.process(0, b"ok.d 3 19", &mut skipping, End::Stream);
        core.outputs.seal_all();
        let b = core.outputs.queue(DestId(0)).unwrap().pop().unwrap();
        assert_eq!(b.data, b"ok.a 1 17\nok._x_ 5 17\nok.c 2 18\n");
        let c = &core.counters;
        let l = &c.listeners[0];
        assert_eq!(l.counters.received_lines, 7);
        assert_eq!(l.rejected_lines[Reject::Unterminated as usize], 1);
        assert_eq!(l.counters.parsed_lines, 5);
        assert_eq!(l.rejected_lines[Reject::MissingFields as usize], 1);
        assert_eq!((c.routing.dropped_by_rule, c.routing.unrouted), (1, 1));
        assert_eq!(c.rules_matched, vec![1, 3]);
    }

    fn core_for(cfg: &Config) -> Core {
        let table = DestinationTable::from_config(cfg);
        let router = Router::new(cfg, &table, &[]);
        let outputs = Outputs::new(&table, &cfg.output, 0);
        let counters = ShardCounters::new(1, router.rule_count(), table.destinations.len(), 0);
        let mesh = mesh::links(1, 1024, 4096).pop().unwrap();
        let mut core = Core::new(
            router,
            outputs,
            AggStage::new(0, 1),
            StoreStage::new(0, 1),
            mesh,
            counters,
        );
        let l = &cfg.listeners[0];
        let c = l.collectd.as_ref().unwrap();
        core.set_input(
            0,
            Input {
                decoder: Decoder::Collectd(Box::new(
                    crate::protocol::decode::CollectdDecoder::new(
                        c.security(),
                        c.types.clone(),
                        c.types_complete(),
                    ),
                )),
                line_bytes_max: l.line_bytes_max,
            },
        );
        core
    }

    /// Value lists of `hosts` hosts x 3 plugins x 2 types, packed as a sender packs them.
    fn collectd_packets(hosts: usize) -> (Vec<Vec<u8>>, Vec<String>) {
        use crate::protocol::collectd::{self as cd, CdTime, ValueList, Values};
        let mut enc = cd::Encoder::new(cd::EncoderConfig::default());
        let mut packets = Vec::new();
        let mut ids = Vec::new();
        let v = [cd::Value::Gauge(1.5)];
        for h in 0..hosts {
            for p in ["cpu", "vmem", "disk"] {
                for t in ["gauge-a", "gauge-b"] {
                    let host = format!("host{h:03}");
                    let (type_, tinst) = t.split_once('-').unwrap();
                    let vl = ValueList {
                        host: host.as_bytes(),
                        plugin: p.as_bytes(),
                        plugin_instance: b"",
                        type_: type_.as_bytes(),
                        type_instance: tinst.as_bytes(),
                        time: CdTime::from_secs(1_700_000_000),
                        interval: CdTime::from_secs(10),
                        values: Values::from_slice(&v),
                    };
                    ids.push(format!("{host}/{p}/{t}"));
                    enc.push(&vl, &mut |b: &[u8]| packets.push(b.to_vec()))
                        .unwrap();
                }
            }
        }
        enc.flush(&mut |b: &[u8]| packets.push(b.to_vec()));
        (packets, ids)
    }

    /// Every identifier in the collectd packets queued for `d`, and the packet count.
    fn identifiers_sent(core: &Core, d: DestId, max_bytes: usize) -> (Vec<String>, usize) {
        use crate::protocol::collectd::{self as cd, Record};
        let q = core.outputs.queue(d).expect("destination is live");
        let mut out = Vec::new();
        let mut packets = 0;
        while let Some(mut b) = q.pop() {
            assert!(b.data.len() <= max_bytes, "one packet per batch");
            packets += 1;
            let mut dec = cd::Decoder::new(cd::Security::default());
            let mut n = 0;
            dec.decode(&mut b.data, &mut |r| {
                if let Record::Values(vl) = r {
                    let mut id = Vec::new();
                    cd::write_identifier(&mut id, vl.identity());
                    out.push(String::from_utf8(id).unwrap());
                    n += 1;
                }
            });
            assert_eq!(n, b.lines, "a batch counts its value lists");
            assert_eq!(dec.stats().rejected_total(), 0);
        }
        (out, packets)
    }

    #[test]
    fn collectd_through_the_core_reaches_one_member_of_every_tier() {
        let cfg = Config::parse(
            r#"
            [[listen]]
            name = "collectd"
            url = "udp://127.0.0.1:0"
            format = "collectd"
            [[cluster]]
            name = "shortterm"
            kind = "coco"
            key = "host"
            format = "collectd"
            members = ["udp://127.0.0.1:1", "udp://127.0.0.1:2"]
            [[cluster]]
            name = "midterm"
            kind = "carbon_ch"
            format = "collectd"
            packet_bytes_max = 1024
            members = ["udp://127.0.0.1:3=a", "udp://127.0.0.1:4=b", "udp://127.0.0.1:5=c"]
            [[route]]
            match = { regex = "/(vmem|irq|entropy|users)/" }
            action = "drop"
            [[route]]
            match = { all = true }
            send_to = ["shortterm", "midterm"]
        "#,
        )
        .unwrap();
        let mut core = core_for(&cfg);
        let (packets, ids) = collectd_packets(40);
        for p in &packets {
            let mut p = p.clone();
            core.process_datagram(0, &mut p);
        }
        core.outputs.seal_all();
        let want: Vec<&String> = ids.iter().filter(|i| !i.contains("/vmem/")).collect();
        // Each tier: every kept value list once, all of a host's at one member, the
        // member the cluster's ring names for the host.
        for (tier, members, max) in [(0, 0..2u16, 1452), (1, 2..5u16, 1024)] {
            let mut got = Vec::new();
            let mut owner = std::collections::HashMap::new();
            for m in members {
                let (sent, packets) = identifiers_sent(&core, DestId(m), max);
                assert!(
                    packets < sent.len() / 10,
                    "full packets: {packets} for {}",
                    sent.len()
                );
                for id in sent {
                    let host = id.split('/').next().unwrap().to_string();
                    assert_eq!(*owner.entry(host.clone()).or_insert(m), m, "{host}");
                    let mut dests = Vec::new();
                    core.router.cluster_destinations(
                        tier,
                        host.as_bytes(),
                        host.as_bytes(),
                        true,
                        &mut dests,
                    );
                    assert_eq!(dests, [DestId(m)], "{host}: the ring's member");
                    got.push(id);
                }
            }
            got.sort();
            let mut w: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            w.sort();
            assert_eq!(got, w, "tier {tier}");
        }
        let c = &core.counters.listeners[0].collectd.counters;
        assert_eq!(c.packets, packets.len() as u64);
        assert_eq!(c.value_lists, ids.len() as u64);
        assert_eq!((c.routed, c.dropped_by_rule, c.unrouted), (160, 80, 0));
    }

    #[test]
    fn collectd_to_graphite_lines_named_as_write_graphite_names_them() {
        let cfg = Config::parse(
            r#"
            [[listen]]
            name = "collectd"
            url = "udp://127.0.0.1:0"
            format = "collectd"
            [[cluster]]
            name = "carbon"
            kind = "forward"
            prefix = "collectd."
            store_rates = false
            members = ["127.0.0.1:2003"]
            [[route]]
            match = { regex = "^host000/" }
            send_to = ["carbon"]
        "#,
        )
        .unwrap();
        let mut core = core_for(&cfg);
        let (packets, _) = collectd_packets(2);
        for p in &packets {
            core.process_datagram(0, &mut p.clone());
        }
        core.outputs.seal_all();
        let b = core.outputs.queue(DestId(0)).unwrap().pop().unwrap();
        let text = String::from_utf8(b.data).unwrap();
        assert_eq!(b.lines, 6);
        assert!(
            text.starts_with("collectd.host000.cpu.gauge-a 1.5 1700000000\r\n"),
            "{text}"
        );
        assert_eq!(core.counters.listeners[0].collectd.counters.unrouted, 6);
    }
}
