//! `roomcast`: tail and publish to rooms, list a room's members, check health, serve
//! WebSocket rooms, and run the demo. One file per command.
//!
//! Exit codes: 0 ok, 2 usage error, 1 anything else (with a one-line cause on stderr).

mod args;
mod demo;
mod health;
mod publish;
mod redis;
mod serve;
mod tail;
mod who;

use std::process::ExitCode;
use std::time::Duration;

use args::{Args, Usage};
use roomcast::{Config, Roomcast};

const USAGE: &str = "\
roomcast: rooms shared by many instances through Redis pub/sub

Usage: roomcast [OPTIONS] <COMMAND> [ARGS]

Commands:
  tail ROOM...       print every message of the rooms as JSON lines
  publish ROOM DATA  publish one message and print Redis's receiver count
  who ROOM           list the room's members on every instance
  health             check every Redis link and a probe through Redis
  serve              a WebSocket room server with a chat page, metrics and a health check
  demo               WebSocket room servers sharing rooms through Redis, with simulated
                     clients, a live view and a summary
  help [COMMAND]     this text, or a command's

Options (every command; they override the environment):
  --url URL          Redis URL [env REDIS_URL, default redis://127.0.0.1:6379]
                     redis://[user[:password]@]host[:port][/db][?protocol=resp2|resp3],
                     rediss:// for TLS
  --prefix PREFIX    channel prefix [env REDIS_CHANNEL_PREFIX, default graphwiz]
  --pool N           publish links, 1 to 256 [env REDIS_POOL_SIZE, default 10]
  -h, --help         help (also after a command)
  -V, --version      version

Exit status: 0 ok, 2 usage error, 1 any other error (cause on stderr).
";

/// Why a command failed.
pub(crate) enum Fail {
    /// Exit 2, with the command's name for the hint.
    Usage(String, String),
    /// Exit 1.
    Error(String),
}

impl From<roomcast::Error> for Fail {
    fn from(e: roomcast::Error) -> Self {
        Fail::Error(e.to_string())
    }
}

fn value_flags(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "tail" => &["count", "duration"],
        "publish" => &["type", "exclude"],
        "health" => &["timeout"],
        "serve" => &[
            "listen",
            "allowed-origin",
            "token",
            "max-frame-bytes",
            "member-queue",
        ],
        "demo" => &["duration", "clients", "rooms", "instances", "rate", "churn"],
        _ => &[],
    }
}

fn switches(cmd: &str) -> &'static [&'static str] {
    match cmd {
        "demo" | "serve" => &["standalone"],
        _ => &[],
    }
}

fn help_of(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        "tail" => tail::TAIL_HELP,
        "publish" => publish::PUBLISH_HELP,
        "who" => who::WHO_HELP,
        "health" => health::HEALTH_HELP,
        "serve" => serve::SERVE_HELP,
        "demo" => demo::DEMO_HELP,
        _ => return None,
    })
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match Args::parse(&raw, value_flags, switches) {
        Ok(args) => run(args),
        Err(u) => Err(Fail::Usage(u.0, command_of(&raw))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Usage(why, cmd)) => {
            let cmd = if cmd.is_empty() {
                cmd
            } else {
                format!(" {cmd}")
            };
            eprintln!("roomcast: {why}\nTry 'roomcast{cmd} --help'.");
            ExitCode::from(2)
        }
        Err(Fail::Error(why)) => {
            eprintln!("roomcast: error: {why}");
            ExitCode::from(1)
        }
    }
}

/// The known command in a raw command line, for the usage hint.
fn command_of(raw: &[String]) -> String {
    raw.iter()
        .find(|a| help_of(a).is_some())
        .cloned()
        .unwrap_or_default()
}

/// A command with its checked arguments.
enum Command {
    Tail(tail::Options),
    Publish(publish::Options),
    Who(String),
    Health(Duration),
    Serve(serve::Options),
    Demo(demo::Options),
}

impl Command {
    fn parse(cmd: &str, args: &Args) -> Result<Command, Usage> {
        Ok(match cmd {
            "tail" => Command::Tail(tail::options(args)?),
            "publish" => Command::Publish(publish::options(args)?),
            "who" => Command::Who(who::options(args)?),
            "health" => Command::Health(health::options(args)?),
            "serve" => Command::Serve(serve::options(args)?),
            "demo" => Command::Demo(demo::options(args)?),
            _ => return Err(Usage(format!("no command '{cmd}'"))),
        })
    }

    async fn run(self, config: Config) -> Result<(), Fail> {
        match self {
            Command::Tail(o) => tail::run(config, o).await,
            Command::Publish(o) => publish::run(config, o).await,
            Command::Who(room) => who::run(config, room).await,
            Command::Health(timeout) => health::run(config, timeout).await,
            Command::Serve(o) => serve::run(config, o).await,
            Command::Demo(o) => demo::run(config, o).await.map_err(Fail::Error),
        }
    }
}

fn run(args: Args) -> Result<(), Fail> {
    let cmd = args.command.clone().unwrap_or_default();
    let usage = |why: String| Fail::Usage(why, cmd.clone());
    if args.version {
        println!("roomcast {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    if cmd.is_empty() || cmd == "help" {
        if let Some(topic) = args.positionals.first() {
            let text = help_of(topic).ok_or_else(|| usage(format!("no command '{topic}'")))?;
            print!("{text}");
            return Ok(());
        }
        if cmd.is_empty() && !args.help {
            eprint!("{USAGE}");
            return Err(Fail::Usage("no command given".into(), String::new()));
        }
        print!("{USAGE}");
        return Ok(());
    }
    let Some(help) = help_of(&cmd) else {
        return Err(Fail::Usage(format!("no command '{cmd}'"), String::new()));
    };
    if args.help {
        print!("{help}");
        return Ok(());
    }
    // Every argument is checked before anything connects.
    let pool = args
        .number("pool", 10usize, 1, 256)
        .map_err(|u| usage(u.0))?;
    let command = Command::parse(&cmd, &args).map_err(|u| usage(u.0))?;
    // A bad URL (flag or environment) is an error of the configuration: exit 1.
    let mut config = config(&args, pool)?;
    config.client_name = format!("roomcast-{cmd}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Fail::Error(format!("cannot start the async runtime: {e}")))?;
    let outcome = runtime.block_on(command.run(config));
    // Do not wait for tasks stuck on a dead server.
    runtime.shutdown_timeout(Duration::from_millis(200));
    outcome
}

/// The configuration from the environment, with the flags taking precedence.
fn config(args: &Args, pool: usize) -> Result<Config, Fail> {
    let flag = |name: &str| args.value(name).map(String::from);
    let (url, prefix) = (flag("url"), flag("prefix"));
    let pool_given = args.value("pool").is_some();
    let lookup = |key: &str| -> Option<String> {
        let from_flag = match key {
            "REDIS_URL" => url.clone(),
            "REDIS_CHANNEL_PREFIX" => prefix.clone(),
            "REDIS_POOL_SIZE" if pool_given => Some(pool.to_string()),
            _ => None,
        };
        from_flag.or_else(|| std::env::var(key).ok())
    };
    let (config, warnings) =
        Config::from_env_with(lookup).map_err(|e| Fail::Error(e.to_string()))?;
    for w in warnings {
        eprintln!("roomcast: warning: {w}");
    }
    Ok(config)
}

/// `host:port` of the configured server, for messages.
pub(crate) fn target(config: &Config) -> String {
    format!("{}:{}", config.server.host, config.server.port)
}

/// Connects with default options, bounded in time, with the server named in the error.
pub(crate) async fn connect(config: Config) -> Result<Roomcast, String> {
    connect_with(config, roomcast::Options::default()).await
}

/// Connects with `options`, bounded in time, with the server named in the error.
pub(crate) async fn connect_with(
    config: Config,
    options: roomcast::Options,
) -> Result<Roomcast, String> {
    let target = target(&config);
    let limit = config.connect_timeout * 2 + Duration::from_secs(1);
    let builder = roomcast::Builder::new(config).options(options);
    match tokio::time::timeout(limit, builder.connect_tokio()).await {
        Ok(Ok(rc)) => Ok(rc),
        Ok(Err(roomcast::Error::Connect(e))) => {
            Err(format!("cannot connect to Redis at {target}: {e}"))
        }
        Ok(Err(e)) => Err(format!("{e} (Redis at {target})")),
        Err(_) => Err(format!(
            "cannot connect to Redis at {target}: no answer within {limit:?}"
        )),
    }
}

/// Ctrl-C, and on Unix also SIGTERM and SIGHUP (a closed terminal), so that the private
/// redis-server is always stopped.
pub(crate) async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut hup = signal(SignalKind::hangup()).ok();
        let other = async {
            match (&mut term, &mut hup) {
                (Some(t), Some(h)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = h.recv() => {}
                    }
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = other => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
