//! Replays the transcripts captured from redis-server 7.0.15 (`tests/sim/tests/transcripts/`,
//! format in its README) into the model and checks that every connection receives the
//! same bytes, frame by frame, after every step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{ClientId, Keyspace, ModelConfig, ModelRedis, Reply};

macro_rules! transcripts {
    ($($name:ident),* $(,)?) => {
        /// Every transcript file, by name.
        const TRANSCRIPTS: &[(&str, &str)] = &[
            $((stringify!($name),
               include_str!(concat!("../../tests/transcripts/", stringify!($name), ".txt")))),*
        ];
        mod replay_whole {
            $(#[test] fn $name() { super::replay_named(stringify!($name), super::Split::Whole); })*
        }
        mod replay_bytewise {
            $(#[test] fn $name() { super::replay_named(stringify!($name), super::Split::Bytewise); })*
        }
    };
}

transcripts!(
    auth_acl_user,
    auth_acl_user_no_requirepass,
    auth_requirepass,
    auth_unauthenticated_limits,
    handshake_resp2,
    handshake_resp3,
    hashes_and_sets,
    inline_and_pipelining,
    ping_modes,
    protocol_errors,
    publish_counts,
    reset,
    restart_and_kill,
    scripts,
    shards,
    strings_ttl,
    subscribe_resp2,
    subscribe_resp3,
    unknown_and_arity,
);

// ---------------------------------------------------------------- transcript format

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Bytes(Vec<u8>),
    /// `{ID}`: any decimal integer.
    Int,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `C1<`: the next frame, in order.
    Ordered,
    /// `C1<~`: consecutive lines form a group of confirmations that may come in any
    /// order; their running counts (last element) still come in the order written.
    Group,
    /// `C1<%`: one aggregate frame whose elements may come in any order.
    Elements,
}

#[derive(Clone, Debug)]
enum Line {
    Send {
        client: u32,
        bytes: Vec<u8>,
    },
    Expect {
        client: u32,
        kind: Kind,
        frame: Vec<Tok>,
    },
    Closed {
        client: u32,
    },
    Sleep(u64),
    Kill(u32),
    Restart,
}

#[derive(Debug)]
struct Transcript {
    cfg: ModelConfig,
    lines: Vec<(usize, Line)>,
}

fn unescape(s: &str, allow_mask: bool) -> Vec<Tok> {
    let b = s.as_bytes();
    let mut toks = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if allow_mask && b[i..].starts_with(b"{ID}") {
            if !cur.is_empty() {
                toks.push(Tok::Bytes(std::mem::take(&mut cur)));
            }
            toks.push(Tok::Int);
            i += 4;
            continue;
        }
        if b[i] == b'\\' {
            match b.get(i + 1) {
                Some(b'\\') => cur.push(b'\\'),
                Some(b'r') => cur.push(b'\r'),
                Some(b'n') => cur.push(b'\n'),
                Some(b't') => cur.push(b'\t'),
                Some(b'x') => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).expect("hex escape");
                    cur.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                    i += 2;
                }
                other => panic!("bad escape {other:?} in {s:?}"),
            }
            i += 2;
        } else {
            cur.push(b[i]);
            i += 1;
        }
    }
    if !cur.is_empty() {
        toks.push(Tok::Bytes(cur));
    }
    toks
}

fn literal(toks: &[Tok]) -> Vec<u8> {
    toks.iter()
        .flat_map(|t| match t {
            Tok::Bytes(b) => b.clone(),
            Tok::Int => panic!("{{ID}} is not allowed here"),
        })
        .collect()
}

fn client_number(s: &str) -> u32 {
    s.strip_prefix('C')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad client {s:?}"))
}

fn parse(text: &str) -> Transcript {
    let mut cfg = ModelConfig::default();
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let lineno = n + 1;
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        if let Some(pw) = raw.strip_prefix("@requirepass ") {
            cfg.requirepass = Some(pw.to_string());
            continue;
        }
        if let Some(rest) = raw.strip_prefix("@user ") {
            let (u, p) = rest.split_once(' ').expect("@user NAME PASSWORD");
            cfg.users.push((u.to_string(), p.to_string()));
            continue;
        }
        if raw == "restart" {
            lines.push((lineno, Line::Restart));
            continue;
        }
        if let Some(ms) = raw.strip_prefix("sleep ") {
            lines.push((lineno, Line::Sleep(ms.parse().expect("sleep MS"))));
            continue;
        }
        if let Some(c) = raw.strip_prefix("kill ") {
            lines.push((lineno, Line::Kill(client_number(c))));
            continue;
        }
        if let Some(c) = raw.strip_suffix(" closed") {
            lines.push((
                lineno,
                Line::Closed {
                    client: client_number(c),
                },
            ));
            continue;
        }
        let split = raw
            .find(['>', '<'])
            .unwrap_or_else(|| panic!("line {lineno}: {raw:?}"));
        let client = client_number(&raw[..split]);
        let rest = &raw[split..];
        let line = if let Some(r) = rest.strip_prefix(">*") {
            let (count, data) = r.split_once(' ').expect("C1>*COUNT BYTES");
            let unit = literal(&unescape(data, false));
            Line::Send {
                client,
                bytes: unit.repeat(count.parse().expect("repeat count")),
            }
        } else if let Some(data) = rest.strip_prefix("> ") {
            Line::Send {
                client,
                bytes: literal(&unescape(data, false)),
            }
        } else if let Some(data) = rest.strip_prefix("<~ ") {
            Line::Expect {
                client,
                kind: Kind::Group,
                frame: unescape(data, true),
            }
        } else if let Some(data) = rest.strip_prefix("<% ") {
            Line::Expect {
                client,
                kind: Kind::Elements,
                frame: unescape(data, true),
            }
        } else if let Some(data) = rest.strip_prefix("< ") {
            Line::Expect {
                client,
                kind: Kind::Ordered,
                frame: unescape(data, true),
            }
        } else {
            panic!("line {lineno}: {raw:?}")
        };
        lines.push((lineno, line));
    }
    Transcript { cfg, lines }
}

// ---------------------------------------------------------------- RESP frames

/// Length of the RESP2/RESP3 frame at the start of `b`, if complete.
fn frame_len(b: &[u8]) -> Option<usize> {
    let cr = b.windows(2).position(|w| w == b"\r\n")?;
    let head = std::str::from_utf8(&b[1..cr]).ok()?;
    let body = cr + 2;
    match b[0] {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(body),
        b'$' | b'=' | b'!' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                return Some(body);
            }
            let end = body + n as usize + 2;
            (b.len() >= end).then_some(end)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n: i64 = head.parse().ok()?;
            if n < 0 {
                return Some(body);
            }
            let items = if matches!(b[0], b'%' | b'|') {
                2 * n
            } else {
                n
            };
            let mut pos = body;
            for _ in 0..items {
                pos += frame_len(&b[pos..])?;
            }
            Some(pos)
        }
        _ => None,
    }
}

fn split_frames(mut b: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = frame_len(b).ok_or_else(|| format!("not a complete RESP frame: {}", esc(b)))?;
        out.push(b[..n].to_vec());
        b = &b[n..];
    }
    Ok(out)
}

/// An aggregate frame's header line and its element frames.
fn elements(frame: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let cr = frame
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(frame.len());
    let header = frame[..(cr + 2).min(frame.len())].to_vec();
    let items = split_frames(&frame[header.len()..]).unwrap_or_default();
    (header, items)
}

fn esc(b: &[u8]) -> String {
    let mut s = String::new();
    for &x in b {
        match x {
            b'\\' => s.push_str("\\\\"),
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(x as char),
            _ => s.push_str(&format!("\\x{x:02x}")),
        }
    }
    s
}

fn matches(pattern: &[Tok], actual: &[u8]) -> bool {
    let mut pos = 0;
    for t in pattern {
        match t {
            Tok::Bytes(b) => {
                if !actual[pos..].starts_with(b) {
                    return false;
                }
                pos += b.len();
            }
            Tok::Int => {
                let start = pos;
                if actual.get(pos) == Some(&b'-') {
                    pos += 1;
                }
                while actual.get(pos).is_some_and(u8::is_ascii_digit) {
                    pos += 1;
                }
                if pos == start {
                    return false;
                }
            }
        }
    }
    pos == actual.len()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// Checks what one connection received in one step against the transcript.
fn check_client(expected: &[(Kind, Vec<Tok>)], received: &[u8]) -> Result<(), String> {
    let frames = split_frames(received)?;
    let mut k = 0;
    let mut e = 0;
    let missing = |what: &str| format!("expected {what}, got nothing more");
    while e < expected.len() {
        let (kind, pattern) = &expected[e];
        match kind {
            Kind::Ordered => {
                let got = frames
                    .get(k)
                    .ok_or_else(|| missing(&pattern_text(pattern)))?;
                if !matches(pattern, got) {
                    return Err(format!(
                        "expected {}\n     got {}",
                        pattern_text(pattern),
                        esc(got)
                    ));
                }
                k += 1;
                e += 1;
            }
            Kind::Elements => {
                let got = frames
                    .get(k)
                    .ok_or_else(|| missing(&pattern_text(pattern)))?;
                let (eh, ei) = elements(&literal(pattern));
                let (gh, gi) = elements(got);
                if eh != gh || sorted(ei) != sorted(gi) {
                    return Err(format!(
                        "expected (elements in any order) {}\n     got {}",
                        pattern_text(pattern),
                        esc(got)
                    ));
                }
                k += 1;
                e += 1;
            }
            Kind::Group => {
                let n = expected[e..]
                    .iter()
                    .take_while(|(k, _)| *k == Kind::Group)
                    .count();
                let want: Vec<Vec<u8>> =
                    expected[e..e + n].iter().map(|(_, p)| literal(p)).collect();
                let got: Vec<Vec<u8>> = frames
                    .get(k..k + n)
                    .ok_or_else(|| missing("a confirmation group"))?
                    .to_vec();
                let split = |fs: &[Vec<u8>]| {
                    let mut heads = Vec::new();
                    let mut counts = Vec::new();
                    for f in fs {
                        let (h, mut items) = elements(f);
                        counts.push(items.pop());
                        heads.push((h, items));
                    }
                    (sorted(heads), counts)
                };
                if split(&want) != split(&got) {
                    return Err(format!(
                        "expected (in any order, counts in order) {}\n     got {}",
                        want.iter().map(|f| esc(f)).collect::<Vec<_>>().join(" | "),
                        got.iter().map(|f| esc(f)).collect::<Vec<_>>().join(" | ")
                    ));
                }
                k += n;
                e += n;
            }
        }
    }
    if k < frames.len() {
        return Err(format!(
            "unexpected extra output: {}",
            frames[k..]
                .iter()
                .map(|f| esc(f))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    Ok(())
}

fn pattern_text(p: &[Tok]) -> String {
    p.iter()
        .map(|t| match t {
            Tok::Bytes(b) => esc(b),
            Tok::Int => "{ID}".to_string(),
        })
        .collect()
}

// ---------------------------------------------------------------- scripts

fn script_return_1(_: &mut Keyspace, _: &[Vec<u8>], _: &[Vec<u8>], _: Instant) -> Reply {
    Reply::Integer(1)
}

fn script_get_key(ks: &mut Keyspace, keys: &[Vec<u8>], _: &[Vec<u8>], _: Instant) -> Reply {
    ks.call(&[b"GET", &keys[0]])
}

fn script_echo_key_arg(_: &mut Keyspace, keys: &[Vec<u8>], args: &[Vec<u8>], _: Instant) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(keys[0].clone()),
        Reply::Bulk(args[0].clone()),
        Reply::Integer(3),
    ])
}

/// The Lua scripts used in the transcripts, modelled natively.
fn register_scripts(m: &mut ModelRedis) {
    m.register_script_impl("return 1", script_return_1);
    m.register_script_impl("return redis.call('GET', KEYS[1])", script_get_key);
    m.register_script_impl("return {KEYS[1], ARGV[1], 3}", script_echo_key_arg);
}

// ---------------------------------------------------------------- replay

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Split {
    /// Each `C1>` line is one input.
    Whole,
    /// Each `C1>` line is fed one byte at a time (large ones in 997-byte pieces).
    Bytewise,
}

fn replay_named(name: &str, split: Split) {
    let text = TRANSCRIPTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .expect("listed transcript");
    if let Err(e) = replay(text, split) {
        panic!("transcript {name} ({split:?}): {e}");
    }
}

fn replay(text: &str, split: Split) -> Result<(), String> {
    let t = parse(text);
    let mut model = ModelRedis::new(t.cfg.clone());
    register_scripts(&mut model);
    // Only the test reads the real clock, once, for a base instant; the model sees
    // base + virtual time.
    let base = Instant::now();
    let mut elapsed = Duration::ZERO;
    let mut conns: BTreeMap<u32, ClientId> = BTreeMap::new();
    let mut i = 0;
    while i < t.lines.len() {
        let (lineno, action) = &t.lines[i];
        i += 1;
        let now = base + elapsed;
        match action {
            Line::Send { client, bytes } => {
                let id = *conns.entry(*client).or_insert_with(|| model.connect());
                match split {
                    Split::Whole => model.input(id, bytes, now),
                    Split::Bytewise => {
                        let piece = if bytes.len() > 4096 { 997 } else { 1 };
                        for chunk in bytes.chunks(piece) {
                            model.input(id, chunk, now);
                        }
                    }
                }
            }
            Line::Sleep(ms) => {
                elapsed += Duration::from_millis(*ms);
                model.advance(base + elapsed);
            }
            Line::Kill(c) => {
                let id = *conns
                    .get(c)
                    .ok_or_else(|| format!("line {lineno}: kill of unknown C{c}"))?;
                model.kill(id);
            }
            Line::Restart => model.restart(),
            Line::Expect { .. } | Line::Closed { .. } => {
                return Err(format!("line {lineno}: observation without an action"));
            }
        }
        let mut expected: BTreeMap<u32, Vec<(Kind, Vec<Tok>)>> = BTreeMap::new();
        let mut closed: Vec<u32> = Vec::new();
        while let Some((_, line)) = t.lines.get(i) {
            match line {
                Line::Expect {
                    client,
                    kind,
                    frame,
                } => {
                    expected
                        .entry(*client)
                        .or_default()
                        .push((*kind, frame.clone()));
                }
                Line::Closed { client } => closed.push(*client),
                _ => break,
            }
            i += 1;
        }
        for (&c, &id) in &conns {
            let received = model.take_output(id);
            let want = expected.remove(&c).unwrap_or_default();
            check_client(&want, &received)
                .map_err(|e| format!("after line {lineno}, C{c}: {e}"))?;
            let should_close = closed.contains(&c);
            let open = model.is_open(id);
            if should_close == open {
                return Err(format!(
                    "after line {lineno}, C{c}: connection should be {} but the model has it {}",
                    if should_close { "closed" } else { "open" },
                    if open { "open" } else { "closed" }
                ));
            }
        }
        if let Some(c) = expected.keys().next() {
            return Err(format!(
                "after line {lineno}: output expected for unknown C{c}"
            ));
        }
        conns.retain(|c, _| !closed.contains(c));
    }
    Ok(())
}

#[test]
fn every_transcript_file_is_replayed() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/transcripts");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .expect("transcripts directory")
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".txt").map(str::to_string))
        .collect();
    on_disk.sort();
    let listed: Vec<String> = TRANSCRIPTS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "add new transcripts to the transcripts! list"
    );
}

#[test]
fn the_checker_rejects_wrong_output() {
    // A guard against a vacuous checker: a wrong byte, a missing frame, an extra frame,
    // a wrong running count in a group must all fail.
    let exp = |k: Kind, s: &str| (k, unescape(s, true));
    let pong = [exp(Kind::Ordered, "+PONG\\r\\n")];
    assert!(check_client(&pong, b"+PONG\r\n").is_ok());
    assert!(check_client(&pong, b"+PONF\r\n").is_err());
    assert!(check_client(&pong, b"").is_err());
    assert!(check_client(&pong, b"+PONG\r\n+PONG\r\n").is_err());
    let id = [exp(Kind::Ordered, ":{ID}\\r\\n")];
    assert!(check_client(&id, b":42\r\n").is_ok());
    assert!(check_client(&id, b":\r\n").is_err());
    let group = [
        exp(
            Kind::Group,
            "*3\\r\\n$1\\r\\nx\\r\\n$1\\r\\na\\r\\n:1\\r\\n",
        ),
        exp(
            Kind::Group,
            "*3\\r\\n$1\\r\\nx\\r\\n$1\\r\\nb\\r\\n:0\\r\\n",
        ),
    ];
    assert!(check_client(
        &group,
        b"*3\r\n$1\r\nx\r\n$1\r\nb\r\n:1\r\n*3\r\n$1\r\nx\r\n$1\r\na\r\n:0\r\n"
    )
    .is_ok());
    assert!(check_client(
        &group,
        b"*3\r\n$1\r\nx\r\n$1\r\nb\r\n:0\r\n*3\r\n$1\r\nx\r\n$1\r\na\r\n:1\r\n"
    )
    .is_err());
    let set = [exp(
        Kind::Elements,
        "*2\\r\\n$1\\r\\na\\r\\n$1\\r\\nb\\r\\n",
    )];
    assert!(check_client(&set, b"*2\r\n$1\r\nb\r\n$1\r\na\r\n").is_ok());
    assert!(check_client(&set, b"*2\r\n$1\r\nb\r\n$1\r\nb\r\n").is_err());
}
