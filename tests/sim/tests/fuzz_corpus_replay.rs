//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/*`) through its target body
//! (`roomcast_sim::fuzz`), so `cargo test --workspace` checks each seed and every input a
//! fuzzing run ever crashed on, without libFuzzer.
//!
//! `capture_seeds` (ignored: it needs `redis-server`) rewrites the captured seeds:
//! `cargo test -p roomcast-sim --test fuzz_corpus_replay -- --ignored capture_seeds`.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::panic;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roomcast_core::envelope::{self, InstanceId, MessageType, Trailer};
use roomcast_sim::fuzz::{self, Flags};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

fn replay(target: &str) {
    let (_, body) = fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let dir = corpus().join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let data = fs::read(file).expect("a readable corpus file");
        if panic::catch_unwind(|| body(&data)).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs fail: {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn link_input_corpus() {
    replay("link_input");
}

#[test]
fn envelope_corpus() {
    replay("envelope");
}

#[test]
fn room_channel_corpus() {
    replay("room_channel");
}

#[test]
fn operations_corpus() {
    replay("operations");
}

#[test]
fn cluster_operations_corpus() {
    replay("cluster_operations");
}

#[test]
fn every_target_has_a_corpus_and_takes_any_bytes() {
    for (name, body) in fuzz::TARGETS {
        assert!(
            corpus().join(name).is_dir(),
            "fuzz/corpus/{name} is missing"
        );
        for data in [
            &b""[..],
            b"\0",
            b"\xff",
            &[0xffu8; 64],
            b"*1\r\n*1\r\n*1\r\n",
        ] {
            body(data);
        }
    }
}

/// Triage: `ROOMCAST_FUZZ_TARGET=operations ROOMCAST_FUZZ_INPUT=fuzz/artifacts/... cargo test
/// -p roomcast-sim --test fuzz_corpus_replay -- --ignored one_input --nocapture`, with
/// `ROOMCAST_FUZZ_DEBUG=1` to print the decoded operations.
#[test]
#[ignore = "runs the input named by ROOMCAST_FUZZ_INPUT"]
fn one_input() {
    let target = std::env::var("ROOMCAST_FUZZ_TARGET").expect("ROOMCAST_FUZZ_TARGET");
    let input = std::env::var("ROOMCAST_FUZZ_INPUT").expect("ROOMCAST_FUZZ_INPUT");
    let (_, body) = fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    body(&fs::read(input).expect("a readable input"));
}

// ----- seed capture (needs redis-server) -----

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut args = vec![
            "--port".to_string(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, port }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(250)))
            .expect("timeout");
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `bytes` and returns what comes back until the server is quiet for 250 ms.
fn exchange(s: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    s.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return out,
        }
    }
}

fn command(args: &[&[u8]]) -> Vec<u8> {
    roomcast_sim::model::command_bytes(args)
}

fn write_seed(target: &str, name: &str, data: &[u8]) {
    let dir = corpus().join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(name), data).expect("write seed");
}

fn envelope_bytes(
    room: &str,
    data: &[u8],
    exclude: Option<&str>,
    trailer: Option<Trailer>,
) -> Vec<u8> {
    let mut out = Vec::new();
    envelope::encode(
        &mut out,
        room,
        MessageType::Broadcast,
        data,
        exclude,
        1_700_000_000,
        trailer.as_ref(),
    );
    out
}

/// Payloads a subscriber meets on its channels: ours with trailers (in order, a duplicate,
/// a gap), a GraphWiz-style one without, a spoofed room, garbage, and a probe.
fn traffic() -> Vec<(Vec<u8>, Vec<u8>)> {
    let t = |seq| {
        Some(Trailer {
            origin: InstanceId(0x77),
            epoch: 3,
            seq,
        })
    };
    let abc = b"graphwiz:room:hub:abc".to_vec();
    let lobby = b"graphwiz:room:lobby".to_vec();
    let ab = b"graphwiz:room:a%3Ab".to_vec();
    let mut probe = b"\0probe".to_vec();
    probe.extend_from_slice(&1u64.to_le_bytes());
    vec![
        (abc.clone(), envelope_bytes("hub/abc", b"one", None, t(1))),
        (
            abc.clone(),
            envelope_bytes("hub/abc", b"two", Some("c1"), t(2)),
        ),
        (
            abc.clone(),
            envelope_bytes("hub/abc", b"two", Some("c1"), t(2)),
        ),
        (abc.clone(), envelope_bytes("hub/abc", b"five", None, t(5))),
        (
            lobby.clone(),
            envelope_bytes("lobby", b"graphwiz", Some("c2"), None),
        ),
        (
            lobby.clone(),
            envelope_bytes("hub/abc", b"spoofed", None, None),
        ),
        (ab, envelope_bytes("a:b", &[0xff; 40], None, t(1))),
        (lobby, b"\x07\0\0\0\0\0\0\0garbage".to_vec()),
        (b"graphwiz:ctl:0000000000001234".to_vec(), probe),
    ]
}

fn capture_link_input(server: &Server, flags: u8, name: &str) {
    let (handshake, after) = fuzz::link_input_requests(flags);
    let mut link = server.connect();
    let hs_reply = exchange(&mut link, &handshake);
    let mut after_reply = exchange(&mut link, &after);
    if flags & Flags::PUBLISHER == 0 {
        let mut publisher = server.connect();
        for (channel, payload) in traffic() {
            exchange(&mut publisher, &command(&[b"PUBLISH", &channel, &payload]));
        }
        // Subscribed-mode PING, a server-side unsubscribe as the hub sees it, and a
        // confirmation for a channel it never asked for.
        for cmd in [
            command(&[b"PING"]),
            command(&[b"UNSUBSCRIBE", b"graphwiz:room:lobby"]),
            command(&[b"SUBSCRIBE", b"graphwiz:room:nobody"]),
        ] {
            link.write_all(&cmd).expect("write");
        }
        after_reply.extend(exchange(&mut link, b""));
    }
    let mut during = vec![flags | Flags::DURING_HANDSHAKE];
    during.extend_from_slice(&hs_reply);
    during.extend_from_slice(&after_reply);
    write_seed(
        "link_input",
        &format!("capture-{name}-during-handshake"),
        &during,
    );
    let mut post = vec![flags];
    post.extend_from_slice(&after_reply);
    write_seed(
        "link_input",
        &format!("capture-{name}-after-handshake"),
        &post,
    );
    // The same bytes one at a time.
    post[0] |= 1 << Flags::CHUNK_SHIFT;
    write_seed(
        "link_input",
        &format!("capture-{name}-after-handshake-bytewise"),
        &post,
    );
}

/// Reverses the escaping of `tests/sim/tests/transcripts/*.txt` (see its README).
fn unescape(s: &str) -> Vec<u8> {
    let s = s.replace("{ID}", "7");
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            match b[i + 1] {
                b'r' => out.push(b'\r'),
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'\\' => out.push(b'\\'),
                b'x' => {
                    let hex = std::str::from_utf8(&b[i + 2..i + 4]).expect("ascii");
                    out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
                    i += 2;
                }
                other => panic!("unknown escape \\{}", other as char),
            }
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Every connection's received bytes in the real-server transcripts, as link input.
fn convert_transcripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("transcripts")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    for file in files {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        let text = fs::read_to_string(&file).expect("transcript");
        let mut received: std::collections::BTreeMap<String, (bool, Vec<u8>)> = Default::default();
        for line in text.lines() {
            let Some((conn, rest)) = line.split_once(['<', '>']) else {
                continue;
            };
            if !conn.starts_with('C') || conn.contains(' ') {
                continue;
            }
            let entry = received.entry(conn.to_string()).or_default();
            let sent = line.as_bytes()[conn.len()] == b'>';
            let rest = rest.trim_start_matches([
                '~', '%', '*', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
            ]);
            let bytes = unescape(rest.strip_prefix(' ').unwrap_or(rest));
            if sent {
                if bytes.windows(14).any(|w| w == b"HELLO\r\n$1\r\n3\r\n") {
                    entry.0 = true;
                }
            } else {
                entry.1.extend_from_slice(&bytes);
            }
        }
        for (conn, (resp3, bytes)) in received {
            if bytes.is_empty() {
                continue;
            }
            let mut flags = Flags::DURING_HANDSHAKE;
            if resp3 {
                flags |= Flags::RESP3;
            }
            if !stem.starts_with("subscribe") && !stem.starts_with("patterns") {
                flags |= Flags::PUBLISHER;
            }
            let mut seed = vec![flags];
            seed.extend_from_slice(&bytes);
            write_seed(
                "link_input",
                &format!("transcript-{stem}-{}", conn.to_lowercase()),
                &seed,
            );
        }
    }
}

fn hand_written_seeds() {
    let t = Trailer {
        origin: InstanceId(0x0102_0304_0506_0708),
        epoch: 9,
        seq: 42,
    };
    let mut newer = envelope_bytes("hub/abc", b"x", None, Some(t));
    newer[envelope::encoded_len("hub/abc", 1, None, false) + 4] = 2;
    newer.extend_from_slice(b"future fields");
    let mut huge_room = u64::MAX.to_le_bytes().to_vec();
    huge_room.extend_from_slice(b"abc");
    let mut huge_data = envelope_bytes("r", b"", None, None);
    huge_data[13..21].copy_from_slice(&(1u64 << 60).to_le_bytes());
    for (name, data) in [
        (
            "ours",
            envelope_bytes("hub/abc", b"hello", Some("conn-1"), Some(t)),
        ),
        ("graphwiz", envelope_bytes("lobby", b"hello", None, None)),
        ("newer-trailer", newer),
        ("huge-room-length", huge_room),
        ("huge-data-length", huge_data),
        ("empty", Vec::new()),
    ] {
        write_seed("envelope", name, &data);
    }
    for (name, data) in [
        (
            "escapes",
            &b"\0hub/abc\xffa:b%\xffgraphwiz:room:hub:abc"[..],
        ),
        (
            "non-canonical",
            b"\x10100%\xff100%25\xffgraphwiz:room:a%3ab",
        ),
        ("unicode", "\u{3}ü/€\u{ff}".as_bytes()),
        ("control", b"\x20a\nb\xffa\xffgraphwiz:room:a\nb"),
        ("limit", b"\x03abc\xffabcd\xffgraphwiz:room:abcd"),
    ] {
        write_seed("room_channel", name, data);
    }
}

#[test]
#[ignore = "needs redis-server; rewrites fuzz/corpus seeds"]
fn capture_seeds() {
    let server = Server::start(&[]);
    for resp3 in [false, true] {
        let proto = if resp3 { "resp3" } else { "resp2" };
        let base = if resp3 { Flags::RESP3 } else { 0 };
        capture_link_input(&server, base, &format!("{proto}-subscriber"));
        capture_link_input(
            &server,
            base | Flags::TIGHT,
            &format!("{proto}-subscriber-tight"),
        );
        capture_link_input(
            &server,
            base | Flags::PUBLISHER,
            &format!("{proto}-publisher"),
        );
        capture_link_input(
            &server,
            base | Flags::PUBLISHER | Flags::PRESENCE,
            &format!("{proto}-publisher-presence"),
        );
    }
    // A server with a password refuses the handshake.
    let locked = Server::start(&["--requirepass", "secret"]);
    for (flags, name) in [(0, "resp2-noauth"), (Flags::RESP3, "resp3-noauth")] {
        let (handshake, _) = fuzz::link_input_requests(flags);
        let mut link = locked.connect();
        let mut seed = vec![flags | Flags::DURING_HANDSHAKE];
        seed.extend(exchange(&mut link, &handshake));
        write_seed("link_input", &format!("capture-{name}"), &seed);
    }
    convert_transcripts();
    hand_written_seeds();
}
