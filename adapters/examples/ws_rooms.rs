//! A WebSocket chat server whose rooms are shared by every copy through Redis: the server of
//! `roomcast serve` ([`roomcast::serve`]) in a dozen lines.
//!
//! Clients connect to `ws://HOST:PORT/rooms/{room}`. Every text frame goes to the room's
//! other members on every copy (the sender is excluded), joins and leaves are published as
//! presence events, and frames to clients are JSON (`welcome`, `broadcast`, `presence`,
//! `system`); `http://HOST:PORT/` is a chat page. Run two copies against one Redis and chat
//! across them:
//!
//! ```sh
//! export REDIS_URL=redis://127.0.0.1:6379
//! cargo run -p roomcast --features cli --example ws_rooms -- --port 9001
//! cargo run -p roomcast --features cli --example ws_rooms -- --port 9002
//! websocat ws://127.0.0.1:9001/rooms/lobby    # and another on 9002
//! ```

use std::process::ExitCode;
use std::time::Duration;

use roomcast::serve::{instance_options, ServeOptions, Server};

const USAGE: &str = "usage: ws_rooms [--port PORT] [--host HOST]   (REDIS_URL, REDIS_CHANNEL_PREFIX, REDIS_POOL_SIZE from the environment)";

#[tokio::main]
async fn main() -> ExitCode {
    let mut port = 9001u16;
    let mut host = "127.0.0.1".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = match a.as_str() {
            "--port" | "--host" => args.next(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => None,
        };
        match (a.as_str(), value) {
            ("--port", Some(v)) if v.parse::<u16>().is_ok() => port = v.parse().unwrap_or(port),
            ("--host", Some(v)) => host = v,
            _ => {
                eprintln!("ws_rooms: bad argument '{a}'\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let rc = match roomcast::config_from_env() {
        Ok(config) => {
            roomcast::Builder::new(config)
                .options(instance_options())
                .connect_tokio()
                .await
        }
        Err(e) => Err(e),
    };
    let rc = match rc {
        Ok(rc) => rc,
        Err(e) => {
            eprintln!("ws_rooms: {e}");
            return ExitCode::from(1);
        }
    };
    let addr = format!("{host}:{port}");
    let server = match Server::bind(&addr, rc.clone(), ServeOptions::default()).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ws_rooms: cannot listen on {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "ws_rooms: instance {} serving ws://{}/rooms/{{room}} (Ctrl-C stops)",
        rc.instance(),
        server.addr()
    );
    let _ = tokio::signal::ctrl_c().await;
    server.shutdown(Duration::from_secs(2)).await;
    let _ = rc.shutdown(Duration::from_secs(2)).await;
    ExitCode::SUCCESS
}
