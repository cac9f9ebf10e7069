//! carbon's pickle protocol: frames of a 4-byte big-endian length and a pickle of
//! `[(name, (timestamp, value)), ...]`.
//!
//! The decoder is a pickle VM reduced to the opcodes such data needs (protocols 0-5): it
//! builds lists, tuples, dicts, strings and numbers and nothing else. Opcodes that name or call
//! code (GLOBAL, STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ, EXT*, PERSID, ...) are a
//! reject, so nothing is ever executed. Every structure it keeps (stack, memo, nodes) grows
//! by at most one entry per input byte, so a frame's cost is bounded by its length.
//!
//! After a frame unpickles, each point is checked the way carbon's `MetricPickleReceiver`
//! does (carbon 1.1.10, `protocols.py`): a point that is not `(name, (ts, value))`, whose
//! numbers do not convert with `float()`, or whose value is NaN is skipped and counted,
//! and the rest of the frame is kept. Unlike carbon, a point whose name would not be a
//! valid graphite name (empty, blanks, control bytes) or whose numbers are infinite is
//! skipped too: names go on to line protocols, where a `\n` would forge metrics.
//!
//! The same VM loads any such data for a caller that reads it itself ([`Decoder::load`],
//! a borrowed [`Value`]): CarbonLink's request dicts. [`Writer`] writes protocol-2 pickles
//! of lists, tuples, dicts, strings, numbers, booleans and None in the bytes CPython's
//! `pickle.dumps(obj, protocol=2)` writes (its C pickler: memo numbering, batches of
//! 1000, the single-item APPEND/SETITEM forms).

use std::ops::Range;

/// Largest frame carbon accepts (`PICKLE_RECEIVER_MAX_LENGTH`, 1 MiB); longer frames close
/// the connection.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// Bytes of the length prefix.
pub const HEADER_BYTES: usize = 4;

/// Why a frame was dropped. A closed set, so counters are an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reject {
    /// The length prefix is over the frame bound; the caller closes the connection.
    TooLarge = 0,
    /// The pickle ended before STOP, or an argument runs past its end.
    Truncated,
    /// An opcode outside the data subset (anything that imports or calls), or an unknown
    /// protocol version.
    BadOpcode,
    /// Stack underflow, a missing mark or memo entry, APPEND to a non-list, or a result
    /// that is not a list or tuple of points.
    BadStructure,
    /// A text string (str, py2 str as carbon decodes it) that is not UTF-8.
    BadUtf8,
    /// A protocol-0 text argument (number, memo index, quoted string) that does not parse.
    BadText,
}

impl Reject {
    /// Number of reasons (size of per-reason counter arrays).
    pub const COUNT: usize = 6;
    /// Every reason, in counter order.
    pub const ALL: [Reject; Reject::COUNT] = [
        Reject::TooLarge,
        Reject::Truncated,
        Reject::BadOpcode,
        Reject::BadStructure,
        Reject::BadUtf8,
        Reject::BadText,
    ];

    /// The reason as it appears in stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TooLarge => "too_large",
            Reject::Truncated => "truncated",
            Reject::BadOpcode => "bad_opcode",
            Reject::BadStructure => "bad_structure",
            Reject::BadUtf8 => "bad_utf8",
            Reject::BadText => "bad_text",
        }
    }
}

const _: () = assert!(Reject::BadText as usize + 1 == Reject::COUNT);

/// What [`split_frame`] found at the front of a receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed<'a> {
    /// A whole frame: its pickle, and the bytes it used (header included) to consume.
    Frame {
        /// The pickle, without the length prefix.
        pickle: &'a [u8],
        /// Header plus pickle: how far to advance the buffer.
        consumed: usize,
    },
    /// Not a whole frame yet: the buffer must hold at least this many bytes in total.
    Need(usize),
    /// The length prefix is over the bound (carbon drops the connection).
    TooLarge(u32),
}

/// Finds the first frame in `buf`. A length of exactly `frame_bytes_max` is accepted, as
/// Twisted's `Int32StringReceiver` does.
pub fn split_frame(buf: &[u8], frame_bytes_max: usize) -> Framed<'_> {
    let Some(header) = buf.first_chunk::<HEADER_BYTES>() else {
        return Framed::Need(HEADER_BYTES);
    };
    let len = u32::from_be_bytes(*header);
    if len as usize > frame_bytes_max {
        return Framed::TooLarge(len);
    }
    let end = HEADER_BYTES + len as usize;
    match buf.get(HEADER_BYTES..end) {
        Some(pickle) => Framed::Frame {
            pickle,
            consumed: end,
        },
        None => Framed::Need(end),
    }
}

/// One datapoint. The name borrows from the frame (binary strings) or from the decoder
/// (protocol-0 text, which needs unescaping).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point<'a> {
    /// The metric name, UTF-8 and a valid graphite name.
    pub name: &'a [u8],
    /// Seconds since the epoch (carbon accepts int or float).
    pub timestamp: f64,
    /// The value.
    pub value: f64,
}

/// What one frame held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Points handed to the callback.
    pub points: usize,
    /// Points skipped as carbon skips them (wrong shape, not a number, NaN) or with a
    /// name that is not a valid graphite name.
    pub skipped: usize,
}

// Opcodes (python's `pickletools`).
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const INT: u8 = b'I';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG: u8 = b'L';
const NONE: u8 = b'N';
const STRING: u8 = b'S';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const UNICODE: u8 = b'V';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const APPENDS: u8 = b'e';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const FLOAT: u8 = b'F';
const BINFLOAT: u8 = b'G';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const GET: u8 = b'g';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const PUT: u8 = b'p';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const PROTO: u8 = 0x80;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;

/// Highest protocol python writes (and so the highest PROTO accepted).
const PROTOCOL_MAX: u8 = 5;
/// Items per APPENDS batch, as python's pickler writes them.
const BATCH_ITEMS: usize = 1000;

/// A value built by the VM. Containers refer to other nodes by index, so GET shares a
/// node the way python shares an object.
#[derive(Debug, Clone, Copy)]
enum Node {
    /// None, or anything float() refuses.
    Nothing,
    /// int, bool or float, as float() would convert it.
    Num(f64),
    /// A string: bytes of the frame or of the decoder's text pool.
    Str { pooled: bool, start: u32, len: u32 },
    /// `items[start..start + len]`.
    Tuple { start: u32, len: u32 },
    /// A chain of segments (one per APPEND/APPENDS), `head == NIL` when empty.
    List { head: u32, tail: u32, len: u32 },
    /// A chain of segments of key, value, key, value... (one per SETITEM/SETITEMS);
    /// `len` counts entries, a key set twice included (lookups take the last).
    Dict { head: u32, tail: u32, len: u32 },
}

/// A run of list items in `items`, linked to the list's next run.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: u32,
    len: u32,
    next: u32,
}

const NIL: u32 = u32::MAX;

/// The pickle VM's state, kept between frames so a connection allocates only while its
/// frames grow.
#[derive(Debug, Default)]
pub struct Decoder {
    nodes: Vec<Node>,
    /// Node indices.
    stack: Vec<u32>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    /// Memo slot -> node index (`NIL` when unset).
    memo: Vec<u32>,
    /// Tuple and list items (node indices).
    items: Vec<u32>,
    segments: Vec<Segment>,
    /// Unescaped protocol-0 strings.
    text: Vec<u8>,
}

/// Decodes one frame's pickle with a fresh [`Decoder`].
pub fn decode<F: FnMut(Point<'_>)>(pickle: &[u8], emit: F) -> Result<Decoded, Reject> {
    Decoder::default().decode(pickle, emit)
}

impl Decoder {
    /// Unpickles `pickle` (a frame without its length prefix) and hands each good point to
    /// `emit`, in order. Nothing is emitted unless the whole pickle loads, as in carbon.
    pub fn decode<F: FnMut(Point<'_>)>(
        &mut self,
        pickle: &[u8],
        mut emit: F,
    ) -> Result<Decoded, Reject> {
        // Indices are u32 and unescaped text can be twice the input: far above any frame
        // bound, but it keeps the arithmetic below in range for any caller.
        if pickle.len() > (u32::MAX / 4) as usize {
            return Err(Reject::TooLarge);
        }
        self.clear();
        let top = self.run(pickle)?;
        let points = match self.nodes[top as usize] {
            Node::List { .. } | Node::Tuple { .. } => top,
            _ => return Err(Reject::BadStructure),
        };
        let mut decoded = Decoded::default();
        let mut walk = Items::new(self, points);
        while let Some(item) = walk.next(self) {
            match self.point(pickle, item) {
                Some(p) => {
                    decoded.points += 1;
                    emit(p);
                }
                None => decoded.skipped += 1,
            }
        }
        Ok(decoded)
    }

    fn clear(&mut self) {
        self.nodes.clear();
        self.stack.clear();
        self.marks.clear();
        self.memo.clear();
        self.items.clear();
        self.segments.clear();
        self.text.clear();
    }

    /// `(name, (timestamp, value))` as carbon's receiver unpacks it, or `None` to skip.
    fn point<'s>(&'s self, pickle: &'s [u8], item: u32) -> Option<Point<'s>> {
        let [name, datapoint] = self.pair(item)?;
        let [timestamp, value] = self.pair(datapoint)?;
        let value = self.float(pickle, value)?;
        let timestamp = self.float(pickle, timestamp)?;
        let name = match self.nodes[name as usize] {
            Node::Str { .. } => self.bytes(pickle, name),
            _ => return None,
        };
        // carbon drops NaN values and keeps infinities; a timestamp it cannot make an
        // int of breaks its connection, and invalid names are our own line: skipped.
        let ok = !value.is_nan() && timestamp.is_finite() && super::valid_name(name);
        ok.then_some(Point {
            name,
            timestamp,
            value,
        })
    }

    /// The two items of a 2-element tuple or list.
    fn pair(&self, node: u32) -> Option<[u32; 2]> {
        match self.nodes[node as usize] {
            Node::Tuple { start, len: 2 } => {
                let s = start as usize;
                Some([self.items[s], self.items[s + 1]])
            }
            Node::List { len: 2, .. } => {
                let mut walk = Items::new(self, node);
                Some([walk.next(self)?, walk.next(self)?])
            }
            _ => None,
        }
    }

    /// python's `float(x)` for the types a pickle of data can hold.
    fn float(&self, pickle: &[u8], node: u32) -> Option<f64> {
        match self.nodes[node as usize] {
            Node::Num(v) => Some(v),
            Node::Str { .. } => python_float(self.bytes(pickle, node)),
            _ => None,
        }
    }

    fn bytes<'s>(&'s self, pickle: &'s [u8], node: u32) -> &'s [u8] {
        match self.nodes[node as usize] {
            Node::Str { pooled, start, len } => {
                let r = start as usize..(start + len) as usize;
                if pooled {
                    &self.text[r]
                } else {
                    &pickle[r]
                }
            }
            _ => unreachable!("bytes() of a non-string node"),
        }
    }

    fn push(&mut self, node: Node) {
        debug_assert!(self.nodes.len() < NIL as usize);
        self.stack.push(self.nodes.len() as u32);
        self.nodes.push(node);
    }

    /// The stack length at the innermost mark: items below it are out of reach.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    /// Pops one item above the innermost mark (python 3 keeps marked items out of reach).
    fn pop(&mut self) -> Result<u32, Reject> {
        let floor = self.floor();
        if self.stack.len() <= floor {
            return Err(Reject::BadStructure);
        }
        Ok(self.stack.pop().expect("above the floor"))
    }

    fn top(&self) -> Result<u32, Reject> {
        let floor = self.floor();
        if self.stack.len() <= floor {
            return Err(Reject::BadStructure);
        }
        Ok(*self.stack.last().expect("above the floor"))
    }

    /// The stack position of the innermost mark, removed.
    fn pop_mark(&mut self) -> Result<usize, Reject> {
        self.marks.pop().ok_or(Reject::BadStructure)
    }

    /// Builds a tuple of the top `n` items.
    fn tuple(&mut self, n: usize) -> Result<(), Reject> {
        let floor = self.floor();
        if self.stack.len() < floor + n {
            return Err(Reject::BadStructure);
        }
        let from = self.stack.len() - n;
        self.tuple_from(from);
        Ok(())
    }

    fn tuple_from(&mut self, from: usize) {
        let start = self.items.len() as u32;
        self.items.extend_from_slice(&self.stack[from..]);
        let len = (self.stack.len() - from) as u32;
        self.stack.truncate(from);
        self.push(Node::Tuple { start, len });
    }

    /// Appends `stack[from..]` to the list just below `from` (APPEND, APPENDS, LIST),
    /// or, with `dict`, as key/value pairs to the dict there (SETITEM, SETITEMS, DICT).
    fn append_from(&mut self, from: usize, dict: bool) -> Result<(), Reject> {
        let floor = self.floor();
        if from <= floor {
            return Err(Reject::BadStructure);
        }
        let list = self.stack[from - 1] as usize;
        let added = (self.stack.len() - from) as u32;
        let (head, tail, len) = match self.nodes[list] {
            Node::List { head, tail, len } if !dict => (head, tail, len),
            // python refuses an odd number of items for a dict too.
            Node::Dict { head, tail, len } if dict && added % 2 == 0 => (head, tail, len),
            _ => return Err(Reject::BadStructure),
        };
        if added > 0 {
            let seg = self.segments.len() as u32;
            self.segments.push(Segment {
                start: self.items.len() as u32,
                len: added,
                next: NIL,
            });
            self.items.extend_from_slice(&self.stack[from..]);
            let head = if head == NIL {
                seg
            } else {
                self.segments[tail as usize].next = seg;
                head
            };
            self.nodes[list] = if dict {
                Node::Dict {
                    head,
                    tail: seg,
                    len: len + added / 2,
                }
            } else {
                Node::List {
                    head,
                    tail: seg,
                    len: len + added,
                }
            };
        }
        self.stack.truncate(from);
        Ok(())
    }

    /// Stores the top of the stack in memo slot `slot`. Slots are bounded by the frame
    /// length (python numbers them from 0), so the memo cannot outgrow the input.
    fn put(&mut self, slot: u64, frame_bytes: usize) -> Result<(), Reject> {
        let top = self.top()?;
        let slot = usize::try_from(slot).map_err(|_| Reject::TooLarge)?;
        if slot > frame_bytes {
            return Err(Reject::TooLarge);
        }
        if self.memo.len() <= slot {
            self.memo.resize(slot + 1, NIL);
        }
        self.memo[slot] = top;
        Ok(())
    }

    fn get(&mut self, slot: u64) -> Result<(), Reject> {
        let node = usize::try_from(slot)
            .ok()
            .and_then(|s| self.memo.get(s).copied())
            .filter(|&n| n != NIL)
            .ok_or(Reject::BadStructure)?;
        self.stack.push(node);
        Ok(())
    }

    fn str_frame(&mut self, range: Range<usize>) {
        self.push(Node::Str {
            pooled: false,
            start: range.start as u32,
            len: range.len() as u32,
        });
    }

    fn str_pooled(&mut self, start: usize) {
        let len = self.text.len() - start;
        self.push(Node::Str {
            pooled: true,
            start: start as u32,
            len: len as u32,
        });
    }

    /// Runs the VM to STOP and returns the node it stopped on.
    fn run(&mut self, p: &[u8]) -> Result<u32, Reject> {
        let mut r = Reader { p, at: 0 };
        loop {
            let op = r.u8()?;
            match op {
                PROTO => {
                    if r.u8()? > PROTOCOL_MAX {
                        return Err(Reject::BadOpcode);
                    }
                }
                // Framing inside the pickle is a read-ahead hint; we hold the whole pickle.
                FRAME => {
                    r.take(8)?;
                }
                STOP => return self.pop(),
                MARK => self.marks.push(self.stack.len()),
                NONE => self.push(Node::Nothing),
                NEWTRUE => self.push(Node::Num(1.0)),
                NEWFALSE => self.push(Node::Num(0.0)),
                BININT => {
                    let v = i32::from_le_bytes(r.array()?);
                    self.push(Node::Num(v as f64));
                }
                BININT1 => {
                    let v = r.u8()?;
                    self.push(Node::Num(v as f64));
                }
                BININT2 => {
                    let v = u16::from_le_bytes(r.array()?);
                    self.push(Node::Num(v as f64));
                }
                LONG1 => {
                    let n = r.u8()? as usize;
                    let v = long_le(r.take(n)?);
                    self.push(Node::Num(v));
                }
                INT => {
                    let line = r.line()?;
                    // Protocol 0 writes booleans as I01 / I00.
                    let v = match line {
                        b"01" => 1.0,
                        b"00" => 0.0,
                        _ => text_int(line).ok_or(Reject::BadText)?,
                    };
                    self.push(Node::Num(v));
                }
                LONG => {
                    let line = r.line()?;
                    let digits = line.strip_suffix(b"L").unwrap_or(line);
                    let v = text_int(digits).ok_or(Reject::BadText)?;
                    self.push(Node::Num(v));
                }
                BINFLOAT => {
                    let v = f64::from_be_bytes(r.array()?);
                    self.push(Node::Num(v));
                }
                FLOAT => {
                    let line = r.line()?;
                    let v = std::str::from_utf8(line)
                        .ok()
                        .and_then(|s| s.parse::<f64>().ok())
                        .ok_or(Reject::BadText)?;
                    self.push(Node::Num(v));
                }
                SHORT_BINUNICODE | BINUNICODE | BINUNICODE8 | SHORT_BINSTRING | BINSTRING => {
                    let n = match op {
                        SHORT_BINUNICODE | SHORT_BINSTRING => r.u8()? as u64,
                        BINUNICODE => u32::from_le_bytes(r.array()?) as u64,
                        // BINSTRING's length is signed; negative is python's error too.
                        BINSTRING => u64::try_from(i32::from_le_bytes(r.array()?))
                            .map_err(|_| Reject::BadStructure)?,
                        _ => u64::from_le_bytes(r.array()?),
                    };
                    let range = r.range(n)?;
                    // py2 str is decoded with carbon's encoding='utf-8', so both are text.
                    if std::str::from_utf8(&p[range.clone()]).is_err() {
                        return Err(Reject::BadUtf8);
                    }
                    self.str_frame(range);
                }
                SHORT_BINBYTES | BINBYTES | BINBYTES8 => {
                    let n = match op {
                        SHORT_BINBYTES => r.u8()? as u64,
                        BINBYTES => u32::from_le_bytes(r.array()?) as u64,
                        _ => u64::from_le_bytes(r.array()?),
                    };
                    let range = r.range(n)?;
                    self.str_frame(range);
                }
                UNICODE => {
                    let line = r.line()?;
                    let start = self.text.len();
                    raw_unicode_escape(line, &mut self.text)?;
                    self.str_pooled(start);
                }
                STRING => {
                    let line = r.line()?;
                    let start = self.text.len();
                    escape_decode(line, &mut self.text)?;
                    if std::str::from_utf8(&self.text[start..]).is_err() {
                        return Err(Reject::BadUtf8);
                    }
                    self.str_pooled(start);
                }
                EMPTY_LIST => self.push(Node::List {
                    head: NIL,
                    tail: NIL,
                    len: 0,
                }),
                LIST => {
                    let from = self.pop_mark()?;
                    self.push(Node::List {
                        head: NIL,
                        tail: NIL,
                        len: 0,
                    });
                    let list = self.stack.pop().expect("just pushed");
                    self.stack.insert(from, list);
                    self.append_from(from + 1, false)?;
                }
                APPEND => {
                    let from = self
                        .stack
                        .len()
                        .checked_sub(1)
                        .ok_or(Reject::BadStructure)?;
                    self.append_from(from, false)?;
                }
                APPENDS => {
                    let from = self.pop_mark()?;
                    self.append_from(from, false)?;
                }
                EMPTY_DICT => self.push(Node::Dict {
                    head: NIL,
                    tail: NIL,
                    len: 0,
                }),
                DICT => {
                    let from = self.pop_mark()?;
                    self.push(Node::Dict {
                        head: NIL,
                        tail: NIL,
                        len: 0,
                    });
                    let dict = self.stack.pop().expect("just pushed");
                    self.stack.insert(from, dict);
                    self.append_from(from + 1, true)?;
                }
                SETITEM => {
                    let from = self
                        .stack
                        .len()
                        .checked_sub(2)
                        .ok_or(Reject::BadStructure)?;
                    self.append_from(from, true)?;
                }
                SETITEMS => {
                    let from = self.pop_mark()?;
                    self.append_from(from, true)?;
                }
                EMPTY_TUPLE => self.tuple(0)?,
                TUPLE1 => self.tuple(1)?,
                TUPLE2 => self.tuple(2)?,
                TUPLE3 => self.tuple(3)?,
                TUPLE => {
                    let from = self.pop_mark()?;
                    self.tuple_from(from);
                }
                MEMOIZE => {
                    let slot = self.memo.len() as u64;
                    self.put(slot, p.len())?;
                }
                BINPUT => {
                    let slot = r.u8()? as u64;
                    self.put(slot, p.len())?;
                }
                LONG_BINPUT => {
                    let slot = u32::from_le_bytes(r.array()?) as u64;
                    self.put(slot, p.len())?;
                }
                PUT => {
                    let slot = text_index(r.line()?)?;
                    self.put(slot, p.len())?;
                }
                BINGET => {
                    let slot = r.u8()? as u64;
                    self.get(slot)?;
                }
                LONG_BINGET => {
                    let slot = u32::from_le_bytes(r.array()?) as u64;
                    self.get(slot)?;
                }
                GET => {
                    let slot = text_index(r.line()?)?;
                    self.get(slot)?;
                }
                _ => return Err(Reject::BadOpcode),
            }
        }
    }
}

/// Walks a list's segments or a tuple's items.
struct Items {
    /// Next item index in `items`, and the end of the current run.
    at: usize,
    end: usize,
    /// The segment after the current run (lists only).
    next: u32,
}

impl Items {
    fn new(d: &Decoder, node: u32) -> Items {
        match d.nodes[node as usize] {
            Node::Tuple { start, len } => Items {
                at: start as usize,
                end: (start + len) as usize,
                next: NIL,
            },
            Node::List { head, .. } | Node::Dict { head, .. } => Items {
                at: 0,
                end: 0,
                next: head,
            },
            _ => Items {
                at: 0,
                end: 0,
                next: NIL,
            },
        }
    }

    fn next(&mut self, d: &Decoder) -> Option<u32> {
        while self.at == self.end {
            if self.next == NIL {
                return None;
            }
            let s = d.segments[self.next as usize];
            self.at = s.start as usize;
            self.end = (s.start + s.len) as usize;
            self.next = s.next;
        }
        let item = d.items[self.at];
        self.at += 1;
        Some(item)
    }
}

impl Decoder {
    /// Unpickles `pickle` and returns what it holds, borrowed from the decoder and the
    /// pickle, for a caller that reads other shapes than points (CarbonLink requests).
    /// Same opcodes and bounds as [`Decoder::decode`]; shared and self-referencing
    /// objects are fine, since nothing is copied out.
    pub fn load<'s>(&'s mut self, pickle: &'s [u8]) -> Result<Value<'s>, Reject> {
        if pickle.len() > (u32::MAX / 4) as usize {
            return Err(Reject::TooLarge);
        }
        self.clear();
        let node = self.run(pickle)?;
        Ok(Value {
            d: self,
            pickle,
            node,
        })
    }
}

/// One unpickled object (see [`Decoder::load`]).
#[derive(Clone, Copy)]
pub struct Value<'s> {
    d: &'s Decoder,
    pickle: &'s [u8],
    node: u32,
}

impl std::fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.d.nodes[self.node as usize] {
            Node::Nothing => f.write_str("None"),
            Node::Num(v) => write!(f, "{v:?}"),
            Node::Str { .. } => write!(f, "{:?}", String::from_utf8_lossy(self.bytes())),
            Node::Tuple { len, .. } => write!(f, "tuple({len})"),
            Node::List { len, .. } => write!(f, "list({len})"),
            Node::Dict { len, .. } => write!(f, "dict({len})"),
        }
    }
}

impl<'s> Value<'s> {
    fn at(&self, node: u32) -> Value<'s> {
        Value { node, ..*self }
    }

    fn bytes(&self) -> &'s [u8] {
        let (d, p) = (self.d, self.pickle);
        d.bytes(p, self.node)
    }

    /// True for None.
    pub fn is_none(&self) -> bool {
        matches!(self.d.nodes[self.node as usize], Node::Nothing)
    }

    /// A str (or py2 str / bytes holding UTF-8) as text.
    pub fn as_str(&self) -> Option<&'s str> {
        match self.d.nodes[self.node as usize] {
            Node::Str { .. } => std::str::from_utf8(self.bytes()).ok(),
            _ => None,
        }
    }

    /// An int, bool or float, as `float()` converts it.
    pub fn as_f64(&self) -> Option<f64> {
        match self.d.nodes[self.node as usize] {
            Node::Num(v) => Some(v),
            _ => None,
        }
    }

    /// The items of a list or tuple, in order.
    pub fn items(&self) -> Option<ValueIter<'s>> {
        match self.d.nodes[self.node as usize] {
            Node::List { .. } | Node::Tuple { .. } => Some(ValueIter {
                value: *self,
                items: Items::new(self.d, self.node),
            }),
            _ => None,
        }
    }

    /// The value of a dict's entry whose key is the str `key` (the last one, as python
    /// keeps the last of a key set twice). `None` when this is not a dict or has no such
    /// key.
    pub fn get(&self, key: &str) -> Option<Value<'s>> {
        let Node::Dict { .. } = self.d.nodes[self.node as usize] else {
            return None;
        };
        let mut walk = Items::new(self.d, self.node);
        let mut found = None;
        while let (Some(k), Some(v)) = (walk.next(self.d), walk.next(self.d)) {
            if self.at(k).as_str() == Some(key) {
                found = Some(self.at(v));
            }
        }
        found
    }

    /// True for a dict.
    pub fn is_dict(&self) -> bool {
        matches!(self.d.nodes[self.node as usize], Node::Dict { .. })
    }
}

/// The items of a list or tuple [`Value`].
pub struct ValueIter<'s> {
    value: Value<'s>,
    items: Items,
}

impl<'s> Iterator for ValueIter<'s> {
    type Item = Value<'s>;

    fn next(&mut self) -> Option<Value<'s>> {
        let node = self.items.next(self.value.d)?;
        Some(self.value.at(node))
    }
}

/// A cursor over the pickle; every read past the end is `Truncated`.
struct Reader<'a> {
    p: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, Reject> {
        let b = *self.p.get(self.at).ok_or(Reject::Truncated)?;
        self.at += 1;
        Ok(b)
    }

    fn range(&mut self, n: u64) -> Result<Range<usize>, Reject> {
        let left = (self.p.len() - self.at) as u64;
        if n > left {
            return Err(Reject::Truncated);
        }
        let r = self.at..self.at + n as usize;
        self.at = r.end;
        Ok(r)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Reject> {
        let r = self.range(n as u64)?;
        Ok(&self.p[r])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Reject> {
        let b = self.take(N)?;
        Ok(b.try_into().expect("took N bytes"))
    }

    /// Up to the next `\n`, which is consumed but not returned.
    fn line(&mut self) -> Result<&'a [u8], Reject> {
        let rest = &self.p[self.at..];
        let n = memchr::memchr(b'\n', rest).ok_or(Reject::Truncated)?;
        self.at += n + 1;
        Ok(&rest[..n])
    }
}

/// A little-endian two's-complement integer (LONG1) as python's float() rounds it:
/// correctly rounded, and NaN (the point is then skipped) where python raises
/// OverflowError (beyond f64's range), as carbon then reads no point.
fn long_le(b: &[u8]) -> f64 {
    if b.is_empty() {
        return 0.0;
    }
    if b.len() <= 8 {
        let fill = if b[b.len() - 1] & 0x80 != 0 { 0xff } else { 0 };
        let mut le = [fill; 8];
        le[..b.len()].copy_from_slice(b);
        return i64::from_le_bytes(le) as f64;
    }
    let negative = b[b.len() - 1] & 0x80 != 0;
    // The magnitude, little-endian: for a negative number, invert and add one.
    let mut mag = b.to_vec();
    if negative {
        let mut carry = true;
        for byte in &mut mag {
            *byte = !*byte;
            if carry {
                let (v, c) = byte.overflowing_add(1);
                *byte = v;
                carry = c;
            }
        }
    }
    while mag.len() > 1 && mag[mag.len() - 1] == 0 {
        mag.pop();
    }
    let bits = mag.len() * 8 - mag[mag.len() - 1].leading_zeros() as usize;
    let bit = |i: usize| (mag[i / 8] >> (i % 8)) & 1 == 1;
    let v = if bits <= 64 {
        let mut le = [0u8; 8];
        le[..mag.len()].copy_from_slice(&mag);
        u64::from_le_bytes(le) as f64
    } else {
        // The top 64 bits, with the OR of the rest in the lowest (a sticky bit far
        // below f64's rounding position), rounded once by the conversion, then scaled
        // exactly by a power of two.
        let shift = bits - 64;
        let mut top = 0u64;
        for i in (shift..bits).rev() {
            top = (top << 1) | u64::from(bit(i));
        }
        if (0..shift).any(bit) {
            top |= 1;
        }
        let scale = i32::try_from(shift).unwrap_or(i32::MAX);
        top as f64 * 2f64.powi(scale)
    };
    if v.is_infinite() {
        return f64::NAN;
    }
    if negative {
        -v
    } else {
        v
    }
}

/// A decimal integer as written by protocol 0 (`I`/`L`), as a float.
fn text_int(s: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(s).ok()?.trim_ascii();
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match s.parse::<i64>() {
        Ok(v) => Some(v as f64),
        // Correctly rounded; beyond f64's range python's float() raises: NaN, skipped.
        Err(_) => s
            .parse::<f64>()
            .ok()
            .map(|v| if v.is_infinite() { f64::NAN } else { v }),
    }
}

/// A protocol-0 memo index (`p`/`g`).
fn text_index(s: &[u8]) -> Result<u64, Reject> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or(Reject::BadText)
}

/// python's `float()` of a str or bytes: surrounding whitespace allowed, `inf`/`nan`
/// spellings and digit groups too (the caller drops NaN).
fn python_float(s: &[u8]) -> Option<f64> {
    super::python_float(std::str::from_utf8(s).ok()?.trim().as_bytes())
}

/// Decodes python's `raw-unicode-escape` (protocol 0 `V`): bytes are latin-1, except
/// `\uXXXX` and `\UXXXXXXXX`. Writes UTF-8.
fn raw_unicode_escape(s: &[u8], out: &mut Vec<u8>) -> Result<(), Reject> {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        let digits = match (b, s.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => {
                push_char(out, b as u32)?;
                i += 1;
                continue;
            }
        };
        let hex = s.get(i + 2..i + 2 + digits).ok_or(Reject::BadText)?;
        let c = std::str::from_utf8(hex)
            .ok()
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or(Reject::BadText)?;
        push_char(out, c)?;
        i += 2 + digits;
    }
    Ok(())
}

fn push_char(out: &mut Vec<u8>, c: u32) -> Result<(), Reject> {
    // Surrogates (python keeps them) cannot be UTF-8, so they cannot be a name either.
    let c = char::from_u32(c).ok_or(Reject::BadUtf8)?;
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    Ok(())
}

/// Decodes a protocol-0 `S` argument: a python 2 `repr()` of a str, quoted with `'` or
/// `"`, with `codecs.escape_decode` escapes.
fn escape_decode(s: &[u8], out: &mut Vec<u8>) -> Result<(), Reject> {
    let inner = match s {
        [q @ (b'\'' | b'"'), inner @ .., end] if end == q => inner,
        _ => return Err(Reject::BadText),
    };
    let mut i = 0;
    while i < inner.len() {
        let b = inner[i];
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let e = *inner.get(i).ok_or(Reject::BadText)?;
        i += 1;
        match e {
            b'\n' => {}
            b'\\' | b'\'' | b'"' => out.push(e),
            b'a' => out.push(0x07),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'x' => {
                let hex = inner.get(i..i + 2).ok_or(Reject::BadText)?;
                let v = std::str::from_utf8(hex)
                    .ok()
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(Reject::BadText)?;
                out.push(v);
                i += 2;
            }
            b'0'..=b'7' => {
                let mut v = (e - b'0') as u32;
                for _ in 0..2 {
                    match inner.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            // Unknown escapes stay as written.
            _ => out.extend_from_slice(&[b'\\', e]),
        }
    }
    Ok(())
}

/// Appends one frame (length prefix and a protocol-2 pickle of
/// `[(name, (timestamp, value)), ...]`) to `out`, in the bytes python's
/// `pickle.dumps(points, protocol=2)` writes for names as `str`, integral timestamps as
/// `int` and values as `float`. Names must be UTF-8. Returns the frame's length, prefix
/// included; keeping it under the receiver's bound is the caller's batching (carbon
/// sends at most 500 points a frame).
pub fn encode_frame(points: &[Point<'_>], out: &mut Vec<u8>) -> usize {
    let frame_start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    let mut memo = Memo(0);
    out.extend_from_slice(&[PROTO, 2, EMPTY_LIST]);
    memo.put(out);
    if let [p] = points {
        encode_point(p, &mut memo, out);
        out.push(APPEND);
    } else {
        for batch in points.chunks(BATCH_ITEMS) {
            out.push(MARK);
            for p in batch {
                encode_point(p, &mut memo, out);
            }
            out.push(APPENDS);
        }
    }
    out.push(STOP);
    let len = out.len() - frame_start;
    let pickle_len = u32::try_from(len - HEADER_BYTES).expect("frame under 4 GiB");
    out[frame_start..frame_start + HEADER_BYTES].copy_from_slice(&pickle_len.to_be_bytes());
    len
}

/// python's memo numbering: every str and tuple gets the next slot.
struct Memo(u32);

impl Memo {
    fn put(&mut self, out: &mut Vec<u8>) {
        match u8::try_from(self.0) {
            Ok(slot) => out.extend_from_slice(&[BINPUT, slot]),
            Err(_) => {
                out.push(LONG_BINPUT);
                out.extend_from_slice(&self.0.to_le_bytes());
            }
        }
        self.0 += 1;
    }
}

fn encode_point(p: &Point<'_>, memo: &mut Memo, out: &mut Vec<u8>) {
    debug_assert!(std::str::from_utf8(p.name).is_ok(), "pickle names are str");
    out.push(BINUNICODE);
    out.extend_from_slice(&(p.name.len() as u32).to_le_bytes());
    out.extend_from_slice(p.name);
    memo.put(out);
    encode_timestamp(p.timestamp, out);
    out.push(BINFLOAT);
    out.extend_from_slice(&p.value.to_be_bytes());
    out.push(TUPLE2);
    memo.put(out);
    out.push(TUPLE2);
    memo.put(out);
}

/// An integral timestamp as python writes an int (BININT1/2, BININT, LONG1), otherwise a
/// float.
fn encode_timestamp(t: f64, out: &mut Vec<u8>) {
    // Exactly representable as i64 (the bound excludes 2^63, which would saturate).
    if t.fract() != 0.0 || !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&t) {
        out.push(BINFLOAT);
        out.extend_from_slice(&t.to_be_bytes());
        return;
    }
    encode_int(t as i64, out);
}

/// An int as python's pickler writes it: BININT1/2, BININT, else LONG1.
fn encode_int(v: i64, out: &mut Vec<u8>) {
    if (0..=0xff).contains(&v) {
        out.extend_from_slice(&[BININT1, v as u8]);
    } else if (0..=0xffff).contains(&v) {
        out.push(BININT2);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if let Ok(v) = i32::try_from(v) {
        out.push(BININT);
        out.extend_from_slice(&v.to_le_bytes());
    } else {
        // Minimal two's complement, as python's encode_long.
        let le = v.to_le_bytes();
        let mut n = 8;
        while n > 1 {
            let (last, prev) = (le[n - 1], le[n - 2]);
            let redundant = (last == 0 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0);
            if !redundant {
                break;
            }
            n -= 1;
        }
        out.extend_from_slice(&[LONG1, n as u8]);
        out.extend_from_slice(&le[..n]);
    }
}

/// Writes one protocol-2 pickle (no length prefix) in the bytes CPython 3's
/// `pickle.dumps(obj, protocol=2)` writes for the same object: every str, list, dict and
/// non-empty tuple memoized in order (BINPUT), lists and dicts in batches of 1000 with
/// python's single-item APPEND / SETITEM forms (and its empty `MARK SETITEMS` after a
/// dict of exactly a multiple of 1000 entries), str as BINUNICODE, ints as
/// BININT1/BININT2/BININT/LONG1, floats as BINFLOAT.
///
/// Python memoizes by object identity, so the bytes match an object whose equal strings
/// are shared exactly where [`Writer::shared_str`] is used: dict keys written as literals
/// in python source are one (interned) object. (CPython also shares every one-character
/// latin-1 str; values of one character are written fresh here, which loads the same.)
pub struct Writer<'o> {
    out: &'o mut Vec<u8>,
    memo: Memo,
    shared: Vec<(&'static str, u32)>,
}

impl<'o> Writer<'o> {
    /// Starts a pickle at the end of `out`.
    pub fn new(out: &'o mut Vec<u8>) -> Writer<'o> {
        out.extend_from_slice(&[PROTO, 2]);
        Writer {
            out,
            memo: Memo(0),
            shared: Vec::new(),
        }
    }

    /// Ends the pickle (STOP).
    pub fn finish(self) {
        self.out.push(STOP);
    }

    /// Bytes written so far, the protocol header included.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// True before anything but the header is written.
    pub fn is_empty(&self) -> bool {
        self.out.len() <= 2
    }

    /// `None`.
    pub fn none(&mut self) {
        self.out.push(NONE);
    }

    /// `True` / `False`.
    pub fn bool(&mut self, v: bool) {
        self.out.push(if v { NEWTRUE } else { NEWFALSE });
    }

    /// An int.
    pub fn int(&mut self, v: i64) {
        encode_int(v, self.out);
    }

    /// A float.
    pub fn float(&mut self, v: f64) {
        self.out.push(BINFLOAT);
        self.out.extend_from_slice(&v.to_be_bytes());
    }

    /// A float, or `None` for a missing value.
    pub fn opt_float(&mut self, v: Option<f64>) {
        match v {
            Some(v) => self.float(v),
            None => self.none(),
        }
    }

    /// A str, as a new object.
    pub fn str(&mut self, s: &str) {
        self.str_slot(s);
    }

    /// A str, as a new object; returns its memo slot, for [`Writer::get`].
    pub fn str_slot(&mut self, s: &str) -> u32 {
        self.out.push(BINUNICODE);
        let len = u32::try_from(s.len()).expect("a str under 4 GiB");
        self.out.extend_from_slice(&len.to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
        let slot = self.memo.0;
        self.memo.put(self.out);
        slot
    }

    /// The object written at memo `slot` again (python's pickler does this for an
    /// object it has already written).
    pub fn get(&mut self, slot: u32) {
        debug_assert!(slot < self.memo.0, "only written objects are in the memo");
        match u8::try_from(slot) {
            Ok(slot) => self.out.extend_from_slice(&[BINGET, slot]),
            Err(_) => {
                self.out.push(LONG_BINGET);
                self.out.extend_from_slice(&slot.to_le_bytes());
            }
        }
    }

    /// A str python would share (an interned literal, such as a dict key): written the
    /// first time, fetched from the memo (BINGET) after.
    pub fn shared_str(&mut self, s: &'static str) {
        if let Some(&(_, slot)) = self.shared.iter().find(|(k, _)| *k == s) {
            self.get(slot);
            return;
        }
        let slot = self.str_slot(s);
        self.shared.push((s, slot));
    }

    /// A list: `each` writes one item per element of `items`.
    pub fn list<T>(
        &mut self,
        items: impl ExactSizeIterator<Item = T>,
        mut each: impl FnMut(&mut Self, T),
    ) {
        self.out.push(EMPTY_LIST);
        self.memo.put(self.out);
        let n = items.len();
        if n == 1 {
            for item in items {
                each(self, item);
            }
            self.out.push(APPEND);
            return;
        }
        for (i, item) in items.enumerate() {
            if i % BATCH_ITEMS == 0 {
                self.out.push(MARK);
            }
            each(self, item);
            if i % BATCH_ITEMS == BATCH_ITEMS - 1 || i + 1 == n {
                self.out.push(APPENDS);
            }
        }
    }

    /// A dict: `each` writes one key, then its value, per element of `entries`.
    pub fn dict<T>(
        &mut self,
        entries: impl ExactSizeIterator<Item = T>,
        mut each: impl FnMut(&mut Self, T),
    ) {
        self.out.push(EMPTY_DICT);
        self.memo.put(self.out);
        let n = entries.len();
        if n == 1 {
            for entry in entries {
                each(self, entry);
            }
            self.out.push(SETITEM);
            return;
        }
        for (i, entry) in entries.enumerate() {
            if i % BATCH_ITEMS == 0 {
                self.out.push(MARK);
            }
            each(self, entry);
            if i % BATCH_ITEMS == BATCH_ITEMS - 1 || i + 1 == n {
                self.out.push(SETITEMS);
            }
        }
        if n > 0 && n % BATCH_ITEMS == 0 {
            // The C pickler loops while a batch was full, so it ends with an empty one.
            self.out.extend_from_slice(&[MARK, SETITEMS]);
        }
    }

    /// A tuple of `n` items, which `items` writes.
    pub fn tuple(&mut self, n: usize, items: impl FnOnce(&mut Self)) {
        match n {
            0 => {
                items(self);
                self.out.push(EMPTY_TUPLE); // python does not memoize ()
            }
            1..=3 => {
                items(self);
                self.out.push([TUPLE1, TUPLE2, TUPLE3][n - 1]);
                self.memo.put(self.out);
            }
            _ => {
                self.out.push(MARK);
                items(self);
                self.out.push(TUPLE);
                self.memo.put(self.out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Owned = Vec<(String, f64, f64)>;

    fn run(pickle: &[u8]) -> Result<(Owned, Decoded), Reject> {
        let mut got = Vec::new();
        let d = decode(pickle, |p| {
            got.push((
                String::from_utf8(p.name.to_vec()).unwrap(),
                p.timestamp,
                p.value,
            ))
        })?;
        Ok((got, d))
    }

    fn check(pickle: &[u8], expected: &[(&str, f64, f64)], skipped: usize) {
        let (got, d) = run(pickle).unwrap_or_else(|r| panic!("rejected: {}", r.as_str()));
        let expected: Owned = expected
            .iter()
            .map(|&(n, t, v)| (n.to_string(), t, v))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(d.points, expected.len());
        assert_eq!(d.skipped, skipped);
    }

    fn reject(pickle: &[u8], why: Reject) {
        assert_eq!(run(pickle).map(|_| ()), Err(why), "{pickle:?}");
    }

    // All vectors in this test by:
    // python3 -c "import pickle; print(pickle.dumps([('a.b', (1700000000, 1.5)), ('c', (1.25, 7))], protocol=N))"
    #[test]
    fn python_protocols_0_to_5() {
        let want = [("a.b", 1700000000.0, 1.5), ("c", 1.25, 7.0)];
        let p0 =
            b"(lp0\n(Va.b\np1\n(I1700000000\nF1.5\ntp2\ntp3\na(Vc\np4\n(F1.25\nI7\ntp5\ntp6\na.";
        let p1 = b"]q\x00((X\x03\x00\x00\x00a.bq\x01(J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00tq\x02tq\x03(X\x01\x00\x00\x00cq\x04(G?\xf4\x00\x00\x00\x00\x00\x00K\x07tq\x05tq\x06e.";
        let p2 = b"\x80\x02]q\x00(X\x03\x00\x00\x00a.bq\x01J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86q\x02\x86q\x03X\x01\x00\x00\x00cq\x04G?\xf4\x00\x00\x00\x00\x00\x00K\x07\x86q\x05\x86q\x06e.";
        let p3 = b"\x80\x03]q\x00(X\x03\x00\x00\x00a.bq\x01J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86q\x02\x86q\x03X\x01\x00\x00\x00cq\x04G?\xf4\x00\x00\x00\x00\x00\x00K\x07\x86q\x05\x86q\x06e.";
        let p4 = b"\x80\x04\x950\x00\x00\x00\x00\x00\x00\x00]\x94(\x8c\x03a.b\x94J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86\x94\x86\x94\x8c\x01c\x94G?\xf4\x00\x00\x00\x00\x00\x00K\x07\x86\x94\x86\x94e.";
        let p5 = b"\x80\x05\x950\x00\x00\x00\x00\x00\x00\x00]\x94(\x8c\x03a.b\x94J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86\x94\x86\x94\x8c\x01c\x94G?\xf4\x00\x00\x00\x00\x00\x00K\x07\x86\x94\x86\x94e.";
        for p in [&p0[..], p1, p2, p3, p4, p5] {
            check(p, &want, 0);
        }
    }

    #[test]
    fn values_as_carbon_takes_them_infinities_kept_nan_skipped() {
        // python3 -c "import pickle; print(pickle.dumps([('a', (1, float('inf'))),
        //   ('b', (2, float('nan'))), ('c', (3, '1_0')), ('d', (4, ' -Infinity ')),
        //   ('e', (float('inf'), 1))], protocol=2))"
        let p = b"\x80\x02]q\x00(X\x01\x00\x00\x00aq\x01K\x01G\x7f\xf0\x00\x00\x00\x00\x00\x00\x86q\x02\x86q\x03X\x01\x00\x00\x00bq\x04K\x02G\x7f\xf8\x00\x00\x00\x00\x00\x00\x86q\x05\x86q\x06X\x01\x00\x00\x00cq\x07K\x03X\x03\x00\x00\x001_0q\x08\x86q\t\x86q\nX\x01\x00\x00\x00dq\x0bK\x04X\x0b\x00\x00\x00 -Infinity q\x0c\x86q\r\x86q\x0eX\x01\x00\x00\x00eq\x0fG\x7f\xf0\x00\x00\x00\x00\x00\x00K\x01\x86q\x10\x86q\x11e.";
        let inf = f64::INFINITY;
        check(p, &[("a", 1.0, inf), ("c", 3.0, 10.0), ("d", 4.0, -inf)], 2);
    }

    #[test]
    fn shared_names_come_through_memo_get() {
        // python3 -c "import pickle; n='x.y'; print(pickle.dumps([(n, (1, 2)), (n, (3, 4))], protocol=2))"
        let p = b"\x80\x02]q\x00(X\x03\x00\x00\x00x.yq\x01K\x01K\x02\x86q\x02\x86q\x03h\x01K\x03K\x04\x86q\x04\x86q\x05e.";
        check(p, &[("x.y", 1.0, 2.0), ("x.y", 3.0, 4.0)], 0);
        // python3 -c "import pickle; n='x.y'; print(pickle.dumps([(n, (1, 2)), (n, (3, 4))], protocol=0))"
        let p = b"(lp0\n(Vx.y\np1\n(I1\nI2\ntp2\ntp3\na(g1\n(I3\nI4\ntp4\ntp5\na.";
        check(p, &[("x.y", 1.0, 2.0), ("x.y", 3.0, 4.0)], 0);
    }

    #[test]
    fn protocol_0_text_and_py2_strings() {
        // python3 -c "import pickle; print(pickle.dumps([('caf\u00e9.\u20ac\\\\x', (True, -12345678901234567890))], protocol=0))"
        let p = b"(lp0\n(Vcaf\xe9.\\u20ac\\u005cx\np1\n(I01\nL-12345678901234567890L\ntp2\ntp3\na.";
        check(
            p,
            &[("caf\u{e9}.\u{20ac}\\x", 1.0, -12345678901234567890.0)],
            0,
        );
        // python2 -c "import pickle; print repr(pickle.dumps([('a\tb', (1, 2.5))], 0))"
        let p = b"(lp0\n(S'a\\tb'\np1\n(I1\nF2.5\ntp2\ntp3\na.";
        // A tab is not a valid graphite name: skipped, the frame loads.
        check(p, &[], 1);
        // python2 -c "import pickle; print repr(pickle.dumps([('a.b', (1L, 2.5))], 2))"
        let p = b"\x80\x02]q\x00U\x03a.bq\x01\x8a\x01\x01G@\x04\x00\x00\x00\x00\x00\x00\x86q\x02\x86q\x03a.";
        check(p, &[("a.b", 1.0, 2.5)], 0);
        // python2 -c "import pickle; print repr(pickle.dumps([('a.\xc3\xa9', (1, 2))], 0))"
        let p = b"(lp0\n(S'a.\\xc3\\xa9'\np1\n(I1\nI2\ntp2\ntp3\na.";
        check(p, &[("a.\u{e9}", 1.0, 2.0)], 0);
    }

    #[test]
    fn big_ints_and_bytes_names() {
        // python3 -c "import pickle; print(pickle.dumps([(b'b.y', (2**40, -2**70))], protocol=3))"
        let p = b"\x80\x03]q\x00C\x03b.yq\x01\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00\xc0\x86q\x02\x86q\x03a.";
        check(p, &[("b.y", 2f64.powi(40), -(2f64.powi(70)))], 0);
    }

    #[test]
    fn long_ints_round_once_as_python_float_does() {
        // python3 -c "import pickle; n = 2**70+2**17+1; print(pickle.dumps(n, protocol=2)[2:-1].hex(), repr(float(n)))"
        // and the same for each n; "overflow" where float(n) raises OverflowError.
        let unhex = |h: &str| -> Vec<u8> {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        };
        let long1 = |h: &str| {
            let b = unhex(h);
            assert_eq!(b[0], LONG1);
            assert_eq!(b[1] as usize, b.len() - 2);
            long_le(&b[2..])
        };
        for (h, want) in [
            ("8a09010002000000000040", 1.1805916207174116e21), // 2**70+2**17+1
            ("8a09fffffdffffffffffbf", -1.1805916207174116e21),
            ("8a09010000000000000001", 1.8446744073709552e19), // 2**64+1
            ("8a0701000000000060", 2.7021597764222976e16),     // 2**53*3+1
            ("8a0a00001000000000000002", 9.44473296573929e21), // (2**53+1)*2**20
            ("8a09fffffffffffffffffe", -1.8446744073709552e19), // -(2**64)-1
        ] {
            assert_eq!(long1(h), want, "{h}");
        }
        let zeros = "00".repeat(121);
        // 2**1024-2**970-1 rounds down to f64::MAX; 2**1024-2**970 rounds up: overflow.
        assert_eq!(
            long1(&format!("8a81{zeros}{}", "f8ffffffffffff00")),
            f64::MAX
        );
        assert!(long1(&format!("8a81{zeros}{}", "fcffffffffffff00")).is_nan());
        assert!(long_le(&[0xff; 200]).is_finite()); // -1 in 200 bytes
        assert_eq!(long_le(&[0xff; 200]), -1.0);
        assert!(text_int(&[b'9'; 400]).unwrap().is_nan());
    }

    #[test]
    fn bad_points_are_skipped_as_carbon_does() {
        // python3 -c "import pickle; print(pickle.dumps([('ok', (1, 2)), ('nan', (1, float('nan'))), ('str', ('3', ' 4.5 ')), ('none', (None, 1)), ('short', (1,)), 7, ('bad', ('x', 1)), ['list', [5, 6]]], protocol=2))"
        let p = b"\x80\x02]q\x00(X\x02\x00\x00\x00okq\x01K\x01K\x02\x86q\x02\x86q\x03X\x03\x00\x00\x00nanq\x04K\x01G\x7f\xf8\x00\x00\x00\x00\x00\x00\x86q\x05\x86q\x06X\x03\x00\x00\x00strq\x07X\x01\x00\x00\x003q\x08X\x05\x00\x00\x00 4.5 q\t\x86q\n\x86q\x0bX\x04\x00\x00\x00noneq\x0cNK\x01\x86q\r\x86q\x0eX\x05\x00\x00\x00shortq\x0fK\x01\x85q\x10\x86q\x11K\x07X\x03\x00\x00\x00badq\x12X\x01\x00\x00\x00xq\x13K\x01\x86q\x14\x86q\x15]q\x16(X\x04\x00\x00\x00listq\x17]q\x18(K\x05K\x06eee.";
        check(
            p,
            &[("ok", 1.0, 2.0), ("str", 3.0, 4.5), ("list", 5.0, 6.0)],
            5,
        );
    }

    #[test]
    fn empty_and_tuple_outer() {
        // python3 -c "import pickle; print(pickle.dumps([], protocol=2))"
        check(b"\x80\x02]q\x00.", &[], 0);
        // python3 -c "import pickle; print(pickle.dumps((('a', (1, 2)),), protocol=2))"
        check(
            b"\x80\x02X\x01\x00\x00\x00aq\x00K\x01K\x02\x86q\x01\x86q\x02\x85q\x03.",
            &[("a", 1.0, 2.0)],
            0,
        );
    }

    #[test]
    fn code_is_never_run() {
        // python3 -c "import pickle, os; print(pickle.dumps([os.system], protocol=2))"
        reject(b"\x80\x02]q\x00cposix\nsystem\nq\x01a.", Reject::BadOpcode);
        // python3 -c "import pickle, collections; print(pickle.dumps(collections.OrderedDict(), protocol=4))"
        reject(
            b"\x80\x04\x95\"\x00\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94.",
            Reject::BadOpcode,
        );
        reject(b"\x80\x06]q\x00.", Reject::BadOpcode);
    }

    #[test]
    fn malformed_frames() {
        reject(b"", Reject::Truncated);
        reject(b"\x80\x02]q\x00", Reject::Truncated);
        reject(b"\x80\x02X\xff\x00\x00\x00ab.", Reject::Truncated);
        reject(b"\x80\x02a.", Reject::BadStructure);
        reject(b"\x80\x02K\x01.", Reject::BadStructure);
        reject(b"\x80\x02h\x05.", Reject::BadStructure);
        reject(b"\x80\x02]q\x00(K\x01a.", Reject::BadStructure);
        reject(b"\x80\x02X\x02\x00\x00\x00\xc3(.", Reject::BadUtf8);
        reject(b"(lp0\nI1x\na.", Reject::BadText);
        reject(b"\x80\x02]r\xff\xff\xff\x7f.", Reject::TooLarge);
        // The list survives a self-reference; the point is just skipped.
        let (got, d) = run(b"\x80\x02]q\x00h\x00a.").unwrap();
        assert!(got.is_empty());
        assert_eq!(d.skipped, 1);
    }

    #[test]
    fn framing() {
        let frame = b"\x00\x00\x00\x05\x80\x02]q\x00.\x00";
        assert_eq!(split_frame(&frame[..3], 10), Framed::Need(4));
        assert_eq!(split_frame(&frame[..6], 10), Framed::Need(9));
        assert_eq!(
            split_frame(frame, 10),
            Framed::Frame {
                pickle: &frame[4..9],
                consumed: 9
            }
        );
        assert_eq!(split_frame(frame, 5), split_frame(frame, 10));
        assert_eq!(split_frame(frame, 4), Framed::TooLarge(5));
        assert_eq!(
            split_frame(b"\x00\x10\x00\x01", FRAME_BYTES_MAX_DEFAULT),
            Framed::TooLarge((1 << 20) + 1)
        );
    }

    #[test]
    fn encode_matches_python_bytes() {
        // python3 -c "import pickle; print(pickle.dumps([('a.b', (1700000000, 1.5))], protocol=2))"
        let mut out = Vec::new();
        let one = [Point {
            name: b"a.b",
            timestamp: 1700000000.0,
            value: 1.5,
        }];
        encode_frame(&one, &mut out);
        let py = b"\x80\x02]q\x00X\x03\x00\x00\x00a.bq\x01J\x00\xf1SeG?\xf8\x00\x00\x00\x00\x00\x00\x86q\x02\x86q\x03a.";
        assert_eq!(&out[4..], &py[..]);
        assert_eq!(&out[..4], &(py.len() as u32).to_be_bytes());

        // python3 -c "import pickle; print(pickle.dumps([('a', (1, -2.0)), ('b', (70000, 0.5)), ('c', (-1, 3.0)), ('d', (2**40, 4.0)), ('e', (1.5, 5.0))], protocol=2))"
        let py = b"\x80\x02]q\x00(X\x01\x00\x00\x00aq\x01K\x01G\xc0\x00\x00\x00\x00\x00\x00\x00\x86q\x02\x86q\x03X\x01\x00\x00\x00bq\x04Jp\x11\x01\x00G?\xe0\x00\x00\x00\x00\x00\x00\x86q\x05\x86q\x06X\x01\x00\x00\x00cq\x07J\xff\xff\xff\xffG@\x08\x00\x00\x00\x00\x00\x00\x86q\x08\x86q\tX\x01\x00\x00\x00dq\n\x8a\x06\x00\x00\x00\x00\x00\x01G@\x10\x00\x00\x00\x00\x00\x00\x86q\x0b\x86q\x0cX\x01\x00\x00\x00eq\rG?\xf8\x00\x00\x00\x00\x00\x00G@\x14\x00\x00\x00\x00\x00\x00\x86q\x0e\x86q\x0fe.";
        let pts = [
            ("a", 1.0, -2.0),
            ("b", 70000.0, 0.5),
            ("c", -1.0, 3.0),
            ("d", 2f64.powi(40), 4.0),
            ("e", 1.5, 5.0),
        ]
        .map(|(n, t, v)| Point {
            name: n.as_bytes(),
            timestamp: t,
            value: v,
        });
        out.clear();
        let n = encode_frame(&pts, &mut out);
        assert_eq!(n, out.len());
        assert_eq!(&out[4..], &py[..]);

        // python3 -c "import pickle; print(pickle.dumps([], protocol=2))"
        out.clear();
        encode_frame(&[], &mut out);
        assert_eq!(&out[4..], b"\x80\x02]q\x00.");
    }

    #[test]
    fn encode_decode_round_trip_across_batches() {
        let names: Vec<String> = (0..2100).map(|i| format!("m.{i}")).collect();
        let pts: Vec<Point> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Point {
                name: n.as_bytes(),
                timestamp: 1_700_000_000.0 + i as f64,
                value: i as f64 * 0.25,
            })
            .collect();
        let mut out = Vec::new();
        encode_frame(&pts, &mut out);
        let Framed::Frame { pickle, consumed } = split_frame(&out, FRAME_BYTES_MAX_DEFAULT) else {
            panic!("one whole frame")
        };
        assert_eq!(consumed, out.len());
        let mut got = Vec::new();
        let mut decoder = Decoder::default();
        for _ in 0..2 {
            got.clear();
            let d = decoder
                .decode(pickle, |p| got.push(p.name.to_vec()))
                .unwrap();
            assert_eq!(d.points, pts.len());
        }
        assert!(got.iter().zip(&names).all(|(g, n)| g == n.as_bytes()));
    }

    // python3 -c "import pickle; print(pickle.dumps({'type': 'cache-query-bulk', 'metrics': ['a.b', 'c'], 'n': 7, 'x': None}, protocol=N))"
    #[test]
    fn dicts_in_protocols_0_to_5() {
        let p0 = b"(dp0\nVtype\np1\nVcache-query-bulk\np2\nsVmetrics\np3\n(lp4\nVa.b\np5\naVc\np6\nasVn\np7\nI7\nsVx\np8\nNs.";
        let p1 = b"}q\x00(X\x04\x00\x00\x00typeq\x01X\x10\x00\x00\x00cache-query-bulkq\x02X\x07\x00\x00\x00metricsq\x03]q\x04(X\x03\x00\x00\x00a.bq\x05X\x01\x00\x00\x00cq\x06eX\x01\x00\x00\x00nq\x07K\x07X\x01\x00\x00\x00xq\x08Nu.";
        let p2 = b"\x80\x02}q\x00(X\x04\x00\x00\x00typeq\x01X\x10\x00\x00\x00cache-query-bulkq\x02X\x07\x00\x00\x00metricsq\x03]q\x04(X\x03\x00\x00\x00a.bq\x05X\x01\x00\x00\x00cq\x06eX\x01\x00\x00\x00nq\x07K\x07X\x01\x00\x00\x00xq\x08Nu.";
        let p4 = b"\x80\x04\x95B\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04type\x94\x8c\x10cache-query-bulk\x94\x8c\x07metrics\x94]\x94(\x8c\x03a.b\x94\x8c\x01c\x94e\x8c\x01n\x94K\x07\x8c\x01x\x94Nu.";
        let p5 = b"\x80\x05\x95B\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04type\x94\x8c\x10cache-query-bulk\x94\x8c\x07metrics\x94]\x94(\x8c\x03a.b\x94\x8c\x01c\x94e\x8c\x01n\x94K\x07\x8c\x01x\x94Nu.";
        let mut d = Decoder::default();
        for p in [&p0[..], p1, p2, p4, p5] {
            let v = d.load(p).unwrap();
            assert!(v.is_dict());
            assert_eq!(
                v.get("type").and_then(|t| t.as_str()),
                Some("cache-query-bulk")
            );
            let metrics: Vec<&str> = v
                .get("metrics")
                .and_then(|m| m.items())
                .unwrap()
                .map(|m| m.as_str().unwrap())
                .collect();
            assert_eq!(metrics, ["a.b", "c"]);
            assert_eq!(v.get("n").and_then(|n| n.as_f64()), Some(7.0));
            assert!(v.get("x").unwrap().is_none());
            assert!(v.get("missing").is_none());
            assert!(v.get("n").unwrap().get("n").is_none());
        }
        // A dict is not a list of points: the points decoder refuses it whole.
        assert_eq!(run(p2).map(|_| ()), Err(Reject::BadStructure));
    }

    #[test]
    fn dict_structure_errors() {
        let mut d = Decoder::default();
        // A key set twice keeps the last value, as python does.
        // python3 -c "import pickle; print(pickle.dumps({'k': 1}, 2))" with a second SETITEM.
        let v = d
            .load(b"\x80\x02}q\x00X\x01\x00\x00\x00kK\x01sX\x01\x00\x00\x00kK\x02s.")
            .unwrap();
        assert_eq!(v.get("k").and_then(|k| k.as_f64()), Some(2.0));
        // Odd items for SETITEMS, SETITEM below a mark or on a list, DICT without a mark.
        for bad in [
            &b"\x80\x02}(K\x01u."[..],
            b"\x80\x02}(K\x01K\x02s.",
            b"\x80\x02]K\x01K\x02s.",
            b"\x80\x02K\x01K\x02s.",
            b"\x80\x02d.",
            b"\x80\x02(K\x01d.",
        ] {
            assert_eq!(
                d.load(bad).map(|_| ()).unwrap_err(),
                Reject::BadStructure,
                "{bad:?}"
            );
        }
        // A dict that holds itself is fine: nothing is copied out.
        let v = d.load(b"\x80\x02}q\x00X\x01\x00\x00\x00sh\x00s.").unwrap();
        assert!(v.get("s").unwrap().get("s").unwrap().is_dict());
        assert_eq!(
            d.load(b"\x80\x02cos\nsystem\n.").map(|_| ()).unwrap_err(),
            Reject::BadOpcode
        );
    }

    fn written(f: impl FnOnce(&mut Writer<'_>)) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer::new(&mut out);
        f(&mut w);
        w.finish();
        out
    }

    #[test]
    fn writer_matches_python_bytes() {
        // python3 -c "import pickle; print(pickle.dumps([{'path': 'ab.cd', 'is_leaf': False}, {'path': 'ab.ef', 'is_leaf': True, 'intervals': [(1700000000, 1700086400)]}], 2))"
        let py = b"\x80\x02]q\x00(}q\x01(X\x04\x00\x00\x00pathq\x02X\x05\x00\x00\x00ab.cdq\x03X\x07\x00\x00\x00is_leafq\x04\x89u}q\x05(h\x02X\x05\x00\x00\x00ab.efq\x06h\x04\x88X\t\x00\x00\x00intervalsq\x07]q\x08J\x00\xf1SeJ\x80BUe\x86q\taue.";
        let got = written(|w| {
            w.list([false, true].into_iter(), |w, leaf| {
                w.dict(0..if leaf { 3 } else { 2 }, |w, k| match k {
                    0 => {
                        w.shared_str("path");
                        w.str(if leaf { "ab.ef" } else { "ab.cd" });
                    }
                    1 => {
                        w.shared_str("is_leaf");
                        w.bool(leaf);
                    }
                    _ => {
                        w.shared_str("intervals");
                        w.list(std::iter::once(()), |w, ()| {
                            w.tuple(2, |w| {
                                w.int(1700000000);
                                w.int(1700086400);
                            })
                        });
                    }
                })
            })
        });
        assert_eq!(got, py);
        // python3 -c "import pickle; print(pickle.dumps((1,2,3,4), 2), pickle.dumps(('x',), 2), pickle.dumps([True, None, -1, 2**40, -2**63, 0.5], 2), pickle.dumps((), 2))"
        assert_eq!(
            written(|w| w.tuple(4, |w| (1..=4).for_each(|i| w.int(i)))),
            b"\x80\x02(K\x01K\x02K\x03K\x04tq\x00."
        );
        assert_eq!(
            written(|w| w.tuple(1, |w| w.str("x"))),
            b"\x80\x02X\x01\x00\x00\x00xq\x00\x85q\x01."
        );
        assert_eq!(written(|w| w.tuple(0, |_| {})), b"\x80\x02).");
        let got = written(|w| {
            w.list(0..6, |w, i| match i {
                0 => w.bool(true),
                1 => w.none(),
                2 => w.int(-1),
                3 => w.int(1 << 40),
                4 => w.int(i64::MIN),
                _ => w.opt_float(Some(0.5)),
            })
        });
        assert_eq!(got, b"\x80\x02]q\x00(\x88NJ\xff\xff\xff\xff\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80G?\xe0\x00\x00\x00\x00\x00\x00e.");
    }

    #[test]
    fn writer_batches_as_cpython() {
        // python3 -c "import pickle; b = pickle.dumps({str(i): i for i in range(1000)}, 2); print(b[-8:])"
        let dict = |n: usize| {
            written(|w| {
                w.dict(0..n, |w, i| {
                    w.str(&i.to_string());
                    w.int(i as i64);
                })
            })
        };
        assert!(dict(1000).ends_with(b"\x00M\xe7\x03u(u."));
        assert!(dict(1001).ends_with(b"M\xe8\x03u."));
        assert_eq!(dict(0), b"\x80\x02}q\x00.");
        assert_eq!(dict(1), b"\x80\x02}q\x00X\x01\x00\x00\x000q\x01K\x00s.");
        // python3 -c "import pickle; b = pickle.dumps(list(range(1000)), 2); print(b[-8:])"
        let list = |n: usize| written(|w| w.list(0..n, |w, i| w.int(i as i64)));
        assert!(list(1000).ends_with(b"M\xe6\x03M\xe7\x03e."));
        assert!(list(1001).ends_with(b"e(M\xe8\x03e."));
        assert_eq!(list(1), b"\x80\x02]q\x00K\x00a.");
        // Every str is memoized in order; past 255 slots BINPUT turns LONG_BINPUT and a
        // shared str's BINGET turns LONG_BINGET.
        // python3 -c "import pickle; x = 'kk'; print(pickle.dumps([['s%d' % i for i in range(300)], x, x], 2))"
        let many = written(|w| {
            w.list(0..3, |w, i| match i {
                0 => w.list(0..300, |w, j| w.str(&format!("s{j}"))),
                _ => w.shared_str("kk"),
            })
        });
        assert_eq!(many.len(), 3358);
        let sha: String = {
            use sha2::{Digest, Sha256};
            Sha256::digest(&many)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        // python3 -c "...; import hashlib; print(hashlib.sha256(b).hexdigest())"
        assert_eq!(
            sha,
            "d42a4ba5f284c93afc48dafb11e25fa03fa0de88729adc8d0b2d63145de3ddef"
        );
        assert!(many.ends_with(
            b"\x00s299r-\x01\x00\x00eX\x02\x00\x00\x00kkr.\x01\x00\x00j.\x01\x00\x00e."
        ));
        let mut d = Decoder::default();
        let v = d.load(&many).unwrap();
        let items: Vec<_> = v.items().unwrap().collect();
        assert_eq!(items[2].as_str(), Some("kk"));
        assert_eq!(
            items[0].items().unwrap().nth(299).unwrap().as_str(),
            Some("s299")
        );
    }

    #[test]
    fn reasons_are_distinct() {
        let mut names: Vec<_> = Reject::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reject::COUNT);
    }
}
