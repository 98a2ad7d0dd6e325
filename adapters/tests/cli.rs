//! The `roomcast` command as a user runs it: usage and help, exit codes and one-line causes
//! for a bad URL, a refused connection and a wrong password, and tail / publish / who /
//! health / demo against a private redis-server.
//!
//! Here (not in `roomcast-tests`) because only the command's own package gets
//! `CARGO_BIN_EXE_roomcast`. It needs feature `cli`: `cargo test --workspace` has it
//! (`roomcast-tests` turns it on), alone run `cargo test -p roomcast --features cli --test cli`.
#![cfg(feature = "cli")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use roomcast::redis_server::RedisServer;
use serde_json::Value;

/// Generous: a loaded 2-core machine stalls for seconds.
const PATIENCE: Duration = Duration::from_secs(60);

/// The command with a clean environment (no REDIS_* from the caller).
fn roomcast() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_roomcast"));
    c.env_remove("REDIS_URL")
        .env_remove("REDIS_CHANNEL_PREFIX")
        .env_remove("REDIS_POOL_SIZE")
        .stdin(Stdio::null());
    c
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs to completion (killed after [`PATIENCE`]), feeding `stdin`.
fn run_cmd(mut cmd: Command, stdin: Option<&[u8]>) -> Run {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn roomcast");
    if let Some(data) = stdin {
        let mut w = child.stdin.take().expect("stdin");
        w.write_all(data).expect("write stdin");
    }
    let out = reader(child.stdout.take().expect("stdout"));
    let err = reader(child.stderr.take().expect("stderr"));
    let code = wait(&mut child, PATIENCE);
    Run {
        code,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn run(args: &[&str]) -> Run {
    let mut c = roomcast();
    c.args(args);
    run_cmd(c, None)
}

fn reader(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = Vec::new();
        let _ = r.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Waits for the exit code; kills the child and panics after `limit`.
fn wait(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("roomcast did not exit within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// One line on stderr, the cause, and no panic.
fn assert_one_line_cause(r: &Run, contains: &str) {
    assert_eq!(r.code, 1, "exit code; stderr: {}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(r.stderr.trim_end().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.starts_with("roomcast: error: "), "{}", r.stderr);
    assert!(
        r.stderr.contains(contains),
        "{:?} not in {}",
        contains,
        r.stderr
    );
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    for args in [
        &[][..],
        &["frob"],
        &["publish", "lobby"],
        &["publish", "lobby", "hi", "--type", "shout"],
        &["publish", "lobby", "hi", "--nope"],
        &["tail"],
        &["who"],
        &["health", "extra"],
        &["--pool", "0", "health"],
        &["--pool", "many", "health"],
        &["demo", "--clients", "0"],
        &["tail", "lobby", "--count"],
        &["help", "frob"],
    ] {
        let r = run(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("Try 'roomcast"), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
    }
    for (args, text) in [
        (&["--help"][..], "Usage: roomcast [OPTIONS] <COMMAND>"),
        (&["help"], "Commands:"),
        (&["tail", "--help"], "Usage: roomcast tail"),
        (&["help", "publish"], "Usage: roomcast publish"),
        (&["who", "-h"], "Usage: roomcast who"),
        (&["health", "--help"], "Usage: roomcast health"),
        (&["demo", "--help"], "Usage: roomcast demo"),
        (&["--version"], "roomcast "),
    ] {
        let r = run(args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        assert!(r.stdout.contains(text), "{args:?}: {}", r.stdout);
    }
}

#[test]
fn bad_url_refused_connection_and_wrong_password_exit_1_with_one_line() {
    assert_one_line_cause(
        &run(&["--url", "http://127.0.0.1:6379", "health"]),
        "invalid Redis URL",
    );
    let mut c = roomcast();
    c.env("REDIS_URL", "redis://:secret@")
        .args(["publish", "a", "b"]);
    let r = run_cmd(c, None);
    assert_one_line_cause(&r, "invalid Redis URL");
    assert!(!r.stderr.contains("secret"), "password shown: {}", r.stderr);

    // A port nobody listens on.
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    for args in [
        &["health"][..],
        &["publish", "lobby", "hi"],
        &["tail", "lobby"],
        &["who", "lobby"],
    ] {
        let mut c = roomcast();
        c.env("REDIS_URL", &url).args(args);
        assert_one_line_cause(&run_cmd(c, None), "cannot connect to Redis");
    }

    let server = RedisServer::with_args(&["--requirepass", "right"]);
    let url = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let r = run(&["--url", &url, "health"]);
    assert_one_line_cause(&r, "credentials");
    assert!(!r.stderr.contains("wrong@"), "password shown: {}", r.stderr);
    let url = format!("redis://:right@127.0.0.1:{}", server.port());
    assert_eq!(run(&["--url", &url, "health"]).code, 0);
}

#[test]
fn tail_prints_what_publish_sends_and_who_sees_it() {
    let server = RedisServer::start();
    let url = server.url();
    // The flag beats the environment.
    let mut tail = roomcast();
    tail.env("REDIS_URL", "redis://127.0.0.1:1")
        .args(["--url", &url, "--prefix", "clitest", "--pool", "2"])
        .args(["tail", "lobby", "other", "--count", "3", "--duration", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut tail = tail.spawn().expect("spawn tail");
    let stdout = reader(tail.stdout.take().expect("stdout"));
    let (tx, rx) = mpsc::channel();
    let stderr = BufReader::new(tail.stderr.take().expect("stderr"));
    thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let live = rx.recv_timeout(PATIENCE).expect("tail reports when live");
    assert!(live.contains("(live)"), "{live}");
    let tail_conn = format!("tail-{}", tail.id());
    assert!(live.contains(&tail_conn), "{live}");

    // The environment is read when no flag is given.
    let cmd = |args: &[&str]| {
        let mut c = roomcast();
        c.env("REDIS_URL", &url)
            .env("REDIS_CHANNEL_PREFIX", "clitest")
            .args(args);
        c
    };
    // The tail's membership reaches the presence registry shortly after its room is live.
    let deadline = Instant::now() + PATIENCE;
    let who = loop {
        let who = run_cmd(cmd(&["who", "lobby"]), None);
        assert_eq!(who.code, 0, "{}", who.stderr);
        if !who.stdout.is_empty() || Instant::now() > deadline {
            break who;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let members: Vec<&str> = who.stdout.lines().collect();
    assert_eq!(members.len(), 1, "{}", who.stdout);
    assert!(
        members[0].ends_with(&format!(" {tail_conn}")),
        "{}",
        who.stdout
    );
    assert_eq!(members[0].split(' ').next().map(str::len), Some(16));
    let who = run_cmd(cmd(&["who", "empty-room"]), None);
    assert_eq!((who.code, who.stdout.as_str()), (0, ""), "{}", who.stderr);

    let publish = |args: &[&str], stdin: Option<&[u8]>| {
        let r = run_cmd(cmd(args), stdin);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        r.stdout
    };
    assert_eq!(publish(&["publish", "nobody-here", "x"], None), "0\n");
    assert_eq!(publish(&["publish", "lobby", "hello"], None), "1\n");
    let bytes: &[u8] = &[0xff, 0x00, b'b', b'i', b'n'];
    let args = [
        "publish",
        "other",
        "-",
        "--type",
        "system",
        "--exclude",
        "bob",
    ];
    assert_eq!(publish(&args, Some(bytes)), "1\n");
    let args = [
        "publish",
        "lobby",
        "{\"event\":\"join\"}",
        "--type=presence",
    ];
    assert_eq!(publish(&args, None), "1\n");

    assert_eq!(wait(&mut tail, PATIENCE), 0, "tail exits after --count");
    let out = stdout.join().expect("stdout");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    let (a, b, c) = (&lines[0], &lines[1], &lines[2]);
    assert_eq!(a["room"], "lobby");
    assert_eq!(a["type"], "broadcast");
    assert_eq!(a["data"], "hello");
    assert_eq!(a["encoding"], "utf8");
    assert_eq!(a["exclude"], Value::Null);
    assert!(a["timestamp"].as_i64().unwrap_or(0) > 1_600_000_000, "{a}");
    assert_eq!(a["origin"].as_str().map(str::len), Some(16), "{a}");
    assert_eq!(a["epoch"].as_str().map(str::len), Some(16), "{a}");
    assert_eq!(a["seq"], 1);
    assert_eq!(b["room"], "other");
    assert_eq!(b["type"], "system");
    assert_eq!(b["data"], "/wBiaW4=");
    assert_eq!(b["encoding"], "base64");
    assert_eq!(b["exclude"], "bob");
    assert_eq!(c["type"], "presence");
    assert_eq!(c["data"], "{\"event\":\"join\"}");

    // The default prefix is another namespace: nothing of the above is seen there.
    let mut c = roomcast();
    c.env("REDIS_URL", &url).args(["who", "lobby"]);
    assert_eq!(run_cmd(c, None).stdout, "");
}

#[test]
fn health_summarises_links_and_server() {
    let server = RedisServer::start();
    let mut c = roomcast();
    c.env("REDIS_URL", server.url())
        .env("REDIS_POOL_SIZE", "3")
        .arg("health");
    let r = run_cmd(c, None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with("ok: Redis at 127.0.0.1:"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("RESP2"), "{}", r.stdout);
    assert!(r.stdout.contains("redis "), "server version: {}", r.stdout);
    assert!(r.stdout.contains("links: 4 of 4 up"), "{}", r.stdout);
    let url = format!("{}?protocol=resp3", server.url());
    let r = run(&["--url", &url, "--pool", "1", "health"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("RESP3"), "{}", r.stdout);
    assert!(r.stdout.contains("links: 2 of 2 up"), "{}", r.stdout);
}

/// The numbers of a summary line such as `  lost 0, out of order 0; ...`.
fn assert_clean_summary(r: &Run) {
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("summary"), "{}", r.stdout);
    assert!(r.stdout.contains("lost 0, out of order 0"), "{}", r.stdout);
    let sent = r
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("messages sent by clients"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .expect("messages sent line");
    assert!(sent > 0, "{}", r.stdout);
}

#[test]
fn demo_runs_through_redis_private_redis_and_standalone() {
    let server = RedisServer::start();
    let url = server.url();
    let small = [
        "--clients",
        "6",
        "--rooms",
        "2",
        "--rate",
        "20",
        "--churn",
        "0.5",
    ];
    let mut c = roomcast();
    c.args(["--url", &url, "demo", "--duration", "2"])
        .args(small);
    let r = run_cmd(c, None);
    assert_clean_summary(&r);
    assert!(
        r.stdout
            .contains(&format!("Redis at 127.0.0.1:{}", server.port())),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("cross-instance latency     p50"),
        "{}",
        r.stdout
    );

    // No REDIS_URL: a private redis-server from PATH (the harness needs one too).
    let mut c = roomcast();
    c.args(["demo", "--duration", "1", "--instances", "2"])
        .args(small);
    let r = run_cmd(c, None);
    assert_clean_summary(&r);
    assert!(
        r.stdout
            .contains("private redis-server at redis://127.0.0.1:"),
        "{}",
        r.stdout
    );

    let mut c = roomcast();
    c.args(["demo", "--standalone", "--duration", "1"])
        .args(small);
    let r = run_cmd(c, None);
    assert_clean_summary(&r);
    assert!(r.stdout.contains("standalone"), "{}", r.stdout);
}
