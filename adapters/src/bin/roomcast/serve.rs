//! `roomcast serve`: the WebSocket room server (`roomcast::serve`) with its chat page,
//! metrics and health check, until SIGINT or SIGTERM.

use std::time::Duration;

use roomcast::serve::{ServeOptions, Server};
use roomcast::{Config, Roomcast};

use crate::args::{Args, Usage};
use crate::Fail;

/// The environment variable that may hold the shared token (`--token` overrides it).
pub const TOKEN_ENV: &str = "ROOMCAST_TOKEN";

pub const SERVE_HELP: &str = "\
roomcast serve: a WebSocket room server shared with every other server on the same Redis

Usage: roomcast serve [OPTIONS]

HTTP and WebSocket on one port:
  GET /rooms/{room}  WebSocket: every text frame goes to the room's other members on every
                     instance; frames to clients are JSON (welcome, broadcast, presence,
                     system); joins and leaves are announced
  GET /              a chat page: pick a room, see its members on every instance, chat
  GET /metrics       Prometheus text exposition
  GET /healthz       200 when every Redis link and a probe through Redis answer, else 503
                     with the cause

Refusals: a browser Origin that is neither the server's own nor allowed (403), a missing or
wrong token (401), an invalid room id (400, with the reason). A frame over the limit closes
the socket with 1009; a client whose queue overflows (it reads too slowly) with 1008.

Options:
  --listen ADDR:PORT     where to listen (default 127.0.0.1:8080; 0.0.0.0:8080 for all
                         interfaces)
  --standalone           no Redis: rooms are shared by this process's clients only
  --allowed-origin O     a browser origin allowed besides the server's own, such as
                         https://chat.example.com (repeatable; * allows any)
  --token TOKEN          clients must present it as ?token=TOKEN or Authorization: Bearer
                         TOKEN [env ROOMCAST_TOKEN]; the page passes on its own ?token=
  --max-frame-bytes N    largest text frame from a client (default 65536)
  --member-queue N       messages queued per client before it is closed as too slow
                         (default 1024)
  (and --url, --prefix, --pool: see roomcast --help)
Stops on Ctrl-C or SIGTERM: every socket gets a close frame and its leave is announced.
";

/// What `serve` was asked for.
pub struct Options {
    listen: String,
    standalone: bool,
    member_queue: usize,
    server: ServeOptions,
}

/// Checks the arguments of `serve`.
pub fn options(args: &Args) -> Result<Options, Usage> {
    args.exactly(&[])?;
    let listen = args.value("listen").unwrap_or("127.0.0.1:8080").to_string();
    if listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(Usage(format!(
            "--listen must be ADDR:PORT such as 127.0.0.1:8080 or [::1]:8080, not '{listen}'"
        )));
    }
    let token = args
        .value("token")
        .map(String::from)
        .or_else(|| std::env::var(TOKEN_ENV).ok())
        .filter(|t| !t.is_empty());
    let defaults = ServeOptions::default();
    Ok(Options {
        listen,
        standalone: args.switch("standalone"),
        member_queue: args.number("member-queue", 1024usize, 1, 1 << 20)?,
        server: ServeOptions {
            allowed_origins: args
                .values("allowed-origin")
                .into_iter()
                .map(|o| o.trim_end_matches('/').to_string())
                .collect(),
            token,
            max_frame_bytes: args.number(
                "max-frame-bytes",
                defaults.max_frame_bytes,
                16,
                64 << 20,
            )?,
            ..defaults
        },
    })
}

/// Runs `serve` until SIGINT or SIGTERM.
pub async fn run(config: Config, o: Options) -> Result<(), Fail> {
    let mut instance = roomcast::serve::instance_options();
    instance.member_queue = o.member_queue;
    let (rc, backend): (Roomcast, String) = if o.standalone {
        let (rc, driver) = roomcast::Builder::standalone(config)
            .options(instance)
            .build(std::sync::Arc::new(roomcast::runtime::tokio::TokioRuntime))?;
        tokio::spawn(driver);
        (rc, "standalone (no Redis)".into())
    } else {
        let target = crate::target(&config);
        let rc = crate::connect_with(config, instance)
            .await
            .map_err(Fail::Error)?;
        (rc, format!("Redis at {target}"))
    };
    let server = Server::bind(&o.listen, rc.clone(), o.server)
        .await
        .map_err(|e| Fail::Error(format!("cannot listen on {}: {e}", o.listen)))?;
    println!(
        "roomcast serve: instance {} on http://{} (rooms at ws://{}/rooms/{{room}}), {backend}",
        rc.instance(),
        server.addr(),
        server.addr()
    );
    crate::stop_signal().await;
    eprintln!("roomcast serve: stopping: closing sockets");
    server.shutdown(Duration::from_secs(5)).await;
    let _ = rc.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
