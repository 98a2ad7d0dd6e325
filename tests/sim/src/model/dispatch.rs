//! Command lookup, the checks Redis makes before running a command, and the
//! connection-level and script commands.
//!
//! Order of checks, as redis-server 7.0's `processCommand`: unknown command or
//! subcommand, arity, authentication (`NOAUTH`), then the RESP2 subscribed-mode
//! restriction.

use super::cluster::Bus;
use super::command_table::{CONTAINERS, REDIS_7_0_COMMANDS};
use super::keyspace::{cstr, flush_mode_ok, opt_is};
use super::reply::{Protocol, Reply};
use super::request::parse_i64;
use super::sha1::sha1_hex;
use super::{ClientId, ModelRedis, DATABASES};

/// Commands allowed before authentication (`no_auth` flag in Redis 7.0.15).
const NO_AUTH: &[&str] = &["auth", "hello", "quit", "reset"];

/// Commands a RESP2 connection in subscribed mode may run.
const SUBSCRIBED_MODE: &[&str] = &[
    "ping",
    "quit",
    "reset",
    "ssubscribe",
    "subscribe",
    "sunsubscribe",
    "unsubscribe",
];

fn arity_of(fullname: &str) -> Option<i32> {
    REDIS_7_0_COMMANDS
        .binary_search_by(|(n, _)| (*n).cmp(fullname))
        .ok()
        .map(|i| REDIS_7_0_COMMANDS[i].1)
}

fn lower(arg: &[u8]) -> Option<String> {
    std::str::from_utf8(arg).ok().map(str::to_ascii_lowercase)
}

/// At most `n` bytes of `s`.
fn upto(s: &[u8], n: usize) -> &[u8] {
    &s[..s.len().min(n)]
}

/// Redis 7.0's text for an unknown command.
fn unknown_command(argv: &[Vec<u8>]) -> Reply {
    let mut args = Vec::new();
    for a in &argv[1..] {
        if args.len() >= 128 {
            break;
        }
        let room = 128 - args.len();
        args.push(b'\'');
        args.extend_from_slice(upto(cstr(a), room));
        args.extend_from_slice(b"' ");
    }
    let mut msg = b"unknown command '".to_vec();
    msg.extend_from_slice(upto(cstr(&argv[0]), 128));
    msg.extend_from_slice(b"', with args beginning with: ");
    msg.extend_from_slice(&args);
    Reply::error(msg)
}

/// Redis 5's text for an unknown command (`hello_supported: false`).
fn unknown_command_redis5(argv: &[Vec<u8>]) -> Reply {
    let mut args = Vec::new();
    for a in &argv[1..] {
        if args.len() >= 128 {
            break;
        }
        let room = 128 - args.len();
        args.push(b'`');
        args.extend_from_slice(upto(cstr(a), room));
        args.extend_from_slice(b"`, ");
    }
    let mut msg = b"unknown command `".to_vec();
    msg.extend_from_slice(cstr(&argv[0]));
    msg.extend_from_slice(b"`, with args beginning with: ");
    msg.extend_from_slice(&args);
    Reply::error(msg)
}

/// `unknown subcommand 'x'. Try CONTAINER HELP.`; `with_arity` gives the text of
/// commands that check their own argument count.
pub(super) fn unknown_subcommand(argv: &[Vec<u8>], with_arity: bool) -> Reply {
    let mut msg = if with_arity {
        b"unknown subcommand or wrong number of arguments for '".to_vec()
    } else {
        b"unknown subcommand '".to_vec()
    };
    msg.extend_from_slice(upto(cstr(&argv[1]), 128));
    msg.extend_from_slice(b"'. Try ");
    msg.extend_from_slice(&cstr(&argv[0]).to_ascii_uppercase());
    msg.extend_from_slice(b" HELP.");
    Reply::error(msg)
}

fn wrong_arity(fullname: &str) -> Reply {
    Reply::error(format!(
        "wrong number of arguments for '{fullname}' command"
    ))
}

fn not_an_integer() -> Reply {
    Reply::error("value is not an integer or out of range")
}

/// Redis's `validateClientName`: printable ASCII without spaces.
fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

impl ModelRedis {
    /// Runs one request from `c`.
    pub(super) fn execute(&mut self, c: ClientId, argv: Vec<Vec<u8>>) {
        let in_multi = self.clients.get(&c).is_some_and(|cl| cl.multi.is_some());
        let Some(fullname) = self.resolve(c, &argv) else {
            if in_multi {
                if let Some((_, refused)) =
                    self.clients.get_mut(&c).and_then(|cl| cl.multi.as_mut())
                {
                    *refused = true;
                }
            }
            return;
        };
        // MULTI / EXEC / DISCARD, as far as roomcast uses them.
        match (fullname.as_str(), in_multi) {
            ("multi", true) => {
                self.emit(c, &Reply::error("MULTI calls can not be nested"));
                return;
            }
            ("multi", false) => {
                if let Some(cl) = self.clients.get_mut(&c) {
                    cl.multi = Some((Vec::new(), false));
                }
                self.emit(c, &Reply::ok());
                return;
            }
            ("exec" | "discard", false) => {
                let r = format!("{} without MULTI", fullname.to_ascii_uppercase());
                self.emit(c, &Reply::error(r));
                return;
            }
            ("discard", true) => {
                if let Some(cl) = self.clients.get_mut(&c) {
                    cl.multi = None;
                }
                self.emit(c, &Reply::ok());
                return;
            }
            ("exec", true) => {
                let Some((queued, refused)) =
                    self.clients.get_mut(&c).and_then(|cl| cl.multi.take())
                else {
                    return;
                };
                if refused {
                    self.emit(
                        c,
                        &Reply::error(
                            "-EXECABORT Transaction discarded because of previous errors.",
                        ),
                    );
                    return;
                }
                let replies = queued
                    .into_iter()
                    .map(|(name, argv)| self.run(c, &name, &argv).unwrap_or(Reply::Nil))
                    .collect();
                self.emit(c, &Reply::Array(replies));
                return;
            }
            (_, true) => {
                if let Some((q, _)) = self.clients.get_mut(&c).and_then(|cl| cl.multi.as_mut()) {
                    q.push((fullname, argv));
                }
                self.emit(c, &Reply::status("QUEUED"));
                return;
            }
            _ => {}
        }
        let reply = self.run(c, &fullname, &argv);
        if let Some(r) = reply {
            self.emit(c, &r);
        }
    }

    /// Looks the command up and makes Redis's pre-execution checks; replies and
    /// returns `None` when one fails.
    fn resolve(&mut self, c: ClientId, argv: &[Vec<u8>]) -> Option<String> {
        // Subcommands are reached through their container only ("client|id" typed as
        // one word is unknown to Redis too).
        let top = lower(&argv[0]).filter(|n| !n.contains('|') && arity_of(n).is_some());
        let top = match top {
            Some(n) if n == "hello" && !self.cfg.hello_supported => None,
            other => other,
        };
        let Some(top) = top else {
            let r = if self.cfg.hello_supported {
                unknown_command(argv)
            } else {
                unknown_command_redis5(argv)
            };
            self.emit(c, &r);
            return None;
        };
        let fullname = if argv.len() >= 2 && CONTAINERS.binary_search(&top.as_str()).is_ok() {
            let sub = lower(&argv[1]).map(|s| format!("{top}|{s}"));
            match sub.filter(|f| arity_of(f).is_some()) {
                Some(f) => f,
                None => {
                    self.emit(c, &unknown_subcommand(argv, false));
                    return None;
                }
            }
        } else {
            top
        };
        let arity = arity_of(&fullname).unwrap_or(-1);
        let argc = argv.len() as i32;
        if (arity > 0 && argc != arity) || argc < -arity {
            self.emit(c, &wrong_arity(&fullname));
            return None;
        }
        if self.auth_required(c) && !NO_AUTH.contains(&fullname.as_str()) {
            self.emit(c, &Reply::error("-NOAUTH Authentication required."));
            return None;
        }
        // Cluster redirection comes before the subscribed-mode check (processCommand).
        if let Some(err) = self.route_command(c, &fullname, argv) {
            if matches!(&err, Reply::Error(e) if e.starts_with(b"MOVED ")) {
                self.moved_sent += 1;
            }
            if fullname == "exec" {
                // EXEC refused by routing discards the transaction.
                if let Some(cl) = self.clients.get_mut(&c) {
                    cl.multi = None;
                }
            }
            self.emit(c, &err);
            return None;
        }
        let cl = self.clients.get(&c)?;
        if cl.proto == Protocol::Resp2
            && cl.total_subscriptions() > 0
            && !SUBSCRIBED_MODE.contains(&fullname.as_str())
        {
            self.emit(
                c,
                &Reply::error(format!(
                    "Can't execute '{fullname}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                )),
            );
            return None;
        }
        Some(fullname)
    }

    /// The cluster routing error for `fullname` from `c` (for `EXEC`: of every queued
    /// command together), or `None` when this node serves it.
    fn route_command(&self, c: ClientId, fullname: &str, argv: &[Vec<u8>]) -> Option<Reply> {
        if !self.in_cluster() {
            return None;
        }
        match (
            fullname,
            self.clients.get(&c).and_then(|cl| cl.multi.as_ref()),
        ) {
            ("exec", Some((queued, _))) => self.route_exec(queued),
            _ => self.route(fullname, argv),
        }
    }

    /// Executes a checked command. `None` when the command wrote its replies itself.
    fn run(&mut self, c: ClientId, fullname: &str, argv: &[Vec<u8>]) -> Option<Reply> {
        let r = match fullname {
            "ping" => self.cmd_ping(c, argv),
            "echo" => Reply::Bulk(argv[1].clone()),
            "quit" => {
                self.emit(c, &Reply::ok());
                self.close(c, true);
                return None;
            }
            "reset" => self.cmd_reset(c),
            "select" => self.cmd_select(c, &argv[1]),
            "hello" => self.cmd_hello(c, argv),
            "auth" => self.cmd_auth(c, argv),
            "client|setname" => match self.set_name(c, &argv[2]) {
                Ok(()) => Reply::ok(),
                Err(e) => e,
            },
            "client|getname" => {
                let cl = self.clients.get(&c)?;
                cl.name.clone().map_or(Reply::Nil, Reply::Bulk)
            }
            "client|id" => Reply::Integer(self.clients.get(&c)?.server_id),
            "subscribe" | "ssubscribe" => {
                self.cmd_subscribe(c, fullname, &argv[1..]);
                return None;
            }
            "unsubscribe" | "sunsubscribe" => {
                self.cmd_unsubscribe(c, fullname, &argv[1..]);
                return None;
            }
            "publish" => {
                let n = self.deliver(&argv[1], &argv[2]);
                self.send_to_bus(Bus::Publish(argv[1].clone(), argv[2].clone()));
                Reply::Integer(n as i64)
            }
            "spublish" => {
                let n = self.deliver_shard(&argv[1], &argv[2]);
                self.send_to_bus(Bus::ShardPublish(argv[1].clone(), argv[2].clone()));
                Reply::Integer(n as i64)
            }
            name if name.starts_with("cluster|") => self.cmd_cluster(name, argv),
            name if name.starts_with("pubsub|") => self.cmd_pubsub(name, argv),
            "script|load" => {
                let sha = sha1_hex(&argv[2]);
                self.scripts.insert(sha.clone(), argv[2].clone());
                Reply::bulk(sha)
            }
            "script|exists" => Reply::Array(
                argv[2..]
                    .iter()
                    .map(|s| {
                        let sha = String::from_utf8_lossy(s).to_ascii_lowercase();
                        Reply::Integer(i64::from(self.scripts.contains_key(&sha)))
                    })
                    .collect(),
            ),
            "script|flush" => {
                let ok = match argv.len() {
                    2 => true,
                    3 => opt_is(&argv[2], "sync") || opt_is(&argv[2], "async"),
                    _ => false,
                };
                if ok {
                    self.scripts.clear();
                    Reply::ok()
                } else {
                    Reply::error("SCRIPT FLUSH only support SYNC|ASYNC option")
                }
            }
            "eval" | "evalsha" => self.cmd_eval(c, fullname == "evalsha", argv),
            "flushall" => match flush_mode_ok(argv) {
                Ok(()) => {
                    for db in &mut self.dbs {
                        db.clear();
                    }
                    Reply::ok()
                }
                Err(e) => e,
            },
            _ => {
                let db = self.clients.get(&c)?.db;
                match self.dbs[db].execute(fullname, argv) {
                    Some(r) => r,
                    None => Reply::error(format!(
                        "roomcast model Redis does not implement '{fullname}'"
                    )),
                }
            }
        };
        Some(r)
    }

    fn cmd_ping(&mut self, c: ClientId, argv: &[Vec<u8>]) -> Reply {
        // The table says "at least 1"; PING itself refuses more than one argument.
        if argv.len() > 2 {
            return wrong_arity("ping");
        }
        let cl = match self.clients.get(&c) {
            Some(cl) => cl,
            None => return Reply::Nil,
        };
        if cl.proto == Protocol::Resp2 && cl.total_subscriptions() > 0 {
            let msg = argv.get(1).cloned().unwrap_or_default();
            return Reply::Array(vec![Reply::bulk("pong"), Reply::Bulk(msg)]);
        }
        match argv.get(1) {
            None => Reply::status("PONG"),
            Some(m) => Reply::Bulk(m.clone()),
        }
    }

    fn cmd_reset(&mut self, c: ClientId) -> Reply {
        // Subscriptions end without confirmations.
        self.drop_all_subscriptions(c);
        let authenticated = self.default_user_nopass();
        if let Some(cl) = self.clients.get_mut(&c) {
            cl.db = 0;
            cl.proto = Protocol::Resp2;
            cl.authenticated = authenticated;
            cl.user = b"default".to_vec();
            cl.name = None;
        }
        Reply::status("RESET")
    }

    fn cmd_select(&mut self, c: ClientId, arg: &[u8]) -> Reply {
        let Some(id) = parse_i64(arg) else {
            return not_an_integer();
        };
        if id < i64::from(i32::MIN) || id > i64::from(i32::MAX) {
            return Reply::error(
                "value is out of range, value must between -2147483648 and 2147483647",
            );
        }
        if self.in_cluster() && id != 0 {
            return Reply::error("SELECT is not allowed in cluster mode");
        }
        if id < 0 || id >= DATABASES as i64 {
            return Reply::error("DB index is out of range");
        }
        if let Some(cl) = self.clients.get_mut(&c) {
            cl.db = id as usize;
        }
        Reply::ok()
    }

    fn set_name(&mut self, c: ClientId, name: &[u8]) -> Result<(), Reply> {
        if !valid_client_name(name) {
            return Err(Reply::error(
                "Client names cannot contain spaces, newlines or special characters.",
            ));
        }
        if let Some(cl) = self.clients.get_mut(&c) {
            cl.name = if name.is_empty() {
                None
            } else {
                Some(name.to_vec())
            };
        }
        Ok(())
    }

    fn login(&mut self, c: ClientId, user: &[u8], password: &[u8]) -> bool {
        if !self.credentials_ok(user, password) {
            return false;
        }
        if let Some(cl) = self.clients.get_mut(&c) {
            cl.authenticated = true;
            cl.user = user.to_vec();
        }
        true
    }

    fn cmd_auth(&mut self, c: ClientId, argv: &[Vec<u8>]) -> Reply {
        if argv.len() > 3 {
            return Reply::error("syntax error");
        }
        let (user, password): (&[u8], &[u8]) = if argv.len() == 2 {
            if self.default_user_nopass() {
                return Reply::error(
                    "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                );
            }
            (b"default", &argv[1])
        } else {
            (&argv[1], &argv[2])
        };
        if self.login(c, user, password) {
            Reply::ok()
        } else {
            Reply::error("-WRONGPASS invalid username-password pair or user is disabled.")
        }
    }

    /// HELLO applies its options one by one (a later bad option leaves the earlier ones
    /// applied), then requires authentication, then switches protocol.
    fn cmd_hello(&mut self, c: ClientId, argv: &[Vec<u8>]) -> Reply {
        let mut version = None;
        if argv.len() >= 2 {
            match parse_i64(&argv[1]) {
                None => return Reply::error("Protocol version is not an integer or out of range"),
                Some(2) => version = Some(Protocol::Resp2),
                Some(3) => version = Some(Protocol::Resp3),
                Some(_) => return Reply::error("-NOPROTO unsupported protocol version"),
            }
        }
        let mut j = 2;
        while j < argv.len() {
            let more = argv.len() - 1 - j;
            let opt = &argv[j];
            if opt_is(opt, "auth") && more >= 2 {
                if !self.login(c, &argv[j + 1], &argv[j + 2]) {
                    return Reply::error(
                        "-WRONGPASS invalid username-password pair or user is disabled.",
                    );
                }
                j += 3;
            } else if opt_is(opt, "setname") && more >= 1 {
                if let Err(e) = self.set_name(c, &argv[j + 1]) {
                    return e;
                }
                j += 2;
            } else {
                let mut msg = b"Syntax error in HELLO option '".to_vec();
                msg.extend_from_slice(cstr(opt));
                msg.push(b'\'');
                return Reply::error(msg);
            }
        }
        if self.auth_required(c) {
            return Reply::error(
                "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
            );
        }
        let role = self.role_name();
        let Some(cl) = self.clients.get_mut(&c) else {
            return Reply::Nil;
        };
        if let Some(v) = version {
            cl.proto = v;
        }
        Reply::Map(vec![
            (Reply::bulk("server"), Reply::bulk("redis")),
            (Reply::bulk("version"), Reply::bulk(&self.version)),
            (Reply::bulk("proto"), Reply::Integer(cl.proto.version())),
            (Reply::bulk("id"), Reply::Integer(cl.server_id)),
            (
                Reply::bulk("mode"),
                Reply::bulk(if self.cfg.cluster_mode {
                    "cluster"
                } else {
                    "standalone"
                }),
            ),
            (Reply::bulk("role"), Reply::bulk(role)),
            (Reply::bulk("modules"), Reply::Array(Vec::new())),
        ])
    }

    fn cmd_eval(&mut self, c: ClientId, by_sha: bool, argv: &[Vec<u8>]) -> Reply {
        let Some(numkeys) = parse_i64(&argv[2]) else {
            return not_an_integer();
        };
        if numkeys > argv.len() as i64 - 3 {
            return Reply::error("Number of keys can't be greater than number of args");
        }
        if numkeys < 0 {
            return Reply::error("Number of keys can't be negative");
        }
        let source = if by_sha {
            let noscript = || Reply::error("-NOSCRIPT No matching script. Please use EVAL.");
            if argv[1].len() != 40 {
                return noscript();
            }
            let sha = String::from_utf8_lossy(&argv[1]).to_ascii_lowercase();
            match self.scripts.get(&sha) {
                Some(src) => src.clone(),
                None => return noscript(),
            }
        } else {
            self.scripts.insert(sha1_hex(&argv[1]), argv[1].clone());
            argv[1].clone()
        };
        let Some(f) = self.script_impls.get(&source).copied() else {
            return Reply::error(format!(
                "roomcast model Redis has no native implementation registered for script {}",
                sha1_hex(&source)
            ));
        };
        let split = 3 + numkeys as usize;
        let (keys, args) = (&argv[3..split], &argv[split..]);
        let Some(db) = self.clients.get(&c).map(|cl| cl.db) else {
            return Reply::Nil;
        };
        // Commands only run from `input`, which always sets the clock first.
        let Some(now) = self.now else {
            return Reply::error("roomcast model Redis: script run before any input");
        };
        let guard = self.script_guard(keys);
        let ks = &mut self.dbs[db];
        ks.guard_script(guard);
        let reply = f(ks, keys, args, now);
        ks.guard_script(None);
        reply
    }
}
