//! The synchronous heart of a shard: a receive buffer in, lines framed, parsed, routed and
//! appended to destination batches. It never suspends and allocates nothing per metric.

use crate::config::Format;
use crate::output::Outputs;
use crate::protocol::lines::{self, Piece};
use crate::protocol::regex_line::{self, RegexLine};
use crate::protocol::{graphite, statsd, Reject};
use crate::route::{Fingerprint, Router, Verdict};
use crate::telemetry::ShardCounters;

/// Everything a shard's tasks share. Borrowed only between awaits.
#[derive(Debug)]
pub struct Core {
    /// This shard's copy of the rules and rings.
    pub router: Router,
    /// This shard's batches and queues.
    pub outputs: Outputs,
    /// This shard's counters.
    pub counters: ShardCounters,
    /// Set at shutdown: readers stop after the buffer in hand.
    pub draining: bool,
    /// Where a name that needs cleansing is rewritten for output.
    cleansed: Vec<u8>,
    /// By listener id: the parser of a `format = "regex"` listener.
    line_regexes: Vec<Option<RegexLine>>,
}

/// What the pipeline needs to know about the listener a buffer came from.
#[derive(Debug, Clone, Copy)]
pub struct Input {
    /// Listener index (counters).
    pub listener: usize,
    /// Line format.
    pub format: Format,
    /// Longest line.
    pub line_bytes_max: usize,
    /// Graphite: rewrite names as carbon-c-relay does.
    pub cleanse_names: bool,
}

impl Core {
    /// A core over a router and outputs, with zeroed counters.
    pub fn new(router: Router, outputs: Outputs, counters: ShardCounters) -> Core {
        Core {
            router,
            outputs,
            counters,
            draining: false,
            cleansed: Vec::with_capacity(256),
            line_regexes: Vec::new(),
        }
    }

    /// Sets the parser of regex listener `listener` (each shard owns its copy).
    pub fn set_line_regex(&mut self, listener: usize, re: RegexLine) {
        if self.line_regexes.len() <= listener {
            self.line_regexes.resize_with(listener + 1, || None);
        }
        self.line_regexes[listener] = Some(re);
    }

    /// Processes the complete lines of `buf` and, at the end of a datagram, its last
    /// unterminated line; returns the number of bytes consumed. `skipping` carries an
    /// over-long line across calls.
    pub fn process<'b>(
        &mut self,
        input: Input,
        buf: &'b [u8],
        skipping: &mut bool,
        end: End,
    ) -> usize {
        let Input {
            listener,
            format,
            line_bytes_max,
            cleanse_names,
        } = input;
        let Core {
            router,
            outputs,
            counters,
            cleansed,
            line_regexes,
            ..
        } = self;
        let line_regex = line_regexes.get(listener).and_then(|r| r.as_ref());
        let ShardCounters {
            listeners,
            rules_matched,
            dropped_by_rule,
            unrouted,
            ..
        } = counters;
        let lc = &mut listeners[listener];
        let mut ctx = RouteCtx {
            router,
            outputs,
            cleanse: cleanse_names,
            format,
            rules_matched,
            dropped_by_rule,
            unrouted,
            cleansed,
        };
        let mut batch: [Parsed<'b>; ROUTE_BATCH_LINES] = [Parsed::EMPTY; ROUTE_BATCH_LINES];
        let mut batched = 0;
        let mut on_piece = |p: Piece<'b>| match p {
            Piece::TooLong => {
                lc.received_lines += 1;
                lc.rejected_lines[Reject::LineTooLong as usize] += 1;
            }
            Piece::Line(line) => {
                lc.received_lines += 1;
                let parsed = match format {
                    Format::Graphite => graphite::parse(line).map(|l| Parsed {
                        fp: ctx.router.fingerprint(l.name, l.key(), cleanse_names),
                        name: l.name,
                        key: l.key(),
                        value: l.value,
                        timestamp: l.timestamp,
                        // A line already in normal form goes out as one copy.
                        whole: if graphite::is_normal(line, &l) {
                            line
                        } else {
                            &[]
                        },
                    }),
                    Format::Regex => match line_regex.map(|re| re.parse(line)) {
                        Some(Ok(p)) => Ok(Parsed {
                            fp: ctx.router.fingerprint(p.key, p.key, false),
                            name: p.key,
                            key: p.key,
                            value: &[],
                            timestamp: &[],
                            whole: line,
                        }),
                        Some(Err(regex_line::EMPTY_KEY)) => Err(Reject::BadName),
                        Some(Err(regex_line::BAD_TIMESTAMP)) => Err(Reject::BadTimestamp),
                        _ => Err(Reject::NoMatch),
                    },
                    Format::Statsd => statsd::parse(line).map(|name| Parsed {
                        fp: ctx.router.fingerprint(name, name, false),
                        name,
                        key: name,
                        value: &[],
                        timestamp: &[],
                        whole: line,
                    }),
                };
                match parsed {
                    Err(r) => lc.rejected_lines[r as usize] += 1,
                    Ok(p) => {
                        lc.parsed_lines += 1;
                        ctx.router.prefetch(p.fp);
                        batch[batched] = p;
                        batched += 1;
                        if batched == ROUTE_BATCH_LINES {
                            route_batch(&batch, &mut ctx);
                            batched = 0;
                        }
                    }
                }
            }
        };
        let mut consumed = lines::split(buf, line_bytes_max, skipping, &mut on_piece);
        let mut unterminated = false;
        if end != End::More {
            let rest = &buf[consumed..];
            let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
            if !*skipping && !rest.is_empty() {
                match end {
                    // A datagram is whole: its last line needs no newline (statsd senders
                    // rarely send one).
                    End::Datagram if rest.len() <= line_bytes_max => on_piece(Piece::Line(rest)),
                    End::Datagram => on_piece(Piece::TooLong),
                    // A stream that stops mid-line may have been cut short by a crashed
                    // sender; such a line could parse to a wrong value, so it is refused.
                    _ => unterminated = true,
                }
            }
            *skipping = false;
            consumed = buf.len();
        }
        if unterminated {
            lc.received_lines += 1;
            lc.rejected_lines[Reject::Unterminated as usize] += 1;
        }
        route_batch(&batch[..batched], &mut ctx);
        consumed
    }
}

/// Where a buffer handed to [`Core::process`] stands in its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// More bytes may follow: keep a trailing partial line for the next call.
    More,
    /// The stream ended: a trailing partial line is refused as unterminated.
    Stream,
    /// The buffer is one whole datagram: its last line needs no newline.
    Datagram,
}

/// Lines parsed before they are routed together: enough for the cache slots prefetched
/// at parse time to arrive before their lookups, few enough to stay in L1.
const ROUTE_BATCH_LINES: usize = 16;

/// A parsed line waiting in a batch to be routed.
#[derive(Clone, Copy)]
struct Parsed<'a> {
    fp: Fingerprint,
    name: &'a [u8],
    key: &'a [u8],
    value: &'a [u8],
    timestamp: &'a [u8],
    /// The line as it goes out when the name is kept (graphite in normal form, statsd);
    /// empty when it must be rebuilt from the fields.
    whole: &'a [u8],
}

impl Parsed<'_> {
    const EMPTY: Parsed<'static> = Parsed {
        fp: Fingerprint::ZERO,
        name: &[],
        key: &[],
        value: &[],
        timestamp: &[],
        whole: &[],
    };
}

/// What routing a batch needs from the core, borrowed once per buffer.
struct RouteCtx<'c> {
    router: &'c mut Router,
    outputs: &'c mut Outputs,
    cleanse: bool,
    format: Format,
    rules_matched: &'c mut [u64],
    dropped_by_rule: &'c mut u64,
    unrouted: &'c mut u64,
    cleansed: &'c mut Vec<u8>,
}

/// The pieces of a line as it goes out under `name` (`as_received`: `name` is `p.name`).
#[inline]
fn out_line<'a>(
    format: Format,
    p: &Parsed<'a>,
    name: &'a [u8],
    as_received: bool,
) -> [&'a [u8]; 5] {
    match format {
        // A regex line's key is somewhere inside it: a rewrite changes where the line
        // goes, and the line goes out as received.
        Format::Regex => [p.whole, &[], &[], &[], &[]],
        // A line in normal form (statsd always is) goes out as one copy.
        Format::Statsd | Format::Graphite if as_received && !p.whole.is_empty() => {
            [p.whole, &[], &[], &[], &[]]
        }
        // statsd: the new name, then the line after it as received.
        Format::Statsd => [name, &p.whole[p.name.len()..], &[], &[], &[]],
        Format::Graphite => [name, b" ", p.value, b" ", p.timestamp],
    }
}

/// Routes a batch in order and appends each line to its destinations' batches.
#[inline]
fn route_batch(batch: &[Parsed<'_>], ctx: &mut RouteCtx<'_>) {
    for p in batch {
        let d = ctx
            .router
            .route_fingerprinted(p.fp, p.name, p.key, ctx.cleanse, ctx.rules_matched);
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
                if d.stages.is_empty() {
                    let pieces = out_line(ctx.format, p, base, !d.cleansed);
                    for &dest in d.dests {
                        ctx.outputs.append(dest, &pieces);
                    }
                } else {
                    // Each destination gets the name as it stood when its rule matched.
                    for (&dest, &stage) in d.dests.iter().zip(d.stages) {
                        let pieces = match stage {
                            0 => out_line(ctx.format, p, base, !d.cleansed),
                            k => out_line(ctx.format, p, &d.names[k as usize - 1], false),
                        };
                        ctx.outputs.append(dest, &pieces);
                    }
                }
            }
            Verdict::Dropped => *ctx.dropped_by_rule += 1,
            Verdict::Unrouted => *ctx.unrouted += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::route::{DestId, DestinationTable};

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
        let router = Router::new(&cfg, &table);
        let outputs = Outputs::new(&table, &cfg.output, 0);
        let counters = ShardCounters::new(1, router.rule_count(), 1);
        let mut core = Core::new(router, outputs, counters);
        let mut skipping = false;
        let input = b"ok.a  1\t17\r\ndrop.b 1 17\nother 1 17\nbad\nok..(x). 5 17\nok.c 2 18";
        let g = Input {
            listener: 0,
            format: Format::Graphite,
            line_bytes_max: 1000,
            cleanse_names: true,
        };
        let n = core.process(g, input, &mut skipping, End::More);
        assert_eq!(n, input.len() - b"ok.c 2 18".len());
        core.process(g, &input[n..], &mut skipping, End::Datagram);
        // At the end of a stream the same kind of unterminated line is refused.
        core.process(g, b"ok.d 3 19", &mut skipping, End::Stream);
        core.outputs.seal_all();
        let b = core.outputs.queue(DestId(0)).pop().unwrap();
        assert_eq!(b.data, b"ok.a 1 17\nok._x_ 5 17\nok.c 2 18\n");
        let c = &core.counters;
        assert_eq!(c.listeners[0].received_lines, 7);
        assert_eq!(
            c.listeners[0].rejected_lines[Reject::Unterminated as usize],
            1
        );
        assert_eq!(c.listeners[0].parsed_lines, 5);
        assert_eq!(
            c.listeners[0].rejected_lines[Reject::MissingFields as usize],
            1
        );
        assert_eq!((c.dropped_by_rule, c.unrouted), (1, 1));
        assert_eq!(c.rules_matched, vec![1, 3]);
    }
}
