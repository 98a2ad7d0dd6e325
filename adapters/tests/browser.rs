//! `roomcast serve` in a real browser: a private redis-server, two `roomcast serve`
//! processes and two headless Chromium pages (one per process), driven through the DevTools
//! protocol with a small client over tokio-tungstenite. A join shows up in the other page's
//! member list, a message typed on one page shows on the other (with the instance it came
//! through), a closed page leaves the list, screenshots go to `target/browser/`, and both
//! servers stop cleanly on SIGTERM.
//!
//! Needs Chromium (`apt-get install -y chromium`; scripts/test.sh installs it) and feature
//! `cli`: `cargo test --workspace` has it, alone run
//! `cargo test -p roomcast --features cli --test browser`. `ROOMCAST_CHROMIUM` names another
//! binary.
#![cfg(all(feature = "cli", unix))]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use roomcast::redis_server::RedisServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Generous: a loaded 2-core machine stalls for seconds, and Chromium starts slowly.
const PATIENCE: Duration = Duration::from_secs(60);

/// Kills the child however the test ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `target/` (the test binary is in `target/PROFILE/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .map(PathBuf::from)
        .expect("target/PROFILE/deps/TEST")
}

/// Starts `roomcast serve` on a free port against `redis`.
fn serve(redis: &RedisServer) -> (Kill, SocketAddr) {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--listen", &addr.to_string(), "--pool", "2"])
        .env("REDIS_URL", redis.url())
        .env_remove("REDIS_CHANNEL_PREFIX")
        .env_remove("ROOMCAST_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn roomcast serve");
    (Kill(child), addr)
}

/// `GET path`: the status.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await.ok()?;
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Waits until `/healthz` answers 200.
async fn wait_healthy(addr: SocketAddr) {
    let deadline = Instant::now() + PATIENCE;
    while http_status(addr, "/healthz").await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "roomcast serve on {addr} never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Chromium binary: `ROOMCAST_CHROMIUM`, else the first of the usual names on PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("ROOMCAST_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "Chromium not found: install it (apt-get install -y chromium; scripts/test.sh does) \
         or set ROOMCAST_CHROMIUM to a Chromium or Chrome binary"
    );
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Starts headless Chromium with a DevTools port: the process and the browser's DevTools URL.
fn launch_browser(profile: &std::path::Path) -> (Kill, String) {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--window-size=1100,640",
        "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    if is_root() {
        // Chromium refuses to run as root with its sandbox.
        cmd.arg("--no-sandbox");
    }
    cmd.arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn chromium");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        }
    });
    let browser = Kill(child);
    let url = rx
        .recv_timeout(PATIENCE)
        .expect("Chromium printed no 'DevTools listening on' line");
    (browser, url)
}

/// A DevTools protocol client: one WebSocket to the browser, pages as flattened sessions.
struct Cdp {
    ws: WebSocketStream<TcpStream>,
    next: u64,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let addr = url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .expect("ws://HOST:PORT/...");
        let tcp = TcpStream::connect(addr).await.expect("DevTools port");
        let (ws, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .expect("DevTools handshake");
        Cdp { ws, next: 0 }
    }

    /// Calls `method` (on a page's session when given) and returns its result.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to DevTools");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"));
            let Some(Ok(Message::Text(text))) = frame else {
                match frame {
                    Some(Ok(_)) => continue,
                    other => panic!("DevTools connection ended during {method}: {other:?}"),
                }
            };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] != id {
                continue; // an event, or another call's answer
            }
            if let Some(e) = v.get("error") {
                panic!("{method} failed: {e}");
            }
            return v["result"].clone();
        }
    }

    /// Opens `url` in a new page: its target id and session.
    async fn open(&mut self, url: &str) -> (Value, String) {
        let target = self
            .call(None, "Target.createTarget", json!({"url": url}))
            .await["targetId"]
            .clone();
        let session = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        (target, session)
    }

    /// Evaluates `expr` in the page and returns its value.
    async fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page.
    async fn wait_for(&mut self, session: &str, what: &str, expr: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            // The page may still be loading: `typeof` keeps the first polls from throwing.
            let guarded = format!(
                "(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()"
            );
            if self.eval(session, &guarded).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let log = self
                    .eval(session, "document.body ? document.body.innerText : ''")
                    .await;
                panic!("timed out waiting for {what}; the page shows:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Writes a PNG screenshot of the page to `path`.
    async fn screenshot(&mut self, session: &str, path: &std::path::Path) {
        let r = self
            .call(
                Some(session),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .await;
        let png = base64_decode(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(path, png).expect("write screenshot");
    }
}

/// Standard base64 (padding ignored).
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= val(*c) << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// The page's own connection id, once it has joined.
async fn joined(cdp: &mut Cdp, page: &str, name: &str) -> String {
    cdp.wait_for(page, &format!("{name} to join"), "state.me !== null")
        .await;
    cdp.eval(page, "state.me")
        .await
        .as_str()
        .expect("connection id")
        .to_string()
}

fn member_listed(conn: &str) -> String {
    format!("[...document.querySelectorAll('#members li')].some(li => li.dataset.connection === {conn:?})")
}

fn log_shows(text: &str) -> String {
    format!("document.getElementById('log').innerText.includes({text:?})")
}

/// Sends `text` from the page as a user would: type, then click Send.
async fn say(cdp: &mut Cdp, page: &str, text: &str) {
    let expr = format!(
        "document.getElementById('text').value = {text:?}; document.getElementById('send').click(); true"
    );
    assert_eq!(cdp.eval(page, &expr).await, json!(true));
}

/// SIGTERM, then the exit status within [`PATIENCE`].
fn terminate(mut child: Kill) -> std::process::ExitStatus {
    let pid = child.0.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "roomcast serve ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_on_two_servers_chat_through_redis() {
    let redis = RedisServer::start();
    let (s1, a1) = serve(&redis);
    let (s2, a2) = serve(&redis);
    wait_healthy(a1).await;
    wait_healthy(a2).await;

    let profile = target_dir().join("browser").join("profile");
    let _ = std::fs::remove_dir_all(&profile);
    let (browser, devtools) = launch_browser(&profile);
    let mut cdp = Cdp::connect(&devtools).await;

    let room = "browser/lobby";
    let (_, a) = cdp.open(&format!("http://{a1}/#{room}")).await;
    let ca = joined(&mut cdp, &a, "page A").await;
    let (b_target, b) = cdp.open(&format!("http://{a2}/#{room}")).await;
    let cb = joined(&mut cdp, &b, "page B").await;
    assert_ne!(ca, cb);
    let (ia, ib) = (
        cdp.eval(&a, "state.instance").await,
        cdp.eval(&b, "state.instance").await,
    );
    assert_ne!(ia, ib, "two processes, two instances");

    // B's join shows up in A's member list (a presence event through Redis), and B's list
    // has A from the welcome (presence across instances).
    cdp.wait_for(&a, "B in A's member list", &member_listed(&cb))
        .await;
    cdp.wait_for(&b, "A in B's member list", &member_listed(&ca))
        .await;

    // A message typed on B shows on A, with the instance it came through.
    say(&mut cdp, &b, "hello from page B").await;
    cdp.wait_for(&a, "B's message on A", &log_shows("hello from page B"))
        .await;
    let via_b = format!("via {}", &ib.as_str().expect("instance")[..8]);
    cdp.wait_for(&a, "B's instance on A", &log_shows(&via_b))
        .await;
    say(&mut cdp, &a, "and hello back from A").await;
    cdp.wait_for(&b, "A's reply on B", &log_shows("and hello back from A"))
        .await;

    let dir = target_dir().join("browser");
    cdp.screenshot(&a, &dir.join("page-a.png")).await;
    cdp.screenshot(&b, &dir.join("page-b.png")).await;

    // B's page goes away: A sees it leave.
    cdp.call(None, "Target.closeTarget", json!({"targetId": b_target}))
        .await;
    cdp.wait_for(
        &a,
        "B gone from A's member list",
        &format!("!{}", member_listed(&cb)),
    )
    .await;

    // SIGTERM: the server closes A's socket with 1001 and exits 0.
    let status = terminate(s1);
    assert!(status.success(), "roomcast serve exited with {status}");
    cdp.wait_for(
        &a,
        "A told the server is going away",
        "document.getElementById('status').textContent.includes('1001')",
    )
    .await;
    let status = terminate(s2);
    assert!(status.success(), "roomcast serve exited with {status}");
    let _ = cdp.call(None, "Browser.close", json!({})).await;
    drop(browser);
}
